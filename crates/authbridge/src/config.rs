//! The configuration file (contract §3): `${VAR}` / `${VAR:-default}` expansion, unknown keys
//! rejected, every key defaulted, and validation whose errors name the file and the key.

use outbound_exchange::routes::{self, Action, Route, RouteSpec, RouteTable};
use proxy_core::duration::parse_duration;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub identity: IdentityConfig,
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_grace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    WorkloadApi,
    Files,
    Static,
    #[default]
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub source: IdentitySource,
    pub workload_api_socket: String,
    pub svid_dir: String,
    pub cert_file: String,
    pub key_file: String,
    pub bundle_file: String,
    pub trust_domain: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            source: IdentitySource::None,
            workload_api_socket: String::new(),
            svid_dir: "/opt".into(),
            cert_file: String::new(),
            key_file: String::new(),
            bundle_file: String::new(),
            trust_domain: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    Strict,
    Permissive,
    Disabled,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    pub listen: String,
    pub upstream: String,
    pub mtls: MtlsMode,
    pub allowed_peers: Vec<String>,
    pub allowed_trust_domains: Vec<String>,
    pub jwt: Option<JwtConfig>,
    /// AuthBridge extension: how long a client may take to send a request head (and, on TLS,
    /// to finish the handshake) before the connection is closed (slowloris guard).
    pub request_header_timeout: String,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:15124".into(),
            upstream: "original-dst".into(),
            mtls: MtlsMode::Permissive,
            allowed_peers: Vec::new(),
            allowed_trust_domains: Vec::new(),
            jwt: None,
            request_header_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    pub issuer: String,
    pub jwks_uri: String,
    pub audiences: Vec<String>,
    pub clock_skew: String,
    pub bypass_paths: Vec<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            jwks_uri: String::new(),
            audiences: Vec::new(),
            clock_skew: "30s".into(),
            bypass_paths: vec![
                "/.well-known/*".into(),
                "/healthz".into(),
                "/readyz".into(),
                "/livez".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthKind {
    JwtSpiffe,
    ClientSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoTokenPolicy {
    Deny,
    ClientCredentials,
    Passthrough,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub listen: String,
    pub token_url: String,
    pub client_id: String,
    pub client_auth: ClientAuthKind,
    pub client_secret_file: String,
    pub jwt_svid_audience: String,
    pub default_policy: Action,
    pub no_token_policy: NoTokenPolicy,
    pub routes_file: String,
    pub routes: Vec<RouteSpec>,
    /// Bound on every STS call (connect + answer).
    pub exchange_timeout: String,
    /// Exchanged tokens kept at most.
    pub token_cache_size: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:15123".into(),
            token_url: String::new(),
            client_id: String::new(),
            client_auth: ClientAuthKind::JwtSpiffe,
            client_secret_file: String::new(),
            jwt_svid_audience: String::new(),
            default_policy: Action::Passthrough,
            no_token_policy: NoTokenPolicy::Deny,
            routes_file: "/etc/authproxy/routes.yaml".into(),
            routes: Vec::new(),
            exchange_timeout: "10s".into(),
            token_cache_size: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".into(),
        }
    }
}

/// A configuration problem: the file, the key and what was expected.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

/// Expands `${VAR}` and `${VAR:-default}`; an unset variable without default is an error
/// naming the line.
pub fn expand_env(
    text: &str,
    file: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (lineno, full_line) in text.split_inclusive('\n').enumerate() {
        // YAML comments are copied verbatim: a variable only mentioned there is not needed.
        let code_len = comment_start(full_line).unwrap_or(full_line.len());
        let (line, comment) = full_line.split_at(code_len);
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(ConfigError(format!(
                    "{file}: line {}: unterminated \"${{\" (expected ${{VAR}} or ${{VAR:-default}})",
                    lineno + 1
                )));
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError(format!(
                    "{file}: line {}: {:?} is not a valid variable reference (expected ${{VAR}} or ${{VAR:-default}})",
                    lineno + 1,
                    format!("${{{inner}}}")
                )));
            }
            match get(name).filter(|v| !(v.is_empty() && default.is_some())) {
                Some(v) => out.push_str(&v),
                None => match default {
                    Some(d) => out.push_str(d),
                    None => {
                        return Err(ConfigError(format!(
                            "{file}: line {}: environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                            lineno + 1
                        )))
                    }
                },
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    Ok(out)
}

