//! The small commands of the `authbridge` binary (CONTRACT §2, §3, §4, §6), driven as a user
//! would: `routes explain`, `check`, `version`, `init-iptables --dry-run`, and usage errors.

use authbridge_e2e::{bin, run_cli, TempDir};
use serde_json::{json, Value};
use std::path::Path;

/// Variables `init-iptables` (and `${VAR}` expansion in the configs below) read; removed from
/// every child started through [`run_env`] so the caller's environment cannot leak in.
const CLEARED_ENV: &[&str] = &[
    "RUST_LOG",
    "SPIFFE_ENDPOINT_SOCKET",
    "PROXY_PORT",
    "INBOUND_PROXY_PORT",
    "PROXY_UID",
    "ADMIN_PORT",
    "OUTBOUND_PORTS_EXCLUDE",
    "INBOUND_PORTS_EXCLUDE",
    "POD_IP",
    "CAPTURE_IPV6",
    "PROXY_MARK",
    "SSH_PORT",
    "ZTUNNEL_UID",
    "ZTUNNEL_INBOUND_PORT",
    "ZTUNNEL_OUTBOUND_PORT",
    "ZTUNNEL_TUNNEL_PORT",
    "AB_CLI_TEST_UNSET",
    "AB_CLI_TEST_POLICY",
    "AB_CLI_TEST_LISTEN",
    "AB_CLI_TEST_AUD",
];

/// Runs the binary with `env` set (and [`CLEARED_ENV`] otherwise removed).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args);
    for k in CLEARED_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run authbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A YAML single-quoted scalar: nothing is an escape inside it except `''`.
fn yaml_sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A YAML double-quoted scalar written JSON-style (JSON strings are YAML double-quoted scalars).
fn yaml_dq(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `routes explain --json`: (exit code, one parsed object per stdout line, stderr).
fn explain(args: &[&str], hosts: &[&str]) -> (i32, Vec<Value>, String) {
    let mut all: Vec<&str> = vec!["routes", "explain", "--json"];
    all.extend_from_slice(args);
    all.push("--");
    all.extend_from_slice(hosts);
    let (code, out, err) = run_env(&all, &[]);
    let lines = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\nstdout:\n{out}\nstderr:\n{err}"))
        })
        .collect();
    (code, lines, err)
}

/// Like [`explain`] but requires success and one line per host, in order.
fn explain_ok(args: &[&str], hosts: &[&str]) -> Vec<Value> {
    let (code, lines, err) = explain(args, hosts);
    assert_eq!(code, 0, "routes explain {args:?} {hosts:?} failed:\n{err}");
    assert_eq!(
        lines.len(),
        hosts.len(),
        "one JSON line per host expected: {lines:?}\nstderr:\n{err}"
    );
    for (l, h) in lines.iter().zip(hosts) {
        assert_eq!(
            l["host"],
            json!(h),
            "lines out of order or host not echoed: {l}"
        );
    }
    lines
}

/// `check --config FILE`.
fn check(cfg: &Path) -> (i32, String, String) {
    run_env(&["check", "--config", &p(cfg)], &[])
}

fn warning_lines(stdout: &str, stderr: &str) -> Vec<String> {
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| {
            l.trim_start().to_ascii_lowercase().starts_with("warning") || l.contains(" WARN ")
        })
        .map(str::to_string)
        .collect()
}

/// Whether an error message names route `i` of a list (`route 1`, `routes[1]`, `.[1]`, …).
fn names_index(msg: &str, i: usize) -> bool {
    msg.contains(&format!("route {i}"))
        || msg.contains(&format!("[{i}]"))
        || msg.contains(&format!("route #{i}"))
}

// ---------------------------------------------------------------------------------------------
// 1. routes explain agrees with every row of tests/data/glob_cases.txt
// ---------------------------------------------------------------------------------------------

/// (pattern, [(host, should_match)]) in file order, one entry per distinct pattern.
fn glob_cases() -> Vec<(String, Vec<(String, bool)>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/glob_cases.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut groups: Vec<(String, Vec<(String, bool)>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            3,
            "{path}:{}: expected pattern<TAB>host<TAB>match|nomatch: {line:?}",
            n + 1
        );
        let expect = match cols[2].trim() {
            "match" => true,
            "nomatch" => false,
            other => panic!("{path}:{}: bad expectation {other:?}", n + 1),
        };
        let (pattern, host) = (cols[0].to_string(), cols[1].to_string());
        match groups.iter_mut().find(|(pat, _)| *pat == pattern) {
            Some((_, hosts)) => hosts.push((host, expect)),
            None => groups.push((pattern, vec![(host, expect)])),
        }
    }
    groups
}

