//! `inbound-jwt` owns AuthBridge's inbound bearer-token check (CONTRACT §3 `inbound.jwt`, §5
//! "Inbound"):
//!
//! - [`Jwks`]: the issuer's key set, fetched over `http://` or `https://`, refreshed
//!   periodically and on demand (unknown `kid`, rate-limited, concurrent misses share one
//!   fetch); the last good set keeps working while the issuer is down. Only signature keys of
//!   the RSA (RS*/PS*), EC (ES256 on P-256, ES384 on P-384) and OKP Ed25519 (EdDSA) kinds are
//!   accepted; HMAC (`oct`) keys are never used.
//! - [`Validator`]: strict JWT validation (header, algorithm, key selection, signature, `iss`,
//!   `aud`, `exp`, `nbf`, `iat`, claim types) with a bounded cache of verified tokens keyed by
//!   the SHA-256 of the token.
//! - [`BypassPaths`] / [`normalize_path`]: the unauthenticated path allow-list and the path
//!   normalisation it is matched against.
//! - [`JwtAuth`] (the [`JwtAuth::authorize`] function) and [`JwtAuthLayer`] (the same as a
//!   tower layer): 401 answers, metrics, and the `x-authbridge-*` identity headers.
//!
//! No token, claim set or key material is ever logged or put into an error message.
#![forbid(unsafe_code)]

mod bypass;
mod cache;
mod error;
mod jwks;
mod layer;
mod validator;

pub use bypass::{normalize_path, BypassPaths};
pub use error::JwtError;
pub use jwks::{Jwks, JwksError};
pub use layer::{
    strip_identity_headers, Authorized, JwtAuth, JwtAuthLayer, JwtAuthService, HEADER_CLIENT_ID,
    HEADER_ISS, HEADER_PEER_ID, HEADER_SUB,
};
pub use validator::{Validator, VerifiedClaims, MAX_TOKEN_LEN};

use std::time::Duration;

/// Settings of the inbound JWT check.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Expected `iss`, compared exactly.
    pub issuer: String,
    /// Where the key set is fetched (`http://` or `https://`).
    pub jwks_uri: String,
    /// Accepted audiences: a token is accepted when any of its `aud` values is one of these.
    /// Empty = every token is rejected (fail closed).
    pub audiences: Vec<String>,
    /// Leeway for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Period of the background JWKS refresh once a set has been loaded.
    pub refresh_interval: Duration,
    /// Minimum time between two fetches triggered by unknown `kid`s.
    pub unknown_kid_min_interval: Duration,
    /// Bound on one JWKS fetch (connect + answer).
    pub fetch_timeout: Duration,
    /// Number of verified tokens remembered; 0 disables the cache.
    pub verified_cache_size: usize,
}

impl JwtConfig {
    /// A config with the defaults: 30 s clock skew, 5 min refresh, 5 s between unknown-`kid`
    /// refetches, 5 s fetch timeout, 10 000 cached tokens.
    pub fn new(
        issuer: impl Into<String>,
        jwks_uri: impl Into<String>,
        audiences: Vec<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_uri: jwks_uri.into(),
            audiences,
            clock_skew: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
            unknown_kid_min_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            verified_cache_size: 10_000,
        }
    }
}
