//! Transparent-capture rules (`authbridge init-iptables`), the replacement for kagenti's
//! `proxy-init` container.
//!
//! The module turns a [`CaptureConfig`] (read from kagenti's environment variables with
//! [`CaptureConfig::from_env`], or built from flags) into an `iptables-restore` document for the
//! `nat` table ([`render`]) and installs it with `iptables-restore --noflush` ([`apply`] /
//! [`apply_in`]). It only uses the standard library and the iptables binaries.
//!
//! # Rule layout (per family)
//!
//! ```text
//! PREROUTING ──(-I 1, tcp)──▶ AUTHBRIDGE_INBOUND ──▶ RETURN for the proxy's own ports, SSH,
//!                                                   ztunnel ports and INBOUND_PORTS_EXCLUDE
//!                                               └──▶ AUTHBRIDGE_IN_REDIRECT ──▶ REDIRECT :15124
//! OUTPUT ─────(-I 1, tcp)──▶ AUTHBRIDGE_OUTPUT  ──▶ RETURN for uid 1337 (and mark 1337), `-o lo`,
//!                                                   loopback and pod-IP destinations, the admin
//!                                                   port, SSH, ztunnel ports and
//!                                                   OUTBOUND_PORTS_EXCLUDE
//!                                               └──▶ AUTHBRIDGE_REDIRECT ──▶ REDIRECT :15123
//! ```
//!
//! # Idempotency
//!
//! Our four chains are declared with `:CHAIN - [0:0]`, which under `--noflush` creates them or,
//! when they exist, flushes them (both the legacy and the nft backend do this), so every run
//! replaces their content as one atomic table commit. The two jump rules in the built-in chains
//! cannot be made idempotent inside a restore file (there is no "add if absent"), so [`apply_in`]
//! reads `iptables-save -t nat` first and drops the jump line for every built-in chain that
//! already jumps to our chain. A second run therefore leaves the table byte-identical (counters
//! aside), and [`ApplyReport::changed`] says so.
//!
//! # Backend
//!
//! Like `istio-iptables`: the backend (`iptables-nft` or `iptables-legacy`) whose `*-save`
//! already shows rules in the network namespace wins (nft checked first); with no rules anywhere
//! nft is preferred when installed, then legacy, then the unsuffixed `iptables` (classified by
//! its `--version`, which says `nf_tables` for nft). [`Runner::backend`] overrides detection.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;

/// Default outbound listener port (`PROXY_PORT`).
pub const DEFAULT_PROXY_PORT: u16 = 15123;
/// Default inbound listener port (`INBOUND_PROXY_PORT`).
pub const DEFAULT_INBOUND_PROXY_PORT: u16 = 15124;
/// Default UID of the proxy process (`PROXY_UID`).
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Default admin port (`ADMIN_PORT`); never redirected in either direction.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;
/// Default socket mark of the proxy's upstream sockets (`PROXY_MARK`); keep equal to
/// `crate::upstream::SOCKET_MARK`.
pub const DEFAULT_PROXY_MARK: u32 = 1337;
/// Default SSH port excluded both ways, as kagenti's proxy-init does (`SSH_PORT`).
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Default UID of Istio ambient's ztunnel (`ZTUNNEL_UID`), as in kagenti's proxy-init.
pub const DEFAULT_ZTUNNEL_UID: u32 = 1337;
/// Default Istio ztunnel ports excluded both ways, as in kagenti's proxy-init:
/// `ZTUNNEL_OUTBOUND_PORT` (15001), `ZTUNNEL_TUNNEL_PORT` (15006), `ZTUNNEL_INBOUND_PORT` (15008).
pub const DEFAULT_ZTUNNEL_PORTS: [u16; 3] = [15001, 15006, 15008];

/// Chain reached from `PREROUTING`: inbound exemptions, then the jump to the redirect chain.
pub const CHAIN_INBOUND: &str = "AUTHBRIDGE_INBOUND";
/// Chain that redirects inbound TCP to the inbound listener.
pub const CHAIN_IN_REDIRECT: &str = "AUTHBRIDGE_IN_REDIRECT";
/// Chain reached from `OUTPUT`: outbound exemptions, then the jump to the redirect chain.
pub const CHAIN_OUTPUT: &str = "AUTHBRIDGE_OUTPUT";
/// Chain that redirects outbound TCP to the outbound listener.
pub const CHAIN_REDIRECT: &str = "AUTHBRIDGE_REDIRECT";

/// Whether IPv6 rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ipv6Mode {
    /// Install IPv6 rules when `ip6tables` can use the `nat` table in the namespace; skip them
    /// (and say so in the report) when it cannot, unless `POD_IP` is an IPv6 address, in which
    /// case that is an error.
    #[default]
    Auto,
    /// Always install IPv6 rules; failing to is an error.
    On,
    /// Never touch IPv6.
    Off,
}

impl FromStr for Ipv6Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "yes" | "1" => Ok(Self::On),
            "off" | "false" | "no" | "0" => Ok(Self::Off),
            _ => Err(format!(
                "{:?} is not an IPv6 mode (auto, on or off)",
                s.trim()
            )),
        }
    }
}

impl fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `PROXY_PORT`: the outbound listener; outbound TCP is redirected here.
    pub proxy_port: u16,
    /// `INBOUND_PROXY_PORT`: the inbound listener; inbound TCP is redirected here.
    pub inbound_proxy_port: u16,
    /// `PROXY_UID`: traffic of this UID is never captured (the proxy's own upstream traffic).
    pub proxy_uid: u32,
    /// `ADMIN_PORT`: never redirected, in either direction (kubelet probes hit it).
    pub admin_port: u16,
    /// `OUTBOUND_PORTS_EXCLUDE`: destination ports that are not captured outbound.
    pub outbound_ports_exclude: Vec<u16>,
    /// `INBOUND_PORTS_EXCLUDE`: destination ports that are not captured inbound.
    pub inbound_ports_exclude: Vec<u16>,
    /// `POD_IP`: outbound connections to the pod's own address are not captured.
    pub pod_ip: Option<IpAddr>,
    /// `CAPTURE_IPV6`: `auto` (default), `on` or `off`.
    pub ipv6: Ipv6Mode,
    /// `PROXY_MARK`: packets carrying this socket mark are not captured outbound (a second loop
    /// guard next to the UID); `None` (`PROXY_MARK=0`) disables the rule.
    pub proxy_mark: Option<u32>,
    /// `SSH_PORT` (kagenti compatibility): excluded in both directions; `None` (`SSH_PORT=0`)
    /// disables the exclusion.
    pub ssh_port: Option<u16>,
    /// `ZTUNNEL_UID` (kagenti compatibility): also exempt outbound; only rendered when it differs
    /// from `proxy_uid`. `None` (`ZTUNNEL_UID=none`) disables it.
    pub ztunnel_uid: Option<u32>,
    /// `ZTUNNEL_INBOUND_PORT`, `ZTUNNEL_OUTBOUND_PORT`, `ZTUNNEL_TUNNEL_PORT` (kagenti
    /// compatibility): excluded in both directions; a variable set to `0` removes its port.
    pub ztunnel_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            proxy_port: DEFAULT_PROXY_PORT,
            inbound_proxy_port: DEFAULT_INBOUND_PROXY_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            admin_port: DEFAULT_ADMIN_PORT,
            outbound_ports_exclude: Vec::new(),
            inbound_ports_exclude: Vec::new(),
            pod_ip: None,
            ipv6: Ipv6Mode::Auto,
            proxy_mark: Some(DEFAULT_PROXY_MARK),
            ssh_port: Some(DEFAULT_SSH_PORT),
            ztunnel_uid: Some(DEFAULT_ZTUNNEL_UID),
            ztunnel_ports: DEFAULT_ZTUNNEL_PORTS.to_vec(),
        }
    }
}

