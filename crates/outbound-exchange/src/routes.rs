//! The routes table: kagenti's `routes.yaml` (a top-level list, first match wins) plus the
//! config file's inline routes, and the default policy for hosts no route matches.

use crate::glob::{normalize_host, GlobError, HostPattern};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// What happens to a request whose host matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Exchange,
    Passthrough,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Exchange => "exchange",
            Action::Passthrough => "passthrough",
            Action::Deny => "deny",
        }
    }
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "exchange" => Some(Action::Exchange),
            "passthrough" => Some(Action::Passthrough),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `token_scopes` as written: a space-separated string (kagenti) or a YAML list.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Scopes {
    Text(String),
    List(Vec<String>),
}

impl Scopes {
    /// Space-separated, as sent in the `scope` form field.
    pub fn joined(&self) -> String {
        match self {
            Scopes::Text(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
            Scopes::List(v) => v.join(" "),
        }
    }
}

/// One route as written in YAML (both kagenti spellings).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_scopes: Option<Scopes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// kagenti Gen 1 spelling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
    /// kagenti Gen 2 spelling: exchange | passthrough | deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// AuthBridge extension: originate mTLS to the destination (another AuthBridge's inbound),
    /// presenting our X.509-SVID and verifying the peer's against our bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<bool>,
    /// With `mtls: true`: the SPIFFE ID the destination must present (default: any SVID of a
    /// trust domain we hold a bundle for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_peer: Option<String>,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: HostPattern,
    pub action: Action,
    pub audience: Option<String>,
    /// Space-separated scopes, or `None`.
    pub scopes: Option<String>,
    pub token_url: Option<String>,
    /// Originate mTLS to the destination (`mtls: true`), expecting this peer if given.
    pub mtls: Option<MtlsTarget>,
    /// Where it came from, for messages: `routes.yaml route 3` / `config.yaml outbound.routes[0]`.
    pub origin: String,
}

/// A route's mTLS origination settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MtlsTarget {
    /// The SPIFFE ID the destination must present; `None` = any SVID we can verify.
    pub peer: Option<spiffe_source::SpiffeId>,
}

/// A routes problem, naming the file and the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub origin: String,
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}
impl std::error::Error for RouteError {}

/// Checks a URL given for `token_url` / `jwks_uri`: http or https with a host.
pub fn validate_http_url(value: &str) -> Result<(), String> {
    let u = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL ({e})"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("{value:?} must be an http:// or https:// URL"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?} has no host"));
    }
    Ok(())
}

impl RouteSpec {
    /// Compiles a spec; `origin` names it in errors.
    pub fn compile(&self, origin: String) -> Result<Route, RouteError> {
        let err = |message: String| RouteError {
            origin: origin.clone(),
            message,
        };
        let pattern =
            HostPattern::parse(&self.host).map_err(|e: GlobError| err(format!("host: {e}")))?;
        let from_action = match &self.action {
            Some(a) => Some(Action::parse(a).ok_or_else(|| {
                err(format!(
                    "action: {a:?} is not one of exchange, passthrough, deny"
                ))
            })?),
            None => None,
        };
        let action = match (self.passthrough, from_action) {
            (Some(p), Some(a)) => {
                let implied = if p {
                    Action::Passthrough
                } else {
                    Action::Exchange
                };
                if (a == Action::Passthrough) != p {
                    return Err(err(format!(
                        "passthrough: {p} and action: {a} contradict each other (passthrough: {p} means action: {implied})"
                    )));
                }
                a
            }
            (Some(true), None) => Action::Passthrough,
            (Some(false), None) | (None, None) => Action::Exchange,
            (None, Some(a)) => a,
        };
        if let Some(u) = &self.token_url {
            validate_http_url(u).map_err(|m| err(format!("token_url: {m}")))?;
        }
        if let Some(a) = &self.target_audience {
            if a.trim().is_empty() {
                return Err(err("target_audience: must not be empty".into()));
            }
        }
        let mtls = match (self.mtls, &self.mtls_peer) {
            (Some(true), peer) => Some(MtlsTarget {
                peer: match peer {
                    Some(p) => Some(
                        spiffe_source::SpiffeId::parse(p)
                            .map_err(|m| err(format!("mtls_peer: {m}")))?,
                    ),
                    None => None,
                },
            }),
            (_, Some(_)) => {
                return Err(err(
                    "mtls_peer: only meaningful together with mtls: true".into()
                ))
            }
            _ => None,
        };
        Ok(Route {
            mtls,
            pattern,
            action,
            audience: self.target_audience.clone(),
            scopes: self
                .token_scopes
                .as_ref()
                .map(Scopes::joined)
                .filter(|s| !s.is_empty()),
            token_url: self.token_url.clone(),
            origin,
        })
    }
}

