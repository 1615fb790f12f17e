//! Outbound end to end: the `authbridge` binary as an explicit HTTP proxy in front of real
//! upstream servers, exchanging tokens at a real STS (oidc-provider, `tests/sts`).

use authbridge_e2e::sts::{
    Sts, ACCESS_TOKEN_TYPE, JWT_SPIFFE_ASSERTION_TYPE, TOKEN_EXCHANGE_GRANT,
};
use authbridge_e2e::upstream::{client_hello, echo_server, Upstream};
use authbridge_e2e::{jwt_claims, metric, Proxy, SvidSigner, TempDir};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AGENT_ID: &str = "spiffe://example.org/ns/team1/sa/agent";

/// A config using client-secret auth against `sts`, with the given routes YAML (indented
/// under `routes:` of a routes file).
fn secret_config(sts: &Sts, dir: &TempDir, routes: &str, extra: &str) -> String {
    dir.write("secret", "  s3cret\n");
    dir.write("routes.yaml", routes);
    format!(
        "outbound:\n  listen: \"{{OUT}}\"\n  token_url: {}\n  client_id: agent-secret-client\n  client_auth: client-secret\n  client_secret_file: {{DIR}}/secret\n  routes_file: {{DIR}}/routes.yaml\n  exchange_timeout: 2s\n{extra}admin:\n  listen: \"{{ADMIN}}\"\n",
        sts.token_url
    )
}

fn form_field<'a>(req: &'a Value, key: &str) -> Option<&'a str> {
    req["form"][key].as_str()
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn exchange_route_swaps_the_token_with_the_exact_wire_format() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("exch");
    let routes = "- host: \"tool-*.local\"\n  target_audience: tool-aud\n  token_scopes: \"openid tool-scope\"\n- host: \"**\"\n  passthrough: true\n";
    let proxy = Proxy::start(&secret_config(&sts, &dir, routes, ""), dir).await;
    let user = sts
        .mint_user_token("alice", "agent", "openid tool-scope")
        .await;
    let client = proxy.client();

    // Exchange route: reqwest sends absolute-form through the explicit proxy.
    let url = format!("http://tool-a.local:{}/call", up.addr.port());
    // tool-a.local does not resolve, so point the proxy at it by resolving via Host: use the IP
    // in the URL and the name in the Host header instead.
    let _ = url;
    let url = format!("http://127.0.0.1:{}/call", up.addr.port());
    let resp = client
        .get(&url)
        .header("host", format!("tool-a.local:{}", up.addr.port()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    // reqwest puts the URL's authority in the request line; our route is matched on it.
    // 127.0.0.1 matches the passthrough route, so the token must arrive unchanged.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authorization"], format!("Bearer {user}"));
    assert!(
        sts.requests().await.is_empty(),
        "passthrough must not call the STS"
    );

    // Now a host that matches the exchange route, sent as an absolute-form request by hand.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let req = format!(
        "GET http://tool-a.local:{port}/call HTTP/1.1\r\nHost: tool-a.local:{port}\r\nAuthorization: Bearer {user}\r\nConnection: close\r\n\r\n",
        port = up.addr.port()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    // tool-a.local cannot be resolved on this machine: the proxy exchanged first, then failed
    // to connect -> 502 from the proxy, never the user's token anywhere.
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(!out.contains(&user));
    let reqs = sts.requests().await;
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r["method"], "POST");
    assert!(r["content_type"]
        .as_str()
        .unwrap()
        .starts_with("application/x-www-form-urlencoded"));
    assert_eq!(form_field(r, "grant_type"), Some(TOKEN_EXCHANGE_GRANT));
    assert_eq!(form_field(r, "subject_token"), Some(user.as_str()));
    assert_eq!(form_field(r, "subject_token_type"), Some(ACCESS_TOKEN_TYPE));
    assert_eq!(
        form_field(r, "requested_token_type"),
        Some(ACCESS_TOKEN_TYPE)
    );
    assert_eq!(form_field(r, "audience"), Some("tool-aud"));
    assert_eq!(form_field(r, "scope"), Some("openid tool-scope"));
    assert_eq!(form_field(r, "client_id"), Some("agent-secret-client"));
    assert_eq!(
        form_field(r, "client_secret"),
        Some("s3cret"),
        "secret file is trimmed"
    );
    let mut keys: Vec<&str> = r["form"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "audience",
            "client_id",
            "client_secret",
            "grant_type",
            "requested_token_type",
            "scope",
            "subject_token",
            "subject_token_type"
        ]
    );
}

