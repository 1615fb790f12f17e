//! The issuer's key set: parsing (which keys are accepted), fetching, periodic and on-demand
//! refresh, readiness.

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use proxy_core::metrics::Metrics;
use proxy_core::readiness::{Pending, Readiness};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::JwtConfig;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// First retry delay while no key set could be loaded yet (doubles up to `MAX_BACKOFF`).
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// JWK member values are base64url; padding is tolerated (some issuers emit it).
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a key set could not be loaded. Never carries key material or response bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("jwks_uri must be an http:// or https:// URL")]
    BadUri,
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(String),
    #[error("fetching the JWKS failed: {0}")]
    Transport(&'static str),
    #[error("the JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS document is larger than 1 MiB")]
    TooLarge,
    #[error("the JWKS document is not valid JSON with a \"keys\" array")]
    NotJwks,
    #[error("the JWKS holds no usable signature key")]
    NoUsableKeys,
}

/// The key types this proxy verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// The JWS algorithms accepted in token headers and JWK `alg` members. Everything else
/// (`none`, `HS*`, `ES512`, ...) is refused.
pub(crate) fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The key kind an accepted algorithm needs.
pub(crate) fn kind_for(alg: Algorithm) -> KeyKind {
    match alg {
        Algorithm::ES256 => KeyKind::P256,
        Algorithm::ES384 => KeyKind::P384,
        Algorithm::EdDSA => KeyKind::Ed25519,
        _ => KeyKind::Rsa,
    }
}

/// One usable verification key.
pub(crate) struct VerifyKey {
    pub(crate) kind: KeyKind,
    /// The JWK's `alg`, when it names one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    /// Whether a token signed with `alg` may be verified with this key.
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.kind == kind_for(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// A parsed key set.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
    by_kid: HashMap<String, Vec<usize>>,
    /// SHA-256 over the accepted keys: tells a changed set from a re-fetched identical one.
    digest: [u8; 32],
}

impl KeySet {
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys with this `kid`, or `None` when the set has no such `kid`.
    pub(crate) fn by_kid(&self, kid: &str) -> Option<impl Iterator<Item = &VerifyKey>> {
        self.by_kid
            .get(kid)
            .map(|idx| idx.iter().map(|&i| &self.keys[i]))
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &VerifyKey> {
        self.keys.iter()
    }
}

/// A key left out of the set, and why (logged once per kid and reason).
struct Skipped {
    kid: Option<String>,
    reason: &'static str,
}

fn parse_jwks(body: &[u8]) -> Result<(KeySet, Vec<Skipped>), JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| JwksError::NotJwks)?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NotJwks)?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    let mut hasher = Sha256::new();
    for jwk in keys {
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        match parse_jwk(jwk, &mut hasher) {
            Ok(key) => {
                if let Some(kid) = &kid {
                    set.by_kid
                        .entry(kid.clone())
                        .or_default()
                        .push(set.keys.len());
                }
                set.keys.push(key);
            }
            Err(reason) => skipped.push(Skipped { kid, reason }),
        }
    }
    if set.keys.is_empty() {
        for s in &skipped {
            tracing::warn!(kid = ?s.kid, reason = s.reason, "JWKS key skipped");
        }
        return Err(JwksError::NoUsableKeys);
    }
    set.digest = hasher.finalize().into();
    Ok((set, skipped))
}

fn b64_field(jwk: &Value, name: &str) -> Result<Vec<u8>, &'static str> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or("missing or non-string key parameter")?;
    JWK_B64
        .decode(s)
        .map_err(|_| "key parameter is not base64url")
}

