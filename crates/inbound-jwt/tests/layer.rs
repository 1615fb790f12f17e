//! The tower layer and `authorize`: exact 401 answers, bypass, identity headers, metrics.

mod common;

use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use inbound_jwt::{
    strip_identity_headers, Authorized, BypassPaths, JwtAuth, JwtAuthLayer, Validator,
    HEADER_CLIENT_ID, HEADER_ISS, HEADER_PEER_ID, HEADER_SUB,
};
use proxy_core::http::{full, Body};
use proxy_core::metrics::Metrics;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::{Layer, ServiceExt};

struct Fixture {
    auth: Arc<JwtAuth>,
    metrics: Arc<Metrics>,
    calls: Arc<AtomicUsize>,
}

fn fixture() -> Fixture {
    let k = keys();
    let v = Validator::with_static_jwks(
        config(""),
        &jwks_doc(&[k.rsa.public.clone(), k.p256.public.clone()]),
    )
    .unwrap();
    let bypass = BypassPaths::new(&[
        "/.well-known/*".to_string(),
        "/healthz".to_string(),
        "/readyz".to_string(),
        "/livez".to_string(),
    ])
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    Fixture {
        auth: Arc::new(JwtAuth::new(Arc::new(v), bypass, &metrics)),
        metrics,
        calls: Arc::new(AtomicUsize::new(0)),
    }
}

/// Sends one request through the layer to an inner service that echoes what it received.
async fn send(f: &Fixture, req: Request<String>) -> (StatusCode, HeaderMap, Value) {
    let calls = f.calls.clone();
    let inner = tower::service_fn(move |req: Request<String>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let h = |name: &str| {
                let all: Vec<&str> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect();
                json!(all)
            };
            let authorized = match req.extensions().get::<Authorized>() {
                Some(Authorized::Bypass) => json!("bypass"),
                Some(Authorized::Token(c)) => json!(c.sub),
                None => json!(null),
            };
            let body = json!({
                "inner": true,
                "sub": h("x-authbridge-sub"),
                "iss": h("x-authbridge-iss"),
                "client": h("x-authbridge-client-id"),
                "peer": h("x-authbridge-peer-id"),
                "authorization": h("authorization"),
                "path": req.uri().path(),
                "body": req.body(),
                "authorized": authorized,
            });
            Ok::<Response<Body>, Infallible>(Response::new(full(body.to_string())))
        }
    });
    let svc = JwtAuthLayer::new(f.auth.clone()).layer(inner);
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    (status, headers, body)
}

fn req(path: &str, auth: Option<&str>) -> Request<String> {
    let mut b = Request::builder().uri(path);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body("payload".to_string()).unwrap()
}

fn decisions(m: &Metrics, decision: &str, reason: &str) -> u64 {
    let needle = format!(
        "authbridge_inbound_decisions_total{{decision=\"{decision}\",reason=\"{reason}\"}} "
    );
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn missing_token_is_401_without_error_code() {
    let f = fixture();
    for auth in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let (status, h, body) = send(&f, req("/api/chat", auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(h["www-authenticate"], r#"Bearer realm="authbridge""#);
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            body,
            json!({"error": "unauthorized", "message": "a bearer token is required"})
        );
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), 0, "inner never called");
    assert_eq!(decisions(&f.metrics, "deny", "missing_token"), 4);
}

#[tokio::test]
async fn invalid_token_is_401_invalid_token_without_token_contents() {
    let f = fixture();
    let k = keys();
    let cases = [
        (
            k.rsa.sign(&claims_with(json!({"exp": now() - 3600}))),
            "token has expired",
            "expired",
        ),
        (
            k.rsa.sign(&claims_with(json!({"aud": "someone-else"}))),
            "token audience is not accepted",
            "wrong_audience",
        ),
        (
            k.rsa.sign(&claims_with(json!({"iss": "https://evil"}))),
            "token issuer is not accepted",
            "wrong_issuer",
        ),
        ("not.a.jwt".to_string(), "malformed token", "malformed"),
        (
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none"}"#),
                b64(claims().to_string())
            ),
            "token algorithm is not accepted",
            "unsupported_alg",
        ),
    ];
    for (token, message, reason) in &cases {
        let (status, h, body) = send(&f, req("/api", Some(&format!("Bearer {token}")))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            h["www-authenticate"],
            r#"Bearer realm="authbridge", error="invalid_token""#
        );
        assert_eq!(body, json!({"error": "unauthorized", "message": message}));
        let text = body.to_string();
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(!text.contains(part), "body leaks the token");
        }
        assert_eq!(decisions(&f.metrics, "deny", reason), 1, "{reason}");
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn valid_token_sets_identity_headers_and_strips_spoofed_ones() {
    let f = fixture();
    let k = keys();
    let token = k.p256.sign(&claims());
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {token}");
        let mut r = req("/api/chat?q=1", Some(&auth));
        let h = r.headers_mut();
        h.append("x-authbridge-sub", HeaderValue::from_static("admin"));
        h.append("x-authbridge-sub", HeaderValue::from_static("root"));
        h.append("X-AuthBridge-Iss", HeaderValue::from_static("https://evil"));
        h.append("x-authbridge-client-id", HeaderValue::from_static("spoof"));
        let (status, _h, body) = send(&f, r).await;
        assert_eq!(status, StatusCode::OK, "{scheme}");
        assert_eq!(body["inner"], true);
        assert_eq!(body["sub"], json!(["user-42"]));
        assert_eq!(body["iss"], json!([ISS]));
        assert_eq!(body["client"], json!(["web-app"]));
        assert_eq!(body["authorization"], json!([auth]), "forwarded unchanged");
        assert_eq!(body["body"], "payload");
        assert_eq!(body["authorized"], "user-42");
    }
    assert_eq!(decisions(&f.metrics, "allow", "token"), 3);
}

