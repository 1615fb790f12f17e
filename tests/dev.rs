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

/// The four ports `dev` listens on.
#[derive(Clone, Copy)]
struct Ports {
    inbound: u16,
    outbound: u16,
    issuer: u16,
    admin: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            inbound: free_port(),
            outbound: free_port(),
            issuer: free_port(),
            admin: free_port(),
        }
    }

    fn args(&self) -> Vec<String> {
        [
            ("--inbound-port", self.inbound),
            ("--outbound-port", self.outbound),
            ("--issuer-port", self.issuer),
            ("--admin-port", self.admin),
        ]
        .iter()
        .flat_map(|(f, p)| [f.to_string(), p.to_string()])
        .collect()
    }
}

impl Dev {
    async fn start(extra: &[&str]) -> Dev {
        Self::start_on(Ports::free(), extra).await
    }

    /// Starts `authbridge dev` on `ports` and reads its banner (printed once it is ready).
    async fn start_on(ports: Ports, extra: &[&str]) -> Dev {
        let dir = TempDir::new("dev");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(bin())
            .arg("dev")
            .args(ports.args())
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
                    if ["inbound", "outbound", "issuer", "admin"].contains(&name) {
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
        for (name, want) in [
            ("inbound", format!("127.0.0.1:{}", ports.inbound)),
            ("outbound", format!("127.0.0.1:{}", ports.outbound)),
            ("issuer", format!("http://127.0.0.1:{}", ports.issuer)),
            ("admin", format!("127.0.0.1:{}", ports.admin)),
        ] {
            assert_eq!(
                dev.listeners.get(name),
                Some(&want),
                "{name}\n{}\n{}",
                dev.banner,
                dev.logs()
            );
        }
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
    assert!(!dev.banner.contains("NOT IN THIS BUILD"), "{}", dev.banner);
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

const PORT_FLAGS: [&str; 4] = [
    "--inbound-port",
    "--outbound-port",
    "--issuer-port",
    "--admin-port",
];

#[test]
fn ports_in_use_exit_2_naming_the_port_and_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for flag in PORT_FLAGS {
        let mut args = vec!["dev".to_string()];
        for f in PORT_FLAGS {
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
        let mut args = vec![
            "dev".to_string(),
            "--routes".into(),
            f.display().to_string(),
        ];
        args.extend(Ports::free().args());
        let (code, _, err) = run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(f.to_str().unwrap()), "{err}");
    }
    let dead = format!("http://127.0.0.1:{}/realms/dev", free_port());
    let mut args = vec!["dev".to_string(), "--issuer".into(), dead.clone()];
    args.extend(Ports::free().args());
    let (code, _, err) = run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unreachable") && err.contains(&dead), "{err}");
    let (code, _, err) = run_cli(&["dev", "--app", "nonsense"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--app"), "{err}");
}

const AGENT: &str = "spiffe://dev.local/agent";

/// Proxy settings a developer's (or CI's) shell may carry; the scripts run without them.
const PROXY_VARS: [&str; 10] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "CURL_HOME",
    "REQUEST_METHOD",
];

/// Runs `script` with bash in `dir`, in its own process group (everything it left running is
/// killed afterwards), without proxy variables; (exit code, stdout, stderr).
async fn bash(dir: &std::path::Path, script: &str) -> (i32, String, String) {
    let (out, err) = (dir.join("script.out"), dir.join("script.err"));
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .kill_on_drop(true);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().expect("bash");
    struct KillGroup(u32);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _group = KillGroup(child.id().unwrap());
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let status = match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(s) => s.unwrap(),
        Err(_) => panic!(
            "the script timed out\n--- script\n{script}\n--- stdout\n{}\n--- stderr\n{}",
            read(&out),
            read(&err)
        ),
    };
    (status.code().unwrap_or(-1), read(&out), read(&err))
}

/// The fenced blocks of the README marked `<!-- walkthrough ... -->` (the line before the
/// fence), in order: (marked `walkthrough: dev`, the block's text).
fn walkthrough_blocks(readme: &str) -> Vec<(bool, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if let Some(rest) = l.strip_prefix("<!-- walkthrough") {
            let dev = rest.trim_start().starts_with(": dev");
            let fence = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
            assert!(
                fence.starts_with("```"),
                "README.md line {}: a walkthrough marker must be followed by a fenced block",
                i + 1
            );
            let mut text = String::new();
            let mut j = i + 2;
            while j < lines.len() && !lines[j].trim_start().starts_with("```") {
                text.push_str(lines[j]);
                text.push('\n');
                j += 1;
            }
            blocks.push((dev, text));
            i = j;
        }
        i += 1;
    }
    blocks
}

/// Replaces each whole number (a maximal run of digits) found in `map` by its mapping.
fn rewrite_ports(text: &str, map: &[(u16, u16)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        let mapped = digits
            .parse::<u16>()
            .ok()
            .and_then(|n| map.iter().find(|(from, _)| *from == n))
            .filter(|_| !digits.starts_with('0'));
        match mapped {
            Some((_, to)) => out.push_str(&to.to_string()),
            None => out.push_str(digits),
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// Of `ports`, those named on a line of `text` that starts a background job (`... &`).
fn background_ports(text: &str, ports: &[u16]) -> Vec<u16> {
    let mut found = Vec::new();
    for line in text.lines() {
        let cmd = line.split(" #").next().unwrap_or("").trim_end();
        if !cmd.ends_with('&') || cmd.ends_with("&&") {
            continue;
        }
        for p in ports {
            if rewrite_ports(cmd, &[(*p, 0)]) != cmd && !found.contains(p) {
                found.push(*p);
            }
        }
    }
    found
}

/// Splits script output at lines `@@NAME` into (NAME, text) pairs.
fn sections(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for l in out.lines() {
        if let Some(name) = l.strip_prefix("@@") {
            v.push((name.to_string(), String::new()));
        } else if let Some((_, text)) = v.last_mut() {
            text.push_str(l);
            text.push('\n');
        }
    }
    v
}

const SCRIPT_PRELUDE: &str = r#"set -e
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
"#;

/// The README's "Walkthrough (2 minutes)", executed: its marked blocks run in order (ports
/// rewritten to free ones, `cargo run --release --` replaced by the test binary), against a
/// real `authbridge dev` and the README's own stand-in agent and tool.
#[tokio::test]
async fn readme_walkthrough_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains("## Walkthrough (2 minutes)"),
        "README.md has no walkthrough section"
    );
    let ports = Ports::free();
    let (app, tool) = (free_port(), free_port());
    let map = [
        (15124, ports.inbound),
        (15123, ports.outbound),
        (15125, ports.issuer),
        (9901, ports.admin),
        (8000, app),
        (9000, tool),
    ];
    let blocks: Vec<(bool, String)> = walkthrough_blocks(&readme)
        .into_iter()
        .map(|(dev, text)| (dev, rewrite_ports(&text, &map)))
        .collect();
    assert!(blocks.len() >= 3, "too few walkthrough blocks: {blocks:?}");
    assert!(
        blocks[0].0 && blocks[1..].iter().all(|(dev, _)| !dev),
        "the first walkthrough block (only) must be marked `walkthrough: dev`"
    );

    // Terminal 1: `cargo run --release -- dev ARGS`, run as the test binary with free ports.
    let words: Vec<&str> = blocks[0]
        .1
        .trim()
        .split(" #")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        words.get(..5),
        Some(&["cargo", "run", "--release", "--", "dev"][..]),
        "{:?}",
        blocks[0].1
    );
    assert!(
        !words.iter().any(|w| PORT_FLAGS.contains(w)),
        "the walkthrough should use the default ports"
    );
    assert!(
        words.contains(&format!("127.0.0.1:{app}").as_str()),
        "{words:?}"
    );
    let dev = Dev::start_on(ports, &words[5..]).await;

    // Terminal 2: every other block, in one shell, in order.
    let dir = TempDir::new("walkthrough");
    let mut script = SCRIPT_PRELUDE.to_string();
    for (i, (_, text)) in blocks.iter().enumerate().skip(1) {
        script.push_str(&format!("echo; echo '@@block {i}'\n{text}"));
        for p in background_ports(text, &[app, tool]) {
            script.push_str(&format!("wait_port {p}\n"));
        }
    }
    script.push_str("echo; echo '@@TOKEN'\nprintf '%s\\n' \"${TOKEN:-}\"\n");
    let (code, out, err) = bash(dir.path(), &script).await;
    let context = format!(
        "--- script\n{script}\n--- stdout\n{out}\n--- stderr\n{err}\n--- authbridge dev\n{}",
        dev.logs()
    );
    assert_eq!(code, 0, "{context}");
    let sections = sections(&out);
    let user = sections
        .iter()
        .find(|(n, _)| n == "TOKEN")
        .map(|(_, t)| t.trim().to_string())
        .unwrap_or_default();
    assert!(
        user.split('.').count() == 3,
        "the walkthrough must leave the minted user token in $TOKEN\n{context}"
    );
    let user_claims = jwt_claims(&user);

    // Inbound: validated, the agent learns who called, and gets the caller's token unchanged.
    let seen: Value = sections
        .iter()
        .filter_map(|(_, t)| serde_json::from_str::<Value>(t.trim()).ok())
        .find(|v| v.get("x-authbridge-sub").is_some())
        .unwrap_or_else(|| panic!("no block shows what the agent received\n{context}"));
    assert_eq!(seen["x-authbridge-sub"], "alice", "{seen}");
    assert_eq!(seen["x-authbridge-iss"], dev.issuer(), "{seen}");
    assert_eq!(seen["token"], user_claims, "{seen}");
    assert_eq!(seen["token"]["aud"], AGENT, "{seen}");

    // Outbound: the tool got an exchanged token, not the user's.
    let tool_saw = &seen["the tool saw"]["token"];
    assert_ne!(tool_saw, &user_claims, "{seen}");
    assert_eq!(tool_saw["aud"], "dev-tool", "{seen}");
    assert_eq!(tool_saw["sub"], "alice", "{seen}");
    assert_eq!(tool_saw["act"]["sub"], AGENT, "{seen}");
    assert_eq!(tool_saw["iss"], dev.issuer(), "{seen}");
    assert!(
        seen["the tool saw"].get("x-authbridge-sub").is_none(),
        "{seen}"
    );

    // No token: 401 from the inbound side.
    let denied = sections
        .iter()
        .find(|(_, t)| t.starts_with("HTTP/1.1 401"))
        .map(|(_, t)| t.to_ascii_lowercase())
        .unwrap_or_else(|| panic!("no block shows a 401 without a token\n{context}"));
    assert!(
        denied.contains("www-authenticate: bearer realm=\"authbridge\"")
            && denied.contains("\"error\":\"unauthorized\""),
        "{denied}"
    );
    assert!(
        !dev.logs().contains(&user),
        "the user token must never be logged"
    );
}

/// The copy-paste block `dev` prints works as printed: it mints a token, calls the agent
/// through the inbound side, and exports the proxy, under which a call to a tool is exchanged.
#[tokio::test]
async fn printed_copy_paste_block_works() {
    let app = Upstream::start().await;
    let tool = Upstream::start().await;
    let dev = Dev::start(&["--app", &app.addr.to_string()]).await;
    let block: Vec<&str> = dev
        .banner
        .lines()
        .skip_while(|l| !l.starts_with("try it"))
        .skip(1)
        .take_while(|l| !l.starts_with("===="))
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    assert!(
        block.iter().any(|l| l.starts_with("TOKEN=$(curl"))
            && block.iter().any(|l| l.starts_with("export HTTP_PROXY=")),
        "{}",
        dev.banner
    );
    let mut script = "set -e\n".to_string();
    for (i, l) in block.iter().enumerate() {
        script.push_str(&format!("echo; echo '@@line {i}'\n{l}\n"));
    }
    // What the agent then does in that environment: call a tool with the caller's token.
    script.push_str(&format!(
        "echo; echo '@@agent'\ncurl -s -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{}/tool\n",
        tool.addr.port()
    ));
    let dir = TempDir::new("banner");
    let (code, out, err) = bash(dir.path(), &script).await;
    let context = format!(
        "--- script\n{script}\n--- stdout\n{out}\n--- stderr\n{err}\n--- authbridge dev\n{}",
        dev.logs()
    );
    assert_eq!(code, 0, "{context}");
    let json_line = |t: &str| {
        t.lines()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .unwrap_or(Value::Null)
    };
    let inbound = sections(&out)
        .into_iter()
        .find(|(_, t)| t.contains("HTTP/1.1 "))
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no inbound call in the block\n{context}"));
    assert!(inbound.starts_with("HTTP/1.1 200"), "{context}");
    let at_app = json_line(&inbound);
    assert_eq!(at_app["identity"]["x-authbridge-sub"], "alice", "{context}");
    let user = at_app["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("{context}"))
        .to_string();
    assert_eq!(jwt_claims(&user)["aud"], AGENT);
    let at_tool = sections(&out)
        .into_iter()
        .find(|(n, _)| n == "agent")
        .map(|(_, t)| json_line(&t))
        .unwrap();
    let exchanged = at_tool["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("{context}"));
    assert_ne!(exchanged, user);
    let c = jwt_claims(exchanged);
    assert_eq!(
        (
            c["aud"].as_str(),
            c["sub"].as_str(),
            c["act"]["sub"].as_str()
        ),
        (Some("dev-tool"), Some("alice"), Some(AGENT)),
        "{c}"
    );
}

/// Inbound: JWTs of the dev issuer for the agent's SPIFFE ID pass (identity headers set,
/// caller copies removed, token forwarded); others get 401 and never reach the app; bypass
/// paths pass; permissive mTLS accepts an X.509-SVID of the dev trust domain (from
/// `POST /dev/svid`) and refuses other CAs.
#[tokio::test]
async fn inbound_validates_tokens_and_accepts_dev_trust_domain_mtls() {
    use authbridge_e2e::mtls::{identity, MtlsClient};
    use fake_workload_api::TestCa;
    use std::sync::Arc;

    let app = Upstream::start().await;
    let dev = Dev::start(&["--app", &app.addr.to_string()]).await;
    let inbound = format!("http://{}", dev.listeners["inbound"]);
    let alice = mint(&dev, "alice", AGENT, "openid").await;

    let (s, body) = json(
        direct()
            .get(format!("{inbound}/hello"))
            .bearer_auth(&alice)
            .header("x-authbridge-sub", "mallory")
            .header("x-authbridge-peer-id", "spiffe://dev.local/forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{body}\n{}", dev.logs());
    assert_eq!(body["identity"]["x-authbridge-sub"], "alice", "{body}");
    assert_eq!(body["identity"]["x-authbridge-iss"], dev.issuer(), "{body}");
    assert_eq!(body["identity"].get("x-authbridge-peer-id"), None, "{body}");
    assert_eq!(body["authorization"], format!("Bearer {alice}"), "{body}");
    assert_eq!(body["path"], "/hello");

    let hits = app.hits();
    let other_aud = mint(&dev, "alice", "some-other-service", "openid").await;
    let foreign = SvidSigner::new("foreign").sign("alice", dev.issuer(), 300);
    for (token, why) in [
        (None, "no token"),
        (Some(other_aud.as_str()), "wrong audience"),
        (Some(foreign.as_str()), "signed by another key"),
        (Some("garbage"), "not a JWT"),
    ] {
        let mut req = direct().get(format!("{inbound}/hello"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let (s, body) = json(resp).await;
        assert_eq!(s, 401, "{why}: {body}");
        assert!(
            www.starts_with("Bearer realm=\"authbridge\""),
            "{why}: {www}"
        );
        assert_eq!(body["error"], "unauthorized", "{why}: {body}");
    }
    assert_eq!(app.hits(), hits, "rejected requests must not reach the app");
    let (s, _) = json(
        direct()
            .get(format!("{inbound}/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "bypass path");

    // mTLS with an SVID the dev trust domain issued.
    let (s, v) = json(
        direct()
            .post(format!("{}/dev/svid", dev.issuer()))
            .form(&[("spiffe_id", "spiffe://dev.local/caller")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let pem = |k: &str| v[k].as_str().unwrap().as_bytes().to_vec();
    let caller = Arc::new(
        spiffe_source::X509Identity::from_pem(
            &pem("svid_pem"),
            &pem("svid_key_pem"),
            Some(&pem("bundle_pem")),
            ["svid_pem", "svid_key_pem", "bundle_pem"],
        )
        .unwrap(),
    );
    let addr: std::net::SocketAddr = dev.listeners["inbound"].parse().unwrap();
    let mut c = MtlsClient::connect(addr, Some(caller.clone()), caller.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dev.logs()));
    assert_eq!(
        spiffe_source::x509::peer_spiffe_id(&c.server_leaf)
            .unwrap()
            .as_str(),
        AGENT
    );
    let a = c
        .get("/mtls", &[("authorization", &format!("Bearer {alice}"))])
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(
        j["identity"]["x-authbridge-peer-id"], "spiffe://dev.local/caller",
        "{j}"
    );
    assert_eq!(j["identity"]["x-authbridge-sub"], "alice", "{j}");
    let a = c.get("/mtls", &[]).await.unwrap();
    assert_eq!(a.status, 401, "mTLS does not replace the token: {}", a.body);

    // Another CA, even one claiming dev.local, is refused at the handshake.
    for td in ["dev.local", "other.example"] {
        let ca = TestCa::new(td);
        let svid = ca.issue_svid(&format!("spiffe://{td}/caller"));
        let refused =
            match MtlsClient::connect(addr, Some(identity(&svid, &[&ca])), caller.clone()).await {
                Err(_) => true,
                Ok(mut c) => c
                    .get("/", &[("authorization", &format!("Bearer {alice}"))])
                    .await
                    .is_err(),
            };
        assert!(
            refused,
            "a client certificate from another CA ({td}) must be refused"
        );
    }

    // /dev/svid only issues IDs of the dev trust domain.
    for id in ["spiffe://other.example/x", "spiffe://dev.local", "nope"] {
        let (s, v) = json(
            direct()
                .post(format!("{}/dev/svid", dev.issuer()))
                .form(&[("spiffe_id", id)])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{id}: {v}"
        );
    }
}

/// `--issuer URL`: inbound tokens are validated against that issuer's discovery document
/// (`issuer`, `jwks_uri`) — here another `authbridge dev`'s embedded issuer stands in for a
/// local Keycloak — and tokens of the embedded issuer are no longer accepted.
#[tokio::test]
async fn external_issuer_validates_inbound_tokens_with_its_jwks() {
    let app = Upstream::start().await;
    let real = Dev::start(&[]).await;
    let dev = Dev::start(&["--app", &app.addr.to_string(), "--issuer", real.issuer()]).await;
    assert!(
        dev.banner
            .contains(&format!("JWT: iss {0}, keys {0}/jwks", real.issuer())),
        "{}",
        dev.banner
    );
    let inbound = format!("http://{}/", dev.listeners["inbound"]);
    let good = mint(&real, "carol", AGENT, "openid").await;
    let (s, body) = json(
        direct()
            .get(&inbound)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{body}\n{}", dev.logs());
    assert_eq!(body["identity"]["x-authbridge-sub"], "carol", "{body}");
    assert_eq!(
        body["identity"]["x-authbridge-iss"],
        real.issuer(),
        "{body}"
    );
    let local = mint(&dev, "carol", AGENT, "openid").await;
    let (s, body) = json(
        direct()
            .get(&inbound)
            .bearer_auth(&local)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401, "{body}");
}
