//! Bypass paths (CONTRACT §5): request paths that skip the JWT check, and the normalisation
//! the request path goes through before it is compared.
//!
//! # Normalisation ([`normalize_path`])
//!
//! 1. The query (`?…`) and fragment (`#…`) are cut off.
//! 2. The path must start with `/` and hold only visible ASCII; a backslash, a control
//!    character, a space or a non-ASCII byte makes it ambiguous.
//! 3. Percent-encoded **unreserved** characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!    (`/%68ealthz` → `/healthz`, `%2e`/`%2E` → `.`). Other escapes are kept, with upper-case
//!    hex. An encoded `/` (`%2F`), `\` (`%5C`), `%` (`%25`, double encoding), a control
//!    character, or a malformed escape makes the path ambiguous.
//! 4. `.` and `..` segments are removed (RFC 3986 §5.2.4). `//` is **not** collapsed. A `..`
//!    that would climb above the root makes the path ambiguous.
//! 5. A result still containing `..` anywhere (e.g. `/..;/x`, `/a..b`) is ambiguous.
//!
//! An ambiguous path (`None`) never matches a bypass pattern, so it goes through the JWT check.
//!
//! # Patterns ([`BypassPaths::new`])
//!
//! A pattern is an absolute path compared with the whole normalised path, segment by segment:
//! - `*` matches any run (possibly empty) of characters within one segment; it never crosses
//!   `/`. A segment may hold several `*` (`/v*/status`, `/*.json`).
//! - A final segment `**` (`/static/**`) matches one or more further segments of any content:
//!   `/static/`, `/static/a`, `/static/a/b` — but not `/static` itself. `**` anywhere else is an
//!   error.
//! - Every other character is literal and case-sensitive. `?`, `#`, `%`, `\`, `[`, `]`, `{`,
//!   `}`, whitespace, control and non-ASCII characters, and `.`/`..` segments are errors, so a
//!   pattern can always match some normalised path.

use std::borrow::Cow;

/// A compiled list of bypass patterns.
#[derive(Debug, Clone, Default)]
pub struct BypassPaths {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Segments after the leading `/`.
    segments: Vec<String>,
    /// Ends with `/**`.
    subtree: bool,
}

impl BypassPaths {
    /// Compiles `patterns`; the error names the offending pattern.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| compile(p).map_err(|e| format!("bypass_paths[{i}] {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Checks one pattern; the error says what is wrong (without naming the pattern).
    pub fn validate_pattern(pattern: &str) -> Result<(), String> {
        compile(pattern).map(|_| ())
    }

    /// True when no pattern is configured.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the request path (the path of the request target, raw as received; a query is
    /// ignored) matches a pattern after normalisation. Ambiguous paths never match.
    pub fn matches(&self, raw_path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        match normalize(raw_path) {
            Some(path) => self.patterns.iter().any(|p| p.matches(&path)),
            None => false,
        }
    }
}

fn compile(p: &str) -> Result<Pattern, String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    if let Some(c) = p.chars().find(|&c| {
        !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%' | '\\' | '[' | ']' | '{' | '}')
    }) {
        return Err(format!("character {c:?} is not allowed"));
    }
    let mut segments: Vec<String> = rest.split('/').map(str::to_owned).collect();
    let subtree = segments.last().is_some_and(|s| s == "**");
    if subtree {
        segments.pop();
    }
    for s in &segments {
        if s.contains("**") {
            return Err("'**' is only supported as the whole last segment ('/prefix/**')".into());
        }
        if s == "." || s == ".." || s.contains("..") {
            return Err("'.' and '..' segments never match a normalised path".into());
        }
    }
    Ok(Pattern { segments, subtree })
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        // `path` is normalised, so it starts with '/'.
        let mut segs = path[1..].split('/');
        for p in &self.segments {
            match segs.next() {
                Some(s) if glob_segment(p.as_bytes(), s.as_bytes()) => {}
                _ => return false,
            }
        }
        if self.subtree {
            segs.next().is_some()
        } else {
            segs.next().is_none()
        }
    }
}