#[tokio::test]
async fn absent_claims_leave_headers_absent() {
    let f = fixture();
    let k = keys();
    let token = k.rsa.sign(&claims_with(json!({"sub": null, "azp": null})));
    let mut r = req("/x", Some(&format!("Bearer {token}")));
    r.headers_mut()
        .insert("x-authbridge-sub", HeaderValue::from_static("admin"));
    r.headers_mut()
        .insert("x-authbridge-client-id", HeaderValue::from_static("spoof"));
    let (status, _, body) = send(&f, r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sub"], json!([]));
    assert_eq!(body["client"], json!([]));
    assert_eq!(body["iss"], json!([ISS]));
    // client_id is used when azp is absent
    let token = k
        .rsa
        .sign(&claims_with(json!({"azp": null, "client_id": "svc-a"})));
    let (_, _, body) = send(&f, req("/x", Some(&format!("Bearer {token}")))).await;
    assert_eq!(body["client"], json!(["svc-a"]));
}

#[tokio::test]
async fn claims_that_are_not_header_safe_are_refused() {
    let f = fixture();
    let k = keys();
    let token = k
        .rsa
        .sign(&claims_with(json!({"sub": "x\r\nx-authbridge-sub: admin"})));
    let (status, h, body) = send(&f, req("/x", Some(&format!("Bearer {token}")))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="authbridge", error="invalid_token""#
    );
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let f = fixture();
    let k = keys();
    let good = format!("Bearer {}", k.rsa.sign(&claims()));
    let mut r = req("/x", Some(&good));
    r.headers_mut()
        .append("authorization", HeaderValue::from_static("Bearer other"));
    let (status, h, _) = send(&f, r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="authbridge", error="invalid_token""#
    );
}

#[tokio::test]
async fn bypass_paths_skip_the_check_but_still_strip_headers() {
    let f = fixture();
    for path in [
        "/healthz",
        "/readyz?full=1",
        "/livez",
        "/.well-known/agent.json",
        "/%68ealthz",
    ] {
        let mut r = req(path, None);
        r.headers_mut()
            .insert("x-authbridge-sub", HeaderValue::from_static("admin"));
        r.headers_mut()
            .insert("x-authbridge-iss", HeaderValue::from_static("evil"));
        let (status, _, body) = send(&f, r).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body["sub"], json!([]));
        assert_eq!(body["iss"], json!([]));
        assert_eq!(body["authorized"], "bypass");
    }
    // A bypass path with a (bad) token is still just forwarded, token untouched.
    let (status, _, body) = send(&f, req("/healthz", Some("Bearer garbage"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["authorization"], json!(["Bearer garbage"]));
    assert_eq!(decisions(&f.metrics, "allow", "bypass"), 6);
    // Traversal tricks do not bypass.
    for path in [
        "/healthz/../admin",
        "/.well-known/%2e%2e/admin",
        "/.well-known/..%2fadmin",
        "//healthz",
        "/healthz%2F..",
        "/healthz/",
        "/.well-known/a/b",
        "/admin?/healthz",
    ] {
        let (status, h, _) = send(&f, req(path, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(h["www-authenticate"], r#"Bearer realm="authbridge""#);
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn layer_leaves_peer_id_to_the_listener() {
    let f = fixture();
    let k = keys();
    let mut r = req("/x", Some(&format!("Bearer {}", k.rsa.sign(&claims()))));
    r.headers_mut().insert(
        HEADER_PEER_ID,
        HeaderValue::from_static("spiffe://example.org/peer"),
    );
    let (_, _, body) = send(&f, r).await;
    assert_eq!(body["peer"], json!(["spiffe://example.org/peer"]));
}

#[tokio::test]
async fn authorize_function_form() {
    let f = fixture();
    let k = keys();
    let mut h = HeaderMap::new();
    h.insert(HEADER_SUB, HeaderValue::from_static("spoof"));
    let token = format!("Bearer {}", k.rsa.sign(&claims()));
    h.insert("authorization", HeaderValue::from_str(&token).unwrap());
    match f.auth.authorize(&mut h, "/v1/messages").await {
        Ok(Authorized::Token(c)) => assert_eq!(c.sub.as_deref(), Some("user-42")),
        other => panic!("{:?}", other.map_err(|r| r.status())),
    }
    assert_eq!(h[HEADER_SUB], "user-42");
    assert_eq!(h[HEADER_ISS], ISS);
    assert_eq!(h[HEADER_CLIENT_ID], "web-app");
    assert_eq!(h["authorization"], token.as_str());
    // refused: the answer is returned for the caller to send
    let mut h = HeaderMap::new();
    let resp = f.auth.authorize(&mut h, "/v1/messages").await.unwrap_err();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let mut h = HeaderMap::new();
    assert!(matches!(
        f.auth.authorize(&mut h, "/healthz").await,
        Ok(Authorized::Bypass)
    ));
}

#[test]
fn strip_removes_all_four() {
    let mut h = HeaderMap::new();
    for name in [
        "x-authbridge-peer-id",
        "x-authbridge-sub",
        "x-authbridge-iss",
        "x-authbridge-client-id",
    ] {
        h.append(name, HeaderValue::from_static("a"));
        h.append(name, HeaderValue::from_static("b"));
    }
    h.insert("x-other", HeaderValue::from_static("kept"));
    strip_identity_headers(&mut h);
    assert_eq!(h.len(), 1);
    assert_eq!(h["x-other"], "kept");
}
