//! Redirected (iptables-style) connections through the original-destination seam: the proxy
//! runs in-process with an injected original destination, so no iptables is needed here (the
//! real `SO_ORIGINAL_DST` path is covered by the netns test in `tests/capture.rs`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outbound_exchange::proxy::{NoTokenPolicy, Outbound, OutboundSettings};
use outbound_exchange::routes::{parse_routes_yaml, Action, RouteTable};
use outbound_exchange::sts::{ClientAuth, StsClient};
use proxy_core::drain;
use proxy_core::metrics::Metrics;
use proxy_core::orig_dst::FnOriginalDst;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP server answering with a fixed function of the request; records request heads.
async fn server<F>(f: F) -> (SocketAddr, Arc<Mutex<Vec<(String, String, String)>>>)
where
    F: Fn(&http::request::Parts, &[u8]) -> (u16, String) + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let f = Arc::new(f);
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let f = f.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let f = f.clone();
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let auth = parts
                            .headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let host = parts
                            .headers
                            .get("host")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        seen.lock()
                            .unwrap()
                            .push((parts.uri.to_string(), host, auth));
                        let (status, text) = f(&parts, &body);
                        let mut r = http::Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

struct Setup {
    proxy: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    sts_seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

async fn setup(routes: &str, dst_override: Option<SocketAddr>) -> Setup {
    let (upstream, seen) = server(|_, _| (200, "tool-ok".into())).await;
    let (sts, sts_seen) = server(|_, body| {
        let form = String::from_utf8_lossy(body).to_string();
        assert!(form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"), "{form}");
        let aud = form.split('&').find_map(|kv| kv.strip_prefix("audience=")).unwrap_or("none").to_string();
        (200, format!("{{\"access_token\":\"exchanged-for-{aud}\",\"expires_in\":300,\"token_type\":\"Bearer\"}}"))
    })
    .await;
    let table = RouteTable::new(
        parse_routes_yaml(routes, "test").unwrap(),
        Action::Passthrough,
    );
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(table));
    std::mem::forget(_tx);
    let sts_client = StsClient::new(
        Some("agent".into()),
        ClientAuth::Secret(Arc::from("s")),
        Duration::from_secs(2),
    )
    .unwrap();
    let dst = dst_override.unwrap_or(upstream);
    let outbound = Outbound::new(
        rx,
        Some(sts_client),
        Arc::new(FnOriginalDst(move |_peer, _local| Some(dst))),
        OutboundSettings {
            token_url: Some(format!("http://{sts}/token")),
            no_token_policy: NoTokenPolicy::Deny,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (trigger, watch) = drain::channel();
    std::mem::forget(trigger);
    tokio::spawn(outbound.serve(l, watch));
    Setup {
        proxy,
        seen,
        sts_seen,
    }
}

async fn roundtrip(proxy: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn redirected_request_is_routed_by_host_and_exchanged() {
    let s = setup("- host: \"tool.*.svc\"\n  target_audience: tool\n", None).await;
    let out = roundtrip(
        s.proxy,
        "GET /call?x=1 HTTP/1.1\r\nHost: Tool.Team1.SVC:8080\r\nAuthorization: Bearer user-token\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("tool-ok"),
        "{out}"
    );
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    // Origin-form and Host preserved; the token replaced.
    assert_eq!(
        seen[0],
        (
            "/call?x=1".into(),
            "Tool.Team1.SVC:8080".into(),
            "Bearer exchanged-for-tool".into()
        )
    );
    assert_eq!(s.sts_seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn redirected_request_without_host_routes_by_original_destination_ip() {
    // Route on the original destination's IP: 127.0.0.1 exchanges.
    let s = setup("- host: 127.0.0.1\n  target_audience: by-ip\n", None).await;
    let out = roundtrip(
        s.proxy,
        "GET / HTTP/1.0\r\nAuthorization: Bearer user-token\r\n\r\n",
    )
    .await;
    assert!(out.contains(" 200 "), "{out}");
    assert_eq!(s.seen.lock().unwrap()[0].2, "Bearer exchanged-for-by-ip");
}

#[tokio::test]
async fn redirected_keep_alive_reuses_one_upstream_connection_and_passthrough_keeps_token() {
    let s = setup("- host: \"**\"\n  passthrough: true\n", None).await;
    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    for i in 0..3 {
        c.write_all(
            format!(
                "GET /r{i} HTTP/1.1\r\nHost: any.example\r\nAuthorization: Bearer mine\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        while !got.ends_with("tool-ok") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.2 == "Bearer mine"));
    assert!(s.sts_seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn redirected_tls_is_spliced_or_refused_by_sni() {
    // A raw echo server stands in for the TLS origin.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let s = setup(
        "- host: secret.example\n  target_audience: t\n- host: \"**\"\n  passthrough: true\n",
        Some(echo),
    )
    .await;
    let hello = proxy_core::sniff::client_hello_record;
    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    let h = hello("public.example");
    c.write_all(&h).await.unwrap();
    let mut back = vec![0u8; h.len()];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, h);

    let mut c = TcpStream::connect(s.proxy).await.unwrap();
    c.write_all(&hello("SECRET.example")).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "TLS to an exchange route must be closed");
}

#[tokio::test]
async fn default_policy_exchange_applies_to_unmatched_hosts() {
    let (upstream, seen) = server(|_, _| (200, "tool-ok".into())).await;
    let (sts, _) = server(|_, body| {
        let form = String::from_utf8_lossy(body).to_string();
        assert!(!form.contains("audience="), "no route, no audience: {form}");
        (
            200,
            "{\"access_token\":\"default-exchanged\",\"expires_in\":60}".into(),
        )
    })
    .await;
    let (tx, rx) =
        tokio::sync::watch::channel(Arc::new(RouteTable::new(Vec::new(), Action::Exchange)));
    let outbound = Outbound::new(
        rx,
        Some(
            StsClient::new(
                None,
                ClientAuth::Secret(Arc::from("s")),
                Duration::from_secs(2),
            )
            .unwrap(),
        ),
        Arc::new(FnOriginalDst(move |_, _| Some(upstream))),
        OutboundSettings {
            token_url: Some(format!("http://{sts}/token")),
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (_trigger, watch) = drain::channel();
    tokio::spawn(outbound.serve(l, watch));
    let out = roundtrip(proxy, "GET / HTTP/1.1\r\nHost: anything.example\r\nAuthorization: Bearer u\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(seen.lock().unwrap()[0].2, "Bearer default-exchanged");
    // Without a token, no_token_policy deny answers 401 and the tool is not called.
    let out = roundtrip(
        proxy,
        "GET / HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 401") && out.contains("missing_token"),
        "{out}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    drop(tx);
}