/// Parses one JWK; `Err` is the reason it is skipped.
fn parse_jwk(jwk: &Value, hasher: &mut Sha256) -> Result<VerifyKey, &'static str> {
    if !jwk.is_object() {
        return Err("not a JSON object");
    }
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err("use is not sig"),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Err("key_ops does not include verify");
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(parse_alg(a).ok_or("alg not accepted")?),
        Some(_) => return Err("alg is not a string"),
    };
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing kty")?;
    let crv = || jwk.get("crv").and_then(Value::as_str);
    let (kind, key, material): (KeyKind, DecodingKey, Vec<u8>) = match kty {
        "RSA" => {
            let n = b64_field(jwk, "n")?;
            let e = b64_field(jwk, "e")?;
            let n_trim = trim_zeros(&n);
            let e_trim = trim_zeros(&e);
            if n_trim.len() < 256 || n_trim.len() > 1024 {
                return Err("RSA modulus must be 2048 to 8192 bits");
            }
            if e_trim.is_empty() || e_trim.len() > 8 {
                return Err("RSA exponent out of range");
            }
            let key = DecodingKey::from_rsa_raw_components(n_trim, e_trim);
            let mut m = Vec::with_capacity(n_trim.len() + e_trim.len() + 1);
            m.extend_from_slice(n_trim);
            m.push(0);
            m.extend_from_slice(e_trim);
            (KeyKind::Rsa, key, m)
        }
        "EC" => {
            let (kind, len) = match crv() {
                Some("P-256") => (KeyKind::P256, 32),
                Some("P-384") => (KeyKind::P384, 48),
                _ => return Err("EC curve not supported"),
            };
            let x = b64_field(jwk, "x")?;
            let y = b64_field(jwk, "y")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point), point)
        }
        "OKP" => {
            if crv() != Some("Ed25519") {
                return Err("OKP curve not supported");
            }
            let x = b64_field(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key has the wrong length");
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x), x)
        }
        "oct" => return Err("symmetric (HMAC) keys are never used"),
        _ => return Err("kty not supported"),
    };
    if let Some(alg) = alg {
        if kind_for(alg) != kind {
            return Err("alg does not fit the key type");
        }
    }
    // Fingerprint: kid, kind, alg and public material, length-prefixed.
    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
    for part in [
        kid.as_bytes(),
        kind.name().as_bytes(),
        alg.map(|a| format!("{a:?}")).unwrap_or_default().as_bytes(),
        &material,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    Ok(VerifyKey { kind, alg, key })
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The issuer's key set, kept fresh in the background.
///
/// Built with [`Jwks::start`] (fetches `jwks_uri`) or [`Jwks::from_json`] (a fixed set, for
/// tests, benches and embedded issuers).
pub struct Jwks {
    uri: String,
    client: Option<reqwest::Client>,
    refresh_interval: Duration,
    min_interval: Duration,
    fetch_timeout: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped when the accepted key material changes (verified-token cache entries of an
    /// older generation are not used).
    generation: AtomicU64,
    /// Bumped after every fetch attempt (lets concurrent unknown-`kid` misses share one fetch).
    fetch_seq: AtomicU64,
    /// Serialises fetches; holds when the last fetch started.
    gate: tokio::sync::Mutex<Option<Instant>>,
    metrics: Option<Arc<Metrics>>,
    pending: Mutex<Option<Pending>>,
    logged: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("uri", &self.uri)
            .field("keys", &self.key_count())
            .finish()
    }
}

impl Jwks {
    /// Starts fetching `cfg.jwks_uri` in the background (call inside a tokio runtime).
    ///
    /// `jwks` stays pending in `readiness` until the first successful fetch; until then fetches
    /// are retried with backoff (200 ms doubling to 10 s). Afterwards the set is refreshed every
    /// `cfg.refresh_interval` (failures retried with the same backoff, the last good set stays
    /// in use). Every fetch counts in `metrics.jwks_refreshes{result=success|failure}`. The
    /// background task ends when the returned `Arc` (and every clone) is dropped.
    pub fn start(
        cfg: &JwtConfig,
        metrics: Arc<Metrics>,
        readiness: &Readiness,
    ) -> Result<Arc<Self>, JwksError> {
        let lower = cfg.jwks_uri.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(JwksError::BadUri);
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.fetch_timeout)
            .connect_timeout(cfg.fetch_timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("authbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwksError::Client(e.to_string()))?;
        let pending = readiness.pending("jwks");
        let jwks = Arc::new(Self {
            uri: cfg.jwks_uri.clone(),
            client: Some(client),
            refresh_interval: cfg.refresh_interval.max(Duration::from_secs(1)),
            min_interval: cfg.unknown_kid_min_interval,
            fetch_timeout: cfg.fetch_timeout,
            keys: RwLock::new(Arc::new(KeySet::default())),
            generation: AtomicU64::new(0),
            fetch_seq: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(None),
            metrics: Some(metrics),
            pending: Mutex::new(Some(pending)),
            logged: Mutex::new(HashSet::new()),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&jwks)));
        Ok(jwks)
    }

    /// A fixed key set that is never fetched or refreshed.
    pub fn from_json(json: &str) -> Result<Arc<Self>, JwksError> {
        let jwks = Self {
            uri: String::new(),
            client: None,
            refresh_interval: Duration::MAX,
            min_interval: Duration::MAX,
            fetch_timeout: Duration::ZERO,
            keys: RwLock::new(Arc::new(KeySet::default())),
            generation: AtomicU64::new(0),
            fetch_seq: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(None),
            metrics: None,
            pending: Mutex::new(None),
            logged: Mutex::new(HashSet::new()),
        };
        jwks.install(parse_jwks(json.as_bytes())?);
        Ok(Arc::new(jwks))
    }

    /// Whether a key set has been loaded.
    pub fn is_loaded(&self) -> bool {
        !self.current().is_empty()
    }

    /// Number of usable keys in the current set.
    pub fn key_count(&self) -> usize {
        self.current().keys.len()
    }

    /// Fetches the key set now (regardless of rate limits); on failure the current set stays.
    /// A fixed set ([`Jwks::from_json`]) returns `Ok` without doing anything.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        if self.client.is_none() {
            return Ok(());
        }
        let mut last = self.gate.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_install().await
    }

    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn fetch_seq(&self) -> u64 {
        self.fetch_seq.load(Ordering::Acquire)
    }

    /// Refetch because a token named an unknown `kid`. `seen_seq` is [`Jwks::fetch_seq`] read
    /// before the lookup that missed: if any fetch completed since, its result is used instead
    /// (concurrent misses share one fetch); otherwise at most one fetch per
    /// `unknown_kid_min_interval` is made.
    pub(crate) async fn refetch_unknown_kid(&self, seen_seq: u64) {
        if self.client.is_none() {
            return;
        }
        let mut last = self.gate.lock().await;
        if self.fetch_seq() != seen_seq {
            return;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_install().await;
    }

    /// Fetch + install; the caller holds `gate`.
    async fn fetch_and_install(&self) -> Result<(), JwksError> {
        let result = self.fetch().await.and_then(|body| parse_jwks(&body));
        let result = match result {
            Ok(parsed) => {
                self.install(parsed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(jwks_uri = %self.uri, error = %e, "JWKS fetch failed; keeping the current key set");
                Err(e)
            }
        };
        self.fetch_seq.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &self.metrics {
            let label = if result.is_ok() { "success" } else { "failure" };
            m.jwks_refreshes.get_or_create(&[("result", label)]).inc();
        }
        result
    }

    async fn fetch(&self) -> Result<Vec<u8>, JwksError> {
        let client = self.client.as_ref().ok_or(JwksError::BadUri)?;
        let work = async {
            let mut resp = client
                .get(&self.uri)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| JwksError::Transport(describe(&e)))?;
            if !resp.status().is_success() {
                return Err(JwksError::Status(resp.status().as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| JwksError::Transport(describe(&e)))?
            {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(JwksError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        // The client timeout already bounds the request; this is a backstop.
        tokio::time::timeout(self.fetch_timeout + Duration::from_millis(500), work)
            .await
            .unwrap_or(Err(JwksError::Transport("timed out")))
    }

    fn install(&self, (set, skipped): (KeySet, Vec<Skipped>)) {
        {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            for s in skipped {
                let key = format!("{:?}/{}", s.kid, s.reason);
                if logged.insert(key) {
                    tracing::info!(kid = ?s.kid, reason = s.reason, "JWKS key skipped");
                }
            }
        }
        let count = set.keys.len();
        {
            let mut cur = self.keys.write().unwrap_or_else(|e| e.into_inner());
            if cur.digest != set.digest {
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(jwks_uri = %self.uri, keys = count, "JWKS loaded");
            }
            *cur = Arc::new(set);
        }
        // First success: ready.
        drop(
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    }
}

async fn refresh_loop(weak: Weak<Jwks>) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let delay = {
            let Some(jwks) = weak.upgrade() else { return };
            match jwks.refresh().await {
                Ok(()) => {
                    backoff = INITIAL_BACKOFF;
                    jwks.refresh_interval
                }
                Err(_) => {
                    let d = backoff.min(jwks.refresh_interval);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    d
                }
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn rsa_jwk(kid: &str) -> Value {
        let mut n = vec![0xC5u8; 256];
        n[255] = 0x01;
        serde_json::json!({"kty":"RSA","kid":kid,"n":b64(&n),"e":"AQAB"})
    }

    #[test]
    fn accepts_and_skips() {
        let ec = serde_json::json!({"kty":"EC","crv":"P-256","kid":"ec","x":b64(&[1;32]),"y":b64(&[2;32])});
        let ed = serde_json::json!({"kty":"OKP","crv":"Ed25519","kid":"ed","x":b64(&[3;32])});
        let doc = serde_json::json!({"keys":[
            rsa_jwk("rsa"), ec, ed,
            {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"small","n":b64(&[0xff;128]),"e":"AQAB"},
            {"kty":"EC","crv":"P-521","kid":"p521","x":b64(&[1;66]),"y":b64(&[1;66])},
            {"kty":"OKP","crv":"X25519","kid":"x","x":b64(&[1;32])},
            {"kty":"EC","crv":"P-256","kid":"short","x":b64(&[1;31]),"y":b64(&[2;32])},
            {"kty":"RSA","kid":"hsalg","alg":"HS256","n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"RSA","kid":"esalg","alg":"ES256","n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"RSA","kid":"ops","key_ops":["encrypt"],"n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"weird","kid":"w"},
            "not an object"
        ]});
        let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 3);
        assert_eq!(skipped.len(), 11);
        assert!(set.by_kid("rsa").is_some());
        assert!(set.by_kid("hmac").is_none());
        assert_eq!(
            set.by_kid("ec").unwrap().next().unwrap().kind,
            KeyKind::P256
        );
        assert!(set
            .by_kid("ed")
            .unwrap()
            .next()
            .unwrap()
            .fits(Algorithm::EdDSA));
    }

    #[test]
    fn alg_binding() {
        let mut j = rsa_jwk("a");
        j["alg"] = "PS256".into();
        let (set, _) =
            parse_jwks(serde_json::json!({ "keys": [j] }).to_string().as_bytes()).unwrap();
        let k = set.by_kid("a").unwrap().next().unwrap();
        assert!(k.fits(Algorithm::PS256));
        assert!(!k.fits(Algorithm::RS256));
        assert!(!k.fits(Algorithm::ES256));
    }

    #[test]
    fn rejects_documents() {
        assert_eq!(parse_jwks(b"nope").err(), Some(JwksError::NotJwks));
        assert_eq!(parse_jwks(b"{}").err(), Some(JwksError::NotJwks));
        assert_eq!(
            parse_jwks(br#"{"keys":[]}"#).err(),
            Some(JwksError::NoUsableKeys)
        );
        assert_eq!(
            parse_jwks(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#).err(),
            Some(JwksError::NoUsableKeys)
        );
    }

    #[test]
    fn digest_tracks_material() {
        let d = |doc: Value| parse_jwks(doc.to_string().as_bytes()).unwrap().0.digest;
        let a = d(serde_json::json!({"keys":[rsa_jwk("a")]}));
        assert_eq!(a, d(serde_json::json!({"keys":[rsa_jwk("a")]})));
        assert_ne!(a, d(serde_json::json!({"keys":[rsa_jwk("b")]})));
    }
}
