//! The RFC 8693 token-exchange client (Keycloak wire format, contract §5).

use spiffe_source::JwtSvidProvider;
use std::sync::Arc;
use std::time::Duration;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const ASSERTION_JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// How the agent authenticates to the STS.
#[derive(Clone)]
pub enum ClientAuth {
    /// JWT-SVID as `client_assertion` (`jwt-spiffe`). `audience` overrides the JWT-SVID
    /// audience; by default it is the issuer of the token URL's realm.
    JwtSpiffe {
        provider: JwtSvidProvider,
        audience: Option<String>,
    },
    /// `client_secret` (read from a file, trimmed).
    Secret(Arc<str>),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::JwtSpiffe { provider, audience } => f
                .debug_struct("JwtSpiffe")
                .field("provider", provider)
                .field("audience", audience)
                .finish(),
            ClientAuth::Secret(_) => f.write_str("Secret(<redacted>)"),
        }
    }
}

/// A failed exchange. `Display` is safe to show the agent: no token, no secret, no STS body
/// beyond its sanitised OAuth `error` code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    #[error("agent identity unavailable: {0}")]
    Identity(String),
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    #[error("token endpoint answered HTTP {status}{}", .code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Rejected { status: u16, code: Option<String> },
    #[error("token endpoint answer unusable: {0}")]
    BadResponse(String),
}

/// A token issued by the STS.
#[derive(Clone)]
pub struct Issued {
    pub access_token: Arc<str>,
    /// `expires_in` when the STS said it.
    pub expires_in: Option<Duration>,
}

/// What to ask for.
pub struct ExchangeRequest<'a> {
    pub token_url: &'a str,
    /// `None` = no user token: a `client_credentials` grant (`no_token_policy: client-credentials`).
    pub subject_token: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub scope: Option<&'a str>,
}

/// The STS client: one pooled HTTP client, the agent's client id and authentication.
#[derive(Clone)]
pub struct StsClient {
    http: reqwest::Client,
    client_id: Option<String>,
    auth: ClientAuth,
}

/// `https://kc/realms/agents/protocol/openid-connect/token` → `https://kc/realms/agents`;
/// otherwise the token URL without its last path segment (`http://sts/token` → `http://sts`).
pub fn issuer_of_token_url(token_url: &str) -> String {
    if let Some(i) = token_url.find("/protocol/openid-connect/token") {
        return token_url[..i].to_string();
    }
    let trimmed = token_url.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) if i > trimmed.find("://").map_or(0, |p| p + 2) => trimmed[..i].to_string(),
        _ => trimmed.to_string(),
    }
}

/// Keeps only an OAuth error code's safe characters.
fn sanitize_code(code: &str) -> Option<String> {
    let c: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
        .take(64)
        .collect();
    (!c.is_empty()).then_some(c)
}

impl StsClient {
    /// `timeout` bounds every STS call (connect + answer).
    pub fn new(
        client_id: Option<String>,
        auth: ClientAuth,
        timeout: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("authbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the STS HTTP client: {e}"))?;
        Ok(Self {
            http,
            client_id,
            auth,
        })
    }

    /// Performs one exchange.
    pub async fn exchange(&self, req: &ExchangeRequest<'_>) -> Result<Issued, ExchangeError> {
        let mut form: Vec<(&str, String)> = Vec::with_capacity(10);
        match req.subject_token {
            Some(subject) => {
                form.push(("grant_type", GRANT_TOKEN_EXCHANGE.into()));
                form.push(("subject_token", subject.into()));
                form.push(("subject_token_type", TOKEN_TYPE_ACCESS.into()));
                form.push(("requested_token_type", TOKEN_TYPE_ACCESS.into()));
            }
            None => form.push(("grant_type", "client_credentials".into())),
        }
        if let Some(a) = req.audience {
            form.push(("audience", a.into()));
        }
        if let Some(s) = req.scope {
            form.push(("scope", s.into()));
        }
        let mut client_id = self.client_id.clone();
        match &self.auth {
            ClientAuth::JwtSpiffe { provider, audience } => {
                let aud = audience
                    .clone()
                    .unwrap_or_else(|| issuer_of_token_url(req.token_url));
                let svid = provider
                    .fetch(&aud)
                    .await
                    .map_err(|e| ExchangeError::Identity(e.to_string()))?;
                if client_id.is_none() {
                    client_id = Some(svid.spiffe_id.to_string());
                }
                form.push(("client_assertion_type", ASSERTION_JWT_SPIFFE.into()));
                form.push(("client_assertion", svid.token));
            }
            ClientAuth::Secret(secret) => form.push(("client_secret", secret.to_string())),
        }
        if let Some(id) = client_id {
            form.push(("client_id", id));
        }
        let resp = self
            .http
            .post(req.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| ExchangeError::Transport(describe_reqwest(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ExchangeError::Transport(describe_reqwest(&e)))?;
        if !status.is_success() {
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("error")
                        .and_then(|e| e.as_str())
                        .and_then(sanitize_code)
                });
            return Err(ExchangeError::Rejected {
                status: status.as_u16(),
                code,
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| ExchangeError::BadResponse("not JSON".into()))?;
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ExchangeError::BadResponse("no access_token".into()))?;
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ExchangeError::BadResponse(
                "access_token is not a valid header value".into(),
            ));
        }
        let expires_in = match v.get("expires_in") {
            None | Some(serde_json::Value::Null) => None,
            Some(e) => Some(Duration::from_secs(
                e.as_u64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        ExchangeError::BadResponse("expires_in is not a number".into())
                    })?,
            )),
        };
        Ok(Issued {
            access_token: Arc::from(token),
            expires_in,
        })
    }
}

/// A transport error without the URL's query or any body.
fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_derivation() {
        assert_eq!(
            issuer_of_token_url("https://kc/realms/agents/protocol/openid-connect/token"),
            "https://kc/realms/agents"
        );
        assert_eq!(
            issuer_of_token_url("http://127.0.0.1:9/token"),
            "http://127.0.0.1:9"
        );
        assert_eq!(issuer_of_token_url("http://sts"), "http://sts");
    }

    #[test]
    fn codes_are_sanitised() {
        assert_eq!(
            sanitize_code("invalid_grant").as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(sanitize_code("<script>").as_deref(), Some("script"));
        assert_eq!(sanitize_code("   "), None);
    }
}
