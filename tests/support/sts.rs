//! Test-only security token service for end-to-end tests.
//!
//! Spawns `node $CARGO_MANIFEST_DIR/sts/server.mjs --port 0 ...` (oidc-provider with an RFC 8693
//! token-exchange grant, `client_secret_basic`/`client_secret_post` auth for `agent-secret-client`,
//! and jwt-spiffe client auth), reads its one-line JSON readiness record and exposes the URLs plus
//! the `/test/*` control endpoints. The child is killed when [`Sts`] is dropped (and, as a backstop,
//! exits by itself when our end of its stdin closes, i.e. when the test process dies).
//!
//! Needs `npm ci --prefix tests/sts` to have been run. See `tests/sts/README.md` for the wire details.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_SPIFFE_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// The static client that authenticates with a client secret.
pub const SECRET_CLIENT_ID: &str = "agent-secret-client";
/// Default `--client-secret` of the server.
pub const DEFAULT_CLIENT_SECRET: &str = "s3cret";

/// Fault modes understood by `POST /test/fault`.
pub mod fault {
    pub const NONE: &str = "none";
    /// 500 with a JSON `server_error` body.
    pub const HTTP500: &str = "http500";
    /// 200 with a body that is not JSON (content-type still says application/json).
    pub const GARBAGE: &str = "garbage";
    /// Sleep `slow_ms` (default 30 s) and then answer normally.
    pub const SLOW: &str = "slow";
    /// 400 `{"error":"invalid_grant"}`.
    pub const INVALID_GRANT: &str = "invalid_grant";
}

/// Options for [`Sts`]; obtain with [`Sts::builder`].
#[derive(Debug, Clone, Default)]
pub struct StsBuilder {
    client_secret: Option<String>,
    spiffe_jwks: Option<PathBuf>,
    spiffe_audiences: Vec<String>,
    spiffe_clients: Vec<String>,
    token_ttl: Option<u64>,
    token_alg: Option<String>,
    verbose: bool,
}

impl StsBuilder {
    /// Secret of `agent-secret-client` (`--client-secret`, default `s3cret`).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// SPIFFE JWT bundle (JWKS, or SPIFFE bundle with `use: "jwt-svid"` keys) used to verify
    /// jwt-spiffe client assertions (`--spiffe-jwks`). Re-read by the server on every request.
    /// Without it, jwt-spiffe authentication is rejected with 401 invalid_client.
    pub fn spiffe_jwks(mut self, path: impl AsRef<Path>) -> Self {
        self.spiffe_jwks = Some(path.as_ref().to_path_buf());
        self
    }

    /// Accepted JWT-SVID audience (`--spiffe-audience`, repeatable). When none is given the server
    /// accepts its issuer and its token endpoint URL.
    pub fn spiffe_audience(mut self, aud: impl Into<String>) -> Self {
        self.spiffe_audiences.push(aud.into());
        self
    }

    /// Restrict jwt-spiffe clients to these SPIFFE IDs (`--spiffe-client`, repeatable). When none is
    /// given, any SPIFFE ID with a valid JWT-SVID is accepted.
    pub fn spiffe_client(mut self, spiffe_id: impl Into<String>) -> Self {
        self.spiffe_clients.push(spiffe_id.into());
        self
    }

    /// Lifetime (`expires_in`) of exchanged tokens and default lifetime of minted ones (`--token-ttl`, default 300).
    pub fn token_ttl(mut self, secs: u64) -> Self {
        self.token_ttl = Some(secs);
        self
    }

    /// Signing algorithm of issued tokens: `RS256` (default) or `ES256` (`--token-alg`).
    pub fn token_alg(mut self, alg: impl Into<String>) -> Self {
        self.token_alg = Some(alg.into());
        self
    }

    /// Log token-endpoint traffic and rejections to stderr (`--verbose`).
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }

    pub async fn start(self) -> Sts {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let sts_dir = manifest_dir.join("sts");
        let script = sts_dir.join("server.mjs");
        assert!(
            script.is_file(),
            "STS script not found at {}",
            script.display()
        );
        if !sts_dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
            || !sts_dir.join("node_modules/jose/package.json").is_file()
        {
            panic!("run `npm ci --prefix tests/sts` first");
        }

        let client_secret = self
            .client_secret
            .clone()
            .unwrap_or_else(|| DEFAULT_CLIENT_SECRET.to_string());

        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let mut cmd = Command::new(&node);
        cmd.arg(&script)
            .args(["--port", "0", "--exit-on-stdin-eof"])
            .arg("--client-secret")
            .arg(&client_secret);
        if let Some(p) = &self.spiffe_jwks {
            cmd.arg("--spiffe-jwks").arg(p);
        }
        for a in &self.spiffe_audiences {
            cmd.arg("--spiffe-audience").arg(a);
        }
        for c in &self.spiffe_clients {
            cmd.arg("--spiffe-client").arg(c);
        }
        if let Some(ttl) = self.token_ttl {
            cmd.arg("--token-ttl").arg(ttl.to_string());
        }
        if let Some(alg) = &self.token_alg {
            cmd.arg("--token-alg").arg(alg);
        }
        if self.verbose {
            cmd.arg("--verbose");
        }
        cmd.current_dir(&sts_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);

        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "failed to spawn `{} {}` (is Node.js >= 18 installed?): {e}",
                node.to_string_lossy(),
                script.display()
            )
        });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let mut lines = BufReader::new(stdout).lines();

        let line = match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await;
                panic!("STS exited before becoming ready: {status:?} (see its stderr above)");
            }
            Err(_) => {
                let _ = child.start_kill();
                panic!("STS did not print its readiness line within 30 s");
            }
        };
        // Keep draining stdout so the child can never block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("STS readiness line is not JSON ({e}): {line}"));
        let field = |k: &str| -> String {
            ready[k]
                .as_str()
                .unwrap_or_else(|| panic!("STS readiness line lacks `{k}`: {line}"))
                .to_string()
        };
        let port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("STS readiness line lacks `port`: {line}"));

        let http = reqwest::Client::builder()
            .no_proxy() // tests may point HTTP(S)_PROXY at AuthBridge; the harness must not go through it
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");

        Sts {
            issuer: field("issuer"),
            token_url: field("token_url"),
            jwks_uri: field("jwks_uri"),
            port,
            client_secret,
            http,
            child,
            _stdin: stdin,
        }
    }
}

