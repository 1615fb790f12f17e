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
//! Needs root and the tools listed in `support/netns.rs` (`authbridge_e2e::netns`); without
//! them it is skipped, except under `CI=true`.

use authbridge_e2e::metric;
use authbridge_e2e::netns::{
    auds, echo_app, exchanged_claims, in_ns, node, poll, set_mode, sts_command, url, Daemon,
    Harness, ProxyFiles, CLIENT_ID, CLIENT_SECRET, CLIENT_UID, PROXY_UID,
};
use serde_json::Value;
use std::process::Stdio;
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

const PASS_FWD: &str =
    "authbridge_outbound_requests_total{action=\"passthrough\",outcome=\"forwarded\"}";
const EXCH_FWD: &str =
    "authbridge_outbound_requests_total{action=\"exchange\",outcome=\"forwarded\"}";
const ALL_OUTBOUND: &str = "authbridge_outbound_requests_total{";

/// Generous deadlines for slow CI machines.
const HARNESS: Harness = Harness {
    name: "capture test",
    deadline: Duration::from_secs(60),
    curl_max_time: Duration::from_secs(30),
};

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn transparent_capture_ipv4_and_ipv6() {
    let started = Instant::now();
    let Some(ns) = HARNESS.namespaces(["ab-agent-", "ab-tool-"]) else {
        return;
    };
    let [a, t] = ns.names.clone();

    // --- network: veth pair, addresses (nodad: usable at once), loopback up.
    HARNESS.ip(&[
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
        HARNESS.ip(&["-n", n, "link", "set", "lo", "up"]);
        HARNESS.add_addresses(n, dev, &v4s, &v6s);
    }

    // --- tool namespace: the echo tool and the STS.
    let listeners = [
        format!("{TOOL_V4}:{TOOL_PORT}"),
        format!("{TOOL_V4_PASS}:{TOOL_PORT}"),
        format!("{TOOL_V4}:{EXCLUDED_PORT}"),
        format!("[{TOOL_V6}]:{TOOL_PORT}"),
        format!("[{TOOL_V6_PASS}]:{TOOL_PORT}"),
        format!("[{TOOL_V6}]:{EXCLUDED_PORT}"),
    ];
    let (_echo, line) = HARNESS.spawn_with_ready_line(
        "echo tool",
        in_ns(&t, node()).arg(echo_app()).args(&listeners),
    );
    assert!(
        line.contains("ready"),
        "echo tool: unexpected ready line {line}"
    );

    let (_sts, line) = HARNESS.spawn_with_ready_line("STS", &mut sts_command(&t, TOOL_V4));
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("STS ready line ({e}): {line}"));
    let issuer = ready["issuer"].as_str().expect("issuer").to_string();
    let token_url = ready["token_url"].as_str().expect("token_url").to_string();
    assert!(
        token_url.contains(TOOL_V4),
        "STS token_url {token_url} is not on {TOOL_V4}"
    );

    // The harness talks to the STS's /test endpoints from inside the tool namespace.
    let sts_requests = || HARNESS.sts_requests(&t, &issuer);
    let user_token = HARNESS.sts_mint(
        &t,
        &issuer,
        &[("sub", "alice"), ("aud", "agent-aud"), ("scope", "tools")],
    );
    let bearer = format!("Authorization: Bearer {user_token}");

    // --- the veth works both ways before any rule exists (v6 neighbour discovery included).
    for host in [TOOL_V4, TOOL_V4_PASS, TOOL_V6, TOOL_V6_PASS] {
        poll(
            &format!("tool at {host} from the agent namespace"),
            Duration::from_secs(60),
            || {
                HARNESS
                    .curl(&a, None, &url(host, TOOL_PORT, "/ping"), &[])
                    .and_then(|r| {
                        (r.status == 200)
                            .then_some(())
                            .ok_or(format!("status {}", r.status))
                    })
            },
        );
    }

    // --- agent namespace: the capture rules, installed twice (idempotent).
    let excluded = EXCLUDED_PORT.to_string();
    let capture_env = [
        ("PROXY_PORT", "15123"),
        ("OUTBOUND_PORTS_EXCLUDE", excluded.as_str()),
    ];
    let report = HARNESS.init_iptables(&a, AGENT_V4, &capture_env);
    eprintln!("init-iptables (1st run):\n{report}");
    let rules = HARNESS.nat_rules(&a, "AUTHBRIDGE_OUTPUT");
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
    let report2 = HARNESS.init_iptables(&a, AGENT_V4, &capture_env);
    eprintln!("init-iptables (2nd run):\n{report2}");
    let rules2 = HARNESS.nat_rules(&a, "AUTHBRIDGE_OUTPUT");
    assert_eq!(
        rules, rules2,
        "a second init-iptables changed the nat table"
    );

    // --- the proxy, as UID 1337 (its files world-readable), dual-stack outbound listener.
    let files = ProxyFiles::new("capture");
    let (dir, proxy_bin) = (&files.dir, &files.bin);
    let config = files.agent_config(
        &token_url,
        "deny",
        &format!(
            r#"    - host: "{TOOL_V4}"
      target_audience: tool-aud
      action: exchange
    - host: "{TOOL_V6}"
      target_audience: tool-aud-v6
      action: exchange
    - host: "{TOOL_V4_PASS}"
      action: passthrough
    - host: "{TOOL_V6_PASS}"
      action: passthrough
"#
        ),
    );
    let cfg = dir.write("config.yaml", &config);
    set_mode(&cfg, 0o644);
    let log_path = dir.path().join("authbridge.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = in_ns(&a, "setpriv")
        .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
        .arg(proxy_bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn authbridge run");
    let mut proxy = Daemon::with_log("authbridge", child, log_path);
    poll("authbridge /readyz", Duration::from_secs(60), || {
        if let Some(s) = proxy.exited() {
            panic!("{} exited early ({s}):\n{}", proxy.name, proxy.logs());
        }
        match HARNESS.curl(&a, None, "http://127.0.0.1:9901/readyz", &[]) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {}: {}", r.status, r.body)),
            Err(e) => Err(e),
        }
    });
    let logs_on_failure = |what: &str| format!("{what}\n--- authbridge log ---\n{}", proxy.logs());

    // The client: another UID, no proxy settings, plain URLs. Everything below is captured by
    // the kernel; nothing tells curl about the proxy.
    let client = |host: &str, port: u16, path: &str| -> Value {
        let u = url(host, port, path);
        let r = HARNESS
            .curl(&a, Some(CLIENT_UID), &u, &["-H", &bearer])
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
        let claims = exchanged_claims(got, &user_token);
        let token_auds = auds(&claims);
        assert!(
            token_auds.iter().any(|x| x == aud),
            "exchanged token aud {token_auds:?} lacks {aud}: {claims}"
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
    let m0 = HARNESS.metrics(&a);
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
    let m1 = HARNESS.metrics(&a);
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
        let r = HARNESS
            .curl(&a, Some(PROXY_UID), &u, &["-H", &bearer])
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
    let m2 = HARNESS.metrics(&a);
    assert_eq!(
        metric(&m2, ALL_OUTBOUND),
        before,
        "excluded-port / UID-1337 traffic went through the proxy:\n{}",
        grep_metrics(&m2)
    );

    // 6. Still idempotent with the proxy running and connections tracked.
    HARNESS.init_iptables(&a, AGENT_V4, &capture_env);
    assert_eq!(
        HARNESS.nat_rules(&a, "AUTHBRIDGE_OUTPUT"),
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
    HARNESS.passed(started);
}

fn grep_metrics(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("outbound"))
        .collect::<Vec<_>>()
        .join("\n")
}