/// Routes match on the request's host; a resolvable name (localhost) lets us reach the upstream.
#[tokio::test]
async fn exchanged_token_reaches_the_tool_and_is_cached() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("cache");
    let routes = "- host: localhost\n  target_audience: tool-aud\n  token_scopes: openid\n";
    let proxy = Proxy::start(&secret_config(&sts, &dir, routes, ""), dir).await;
    let user = sts.mint_user_token("alice", "agent", "openid").await;
    let client = proxy.client();
    let url = format!("http://localhost:{}/tool", up.addr.port());

    let (status, body) = json(client.get(&url).bearer_auth(&user).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.logs());
    let got = body["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_ne!(got, user, "the tool must not see the user's token");
    let claims = jwt_claims(&got);
    assert_eq!(claims["sub"], "alice");
    assert!(
        claims["aud"] == "tool-aud"
            || claims["aud"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "tool-aud")),
        "{claims}"
    );
    assert_eq!(claims["act"]["sub"], "agent-secret-client");

    // Second identical request: served from the cache, same token, no new exchange.
    let (_, body2) = json(client.get(&url).bearer_auth(&user).send().await.unwrap()).await;
    assert_eq!(body2["authorization"], body["authorization"]);
    assert_eq!(sts.requests().await.len(), 1);

    // A different user token is a different cache key.
    let bob = sts.mint_user_token("bob", "agent", "openid").await;
    let (_, body3) = json(client.get(&url).bearer_auth(&bob).send().await.unwrap()).await;
    assert_eq!(
        jwt_claims(
            body3["authorization"]
                .as_str()
                .unwrap()
                .strip_prefix("Bearer ")
                .unwrap()
        )["sub"],
        "bob"
    );
    assert_eq!(sts.requests().await.len(), 2);

    let m = proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_exchange_cache_total{result=\"hit\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "authbridge_token_exchanges_total{result=\"success\"}") >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn concurrent_identical_misses_cause_one_exchange() {
    let sts = Sts::builder().start().await;
    sts.set_delay_ms(400).await;
    let up = Upstream::start().await;
    let dir = TempDir::new("sf");
    let routes = "- host: localhost\n  target_audience: tool-aud\n";
    let proxy = Proxy::start(&secret_config(&sts, &dir, routes, ""), dir).await;
    let user = sts.mint_user_token("alice", "agent", "openid").await;
    let url = format!("http://localhost:{}/tool", up.addr.port());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = proxy.client();
        let url = url.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.get(&url).bearer_auth(&user).send().await.unwrap();
            json(r).await
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        tokens.insert(body["authorization"].as_str().unwrap().to_string());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        sts.requests().await.len(),
        1,
        "16 concurrent identical misses must share one exchange"
    );
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_exchange_cache_total{result=\"shared\"}") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn jwt_spiffe_client_assertion_from_the_helper_file_is_reread() {
    let dir = TempDir::new("jwtsvid");
    let signer = SvidSigner::new("k1");
    let jwks_path = dir.write("bundle.jwks", &signer.jwks.to_string());
    let sts = Sts::builder().spiffe_jwks(&jwks_path).start().await;
    let svid_dir = dir.path().join("svid");
    std::fs::create_dir_all(&svid_dir).unwrap();
    let first = signer.sign(AGENT_ID, &sts.issuer, 300);
    std::fs::write(svid_dir.join("jwt_svid.token"), format!("{first}\n")).unwrap();
    dir.write(
        "routes.yaml",
        "- host: localhost\n  target_audience: tool-aud\n",
    );
    let config = format!(
        "identity:\n  source: files\n  svid_dir: {{DIR}}/svid\noutbound:\n  listen: \"{{OUT}}\"\n  token_url: {}\n  routes_file: {{DIR}}/routes.yaml\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        sts.token_url
    );
    let up = Upstream::start().await;
    let proxy = Proxy::start(&config, dir).await;
    let client = proxy.client();
    let url = format!("http://localhost:{}/tool", up.addr.port());
    let user = sts.mint_user_token("alice", "agent", "openid").await;
    let (status, body) = json(client.get(&url).bearer_auth(&user).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.logs());
    let claims = jwt_claims(
        body["authorization"]
            .as_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap(),
    );
    assert_eq!(claims["act"]["sub"], AGENT_ID);
    let reqs = sts.requests().await;
    let r = &reqs[0];
    assert_eq!(
        form_field(r, "client_assertion_type"),
        Some(JWT_SPIFFE_ASSERTION_TYPE)
    );
    assert_eq!(
        form_field(r, "client_assertion"),
        Some(first.as_str()),
        "trimmed JWT-SVID"
    );
    assert_eq!(
        form_field(r, "client_id"),
        Some(AGENT_ID),
        "client_id defaults to our SPIFFE ID"
    );
    assert!(form_field(r, "client_secret").is_none());

    // spiffe-helper rotates the JWT-SVID by rename-over: the next exchange uses the new one.
    let second = signer.sign(AGENT_ID, &sts.issuer, 600);
    let tmp = proxy.dir.path().join("svid/.jwt_svid.token.tmp");
    std::fs::write(&tmp, &second).unwrap();
    std::fs::rename(&tmp, proxy.dir.path().join("svid/jwt_svid.token")).unwrap();
    let bob = sts.mint_user_token("bob", "agent", "openid").await;
    let (status, _) = json(client.get(&url).bearer_auth(&bob).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let reqs = sts.requests().await;
    assert_eq!(
        form_field(&reqs[1], "client_assertion"),
        Some(second.as_str())
    );

    // An expired JWT-SVID: fail closed with 503, never forward the user's token.
    let expired = signer.sign(AGENT_ID, &sts.issuer, -10);
    std::fs::write(proxy.dir.path().join("svid/jwt_svid.token"), &expired).unwrap();
    let carol = sts.mint_user_token("carol", "agent", "openid").await;
    let hits = up.hits();
    let (status, body) = json(client.get(&url).bearer_auth(&carol).send().await.unwrap()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "token_exchange_failed");
    assert!(!body.to_string().contains(&carol));
    assert_eq!(up.hits(), hits, "the tool must not be called");
}

#[tokio::test]
async fn failures_answer_the_agent_and_never_leak_tokens() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("fail");
    let routes =
        "- host: localhost\n  target_audience: tool-aud\n- host: 127.0.0.2\n  action: deny\n";
    let proxy = Proxy::start(&secret_config(&sts, &dir, routes, ""), dir).await;
    let client = proxy.client();
    let url = format!("http://localhost:{}/tool", up.addr.port());

    // No token under no_token_policy: deny.
    let (status, body) = json(client.get(&url).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token")),
        "{body}"
    );

    // Denied route.
    let (status, body) = json(
        client
            .get(format!("http://127.0.0.2:{}/", up.addr.port()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("route_denied")),
        "{body}"
    );

    // STS answers errors / garbage / too slowly: 503, no token in the answer, tool not called.
    for (i, mode) in ["invalid_grant", "http500", "garbage", "slow"]
        .iter()
        .enumerate()
    {
        sts.set_fault(mode).await;
        let user = sts
            .mint_user_token(&format!("user{i}"), "agent", "openid")
            .await;
        let started = Instant::now();
        let (status, body) = json(client.get(&url).bearer_auth(&user).send().await.unwrap()).await;
        assert_eq!(status, 503, "{mode}: {body}");
        assert_eq!(body["error"], "token_exchange_failed", "{mode}");
        assert!(body["message"].is_string());
        assert!(
            !body.to_string().contains(&user),
            "{mode}: token leaked in {body}"
        );
        if *mode == "slow" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "exchange_timeout not applied"
            );
        }
        if *mode == "invalid_grant" {
            assert!(
                body["message"].as_str().unwrap().contains("invalid_grant"),
                "{body}"
            );
        }
    }
    sts.set_fault("none").await;
    assert_eq!(
        up.hits(),
        0,
        "the tool must never see a request whose exchange failed"
    );
    let logs = proxy.logs();
    assert!(!logs.contains("s3cret"), "secret in logs");
    for r in sts.requests().await {
        let subject = form_field(&r, "subject_token").unwrap();
        assert!(!logs.contains(subject), "subject token in logs");
    }
    drop(sts);

    // STS unreachable.
    let user = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    let (status, body) = json(client.get(&url).bearer_auth(user).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("token_exchange_failed")),
        "{body}"
    );
}

