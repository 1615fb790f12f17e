//! SPIFFE IDs per the SPIFFE-ID specification: `spiffe://<trust domain>/<path>`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID (lower-case scheme and trust domain, trust domain
    /// characters `[a-z0-9.-_]`, path segments of `[a-zA-Z0-9.-_]` that are neither empty nor
    /// `.`/`..`, no trailing slash, no port, user info, query or fragment).
    pub fn parse(s: &str) -> Result<SpiffeId, String> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{s:?} is not a SPIFFE ID: the scheme must be \"spiffe://\""))?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..td_len];
        if td.is_empty() {
            return Err(format!(
                "{s:?} is not a SPIFFE ID: the trust domain is empty"
            ));
        }
        if let Some(c) = td.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(format!(
                "{s:?} is not a SPIFFE ID: trust domain character {c:?} is not allowed (lower-case letters, digits, '.', '-', '_')"
            ));
        }
        let path = &rest[td_len..];
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(format!(
                        "{s:?} is not a SPIFFE ID: empty path segment or trailing '/'"
                    ));
                }
                if seg == "." || seg == ".." {
                    return Err(format!(
                        "{s:?} is not a SPIFFE ID: '.' and '..' segments are not allowed"
                    ));
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(format!(
                        "{s:?} is not a SPIFFE ID: path character {c:?} is not allowed"
                    ));
                }
            }
        }
        Ok(SpiffeId {
            id: s.to_string(),
            td_end: "spiffe://".len() + td_len,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.td_end]
    }
    pub fn path(&self) -> &str {
        &self.id[self.td_end..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/team1/sa/agent").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/team1/sa/agent");
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().path(), "");
    }

    #[test]
    fn invalid_ids() {
        for bad in [
            "http://example.org/a",
            "spiffe://",
            "spiffe:///a",
            "spiffe://Example.org/a",
            "spiffe://example.org:8080/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/./a",
            "spiffe://example.org/../a",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "SPIFFE://example.org/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

/// Checks a trust domain name (`example.org`, no scheme, no path) by the SPIFFE ID rules.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    match SpiffeId::parse(&format!("spiffe://{td}")) {
        Ok(id) if id.path().is_empty() => Ok(()),
        _ => Err(format!(
            "{td:?} is not a trust domain name (e.g. example.org, without spiffe:// or a path)"
        )),
    }
}

/// A SPIFFE ID pattern for `allowed_peers`: `*` matches any run of characters within one path
/// segment (never `/`), `**` any run including `/`; everything else is literal. Compared
/// case-sensitively (SPIFFE IDs are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern(String);

impl IdPattern {
    pub fn parse(s: &str) -> Result<IdPattern, String> {
        if !s.starts_with("spiffe://") {
            return Err(format!(
                "{s:?} is not a SPIFFE ID pattern: it must start with \"spiffe://\""
            ));
        }
        if s.contains("***") {
            return Err(format!("{s:?}: \"***\" is not a valid wildcard"));
        }
        Ok(IdPattern(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn matches(&self, id: &str) -> bool {
        // Tokens: literal bytes, Star (no '/'), DoubleStar.
        let p = self.0.as_bytes();
        let t = id.as_bytes();
        // dp[j] = pattern prefix (up to i) matches text prefix of length j.
        let mut dp = vec![false; t.len() + 1];
        dp[0] = true;
        let mut i = 0;
        while i < p.len() {
            let mut next = vec![false; t.len() + 1];
            if p[i] == b'*' {
                let double = i + 1 < p.len() && p[i + 1] == b'*';
                for j in 0..=t.len() {
                    if dp[j] {
                        next[j] = true;
                        let mut k = j;
                        while k < t.len() && (double || t[k] != b'/') {
                            k += 1;
                            next[k] = true;
                        }
                    }
                }
                i += if double { 2 } else { 1 };
            } else {
                for j in 0..t.len() {
                    if dp[j] && t[j] == p[i] {
                        next[j + 1] = true;
                    }
                }
                i += 1;
            }
            dp = next;
        }
        dp[t.len()]
    }
}

#[cfg(test)]
mod pattern_tests {
    use super::IdPattern;

    #[test]
    fn star_stays_in_segment_double_star_crosses() {
        let p = IdPattern::parse("spiffe://example.org/ns/*/sa/*").unwrap();
        assert!(p.matches("spiffe://example.org/ns/team1/sa/agent"));
        assert!(!p.matches("spiffe://example.org/ns/team1/x/sa/agent"));
        assert!(!p.matches("spiffe://example.org/ns/team1/sa/agent/extra"));
        assert!(!p.matches("spiffe://other.org/ns/team1/sa/agent"));
        let d = IdPattern::parse("spiffe://example.org/**").unwrap();
        assert!(d.matches("spiffe://example.org/a/b/c"));
        assert!(!d.matches("spiffe://example.org.evil/a"));
        let exact = IdPattern::parse("spiffe://example.org/tool").unwrap();
        assert!(exact.matches("spiffe://example.org/tool"));
        assert!(!exact.matches("spiffe://example.org/tool2"));
        assert!(IdPattern::parse("example.org/x").is_err());
        assert!(super::check_trust_domain("example.org").is_ok());
        for bad in ["spiffe://example.org", "example.org/ns", "Example.org", ""] {
            assert!(super::check_trust_domain(bad).is_err(), "{bad}");
        }
        let mid = IdPattern::parse("spiffe://example.org/ns/*-prod/sa/*").unwrap();
        assert!(mid.matches("spiffe://example.org/ns/a-prod/sa/b"));
        assert!(!mid.matches("spiffe://example.org/ns/a/prod/sa/b"));
    }
}