/// `*` matches any run of bytes (the segment holds no '/'); everything else is literal.
fn glob_segment(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The normalised form of a request path (see the module docs), or `None` when the path is
/// ambiguous and must never match a bypass pattern.
pub fn normalize_path(raw: &str) -> Option<String> {
    normalize(raw).map(Cow::into_owned)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn normalize(raw: &str) -> Option<Cow<'_, str>> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return None;
    }
    // One pass: find the end of the path, refuse ambiguous bytes, and note whether the path
    // needs work (an escape, or a '.' right after '/' or '.').
    let mut end = b.len();
    let mut simple = true;
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'?' | b'#' => {
                end = i;
                break;
            }
            b'%' => simple = false,
            b'.' if prev == b'/' || prev == b'.' => simple = false,
            b'\\' => return None,
            c if !c.is_ascii_graphic() => return None,
            _ => {}
        }
        prev = c;
    }
    let path = &raw[..end];
    if simple {
        // Already normal (the common case): no allocation.
        return Some(Cow::Borrowed(path));
    }
    let decoded = if path.contains('%') {
        decode_unreserved(path)?
    } else {
        path.to_owned()
    };
    let out = remove_dot_segments(&decoded)?;
    (!out.contains("..")).then_some(Cow::Owned(out))
}

fn decode_unreserved(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(char::from(b[i]));
            i += 1;
            continue;
        }
        let hi = hex(*b.get(i + 1)?)?;
        let lo = hex(*b.get(i + 2)?)?;
        let v = hi << 4 | lo;
        if is_unreserved(v) {
            out.push(char::from(v));
        } else if matches!(v, b'/' | b'\\' | b'%') || v < 0x20 || v == 0x7f {
            return None;
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Some(out)
}

