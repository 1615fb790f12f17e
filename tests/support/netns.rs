//! Shared pieces of the root-only network-namespace tests (`capture.rs`, `two_pods.rs`):
//! prerequisites and the skip-or-fail rule, commands with deadlines, `ip netns` namespaces
//! removed on drop, long-running children, `curl` inside a namespace, the test STS, and
//! `init-iptables` / `*-save` in a namespace. The HTTP app both tests run inside their
//! namespaces is `tests/netns/echo.mjs` ([`echo_app`]).
//!
//! The tests need root, `ip` (iproute2), `iptables`/`ip6tables` (+ `-save`), `setpriv`
//! (util-linux), `curl`, Node.js and `npm ci --prefix tests/sts`. Without them they print
//! `skipping: ...` and pass, except under `CI=true`, where a missing prerequisite fails the test.
//!
//! Everything whose deadline differs between the tests is a method of [`Harness`], a constant
//! each test declares once.

use crate::TempDir;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The UID `authbridge run` runs as (exempt from the capture rules).
pub const PROXY_UID: &str = "1337";
/// The UID of the captured client (`curl`).
pub const CLIENT_UID: &str = "1000";
/// The test STS's static client (`tests/sts/server.mjs`), the agent's AuthBridge's identity
/// at the STS (`client_auth: client-secret`).
pub const CLIENT_ID: &str = "agent-secret-client";
pub const CLIENT_SECRET: &str = "s3cret";

