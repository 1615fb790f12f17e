//! JWT validation (CONTRACT §5 "Inbound", JWT) and the verified-token cache.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use proxy_core::metrics::Metrics;
use proxy_core::readiness::Readiness;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cache::{Entry, TokenHash, VerifiedCache};
use crate::jwks::{parse_alg, Jwks, JwksError, VerifyKey};
use crate::{JwtConfig, JwtError};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of a verified token that AuthBridge uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub sub: Option<String>,
    pub iss: String,
    /// `azp`, else `client_id`.
    pub client_id: Option<String>,
    /// `exp` in Unix seconds (fraction dropped).
    pub exp: u64,
    /// `aud`, as an array.
    pub aud: Vec<String>,
    // Header values built once at verification, so a cached token costs no allocation.
    pub(crate) sub_header: Option<HeaderValue>,
    pub(crate) iss_header: HeaderValue,
    pub(crate) client_id_header: Option<HeaderValue>,
}

/// Validates bearer JWTs against an issuer's [`Jwks`].
pub struct Validator {
    issuer: String,
    audiences: Vec<String>,
    skew: f64,
    jwks: Arc<Jwks>,
    cache: Option<VerifiedCache>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// A token split and decoded up to (not including) its claims.
struct Parsed<'a> {
    alg: Algorithm,
    kid: Option<String>,
    /// `header.payload`, the signed bytes.
    signed: &'a str,
    signature: &'a str,
    payload: Vec<u8>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default, deserialize_with = "present")]
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default, deserialize_with = "present")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Audience>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    azp: Option<String>,
    #[serde(default, deserialize_with = "present")]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A present member must have the right type: `null` is a type error, not "absent".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// JSON text whose top level is an object (serde would also accept an array for a struct).
fn is_json_object(b: &[u8]) -> bool {
    b.iter()
        .find(|c| !c.is_ascii_whitespace())
        .is_some_and(|&c| c == b'{')
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(JwtError::Malformed),
    };
    if p.is_empty() {
        return Err(JwtError::Malformed);
    }
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    if !is_json_object(&header) {
        return Err(JwtError::Malformed);
    }
    let header: RawHeader = serde_json::from_slice(&header).map_err(|_| JwtError::Malformed)?;
    let alg = parse_alg(&header.alg).ok_or(JwtError::UnsupportedAlgorithm)?;
    if header.crit.is_some() {
        return Err(JwtError::UnsupportedHeader);
    }
    if s.is_empty() || URL_SAFE_NO_PAD.decode(s).is_err() {
        return Err(JwtError::Malformed);
    }
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed)?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        signed: &token[..h.len() + 1 + p.len()],
        signature: s,
        payload,
    })
}

fn header_value(s: &str) -> Result<HeaderValue, JwtError> {
    HeaderValue::from_str(s).map_err(|_| JwtError::UnforwardableClaim)
}

impl Validator {
    /// A validator over a key set (see [`Jwks::start`] and [`Jwks::from_json`]).
    pub fn new(cfg: JwtConfig, jwks: Arc<Jwks>) -> Self {
        if cfg.audiences.is_empty() {
            tracing::warn!("inbound.jwt has no audience: every token will be refused");
        }
        Self {
            cache: VerifiedCache::new(cfg.verified_cache_size),
            skew: cfg.clock_skew.as_secs_f64(),
            issuer: cfg.issuer,
            audiences: cfg.audiences,
            jwks,
        }
    }

    /// [`Jwks::start`] + [`Validator::new`] (call inside a tokio runtime).
    pub fn start(
        cfg: JwtConfig,
        metrics: Arc<Metrics>,
        readiness: &Readiness,
    ) -> Result<Self, JwksError> {
        let jwks = Jwks::start(&cfg, metrics, readiness)?;
        Ok(Self::new(cfg, jwks))
    }

    /// A validator over a fixed JWKS document (never fetched; `cfg.jwks_uri` is ignored).
    pub fn with_static_jwks(cfg: JwtConfig, jwks_json: &str) -> Result<Self, JwksError> {
        Ok(Self::new(cfg, Jwks::from_json(jwks_json)?))
    }

