//! Transparent capture end to end, with the real kernel doing the work: two network namespaces
//! joined by a veth pair, `authbridge init-iptables` installing real `REDIRECT` rules in the
//! agent's namespace, `authbridge run` (as UID 1337) recovering each connection's destination
//! with `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, and a client (`curl`, another UID, no proxy
//! settings at all) whose requests reach the tool namespace with the bearer token swapped by a
//! real RFC 8693 exchange against the test STS — over IPv4 and IPv6.
//!
//! ```text
//!  ns ab-agent-PID                                   ns ab-tool-PID
//!  curl (uid 1000) ──OUTPUT: REDIRECT :15123──┐       echo.mjs  10.213.0.2:8080  10.213.0.3:8080
//!                                             ▼                 [fd00:ab:213::2]:8080  [..::3]:8080
//!  authbridge run (uid 1337, [::]:15123) ─── veth ───▶          10.213.0.2:8081 (excluded port)
//!   admin 127.0.0.1:9901                                STS     10.213.0.2:<ephemeral>
//!  10.213.0.1/24, fd00:ab:213::1/64                   10.213.0.2, .3/24, fd00:ab:213::2, ::3/64
//! ```
//!
//! Needs root, `ip` (iproute2), `iptables`/`ip6tables` (+ `-save`), `setpriv` (util-linux), `curl`,
//! Node.js and `npm ci --prefix tests/sts`. Without them it prints `skipping: ...` and passes,
//! except under `CI=true`, where a missing prerequisite fails the test.

use authbridge_e2e::{bin, jwt_claims, metric, TempDir};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const AGENT_V4: &str = "10.213.0.1";
/// Exchange route (IPv4).
const TOOL_V4: &str = "10.213.0.2";
/// Passthrough route (IPv4), a second address of the tool.
const TOOL_V4_PASS: &str = "10.213.0.3";
const AGENT_V6: &str = "fd00:ab:213::1";
/// Exchange route (IPv6).
const TOOL_V6: &str = "fd00:ab:213::2";
/// Passthrough route (IPv6).
const TOOL_V6_PASS: &str = "fd00:ab:213::3";
/// The tool's HTTP port (captured).
const TOOL_PORT: u16 = 8080;
/// A second tool port listed in OUTBOUND_PORTS_EXCLUDE (never captured).
const EXCLUDED_PORT: u16 = 8081;
const PROXY_UID: &str = "1337";
const CLIENT_UID: &str = "1000";
const CLIENT_ID: &str = "agent-secret-client";
const CLIENT_SECRET: &str = "s3cret";

const PASS_FWD: &str =
    "authbridge_outbound_requests_total{action=\"passthrough\",outcome=\"forwarded\"}";
const EXCH_FWD: &str =
    "authbridge_outbound_requests_total{action=\"exchange\",outcome=\"forwarded\"}";
const ALL_OUTBOUND: &str = "authbridge_outbound_requests_total{";

// ---------------------------------------------------------------------------------------------
// Prerequisites

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// `Some(reason)` when something the test needs is missing.
fn missing_prerequisite() -> Option<String> {
    match std::fs::metadata("/proc/self") {
        Ok(m) if m.uid() == 0 => {}
        Ok(m) => return Some(format!("not running as root (euid {})", m.uid())),
        Err(e) => return Some(format!("cannot read /proc/self: {e}")),
    }
    for tool in [
        "ip",
        "iptables",
        "ip6tables",
        "iptables-save",
        "ip6tables-save",
        "setpriv",
        "curl",
    ] {
        if find_in_path(tool).is_none() {
            return Some(format!(
                "`{tool}` not found in PATH (apt-get install -y iptables iproute2 util-linux curl)"
            ));
        }
    }
    let node = node();
    let node_ok = Command::new(&node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !node_ok {
        return Some(format!("`{}` (Node.js) not runnable", node.display()));
    }
    let sts = sts_dir();
    if !sts
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        return Some(format!(
            "{}/node_modules missing (run `npm ci --prefix tests/sts`)",
            sts.display()
        ));
    }
    None
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    // Root's PATH sometimes lacks /usr/sbin; iptables and ip live there.
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn node() -> PathBuf {
    std::env::var_os("NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

fn sts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sts")
}

fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("capture test cannot run in CI (CI=true), prerequisite missing: {why}");
    }
    eprintln!("skipping: {why}");
}

