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