/// Errors from configuration, detection and application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// A bad setting. `key` is the environment variable (or flag) and `message` says what is
    /// wrong with which value. Maps to exit code 2.
    Config {
        /// Variable or flag name, e.g. `OUTBOUND_PORTS_EXCLUDE`.
        key: String,
        /// What is wrong, quoting the offending value.
        message: String,
    },
    /// Something needed is missing (no iptables binary, no IPv6 nat when it is required).
    Unavailable(String),
    /// An iptables command failed.
    Command {
        /// The command line as run (including any `ip netns exec` prefix).
        command: String,
        /// Exit code, when the process exited normally.
        status: Option<i32>,
        /// What the command wrote to stderr, trimmed.
        stderr: String,
    },
}

impl CaptureError {
    fn config(key: &str, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// True for configuration errors (exit code 2); false for runtime failures (exit code 1).
    pub fn is_config_error(&self) -> bool {
        matches!(self, Self::Config { .. })
    }
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { key, message } => write!(f, "{key}: {message}"),
            Self::Unavailable(msg) => f.write_str(msg),
            Self::Command {
                command,
                status,
                stderr,
            } => {
                match status {
                    Some(code) => write!(f, "`{command}` failed with exit code {code}")?,
                    None => write!(f, "`{command}` was killed by a signal")?,
                }
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CaptureError {}

fn parse_port_item(var: &str, whole: &str, item: &str) -> Result<u16, CaptureError> {
    match item.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(CaptureError::config(
            var,
            format!("{whole:?}: {item:?} is not a port number (1-65535)"),
        )),
    }
}

/// Parses a port list such as `"80, 443,8000-8010"`.
///
/// Items are separated by commas and/or whitespace; empty items are ignored (so `""`, `","` and
/// `"80,,443,"` are fine). An item is a port (1-65535) or an inclusive range `A-B` or `A:B`
/// (iptables' own spelling) with `A <= B`. The result is sorted and deduplicated; [`render`]
/// turns consecutive ports back into `--dport A:B` ranges. Errors name `var`, the whole value
/// and the bad item: `OUTBOUND_PORTS_EXCLUDE: "80,abc": "abc" is not a port number (1-65535)`.
pub fn parse_port_list(var: &str, value: &str) -> Result<Vec<u16>, CaptureError> {
    let mut ports = Vec::new();
    for item in value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        match item.split_once(['-', ':']) {
            Some((lo, hi)) => {
                let lo_p = parse_port_item(var, value, lo.trim())?;
                let hi_p = parse_port_item(var, value, hi.trim())?;
                if lo_p > hi_p {
                    return Err(CaptureError::config(
                        var,
                        format!("{value:?}: range {item:?} runs backwards ({lo_p} > {hi_p})"),
                    ));
                }
                ports.extend(lo_p..=hi_p);
            }
            None => ports.push(parse_port_item(var, value, item)?),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// A single port; empty or unset means "use the default" (shell `${VAR:-default}`).
fn port_var(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: u16,
) -> Result<u16, CaptureError> {
    match nonempty(get, var) {
        None => Ok(default),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(CaptureError::config(
                var,
                format!("{v:?} is not a port number (1-65535)"),
            )),
        },
    }
}

/// A port that may be switched off with `0` or `none`.
fn optional_port_var(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: u16,
) -> Result<Option<u16>, CaptureError> {
    match nonempty(get, var) {
        None => Ok(Some(default)),
        Some(v) if v == "0" || v.eq_ignore_ascii_case("none") => Ok(None),
        Some(v) => match v.parse::<u16>() {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(CaptureError::config(
                var,
                format!("{v:?} is not a port number (1-65535, or 0 to disable)"),
            )),
        },
    }
}

fn uid_var(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: u32,
) -> Result<u32, CaptureError> {
    match nonempty(get, var) {
        None => Ok(default),
        Some(v) => v.parse::<u32>().map_err(|_| {
            CaptureError::config(
                var,
                format!("{v:?} is not a numeric user id (0-4294967295)"),
            )
        }),
    }
}

fn nonempty(get: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    get(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl CaptureConfig {
    /// Builds the configuration from an environment lookup (pass `|k| std::env::var(k).ok()` in
    /// production). Variables, all optional, empty meaning "default":
    ///
    /// | variable | default | meaning |
    /// |---|---|---|
    /// | `PROXY_PORT` | 15123 | outbound listener |
    /// | `INBOUND_PROXY_PORT` | 15124 | inbound listener |
    /// | `PROXY_UID` | 1337 | exempt UID |
    /// | `ADMIN_PORT` | 9901 | never redirected |
    /// | `OUTBOUND_PORTS_EXCLUDE` | — | [`parse_port_list`] |
    /// | `INBOUND_PORTS_EXCLUDE` | — | [`parse_port_list`] |
    /// | `POD_IP` | — | the pod's address |
    /// | `CAPTURE_IPV6` | auto | `auto`, `on`/`true`/`1`, `off`/`false`/`0` |
    /// | `PROXY_MARK` | 1337 | exempt socket mark, `0` disables (decimal or `0x` hex) |
    /// | `SSH_PORT` | 22 | excluded both ways, `0` disables (kagenti) |
    /// | `ZTUNNEL_UID` | 1337 | exempt UID, `none` disables (kagenti) |
    /// | `ZTUNNEL_INBOUND_PORT` / `_OUTBOUND_PORT` / `_TUNNEL_PORT` | 15008 / 15001 / 15006 | excluded both ways, `0` disables (kagenti) |
    ///
    /// The result is [validated](Self::validate).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CaptureError> {
        let proxy_port = port_var(&get, "PROXY_PORT", DEFAULT_PROXY_PORT)?;
        let inbound_proxy_port = port_var(&get, "INBOUND_PROXY_PORT", DEFAULT_INBOUND_PROXY_PORT)?;
        let proxy_uid = uid_var(&get, "PROXY_UID", DEFAULT_PROXY_UID)?;
        let admin_port = port_var(&get, "ADMIN_PORT", DEFAULT_ADMIN_PORT)?;
        let outbound_ports_exclude = match get("OUTBOUND_PORTS_EXCLUDE") {
            Some(v) => parse_port_list("OUTBOUND_PORTS_EXCLUDE", &v)?,
            None => Vec::new(),
        };
        let inbound_ports_exclude = match get("INBOUND_PORTS_EXCLUDE") {
            Some(v) => parse_port_list("INBOUND_PORTS_EXCLUDE", &v)?,
            None => Vec::new(),
        };
        let pod_ip = match nonempty(&get, "POD_IP") {
            None => None,
            Some(v) => {
                let bare = v.trim_start_matches('[').trim_end_matches(']');
                Some(bare.parse::<IpAddr>().map_err(|_| {
                    CaptureError::config("POD_IP", format!("{v:?} is not an IP address"))
                })?)
            }
        };
        let ipv6 = match nonempty(&get, "CAPTURE_IPV6") {
            None => Ipv6Mode::Auto,
            Some(v) => v
                .parse::<Ipv6Mode>()
                .map_err(|m| CaptureError::config("CAPTURE_IPV6", m))?,
        };
        let proxy_mark = match nonempty(&get, "PROXY_MARK") {
            None => Some(DEFAULT_PROXY_MARK),
            Some(v) => {
                let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => v.parse::<u32>(),
                };
                match parsed {
                    Ok(0) => None,
                    Ok(m) => Some(m),
                    Err(_) => {
                        return Err(CaptureError::config(
                            "PROXY_MARK",
                            format!("{v:?} is not a socket mark (a 32-bit number, 0 to disable)"),
                        ))
                    }
                }
            }
        };
        let ssh_port = optional_port_var(&get, "SSH_PORT", DEFAULT_SSH_PORT)?;
        let ztunnel_uid = match nonempty(&get, "ZTUNNEL_UID") {
            Some(v) if v.eq_ignore_ascii_case("none") => None,
            _ => Some(uid_var(&get, "ZTUNNEL_UID", DEFAULT_ZTUNNEL_UID)?),
        };
        let mut ztunnel_ports = Vec::new();
        for (var, default) in [
            ("ZTUNNEL_OUTBOUND_PORT", DEFAULT_ZTUNNEL_PORTS[0]),
            ("ZTUNNEL_TUNNEL_PORT", DEFAULT_ZTUNNEL_PORTS[1]),
            ("ZTUNNEL_INBOUND_PORT", DEFAULT_ZTUNNEL_PORTS[2]),
        ] {
            if let Some(p) = optional_port_var(&get, var, default)? {
                ztunnel_ports.push(p);
            }
        }
        ztunnel_ports.sort_unstable();
        ztunnel_ports.dedup();

        let cfg = Self {
            proxy_port,
            inbound_proxy_port,
            proxy_uid,
            admin_port,
            outbound_ports_exclude,
            inbound_ports_exclude,
            pod_ip,
            ipv6,
            proxy_mark,
            ssh_port,
            ztunnel_uid,
            ztunnel_ports,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks cross-field constraints: the two listener ports and the admin port must differ
    /// (equal ports would make the inbound redirect capture the outbound listener or the admin
    /// endpoint). Errors use the environment variable names.
    pub fn validate(&self) -> Result<(), CaptureError> {
        if self.inbound_proxy_port == self.proxy_port {
            return Err(CaptureError::config(
                "INBOUND_PROXY_PORT",
                format!(
                    "\"{}\" must differ from PROXY_PORT ({})",
                    self.inbound_proxy_port, self.proxy_port
                ),
            ));
        }
        for (name, port) in [
            ("PROXY_PORT", self.proxy_port),
            ("INBOUND_PROXY_PORT", self.inbound_proxy_port),
        ] {
            if port == self.admin_port {
                return Err(CaptureError::config(
                    "ADMIN_PORT",
                    format!("\"{}\" must differ from {name} ({port})", self.admin_port),
                ));
            }
        }
        Ok(())
    }
}

/// Address family: which of `iptables` / `ip6tables` a rule set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    fn loopback_cidr(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn host_cidr(self, ip: IpAddr) -> Option<String> {
        match (self, ip) {
            (Self::V4, IpAddr::V4(a)) => Some(format!("{a}/32")),
            (Self::V6, IpAddr::V6(a)) => Some(format!("{a}/128")),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

/// Collapses a sorted, deduplicated port list into inclusive runs.
fn port_runs(ports: &[u16]) -> Vec<(u16, u16)> {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    runs
}

fn sorted_dedup(ports: &[u16]) -> Vec<u16> {
    let mut v = ports.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn port_return_rules(out: &mut Vec<String>, chain: &str, ports: &[u16], what: &str) {
    for (lo, hi) in port_runs(&sorted_dedup(ports)) {
        let (spec, label) = if lo == hi {
            (lo.to_string(), format!("port {lo}"))
        } else {
            (format!("{lo}:{hi}"), format!("ports {lo}-{hi}"))
        };
        out.push(format!(
            "-A {chain} -p tcp --dport {spec} -m comment --comment \"authbridge: {what} {label}\" -j RETURN"
        ));
    }
}

/// The rule text of one family, split so that [`apply_in`] can leave out jumps that exist.
struct Rendered {
    /// `:CHAIN - [0:0]` declarations and the `-A` rules of our chains.
    body: Vec<String>,
    /// `(built-in chain, our chain, rule line)` for the two jumps.
    jumps: Vec<(&'static str, &'static str, String)>,
}

fn render_parts(cfg: &CaptureConfig, family: Family) -> Rendered {
    let mut body = Vec::new();
    for chain in [
        CHAIN_INBOUND,
        CHAIN_IN_REDIRECT,
        CHAIN_OUTPUT,
        CHAIN_REDIRECT,
    ] {
        body.push(format!(":{chain} - [0:0]"));
    }

    // Inbound.
    let inb = CHAIN_INBOUND;
    body.push(format!(
        "-A {CHAIN_IN_REDIRECT} -p tcp -m comment --comment \"authbridge: inbound capture to port {p}\" -j REDIRECT --to-ports {p}",
        p = cfg.inbound_proxy_port
    ));
    for (port, what) in [
        (cfg.proxy_port, "outbound listener"),
        (cfg.inbound_proxy_port, "inbound listener"),
        (cfg.admin_port, "admin and probes"),
    ] {
        body.push(format!(
            "-A {inb} -p tcp --dport {port} -m comment --comment \"authbridge: {what} port {port}\" -j RETURN"
        ));
    }
    if let Some(ssh) = cfg.ssh_port {
        port_return_rules(&mut body, inb, &[ssh], "ssh");
    }
    port_return_rules(&mut body, inb, &cfg.ztunnel_ports, "istio ztunnel");
    port_return_rules(
        &mut body,
        inb,
        &cfg.inbound_ports_exclude,
        "INBOUND_PORTS_EXCLUDE",
    );
    body.push(format!(
        "-A {inb} -p tcp -m comment --comment \"authbridge: capture remaining inbound tcp\" -j {CHAIN_IN_REDIRECT}"
    ));

    // Outbound.
    let out = CHAIN_OUTPUT;
    body.push(format!(
        "-A {CHAIN_REDIRECT} -p tcp -m comment --comment \"authbridge: outbound capture to port {p}\" -j REDIRECT --to-ports {p}",
        p = cfg.proxy_port
    ));
    body.push(format!(
        "-A {out} -m owner --uid-owner {uid} -m comment --comment \"authbridge: traffic of the proxy (uid {uid})\" -j RETURN",
        uid = cfg.proxy_uid
    ));
    if let Some(uid) = cfg.ztunnel_uid.filter(|u| *u != cfg.proxy_uid) {
        body.push(format!(
            "-A {out} -m owner --uid-owner {uid} -m comment --comment \"authbridge: istio ztunnel traffic (uid {uid})\" -j RETURN"
        ));
    }
    if let Some(mark) = cfg.proxy_mark {
        body.push(format!(
            "-A {out} -m mark --mark {mark:#x} -m comment --comment \"authbridge: traffic of the proxy (mark {mark})\" -j RETURN"
        ));
    }
    body.push(format!(
        "-A {out} -o lo -m comment --comment \"authbridge: loopback interface, incl. traffic to the pod ip\" -j RETURN"
    ));
    body.push(format!(
        "-A {out} -d {cidr} -m comment --comment \"authbridge: loopback destination\" -j RETURN",
        cidr = family.loopback_cidr()
    ));
    if let Some(cidr) = cfg.pod_ip.and_then(|ip| family.host_cidr(ip)) {
        body.push(format!(
            "-A {out} -d {cidr} -m comment --comment \"authbridge: the pod ip\" -j RETURN"
        ));
    }
    body.push(format!(
        "-A {out} -p tcp --dport {port} -m comment --comment \"authbridge: admin port {port}\" -j RETURN",
        port = cfg.admin_port
    ));
    if let Some(ssh) = cfg.ssh_port {
        port_return_rules(&mut body, out, &[ssh], "ssh");
    }
    port_return_rules(&mut body, out, &cfg.ztunnel_ports, "istio ztunnel");
    port_return_rules(
        &mut body,
        out,
        &cfg.outbound_ports_exclude,
        "OUTBOUND_PORTS_EXCLUDE",
    );
    body.push(format!(
        "-A {out} -p tcp -m comment --comment \"authbridge: capture remaining outbound tcp\" -j {CHAIN_REDIRECT}"
    ));

    let jumps = vec![
        (
            "PREROUTING",
            CHAIN_INBOUND,
            format!(
                "-I PREROUTING 1 -p tcp -m comment --comment \"authbridge: inbound capture\" -j {CHAIN_INBOUND}"
            ),
        ),
        (
            "OUTPUT",
            CHAIN_OUTPUT,
            format!(
                "-I OUTPUT 1 -p tcp -m comment --comment \"authbridge: outbound capture\" -j {CHAIN_OUTPUT}"
            ),
        ),
    ];
    Rendered { body, jumps }
}

fn assemble(family: Family, body: &[String], jumps: &[&str]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# authbridge capture rules ({family}); apply with {}-restore --noflush\n",
        match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    ));
    s.push_str("*nat\n");
    for line in body {
        s.push_str(line);
        s.push('\n');
    }
    for line in jumps {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// The `iptables-restore` input (for `--noflush`) that installs the capture rules of one family
/// in the `nat` table: chain declarations, the rules of our chains and the two jumps, inserted
/// first in `PREROUTING` and `OUTPUT`. Deterministic: the same config gives the same text.
///
/// Applied by hand, this text is idempotent for our chains but adds the jumps again each time;
/// [`apply_in`] leaves out jumps that already exist.
pub fn render(cfg: &CaptureConfig, family: Family) -> String {
    let r = render_parts(cfg, family);
    let jumps: Vec<&str> = r.jumps.iter().map(|(_, _, l)| l.as_str()).collect();
    assemble(family, &r.body, &jumps)
}

/// The iptables implementation used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (nf_tables).
    Nft,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "legacy" => Ok(Self::Legacy),
            "nft" | "nf_tables" => Ok(Self::Nft),
            _ => Err(format!(
                "{:?} is not an iptables backend (legacy or nft)",
                s.trim()
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
        })
    }
}

/// How commands are run: optionally inside a named network namespace (`ip netns exec NAME`),
/// optionally with a forced backend.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    /// Run every iptables command as `ip netns exec NAME ...`.
    pub netns: Option<String>,
    /// Skip detection and use this backend (its suffixed binaries must exist).
    pub backend: Option<Backend>,
}

struct Output {
    ok: bool,
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Runner {
    fn command_line(&self, program: &str, args: &[&str]) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
        }
        argv.push(program.to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, CaptureError> {
        let argv = self.command_line(program, args);
        let shown = argv.join(" ");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| CaptureError::Command {
            command: shown.clone(),
            status: None,
            stderr: format!("cannot start {}: {e}", argv[0]),
        })?;
        let writer = match (stdin, child.stdin.take()) {
            (Some(text), Some(mut pipe)) => {
                let text = text.to_string();
                Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
            }
            _ => None,
        };
        let out = child
            .wait_with_output()
            .map_err(|e| CaptureError::Command {
                command: shown.clone(),
                status: None,
                stderr: e.to_string(),
            })?;
        if let Some(w) = writer {
            // A write error (broken pipe) shows up as the command's own failure below.
            let _ = w.join();
        }
        Ok(Output {
            ok: out.status.success(),
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    fn run_ok(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CaptureError> {
        let out = self.run(program, args, stdin)?;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(CaptureError::Command {
                command: self.command_line(program, args).join(" "),
                status: out.status,
                stderr: out.stderr,
            })
        }
    }
}

/// Does `program --version` run (outside any namespace: binaries are the same in all of them)?
fn binary_version(program: &str) -> Option<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The concrete binaries of one backend.
#[derive(Debug, Clone)]
struct Tool {
    backend: Backend,
    /// `iptables-nft`, `iptables-legacy` or `iptables`.
    prefix: String,
    reason: String,
}

impl Tool {
    fn bin(&self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::V4 => self.prefix.clone(),
            Family::V6 => self.prefix.replacen("iptables", "ip6tables", 1),
        };
        if suffix.is_empty() {
            base
        } else {
            // iptables-nft + save -> iptables-nft-save
            format!("{base}-{suffix}")
        }
    }
}

fn suffixed_prefix(backend: Backend) -> &'static str {
    match backend {
        Backend::Legacy => "iptables-legacy",
        Backend::Nft => "iptables-nft",
    }
}

/// True if `*-save` of either family lists at least one rule in the namespace. Counting `-A`
/// lines rather than output lines (Istio's heuristic) matters: legacy `*-save` prints empty
/// built-in tables in a fresh namespace.
fn has_rules(runner: &Runner, prefix: &str) -> bool {
    [Family::V4, Family::V6].iter().any(|&fam| {
        let tool = Tool {
            backend: Backend::Nft,
            prefix: prefix.to_string(),
            reason: String::new(),
        };
        runner
            .run(&tool.bin(fam, "save"), &[], None)
            .map(|o| o.ok && o.stdout.lines().any(|l| l.starts_with("-A ")))
            .unwrap_or(false)
    })
}

fn detect(runner: &Runner) -> Result<Tool, CaptureError> {
    if let Some(backend) = runner.backend {
        let prefix = suffixed_prefix(backend);
        if binary_version(&format!("{prefix}-restore")).is_none() {
            return Err(CaptureError::Unavailable(format!(
                "the {backend} backend was requested but {prefix}-restore is not installed"
            )));
        }
        return Ok(Tool {
            backend,
            prefix: prefix.to_string(),
            reason: "requested".to_string(),
        });
    }
    let installed: Vec<Backend> = [Backend::Nft, Backend::Legacy]
        .into_iter()
        .filter(|b| binary_version(&format!("{}-restore", suffixed_prefix(*b))).is_some())
        .collect();
    for &b in &installed {
        let prefix = suffixed_prefix(b);
        if has_rules(runner, prefix) {
            return Ok(Tool {
                backend: b,
                prefix: prefix.to_string(),
                reason: format!("{prefix}-save shows existing rules in this network namespace"),
            });
        }
    }
    if let Some(&b) = installed.first() {
        let prefix = suffixed_prefix(b);
        return Ok(Tool {
            backend: b,
            prefix: prefix.to_string(),
            reason: format!("no existing rules found; {prefix} is installed"),
        });
    }
    if let Some(version) = binary_version("iptables") {
        if binary_version("iptables-restore").is_some() {
            let backend = if version.contains("nf_tables") {
                Backend::Nft
            } else {
                Backend::Legacy
            };
            return Ok(Tool {
                backend,
                prefix: "iptables".to_string(),
                reason: format!("only the unsuffixed iptables is installed ({version})"),
            });
        }
    }
    Err(CaptureError::Unavailable(
        "no usable iptables found: need iptables-nft-restore, iptables-legacy-restore or iptables-restore in PATH"
            .to_string(),
    ))
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The backend used (or, for a dry run, the one that would be used).
    pub backend: Backend,
    /// The restore binary for IPv4, e.g. `iptables-nft-restore`.
    pub binary: String,
    /// Why this backend was chosen.
    pub backend_reason: String,
    /// Families whose rules were installed (dry run: would be installed).
    pub families: Vec<Family>,
    /// False when the `nat` tables were already exactly as wanted (an idempotent re-run), and
    /// always false for a dry run.
    pub changed: bool,
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
    /// Human-readable remarks (e.g. why IPv6 was skipped).
    pub notes: Vec<String>,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let families: Vec<String> = self.families.iter().map(Family::to_string).collect();
        let verb = match (self.dry_run, self.changed) {
            (true, _) => "would install",
            (false, true) => "installed",
            (false, false) => "already in place, unchanged:",
        };
        write!(
            f,
            "capture rules {verb} {} via {} (backend {}: {})",
            families.join(" + "),
            self.binary,
            self.backend,
            self.backend_reason
        )?;
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// [`apply_in`] with the default [`Runner`] (current namespace, detected backend).
pub fn apply(cfg: &CaptureConfig, dry_run: bool) -> Result<ApplyReport, CaptureError> {
    apply_in(cfg, dry_run, &Runner::default())
}

/// `iptables-save -t nat` without comments and counters, for comparing before and after.
fn normalize_save(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| match l.strip_prefix(':') {
            // ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
            Some(_) => match l.rfind(" [") {
                Some(i) => l[..i].to_string(),
                None => l.to_string(),
            },
            None => l.to_string(),
        })
        .collect()
}

fn jump_present(save: &str, builtin: &str, target: &str) -> bool {
    let prefix = format!("-A {builtin} ");
    let jump = format!("-j {target}");
    save.lines()
        .any(|l| l.starts_with(&prefix) && (l.ends_with(&jump) || l.contains(&format!("{jump} "))))
}

/// Can this family's `nat` table be used in the namespace?
fn family_usable(runner: &Runner, tool: &Tool, family: Family) -> Result<(), String> {
    let bin = tool.bin(family, "save");
    match runner.run(&bin, &["-t", "nat"], None) {
        Ok(o) if o.ok => Ok(()),
        Ok(o) => Err(format!("{bin} -t nat failed: {}", o.stderr)),
        Err(e) => Err(e.to_string()),
    }
}

/// Installs the capture rules, through `runner` (which may prefix `ip netns exec NAME`).
///
/// For each family: read `*-save -t nat`, feed [`render`]'s text minus the jumps that already
/// exist to `*-restore --noflush`, read the table again and compare (counters ignored) to fill
/// [`ApplyReport::changed`]. IPv6 follows [`CaptureConfig::ipv6`].
///
/// With `dry_run`, nothing is run that changes state: the backend is detected on a best-effort
/// basis (read-only commands; falls back to nft when nothing is installed or readable) and the
/// report lists the families that would be applied. The caller prints [`render`]'s output.
pub fn apply_in(
    cfg: &CaptureConfig,
    dry_run: bool,
    runner: &Runner,
) -> Result<ApplyReport, CaptureError> {
    cfg.validate()?;
    let mut notes = Vec::new();
    if dry_run {
        let tool = detect(runner).unwrap_or_else(|e| {
            notes.push(format!("backend detection failed ({e}); assuming nft"));
            Tool {
                backend: runner.backend.unwrap_or(Backend::Nft),
                prefix: suffixed_prefix(runner.backend.unwrap_or(Backend::Nft)).to_string(),
                reason: "assumed (dry run)".to_string(),
            }
        });
        let mut families = vec![Family::V4];
        if cfg.ipv6 != Ipv6Mode::Off {
            families.push(Family::V6);
        }
        if cfg.ipv6 == Ipv6Mode::Auto {
            notes.push("ipv6 rules are applied only if ip6tables can use the nat table".into());
        }
        notes.push("dry run: nothing applied".into());
        return Ok(ApplyReport {
            backend: tool.backend,
            binary: tool.bin(Family::V4, "restore"),
            backend_reason: tool.reason,
            families,
            changed: false,
            dry_run: true,
            notes,
        });
    }

    let tool = detect(runner)?;
    let mut families = vec![Family::V4];
    match cfg.ipv6 {
        Ipv6Mode::Off => notes.push("ipv6 capture disabled (CAPTURE_IPV6=off)".into()),
        Ipv6Mode::On => {
            family_usable(runner, &tool, Family::V6).map_err(|why| {
                CaptureError::Unavailable(format!(
                    "ipv6 capture was requested (CAPTURE_IPV6=on) but is not available: {why}"
                ))
            })?;
            families.push(Family::V6);
        }
        Ipv6Mode::Auto => match family_usable(runner, &tool, Family::V6) {
            Ok(()) => families.push(Family::V6),
            Err(why) if matches!(cfg.pod_ip, Some(IpAddr::V6(_))) => {
                return Err(CaptureError::Unavailable(format!(
                    "POD_IP is an ipv6 address but ipv6 capture is not available: {why}"
                )))
            }
            Err(why) => notes.push(format!("ipv6 rules skipped: {why}")),
        },
    }

    let mut changed = false;
    for &family in &families {
        let save = tool.bin(family, "save");
        let restore = tool.bin(family, "restore");
        let before = runner.run_ok(&save, &["-t", "nat"], None)?;
        let parts = render_parts(cfg, family);
        let jumps: Vec<&str> = parts
            .jumps
            .iter()
            .filter(|(builtin, target, _)| !jump_present(&before, builtin, target))
            .map(|(_, _, line)| line.as_str())
            .collect();
        let input = assemble(family, &parts.body, &jumps);
        runner.run_ok(&restore, &["--noflush", "--wait", "10"], Some(&input))?;
        let after = runner.run_ok(&save, &["-t", "nat"], None)?;
        for (builtin, target, _) in &parts.jumps {
            if !jump_present(&after, builtin, target) {
                return Err(CaptureError::Unavailable(format!(
                    "{restore} succeeded but {save} shows no jump from {builtin} to {target}"
                )));
            }
        }
        if normalize_save(&before) != normalize_save(&after) {
            changed = true;
        }
    }
    Ok(ApplyReport {
        backend: tool.backend,
        binary: tool.bin(Family::V4, "restore"),
        backend_reason: tool.reason,
        families,
        changed,
        dry_run: false,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_from_empty_env() {
        let cfg = CaptureConfig::from_env(env(&[])).unwrap();
        assert_eq!(cfg, CaptureConfig::default());
        assert_eq!(cfg.proxy_port, 15123);
        assert_eq!(cfg.inbound_proxy_port, 15124);
        assert_eq!(cfg.proxy_uid, 1337);
        assert_eq!(cfg.admin_port, 9901);
        assert!(cfg.outbound_ports_exclude.is_empty());
        assert!(cfg.inbound_ports_exclude.is_empty());
        assert_eq!(cfg.pod_ip, None);
        assert_eq!(cfg.ipv6, Ipv6Mode::Auto);
        assert_eq!(cfg.ssh_port, Some(22));
        assert_eq!(cfg.ztunnel_ports, vec![15001, 15006, 15008]);
    }

    #[test]
    fn empty_values_mean_default() {
        let cfg = CaptureConfig::from_env(env(&[
            ("PROXY_PORT", ""),
            ("PROXY_UID", "  "),
            ("OUTBOUND_PORTS_EXCLUDE", ""),
            ("POD_IP", ""),
        ]))
        .unwrap();
        assert_eq!(cfg, CaptureConfig::default());
    }

    #[test]
    fn env_values_are_read() {
        let cfg = CaptureConfig::from_env(env(&[
            ("PROXY_PORT", "15001"),
            ("INBOUND_PROXY_PORT", "15006"),
            ("PROXY_UID", "1000"),
            ("OUTBOUND_PORTS_EXCLUDE", "443, 80,,8080 "),
            ("INBOUND_PORTS_EXCLUDE", "9090"),
            ("POD_IP", "10.1.2.3"),
            ("CAPTURE_IPV6", "off"),
            ("SSH_PORT", "0"),
            ("PROXY_MARK", "0x10"),
            ("ZTUNNEL_TUNNEL_PORT", "0"),
        ]))
        .unwrap();
        assert_eq!(cfg.proxy_port, 15001);
        assert_eq!(cfg.inbound_proxy_port, 15006);
        assert_eq!(cfg.proxy_uid, 1000);
        assert_eq!(cfg.outbound_ports_exclude, vec![80, 443, 8080]);
        assert_eq!(cfg.inbound_ports_exclude, vec![9090]);
        assert_eq!(cfg.pod_ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(cfg.ipv6, Ipv6Mode::Off);
        assert_eq!(cfg.ssh_port, None);
        assert_eq!(cfg.proxy_mark, Some(16));
        assert_eq!(cfg.ztunnel_ports, vec![15001, 15008]);
    }

    #[test]
    fn pod_ip_v6_with_brackets() {
        let cfg = CaptureConfig::from_env(env(&[("POD_IP", "[fd00::5]")])).unwrap();
        assert_eq!(cfg.pod_ip, Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn junk_is_reported_with_variable_and_value() {
        let cases = [
            (
                "OUTBOUND_PORTS_EXCLUDE",
                "80,abc",
                r#"OUTBOUND_PORTS_EXCLUDE: "80,abc": "abc" is not a port number (1-65535)"#,
            ),
            (
                "INBOUND_PORTS_EXCLUDE",
                "0",
                r#"INBOUND_PORTS_EXCLUDE: "0": "0" is not a port number (1-65535)"#,
            ),
            (
                "INBOUND_PORTS_EXCLUDE",
                "70000",
                r#"INBOUND_PORTS_EXCLUDE: "70000": "70000" is not a port number (1-65535)"#,
            ),
            (
                "OUTBOUND_PORTS_EXCLUDE",
                "90-80",
                r#"OUTBOUND_PORTS_EXCLUDE: "90-80": range "90-80" runs backwards (90 > 80)"#,
            ),
            (
                "OUTBOUND_PORTS_EXCLUDE",
                "80-",
                r#"OUTBOUND_PORTS_EXCLUDE: "80-": "" is not a port number (1-65535)"#,
            ),
            (
                "PROXY_PORT",
                "http",
                r#"PROXY_PORT: "http" is not a port number (1-65535)"#,
            ),
            (
                "PROXY_PORT",
                "0",
                r#"PROXY_PORT: "0" is not a port number (1-65535)"#,
            ),
            (
                "PROXY_UID",
                "-1",
                r#"PROXY_UID: "-1" is not a numeric user id (0-4294967295)"#,
            ),
            (
                "POD_IP",
                "10.0.0.256",
                r#"POD_IP: "10.0.0.256" is not an IP address"#,
            ),
            (
                "CAPTURE_IPV6",
                "maybe",
                r#"CAPTURE_IPV6: "maybe" is not an IPv6 mode (auto, on or off)"#,
            ),
            (
                "INBOUND_PROXY_PORT",
                "15123",
                r#"INBOUND_PROXY_PORT: "15123" must differ from PROXY_PORT (15123)"#,
            ),
            (
                "ADMIN_PORT",
                "15124",
                r#"ADMIN_PORT: "15124" must differ from INBOUND_PROXY_PORT (15124)"#,
            ),
        ];
        for (var, value, want) in cases {
            let err = CaptureConfig::from_env(env(&[(var, value)])).unwrap_err();
            assert!(err.is_config_error());
            assert_eq!(err.to_string(), want, "{var}={value}");
        }
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list("X", "").unwrap(), Vec::<u16>::new());
        assert_eq!(parse_port_list("X", " , ,").unwrap(), Vec::<u16>::new());
        assert_eq!(
            parse_port_list("X", "443 80\t80,22").unwrap(),
            vec![22, 80, 443]
        );
        assert_eq!(
            parse_port_list("X", "8000-8003,8002:8005").unwrap(),
            (8000..=8005).collect::<Vec<_>>()
        );
        assert_eq!(parse_port_list("X", "1-65535").unwrap().len(), 65535);
        assert!(parse_port_list("X", "8000-8003-8005").is_err());
        assert!(parse_port_list("X", "-5").is_err());
    }

    #[test]
    fn runs_collapse() {
        assert_eq!(
            port_runs(&[1, 2, 3, 5, 7, 8, 65535]),
            vec![(1, 3), (5, 5), (7, 8), (65535, 65535)]
        );
        assert_eq!(port_runs(&[]), vec![]);
    }

    fn sample() -> CaptureConfig {
        CaptureConfig {
            outbound_ports_exclude: vec![5432, 8000, 8001, 8002],
            inbound_ports_exclude: vec![9090],
            pod_ip: Some("10.244.0.7".parse().unwrap()),
            ..CaptureConfig::default()
        }
    }

    #[test]
    fn render_v4_golden_lines() {
        let text = render(&sample(), Family::V4);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "*nat");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        for want in [
            ":AUTHBRIDGE_INBOUND - [0:0]",
            ":AUTHBRIDGE_IN_REDIRECT - [0:0]",
            ":AUTHBRIDGE_OUTPUT - [0:0]",
            ":AUTHBRIDGE_REDIRECT - [0:0]",
            r#"-A AUTHBRIDGE_IN_REDIRECT -p tcp -m comment --comment "authbridge: inbound capture to port 15124" -j REDIRECT --to-ports 15124"#,
            r#"-A AUTHBRIDGE_REDIRECT -p tcp -m comment --comment "authbridge: outbound capture to port 15123" -j REDIRECT --to-ports 15123"#,
            r#"-A AUTHBRIDGE_OUTPUT -m owner --uid-owner 1337 -m comment --comment "authbridge: traffic of the proxy (uid 1337)" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -m mark --mark 0x539 -m comment --comment "authbridge: traffic of the proxy (mark 1337)" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -o lo -m comment --comment "authbridge: loopback interface, incl. traffic to the pod ip" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -d 127.0.0.0/8 -m comment --comment "authbridge: loopback destination" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -d 10.244.0.7/32 -m comment --comment "authbridge: the pod ip" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -p tcp --dport 9901 -m comment --comment "authbridge: admin port 9901" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -p tcp --dport 5432 -m comment --comment "authbridge: OUTBOUND_PORTS_EXCLUDE port 5432" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -p tcp --dport 8000:8002 -m comment --comment "authbridge: OUTBOUND_PORTS_EXCLUDE ports 8000-8002" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -p tcp --dport 22 -m comment --comment "authbridge: ssh port 22" -j RETURN"#,
            r#"-A AUTHBRIDGE_OUTPUT -p tcp -m comment --comment "authbridge: capture remaining outbound tcp" -j AUTHBRIDGE_REDIRECT"#,
            r#"-A AUTHBRIDGE_INBOUND -p tcp --dport 15123 -m comment --comment "authbridge: outbound listener port 15123" -j RETURN"#,
            r#"-A AUTHBRIDGE_INBOUND -p tcp --dport 15124 -m comment --comment "authbridge: inbound listener port 15124" -j RETURN"#,
            r#"-A AUTHBRIDGE_INBOUND -p tcp --dport 9901 -m comment --comment "authbridge: admin and probes port 9901" -j RETURN"#,
            r#"-A AUTHBRIDGE_INBOUND -p tcp --dport 9090 -m comment --comment "authbridge: INBOUND_PORTS_EXCLUDE port 9090" -j RETURN"#,
            r#"-A AUTHBRIDGE_INBOUND -p tcp --dport 15008 -m comment --comment "authbridge: istio ztunnel port 15008" -j RETURN"#,
            r#"-A AUTHBRIDGE_INBOUND -p tcp -m comment --comment "authbridge: capture remaining inbound tcp" -j AUTHBRIDGE_IN_REDIRECT"#,
            r#"-I PREROUTING 1 -p tcp -m comment --comment "authbridge: inbound capture" -j AUTHBRIDGE_INBOUND"#,
            r#"-I OUTPUT 1 -p tcp -m comment --comment "authbridge: outbound capture" -j AUTHBRIDGE_OUTPUT"#,
        ] {
            assert!(lines.contains(&want), "missing line:\n{want}\nin:\n{text}");
        }
        // Exemptions come before the catch-all jump in each chain.
        let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
        assert!(pos("--uid-owner 1337") < pos("capture remaining outbound"));
        assert!(pos("OUTBOUND_PORTS_EXCLUDE port 5432") < pos("capture remaining outbound"));
        assert!(pos("INBOUND_PORTS_EXCLUDE port 9090") < pos("capture remaining inbound"));
        // Every rule is commented.
        for l in lines
            .iter()
            .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
        {
            assert!(l.contains("--comment \"authbridge: "), "uncommented: {l}");
        }
        // Comments need no escaping (nft's save escapes quotes and apostrophes).
        for l in &lines {
            if let Some((_, c)) = l.split_once("--comment \"") {
                let c = &c[..c.find('"').unwrap()];
                assert!(!c.contains('\'') && !c.contains('\\'), "{l}");
            }
        }
        // No v6 addresses in the v4 document.
        assert!(!text.contains("::1"));
        // Deterministic.
        assert_eq!(text, render(&sample(), Family::V4));
    }

    #[test]
    fn render_v6_uses_v6_loopback_and_pod_ip() {
        let mut cfg = sample();
        let text = render(&cfg, Family::V6);
        assert!(text.contains(
            r#"-A AUTHBRIDGE_OUTPUT -d ::1/128 -m comment --comment "authbridge: loopback destination" -j RETURN"#
        ));
        assert!(!text.contains("127.0.0.0/8"));
        // A v4 pod IP does not appear in the v6 rules, and vice versa.
        assert!(!text.contains("10.244.0.7"));
        cfg.pod_ip = Some("fd00:10:244::7".parse().unwrap());
        let v6 = render(&cfg, Family::V6);
        assert!(v6.contains("-A AUTHBRIDGE_OUTPUT -d fd00:10:244::7/128 "));
        assert!(!render(&cfg, Family::V4).contains("fd00:10:244::7"));
        assert!(v6.contains("--uid-owner 1337"));
        assert!(v6.contains("-j REDIRECT --to-ports 15123"));
        assert!(v6.contains("-j REDIRECT --to-ports 15124"));
    }

    #[test]
    fn render_optional_rules() {
        let cfg = CaptureConfig {
            ssh_port: None,
            proxy_mark: None,
            ztunnel_uid: Some(1338),
            ztunnel_ports: vec![],
            ..CaptureConfig::default()
        };
        let text = render(&cfg, Family::V4);
        assert!(!text.contains("ssh"));
        assert!(!text.contains("-m mark"));
        assert!(!text.contains("ztunnel port"));
        assert!(text.contains("--uid-owner 1338"));
        // Same ztunnel and proxy uid: one owner rule only.
        let text = render(&CaptureConfig::default(), Family::V4);
        assert_eq!(text.matches("--uid-owner").count(), 1);
    }

    #[test]
    fn jump_detection_and_normalization() {
        let save = "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [3:180]\n:OUTPUT ACCEPT [0:0]\n:AUTHBRIDGE_OUTPUT - [0:0]\n-A OUTPUT -p tcp -m comment --comment \"authbridge: outbound capture\" -j AUTHBRIDGE_OUTPUT\nCOMMIT\n";
        assert!(jump_present(save, "OUTPUT", CHAIN_OUTPUT));
        assert!(!jump_present(save, "PREROUTING", CHAIN_INBOUND));
        assert!(!jump_present(save, "OUTPUT", "AUTHBRIDGE_OUT"));
        let other = save.replace("[3:180]", "[9:999]").replace("v1.8.9", "v9");
        assert_eq!(normalize_save(save), normalize_save(&other));
    }

    #[test]
    fn tool_binary_names() {
        let t = |prefix: &str| Tool {
            backend: Backend::Nft,
            prefix: prefix.to_string(),
            reason: String::new(),
        };
        assert_eq!(
            t("iptables-nft").bin(Family::V4, "restore"),
            "iptables-nft-restore"
        );
        assert_eq!(
            t("iptables-nft").bin(Family::V6, "save"),
            "ip6tables-nft-save"
        );
        assert_eq!(t("iptables-legacy").bin(Family::V6, ""), "ip6tables-legacy");
        assert_eq!(
            t("iptables").bin(Family::V6, "restore"),
            "ip6tables-restore"
        );
        assert_eq!(t("iptables").bin(Family::V4, "save"), "iptables-save");
    }

    #[test]
    fn parse_enums() {
        assert_eq!("NFT".parse::<Backend>().unwrap(), Backend::Nft);
        assert_eq!("legacy".parse::<Backend>().unwrap(), Backend::Legacy);
        assert!("xt".parse::<Backend>().is_err());
        assert_eq!("true".parse::<Ipv6Mode>().unwrap(), Ipv6Mode::On);
        assert_eq!("Auto".parse::<Ipv6Mode>().unwrap(), Ipv6Mode::Auto);
    }

    #[test]
    fn dry_run_changes_nothing_and_reports_plan() {
        let cfg = CaptureConfig {
            ipv6: Ipv6Mode::Off,
            ..CaptureConfig::default()
        };
        // A namespace that does not exist: every command fails, detection falls back.
        let runner = Runner {
            netns: Some("authbridge-no-such-netns".into()),
            backend: None,
        };
        let report = apply_in(&cfg, true, &runner).unwrap();
        assert!(report.dry_run);
        assert!(report
            .to_string()
            .starts_with("capture rules would install ipv4 via "));
        assert!(!report.changed);
        assert_eq!(report.families, vec![Family::V4]);
    }

    // ---- real test inside a throwaway network namespace ----

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
            })
            .unwrap_or(false)
    }

    /// Deletes the namespace when dropped, also when the test panics.
    struct NetnsGuard(String);

    impl NetnsGuard {
        fn create(tag: &str) -> Option<Self> {
            static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("ab-ipt-test-{}-{tag}-{n}", std::process::id());
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then_some(Self(name))
        }
    }

    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn nat_dump(runner: &Runner, tool_prefix: &str, family: Family) -> Vec<String> {
        let tool = Tool {
            backend: Backend::Nft,
            prefix: tool_prefix.to_string(),
            reason: String::new(),
        };
        normalize_save(
            &runner
                .run_ok(&tool.bin(family, "save"), &["-t", "nat"], None)
                .unwrap(),
        )
    }

    fn real_apply_twice(backend: Backend) {
        let prefix = suffixed_prefix(backend);
        if !is_root()
            || !Command::new("ip")
                .arg("-V")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
            || binary_version(&format!("{prefix}-restore")).is_none()
        {
            eprintln!("skipping: needs root + iptables ({prefix})");
            return;
        }
        let Some(ns) = NetnsGuard::create(&backend.to_string()) else {
            eprintln!("skipping: needs root + iptables (cannot create a network namespace)");
            return;
        };
        let runner = Runner {
            netns: Some(ns.0.clone()),
            backend: Some(backend),
        };
        let cfg = CaptureConfig {
            outbound_ports_exclude: vec![5432, 8000, 8001],
            inbound_ports_exclude: vec![9090],
            pod_ip: Some("10.244.0.7".parse().unwrap()),
            ..CaptureConfig::default()
        };

        let first = apply_in(&cfg, false, &runner).unwrap();
        assert!(first.changed, "first run must change the table");
        assert_eq!(first.backend, backend);
        assert_eq!(first.families, vec![Family::V4, Family::V6], "{first:?}");
        let v4 = nat_dump(&runner, prefix, Family::V4);
        let v6 = nat_dump(&runner, prefix, Family::V6);
        assert_eq!(
            v4.iter()
                .filter(|l| l.starts_with("-A OUTPUT") && l.ends_with("-j AUTHBRIDGE_OUTPUT"))
                .count(),
            1,
            "{v4:#?}"
        );
        assert!(v4.iter().any(|l| l.contains("--uid-owner 1337")));
        assert!(v4.iter().any(|l| l.contains("--dport 8000:8001")));
        assert!(v4.iter().any(|l| l.contains("-d 10.244.0.7/32")));
        assert!(v6.iter().any(|l| l.contains("-d ::1/128")));
        assert!(v6.iter().any(|l| l.contains("--to-ports 15124")));

        let second = apply_in(&cfg, false, &runner).unwrap();
        assert!(!second.changed, "second run must change nothing");
        assert_eq!(nat_dump(&runner, prefix, Family::V4), v4);
        assert_eq!(nat_dump(&runner, prefix, Family::V6), v6);

        // A changed config replaces our chains' content without duplicating the jumps.
        let cfg2 = CaptureConfig {
            outbound_ports_exclude: vec![6379],
            ..cfg.clone()
        };
        let third = apply_in(&cfg2, false, &runner).unwrap();
        assert!(third.changed);
        let v4b = nat_dump(&runner, prefix, Family::V4);
        assert!(v4b.iter().any(|l| l.contains("--dport 6379")));
        assert!(!v4b.iter().any(|l| l.contains("--dport 5432")));
        assert_eq!(
            v4b.iter()
                .filter(|l| l.contains("-j AUTHBRIDGE_OUTPUT"))
                .count(),
            1
        );
        assert_eq!(
            v4b.iter()
                .filter(|l| l.contains("-j AUTHBRIDGE_INBOUND"))
                .count(),
            1
        );

        // Detection in the namespace now finds our rules in this backend.
        let detected = detect(&Runner {
            netns: Some(ns.0.clone()),
            backend: None,
        })
        .unwrap();
        assert_eq!(detected.backend, backend, "{}", detected.reason);
    }

    #[test]
    fn real_netns_nft_idempotent() {
        real_apply_twice(Backend::Nft);
    }

    #[test]
    fn real_netns_legacy_idempotent() {
        real_apply_twice(Backend::Legacy);
    }
}