// ---------------------------------------------------------------------------------------------
// Prerequisites

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// `Some(reason)` when something the tests need is missing.
pub fn missing_prerequisite() -> Option<String> {
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

pub fn find_in_path(name: &str) -> Option<PathBuf> {
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

/// Node.js (`NODE` overrides).
pub fn node() -> PathBuf {
    std::env::var_os("NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// The test STS (`tests/sts`, `server.mjs`).
pub fn sts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sts")
}

/// The HTTP app run inside the namespaces: `node echo.mjs HOST:PORT...` answers every request
/// with JSON describing what arrived (see the script).
pub fn echo_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("netns/echo.mjs")
}

/// The test STS (`tests/sts/server.mjs`) in `ns`, listening on `host` (ephemeral port),
/// [`CLIENT_SECRET`] for [`CLIENT_ID`], exiting when its stdin closes; its ready line is JSON
/// with `issuer`, `token_url`, `jwks_uri`.
pub fn sts_command(ns: &str, host: &str) -> Command {
    let mut cmd = in_ns(ns, node());
    cmd.arg(sts_dir().join("server.mjs"))
        .args([
            "--port",
            "0",
            "--host",
            host,
            "--exit-on-stdin-eof",
            "--client-secret",
            CLIENT_SECRET,
        ])
        .current_dir(sts_dir());
    cmd
}

// ---------------------------------------------------------------------------------------------
// Per-test settings

/// One test's name and deadlines.
#[derive(Clone, Copy, Debug)]
pub struct Harness {
    /// As shown in messages (`"capture test"`): a missing prerequisite under `CI=true`, the
    /// final `... passed in N.Ns`.
    pub name: &'static str,
    /// For a helper command (`ip`, `init-iptables`, `*-save`, the `curl` process) and for a
    /// daemon's ready line.
    pub deadline: Duration,
    /// `curl --max-time`.
    pub curl_max_time: Duration,
}

impl Harness {
    /// The namespaces `<prefix><PID>` for a test that can run here; `None` (after
    /// [`Harness::skip_or_fail`]) when a prerequisite is missing or namespaces cannot be added.
    pub fn namespaces<const N: usize>(&self, prefixes: [&str; N]) -> Option<Namespaces<N>> {
        if let Some(why) = missing_prerequisite() {
            self.skip_or_fail(&why);
            return None;
        }
        match Namespaces::create(prefixes) {
            Ok(ns) => Some(ns),
            Err(why) => {
                self.skip_or_fail(&why);
                None
            }
        }
    }

    /// Prints `{name} passed in N.Ns`.
    pub fn passed(&self, started: Instant) {
        eprintln!(
            "{} passed in {:.1}s",
            self.name,
            started.elapsed().as_secs_f64()
        );
    }

    /// Prints `skipping: why`, or panics under `CI=true`.
    pub fn skip_or_fail(&self, why: &str) {
        if in_ci() {
            panic!(
                "{} cannot run in CI (CI=true), prerequisite missing: {why}",
                self.name
            );
        }
        eprintln!("skipping: {why}");
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn run_ok(&self, cmd: &mut Command) -> String {
        let shown = format!("{cmd:?}");
        let o = output(cmd, self.deadline);
        assert!(
            o.status.success(),
            "{shown} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn ip(&self, args: &[&str]) -> String {
        self.run_ok(Command::new("ip").args(args))
    }

    /// Adds `v4s` (/24) and `v6s` (/64, `nodad`: usable at once) to `dev` in namespace `ns`,
    /// then sets `dev` up.
    pub fn add_addresses(&self, ns: &str, dev: &str, v4s: &[&str], v6s: &[&str]) {
        for v4 in v4s {
            self.ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
        }
        for v6 in v6s {
            let cidr = format!("{v6}/64");
            self.ip(&["-n", ns, "addr", "add", &cidr, "dev", dev, "nodad"]);
        }
        self.ip(&["-n", ns, "link", "set", dev, "up"]);
    }

    /// Starts `cmd` (stdout piped, stderr inherited) and waits for its first stdout line.
    pub fn spawn_with_ready_line(&self, name: &'static str, cmd: &mut Command) -> (Daemon, String) {
        let (mut child, shown) = spawn(cmd, Stdio::piped(), Stdio::inherit());
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
        match rx.recv_timeout(self.deadline) {
            Ok(Some(line)) => (d, line),
            Ok(None) => panic!(
                "{name} ({shown}) exited before its ready line: {:?} (stderr above)",
                d.exited()
            ),
            Err(_) => panic!(
                "{name} ({shown}) printed no ready line within {} s",
                self.deadline.as_secs()
            ),
        }
    }

    /// `curl -i` in namespace `ns` as `uid` (None = root), no proxy settings. `Err` on
    /// transport failure.
    pub fn curl(
        &self,
        ns: &str,
        uid: Option<&str>,
        url: &str,
        extra: &[&str],
    ) -> Result<Reply, String> {
        let mut cmd = match uid {
            Some(u) => {
                let mut c = in_ns(ns, "setpriv");
                c.args(["--reuid", u, "--regid", u, "--clear-groups", "curl"]);
                c
            }
            None => in_ns(ns, "curl"),
        };
        let max_time = self.curl_max_time.as_secs().to_string();
        cmd.args([
            "-sS",
            "-i",
            "--noproxy",
            "*",
            "--connect-timeout",
            "10",
            "--max-time",
            &max_time,
            "-w",
            "\n%{http_code}",
        ])
        .args(extra)
        .arg(url);
        let o = output(&mut cmd, self.deadline);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            return Err(format!(
                "curl {url} failed ({}): {}{}",
                o.status,
                out,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let (resp, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Reply {
            status: code.trim().parse().unwrap_or(0),
            headers,
            body: body.to_string(),
        })
    }

    /// POSTs `form` (URL-encoded) to the STS's `{issuer}{path}` (its `/test/...` endpoints) from
    /// namespace `ns`; the reply must be 200 JSON.
    pub fn sts_post(&self, ns: &str, issuer: &str, path: &str, form: &[(&str, &str)]) -> Value {
        let mut args = Vec::new();
        for (k, v) in form {
            args.push("--data-urlencode".to_string());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self
            .curl(ns, None, &format!("{issuer}{path}"), &args)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        r.json()
    }

    /// A token minted by the STS (`POST /test/mint` with `form`, from namespace `ns`).
    pub fn sts_mint(&self, ns: &str, issuer: &str, form: &[(&str, &str)]) -> String {
        self.sts_post(ns, issuer, "/test/mint", form)["access_token"]
            .as_str()
            .expect("minted access_token")
            .to_string()
    }

    /// The Prometheus text of the AuthBridge admin port (127.0.0.1:9901) in namespace `ns`.
    pub fn metrics(&self, ns: &str) -> String {
        let r = self
            .curl(ns, None, "http://127.0.0.1:9901/metrics", &[])
            .expect("GET /metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    }

    /// The requests the STS has seen (`GET {issuer}/test/requests` from namespace `ns`).
    pub fn sts_requests(&self, ns: &str, issuer: &str) -> Vec<Value> {
        let r = self
            .curl(ns, None, &format!("{issuer}/test/requests"), &[])
            .expect("GET /test/requests");
        assert_eq!(r.status, 200, "GET /test/requests: {}", r.body);
        r.json().as_array().cloned().expect("array")
    }

    /// `authbridge init-iptables` in `ns` with kagenti's environment (`POD_IP`, `PROXY_UID`,
    /// `CAPTURE_IPV6=on`) plus `env`; returns its report (stdout and stderr).
    pub fn init_iptables(&self, ns: &str, pod_ip: &str, env: &[(&str, &str)]) -> String {
        let mut cmd = in_ns(ns, crate::bin());
        cmd.arg("init-iptables")
            .env("POD_IP", pod_ip)
            .env("PROXY_UID", PROXY_UID)
            .env("CAPTURE_IPV6", "on")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = output(&mut cmd, self.deadline);
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

    /// The nat table of both families in `ns` (counters and comments stripped) from the first
    /// `*-save` flavour that shows `chain`.
    pub fn nat_rules(&self, ns: &str, chain: &str) -> String {
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
                let o = output(in_ns(ns, &prog).args(["-t", "nat"]), self.deadline);
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                if o.status.success() && text.contains(chain) {
                    found = Some(strip(&text));
                    break;
                }
            }
            let text =
                found.unwrap_or_else(|| panic!("no {fam}*-save in {ns} shows the {chain} chain"));
            all.push_str(&format!("### {fam}\n{text}\n"));
        }
        all
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and namespaces

/// Runs a command to completion with a deadline (killing it when the deadline passes).
pub fn output(cmd: &mut Command, timeout: Duration) -> Output {
    let (mut child, shown) = spawn(cmd, Stdio::null(), Stdio::piped());
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

/// Spawns `cmd` with stdout piped (panics when that fails); returns the child and `cmd` as
/// shown in messages.
fn spawn(cmd: &mut Command, stdin: Stdio, stderr: Stdio) -> (Child, String) {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    (child, shown)
}

/// A command run inside network namespace `ns`, with no proxy settings in its environment.
pub fn in_ns(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
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

/// Network namespaces named `<prefix><test PID>`, one per prefix; deleting them also removes
/// the veth pairs. Deleted on drop (also when the test panics): declare it before every
/// process so it is dropped after them.
pub struct Namespaces<const N: usize> {
    pub names: [String; N],
}

impl<const N: usize> Namespaces<N> {
    /// Removes namespaces with these prefixes left behind by killed runs, then adds ours.
    /// `Err` when `ip netns add` fails (no CAP_SYS_ADMIN / netns support).
    pub fn create(prefixes: [&str; N]) -> Result<Namespaces<N>, String> {
        remove_stale_namespaces(&prefixes);
        let pid = std::process::id();
        let ns = Namespaces {
            names: prefixes.map(|p| format!("{p}{pid}")),
        };
        for n in &ns.names {
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

impl<const N: usize> Drop for Namespaces<N> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Namespaces left behind by an earlier run that was killed (its PID no longer exists).
fn remove_stale_namespaces(prefixes: &[&str]) {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let pid = prefixes.iter().find_map(|p| name.strip_prefix(p));
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

/// A long-running child, killed (and reaped) on drop. Its stdin is kept open so Node children
/// that exit on stdin EOF die with the test process.
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    _stdin: Option<ChildStdin>,
    log: Option<PathBuf>,
}

impl Daemon {
    /// A child whose stderr goes to `log` ([`Daemon::logs`]).
    pub fn with_log(name: &'static str, child: Child, log: PathBuf) -> Daemon {
        Daemon {
            name,
            child,
            _stdin: None,
            log: Some(log),
        }
    }
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    pub fn logs(&self) -> String {
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

/// Files for `authbridge run` as UID 1337, which must be able to read everything it is given
/// whatever the umask and however private the checkout's directory is (CI homes are often
/// 0750): a world-readable temp dir holding a copy of the binary and [`CLIENT_SECRET`].
pub struct ProxyFiles {
    pub dir: TempDir,
    /// The copy of the `authbridge` binary.
    pub bin: PathBuf,
    pub secret_file: PathBuf,
}

impl ProxyFiles {
    pub fn new(tag: &str) -> ProxyFiles {
        let dir = TempDir::new(tag);
        set_mode(dir.path(), 0o755);
        let bin = dir.path().join("authbridge");
        std::fs::copy(crate::bin(), &bin).expect("copy the authbridge binary");
        set_mode(&bin, 0o755);
        let secret_file = dir.write("client-secret", &format!("{CLIENT_SECRET}\n"));
        set_mode(&secret_file, 0o644);
        ProxyFiles {
            dir,
            bin,
            secret_file,
        }
    }

    /// The agent-side configuration: outbound on `[::]:15123` (exchange at `token_url` as
    /// [`CLIENT_ID`] with the client secret, `default_policy: passthrough`), `routes` (YAML list
    /// items indented by four spaces), inbound mTLS disabled, admin on 127.0.0.1:9901.
    pub fn agent_config(&self, token_url: &str, no_token_policy: &str, routes: &str) -> String {
        format!(
            r#"outbound:
  listen: "[::]:15123"
  token_url: "{token_url}"
  client_id: {CLIENT_ID}
  client_auth: client-secret
  client_secret_file: "{secret}"
  routes_file: ""
  default_policy: passthrough
  no_token_policy: {no_token_policy}
  routes:
{routes}inbound:
  mtls: disabled
admin:
  listen: "127.0.0.1:9901"
"#,
            secret = self.secret_file.display()
        )
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

// ---------------------------------------------------------------------------------------------
// HTTP through curl (inside the namespaces)

pub struct Reply {
    pub status: u16,
    /// Response header lines, lower-cased names: `name: value`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The claims of the bearer token in an echo app reply (`got`), which must not be the user's own
/// token (`user_token`): an exchange happened on the way.
pub fn exchanged_claims(got: &Value, user_token: &str) -> Value {
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
    crate::jwt_claims(token)
}

/// A JWT's `aud` claim as a list (a single string or an array).
pub fn auds(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(v) => v
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![],
    }
}

/// `Ok` for a 200 reply; the status and body otherwise.
pub fn status_200(r: Result<Reply, String>) -> Result<(), String> {
    let r = r?;
    (r.status == 200)
        .then_some(())
        .ok_or(format!("status {}: {}", r.status, r.body))
}

pub fn url(host: &str, port: u16, path: &str) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}{path}")
    } else {
        format!("http://{host}:{port}{path}")
    }
}

/// Polls every 100 ms until `f` succeeds; panics with the last error after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
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
