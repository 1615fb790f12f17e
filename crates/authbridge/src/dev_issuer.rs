//! The embedded development issuer of `authbridge dev` (contract §8) and the in-memory dev
//! trust domain `spiffe://dev.local`.
//!
//! Everything here lives in memory and is regenerated on every start; nothing is written to
//! disk. It is for local development only: the keys are ephemeral, the issuer trusts any
//! `spiffe://dev.local/...` workload whose JWT-SVID the in-memory trust domain key signed, and
//! it mints user tokens and X.509-SVIDs for anyone who asks.
//!
//! Endpoints:
//! - `GET /.well-known/openid-configuration`: discovery document;
//! - `GET /jwks`: the issuer's signing key (ES256);
//! - `GET /dev/jwt-bundle`: the dev trust domain's JWT-SVID signing key (a SPIFFE JWT bundle),
//!   for a real issuer that should trust the dev agent;
//! - `POST /dev/token`: mints a user token (form `sub`, `aud`, `scope`);
//! - `POST /dev/svid`: issues an X.509-SVID of `spiffe://dev.local` (form `spiffe_id`) with the
//!   trust bundle, as PEM in JSON, for a peer that calls the agent's inbound side over mTLS;
//! - `POST /token`: RFC 8693 token exchange, client authentication `jwt-spiffe`.

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use proxy_core::drain;
use proxy_core::http::{full, Body};
use serde_json::{json, Value};
use spiffe_source::{IdentityError, JwtSvid, JwtSvidProvider, SpiffeId, SvidMinter};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub const TRUST_DOMAIN: &str = "dev.local";
pub const AGENT_ID: &str = "spiffe://dev.local/agent";
/// The SPIFFE ID `POST /dev/svid` issues when none is asked for.
pub const DEV_CLIENT_ID: &str = "spiffe://dev.local/dev-client";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const ASSERTION_JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// Lifetime of a minted user token.
pub const USER_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of an exchanged token (capped by the subject token's own expiry).
pub const EXCHANGED_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Lifetime of a JWT-SVID minted as client assertion.
pub const JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// Lifetime of the dev X.509 CA and SVID.
const X509_CA_TTL: Duration = Duration::from_secs(24 * 3600);
const X509_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest request body the issuer reads.
const MAX_BODY: usize = 64 * 1024;
/// Clock skew tolerated when verifying tokens.
const LEEWAY_SECS: u64 = 30;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An ES256 (P-256) signing key with its public JWK.
struct EcKey {
    enc: EncodingKey,
    dec: DecodingKey,
    kid: String,
    jwk: Value,
}

impl EcKey {
    fn generate(kid: &str, use_: &str) -> Result<EcKey, String> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot generate a P-256 key: {e}"))?;
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes())
            .map_err(|e| format!("cannot load the generated P-256 key: {e}"))?;
        let raw = kp.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (x, y) = (b64.encode(&raw[1..33]), b64.encode(&raw[33..65]));
        let dec = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| format!("cannot load the public key: {e}"))?;
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": use_, "kid": kid, "x": x, "y": y});
        Ok(EcKey {
            enc,
            dec,
            kid: kid.to_string(),
            jwk,
        })
    }

    fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, claims, &self.enc).map_err(|e| format!("signing failed: {e}"))
    }

    /// Verifies signature (ES256 only), `kid` (when present it must be ours), `exp` and `nbf`
    /// plus whatever `v` requires; returns the claims.
    fn verify(&self, token: &str, mut v: Validation) -> Result<Value, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "not a well-formed JWT".to_string())?;
        if header.alg != Algorithm::ES256 {
            return Err(format!(
                "algorithm {:?} is not accepted (ES256 only)",
                header.alg
            ));
        }
        if header.kid.as_deref().is_some_and(|k| k != self.kid) {
            return Err("signed by an unknown key (kid)".into());
        }
        v.algorithms = vec![Algorithm::ES256];
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &self.dec, &v)
            .map_err(|e| describe_jwt_error(&e))?;
        if let Some(iat) = data.claims.get("iat").and_then(Value::as_u64) {
            if iat > now_secs() + LEEWAY_SECS {
                return Err("issued in the future (iat)".into());
            }
        }
        Ok(data.claims)
    }
}