#[test]
fn explain_agrees_with_glob_case_table() {
    let dir = TempDir::new("cli-glob");
    let groups = glob_cases();
    let mut rows = 0usize;
    let mut failures = Vec::new();
    for (gi, (pattern, cases)) in groups.iter().enumerate() {
        let hosts: Vec<&str> = cases.iter().map(|(h, _)| h.as_str()).collect();
        // Both YAML quoting styles must deliver the same pattern (backslashes included).
        for (style, quoted) in [
            ("single-quoted", yaml_sq(pattern)),
            ("double-quoted", yaml_dq(pattern)),
        ] {
            let file = dir.write(
                &format!("routes-{gi}-{}.yaml", &style[..6]),
                &format!("# pattern {gi}\n- host: {quoted}\n  passthrough: true\n"),
            );
            let (code, lines, err) = explain(&["--routes", &p(&file)], &hosts);
            if code != 0 || lines.len() != hosts.len() {
                failures.push(format!(
                    "pattern {pattern:?} ({style} {quoted}): exit {code}, {} line(s) for {} host(s); stderr: {}",
                    lines.len(),
                    hosts.len(),
                    err.trim()
                ));
                continue;
            }
            for ((host, expect), line) in cases.iter().zip(&lines) {
                if style == "single-quoted" {
                    rows += 1;
                }
                let want = if *expect { json!(0) } else { Value::Null };
                if line["host"] != json!(host) || line["route"] != want {
                    failures.push(format!(
                        "pattern {pattern:?} ({style}) host {host:?}: expected route {want} ({}), got {line}",
                        if *expect { "match" } else { "nomatch" }
                    ));
                }
                // The route is a passthrough route and the default policy is passthrough too.
                if line["action"] != json!("passthrough") {
                    failures.push(format!(
                        "pattern {pattern:?} host {host:?}: action {}",
                        line["action"]
                    ));
                }
            }
        }
    }
    println!(
        "glob_cases.txt: {rows} rows over {} patterns checked through `routes explain --json`",
        groups.len()
    );
    assert!(
        failures.is_empty(),
        "{} disagreement(s) with glob_cases.txt:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        rows > 150,
        "only {rows} rows checked; the case table looks truncated"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. the JSON shape of §2
// ---------------------------------------------------------------------------------------------

const SHAPE_ROUTES: &str = r#"
- host: "api.example.com"
  target_audience: api-aud
  token_scopes: "openid api.read"
- host: "::1"
  target_audience: "spiffe://example.org/ns/x/sa/local"
  token_scopes: [openid, local.write]
- host: "*.internal.svc"
  passthrough: true
- host: "blocked.example"
  action: deny
- host: "bare.example"
  action: exchange
"#;

fn assert_exact_keys(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "action",
            "audience",
            "host",
            "normalized",
            "route",
            "scopes"
        ],
        "keys of {v}"
    );
}

#[test]
fn explain_json_shape_and_normalization() {
    let dir = TempDir::new("cli-shape");
    let routes = dir.write("routes.yaml", SHAPE_ROUTES);
    let hosts = [
        "API.Example.COM.:443",
        "[::1]:8080",
        "[::1]",
        "::1",
        "Mcp.Internal.SVC",
        "blocked.example:80",
        "bare.example",
        "nowhere.example.org.",
        "[FE80::AbC]:9",
    ];
    let lines = explain_ok(&["--routes", &p(&routes)], &hosts);
    for l in &lines {
        assert_exact_keys(l);
    }
    let expected = [
        json!({"host": "API.Example.COM.:443", "normalized": "api.example.com", "route": 0, "action": "exchange",
               "audience": "api-aud", "scopes": "openid api.read"}),
        json!({"host": "[::1]:8080", "normalized": "::1", "route": 1, "action": "exchange",
               "audience": "spiffe://example.org/ns/x/sa/local", "scopes": "openid local.write"}),
        json!({"host": "[::1]", "normalized": "::1", "route": 1, "action": "exchange",
               "audience": "spiffe://example.org/ns/x/sa/local", "scopes": "openid local.write"}),
        json!({"host": "::1", "normalized": "::1", "route": 1, "action": "exchange",
               "audience": "spiffe://example.org/ns/x/sa/local", "scopes": "openid local.write"}),
        json!({"host": "Mcp.Internal.SVC", "normalized": "mcp.internal.svc", "route": 2, "action": "passthrough",
               "audience": null, "scopes": null}),
        json!({"host": "blocked.example:80", "normalized": "blocked.example", "route": 3, "action": "deny",
               "audience": null, "scopes": null}),
        json!({"host": "bare.example", "normalized": "bare.example", "route": 4, "action": "exchange",
               "audience": null, "scopes": null}),
        json!({"host": "nowhere.example.org.", "normalized": "nowhere.example.org", "route": null, "action": "passthrough",
               "audience": null, "scopes": null}),
        json!({"host": "[FE80::AbC]:9", "normalized": "fe80::abc", "route": null, "action": "passthrough",
               "audience": null, "scopes": null}),
    ];
    for (got, want) in lines.iter().zip(&expected) {
        assert_eq!(got, want);
    }
}