/// Byte offset of a YAML comment (`#` at line start or after whitespace, outside quotes).
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double) = (false, false);
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_ws => return Some(i),
            _ => {}
        }
        prev_ws = c.is_whitespace();
    }
    None
}

/// The validated, typed view of a [`Config`] that the runtime uses.
#[derive(Debug, Clone)]
pub struct Effective {
    pub outbound_listen: SocketAddr,
    pub inbound_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub allowed_peers: Vec<spiffe_source::IdPattern>,
    pub workload_api_endpoint: String,
    pub inbound_header_timeout: Duration,
    pub exchange_timeout: Duration,
    pub drain_grace: Duration,
    pub routes_file: Option<PathBuf>,
    pub inline_routes: Vec<Route>,
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads, expands and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{name}: cannot read config file: {e}")))?;
        Self::parse(&text, &name, &|k| std::env::var(k).ok())
    }

    pub fn parse(
        text: &str,
        file: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let expanded = expand_env(text, file, get)?;
        if expanded
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Config::default());
        }
        let mut cfg: Config =
            serde_norway::from_str(&expanded).map_err(|e| ConfigError(format!("{file}: {e}")))?;
        if cfg.drain_grace.is_empty() {
            cfg.drain_grace = "20s".into();
        }
        Ok(cfg)
    }

    /// Checks every key; returns the typed values and warnings, or all errors at once.
    pub fn validate(&self, file: &str) -> Result<Effective, ConfigError> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let addr = |key: &str, v: &str, errors: &mut Vec<String>| -> SocketAddr {
            v.parse().unwrap_or_else(|_| {
                errors.push(format!("{file}: {key}: {v:?} is not a listen address (expected IP:PORT, e.g. 0.0.0.0:15123)"));
                SocketAddr::from(([0, 0, 0, 0], 0))
            })
        };
        let dur = |key: &str, v: &str, errors: &mut Vec<String>| -> Duration {
            parse_duration(v).unwrap_or_else(|e| {
                errors.push(format!("{file}: {key}: {e}"));
                Duration::ZERO
            })
        };
        let outbound_listen = addr("outbound.listen", &self.outbound.listen, &mut errors);
        let inbound_listen = addr("inbound.listen", &self.inbound.listen, &mut errors);
        let admin_listen = addr("admin.listen", &self.admin.listen, &mut errors);
        let exchange_timeout = dur(
            "outbound.exchange_timeout",
            &self.outbound.exchange_timeout,
            &mut errors,
        );
        let grace = if self.drain_grace.is_empty() {
            "20s"
        } else {
            &self.drain_grace
        };
        let drain_grace = dur("drain_grace", grace, &mut errors);
        let inbound_header_timeout = dur(
            "inbound.request_header_timeout",
            &self.inbound.request_header_timeout,
            &mut errors,
        );
        if self.inbound.upstream != "original-dst"
            && self.inbound.upstream.parse::<SocketAddr>().is_err()
            && !self.inbound.upstream.contains(':')
        {
            errors.push(format!(
                "{file}: inbound.upstream: {:?} is neither \"original-dst\" nor host:port",
                self.inbound.upstream
            ));
        }
        let mut allowed_peers = Vec::new();
        for (i, p) in self.inbound.allowed_peers.iter().enumerate() {
            match spiffe_source::IdPattern::parse(p) {
                Ok(p) => allowed_peers.push(p),
                Err(m) => errors.push(format!("{file}: inbound.allowed_peers[{i}]: {m}")),
            }
        }
        for (i, td) in self.inbound.allowed_trust_domains.iter().enumerate() {
            if let Err(m) = spiffe_source::check_trust_domain(td) {
                errors.push(format!("{file}: inbound.allowed_trust_domains[{i}]: {m}"));
            }
        }
        if !self.identity.trust_domain.is_empty() {
            if let Err(m) = spiffe_source::check_trust_domain(&self.identity.trust_domain) {
                errors.push(format!("{file}: identity.trust_domain: {m}"));
            }
        }
        if self.inbound.mtls == MtlsMode::Disabled && !self.inbound.allowed_peers.is_empty() {
            warnings.push("inbound.allowed_peers is set but inbound.mtls is disabled: no caller can present a SPIFFE ID, so every inbound request gets 403".into());
        }
        if self.inbound.mtls == MtlsMode::Strict && self.identity.source == IdentitySource::None {
            errors.push(format!("{file}: inbound.mtls: strict needs an identity (identity.source: workload-api, files or static), got none"));
        }
        let workload_api_endpoint = if self.identity.workload_api_socket.is_empty() {
            std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap_or_default()
        } else {
            self.identity.workload_api_socket.clone()
        };
        if self.identity.source == IdentitySource::WorkloadApi {
            if workload_api_endpoint.is_empty() {
                errors.push(format!("{file}: identity.workload_api_socket: required for identity.source: workload-api (or set SPIFFE_ENDPOINT_SOCKET), e.g. unix:///run/spire/sockets/agent.sock"));
            } else if let Err(e) = spiffe_source::workload::check_endpoint(&workload_api_endpoint) {
                errors.push(format!("{file}: identity.workload_api_socket: {e}"));
            }
        }
        if let Some(jwt) = &self.inbound.jwt {
            if jwt.audiences.is_empty() && self.identity.source == IdentitySource::None {
                errors.push(format!("{file}: inbound.jwt.audiences: required when there is no identity (the default is our own SPIFFE ID)"));
            }
            if let Err(m) = inbound_jwt::BypassPaths::new(&jwt.bypass_paths) {
                errors.push(format!("{file}: inbound.jwt.{m}"));
            }
            if jwt.issuer.is_empty() {
                errors.push(format!(
                    "{file}: inbound.jwt.issuer: required when inbound.jwt is present"
                ));
            }
            if let Err(m) = routes::validate_http_url(&jwt.jwks_uri) {
                errors.push(format!("{file}: inbound.jwt.jwks_uri: {m}"));
            }
            dur("inbound.jwt.clock_skew", &jwt.clock_skew, &mut errors);
        }
        if !self.outbound.token_url.is_empty() {
            if let Err(m) = routes::validate_http_url(&self.outbound.token_url) {
                errors.push(format!("{file}: outbound.token_url: {m}"));
            }
        }
        if self.outbound.token_cache_size == 0 {
            errors.push(format!(
                "{file}: outbound.token_cache_size: must be at least 1"
            ));
        }
        let mut inline_routes = Vec::new();
        for (i, spec) in self.outbound.routes.iter().enumerate() {
            match spec.compile(format!(
                "{file}: outbound.routes[{i}] (host {:?})",
                spec.host
            )) {
                Ok(r) => inline_routes.push(r),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let routes_file = (!self.outbound.routes_file.is_empty())
            .then(|| PathBuf::from(&self.outbound.routes_file));
        match self.identity.source {
            IdentitySource::Files if self.identity.svid_dir.is_empty() => {
                errors.push(format!(
                    "{file}: identity.svid_dir: required for identity.source: files"
                ));
            }
            IdentitySource::Static
                if self.identity.cert_file.is_empty() || self.identity.key_file.is_empty() =>
            {
                errors.push(format!("{file}: identity.cert_file / identity.key_file: required for identity.source: static"));
            }
            _ => {}
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors.join("\n")));
        }
        if self.inbound.jwt.is_none() && self.identity.source == IdentitySource::None {
            warnings.push("inbound requests are not validated (no identity, no inbound.jwt): this configuration only routes outbound traffic".into());
        }
        Ok(Effective {
            outbound_listen,
            inbound_listen,
            admin_listen,
            allowed_peers,
            workload_api_endpoint,
            inbound_header_timeout,
            exchange_timeout,
            drain_grace,
            routes_file,
            inline_routes,
            warnings,
        })
    }

    /// Checks what exchange routes need (`token_url`, client auth, an identity) against the
    /// routes in effect. Only called when some route (or the default policy) exchanges.
    pub fn validate_exchange(&self, file: &str, table: &RouteTable) -> Result<(), ConfigError> {
        if self.identity.source == IdentitySource::None {
            if let Some(r) = table.routes.iter().find(|r| r.mtls.is_some()) {
                return Err(ConfigError(format!(
                    "{file}: identity.source: {} has mtls: true, which needs our X.509-SVID (identity.source: workload-api, files or static), got none",
                    r.origin
                )));
            }
        }
        if !table.needs_exchange() {
            return Ok(());
        }
        let mut errors = Vec::new();
        let global_url = !self.outbound.token_url.is_empty();
        if !global_url {
            if self.outbound.default_policy == Action::Exchange {
                errors.push(format!("{file}: outbound.token_url: required because outbound.default_policy is exchange"));
            }
            for r in table
                .routes
                .iter()
                .filter(|r| r.action == Action::Exchange && r.token_url.is_none())
            {
                errors.push(format!(
                    "{file}: outbound.token_url: required because {} exchanges tokens and has no token_url of its own",
                    r.origin
                ));
            }
        }
        match self.outbound.client_auth {
            ClientAuthKind::ClientSecret => {
                if self.outbound.client_secret_file.is_empty() {
                    errors.push(format!("{file}: outbound.client_secret_file: required for client_auth: client-secret"));
                }
                if self.outbound.client_id.is_empty() && self.identity.source == IdentitySource::None {
                    errors.push(format!("{file}: outbound.client_id: required for client_auth: client-secret without an identity"));
                }
            }
            ClientAuthKind::JwtSpiffe => match self.identity.source {
                IdentitySource::Files | IdentitySource::WorkloadApi => {}
                IdentitySource::None => errors.push(format!(
                    "{file}: identity.source: exchange routes with client_auth: jwt-spiffe need an identity (files or workload-api), got none"
                )),
                IdentitySource::Static => errors.push(format!(
                    "{file}: identity.source: static cannot provide JWT-SVIDs (it holds only X.509 certificates); use workload-api, files (spiffe-helper's jwt_svid.token) or client_auth: client-secret"
                )),
            },
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors.join("\n")))
        }
    }

    /// The effective configuration for `/config_dump` and the startup log, secrets redacted
    /// (the config only names secret files; their contents never appear).
    pub fn dump(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Builds the route table: the routes file's routes first, then the inline ones.
pub fn build_table(
    file_routes: Vec<Route>,
    inline: &[Route],
    default_policy: Action,
) -> RouteTable {
    let mut all = file_routes;
    all.extend(inline.iter().cloned());
    RouteTable::new(all, default_policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn env_expansion() {
        assert_eq!(expand_env("a: ${SET}\n", "f", &env).unwrap(), "a: value\n");
        assert_eq!(
            expand_env("a: ${NOPE:-dflt}", "f", &env).unwrap(),
            "a: dflt"
        );
        assert_eq!(
            expand_env("a: ${EMPTY:-dflt}", "f", &env).unwrap(),
            "a: dflt"
        );
        assert_eq!(expand_env("a: $HOME", "f", &env).unwrap(), "a: $HOME");
        assert_eq!(
            expand_env("# ${NOPE}\na: ${SET} # ${NOPE}\n", "f", &env).unwrap(),
            "# ${NOPE}\na: value # ${NOPE}\n"
        );
        assert_eq!(
            expand_env("a: \"x # ${SET}\"", "f", &env).unwrap(),
            "a: \"x # value\""
        );
        let e = expand_env("x: 1\na: ${NOPE}\n", "f.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.yaml: line 2") && e.contains("NOPE"), "{e}");
        let e = expand_env("a: ${OOPS", "f.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unterminated"), "{e}");
    }

    #[test]
    fn empty_file_is_default() {
        let c = Config::parse("", "f", &env).unwrap();
        let e = c.validate("f").unwrap();
        assert_eq!(e.outbound_listen.port(), 15123);
        assert!(!e.warnings.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::parse("outbound:\n  tokn_url: x\n", "c.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.yaml") && e.contains("tokn_url"), "{e}");
        let e = Config::parse("bogus: 1\n", "c.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = Config::parse(
            "outbound:\n  listen: nowhere\n  token_url: ftp://x\n  exchange_timeout: 10\nadmin:\n  listen: 1.2.3.4\n",
            "c.yaml",
            &env,
        )
        .unwrap();
        let e = c.validate("c.yaml").unwrap_err().to_string();
        for key in [
            "outbound.listen",
            "outbound.token_url",
            "outbound.exchange_timeout",
            "admin.listen",
        ] {
            assert!(
                e.contains(&format!("c.yaml: {key}")),
                "{key} missing in {e}"
            );
        }
    }

    #[test]
    fn exchange_needs_token_url_and_auth() {
        let c = Config::parse(
            "outbound:\n  routes:\n    - host: a\n      target_audience: x\n",
            "c.yaml",
            &env,
        )
        .unwrap();
        let eff = c.validate("c.yaml").unwrap();
        let t = build_table(vec![], &eff.inline_routes, c.outbound.default_policy);
        let e = c.validate_exchange("c.yaml", &t).unwrap_err().to_string();
        assert!(
            e.contains("outbound.token_url") && e.contains("identity.source"),
            "{e}"
        );
    }
}