/// A reason safe to show a client (never the token).
fn describe_jwt_error(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token has expired".into(),
        K::ImmatureSignature => "token is not valid yet (nbf)".into(),
        K::InvalidSignature => "signature does not verify".into(),
        K::InvalidAudience => "wrong audience (aud)".into(),
        K::InvalidIssuer => "wrong issuer (iss)".into(),
        K::MissingRequiredClaim(c) => format!("required claim {c:?} is missing"),
        K::InvalidAlgorithm => "algorithm not accepted".into(),
        _ => "not a valid JWT".into(),
    }
}

/// An X.509-SVID issued by the dev CA: DER for rustls, PEM for people.
pub struct IssuedSvid {
    pub spiffe_id: String,
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// PKCS#8.
    pub key_der: Vec<u8>,
    pub key_pem: String,
    pub not_after: SystemTime,
}

/// The dev X.509 CA (kept in memory, with its signing key so it can issue SVIDs to dev peers)
/// and the agent's X.509-SVID, which the inbound mTLS listener presents.
pub struct DevX509 {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_der: Vec<u8>,
    pub ca_pem: String,
    pub ca_not_after: SystemTime,
    pub agent: IssuedSvid,
}

impl std::fmt::Debug for DevX509 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevX509")
            .field("agent", &self.agent.spiffe_id)
            .field("svid_not_after", &self.agent.not_after)
            .field("keys", &"<redacted>")
            .finish()
    }
}

fn x509_err(e: rcgen::Error) -> String {
    format!("cannot create the dev X.509 identity: {e}")
}

impl DevX509 {
    fn generate() -> Result<DevX509, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let now = SystemTime::now();
        let ca_not_after = now + X509_CA_TTL;
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(x509_err)?;
        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "AuthBridge development");
        dn.push(DnType::CommonName, "dev.local CA (DEVELOPMENT ONLY)");
        ca.distinguished_name = dn;
        ca.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{TRUST_DOMAIN}")
                .try_into()
                .map_err(x509_err)?,
        )];
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = (now - Duration::from_secs(60)).into();
        ca.not_after = ca_not_after.into();
        let ca_cert = ca.self_signed(&ca_key).map_err(x509_err)?;
        let issuer = Issuer::new(ca, ca_key);
        let agent = issue(&issuer, AGENT_ID, X509_SVID_TTL.min(X509_CA_TTL))?;
        Ok(DevX509 {
            ca: issuer,
            ca_der: ca_cert.der().to_vec(),
            ca_pem: ca_cert.pem(),
            ca_not_after,
            agent,
        })
    }

    /// Issues an X.509-SVID of the dev trust domain for `spiffe_id` (a peer that should call
    /// the agent over mTLS). The id must be `spiffe://dev.local/<path>`.
    pub fn issue(&self, spiffe_id: &str, ttl: Duration) -> Result<IssuedSvid, String> {
        let id = SpiffeId::parse(spiffe_id).map_err(|e| format!("not a SPIFFE ID: {e}"))?;
        if id.trust_domain() != TRUST_DOMAIN {
            return Err(format!(
                "{spiffe_id} is not in the trust domain spiffe://{TRUST_DOMAIN}"
            ));
        }
        if id.path().trim_start_matches('/').is_empty() {
            return Err(format!(
                "{spiffe_id} has no path (e.g. spiffe://{TRUST_DOMAIN}/my-client)"
            ));
        }
        issue(&self.ca, id.as_str(), ttl)
    }
}

