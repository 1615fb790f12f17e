//! The per-request check: bypass paths, bearer extraction, validation, 401 answers, identity
//! headers and metrics — as a plain async function ([`JwtAuth::authorize`]) and as a tower
//! layer ([`JwtAuthLayer`]).

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use proxy_core::http::{bearer_token, json_error, Body};
use proxy_core::metrics::Metrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::{BypassPaths, JwtError, Validator, VerifiedClaims};

/// The identity header names and the strip function belong to the inbound listener
/// (proxy-core), which removes caller copies of all four before this crate sets three.
pub use proxy_core::inbound::{
    strip_identity_headers, HEADER_CLIENT_ID, HEADER_ISS, HEADER_PEER_ID, HEADER_SUB,
};

const CHALLENGE: &str = r#"Bearer realm="authbridge""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="authbridge", error="invalid_token""#;
const MISSING_MESSAGE: &str = "a bearer token is required";

/// Removes the headers this crate sets (not the peer id, which the listener owns).
fn strip_token_headers(headers: &mut HeaderMap) {
    headers.remove(HEADER_SUB);
    headers.remove(HEADER_ISS);
    headers.remove(HEADER_CLIENT_ID);
}

/// Why a request was let through. Also inserted into the request extensions by
/// [`JwtAuthService`].
#[derive(Debug, Clone)]
pub enum Authorized {
    /// The path matched a bypass pattern; no token was checked.
    Bypass,
    /// A valid token.
    Token(Arc<VerifiedClaims>),
}

struct Counters {
    allow_token: Counter,
    allow_bypass: Counter,
    deny_missing: Counter,
    deny: Vec<Counter>,
}

/// The inbound JWT check: a [`Validator`], the [`BypassPaths`] and the decision counters.
pub struct JwtAuth {
    validator: Arc<Validator>,
    bypass: BypassPaths,
    counters: Counters,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("validator", &self.validator)
            .field("bypass", &self.bypass)
            .finish()
    }
}

impl JwtAuth {
    /// Counts every decision in `metrics.inbound_decisions`: `allow/token`, `allow/bypass`,
    /// `deny/missing_token`, `deny/<JwtError::reason()>`.
    pub fn new(validator: Arc<Validator>, bypass: BypassPaths, metrics: &Metrics) -> Self {
        let counters = Counters {
            allow_token: metrics.inbound("allow", "token"),
            allow_bypass: metrics.inbound("allow", "bypass"),
            deny_missing: metrics.inbound("deny", "missing_token"),
            deny: JwtError::REASONS
                .iter()
                .map(|r| metrics.inbound("deny", r))
                .collect(),
        };
        Self {
            validator,
            bypass,
            counters,
        }
    }

    pub fn validator(&self) -> &Arc<Validator> {
        &self.validator
    }

    pub fn bypass_paths(&self) -> &BypassPaths {
        &self.bypass
    }

    /// Checks one request. `path` is the request target's path as received (a query part is
    /// ignored). Caller copies of `x-authbridge-sub`, `-iss` and `-client-id` are always
    /// removed; on a valid token they are set from the claims (absent claims are not set) and
    /// `Authorization` is left as is. On refusal, the 401 answer to send.
    pub async fn authorize(
        &self,
        headers: &mut HeaderMap,
        path: &str,
    ) -> Result<Authorized, Response<Body>> {
        if self.bypass.matches(path) {
            strip_token_headers(headers);
            self.counters.allow_bypass.inc();
            return Ok(Authorized::Bypass);
        }
        let result = if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
            // Two Authorization headers: which one the agent reads is anyone's guess.
            Err(JwtError::Malformed)
        } else {
            match bearer_token(headers) {
                Some(token) => self.validator.validate(token).await,
                None => {
                    strip_token_headers(headers);
                    self.counters.deny_missing.inc();
                    tracing::debug!(reason = "missing_token", "inbound request refused");
                    return Err(unauthorized(MISSING_MESSAGE, false));
                }
            }
        };
        match result {
            Ok(claims) => {
                // `insert` replaces every caller-sent value; absent claims remove them.
                set_or_remove(headers, HEADER_SUB, claims.sub_header.as_ref());
                set_or_remove(headers, HEADER_ISS, Some(&claims.iss_header));
                set_or_remove(headers, HEADER_CLIENT_ID, claims.client_id_header.as_ref());
                self.counters.allow_token.inc();
                Ok(Authorized::Token(claims))
            }
            Err(e) => {
                strip_token_headers(headers);
                self.counters.deny[e.index()].inc();
                tracing::debug!(reason = e.reason(), "inbound request refused");
                Err(unauthorized(e.message(), true))
            }
        }
    }
}

fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<&HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name, v.clone());
        }
        None => {
            headers.remove(name);
        }
    }
}

/// The 401 answer (CONTRACT §5): `WWW-Authenticate: Bearer realm="authbridge"` plus
/// `error="invalid_token"` when a token was presented; `{"error":"unauthorized","message":…}`.
fn unauthorized(message: &str, token_present: bool) -> Response<Body> {
    let mut resp = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(if token_present {
            CHALLENGE_INVALID
        } else {
            CHALLENGE
        }),
    );
    resp
}

/// A tower layer running [`JwtAuth::authorize`] before the inner service.
#[derive(Clone, Debug)]
pub struct JwtAuthLayer {
    auth: Arc<JwtAuth>,
}

impl JwtAuthLayer {
    pub fn new(auth: Arc<JwtAuth>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for JwtAuthLayer {
    type Service = JwtAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service made by [`JwtAuthLayer`]: refused requests get the 401 answer and never reach
/// the inner service; allowed ones reach it with the identity headers set and an
/// [`Authorized`] in their extensions.
#[derive(Clone, Debug)]
pub struct JwtAuthService<S> {
    inner: S,
    auth: Arc<JwtAuth>,
}

impl<S, B> tower::Service<Request<B>> for JwtAuthService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let auth = self.auth.clone();
        // The instance that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match auth.authorize(&mut parts.headers, parts.uri.path()).await {
                Ok(authorized) => {
                    parts.extensions.insert(authorized);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(resp) => Ok(resp),
            }
        })
    }
}