#[test]
fn explain_unmatched_host_gets_default_policy() {
    let dir = TempDir::new("cli-default");
    let routes = dir.write("routes.yaml", SHAPE_ROUTES);
    let unmatched = ["unknown.example.net", "10.9.8.7:443"];
    for (policy, cfg_text) in [
        (
            "deny",
            Some("outbound:\n  default_policy: deny\n".to_string()),
        ),
        (
            "passthrough",
            Some("outbound:\n  default_policy: passthrough\n".to_string()),
        ),
        (
            "exchange",
            Some("outbound:\n  default_policy: exchange\n".to_string()),
        ),
        ("passthrough", Some(String::new())), // empty config = defaults
        ("passthrough", None),                // no config at all = defaults
    ] {
        let cfg = cfg_text.map(|t| dir.write(&format!("config-{policy}-{}.yaml", t.len()), &t));
        let mut args = vec!["--routes".to_string(), p(&routes)];
        if let Some(c) = &cfg {
            args.extend(["--config".to_string(), p(c)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let lines = explain_ok(&args, &unmatched);
        for l in &lines {
            assert_exact_keys(l);
            assert_eq!(l["route"], Value::Null, "{cfg:?}: {l}");
            assert_eq!(l["action"], json!(policy), "{cfg:?}: {l}");
            assert_eq!(l["audience"], Value::Null, "{l}");
            assert_eq!(l["scopes"], Value::Null, "{l}");
        }
        // A matched host is not affected by the default policy.
        let lines = explain_ok(&args, &["x.internal.svc"]);
        assert_eq!(lines[0]["route"], json!(2));
        assert_eq!(lines[0]["action"], json!("passthrough"));
    }
}

#[test]
fn explain_text_output_names_route_and_default() {
    let dir = TempDir::new("cli-text");
    let routes = dir.write("routes.yaml", SHAPE_ROUTES);
    let (code, out, err) = run_env(
        &[
            "routes",
            "explain",
            "--routes",
            &p(&routes),
            "api.example.com",
            "nowhere.example",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("api.example.com")
            && lines[0].contains('0')
            && lines[0].contains("exchange"),
        "{out}"
    );
    assert!(
        lines[0].contains("api-aud") && lines[0].contains("openid api.read"),
        "{out}"
    );
    assert!(
        lines[1].contains("nowhere.example") && lines[1].contains("passthrough"),
        "{out}"
    );
    assert!(
        serde_json::from_str::<Value>(lines[0]).is_err(),
        "without --json the output is not JSON: {out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. index counting: the file's routes first, then the inline ones; --routes overrides
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_counts_file_routes_then_inline_routes() {
    let dir = TempDir::new("cli-index");
    let file = dir.write(
        "routes.yaml",
        "- host: file-a.example\n  target_audience: fa\n- host: file-b.example\n  passthrough: true\n",
    );
    let other = dir.write("other.yaml", "- host: other.example\n  action: deny\n");
    let cfg = dir.write(
        "config.yaml",
        &format!(
            "outbound:\n  routes_file: {}\n  routes:\n    - host: inline-one.example\n      target_audience: in1\n      token_scopes: \"s1 s2\"\n    - host: \"*.example\"\n      passthrough: true\n",
            yaml_sq(&p(&file))
        ),
    );
    let hosts = [
        "file-a.example",
        "file-b.example",
        "inline-one.example",
        "zzz.example",
        "other.example",
        "nope.test",
    ];
    let lines = explain_ok(&["--config", &p(&cfg)], &hosts);
    let got: Vec<&Value> = lines.iter().map(|l| &l["route"]).collect();
    assert_eq!(
        got,
        [
            &json!(0),
            &json!(1),
            &json!(2),
            &json!(3),
            &json!(3),
            &Value::Null
        ],
        "{lines:?}"
    );
    assert_eq!(lines[2]["audience"], json!("in1"));
    assert_eq!(lines[2]["scopes"], json!("s1 s2"));
    assert_eq!(lines[2]["action"], json!("exchange"));

    // --routes replaces the config's routes_file; inline routes still follow it.
    let lines = explain_ok(&["--config", &p(&cfg), "--routes", &p(&other)], &hosts);
    let got: Vec<&Value> = lines.iter().map(|l| &l["route"]).collect();
    // file-a / file-b now fall to the inline `*.example` (index 2), inline-one is index 1.
    assert_eq!(
        got,
        [
            &json!(2),
            &json!(2),
            &json!(1),
            &json!(2),
            &json!(0),
            &Value::Null
        ],
        "{lines:?}"
    );
    assert_eq!(lines[4]["action"], json!("deny"));

    // --routes before --config on the command line means the same.
    let lines2 = explain_ok(&["--routes", &p(&other), "--config", &p(&cfg)], &hosts);
    assert_eq!(lines, lines2);
}

#[test]
fn explain_missing_routes_file_in_config_means_no_file_routes() {
    let dir = TempDir::new("cli-missing");
    let cfg = dir.write(
        "config.yaml",
        &format!(
            "outbound:\n  routes_file: {}\n  routes:\n    - host: inline.example\n      passthrough: true\n",
            yaml_sq(&p(&dir.path().join("does-not-exist.yaml")))
        ),
    );
    let lines = explain_ok(&["--config", &p(&cfg)], &["inline.example"]);
    assert_eq!(lines[0]["route"], json!(0));
    assert_eq!(lines[0]["action"], json!("passthrough"));
}

#[test]
fn explain_with_explicit_missing_routes_file_is_an_error() {
    let dir = TempDir::new("cli-missing2");
    let missing = dir.path().join("nope.yaml");
    let (code, lines, err) = explain(&["--routes", &p(&missing)], &["a.example"]);
    assert_eq!(code, 2, "explicit --routes to a missing file: {err}");
    assert!(lines.is_empty());
    assert!(err.contains(&p(&missing)), "error names the file: {err}");
}

// ---------------------------------------------------------------------------------------------
// 4. kagenti spellings, conflicts, invalid patterns, unknown keys
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_accepts_both_kagenti_spellings() {
    let dir = TempDir::new("cli-spell");
    let routes = dir.write(
        "routes.yaml",
        r#"
- host: gen1-pass.example
  passthrough: true
- host: gen1-exch.example
  passthrough: false
  target_audience: g1
- host: gen2-pass.example
  action: passthrough
- host: gen2-exch.example
  action: exchange
  target_audience: g2
  token_scopes: "a b"
- host: gen2-deny.example
  action: deny
- host: both-pass.example
  passthrough: true
  action: passthrough
- host: both-exch.example
  passthrough: false
  action: exchange
  target_audience: g3
- host: plain.example
  target_audience: plain
"#,
    );
    let hosts = [
        "gen1-pass.example",
        "gen1-exch.example",
        "gen2-pass.example",
        "gen2-exch.example",
        "gen2-deny.example",
        "both-pass.example",
        "both-exch.example",
        "plain.example",
    ];
    let want = [
        "passthrough",
        "exchange",
        "passthrough",
        "exchange",
        "deny",
        "passthrough",
        "exchange",
        "exchange",
    ];
    let lines = explain_ok(&["--routes", &p(&routes)], &hosts);
    for (i, (l, w)) in lines.iter().zip(want).enumerate() {
        assert_eq!(l["route"], json!(i), "{l}");
        assert_eq!(l["action"], json!(w), "{l}");
    }
    assert_eq!(
        lines[0]["audience"],
        Value::Null,
        "passthrough route has no audience"
    );
    assert_eq!(lines[3]["audience"], json!("g2"));
    assert_eq!(lines[3]["scopes"], json!("a b"));
}

#[test]
fn conflicting_spellings_are_a_config_error() {
    let dir = TempDir::new("cli-conflict");
    for (name, body) in [
        (
            "conflict1.yaml",
            "  passthrough: true\n  action: exchange\n",
        ),
        (
            "conflict2.yaml",
            "  passthrough: false\n  action: passthrough\n",
        ),
        ("conflict3.yaml", "  passthrough: true\n  action: deny\n"),
    ] {
        let routes = dir.write(
            name,
            &format!(
                "- host: fine.example\n  passthrough: true\n- host: conflicted.example\n{body}"
            ),
        );
        let (code, lines, err) = explain(&["--routes", &p(&routes)], &["conflicted.example"]);
        assert_eq!(code, 2, "{name}: expected exit 2, stderr: {err}");
        assert!(lines.is_empty(), "{name}: no answer on error: {lines:?}");
        assert!(
            err.contains(&p(&routes)),
            "{name}: error names the file: {err}"
        );
        assert!(
            names_index(&err, 1) || err.contains("conflicted.example"),
            "{name}: error names the route: {err}"
        );
        assert!(
            err.contains("passthrough") && err.contains("action"),
            "{name}: error names both keys: {err}"
        );
    }
}

#[test]
fn invalid_patterns_are_a_config_error() {
    let dir = TempDir::new("cli-badpat");
    for (i, pattern) in ["{a,b", "[abc", "api.{x,y.example.com", "x[a-", "{a,{b,c}"]
        .iter()
        .enumerate()
    {
        let routes = dir.write(
            &format!("bad{i}.yaml"),
            &format!(
                "- host: ok.example\n  passthrough: true\n- host: {}\n  passthrough: true\n",
                yaml_sq(pattern)
            ),
        );
        let (code, lines, err) = explain(&["--routes", &p(&routes)], &["ok.example"]);
        assert_eq!(
            code, 2,
            "pattern {pattern:?} must be rejected, got exit {code}: {lines:?} {err}"
        );
        assert!(
            lines.is_empty(),
            "invalid pattern never silently skipped: {lines:?}"
        );
        assert!(err.contains(&p(&routes)), "names the file: {err}");
        assert!(names_index(&err, 1), "names route 1: {err}");
        assert!(
            err.contains(pattern),
            "names the pattern {pattern:?}: {err}"
        );
    }
    // The same in the config's inline routes, also through `check`.
    let cfg = dir.write(
        "config.yaml",
        "outbound:\n  routes_file: \"\"\n  routes:\n    - host: ok.example\n      passthrough: true\n    - host: \"[unterminated\"\n      passthrough: true\n",
    );
    for args in [
        vec![
            "routes",
            "explain",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "ok.example",
        ],
        vec!["check", "--config", cfg.to_str().unwrap()],
    ] {
        let (code, out, err) = run_env(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(&p(&cfg)) && err.contains("[unterminated"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("routes[1]") || names_index(&err, 1),
            "{args:?}: names the route: {err}"
        );
    }
}

#[test]
fn unknown_route_keys_and_bad_actions_are_config_errors() {
    let dir = TempDir::new("cli-routekey");
    let routes = dir.write(
        "r.yaml",
        "- host: a.example\n  passthrough: true\n- host: b.example\n  audiense: x\n",
    );
    let (code, _, err) = explain(&["--routes", &p(&routes)], &["a.example"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("audiense") && err.contains(&p(&routes)),
        "names the key and file: {err}"
    );

    let routes = dir.write("r2.yaml", "- host: a.example\n  action: allow\n");
    let (code, _, err) = explain(&["--routes", &p(&routes)], &["a.example"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("allow") && err.contains(&p(&routes)),
        "names the value and file: {err}"
    );

    // Not a list: kagenti's routes.yaml is a top-level list.
    let routes = dir.write("r3.yaml", "host: a.example\n");
    let (code, _, err) = explain(&["--routes", &p(&routes)], &["a.example"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&p(&routes)), "{err}");

    // Same for an inline route in the config.
    let cfg = dir.write(
        "c.yaml",
        "outbound:\n  routes_file: \"\"\n  routes:\n    - host: a.example\n      scopes: x\n",
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("scopes") && err.contains(&p(&cfg)), "{err}");

    // A routes file with only comments is an empty list.
    let routes = dir.write("r4.yaml", "# nothing yet\n\n");
    let lines = explain_ok(&["--routes", &p(&routes)], &["a.example"]);
    assert_eq!(lines[0]["route"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// 5. check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_accepts_a_complete_config() {
    let dir = TempDir::new("cli-check-ok");
    let routes = dir.write(
        "routes.yaml",
        "- host: \"github-tool-mcp**\"\n  target_audience: github-tool\n  token_scopes: \"openid github-tool-aud\"\n  token_url: https://other-idp/token\n- host: \"*.internal.svc.cluster.local\"\n  passthrough: true\n- host: \"169.254.169.254\"\n  action: deny\n",
    );
    let cfg = dir.write(
        "config.yaml",
        &format!(
            r#"
identity:
  source: files
  svid_dir: {svid}
inbound:
  listen: 0.0.0.0:15124
  upstream: original-dst
  mtls: permissive
  allowed_peers: ["spiffe://example.org/ns/*/sa/*"]
  jwt:
    issuer: https://keycloak.example/realms/agents
    jwks_uri: http://keycloak.keycloak.svc:8080/realms/agents/protocol/openid-connect/certs
    audiences: [spiffe://example.org/ns/team1/sa/agent]
    clock_skew: 30s
outbound:
  listen: 0.0.0.0:15123
  token_url: http://keycloak.keycloak.svc:8080/realms/agents/protocol/openid-connect/token
  client_auth: jwt-spiffe
  default_policy: passthrough
  no_token_policy: deny
  routes_file: {routes}
  routes:
    - host: api.example.com
      target_audience: api
admin:
  listen: 127.0.0.1:9901
"#,
            svid = yaml_sq(&p(dir.path())),
            routes = yaml_sq(&p(&routes)),
        ),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        warning_lines(&out, &err).is_empty(),
        "a clean config has no warnings:\n{out}{err}"
    );
    assert!(!out.trim().is_empty(), "check says something on success");
}

#[test]
fn check_warns_about_shadowed_and_match_all_routes() {
    let dir = TempDir::new("cli-check-warn");
    let routes = dir.write(
        "routes.yaml",
        "- host: \"*.example.com\"\n  passthrough: true\n- host: api.example.com\n  action: deny\n- host: \"**\"\n  action: deny\n",
    );
    let cfg = dir.write(
        "config.yaml",
        &format!("outbound:\n  routes_file: {}\n", yaml_sq(&p(&routes))),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "warnings are not errors:\n{out}{err}");
    let warnings: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("api.example.com")
            && names_index(w, 1)
            && w.to_lowercase().contains("shadow")),
        "a `warning:` line names shadowed route 1 (api.example.com):\n{out}{err}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("**") && names_index(w, 2)),
        "a `warning:` line names match-all route 2 (**):\n{out}{err}"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| names_index(w, 0) && !w.contains("shadowed by route 0")),
        "route 0 is fine and is not warned about:\n{out}{err}"
    );

    // The same routes inline: the warnings name the config's inline route.
    let cfg = dir.write(
        "inline.yaml",
        "outbound:\n  routes_file: \"\"\n  routes:\n    - host: \"*.example.com\"\n      passthrough: true\n    - host: api.example.com\n      passthrough: true\n",
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .chain(err.lines())
            .any(|l| l.starts_with("warning:")
                && l.contains("api.example.com")
                && l.contains("routes[1]")),
        "{out}{err}"
    );
}

#[test]
fn check_rejects_unknown_keys() {
    let dir = TempDir::new("cli-check-keys");
    for (text, key) in [
        ("outbound:\n  tokn_url: https://x/token\n", "tokn_url"),
        ("bogus_section: 1\n", "bogus_section"),
        ("inbound:\n  jwt:\n    issuer: https://i\n    jwks_uri: https://i/jwks\n    audience: x\n", "audience"),
        ("admin:\n  port: 9901\n", "port"),
    ] {
        let cfg = dir.write("config.yaml", text);
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 2, "{text:?}: {out}{err}");
        assert!(err.contains(key), "{text:?}: error names {key}: {err}");
        assert!(err.contains(&p(&cfg)), "{text:?}: error names the file: {err}");
    }
}

#[test]
fn check_rejects_bad_values_naming_the_key() {
    let dir = TempDir::new("cli-check-values");
    for (text, key, value) in [
        (
            "inbound:\n  jwt:\n    issuer: https://i\n    jwks_uri: https://i/jwks\n    clock_skew: soonish\n",
            "clock_skew",
            "soonish",
        ),
        ("outbound:\n  exchange_timeout: ten\n", "exchange_timeout", "ten"),
        ("outbound:\n  listen: nowhere\n", "outbound.listen", "nowhere"),
        ("admin:\n  listen: 127.0.0.1\n", "admin.listen", "127.0.0.1"),
        ("inbound:\n  listen: \"0.0.0.0:99999\"\n", "inbound.listen", "99999"),
        ("outbound:\n  default_policy: allow\n", "default_policy", "allow"),
        ("inbound:\n  mtls: sometimes\n", "mtls", "sometimes"),
        ("outbound:\n  token_url: ftp://idp/token\n", "token_url", "ftp://idp/token"),
    ] {
        let cfg = dir.write("config.yaml", text);
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 2, "{text:?}: {out}{err}");
        assert!(err.contains(key), "{text:?}: error names {key}: {err}");
        assert!(err.contains(value), "{text:?}: error quotes {value}: {err}");
        assert!(err.contains(&p(&cfg)), "{text:?}: error names the file: {err}");
    }
}

#[test]
fn check_unset_variable_without_default_names_the_line() {
    let dir = TempDir::new("cli-check-env");
    let cfg = dir.write(
        "config.yaml",
        "# line 1\noutbound:\n  listen: 127.0.0.1:15123\n  token_url: ${AB_CLI_TEST_UNSET}\n",
    );
    let (code, out, err) = run_env(&["check", "--config", &p(&cfg)], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("AB_CLI_TEST_UNSET"),
        "names the variable: {err}"
    );
    assert!(err.contains("line 4"), "names the line: {err}");
    assert!(err.contains(&p(&cfg)), "names the file: {err}");

    // Once it is set, the same file is fine.
    let (code, out, err) = run_env(
        &["check", "--config", &p(&cfg)],
        &[("AB_CLI_TEST_UNSET", "https://idp.example/token")],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn config_variable_defaults_expand() {
    let dir = TempDir::new("cli-check-envdef");
    let cfg = dir.write(
        "config.yaml",
        "outbound:\n  default_policy: ${AB_CLI_TEST_POLICY:-deny}\n  routes_file: \"\"\n  routes:\n    - host: aud.example\n      action: ${AB_CLI_TEST_POLICY:-passthrough}\n      target_audience: ${AB_CLI_TEST_AUD:-the-default-aud}\n",
    );
    let run = |env: &[(&str, &str)]| -> Vec<Value> {
        let (code, out, err) = run_env(
            &[
                "routes",
                "explain",
                "--json",
                "--config",
                &p(&cfg),
                "--",
                "aud.example",
                "other.example",
            ],
            env,
        );
        assert_eq!(code, 0, "{env:?}: {out}{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Unset: the defaults.
    let l = run(&[]);
    assert_eq!(l[0]["action"], json!("passthrough"), "{l:?}");
    assert_eq!(l[0]["audience"], json!("the-default-aud"), "{l:?}");
    assert_eq!(l[1]["action"], json!("deny"), "{l:?}");
    // Set: the environment wins.
    let l = run(&[
        ("AB_CLI_TEST_POLICY", "exchange"),
        ("AB_CLI_TEST_AUD", "from-env"),
    ]);
    assert_eq!(l[0]["action"], json!("exchange"), "{l:?}");
    assert_eq!(l[0]["audience"], json!("from-env"), "{l:?}");
    assert_eq!(l[1]["action"], json!("exchange"), "{l:?}");

    // A default that is itself invalid proves it was used: check names the key and value.
    let cfg2 = dir.write(
        "listen.yaml",
        "outbound:\n  listen: ${AB_CLI_TEST_LISTEN:-not-an-address}\n",
    );
    let (code, out, err) = run_env(&["check", "--config", &p(&cfg2)], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("outbound.listen") && err.contains("not-an-address"),
        "{err}"
    );
    let (code, out, err) = run_env(
        &["check", "--config", &p(&cfg2)],
        &[("AB_CLI_TEST_LISTEN", "127.0.0.1:25123")],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_exchange_route_requires_token_url() {
    let dir = TempDir::new("cli-check-tokenurl");
    let routes = dir.write(
        "routes.yaml",
        "- host: tool.example\n  target_audience: tool\n",
    );
    let base = format!(
        "identity:\n  source: files\n  svid_dir: {}\noutbound:\n  routes_file: {}\n",
        yaml_sq(&p(dir.path())),
        yaml_sq(&p(&routes))
    );
    let cfg = dir.write("config.yaml", &base);
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("outbound.token_url"),
        "names outbound.token_url: {err}"
    );
    assert!(err.contains(&p(&cfg)), "names the file: {err}");

    // A global token_url fixes it; so does a per-route one.
    let cfg = dir.write(
        "with-url.yaml",
        &format!("{base}  token_url: https://idp.example/token\n"),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    let routes2 = dir.write(
        "routes2.yaml",
        "- host: tool.example\n  target_audience: tool\n  token_url: http://idp.svc:8080/token\n",
    );
    let cfg = dir.write(
        "per-route.yaml",
        &format!(
            "identity:\n  source: files\n  svid_dir: {}\noutbound:\n  routes_file: {}\n",
            yaml_sq(&p(dir.path())),
            yaml_sq(&p(&routes2))
        ),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");

    // Only exchange routes need it: passthrough/deny routes without token_url are fine.
    let routes3 = dir.write(
        "routes3.yaml",
        "- host: a.example\n  passthrough: true\n- host: b.example\n  action: deny\n",
    );
    let cfg = dir.write(
        "no-exchange.yaml",
        &format!("outbound:\n  routes_file: {}\n", yaml_sq(&p(&routes3))),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_client_secret_requires_secret_file() {
    let dir = TempDir::new("cli-check-secret");
    let base = "outbound:\n  routes_file: \"\"\n  token_url: https://idp.example/token\n  client_id: agent\n  client_auth: client-secret\n  routes:\n    - host: tool.example\n      target_audience: tool\n";
    let cfg = dir.write("config.yaml", base);
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("client_secret_file"),
        "names client_secret_file: {err}"
    );
    assert!(err.contains(&p(&cfg)), "names the file: {err}");

    let secret = dir.write("secret", "  s3cr3t\n");
    let cfg = dir.write(
        "ok.yaml",
        &format!("{base}  client_secret_file: {}\n", yaml_sq(&p(&secret))),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("s3cr3t") && !err.contains("s3cr3t"),
        "the secret is never printed"
    );
}

#[test]
fn check_empty_config_is_valid_and_warns() {
    let dir = TempDir::new("cli-check-empty");
    for (name, text) in [("empty.yaml", ""), ("blank.yaml", "\n   \n")] {
        let cfg = dir.write(name, text);
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 0, "{name}: {out}{err}");
        let warnings = warning_lines(&out, &err);
        assert!(
            warnings.iter().any(|w| w.contains("validate")
                && (w.contains("nothing") || w.contains("not validated"))),
            "{name}: a warning says nothing is validated:\n{out}{err}"
        );
    }
}

#[test]
fn check_missing_config_file_names_it() {
    let dir = TempDir::new("cli-check-missing");
    let cfg = dir.path().join("absent.yaml");
    let (code, out, err) = check(&cfg);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains(&p(&cfg)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 6. version and usage errors
// ---------------------------------------------------------------------------------------------

#[test]
fn version_prints_the_version() {
    let (code, out, err) = run_cli(&["version"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("authbridge"), "{out}");
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "version {} in {out:?}",
        env!("CARGO_PKG_VERSION")
    );
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &[][..],
        &["check"][..],
        &["routes"][..],
        &["routes", "explain"][..],
        &["routes", "explain", "--json"][..],
        &["routes", "explain", "--no-such-flag", "a.example"][..],
        &["routes", "frob", "a.example"][..],
        &["init-iptables", "--dry-run", "--no-such-flag"][..],
        &["run"][..],
        &["--log-format", "xml", "version"][..],
    ] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: exit {code}\n{out}{err}");
        assert!(
            !err.trim().is_empty(),
            "{args:?}: says what is wrong on stderr"
        );
    }
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "check", "routes", "init-iptables", "version"] {
        assert!(out.contains(cmd), "--help lists {cmd}: {out}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. init-iptables --dry-run
// ---------------------------------------------------------------------------------------------

fn nat_table_has_authbridge_chains() -> Option<bool> {
    let mut any = None;
    for tool in ["iptables-save", "ip6tables-save"] {
        if let Ok(o) = std::process::Command::new(tool)
            .args(["-t", "nat"])
            .output()
        {
            if o.status.success() {
                let has = String::from_utf8_lossy(&o.stdout).contains("AUTHBRIDGE");
                any = Some(any.unwrap_or(false) || has);
            }
        }
    }
    any
}

#[test]
fn init_iptables_dry_run_prints_rules() {
    let before = nat_table_has_authbridge_chains();
    let (code, out, err) = run_env(
        &[
            "init-iptables",
            "--dry-run",
            "--outbound-ports-exclude",
            "5432,8000-8002",
            "--pod-ip",
            "10.1.2.3",
        ],
        &[],
    );
    if code != 0
        && (err.contains("No such file") || err.contains("not found"))
        && which("iptables").is_none()
    {
        println!("skipping: iptables is not installed and the dry run needs it: {err}");
        return;
    }
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("*nat"),
        "iptables-restore text with *nat:\n{out}"
    );
    assert!(
        out.contains("COMMIT"),
        "iptables-restore text ends with COMMIT:\n{out}"
    );
    assert_eq!(
        out.matches("*nat").count(),
        out.matches("COMMIT").count(),
        "every *nat block is committed:\n{out}"
    );
    let nat = out.find("*nat").unwrap();
    assert!(out[nat..].contains("COMMIT"), "COMMIT after *nat:\n{out}");
    assert!(
        out.lines().any(|l| l.starts_with("-A")
            && l.contains("REDIRECT")
            && l.contains("--to-ports 15123")),
        "outbound REDIRECT to 15123:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("-A")
            && l.contains("REDIRECT")
            && l.contains("--to-ports 15124")),
        "inbound REDIRECT to 15124:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("--uid-owner 1337")
                && (l.contains("RETURN") || l.contains("ACCEPT"))),
        "the proxy's uid 1337 is exempt:\n{out}"
    );
    let exempt = |port: &str| {
        out.lines().any(|l| {
            l.contains(port)
                && l.contains("--dport")
                && (l.contains("RETURN") || l.contains("ACCEPT"))
        })
    };
    assert!(exempt("5432"), "port 5432 excluded:\n{out}");
    assert!(
        exempt("8000:8002") || (exempt("8000") && exempt("8001") && exempt("8002")),
        "ports 8000-8002 excluded:\n{out}"
    );
    // Every rule line is in iptables-restore syntax.
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            l.starts_with('#')
                || l.starts_with('*')
                || l.starts_with(':')
                || l.starts_with("-A ")
                || l.starts_with("-I ")
                || l == "COMMIT",
            "not iptables-restore syntax: {l:?}\n{out}"
        );
    }
    // Nothing was applied.
    if before == Some(false) {
        assert_eq!(
            nat_table_has_authbridge_chains(),
            Some(false),
            "--dry-run must not install chains"
        );
    }
}

#[test]
fn init_iptables_reads_kagenti_environment() {
    let (code, out, err) = run_env(
        &["init-iptables", "--dry-run"],
        &[
            ("PROXY_PORT", "16123"),
            ("INBOUND_PROXY_PORT", "16124"),
            ("PROXY_UID", "2001"),
            ("OUTBOUND_PORTS_EXCLUDE", "6379"),
        ],
    );
    if code != 0 && which("iptables").is_none() {
        println!("skipping: iptables is not installed: {err}");
        return;
    }
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("--to-ports 16123") && out.contains("--to-ports 16124"),
        "{out}"
    );
    assert!(!out.contains("--to-ports 15123"), "{out}");
    assert!(out.contains("--uid-owner 2001"), "{out}");
    assert!(out.lines().any(|l| l.contains("--dport 6379")), "{out}");

    // A flag wins over the environment.
    let (code, out, err) = run_env(
        &["init-iptables", "--dry-run", "--proxy-port", "17123"],
        &[("PROXY_PORT", "16123")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("--to-ports 17123") && !out.contains("--to-ports 16123"),
        "{out}"
    );
}

#[test]
fn init_iptables_rejects_junk_naming_variable_and_value() {
    // Flag and environment spellings of a bad port list.
    // (flags, environment, name the error must give, value it must quote)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--outbound-ports-exclude", "80,abc"],
            vec![],
            "OUTBOUND",
            "abc",
        ),
        (
            vec![],
            vec![("OUTBOUND_PORTS_EXCLUDE", "80,abc")],
            "OUTBOUND_PORTS_EXCLUDE",
            "abc",
        ),
        (
            vec!["--inbound-ports-exclude", "70000"],
            vec![],
            "INBOUND",
            "70000",
        ),
        (
            vec![],
            vec![("INBOUND_PORTS_EXCLUDE", "9000-8000")],
            "INBOUND_PORTS_EXCLUDE",
            "9000-8000",
        ),
        (vec!["--pod-ip", "10.1.2"], vec![], "POD_IP", "10.1.2"),
        (vec![], vec![("PROXY_PORT", "http")], "PROXY_PORT", "http"),
        (vec!["--proxy-uid", "root"], vec![], "PROXY_UID", "root"),
        (
            vec!["--backend", "iptables-ng"],
            vec![],
            "backend",
            "iptables-ng",
        ),
    ];
    for (flags, env, name, value) in cases {
        let mut args = vec!["init-iptables", "--dry-run"];
        args.extend(&flags);
        let (code, out, err) = run_env(&args, &env);
        assert_eq!(code, 2, "{flags:?} {env:?}: exit {code}\n{out}{err}");
        let lower = err.to_ascii_lowercase();
        assert!(
            err.contains(name) || lower.contains(&name.to_ascii_lowercase().replace('_', "-")),
            "{flags:?} {env:?}: names {name}: {err}"
        );
        assert!(
            err.contains(value),
            "{flags:?} {env:?}: quotes {value}: {err}"
        );
        assert!(
            !out.contains("*nat"),
            "{flags:?} {env:?}: no rules printed on error:\n{out}"
        );
    }
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.exists())
}

#[test]
fn check_does_not_expand_variables_in_comments() {
    let dir = TempDir::new("cli-check-comment");
    let cfg = dir.write(
        "config.yaml",
        "# set ${AB_CLI_TEST_UNSET} to override the listener\noutbound:\n  listen: 127.0.0.1:15123 # or ${AB_CLI_TEST_UNSET}\n",
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(
        code, 0,
        "a variable named only in a comment is not expanded:\n{out}{err}"
    );
}

#[test]
fn check_rejects_bad_identity_and_inbound_settings() {
    let dir = TempDir::new("cli-check-inbound");
    for (text, key, value) in [
        (
            "inbound:\n  allowed_peers: [\"example.org/ns/*\"]\n",
            "inbound.allowed_peers[0]",
            "example.org/ns/*",
        ),
        (
            "inbound:\n  allowed_trust_domains: [\"spiffe://example.org\"]\n",
            "inbound.allowed_trust_domains[0]",
            "spiffe://example.org",
        ),
        (
            "inbound:\n  mtls: strict\n",
            "inbound.mtls",
            "identity",
        ),
        (
            "identity:\n  source: workload-api\n  workload_api_socket: \"http://agent.sock\"\n",
            "identity.workload_api_socket",
            "http://agent.sock",
        ),
        (
            "inbound:\n  request_header_timeout: forever\n",
            "inbound.request_header_timeout",
            "forever",
        ),
        (
            "inbound:\n  jwt:\n    issuer: https://i\n    jwks_uri: https://i/jwks\n",
            "inbound.jwt.audiences",
            "no identity",
        ),
        (
            "outbound:\n  routes:\n    - host: tool\n      action: passthrough\n      mtls_peer: spiffe://example.org/tool\n",
            "mtls_peer",
            "mtls: true",
        ),
        (
            "outbound:\n  routes:\n    - host: tool\n      action: passthrough\n      mtls: true\n      mtls_peer: not-an-id\n",
            "mtls_peer",
            "not-an-id",
        ),
        (
            "outbound:\n  routes:\n    - host: tool\n      action: passthrough\n      mtls: true\n",
            "mtls: true",
            "identity.source",
        ),
    ] {
        let cfg = dir.write("config.yaml", text);
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 2, "{text:?}: {out}{err}");
        assert!(err.contains(key), "{text:?}: error names {key}: {err}");
        assert!(err.contains(value), "{text:?}: error mentions {value}: {err}");
        assert!(err.contains(&p(&cfg)), "{text:?}: error names the file: {err}");
    }
    // workload-api without any socket (config or SPIFFE_ENDPOINT_SOCKET).
    let cfg = dir.write("config.yaml", "identity:\n  source: workload-api\n");
    let (code, out, err) = run_env(&["check", "--config", &p(&cfg)], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("SPIFFE_ENDPOINT_SOCKET"), "{err}");
    let (code, out, err) = run_env(
        &["check", "--config", &p(&cfg)],
        &[("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn run_refuses_static_identity_files_that_are_not_an_svid() {
    let dir = TempDir::new("cli-run-static");
    let cert = dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    );
    let key = dir.write("key.pem", "garbage");
    let cfg = dir.write(
        "config.yaml",
        &format!(
            "identity:\n  source: static\n  cert_file: {}\n  key_file: {}\ninbound:\n  listen: 127.0.0.1:0\noutbound:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n",
            yaml_sq(&p(&cert)),
            yaml_sq(&p(&key))
        ),
    );
    let (code, out, err) = run_env(&["run", "--config", &p(&cfg)], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&p(&cert)), "names the file: {err}");
    assert!(err.contains("identity"), "{err}");
}