fn issue(
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    spiffe_id: &str,
    ttl: Duration,
) -> Result<IssuedSvid, String> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let now = SystemTime::now();
    let not_after = now + ttl;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(x509_err)?;
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "AuthBridge development");
    leaf.distinguished_name = dn;
    leaf.subject_alt_names = vec![SanType::URI(
        spiffe_id.to_string().try_into().map_err(x509_err)?,
    )];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = (now - Duration::from_secs(60)).into();
    leaf.not_after = not_after.into();
    let cert = leaf.signed_by(&key, ca).map_err(x509_err)?;
    Ok(IssuedSvid {
        spiffe_id: spiffe_id.to_string(),
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// The in-memory trust domain `spiffe://dev.local`.
pub struct DevTrustDomain {
    jwt_key: EcKey,
    pub x509: DevX509,
}

impl DevTrustDomain {
    pub fn generate() -> Result<Arc<DevTrustDomain>, String> {
        Ok(Arc::new(DevTrustDomain {
            jwt_key: EcKey::generate("dev-local-jwt-svid-1", "jwt-svid")?,
            x509: DevX509::generate()?,
        }))
    }

    /// The agent's X.509 identity for the inbound mTLS listener: its SVID and the bundle of
    /// `spiffe://dev.local` (peers of the dev trust domain verify against it).
    pub fn agent_x509(&self) -> Result<spiffe_source::X509Identity, String> {
        spiffe_source::source::identity_from_der(
            vec![self.x509.agent.cert_der.clone()],
            self.x509.agent.key_der.clone(),
            vec![(TRUST_DOMAIN.to_string(), vec![self.x509.ca_der.clone()])],
        )
        .map_err(|e| format!("the dev X.509-SVID is unusable: {e}"))
    }

    /// The JWT bundle of the trust domain (a JWKS with `use: jwt-svid`).
    pub fn jwt_bundle(&self) -> Value {
        json!({"keys": [self.jwt_key.jwk.clone()], "spiffe_refresh_hint": 300})
    }

    /// A JWT-SVID for `spiffe_id` with audience `aud`.
    pub fn mint_jwt_svid(
        &self,
        spiffe_id: &str,
        aud: &str,
        ttl: Duration,
    ) -> Result<(String, u64), String> {
        let now = now_secs();
        let exp = now + ttl.as_secs();
        let token = self
            .jwt_key
            .sign(&json!({"sub": spiffe_id, "aud": [aud], "iat": now, "exp": exp}))?;
        Ok((token, exp))
    }

    /// Verifies a JWT-SVID of this trust domain for audience `aud`; returns its SPIFFE ID.
    pub fn verify_jwt_svid(&self, token: &str, aud: &str) -> Result<String, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        v.set_audience(&[aud]);
        let claims = self.jwt_key.verify(token, v)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or("\"sub\" is not a string")?;
        let id = SpiffeId::parse(sub).map_err(|e| format!("\"sub\" is not a SPIFFE ID: {e}"))?;
        let prefix = format!("spiffe://{TRUST_DOMAIN}/");
        if !id.as_str().starts_with(&prefix) {
            return Err(format!(
                "\"sub\" is not in the trust domain spiffe://{TRUST_DOMAIN}"
            ));
        }
        Ok(id.as_str().to_string())
    }

    /// The agent's JWT-SVID source: a fresh JWT-SVID for the requested audience on every use
    /// (exchanges happen on token-cache misses only, and signing costs microseconds).
    pub fn provider(self: &Arc<Self>) -> JwtSvidProvider {
        let td = self.clone();
        JwtSvidProvider::InMemory(SvidMinter(Arc::new(move |aud: &str| {
            let err = |message: String| IdentityError::Source {
                source_name: "dev trust domain (in memory)".into(),
                message,
            };
            let (token, exp) = td.mint_jwt_svid(AGENT_ID, aud, JWT_SVID_TTL).map_err(err)?;
            Ok(JwtSvid {
                token,
                spiffe_id: SpiffeId::parse(AGENT_ID).map_err(err)?,
                expiry: UNIX_EPOCH + Duration::from_secs(exp),
            })
        })))
    }
}

/// An OAuth error answer (RFC 6749 §5.2).
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

fn oauth_err(status: StatusCode, code: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status,
        code,
        description: description.into(),
    }
}

fn invalid_request(d: impl Into<String>) -> OAuthError {
    oauth_err(StatusCode::BAD_REQUEST, "invalid_request", d)
}
fn invalid_grant(d: impl Into<String>) -> OAuthError {
    oauth_err(StatusCode::BAD_REQUEST, "invalid_grant", d)
}
fn invalid_client(d: impl Into<String>) -> OAuthError {
    oauth_err(StatusCode::UNAUTHORIZED, "invalid_client", d)
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl From<OAuthError> for Response<Body> {
    fn from(e: OAuthError) -> Self {
        let mut r = json_response(
            e.status,
            &json!({"error": e.code, "error_description": e.description}),
        );
        if e.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"authbridge-dev\""),
            );
        }
        r
    }
}

/// A parsed `application/x-www-form-urlencoded` body.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// A parameter that may appear at most once (RFC 6749 §3.2); empty counts as absent.
    fn one(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        let mut it = self.0.iter().filter(|(k, _)| k == name);
        let first = it.next();
        if it.next().is_some() {
            return Err(invalid_request(format!(
                "parameter {name:?} is given more than once"
            )));
        }
        Ok(first.map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()))
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Rejects values that have no business in a token claim (control characters, huge sizes).
fn check_value(name: &str, v: &str) -> Result<(), OAuthError> {
    if v.len() > 1024 || v.chars().any(char::is_control) {
        return Err(invalid_request(format!(
            "{name}: too long or has control characters"
        )));
    }
    Ok(())
}