/// A running test STS. Killed on drop.
pub struct Sts {
    /// `http://127.0.0.1:PORT` (also the `iss` of every token it issues).
    pub issuer: String,
    /// `http://127.0.0.1:PORT/token`.
    pub token_url: String,
    /// `http://127.0.0.1:PORT/jwks` (public RS256 + ES256 keys).
    pub jwks_uri: String,
    pub port: u16,
    /// Secret of [`SECRET_CLIENT_ID`].
    pub client_secret: String,
    http: reqwest::Client,
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Sts {
    pub fn builder() -> StsBuilder {
        StsBuilder::default()
    }

    /// Start with defaults (client secret `s3cret`, no jwt-spiffe bundle).
    pub async fn start() -> Sts {
        Self::builder().start().await
    }

    /// `issuer` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer, path)
    }

    /// A user access token (the subject token for exchanges): JWT signed with the STS keys, with
    /// `iss`, `sub`, `aud`, `scope` (omitted when empty), `client_id=test-user-client`, `iat`,
    /// `exp` (token TTL, default 300 s), `jti`.
    pub async fn mint_user_token(&self, sub: &str, aud: &str, scope: &str) -> String {
        let mut form = vec![("sub", sub), ("aud", aud)];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        self.mint(&form).await["access_token"]
            .as_str()
            .expect("mint response has access_token")
            .to_string()
    }

    /// Raw `POST /test/mint`. Fields: `sub` (required), `aud` (repeatable), `scope`, `expires_in`
    /// (seconds, may be negative for an already expired token), `client_id`, `iss` (override),
    /// `alg` (`RS256`|`ES256`), `claims` (JSON object merged into the payload last).
    /// Returns `{"access_token","token_type":"Bearer","expires_in"}`.
    pub async fn mint(&self, form: &[(&str, &str)]) -> Value {
        self.post_form("/test/mint", form).await
    }

    /// Every request the token endpoint received since the last reset, oldest first:
    /// `{"method","path","content_type","authorization","fields":[[k,v],...],"form":{k:v|[v..]},"received_at_ms"}`.
    pub async fn requests(&self) -> Vec<Value> {
        let resp = self
            .http
            .get(self.url("/test/requests"))
            .send()
            .await
            .expect("GET /test/requests");
        let status = resp.status();
        let body: Value = resp.json().await.expect("/test/requests returns JSON");
        assert!(status.is_success(), "GET /test/requests: {status} {body}");
        match body {
            Value::Array(v) => v,
            other => panic!("/test/requests did not return an array: {other}"),
        }
    }

    /// Clears the request log (fault settings are kept).
    pub async fn reset(&self) {
        self.post_form("/test/reset", &[]).await;
    }

    /// One of [`fault`]`::*` (`none|http500|garbage|slow|invalid_grant`); stays until changed.
    pub async fn set_fault(&self, mode: &str) {
        self.post_form("/test/fault", &[("mode", mode)]).await;
    }

    /// Extra delay before every successful exchange (for single-flight tests); 0 disables.
    pub async fn set_delay_ms(&self, ms: u64) {
        self.post_form("/test/fault", &[("delay_ms", &ms.to_string())])
            .await;
    }

    /// How long the `slow` fault sleeps before answering (default 30 000 ms).
    pub async fn set_slow_ms(&self, ms: u64) {
        self.post_form("/test/fault", &[("slow_ms", &ms.to_string())])
            .await;
    }

    /// `expires_in` of subsequently exchanged (and by default minted) tokens.
    pub async fn set_token_ttl(&self, secs: u64) {
        self.post_form("/test/fault", &[("token_ttl", &secs.to_string())])
            .await;
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: non-JSON answer ({e}): {text}"))
    }
}

impl Drop for Sts {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