    /// The key set in use.
    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// Number of tokens currently in the verified-token cache (for tests and diagnostics).
    #[doc(hidden)]
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, VerifiedCache::len)
    }

    /// Validates a bearer token (CONTRACT §5): signature by a JWKS key of an accepted
    /// algorithm, `iss`, `aud`, `exp`, `nbf`, `iat`. A token seen before and still valid is
    /// answered from the cache (one SHA-256 and a lookup). Key hints in the header other than
    /// `kid` (`jku`, `jwk`, `x5u`, `x5c`) are ignored: only JWKS keys are ever used.
    pub async fn validate(&self, token: &str) -> Result<Arc<VerifiedClaims>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        let generation = self.jwks.generation();
        let key = match &self.cache {
            Some(cache) => {
                let key = TokenHash(Sha256::digest(token.as_bytes()).into());
                if let Some(hit) = cache.get(&key, now_secs(), generation) {
                    return Ok(hit);
                }
                Some(key)
            }
            None => None,
        };
        let parsed = parse(token)?;
        self.verify_signature(&parsed).await?;
        let now = now_secs();
        let (claims, expired_at) = self.check_claims(&parsed.payload, now)?;
        let claims = Arc::new(claims);
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.insert(
                key,
                Entry {
                    claims: claims.clone(),
                    expired_at,
                    generation,
                },
            );
        }
        Ok(claims)
    }

    async fn verify_signature(&self, p: &Parsed<'_>) -> Result<(), JwtError> {
        let verify = |k: &VerifyKey| {
            jsonwebtoken::crypto::verify(p.signature, p.signed.as_bytes(), &k.key, p.alg)
                .unwrap_or(false)
        };
        let seen_seq = self.jwks.fetch_seq();
        let mut keys = self.jwks.current();
        match &p.kid {
            Some(kid) => {
                if keys.by_kid(kid).is_none() {
                    self.jwks.refetch_unknown_kid(seen_seq).await;
                    keys = self.jwks.current();
                }
                let Some(candidates) = keys.by_kid(kid) else {
                    return Err(if keys.is_empty() {
                        JwtError::NoKeys
                    } else {
                        JwtError::UnknownKid
                    });
                };
                let mut fitting = false;
                for k in candidates.filter(|k| k.fits(p.alg)) {
                    fitting = true;
                    if verify(k) {
                        return Ok(());
                    }
                }
                Err(if fitting {
                    JwtError::BadSignature
                } else {
                    JwtError::AlgorithmMismatch
                })
            }
            None => {
                let mut fitting = false;
                for k in keys.all().filter(|k| k.fits(p.alg)) {
                    fitting = true;
                    if verify(k) {
                        return Ok(());
                    }
                }
                Err(if fitting {
                    JwtError::BadSignature
                } else {
                    JwtError::NoKeys
                })
            }
        }
    }

    /// Checks the claims; returns them with the time from which the token counts as expired.
    fn check_claims(&self, payload: &[u8], now: f64) -> Result<(VerifiedClaims, f64), JwtError> {
        if !is_json_object(payload) {
            return Err(JwtError::InvalidClaims);
        }
        let c: RawClaims = serde_json::from_slice(payload).map_err(|_| JwtError::InvalidClaims)?;
        let iss = c.iss.ok_or(JwtError::MissingClaim("iss"))?;
        if iss != self.issuer {
            return Err(JwtError::WrongIssuer);
        }
        let aud = match c.aud.ok_or(JwtError::MissingClaim("aud"))? {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
        };
        if !aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(JwtError::WrongAudience);
        }
        let exp = c.exp.ok_or(JwtError::MissingClaim("exp"))?;
        let expired_at = exp + self.skew;
        if now >= expired_at {
            return Err(JwtError::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now + self.skew) {
            return Err(JwtError::NotYetValid);
        }
        if c.iat.is_some_and(|iat| iat > now + self.skew) {
            return Err(JwtError::IssuedInFuture);
        }
        let client_id = c.azp.or(c.client_id);
        let claims = VerifiedClaims {
            sub_header: c.sub.as_deref().map(header_value).transpose()?,
            iss_header: header_value(&iss)?,
            client_id_header: client_id.as_deref().map(header_value).transpose()?,
            sub: c.sub,
            iss,
            client_id,
            // Saturating float-to-int conversion; `exp` is finite and positive here.
            exp: exp as u64,
            aud,
        };
        Ok((claims, expired_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parse_classes() {
        let h = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let p = b64("{}");
        let ok = format!("{h}.{p}.AAAA");
        assert!(parse(&ok).is_ok());
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            &format!("{h}.{p}."),
            &format!("{h}.{p}.AA=A"),
            &format!("{h}={p}.AAAA"),
            &format!("{h}.{p}=.AAAA"),
            &format!("{h}.{p}.AA+A"),
            &format!("{}.{p}.AAAA", b64("[1]")),
            &format!("{}.{p}.AAAA", b64("not json")),
            &format!("{}.{p}.AAAA", b64(r#"{"kid":"k"}"#)),
            &format!("{}.{p}.AAAA", b64(r#"{"alg":5}"#)),
            &format!("{}.{p}.AAAA", b64(r#"{"alg":"RS256","kid":5}"#)),
            &format!("{}.{p}.AAAA", b64(r#"{"alg":"RS256","kid":null}"#)),
            &format!("{}.{p}.AAAA", b64(r#"{"alg":"RS256","alg":"RS256"}"#)),
        ] {
            assert_eq!(parse(bad).err(), Some(JwtError::Malformed), "{bad}");
        }
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "ES512", "RSA-OAEP", "",
        ] {
            let t = format!("{}.{p}.AAAA", b64(&format!(r#"{{"alg":"{alg}"}}"#)));
            assert_eq!(
                parse(&t).err(),
                Some(JwtError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
        let t = format!("{}.{p}.", b64(r#"{"alg":"none"}"#));
        assert_eq!(parse(&t).err(), Some(JwtError::UnsupportedAlgorithm));
        let t = format!("{}.{p}.AAAA", b64(r#"{"alg":"ES256","crit":["exp"]}"#));
        assert_eq!(parse(&t).err(), Some(JwtError::UnsupportedHeader));
    }

    fn validator() -> Validator {
        let mut cfg = JwtConfig::new("https://iss", "", vec!["me".into(), "also-me".into()]);
        cfg.clock_skew = std::time::Duration::from_secs(30);
        let n = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        let jwks = format!(r#"{{"keys":[{{"kty":"RSA","n":"{n}","e":"AQAB"}}]}}"#);
        Validator::with_static_jwks(cfg, &jwks).unwrap()
    }

    #[test]
    fn claim_rules() {
        let v = validator();
        let now = 1_000_000.0;
        let check = |json: &str| v.check_claims(json.as_bytes(), now).map(|(c, _)| c);
        let c = check(r#"{"iss":"https://iss","aud":"me","exp":1000100,"sub":"u","azp":"cli","client_id":"other"}"#).unwrap();
        assert_eq!(c.sub.as_deref(), Some("u"));
        assert_eq!(c.client_id.as_deref(), Some("cli"));
        assert_eq!(c.aud, vec!["me".to_string()]);
        assert_eq!(c.exp, 1_000_100);
        let c =
            check(r#"{"iss":"https://iss","aud":["x","also-me"],"exp":1000100.5,"client_id":"c"}"#)
                .unwrap();
        assert_eq!(c.client_id.as_deref(), Some("c"));
        assert_eq!(c.sub, None);
        // exp within skew
        assert!(check(r#"{"iss":"https://iss","aud":"me","exp":999980}"#).is_ok());
        let cases: &[(&str, JwtError)] = &[
            (
                r#"{"aud":"me","exp":1000100}"#,
                JwtError::MissingClaim("iss"),
            ),
            (
                r#"{"iss":"https://iss","exp":1000100}"#,
                JwtError::MissingClaim("aud"),
            ),
            (
                r#"{"iss":"https://iss","aud":"me"}"#,
                JwtError::MissingClaim("exp"),
            ),
            (
                r#"{"iss":"https://iss/","aud":"me","exp":1000100}"#,
                JwtError::WrongIssuer,
            ),
            (
                r#"{"iss":"https://ISS","aud":"me","exp":1000100}"#,
                JwtError::WrongIssuer,
            ),
            (
                r#"{"iss":"https://iss","aud":"you","exp":1000100}"#,
                JwtError::WrongAudience,
            ),
            (
                r#"{"iss":"https://iss","aud":[],"exp":1000100}"#,
                JwtError::WrongAudience,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":999970}"#,
                JwtError::Expired,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":-5}"#,
                JwtError::Expired,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"nbf":1000031}"#,
                JwtError::NotYetValid,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"iat":1000031}"#,
                JwtError::IssuedInFuture,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":"1000100"}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":5,"exp":1000100}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":["me",5],"exp":1000100}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":5,"aud":"me","exp":1000100}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":null,"aud":"me","exp":1000100}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":null}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":true}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"sub":7}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"nbf":"0"}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"azp":{}}"#,
                JwtError::InvalidClaims,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"exp":1000100}"#,
                JwtError::InvalidClaims,
            ),
            (r#"["https://iss","me",1000100]"#, JwtError::InvalidClaims),
            (r#"not json"#, JwtError::InvalidClaims),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"sub":"a\nb"}"#,
                JwtError::UnforwardableClaim,
            ),
            (
                r#"{"iss":"https://iss","aud":"me","exp":1000100,"azp":"a\u0000"}"#,
                JwtError::UnforwardableClaim,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(check(json).err(), Some(*want), "{json}");
        }
        // nbf / iat within skew are fine
        assert!(check(
            r#"{"iss":"https://iss","aud":"me","exp":1000100,"nbf":1000029,"iat":1000029}"#
        )
        .is_ok());
    }
}