/// The embedded dev issuer.
pub struct DevIssuer {
    url: String,
    key: EcKey,
    trust: Arc<DevTrustDomain>,
}

impl DevIssuer {
    /// `url` is the issuer identifier (`http://127.0.0.1:PORT`), also the `iss` of its tokens
    /// and the audience it requires of client assertions.
    pub fn new(url: String, trust: Arc<DevTrustDomain>) -> Result<Arc<DevIssuer>, String> {
        Ok(Arc::new(DevIssuer {
            url,
            key: EcKey::generate("authbridge-dev-issuer-1", "sig")?,
            trust,
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.url)
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "token_endpoint": self.token_url(),
            "grant_types_supported": [GRANT_TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": ["client_assertion_jwt_spiffe"],
            "client_assertion_types_supported": [ASSERTION_JWT_SPIFFE],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
            "dev_token_endpoint": format!("{}/dev/token", self.url),
            "dev_spiffe_jwt_bundle": format!("{}/dev/jwt-bundle", self.url),
        })
    }

    /// Mints a user token (what `/dev/token` answers).
    pub fn mint_user_token(&self, sub: &str, aud: &str, scope: &str) -> Result<String, String> {
        let now = now_secs();
        self.key.sign(&json!({
            "iss": self.url,
            "sub": sub,
            "aud": aud,
            "scope": scope,
            "iat": now,
            "exp": now + USER_TOKEN_TTL.as_secs(),
        }))
    }

    fn dev_token(&self, form: &Form) -> Result<Response<Body>, OAuthError> {
        let sub = form.one("sub")?.unwrap_or("dev-user");
        let aud = form.one("aud")?.unwrap_or("authbridge-dev");
        let scope = form.one("scope")?.unwrap_or("openid");
        for (n, v) in [("sub", sub), ("aud", aud), ("scope", scope)] {
            check_value(n, v)?;
        }
        let token = self
            .mint_user_token(sub, aud, scope)
            .map_err(|e| oauth_err(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e))?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"access_token": token, "token_type": "Bearer", "expires_in": USER_TOKEN_TTL.as_secs()}),
        ))
    }

    /// Issues an X.509-SVID of the dev trust domain to a peer (form `spiffe_id`, default
    /// `spiffe://dev.local/dev-client`), so it can call the agent over mTLS.
    fn dev_svid(&self, form: &Form) -> Result<Response<Body>, OAuthError> {
        let id = form.one("spiffe_id")?.unwrap_or(DEV_CLIENT_ID);
        check_value("spiffe_id", id)?;
        let svid = self
            .trust
            .x509
            .issue(id, X509_SVID_TTL)
            .map_err(|e| invalid_request(format!("spiffe_id: {e}")))?;
        let exp = svid
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "spiffe_id": svid.spiffe_id,
                "svid_pem": svid.cert_pem,
                "svid_key_pem": svid.key_pem,
                "bundle_pem": self.trust.x509.ca_pem,
                "expires_at": exp,
            }),
        ))
    }

    /// RFC 8693 token exchange with `jwt-spiffe` client authentication.
    fn exchange(&self, form: &Form) -> Result<Response<Body>, OAuthError> {
        match form.one("grant_type")? {
            Some(GRANT_TOKEN_EXCHANGE) => {}
            None => return Err(invalid_request("grant_type is required")),
            Some(_) => {
                return Err(oauth_err(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    format!("only {GRANT_TOKEN_EXCHANGE} is supported"),
                ))
            }
        }
        // Client authentication first: an unauthenticated client learns nothing about tokens.
        match form.one("client_assertion_type")? {
            Some(ASSERTION_JWT_SPIFFE) => {}
            None => return Err(invalid_client(format!("client authentication required: client_assertion_type={ASSERTION_JWT_SPIFFE} with a JWT-SVID as client_assertion"))),
            Some(_) => return Err(invalid_client(format!("client_assertion_type must be {ASSERTION_JWT_SPIFFE}"))),
        }
        let assertion = form
            .one("client_assertion")?
            .ok_or_else(|| invalid_client("client_assertion (a JWT-SVID) is required"))?;
        let client = self
            .trust
            .verify_jwt_svid(assertion, &self.url)
            .map_err(|e| invalid_client(format!("client_assertion rejected: {e}")))?;
        if let Some(id) = form.one("client_id")? {
            if id != client {
                return Err(invalid_client(
                    "client_id does not match the client assertion's sub",
                ));
            }
        }

        let subject = form
            .one("subject_token")?
            .ok_or_else(|| invalid_request("subject_token is required"))?;
        match form.one("subject_token_type")? {
            Some(TOKEN_TYPE_ACCESS) => {}
            None => return Err(invalid_request("subject_token_type is required")),
            Some(_) => {
                return Err(invalid_request(format!(
                    "subject_token_type must be {TOKEN_TYPE_ACCESS}"
                )))
            }
        }
        if let Some(t) = form.one("requested_token_type")? {
            if t != TOKEN_TYPE_ACCESS {
                return Err(invalid_request(format!(
                    "requested_token_type must be {TOKEN_TYPE_ACCESS}"
                )));
            }
        }
        let audiences = form.all("audience");
        for a in &audiences {
            check_value("audience", a)?;
        }
        let scope = form.one("scope")?;
        if let Some(s) = scope {
            check_value("scope", s)?;
        }

        let mut v = Validation::new(Algorithm::ES256);
        v.set_required_spec_claims(&["exp", "sub", "iss"]);
        v.set_issuer(&[&self.url]);
        v.validate_aud = false;
        let claims = self
            .key
            .verify(subject, v)
            .map_err(|e| invalid_grant(format!("subject_token rejected: {e}")))?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_grant("subject_token: \"sub\" is not a string"))?;
        let subject_exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let scope = scope.map(str::to_string).or_else(|| {
            claims
                .get("scope")
                .and_then(Value::as_str)
                .map(str::to_string)
        });

        let now = now_secs();
        let exp = (now + EXCHANGED_TOKEN_TTL.as_secs()).min(subject_exp.max(now + 1));
        let aud = match audiences.as_slice() {
            [] => Value::String(client.clone()),
            [one] => Value::String((*one).to_string()),
            many => json!(many),
        };
        // RFC 8693 §4.1: the acting party; a prior delegation chain nests inside.
        let mut act = json!({"sub": client});
        if let Some(prev) = claims.get("act") {
            act["act"] = prev.clone();
        }
        let mut out = json!({
            "iss": self.url,
            "sub": sub,
            "aud": aud,
            "act": act,
            "azp": client,
            "client_id": client,
            "iat": now,
            "exp": exp,
        });
        if let Some(s) = &scope {
            out["scope"] = Value::String(s.clone());
        }
        let token = self
            .key
            .sign(&out)
            .map_err(|e| oauth_err(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e))?;
        let mut body = json!({
            "access_token": token,
            "issued_token_type": TOKEN_TYPE_ACCESS,
            "token_type": "Bearer",
            "expires_in": exp.saturating_sub(now),
        });
        if let Some(s) = scope {
            body["scope"] = Value::String(s);
        }
        tracing::info!(client = %client, subject = %sub, audience = %out["aud"], "dev issuer: token exchanged");
        Ok(json_response(StatusCode::OK, &body))
    }

    /// Answers one request (method, path, body already read).
    pub fn handle(&self, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
        let r = match (method, path) {
            (&Method::GET, "/.well-known/openid-configuration") => {
                Ok(json_response(StatusCode::OK, &self.discovery()))
            }
            (&Method::GET, "/jwks") => Ok(json_response(
                StatusCode::OK,
                &json!({"keys": [self.key.jwk.clone()]}),
            )),
            (&Method::GET, "/dev/jwt-bundle") => {
                Ok(json_response(StatusCode::OK, &self.trust.jwt_bundle()))
            }
            (&Method::POST, "/dev/token") => self.dev_token(&Form::parse(body)),
            (&Method::POST, "/dev/svid") => self.dev_svid(&Form::parse(body)),
            (&Method::POST, "/token") => self.exchange(&Form::parse(body)),
            (
                _,
                "/.well-known/openid-configuration"
                | "/jwks"
                | "/dev/jwt-bundle"
                | "/dev/token"
                | "/dev/svid"
                | "/token",
            ) => Err(oauth_err(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed",
            )),
            _ => Err(oauth_err(
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown dev issuer path",
            )),
        };
        r.unwrap_or_else(Response::from)
    }

    async fn serve_one(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes: Bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return oauth_err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    format!("request body unreadable or larger than {MAX_BODY} bytes"),
                )
                .into()
            }
        };
        self.handle(&parts.method, parts.uri.path(), &bytes)
    }

    /// Serves until drain starts.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: drain::Watch) {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "dev issuer accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = drain.signaled() => return,
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.serve_one(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Arc<DevIssuer> {
        DevIssuer::new(
            "http://127.0.0.1:1".into(),
            DevTrustDomain::generate().unwrap(),
        )
        .unwrap()
    }

    async fn call(i: &DevIssuer, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = i.handle(&Method::POST, path, body.as_bytes());
        let status = r.status().as_u16();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn claims(t: &str) -> Value {
        let p = t.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn exchange_happy_path_and_errors() {
        let i = issuer();
        let (s, v) = call(
            &i,
            "/dev/token",
            &[("sub", "alice"), ("aud", "agent"), ("scope", "openid")],
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let user = v["access_token"].as_str().unwrap().to_string();
        let (svid, _) = i
            .trust
            .mint_jwt_svid(AGENT_ID, i.url(), JWT_SVID_TTL)
            .unwrap();
        let good = |extra: &[(&'static str, String)]| {
            let mut f: Vec<(&'static str, String)> = vec![
                ("grant_type", GRANT_TOKEN_EXCHANGE.into()),
                ("subject_token", user.clone()),
                ("subject_token_type", TOKEN_TYPE_ACCESS.into()),
                ("audience", "tool".into()),
                ("scope", "tool.read".into()),
                ("client_assertion_type", ASSERTION_JWT_SPIFFE.into()),
                ("client_assertion", svid.clone()),
                ("client_id", AGENT_ID.into()),
            ];
            for (k, v) in extra {
                f.retain(|(kk, _)| kk != k);
                if !v.is_empty() {
                    f.push((k, v.clone()));
                }
            }
            f
        };
        let as_ref = |f: &Vec<(&'static str, String)>| {
            f.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
        };
        let run = |f: Vec<(&'static str, String)>| {
            let i = i.clone();
            async move {
                let pairs = as_ref(&f);
                let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                call(&i, "/token", &refs).await
            }
        };
        let (s, v) = run(good(&[])).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["issued_token_type"], TOKEN_TYPE_ACCESS);
        let c = claims(v["access_token"].as_str().unwrap());
        assert_eq!(
            (c["aud"].as_str(), c["sub"].as_str()),
            (Some("tool"), Some("alice"))
        );
        assert_eq!(c["act"]["sub"], AGENT_ID);
        assert_eq!(c["scope"], "tool.read");

        let (other, _) = DevTrustDomain::generate()
            .unwrap()
            .mint_jwt_svid(AGENT_ID, i.url(), JWT_SVID_TTL)
            .unwrap();
        let (wrong_aud, _) = i
            .trust
            .mint_jwt_svid(AGENT_ID, "http://elsewhere", JWT_SVID_TTL)
            .unwrap();
        let (wrong_td, _) = i
            .trust
            .mint_jwt_svid("spiffe://evil.org/agent", i.url(), JWT_SVID_TTL)
            .unwrap();
        for (case, want, code) in [
            (good(&[("client_assertion", other)]), 401, "invalid_client"),
            (
                good(&[("client_assertion", wrong_aud)]),
                401,
                "invalid_client",
            ),
            (
                good(&[("client_assertion", wrong_td)]),
                401,
                "invalid_client",
            ),
            (
                good(&[("client_assertion", "garbage".into())]),
                401,
                "invalid_client",
            ),
            (
                good(&[("client_assertion_type", String::new())]),
                401,
                "invalid_client",
            ),
            (
                good(&[("client_id", "spiffe://dev.local/other".into())]),
                401,
                "invalid_client",
            ),
            (
                good(&[("subject_token", "a.b.c".into())]),
                400,
                "invalid_grant",
            ),
            (
                good(&[("subject_token", svid.clone())]),
                400,
                "invalid_grant",
            ),
            (
                good(&[("subject_token", String::new())]),
                400,
                "invalid_request",
            ),
            (
                good(&[("subject_token_type", "urn:x".into())]),
                400,
                "invalid_request",
            ),
            (
                good(&[("grant_type", "password".into())]),
                400,
                "unsupported_grant_type",
            ),
        ] {
            let (s, v) = run(case).await;
            assert_eq!((s, v["error"].as_str()), (want, Some(code)), "{v}");
        }
        let (s, v) = call(
            &i,
            "/token",
            &[
                ("grant_type", GRANT_TOKEN_EXCHANGE),
                ("grant_type", GRANT_TOKEN_EXCHANGE),
            ],
        )
        .await;
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    }
}
