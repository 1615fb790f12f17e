//! Inbound end to end: `authbridge run` terminating mTLS from SPIFFE peers and validating the
//! caller's JWT (tokens minted by a real oidc-provider with `jose`, JWKS served by it), then
//! forwarding to a real upstream app in gateway mode.

use authbridge_e2e::mtls::{identity, write_static, MtlsClient};
use authbridge_e2e::sts::Sts;
use authbridge_e2e::upstream::Upstream;
use authbridge_e2e::{metric, Proxy, TempDir};
use fake_workload_api::{FakeWorkloadApi, TestCa};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT: &str = "spiffe://example.org/ns/team1/sa/agent";
const CALLER: &str = "spiffe://example.org/ns/team1/sa/caller";

struct Setup {
    ca: TestCa,
    sts: Sts,
    up: Upstream,
    proxy: Proxy,
}

async fn setup(inbound_extra: &str) -> Setup {
    let dir = TempDir::new("inbound");
    let ca = TestCa::new("example.org");
    let agent = ca.issue_svid(AGENT);
    let (c, k, b) = write_static(dir.path(), &agent, &ca);
    let sts = Sts::start().await;
    let up = Upstream::start().await;
    let config = format!(
        r#"identity:
  source: static
  cert_file: {c}
  key_file: {k}
  bundle_file: {b}
inbound:
  listen: "{{IN}}"
  upstream: "{up}"
  mtls: strict
{inbound_extra}  jwt:
    issuer: {iss}
    jwks_uri: {jwks}
outbound:
  listen: "{{OUT}}"
admin:
  listen: "{{ADMIN}}"
"#,
        c = c.display(),
        k = k.display(),
        b = b.display(),
        up = up.addr,
        iss = sts.issuer,
        jwks = sts.jwks_uri,
    );
    let proxy = Proxy::start(&config, dir).await;
    Setup { ca, sts, up, proxy }
}