/// Parses a routes.yaml document. An empty document is an empty list.
pub fn parse_routes_yaml(text: &str, file: &str) -> Result<Vec<Route>, RouteError> {
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Vec::new());
    }
    let specs: Vec<RouteSpec> = serde_norway::from_str(text).map_err(|e| RouteError {
        origin: file.to_string(),
        message: format!("{e} (expected a YAML list of routes: - host: \"…\")"),
    })?;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| s.compile(format!("{file}: route {i} (host {:?})", s.host)))
        .collect()
}

/// Reads a routes file; a missing file is no routes (contract §3).
pub fn load_routes_file(path: &Path) -> Result<Vec<Route>, RouteError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_routes_yaml(&text, &name),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(RouteError {
            origin: name,
            message: format!("cannot read routes file: {e}"),
        }),
    }
}

/// The routes in effect: the file's first, then the inline ones.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub default_policy: Action,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub index: Option<usize>,
    pub route: Option<&'a Route>,
    pub action: Action,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, default_policy: Action) -> Self {
        Self {
            routes,
            default_policy,
        }
    }

    /// First match wins; `host` must already be normalised (see [`normalize_host`]).
    pub fn lookup(&self, host: &str) -> Decision<'_> {
        for (i, r) in self.routes.iter().enumerate() {
            if r.pattern.matches(host) {
                return Decision {
                    index: Some(i),
                    route: Some(r),
                    action: r.action,
                };
            }
        }
        Decision {
            index: None,
            route: None,
            action: self.default_policy,
        }
    }

    /// Whether any route (or the default policy) exchanges tokens.
    pub fn needs_exchange(&self) -> bool {
        self.default_policy == Action::Exchange
            || self.routes.iter().any(|r| r.action == Action::Exchange)
    }

    /// Warnings for `authbridge check`: match-all patterns and routes shadowed by an earlier one.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (j, later) in self.routes.iter().enumerate() {
            if later.pattern.is_match_all() {
                let tail = if j + 1 < self.routes.len() {
                    format!(
                        "; the {} route(s) after it can never match",
                        self.routes.len() - j - 1
                    )
                } else {
                    String::new()
                };
                out.push(format!(
                    "{}: pattern {:?} matches every host (action {}){tail}",
                    later.origin,
                    later.pattern.as_str(),
                    later.action
                ));
            }
            if let Some((i, earlier)) = self.routes[..j]
                .iter()
                .enumerate()
                .find(|(_, e)| e.pattern.subsumes(&later.pattern))
            {
                out.push(format!(
                    "{}: shadowed by route {i} ({}, pattern {:?}): every host it matches is matched earlier, so it is never used",
                    later.origin,
                    earlier.origin,
                    earlier.pattern.as_str()
                ));
            }
            if later.action == Action::Exchange && later.audience.is_none() {
                out.push(format!(
                    "{}: exchange route without target_audience: the exchange will not ask for an audience",
                    later.origin
                ));
            }
        }
        out
    }

    /// One `routes explain` answer as the JSON object of contract §2.
    pub fn explain_json(&self, host: &str) -> serde_json::Value {
        let normalized = normalize_host(host);
        let d = self.lookup(&normalized);
        serde_json::json!({
            "host": host,
            "normalized": normalized,
            "route": d.index,
            "action": d.action.as_str(),
            "audience": d.route.and_then(|r| r.audience.clone()),
            "scopes": d.route.and_then(|r| r.scopes.clone()),
        })
    }

    /// One `routes explain` answer as a human line.
    pub fn explain_text(&self, host: &str) -> String {
        let normalized = normalize_host(host);
        let d = self.lookup(&normalized);
        match d.route {
            Some(r) => {
                let mut s = format!(
                    "{host} ({normalized}): route {} [{}] pattern {:?} -> {}",
                    d.index.unwrap_or(0),
                    r.origin,
                    r.pattern.as_str(),
                    r.action
                );
                if let Some(a) = &r.audience {
                    s.push_str(&format!(" audience={a:?}"));
                }
                if let Some(sc) = &r.scopes {
                    s.push_str(&format!(" scopes={sc:?}"));
                }
                if let Some(u) = &r.token_url {
                    s.push_str(&format!(" token_url={u}"));
                }
                s
            }
            None => format!(
                "{host} ({normalized}): no route matches -> default policy {}",
                d.action
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
- host: "github-tool-mcp**"
  target_audience: github-tool
  token_scopes: "openid  github-tool-aud"
  token_url: https://other-idp/token
- host: "*.internal.svc.cluster.local"
  passthrough: true
- host: "169.254.169.254"
  action: deny
- host: "api.example.com"
  action: passthrough
  passthrough: true
"#;

    #[test]
    fn parses_both_spellings() {
        let routes = parse_routes_yaml(YAML, "routes.yaml").unwrap();
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[0].action, Action::Exchange);
        assert_eq!(routes[0].scopes.as_deref(), Some("openid github-tool-aud"));
        assert_eq!(routes[1].action, Action::Passthrough);
        assert_eq!(routes[2].action, Action::Deny);
        assert_eq!(routes[3].action, Action::Passthrough);
        let t = RouteTable::new(routes, Action::Passthrough);
        assert_eq!(t.lookup("github-tool-mcp.team1.svc").index, Some(0));
        assert_eq!(t.lookup("a.internal.svc.cluster.local").index, Some(1));
        assert_eq!(t.lookup("nothing").index, None);
        assert_eq!(t.lookup("nothing").action, Action::Passthrough);
    }

    #[test]
    fn errors_name_the_route() {
        let e = parse_routes_yaml(
            "- host: a\n  passthrough: true\n  action: exchange\n",
            "r.yaml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("r.yaml: route 0") && e.to_string().contains("contradict"),
            "{e}"
        );
        let e = parse_routes_yaml("- host: a\n  action: allow\n", "r.yaml").unwrap_err();
        assert!(e.to_string().contains("action: \"allow\""), "{e}");
        let e = parse_routes_yaml("- host: a\n  audience: x\n", "r.yaml").unwrap_err();
        assert!(e.to_string().contains("unknown field `audience`"), "{e}");
        let e = parse_routes_yaml("- host: \"{a,b\"\n", "r.yaml").unwrap_err();
        assert!(e.to_string().contains("host: invalid host pattern"), "{e}");
        let e = parse_routes_yaml("- host: a\n  token_url: ftp://x/token\n", "r.yaml").unwrap_err();
        assert!(e.to_string().contains("token_url"), "{e}");
        let e = parse_routes_yaml("host: a\n", "r.yaml").unwrap_err();
        assert!(e.to_string().contains("r.yaml"), "{e}");
        assert!(parse_routes_yaml("# nothing\n\n", "r.yaml")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn warns_about_shadowing_and_match_all() {
        let routes = parse_routes_yaml(
            "- host: \"*.example.com\"\n  target_audience: a\n- host: api.example.com\n  target_audience: b\n- host: \"**\"\n  passthrough: true\n- host: x\n  target_audience: c\n",
            "r.yaml",
        )
        .unwrap();
        let w = RouteTable::new(routes, Action::Passthrough)
            .warnings()
            .join("\n");
        assert!(
            w.contains("route 1") && w.contains("shadowed by route 0"),
            "{w}"
        );
        assert!(w.contains("matches every host"), "{w}");
        assert!(
            w.contains("route 3") && w.contains("shadowed by route 2"),
            "{w}"
        );
    }
}