// ---------------------------------------------------------------------------------------------
// Processes and namespaces

/// Runs a command to completion with a deadline (killing it when the deadline passes).
fn output(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let o = output(cmd, Duration::from_secs(60));
    assert!(
        o.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run_ok(Command::new("ip").args(args))
}

/// A command run inside network namespace `ns`, with no proxy settings in its environment.
fn in_ns(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog);
    for k in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        c.env_remove(k);
    }
    c
}

/// The two namespaces; deleting them also removes the veth pair. Deleted on drop (also when
/// the test panics). Declared before every process so it is dropped after them.
struct Namespaces {
    agent: String,
    tool: String,
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let ns = Namespaces {
            agent: format!("ab-agent-{pid}"),
            tool: format!("ab-tool-{pid}"),
        };
        for n in [&ns.agent, &ns.tool] {
            let o = output(
                Command::new("ip").args(["netns", "add", n]),
                Duration::from_secs(30),
            );
            if !o.status.success() {
                return Err(format!(
                    "`ip netns add {n}` failed (no CAP_SYS_ADMIN / netns support?): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.agent, &self.tool] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Namespaces left behind by an earlier run that was killed (its PID no longer exists).
fn remove_stale_namespaces() {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let pid = name
            .strip_prefix("ab-agent-")
            .or_else(|| name.strip_prefix("ab-tool-"));
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

/// A long-running child, killed (and reaped) on drop. Its stdin is kept open so Node children
/// started with an exit-on-stdin-EOF option die with the test process.
struct Daemon {
    name: &'static str,
    child: Child,
    _stdin: Option<ChildStdin>,
    log: Option<PathBuf>,
}

impl Daemon {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    fn logs(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (stdout piped, stderr inherited) and waits up to 60 s for its first stdout line.
fn spawn_with_ready_line(name: &'static str, cmd: &mut Command) -> (Daemon, String) {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first.and_then(|l| l.ok()));
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let mut d = Daemon {
        name,
        child,
        _stdin: stdin,
        log: None,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(line)) => (d, line),
        Ok(None) => panic!(
            "{name} ({shown}) exited before its ready line: {:?} (stderr above)",
            d.exited()
        ),
        Err(_) => panic!("{name} ({shown}) printed no ready line within 60 s"),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP through curl (inside the namespaces)

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl` in namespace `ns` as `uid` (None = root), no proxy settings. `Err` on transport failure.
fn curl(ns: &str, uid: Option<&str>, url: &str, extra: &[&str]) -> Result<Reply, String> {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = in_ns(ns, "setpriv");
            c.args(["--reuid", u, "--regid", u, "--clear-groups", "curl"]);
            c
        }
        None => in_ns(ns, "curl"),
    };
    cmd.args([
        "-sS",
        "--noproxy",
        "*",
        "--connect-timeout",
        "10",
        "--max-time",
        "30",
        "-w",
        "\n%{http_code}",
    ])
    .args(extra)
    .arg(url);
    let o = output(&mut cmd, Duration::from_secs(60));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!(
            "curl {url} failed ({}): {}{}",
            o.status,
            out,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    Ok(Reply {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    })
}

fn url(host: &str, port: u16, path: &str) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}{path}")
    } else {
        format!("http://{host}:{port}{path}")
    }
}

/// Polls until `f` succeeds (generous deadline for slow CI machines).
fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not ready within {timeout:?}; last error: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// iptables

/// The nat table of both families in the namespace, counters and comments stripped, from the
/// first `*-save` flavour that shows our chains.
fn nat_rules(ns: &str) -> String {
    let strip = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.rfind(" [") {
                Some(i) if l.starts_with(':') && l.ends_with(']') => l[..i].to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut all = String::new();
    for fam in ["iptables", "ip6tables"] {
        let mut found = None;
        for flavour in ["", "-nft", "-legacy"] {
            let prog = format!("{fam}{flavour}-save");
            if find_in_path(&prog).is_none() {
                continue;
            }
            let o = output(
                in_ns(ns, &prog).args(["-t", "nat"]),
                Duration::from_secs(60),
            );
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            if o.status.success() && text.contains("AUTHBRIDGE_OUTPUT") {
                found = Some(strip(&text));
                break;
            }
        }
        let text = found
            .unwrap_or_else(|| panic!("no {fam}*-save in {ns} shows the AUTHBRIDGE_OUTPUT chain"));
        all.push_str(&format!("### {fam}\n{text}\n"));
    }
    all
}

fn init_iptables(ns: &str) -> String {
    let mut cmd = in_ns(ns, bin());
    cmd.arg("init-iptables")
        .env("POD_IP", AGENT_V4)
        .env("PROXY_PORT", "15123")
        .env("PROXY_UID", PROXY_UID)
        .env("OUTBOUND_PORTS_EXCLUDE", EXCLUDED_PORT.to_string())
        .env("CAPTURE_IPV6", "on")
        .env_remove("RUST_LOG");
    let o = output(&mut cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "init-iptables in {ns} failed ({}):\n{text}",
        o.status
    );
    text
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn transparent_capture_ipv4_and_ipv6() {
    if let Some(why) = missing_prerequisite() {
        return skip_or_fail(&why);
    }
    let started = Instant::now();
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(why) => return skip_or_fail(&why),
    };
    let (a, t) = (ns.agent.clone(), ns.tool.clone());

    // --- network: veth pair, addresses (nodad: usable at once), loopback up.
    ip(&[
        "link", "add", "ab0", "netns", &a, "type", "veth", "peer", "name", "ab1", "netns", &t,
    ]);
    for (n, dev, v4s, v6s) in [
        (&a, "ab0", vec![AGENT_V4], vec![AGENT_V6]),
        (
            &t,
            "ab1",
            vec![TOOL_V4, TOOL_V4_PASS],
            vec![TOOL_V6, TOOL_V6_PASS],
        ),
    ] {
        ip(&["-n", n, "link", "set", "lo", "up"]);
        for v4 in v4s {
            ip(&["-n", n, "addr", "add", &format!("{v4}/24"), "dev", dev]);
        }
        for v6 in v6s {
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        ip(&["-n", n, "link", "set", dev, "up"]);
    }

    // --- tool namespace: the echo tool and the STS.
    let echo_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns/echo.mjs");
    let listeners = [
        format!("{TOOL_V4}:{TOOL_PORT}"),
        format!("{TOOL_V4_PASS}:{TOOL_PORT}"),
        format!("{TOOL_V4}:{EXCLUDED_PORT}"),
        format!("[{TOOL_V6}]:{TOOL_PORT}"),
        format!("[{TOOL_V6_PASS}]:{TOOL_PORT}"),
        format!("[{TOOL_V6}]:{EXCLUDED_PORT}"),
    ];
    let (_echo, line) = spawn_with_ready_line(
        "echo tool",
        in_ns(&t, node()).arg(&echo_script).args(&listeners),
    );
    assert!(
        line.contains("ready"),
        "echo tool: unexpected ready line {line}"
    );

    let (_sts, line) = spawn_with_ready_line(
        "STS",
        in_ns(&t, node())
            .arg(sts_dir().join("server.mjs"))
            .args([
                "--port",
                "0",
                "--host",
                TOOL_V4,
                "--exit-on-stdin-eof",
                "--client-secret",
                CLIENT_SECRET,
            ])
            .current_dir(sts_dir()),
    );
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("STS ready line ({e}): {line}"));
    let issuer = ready["issuer"].as_str().expect("issuer").to_string();
    let token_url = ready["token_url"].as_str().expect("token_url").to_string();
    assert!(
        token_url.contains(TOOL_V4),
        "STS token_url {token_url} is not on {TOOL_V4}"
    );

    // The harness talks to the STS's /test endpoints from inside the tool namespace.
    let sts_post = |path: &str, form: &[(&str, &str)]| -> Value {
        let mut args = Vec::new();
        for (k, v) in form {
            args.push("--data-urlencode".to_string());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&t, None, &format!("{issuer}{path}"), &args)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        r.json()
    };
    let sts_requests = || -> Vec<Value> {
        let r =
            curl(&t, None, &format!("{issuer}/test/requests"), &[]).expect("GET /test/requests");
        assert_eq!(r.status, 200, "GET /test/requests: {}", r.body);
        r.json().as_array().cloned().expect("array")
    };
    let user_token = sts_post(
        "/test/mint",
        &[("sub", "alice"), ("aud", "agent-aud"), ("scope", "tools")],
    )["access_token"]
        .as_str()
        .expect("minted access_token")
        .to_string();
    let bearer = format!("Authorization: Bearer {user_token}");

    // --- the veth works both ways before any rule exists (v6 neighbour discovery included).
    for host in [TOOL_V4, TOOL_V4_PASS, TOOL_V6, TOOL_V6_PASS] {
        poll(
            &format!("tool at {host} from the agent namespace"),
            Duration::from_secs(60),
            || {
                curl(&a, None, &url(host, TOOL_PORT, "/ping"), &[]).and_then(|r| {
                    (r.status == 200)
                        .then_some(())
                        .ok_or(format!("status {}", r.status))
                })
            },
        );
    }

    // --- agent namespace: the capture rules, installed twice (idempotent).
    let report = init_iptables(&a);
    eprintln!("init-iptables (1st run):\n{report}");
    let rules = nat_rules(&a);
    eprintln!("nat table after the 1st run:\n{rules}");
    assert!(
        rules.contains("REDIRECT") && rules.contains("15123"),
        "no REDIRECT to 15123:\n{rules}"
    );
    let v6_part = rules.split("### ip6tables").nth(1).unwrap_or("");
    assert!(
        v6_part.contains("AUTHBRIDGE_OUTPUT") && v6_part.contains("REDIRECT"),
        "no IPv6 capture rules:\n{rules}"
    );
    let report2 = init_iptables(&a);
    eprintln!("init-iptables (2nd run):\n{report2}");
    let rules2 = nat_rules(&a);
    assert_eq!(
        rules, rules2,
        "a second init-iptables changed the nat table"
    );

    // --- the proxy, as UID 1337, dual-stack outbound listener.
    // UID 1337 must be able to read everything it is given, whatever the umask and however
    // private the checkout's directory is (CI homes are often 0750): a world-readable temp dir
    // with a copy of the binary.
    let dir = TempDir::new("capture");
    set_mode(dir.path(), 0o755);
    let proxy_bin = dir.path().join("authbridge");
    std::fs::copy(bin(), &proxy_bin).expect("copy the authbridge binary");
    set_mode(&proxy_bin, 0o755);
    let secret_file = dir.write("client-secret", &format!("{CLIENT_SECRET}\n"));
    set_mode(&secret_file, 0o644);
    let config = format!(
        r#"outbound:
  listen: "[::]:15123"
  token_url: "{token_url}"
  client_id: {CLIENT_ID}
  client_auth: client-secret
  client_secret_file: "{secret}"
  routes_file: ""
  default_policy: passthrough
  no_token_policy: deny
  routes:
    - host: "{TOOL_V4}"
      target_audience: tool-aud
      action: exchange
    - host: "{TOOL_V6}"
      target_audience: tool-aud-v6
      action: exchange
    - host: "{TOOL_V4_PASS}"
      action: passthrough
    - host: "{TOOL_V6_PASS}"
      action: passthrough
inbound:
  mtls: disabled
admin:
  listen: "127.0.0.1:9901"
"#,
        secret = secret_file.display()
    );
    let cfg = dir.write("config.yaml", &config);
    set_mode(&cfg, 0o644);
    let log_path = dir.path().join("authbridge.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = in_ns(&a, "setpriv")
        .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
        .arg(&proxy_bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn authbridge run");
    let mut proxy = Daemon {
        name: "authbridge",
        child,
        _stdin: None,
        log: Some(log_path),
    };
    poll("authbridge /readyz", Duration::from_secs(60), || {
        if let Some(s) = proxy.exited() {
            panic!("{} exited early ({s}):\n{}", proxy.name, proxy.logs());
        }
        match curl(&a, None, "http://127.0.0.1:9901/readyz", &[]) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {}: {}", r.status, r.body)),
            Err(e) => Err(e),
        }
    });
    let metrics = |a: &str| -> String {
        let r = curl(a, None, "http://127.0.0.1:9901/metrics", &[]).expect("GET /metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    };
    let logs_on_failure = |what: &str| format!("{what}\n--- authbridge log ---\n{}", proxy.logs());

    // The client: another UID, no proxy settings, plain URLs. Everything below is captured by
    // the kernel; nothing tells curl about the proxy.
    let client = |host: &str, port: u16, path: &str| -> Value {
        let u = url(host, port, path);
        let r = curl(&a, Some(CLIENT_UID), &u, &["-H", &bearer])
            .unwrap_or_else(|e| panic!("{}", logs_on_failure(&e)));
        let hint = if r.body.contains("absolute URI") {
            "\n(hint: the proxy treated a REDIRECTed connection as an explicit-proxy client, i.e. its \
             SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST lookup found nothing)"
        } else {
            ""
        };
        assert_eq!(
            r.status,
            200,
            "{}",
            logs_on_failure(&format!("GET {u}: {} {}{hint}", r.status, r.body))
        );
        r.json()
    };
    let check_exchanged = |got: &Value, listener: &str, aud: &str| {
        assert_eq!(
            got["listener"], listener,
            "answered by the wrong server: {got}"
        );
        let auth = got["authorization"]
            .as_str()
            .unwrap_or_else(|| panic!("no Authorization reached the tool: {got}"));
        let token = auth
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("not a bearer token: {auth}"));
        assert_ne!(
            token, user_token,
            "the tool got the user's own token: no exchange happened"
        );
        let claims = jwt_claims(token);
        let auds: Vec<&str> = match &claims["aud"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(v) => v.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        assert!(
            auds.contains(&aud),
            "exchanged token aud {auds:?} lacks {aud}: {claims}"
        );
        assert_eq!(claims["act"]["sub"], CLIENT_ID, "act.sub: {claims}");
        assert_eq!(claims["sub"], "alice", "sub: {claims}");
        assert_eq!(claims["iss"], issuer.as_str(), "iss: {claims}");
    };
    let check_unchanged = |got: &Value, listener: &str| {
        assert_eq!(
            got["listener"], listener,
            "answered by the wrong server: {got}"
        );
        assert_eq!(
            got["authorization"],
            format!("Bearer {user_token}"),
            "token changed on a passthrough path: {got}"
        );
    };

    // 1. IPv4, exchange route: REDIRECT → SO_ORIGINAL_DST → RFC 8693 exchange → 10.213.0.2:8080.
    //    The proxy's own connections (STS, upstream) leave as UID 1337 and are not captured again.
    let m0 = metrics(&a);
    let got = client(TOOL_V4, TOOL_PORT, "/v4/exchange");
    check_exchanged(&got, &format!("{TOOL_V4}:{TOOL_PORT}"), "tool-aud");
    assert_eq!(got["path"], "/v4/exchange");
    let reqs = sts_requests();
    let ex = reqs
        .last()
        .unwrap_or_else(|| panic!("the STS saw no exchange"));
    assert_eq!(
        ex["form"]["subject_token"],
        user_token.as_str(),
        "subject_token: {ex}"
    );
    assert_eq!(ex["form"]["audience"], "tool-aud", "audience: {ex}");
    assert_eq!(ex["form"]["client_id"], CLIENT_ID, "client_id: {ex}");
    assert_eq!(
        ex["form"]["grant_type"], "urn:ietf:params:oauth:grant-type:token-exchange",
        "{ex}"
    );

    // 2. IPv4, passthrough route (another address of the tool): the token arrives unchanged.
    let got = client(TOOL_V4_PASS, TOOL_PORT, "/v4/pass");
    check_unchanged(&got, &format!("{TOOL_V4_PASS}:{TOOL_PORT}"));

    // 3. IPv6, exchange route: IP6T_SO_ORIGINAL_DST.
    let got = client(TOOL_V6, TOOL_PORT, "/v6/exchange");
    check_exchanged(&got, &format!("[{TOOL_V6}]:{TOOL_PORT}"), "tool-aud-v6");
    let reqs = sts_requests();
    assert_eq!(
        reqs.last().map(|r| r["form"]["audience"].clone()),
        Some(Value::from("tool-aud-v6")),
        "{reqs:?}"
    );

    // 4. IPv6, passthrough route.
    let got = client(TOOL_V6_PASS, TOOL_PORT, "/v6/pass");
    check_unchanged(&got, &format!("[{TOOL_V6_PASS}]:{TOOL_PORT}"));

    // All four went through the proxy: two exchanged, two passed through.
    let m1 = metrics(&a);
    let d_pass = metric(&m1, PASS_FWD) - metric(&m0, PASS_FWD);
    let d_exch = metric(&m1, EXCH_FWD) - metric(&m0, EXCH_FWD);
    assert_eq!(
        (d_pass, d_exch),
        (2.0, 2.0),
        "{}",
        logs_on_failure(&format!(
            "outbound counters did not rise as expected:\n{}",
            grep_metrics(&m1)
        ))
    );

    // 5. Not captured: an excluded port (even on an exchange host), and the proxy's own UID.
    let before = metric(&m1, ALL_OUTBOUND);
    for host in [TOOL_V4, TOOL_V6] {
        let got = client(host, EXCLUDED_PORT, "/excluded");
        let listener = if host.contains(':') {
            format!("[{host}]:{EXCLUDED_PORT}")
        } else {
            format!("{host}:{EXCLUDED_PORT}")
        };
        check_unchanged(&got, &listener);
        let u = url(host, TOOL_PORT, "/as-proxy-uid");
        let r = curl(&a, Some(PROXY_UID), &u, &["-H", &bearer])
            .unwrap_or_else(|e| panic!("{}", logs_on_failure(&e)));
        assert_eq!(r.status, 200, "GET {u} as uid {PROXY_UID}: {}", r.body);
        check_unchanged(
            &r.json(),
            &if host.contains(':') {
                format!("[{host}]:{TOOL_PORT}")
            } else {
                format!("{host}:{TOOL_PORT}")
            },
        );
    }
    let m2 = metrics(&a);
    assert_eq!(
        metric(&m2, ALL_OUTBOUND),
        before,
        "excluded-port / UID-1337 traffic went through the proxy:\n{}",
        grep_metrics(&m2)
    );

    // 6. Still idempotent with the proxy running and connections tracked.
    init_iptables(&a);
    assert_eq!(
        nat_rules(&a),
        rules,
        "a third init-iptables changed the nat table"
    );

    if let Some(s) = proxy.exited() {
        panic!("authbridge exited during the test ({s}):\n{}", proxy.logs());
    }
    let logs = proxy.logs();
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the client secret appears in the proxy log"
    );
    assert!(
        !logs.contains(&user_token),
        "the user token appears in the proxy log"
    );
    eprintln!(
        "capture test passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

fn grep_metrics(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("outbound"))
        .collect::<Vec<_>>()
        .join("\n")
}