async fn token(sts: &Sts, aud: &str, extra: &[(&str, &str)]) -> String {
    let mut form = vec![("sub", "alice"), ("aud", aud), ("client_id", "frontend")];
    form.extend_from_slice(extra);
    sts.mint(&form).await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_with_jwt_allows_valid_callers_and_sets_identity_headers() {
    let s = setup("").await;
    let caller = identity(&s.ca.issue_svid(CALLER), &[&s.ca]);
    let mut c = MtlsClient::connect(s.proxy.inbound, Some(caller.clone()), caller.clone())
        .await
        .unwrap();
    let tok = token(&s.sts, AGENT, &[]).await;
    let bearer = format!("Bearer {tok}");
    let a = c
        .get(
            "/tools/run",
            &[
                ("authorization", &bearer),
                ("x-authbridge-sub", "mallory"),
                ("x-authbridge-peer-id", "spiffe://example.org/forged"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}\n{}", a.body, s.proxy.logs());
    let j = a.json();
    assert_eq!(j["path"], "/tools/run");
    assert_eq!(
        j["authorization"],
        bearer.as_str(),
        "Authorization forwarded unchanged"
    );
    assert_eq!(j["identity"]["x-authbridge-peer-id"], CALLER);
    assert_eq!(j["identity"]["x-authbridge-sub"], "alice");
    assert_eq!(j["identity"]["x-authbridge-iss"], s.sts.issuer.as_str());
    assert_eq!(j["identity"]["x-authbridge-client-id"], "frontend");

    // HTTP/2 negotiated by ALPN on the mTLS connection; the agent still gets HTTP/1.1.
    let (alpn, status, body) = authbridge_e2e::mtls::h2_get(
        s.proxy.inbound,
        caller.clone(),
        "/over-h2",
        &[("authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["path"], "/over-h2");
    assert_eq!(j["identity"]["x-authbridge-peer-id"], CALLER);
    assert_eq!(j["identity"]["x-authbridge-sub"], "alice");

    // Keep-alive: a second request on the same connection, an ES256 token this time.
    let es = token(&s.sts, AGENT, &[("alg", "ES256")]).await;
    let a = c
        .get("/again", &[("authorization", &format!("Bearer {es}"))])
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(s.up.hits(), 3);

    // No token: 401 with the bare challenge.
    let a = c.get("/tools/run", &[]).await.unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(
        a.headers["www-authenticate"],
        r#"Bearer realm="authbridge""#
    );
    assert_eq!(a.json()["error"], "unauthorized");

    // Tokens that must fail: wrong audience, expired, wrong issuer, garbage.
    let wrong_aud = token(&s.sts, "spiffe://example.org/ns/team1/sa/other", &[]).await;
    let expired = token(&s.sts, AGENT, &[("expires_in", "-300")]).await;
    let wrong_iss = token(&s.sts, AGENT, &[("iss", "https://evil.example")]).await;
    for bad in [
        wrong_aud.as_str(),
        expired.as_str(),
        wrong_iss.as_str(),
        "not.a.jwt",
        "a.b",
    ] {
        let a = c
            .get("/x", &[("authorization", &format!("Bearer {bad}"))])
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{bad:.20}: {}", a.body);
        assert_eq!(
            a.headers["www-authenticate"],
            r#"Bearer realm="authbridge", error="invalid_token""#
        );
        assert!(!a.body.contains(bad), "token echoed in the answer");
        assert_eq!(a.json()["error"], "unauthorized");
    }
    assert_eq!(s.up.hits(), 3, "a rejected request reached the agent");

    // Bypass paths need no token; traversal out of a bypass pattern does.
    let a = c.get("/healthz", &[]).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    for sneaky in [
        "/healthz/../admin",
        "/.well-known/..%2fadmin",
        "/.well-known/%2e%2e/admin",
    ] {
        let a = c.get(sneaky, &[]).await.unwrap();
        assert_eq!(a.status, 401, "{sneaky} reached the agent without a token");
    }

    // Oversized request head: 431, no panic, no 5xx.
    let big = "x".repeat(20 * 1024);
    let mut c2 = MtlsClient::connect(s.proxy.inbound, Some(caller.clone()), caller.clone())
        .await
        .unwrap();
    if let Ok(a) = c2.get("/x", &[("x-big", &big)]).await {
        assert_eq!(a.status, 431);
    }

    let m = s.proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_inbound_decisions_total{decision=\"allow\"") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "authbridge_inbound_decisions_total{decision=\"deny\"") >= 6.0,
        "{m}"
    );
    let logs = s.proxy.logs();
    assert!(
        !logs.contains(&tok) && !logs.contains(&wrong_aud),
        "a token was logged"
    );
    let access = logs
        .lines()
        .filter(|l| l.contains("authbridge::access") && l.contains("inbound") && l.contains("401"))
        .count();
    assert!(
        access >= 5,
        "no inbound access log lines for the denials:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_port_refuses_plaintext_missing_certs_and_unknown_trust_domains() {
    let s = setup("").await;
    let caller = identity(&s.ca.issue_svid(CALLER), &[&s.ca]);
    // Plaintext HTTP on the strict port: no HTTP answer, the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.inbound)
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plaintext got through"
    );
    // TLS without a client certificate.
    let r = async {
        let mut c = MtlsClient::connect(s.proxy.inbound, None, caller.clone()).await?;
        c.get("/", &[]).await
    }
    .await;
    assert!(
        r.is_err(),
        "no client certificate was accepted: {:?}",
        r.map(|a| a.status)
    );
    // A peer from a trust domain whose bundle we do not hold.
    let other = TestCa::new("partner.example");
    let foreign = identity(
        &other.issue_svid("spiffe://partner.example/ns/x/sa/y"),
        &[&other, &s.ca],
    );
    let r = async {
        let mut c = MtlsClient::connect(s.proxy.inbound, Some(foreign), caller.clone()).await?;
        c.get("/", &[]).await
    }
    .await;
    assert!(r.is_err(), "foreign trust domain accepted");
    // A certificate that is not an SVID (CA as leaf) from our own CA.
    let ca_leaf = s.ca.issue_svid_with(
        "spiffe://example.org/ns/x/sa/ca",
        fake_workload_api::SvidOptions {
            is_ca: true,
            ..Default::default()
        },
    );
    let bad = spiffe_source::source::identity_from_der(
        ca_leaf.chain_der.clone(),
        ca_leaf.key_pkcs8_der.clone(),
        vec![],
    );
    assert!(bad.is_err(), "a CA leaf must not make an identity");
    assert_eq!(s.up.hits(), 0);
    let m = s.proxy.metrics().await;
    assert!(
        metric(
            &m,
            "authbridge_inbound_decisions_total{decision=\"deny\",reason=\"plaintext\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "authbridge_inbound_decisions_total{decision=\"deny\",reason=\"handshake\"}"
        ) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peers_and_trust_domains_answer_403() {
    let dir = TempDir::new("inbound-peers");
    let ca = TestCa::new("example.org");
    let partner = TestCa::new("partner.example");
    let sock = dir.path().join("agent.sock");
    let fake = FakeWorkloadApi::start(
        &sock,
        ca.issue_svid(AGENT),
        vec![ca.bundle(), partner.bundle()],
    )
    .await
    .unwrap();
    let up = Upstream::start().await;
    let config = format!(
        "identity:\n  source: workload-api\n  workload_api_socket: {ep}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: \"{up}\"\n  mtls: strict\n  allowed_peers: [\"spiffe://example.org/ns/*/sa/good\", \"spiffe://partner.example/**\"]\n  allowed_trust_domains: [example.org]\nadmin:\n  listen: \"{{ADMIN}}\"\noutbound:\n  listen: \"{{OUT}}\"\n",
        ep = fake.endpoint(),
        up = up.addr,
    );
    let proxy = Proxy::start(&config, dir).await;
    let trust = identity(&ca.issue_svid(CALLER), &[&ca, &partner]);
    let call = |id: std::sync::Arc<spiffe_source::X509Identity>| {
        let trust = trust.clone();
        let addr = proxy.inbound;
        async move {
            let mut c = MtlsClient::connect(addr, Some(id), trust).await.unwrap();
            c.get("/", &[]).await.unwrap()
        }
    };
    let good = call(identity(
        &ca.issue_svid("spiffe://example.org/ns/team2/sa/good"),
        &[&ca],
    ))
    .await;
    assert_eq!(good.status, 200, "{}", good.body);
    assert_eq!(
        good.json()["identity"]["x-authbridge-peer-id"],
        "spiffe://example.org/ns/team2/sa/good"
    );
    let bad = call(identity(
        &ca.issue_svid("spiffe://example.org/ns/team2/sa/bad"),
        &[&ca],
    ))
    .await;
    assert_eq!(bad.status, 403, "{}", bad.body);
    assert_eq!(bad.json()["error"], "forbidden");
    // partner.example: bundle held (federation), pattern matches, but the trust domain is not
    // in allowed_trust_domains.
    let fed = call(identity(
        &partner.issue_svid("spiffe://partner.example/ns/a/sa/b"),
        &[&partner],
    ))
    .await;
    assert_eq!(fed.status, 403, "{}", fed.body);
    assert!(fed.body.contains("trust domain"), "{}", fed.body);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_and_mtls_on_one_port() {
    let dir = TempDir::new("inbound-perm");
    let ca = TestCa::new("example.org");
    let (c, k, b) = write_static(dir.path(), &ca.issue_svid(AGENT), &ca);
    let up = Upstream::start().await;
    let config = format!(
        "identity:\n  source: static\n  cert_file: {}\n  key_file: {}\n  bundle_file: {}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: \"{}\"\n  mtls: permissive\noutbound:\n  listen: \"{{OUT}}\"\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        c.display(),
        k.display(),
        b.display(),
        up.addr
    );
    let proxy = Proxy::start(&config, dir).await;
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/plain", proxy.inbound))
        .header("x-authbridge-peer-id", "spiffe://example.org/forged")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let j: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(j["path"], "/plain");
    assert!(
        j["identity"].as_object().unwrap().is_empty(),
        "forged header passed: {j}"
    );
    let caller = identity(&ca.issue_svid(CALLER), &[&ca]);
    let mut m = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller)
        .await
        .unwrap();
    let a = m.get("/tls", &[]).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["identity"]["x-authbridge-peer-id"], CALLER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_mtls_origination_between_two_authbridges() {
    let ca = TestCa::new("example.org");
    let up = Upstream::start().await;
    const TOOL: &str = "spiffe://example.org/ns/tools/sa/tool";
    // The tool's AuthBridge: strict mTLS in front of the tool app.
    let tdir = TempDir::new("orig-tool");
    let (c, k, b) = write_static(tdir.path(), &ca.issue_svid(TOOL), &ca);
    let tool_cfg = format!(
        "identity:\n  source: static\n  cert_file: {}\n  key_file: {}\n  bundle_file: {}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: \"{}\"\n  mtls: strict\n  allowed_peers: [\"{AGENT}\"]\noutbound:\n  listen: \"{{OUT}}\"\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        c.display(),
        k.display(),
        b.display(),
        up.addr
    );
    let tool = Proxy::start(&tool_cfg, tdir).await;
    // The agent's AuthBridge: routes that originate mTLS towards the tool's inbound.
    let adir = TempDir::new("orig-agent");
    let (c, k, b) = write_static(adir.path(), &ca.issue_svid(AGENT), &ca);
    let agent_cfg = format!(
        "identity:\n  source: static\n  cert_file: {}\n  key_file: {}\n  bundle_file: {}\noutbound:\n  listen: \"{{OUT}}\"\n  routes:\n    - host: localhost\n      action: passthrough\n      mtls: true\n      mtls_peer: \"{TOOL}\"\n    - host: \"127.0.0.1\"\n      action: passthrough\n      mtls: true\n      mtls_peer: spiffe://example.org/ns/tools/sa/impostor\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        c.display(),
        k.display(),
        b.display(),
    );
    let agent = Proxy::start(&agent_cfg, adir).await;
    let client = agent.client();
    // The agent speaks plain HTTP; its AuthBridge speaks mTLS to the tool's strict port.
    let r = client
        .get(format!("http://localhost:{}/call", tool.inbound.port()))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{j}\n{}\n{}", agent.logs(), tool.logs());
    assert_eq!(j["path"], "/call");
    assert_eq!(j["identity"]["x-authbridge-peer-id"], AGENT);
    // A route expecting another peer ID refuses the tool's SVID: 502, nothing reaches the tool.
    let hits = up.hits();
    let r = client
        .get(format!("http://127.0.0.1:{}/call", tool.inbound.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("mTLS handshake failed"), "{body}");
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out_and_h2_websocket_and_streaming_pass() {
    let dir = TempDir::new("inbound-slow");
    let ca = TestCa::new("example.org");
    let (c, k, b) = write_static(dir.path(), &ca.issue_svid(AGENT), &ca);
    let up = Upstream::start().await;
    let config = format!(
        "identity:\n  source: static\n  cert_file: {}\n  key_file: {}\n  bundle_file: {}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: \"{}\"\n  mtls: permissive\n  request_header_timeout: 1s\noutbound:\n  listen: \"{{OUT}}\"\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        c.display(),
        k.display(),
        b.display(),
        up.addr
    );
    let proxy = Proxy::start(&config, dir).await;
    // Slowloris: half a request head, then silence. The connection is closed after ~1 s.
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "slow request head not timed out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !String::from_utf8_lossy(&buf).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // An idle keep-alive connection is closed once the next request head is overdue.
    let mut tcp = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    tcp.write_all(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let idle_started = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok() && idle_started.elapsed() < Duration::from_secs(5),
        "idle connection kept open"
    );

    // A TLS client that never finishes its handshake is dropped too.
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut Vec::new())).await;
    assert!(
        r.is_ok() && started.elapsed() < Duration::from_secs(5),
        "stalled TLS handshake not timed out"
    );

    // Oversized head: 431.
    let mut tcp = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "x".repeat(40 * 1024)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"),
        "{:.80}",
        String::from_utf8_lossy(&buf)
    );

    // h2c (prior knowledge) from the caller through the inbound side.
    let tcp = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}/h2", proxy.inbound))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let j: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // The agent gets HTTP/1.1 (agent frameworks rarely speak h2c).
    assert_eq!(j["version"], "HTTP/1.1", "{j}");
    assert_eq!(j["path"], "/h2");

    // SSE: events arrive as they are produced, not at the end.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut r = plain
        .get(format!("http://{}/sse", proxy.inbound))
        .send()
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "first event was buffered"
    );

    // WebSocket upgrade: 101 and bytes echoed both ways.
    let mut tcp = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(b"hello-ws").await.unwrap();
    let mut echo = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"hello-ws");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_jwks_is_fetched() {
    let dir = TempDir::new("inbound-jwks-ready");
    let ca = TestCa::new("example.org");
    let (c, k, b) = write_static(dir.path(), &ca.issue_svid(AGENT), &ca);
    let dead = format!("127.0.0.1:{}", authbridge_e2e::free_port());
    let config = format!(
        "identity:\n  source: static\n  cert_file: {}\n  key_file: {}\n  bundle_file: {}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: 127.0.0.1:9\n  jwt:\n    issuer: http://{dead}\n    jwks_uri: http://{dead}/jwks\noutbound:\n  listen: \"{{OUT}}\"\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        c.display(),
        k.display(),
        b.display(),
    );
    let proxy = Proxy::spawn(&config, dir, &[], &[]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(r) = client
            .get(format!("http://{}/readyz", proxy.admin))
            .send()
            .await
        {
            assert_eq!(r.status(), 503);
            assert!(r.text().await.unwrap().contains("jwks"));
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "{}", proxy.logs());
    // Fail closed meanwhile: no key can validate a token, so the request is refused (503
    // while no key set was ever loaded, 401 once the refetch for its kid came back empty)
    // rather than reaching the agent.
    let r = client
        .get(format!("http://{}/x", proxy.inbound))
        .bearer_auth("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhIn0.c2ln")
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 503), "{}", r.status());
    let body = r.text().await.unwrap();
    assert!(body.contains("\"error\""), "{body}");
}