/// RFC 3986 §5.2.4 for an absolute path, keeping empty segments; `None` when `..` would climb
/// above the root.
fn remove_dot_segments(path: &str) -> Option<String> {
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    for (i, s) in segs.into_iter().enumerate() {
        match s {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop()?;
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() {
        result.push('/');
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Option<String> {
        normalize_path(p)
    }

    fn bp(patterns: &[&str]) -> BypassPaths {
        BypassPaths::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn default_bp() -> BypassPaths {
        bp(&["/.well-known/*", "/healthz", "/readyz", "/livez"])
    }

    #[test]
    fn normalisation() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/", Some("/")),
            ("/healthz", Some("/healthz")),
            ("/healthz?x=1", Some("/healthz")),
            ("/healthz#frag", Some("/healthz")),
            ("/healthz?a=/../admin", Some("/healthz")),
            ("/%68ealthz", Some("/healthz")),
            ("/%68%65%61%6C%74%68%7a", Some("/healthz")),
            ("/a/./b", Some("/a/b")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/.", Some("/")),
            ("/a/b/../c", Some("/a/c")),
            ("/healthz/../admin", Some("/admin")),
            ("/.well-known/%2e%2e/admin", Some("/admin")),
            ("/.well-known/%2E%2E/admin", Some("/admin")),
            ("/.well-known/.%2e/admin", Some("/admin")),
            ("/.well-known/%2e/x", Some("/.well-known/x")),
            ("//healthz", Some("//healthz")),
            ("/a//b", Some("/a//b")),
            ("/a//../b", Some("/a/b")),
            ("/a%20b", Some("/a%20b")),
            ("/a%3ab", Some("/a%3Ab")),
            ("/caf%C3%A9", Some("/caf%C3%A9")),
            ("/x/%7euser", Some("/x/~user")),
            ("/..", None),
            ("/../healthz", None),
            ("/healthz/../../healthz", None),
            ("/%2e%2e/healthz", None),
            ("/.well-known/..%2fadmin", None),
            ("/.well-known/..%2Fadmin", None),
            ("/healthz%2F..", None),
            ("/healthz%2f", None),
            ("/a%5c..%5cadmin", None),
            ("/a\\..\\admin", None),
            ("/healthz\\", None),
            ("/%252e%252e/admin", None),
            ("/a%25", None),
            ("/a%", None),
            ("/a%2", None),
            ("/a%zz", None),
            ("/a%00", None),
            ("/a%0a", None),
            ("/a%7F", None),
            ("/..;/admin", None),
            ("/.well-known/..;/admin", None),
            ("/a..b", None),
            ("/...", None),
            ("/a b", None),
            ("/a\tb", None),
            ("/caf\u{e9}", None),
            ("healthz", None),
            ("", None),
            ("*", None),
            ("?/healthz", None),
            ("http://host/healthz", None),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw).as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn traversal_tricks_never_bypass() {
        let b = default_bp();
        for p in [
            "/healthz/../admin",
            "/.well-known/%2e%2e/admin",
            "/.well-known/%2E%2E/admin",
            "/.well-known/..%2fadmin",
            "/.well-known/..%2Fadmin",
            "/.well-known/..%5cadmin",
            "/.well-known/..\\admin",
            "/.well-known/..;/admin",
            "/.well-known/%252e%252e/admin",
            "/.well-known/x/../../admin",
            "/.well-known/a/b",
            "/.well-known/a%2fb",
            "/.well-known",
            "//healthz",
            "/healthz/",
            "/healthz%2F..",
            "/healthz%2f",
            "/healthz/.",
            "/healthz/x",
            "/healthz;x",
            "/HEALTHZ",
            "/healthz%20",
            "/../healthz",
            "/admin?/healthz",
            "/admin#/healthz",
            "/%2e%2e/healthz",
            "/./../healthz",
            "healthz",
            "*",
            "",
        ] {
            assert!(!b.matches(p), "{p:?} must not bypass");
        }
    }

    #[test]
    fn legitimate_bypasses() {
        let b = default_bp();
        for p in [
            "/healthz",
            "/healthz?probe=1",
            "/readyz",
            "/livez",
            "/%68ealthz",
            "/%68%65%61%6c%74%68%7A",
            "/.well-known/openid-configuration",
            "/.well-known/agent.json",
            "/.well-known/agent-card.json?x=/../admin",
            "/%2Ewell-known/jwks.json",
            "/.well-known/",
            "/.well-known/./x",
            "/admin/../healthz",
            "/x/%2e%2e/healthz",
        ] {
            assert!(b.matches(p), "{p:?} should bypass");
        }
    }

    #[test]
    fn star_stays_in_segment() {
        let b = bp(&["/api/*/status", "/files/*.json", "/v*"]);
        assert!(b.matches("/api/x/status"));
        assert!(b.matches("/api//status"));
        assert!(!b.matches("/api/x/y/status"));
        assert!(!b.matches("/api/x%2Fy/status"));
        assert!(b.matches("/files/a.json"));
        assert!(b.matches("/files/.json"));
        assert!(!b.matches("/files/a/b.json"));
        assert!(!b.matches("/files/a.jsonx"));
        assert!(b.matches("/v1"));
        assert!(b.matches("/v"));
        assert!(!b.matches("/v1/x"));
        let b = bp(&["/*"]);
        assert!(b.matches("/anything"));
        assert!(b.matches("/"));
        assert!(!b.matches("/a/b"));
        assert!(!b.matches("//"));
    }

    #[test]
    fn subtree() {
        let b = bp(&["/static/**"]);
        assert!(b.matches("/static/"));
        assert!(b.matches("/static/a"));
        assert!(b.matches("/static/a/b/c.css"));
        assert!(b.matches("/static//x"));
        assert!(!b.matches("/static"));
        assert!(!b.matches("/staticx/a"));
        assert!(!b.matches("/static/../admin"));
        assert!(!b.matches("/static/%2e%2e/admin"));
        assert!(!b.matches("/static/..%2fadmin"));
        assert!(!b.matches("/static/a/../../admin"));
        assert!(b.matches("/static/a/../b"));
        let b = bp(&["/*/public/**"]);
        assert!(b.matches("/t1/public/x/y"));
        assert!(!b.matches("/t1/private/x"));
        let b = bp(&["/**"]);
        assert!(b.matches("/"));
        assert!(b.matches("/anything/at/all"));
        assert!(!b.matches("/../x"));
    }

    #[test]
    fn glob_backtracking() {
        assert!(glob_segment(b"a*b*c", b"aXXbYYc"));
        assert!(glob_segment(b"a*b*c", b"abbc"));
        assert!(!glob_segment(b"a*b*c", b"abcx"));
        assert!(glob_segment(b"*", b""));
        assert!(glob_segment(b"**x", b"yyx"));
        assert!(glob_segment(b"*.json", b"a.b.json"));
        assert!(!glob_segment(b"abc", b"ab"));
        assert!(!glob_segment(b"ab", b"abc"));
        assert!(glob_segment(b"", b""));
    }

    #[test]
    fn bad_patterns() {
        for p in [
            "healthz",
            "",
            "/a?b",
            "/a#",
            "/a%20",
            "/a\\b",
            "/a b",
            "/[ab]",
            "/{a,b}",
            "/a/**/b",
            "/a**",
            "/**/x",
            "/a/../b",
            "/a/./b",
            "/..",
            "/caf\u{e9}",
        ] {
            assert!(BypassPaths::new(&[p.to_string()]).is_err(), "{p:?}");
        }
        assert_eq!(
            BypassPaths::validate_pattern("bad").unwrap_err(),
            "must start with '/'"
        );
        assert!(BypassPaths::validate_pattern("/.well-known/*").is_ok());
        let e = BypassPaths::new(&["/ok".into(), "bad".into()]).unwrap_err();
        assert!(e.contains("bypass_paths[1]"), "{e}");
        assert!(BypassPaths::new(&[]).unwrap().is_empty());
        assert!(!BypassPaths::new(&[]).unwrap().matches("/healthz"));
    }
}
