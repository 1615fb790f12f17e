//! `authbridge dev` end to end: the binary with its embedded dev issuer and in-memory dev trust
//! domain, a real upstream tool, reqwest as the agent using the outbound port as HTTP proxy.

use authbridge_e2e::upstream::Upstream;
use authbridge_e2e::{bin, free_port, jwt_claims, run_cli, SvidSigner, TempDir};
use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

struct Dev {
    child: Child,
    /// `name: address` lines of the banner.
    listeners: HashMap<String, String>,
    banner: String,
    dir: TempDir,
}

impl Dev {
    async fn start(extra: &[&str]) -> Dev {
        let dir = TempDir::new("dev");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let (o, i, a) = (
            free_port().to_string(),
            free_port().to_string(),
            free_port().to_string(),
        );
        let mut child = Command::new(bin())
            .args([
                "dev",
                "--outbound-port",
                &o,
                "--issuer-port",
                &i,
                "--admin-port",
                &a,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = String::new();
        let mut listeners = HashMap::new();
        let read = async {
            while let Some(l) = lines.next_line().await.unwrap() {
                banner.push_str(&l);
                banner.push('\n');
                if let Some((name, addr)) = l.split_once(": ") {
                    if ["outbound", "issuer", "admin"].contains(&name) {
                        listeners.insert(name.to_string(), addr.to_string());
                    }
                }
                if banner.contains("try it") && l.starts_with("====") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("no banner in time:\n{banner}"));
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let dev = Dev {
            child,
            listeners,
            banner,
            dir,
        };
        assert_eq!(
            dev.listeners["outbound"],
            format!("127.0.0.1:{o}"),
            "{}",
            dev.banner
        );
        assert_eq!(
            dev.listeners["issuer"],
            format!("http://127.0.0.1:{i}"),
            "{}",
            dev.banner
        );
        assert_eq!(
            dev.listeners["admin"],
            format!("127.0.0.1:{a}"),
            "{}",
            dev.banner
        );
        dev
    }

    fn issuer(&self) -> &str {
        &self.listeners["issuer"]
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn agent(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://{}", self.listeners["outbound"])).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

fn direct() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn mint(dev: &Dev, sub: &str, aud: &str, scope: &str) -> String {
    let (s, v) = json(
        direct()
            .post(format!("{}/dev/token", dev.issuer()))
            .form(&[("sub", sub), ("aud", aud), ("scope", scope)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["expires_in"].as_u64().unwrap() > 0, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn dev_exchanges_through_the_proxy_and_drains_on_sigterm() {
    let mut dev = Dev::start(&[]).await;
    assert!(dev.banner.contains("DEVELOPMENT ONLY"), "{}", dev.banner);
    assert!(
        dev.banner
            .contains("INBOUND VALIDATION IS NOT IN THIS BUILD"),
        "{}",
        dev.banner
    );
    assert!(
        dev.banner.contains(&format!(
            "export HTTP_PROXY=http://{}",
            dev.listeners["outbound"]
        )),
        "{}",
        dev.banner
    );
    assert!(
        dev.banner.contains("/dev/token") && dev.banner.contains("curl"),
        "{}",
        dev.banner
    );
    assert!(
        dev.banner
            .contains("\"127.0.0.1\" -> exchange, audience \"dev-tool\""),
        "{}",
        dev.banner
    );

    // Discovery and JWKS.
    let (s, d) = json(
        direct()
            .get(format!("{}/.well-known/openid-configuration", dev.issuer()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(d["issuer"], dev.issuer());
    assert_eq!(d["token_endpoint"], format!("{}/token", dev.issuer()));
    let (s, jwks) = json(
        direct()
            .get(d["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(jwks["keys"][0]["kty"], "EC", "{jwks}");

    // The admin server is up and ready.
    let r = direct()
        .get(format!("http://{}/readyz", dev.listeners["admin"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let up = Upstream::start().await;
    let user = mint(&dev, "alice", "my-agent", "openid").await;
    let user_claims = jwt_claims(&user);
    assert_eq!(user_claims["sub"], "alice");
    assert_eq!(user_claims["iss"], dev.issuer());

    // The agent calls the tool through the proxy: the tool gets an exchanged token.
    let agent = dev.agent();
    let url = format!("http://127.0.0.1:{}/call", up.addr.port());
    let (s, body) = json(agent.get(&url).bearer_auth(&user).send().await.unwrap()).await;
    assert_eq!(s, 200, "{body}\n{}", dev.logs());
    let got = body["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_ne!(got, user, "the tool must not receive the user's token");
    let c = jwt_claims(&got);
    assert_eq!(c["aud"], "dev-tool", "{c}");
    assert_eq!(c["sub"], "alice", "{c}");
    assert_eq!(c["act"]["sub"], "spiffe://dev.local/agent", "{c}");
    assert_eq!(c["iss"], dev.issuer(), "{c}");
    assert!(
        !dev.logs().contains(&user),
        "the user token must never be logged"
    );

    // No token: the default no_token_policy is passthrough.
    let (s, body) = json(agent.get(&url).send().await.unwrap()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["authorization"], Value::Null);

    // A garbage token: the exchange fails and the agent (not the tool) gets 503.
    let hits = up.hits();
    let (s, body) = json(
        agent
            .get(&url)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"], "token_exchange_failed", "{body}");
    assert_eq!(up.hits(), hits, "the tool must not be called");

    // /token with a client assertion signed by a key outside the dev trust domain: 401.
    let foreign = SvidSigner::new("foreign").sign("spiffe://dev.local/agent", dev.issuer(), 300);
    for assertion in [foreign.as_str(), "garbage"] {
        let (s, v) = json(
            direct()
                .post(format!("{}/token", dev.issuer()))
                .form(&[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", user.as_str()),
                    ("subject_token_type", ACCESS_TOKEN),
                    ("audience", "dev-tool"),
                    ("client_assertion_type", JWT_SPIFFE),
                    ("client_assertion", assertion),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("invalid_client")),
            "{v}"
        );
    }
    // Missing subject token with no client auth: still 401 (client auth comes first); bad
    // grant type: 400.
    let (s, v) = json(
        direct()
            .post(format!("{}/token", dev.issuer()))
            .form(&[("grant_type", TOKEN_EXCHANGE)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );
    let (s, v) = json(
        direct()
            .post(format!("{}/token", dev.issuer()))
            .body("\u{0}\u{ff}%%%")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400, "{v}");

    // SIGTERM: drain and exit 0.
    let pid = dev.child.id().unwrap();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), dev.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", dev.logs());
}

#[tokio::test]
async fn routes_file_overrides_the_defaults() {
    let dir = TempDir::new("dev-routes");
    let routes = dir.write(
        "routes.yaml",
        "- host: \"127.0.0.1\"\n  target_audience: other-tool\n  token_scopes: \"tool.read\"\n",
    );
    let dev = Dev::start(&["--routes", routes.to_str().unwrap()]).await;
    assert!(dev.banner.contains("other-tool"), "{}", dev.banner);
    assert!(!dev.banner.contains("dev-tool"), "{}", dev.banner);
    let up = Upstream::start().await;
    let user = mint(&dev, "bob", "my-agent", "openid").await;
    let (s, body) = json(
        dev.agent()
            .get(format!("http://127.0.0.1:{}/", up.addr.port()))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let c = jwt_claims(
        body["authorization"]
            .as_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap(),
    );
    assert_eq!(
        (c["aud"].as_str(), c["sub"].as_str(), c["scope"].as_str()),
        (Some("other-tool"), Some("bob"), Some("tool.read")),
        "{c}"
    );
}

#[test]
fn ports_in_use_exit_2_naming_the_port_and_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for flag in ["--outbound-port", "--issuer-port", "--admin-port"] {
        let mut args = vec!["dev".to_string()];
        for f in ["--outbound-port", "--issuer-port", "--admin-port"] {
            args.push(f.to_string());
            args.push(if f == flag {
                port.clone()
            } else {
                free_port().to_string()
            });
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run_cli(&refs);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(&port) && err.contains(flag), "{flag}: {err}");
    }
}

#[test]
fn bad_routes_and_unreachable_issuer_exit_2() {
    let dir = TempDir::new("dev-bad");
    let bad = dir.write("routes.yaml", "- host: \"{a,b\"\n");
    let missing = dir.path().join("nope.yaml");
    for f in [&bad, &missing] {
        let (code, _, err) = run_cli(&[
            "dev",
            "--routes",
            f.to_str().unwrap(),
            "--outbound-port",
            &free_port().to_string(),
            "--issuer-port",
            &free_port().to_string(),
            "--admin-port",
            &free_port().to_string(),
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(f.to_str().unwrap()), "{err}");
    }
    let dead = format!("http://127.0.0.1:{}/realms/dev", free_port());
    let (code, _, err) = run_cli(&[
        "dev",
        "--issuer",
        &dead,
        "--outbound-port",
        &free_port().to_string(),
        "--issuer-port",
        &free_port().to_string(),
        "--admin-port",
        &free_port().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unreachable") && err.contains(&dead), "{err}");
    let (code, _, err) = run_cli(&["dev", "--app", "nonsense"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--app"), "{err}");
}