#[tokio::test]
async fn no_token_policies_passthrough_and_client_credentials() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("notok");
    let routes = "- host: localhost\n  target_audience: tool-aud\n";
    let proxy = Proxy::start(
        &secret_config(&sts, &dir, routes, "  no_token_policy: passthrough\n"),
        dir,
    )
    .await;
    let url = format!("http://localhost:{}/tool", up.addr.port());
    let (status, body) = json(proxy.client().get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["authorization"].is_null());
    assert!(sts.requests().await.is_empty());
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "authbridge_outbound_requests_total{action=\"exchange\",outcome=\"forwarded_without_token\"}"
        ),
        1.0,
        "{m}"
    );

    let dir = TempDir::new("notok-cc");
    let proxy = Proxy::start(
        &secret_config(
            &sts,
            &dir,
            routes,
            "  no_token_policy: client-credentials\n",
        ),
        dir,
    )
    .await;
    let _ = proxy.client().get(&url).send().await.unwrap();
    let reqs = sts.requests().await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        form_field(&reqs[0], "grant_type"),
        Some("client_credentials")
    );
    assert_eq!(form_field(&reqs[0], "audience"), Some("tool-aud"));
}

#[tokio::test]
async fn connect_tunnels_route_by_host_and_sni() {
    let sts = Sts::builder().start().await;
    let (echo, _t) = echo_server().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("connect");
    let routes = "- host: secret-tool.local\n  target_audience: tool-aud\n- host: blocked.local\n  action: deny\n- host: localhost\n  target_audience: tool-aud\n- host: \"**\"\n  passthrough: true\n";
    let proxy = Proxy::start(&secret_config(&sts, &dir, routes, ""), dir).await;

    async fn connect(proxy: &Proxy, target: &str) -> (TcpStream, String) {
        let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        (s, String::from_utf8_lossy(&head).into_owned())
    }

    // TLS to a passthrough host is spliced byte for byte.
    let (mut s, head) = connect(&proxy, &format!("127.0.0.1:{}", echo.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let hello = client_hello("api.example.com");
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, hello);

    // TLS whose SNI names an exchange route is refused: the connection closes, nothing echoed.
    let (mut s, head) = connect(&proxy, &format!("127.0.0.1:{}", echo.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&client_hello("secret-tool.local"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "exchange-route TLS must be closed, not spliced");
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_outbound_tls_refused_total") >= 1.0,
        "{m}"
    );

    // CONNECT to a denied host: 403.
    let (_, head) = connect(&proxy, "blocked.local:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    // Plain HTTP inside a CONNECT tunnel to an exchange host gets the exchanged token.
    let user = sts.mint_user_token("alice", "agent", "openid").await;
    let (mut s, head) = connect(&proxy, &format!("localhost:{}", up.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(format!("GET /in-tunnel HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {user}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains(&user), "{out}");
    assert!(out.contains("/in-tunnel"));
    assert_eq!(sts.requests().await.len(), 1);
}

#[tokio::test]
async fn streaming_websocket_h2c_and_bad_input() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("proto");
    let proxy = Proxy::start(
        &secret_config(&sts, &dir, "- host: \"**\"\n  passthrough: true\n", ""),
        dir,
    )
    .await;
    let port = up.addr.port();

    // SSE: the first event arrives before the upstream has sent the last one.
    let started = Instant::now();
    let mut resp = proxy
        .client()
        .get(format!("http://127.0.0.1:{port}/sse"))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("event 0"));
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(String::from_utf8_lossy(&rest).contains("event 2"));
    assert!(
        first_at + Duration::from_millis(500) < started.elapsed(),
        "first event was buffered until the end"
    );

    // WebSocket-style upgrade through the proxy, then bytes both ways.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(format!("GET http://127.0.0.1:{port}/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_ne!(
            s.read(&mut b).await.unwrap(),
            0,
            "closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping-frame").await.unwrap();
    let mut echo = [0u8; 10];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping-frame");

    // HTTP/2 prior knowledge (h2c) from the agent goes upstream as h2c.
    let tcp = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://127.0.0.1:{port}/h2"))
        .header("authorization", "Bearer opaque-passthrough")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["version"], "HTTP/2.0", "{body}");
    assert_eq!(body["authorization"], "Bearer opaque-passthrough");
    assert_eq!(body["path"], "/h2");

    // Huge request head: 431, not a crash.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let big = "x".repeat(100 * 1024);
    let _ = s
        .write_all(
            format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // Garbage and origin-form requests on the explicit port: 4xx, never 5xx, and still serving.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /no-absolute-uri HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW coffee\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 4"), "{out}");
    }
    // Requests addressed to the proxy itself are refused, not looped.
    let (status, body) = json(
        proxy
            .client()
            .get(format!("http://{}/", proxy.outbound))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 508, "{body}");
    let (status, _) = json(
        proxy
            .client()
            .get(format!("http://127.0.0.1:{port}/still-ok"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn routes_file_reload_applies_and_bad_reload_is_refused() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("reload");
    let proxy = Proxy::start(
        &secret_config(&sts, &dir, "- host: localhost\n  passthrough: true\n", ""),
        dir,
    )
    .await;
    let url = format!("http://localhost:{}/", up.addr.port());
    let (status, _) = json(proxy.client().get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200);

    // ConfigMap-style update: ..data symlink swap. Here: write a new file and rename over.
    let routes = proxy.dir.path().join("routes.yaml");
    let tmp = proxy.dir.path().join("routes.new");
    std::fs::write(&tmp, "- host: localhost\n  action: deny\n").unwrap();
    std::fs::rename(&tmp, &routes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = json(proxy.client().get(&url).send().await.unwrap()).await;
        if status == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "route change not applied within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An invalid file keeps the routes in effect and is counted.
    std::fs::write(&routes, "- host: \"{unterminated\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = json(proxy.client().get(&url).send().await.unwrap()).await;
    assert_eq!(status, 403, "old routes must stay in effect");
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_route_reloads_total{result=\"failure\"}") >= 1.0,
        "{m}"
    );
    assert!(proxy.logs().contains("invalid routes file"));
}

#[tokio::test]
async fn admin_endpoints_and_sigterm_drain() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("admin");
    let mut proxy = Proxy::start(&secret_config(&sts, &dir, "", ""), dir).await;
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |p: &str| admin.get(format!("http://{}{p}", proxy.admin)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let dump = get("/config_dump").await.unwrap().text().await.unwrap();
    assert!(
        dump.contains("client_secret_file") && !dump.contains("s3cret"),
        "{dump}"
    );
    assert_eq!(get("/nope").await.unwrap().status(), 404);

    // A request in flight when SIGTERM arrives completes; then the process exits 0.
    let client = proxy.client();
    let url = format!("http://127.0.0.1:{}/slow?ms=1500", up.addr.port());
    let inflight =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(proxy.outbound).await.is_err(),
        "listener must be closed while draining"
    );
    assert_eq!(inflight.await.unwrap().unwrap(), 200);
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.logs());
}

/// Kubernetes updates a mounted ConfigMap by swapping the `..data` symlink; the routes file is a
/// symlink `routes.yaml -> ..data/routes.yaml`.
#[tokio::test]
async fn configmap_symlink_swap_reload() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("cm");
    let cm = dir.path().join("cm");
    std::fs::create_dir_all(cm.join("..2026_v1")).unwrap();
    std::fs::write(
        cm.join("..2026_v1/routes.yaml"),
        "- host: localhost\n  passthrough: true\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", cm.join("routes.yaml")).unwrap();
    let mut config = secret_config(&sts, &dir, "", "");
    config = config.replace("{DIR}/routes.yaml", "{DIR}/cm/routes.yaml");
    let proxy = Proxy::start(&config, dir).await;
    let url = format!("http://localhost:{}/", up.addr.port());
    assert_eq!(proxy.client().get(&url).send().await.unwrap().status(), 200);

    // The kubelet's atomic update: new timestamped dir, new symlink renamed over ..data.
    let cm = proxy.dir.path().join("cm");
    std::fs::create_dir_all(cm.join("..2026_v2")).unwrap();
    std::fs::write(
        cm.join("..2026_v2/routes.yaml"),
        "- host: localhost\n  action: deny\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_v2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(cm.join("..2026_v1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if proxy.client().get(&url).send().await.unwrap().status() == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "symlink swap not applied within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_route_reloads_total{result=\"success\"}") >= 1.0,
        "{m}"
    );
}

/// `--log-format json`: one JSON object per line; every request gets an access-log line with
/// direction, host, route, action, status and duration; no token appears in the logs.
#[tokio::test]
async fn json_access_log() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("jsonlog");
    let routes =
        "- host: localhost\n  target_audience: tool-aud\n- host: 127.0.0.3\n  action: deny\n";
    let proxy = Proxy::start_full(
        &secret_config(&sts, &dir, routes, ""),
        dir,
        &[],
        &["--log-format", "json"],
    )
    .await;
    let user = sts.mint_user_token("alice", "agent", "openid").await;
    let client = proxy.client();
    let (status, body) = json(
        client
            .get(format!("http://localhost:{}/x", up.addr.port()))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let exchanged = body["authorization"].as_str().unwrap().to_string();
    let (status, _) = json(
        client
            .get(format!("http://127.0.0.3:{}/", up.addr.port()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = proxy.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|v| v["target"] == "authbridge::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs}");
    let ex = access
        .iter()
        .find(|v| v["action"] == "exchange")
        .expect("exchange line");
    assert_eq!(ex["direction"], "outbound");
    assert_eq!(ex["host"], "localhost");
    assert_eq!(ex["route"], 0);
    assert_eq!(ex["status"], 200);
    assert!(ex["duration_ms"].as_f64().unwrap() >= 0.0);
    let deny = access
        .iter()
        .find(|v| v["action"] == "deny")
        .expect("deny line");
    assert_eq!(
        (deny["route"].as_i64(), deny["status"].as_i64()),
        (Some(1), Some(403))
    );
    assert!(!logs.contains(&user) && !logs.contains(exchanged.trim_start_matches("Bearer ")));
    assert!(!logs.contains("s3cret"));
}

/// SIGTERM while an SSE stream is being delivered: the stream finishes, then the process exits 0.
#[tokio::test]
async fn sigterm_mid_stream_finishes_the_stream() {
    let sts = Sts::builder().start().await;
    let up = Upstream::start().await;
    let dir = TempDir::new("midstream");
    let mut proxy = Proxy::start(&secret_config(&sts, &dir, "", ""), dir).await;
    let mut resp = proxy
        .client()
        .get(format!("http://127.0.0.1:{}/sse", up.addr.port()))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event 0"));
    proxy.sigterm();
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("event 1") && rest.contains("event 2"),
        "{rest}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.logs());
}
