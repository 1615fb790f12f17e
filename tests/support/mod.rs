//! Shared pieces of the end-to-end tests: locating and running the `authbridge` binary,
//! temporary directories, a real upstream HTTP server (HTTP/1.1 + h2c, SSE, WebSocket-style
//! upgrades), and JWT-SVID signing for `jwt-spiffe` client authentication.
#![allow(dead_code)]

pub mod mtls;
pub mod netns;
pub mod sts;
pub mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The built binary (`cargo build` first); `AUTHBRIDGE_BIN` overrides.
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("AUTHBRIDGE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/authbridge");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("ab-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run authbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `authbridge run`, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub stderr_path: PathBuf,
}

impl Proxy {
    /// Writes `config` (with `{OUT}`, `{IN}` and `{ADMIN}` replaced by free addresses; a
    /// config without an `inbound:` section gets `inbound.listen: {IN}` so parallel tests do
    /// not share port 15124) and starts `authbridge run`, waiting until the admin port
    /// answers `/readyz` with 200.
    pub async fn start(config: &str, dir: TempDir) -> Proxy {
        Self::start_with_env(config, dir, &[]).await
    }

    pub async fn start_with_env(config: &str, dir: TempDir, env: &[(&str, &str)]) -> Proxy {
        Self::start_full(config, dir, env, &[]).await
    }

    /// Like [`Proxy::start`], with extra environment and extra command-line arguments.
    pub async fn start_full(
        config: &str,
        dir: TempDir,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Proxy {
        let mut p = Self::spawn(config, dir, env, args);
        p.wait_ready().await;
        p
    }

    /// Starts `authbridge run` without waiting for readiness.
    pub fn spawn(config: &str, dir: TempDir, env: &[(&str, &str)], args: &[&str]) -> Proxy {
        let outbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let inbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = config.to_string();
        if !config.contains("{IN}") && !config.lines().any(|l| l.starts_with("inbound:")) {
            config.push_str("\ninbound:\n  listen: \"{IN}\"\n");
        }
        let text = config
            .replace("{IN}", &inbound.to_string())
            .replace("{OUT}", &outbound.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{DIR}", &dir.path().display().to_string());
        let cfg = dir.write("config.yaml", &text);
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn authbridge");
        Proxy {
            child,
            outbound,
            inbound,
            admin,
            dir,
            stderr_path,
        }
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("authbridge exited early ({status}):\n{}", self.logs());
            }
            if let Ok(r) = client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "authbridge not ready in time:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// An HTTP client that uses this proxy as its explicit HTTP proxy.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://{}", self.outbound)).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY-free: libc::kill is unsafe, so use the kill command instead.
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}

/// The value of a counter line in Prometheus text (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An EC P-256 key that signs JWT-SVIDs, and its JWKS (the SPIFFE JWT bundle the STS trusts).
pub struct SvidSigner {
    key: jsonwebtoken::EncodingKey,
    pub kid: String,
    pub jwks: serde_json::Value,
}

impl SvidSigner {
    pub fn new(kid: &str) -> SvidSigner {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        // The raw public key is the uncompressed point 04 || X || Y.
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "jwt-svid", "kid": kid,
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        }]});
        SvidSigner {
            key,
            kid: kid.into(),
            jwks,
        }
    }

    /// A JWT-SVID for `spiffe_id` with audience `aud`, valid for `ttl_secs`.
    pub fn sign(&self, spiffe_id: &str, aud: &str, ttl_secs: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims =
            serde_json::json!({"sub": spiffe_id, "aud": [aud], "exp": now + ttl_secs, "iat": now});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// Decodes a JWT's payload without verifying it (the tests check what the STS issued).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let p = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}
