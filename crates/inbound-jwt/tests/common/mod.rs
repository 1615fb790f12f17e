//! Test support: keys and an independent signer (jsonwebtoken's encoder, keys from rcgen),
//! and a real HTTP JWKS server whose answer can be swapped, failed or hung.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use inbound_jwt::JwtConfig;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ISS: &str = "https://issuer.example/realms/agents";
pub const AUD: &str = "spiffe://example.org/ns/team1/sa/agent";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub enc: EncodingKey,
    /// The public JWK (with `kid` when set, no `alg`/`use`).
    pub public: Value,
}

pub enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The signing key, its algorithm, and the public JWK built from rcgen's raw public key
/// (RSA: from jsonwebtoken).
fn generate(kind: &Kind) -> (EncodingKey, Algorithm, Value) {
    match kind {
        Kind::Rsa => {
            let kp =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .unwrap();
            let enc = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
            let jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
            let jwk = serde_json::to_value(&jwk).unwrap();
            let jwk = json!({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]});
            (enc, Algorithm::RS256, jwk)
        }
        Kind::P256 => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let raw = kp.public_key_raw();
            let jwk =
                json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..])});
            (
                EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
                Algorithm::ES256,
                jwk,
            )
        }
        Kind::P384 => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
            let raw = kp.public_key_raw();
            let jwk =
                json!({"kty": "EC", "crv": "P-384", "x": b64(&raw[1..49]), "y": b64(&raw[49..])});
            (
                EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
                Algorithm::ES384,
                jwk,
            )
        }
        Kind::Ed25519 => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key_raw())});
            (
                EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
                Algorithm::EdDSA,
                jwk,
            )
        }
    }
}

impl TestKey {
    pub fn new(kind: Kind, kid: Option<&str>) -> Self {
        let (enc, alg, mut public) = generate(&kind);
        let obj = public.as_object_mut().unwrap();
        if let Some(kid) = kid {
            obj.insert("kid".into(), kid.into());
        }
        Self {
            alg,
            kid: kid.map(str::to_owned),
            enc,
            public,
        }
    }

    /// The same key material under another kid / signing algorithm (e.g. PS256 with an RSA key).
    pub fn with(&self, kid: Option<&str>, alg: Algorithm) -> Self {
        let mut k = self.clone();
        k.alg = alg;
        k.kid = kid.map(str::to_owned);
        let obj = k.public.as_object_mut().unwrap();
        obj.remove("kid");
        if let Some(kid) = kid {
            obj.insert("kid".into(), kid.into());
        }
        k
    }

    /// The public JWK with extra members (e.g. `{"alg":"RS256","use":"sig"}`).
    pub fn jwk_with(&self, extra: Value) -> Value {
        let mut j = self.public.clone();
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j
    }

    /// Signs with jsonwebtoken's encoder (header: alg, typ JWT, kid when set).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.enc).unwrap()
    }

    /// Signs arbitrary header and payload JSON text (exact bytes) with this key.
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        let message = format!("{}.{}", b64(header_json), b64(payload_json));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.enc, self.alg).unwrap();
        format!("{message}.{sig}")
    }
}

/// Keys shared by the tests of one binary (RSA generation is slow).
pub struct Keys {
    pub rsa: TestKey,
    pub rsa2: TestKey,
    pub p256: TestKey,
    pub p384: TestKey,
    pub ed: TestKey,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: TestKey::new(Kind::Rsa, Some("rsa-1")),
        rsa2: TestKey::new(Kind::Rsa, Some("rsa-2")),
        p256: TestKey::new(Kind::P256, Some("ec-256")),
        p384: TestKey::new(Kind::P384, Some("ec-384")),
        ed: TestKey::new(Kind::Ed25519, Some("ed-1")),
    })
}

pub fn jwks_doc(jwks: &[Value]) -> String {
    json!({ "keys": jwks }).to_string()
}

/// Valid claims for `ISS`/`AUD`, expiring in 10 minutes.
pub fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "user-42",
        "azp": "web-app",
        "exp": now() + 600,
        "iat": now(),
        "nbf": now(),
    })
}

pub fn claims_with(patch: Value) -> Value {
    let mut c = claims();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub fn config(jwks_uri: &str) -> JwtConfig {
    let mut cfg = JwtConfig::new(ISS, jwks_uri, vec![AUD.to_string()]);
    cfg.clock_skew = Duration::from_secs(30);
    cfg
}

/// What the JWKS server answers.
#[derive(Clone)]
pub enum Mode {
    Ok(String),
    Status(u16),
    /// Accept the request and never answer.
    Hang,
}

/// A real HTTP/1.1 JWKS endpoint on 127.0.0.1.
pub struct JwksServer {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl JwksServer {
    pub async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (m, f) = (mode.clone(), fetches.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (m, f) = (m.clone(), f.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                        let (m, f) = (m.clone(), f.clone());
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            let mode = m.lock().unwrap().clone();
                            let resp = match mode {
                                Mode::Ok(body) => hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                                Mode::Status(s) => hyper::Response::builder()
                                    .status(s)
                                    .body(Full::new(Bytes::from_static(b"{\"error\":\"x\"}")))
                                    .unwrap(),
                                Mode::Hang => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    unreachable!()
                                }
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                c.lock().unwrap().push(conn.abort_handle());
            }
        });
        Self {
            url: format!("http://{addr}/realms/agents/protocol/openid-connect/certs"),
            mode,
            fetches,
            task,
            conns,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops accepting connections (the issuer goes down).
    pub fn stop(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
