//! Two pods end to end, with the real kernel doing the capture on both sides: an agent pod whose
//! egress is captured by AuthBridge and exchanged at the STS (RFC 8693), and a tool pod whose
//! ingress is captured by a second AuthBridge that validates the exchanged token (signature by
//! the STS's JWKS, issuer, audience = the tool's SPIFFE ID) before the request reaches a real
//! HTTP app. Neither the client nor the app knows about any proxy. A second tool pod requires
//! mTLS (`inbound.mtls: strict`, `allowed_peers`), which the agent's AuthBridge originates with
//! its SVID (route `mtls: true`).
//!
//! ```text
//!  ns ab2-agent-PID               ns ab2-net-PID (router)             ns ab2-tool-PID
//!  curl (uid 1000, no proxy env)  STS 10.214.0.10 (oidc-provider)     echo.mjs 0.0.0.0:8080
//!   │ OUTPUT: REDIRECT :15123       ▲ exchange          ▲ JWKS          ▲ 127.0.0.1:8080
//!   ▼                               │                   │               authbridge (uid 1337)
//!  authbridge (uid 1337) ───────────┘                   └────────────── inbound :15124
//!   outbound [::]:15123                                                 permissive + JWT
//!   │                                                                     ▲ PREROUTING: REDIRECT
//!   ├─ HTTP ─ 10.214.1.2 ═veth═ 10.214.1.1 ┄ 10.214.2.1 ═veth═ 10.214.2.2:8080 (+ fd00:ab:214:2::2)
//!   └─ mTLS (agent SVID) ────────────────┄ 10.214.3.1 ═veth═ 10.214.3.2:8080
//!                                                             ns ab2-mtool-PID: the same,
//!                                                             inbound strict + JWT + allowed_peers
//! ```
//!
//! Asserted: the agent's plain `curl http://10.214.2.2:8080/` (and its IPv6 twin, and the strict
//! pod's address) gets 200, and the app saw the EXCHANGED token (aud = that tool's SPIFFE ID,
//! `act.sub` = the agent's client, `sub` = the user) plus `x-authbridge-sub`/`-iss`/`-client-id`
//! (and `-peer-id` = the agent's SPIFFE ID on the mTLS pod) set by the tool's AuthBridge, forged
//! copies from the client removed; the user's ORIGINAL token sent straight to the tool (curl as
//! UID 1337, which the agent pod does not capture) is refused 401 `invalid_token`; a request
//! without a token passes the agent (no_token_policy: passthrough) and is refused 401
//! `Bearer realm="authbridge"` by the tool; plaintext into the strict pod gets no answer; an
//! `INBOUND_PORTS_EXCLUDE` port reaches the app directly; the counters on the three admin ports
//! agree.
//!
//! Needs root and the tools listed in `support/netns.rs` (`authbridge_e2e::netns`); without
//! them it is skipped, except under `CI=true`.

use authbridge_e2e::metric;
use authbridge_e2e::mtls::write_static;
use authbridge_e2e::netns::{
    auds, echo_app, exchanged_claims, in_ns, node, poll, set_mode, status_200, sts_command, url,
    Daemon, Harness, ProxyFiles, CLIENT_ID, CLIENT_SECRET, CLIENT_UID, PROXY_UID,
};
use fake_workload_api::TestCa;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The agent pod.
const AGENT_V4: &str = "10.214.1.2";
const AGENT_V6: &str = "fd00:ab:214:1::2";
/// The router's address on the agent's link (the agent's default gateway).
const AGENT_GW_V4: &str = "10.214.1.1";
const AGENT_GW_V6: &str = "fd00:ab:214:1::1";
/// The tool pod.
const TOOL_V4: &str = "10.214.2.2";
const TOOL_V6: &str = "fd00:ab:214:2::2";
const TOOL_GW_V4: &str = "10.214.2.1";
const TOOL_GW_V6: &str = "fd00:ab:214:2::1";
/// A second tool pod whose AuthBridge requires mTLS (`inbound.mtls: strict`); the agent's
/// AuthBridge originates mTLS to it (route `mtls: true`).
const MTOOL_V4: &str = "10.214.3.2";
const MTOOL_V6: &str = "fd00:ab:214:3::2";
const MTOOL_GW_V4: &str = "10.214.3.1";
const MTOOL_GW_V6: &str = "fd00:ab:214:3::1";
/// The STS's service address (on the router's loopback, reached by both pods through routing).
const STS_V4: &str = "10.214.0.10";
/// The tool's HTTP port (captured inbound in the tool pod).
const TOOL_PORT: u16 = 8080;
/// A second tool port listed in the tool pod's INBOUND_PORTS_EXCLUDE (never captured).
const TOOL_EXCLUDED_PORT: u16 = 8081;
/// The tool's SPIFFE ID: its X.509-SVID and the audience the agent exchanges for.
const TOOL_ID: &str = "spiffe://example.org/ns/tools/sa/tool";
const MTOOL_ID: &str = "spiffe://example.org/ns/tools/sa/mtls-tool";
const AGENT_ID: &str = "spiffe://example.org/ns/agents/sa/agent";
const USER: &str = "alice";

const EXCH_FWD: &str =
    "authbridge_outbound_requests_total{action=\"exchange\",outcome=\"forwarded\"}";
const EXCH_FWD_NO_TOKEN: &str =
    "authbridge_outbound_requests_total{action=\"exchange\",outcome=\"forwarded_without_token\"}";
const EXCH_OK: &str = "authbridge_token_exchanges_total{result=\"success\"}";
const CACHE_HIT: &str = "authbridge_exchange_cache_total{result=\"hit\"}";
const IN_ALL: &str = "authbridge_inbound_decisions_total{";
const IN_ALLOW_TOKEN: &str =
    "authbridge_inbound_decisions_total{decision=\"allow\",reason=\"token\"}";
const IN_DENY_AUD: &str =
    "authbridge_inbound_decisions_total{decision=\"deny\",reason=\"wrong_audience\"}";
const IN_DENY_PLAINTEXT: &str =
    "authbridge_inbound_decisions_total{decision=\"deny\",reason=\"plaintext\"}";
const IN_DENY_NO_TOKEN: &str =
    "authbridge_inbound_decisions_total{decision=\"deny\",reason=\"missing_token\"}";

const HARNESS: Harness = Harness {
    name: "two-pods test",
    deadline: Duration::from_secs(30),
    curl_max_time: Duration::from_secs(20),
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// `authbridge run --config cfg` in `ns` as UID 1337, stderr to `log`.
fn start_authbridge(name: &'static str, ns: &str, bin: &Path, cfg: &Path, log: PathBuf) -> Daemon {
    let file = std::fs::File::create(&log).unwrap();
    let child = in_ns(ns, "setpriv")
        .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
        // Dies with the test even when the test process is SIGKILLed (no Drop then).
        .args(["--pdeathsig", "KILL"])
        .arg(bin)
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Daemon::with_log(name, child, log)
}

fn grep_metrics(text: &str) -> String {
    text.lines()
        .filter(|l| {
            [
                "outbound_requests",
                "token_exchanges",
                "exchange_cache",
                "inbound_decisions",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .filter(|l| !l.ends_with(" 0"))
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn agent_egress_exchanged_and_tool_ingress_validated() {
    let started = Instant::now();
    let Some(ns) = HARNESS.namespaces(["ab2-agent-", "ab2-net-", "ab2-tool-", "ab2-mtool-"]) else {
        return;
    };
    let [a, n, t, m] = ns.names.clone();

    // --- network: each pod's eth0 is one end of a veth pair whose other end is in the middle
    // namespace, which routes between them (nodad: IPv6 addresses usable at once).
    let pods = [
        (&a, "to-agent", AGENT_V4, AGENT_GW_V4, AGENT_V6, AGENT_GW_V6),
        (&t, "to-tool", TOOL_V4, TOOL_GW_V4, TOOL_V6, TOOL_GW_V6),
        (&m, "to-mtool", MTOOL_V4, MTOOL_GW_V4, MTOOL_V6, MTOOL_GW_V6),
    ];
    for ns_name in &ns.names {
        HARNESS.ip(&["-n", ns_name, "link", "set", "lo", "up"]);
    }
    for (pod, peer, v4, gw4, v6, gw6) in pods {
        HARNESS.ip(&[
            "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", peer, "netns", &n,
        ]);
        for (ns_name, dev, v4, v6) in [(pod, "eth0", v4, v6), (&n, peer, gw4, gw6)] {
            HARNESS.add_addresses(ns_name, dev, &[v4], &[v6]);
        }
        HARNESS.ip(&["-n", pod, "route", "add", "default", "via", gw4]);
        HARNESS.ip(&["-n", pod, "-6", "route", "add", "default", "via", gw6]);
    }
    HARNESS.ip(&[
        "-n",
        &n,
        "addr",
        "add",
        &format!("{STS_V4}/32"),
        "dev",
        "lo",
    ]);
    // /proc/sys/net is per network namespace: this turns the middle namespace into a router.
    HARNESS.run_ok(in_ns(&n, "sh").args([
        "-c",
        "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
    ]));

    // --- the STS, in the middle namespace.
    let (_sts, line) = HARNESS.spawn_with_ready_line("STS", &mut sts_command(&n, STS_V4));
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("STS ready line ({e}): {line}"));
    let field = |k: &str| -> String {
        ready[k]
            .as_str()
            .unwrap_or_else(|| panic!("STS ready line lacks {k}: {line}"))
            .to_string()
    };
    let (issuer, token_url, jwks_uri) = (field("issuer"), field("token_url"), field("jwks_uri"));
    assert!(
        jwks_uri.contains(STS_V4),
        "STS jwks_uri {jwks_uri} is not on {STS_V4}"
    );
    // The harness talks to the STS's /test endpoints from the middle namespace (no capture there).
    let last_exchange = || -> Value {
        let reqs = HARNESS.sts_requests(&n, &issuer);
        reqs.iter()
            .rev()
            .find(|r| r["form"]["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange")
            .cloned()
            .unwrap_or_else(|| panic!("the STS saw no token exchange: {reqs:?}"))
    };
    // The user's token, as a frontend would have obtained it: audience = the agent.
    let user_token = HARNESS.sts_mint(
        &n,
        &issuer,
        &[
            ("sub", USER),
            ("aud", AGENT_ID),
            ("client_id", "frontend"),
            ("scope", "tools"),
        ],
    );
    let bearer = format!("Authorization: Bearer {user_token}");

    // --- the tool apps: 0.0.0.0 (the inbound proxy forwards to 127.0.0.1:<original port>; the
    // excluded port is reached directly) and the pod's IPv6 address (for the reachability check
    // before capture).
    let mut apps = Vec::new();
    for (ns_name, v6) in [(&t, TOOL_V6), (&m, MTOOL_V6)] {
        let (app, line) = HARNESS.spawn_with_ready_line(
            "tool app",
            in_ns(ns_name, node()).arg(echo_app()).args([
                format!("0.0.0.0:{TOOL_PORT}"),
                format!("[{v6}]:{TOOL_PORT}"),
                format!("0.0.0.0:{TOOL_EXCLUDED_PORT}"),
            ]),
        );
        assert!(line.contains("ready"), "tool app: unexpected line {line}");
        apps.push(app);
    }

    // --- routing works before any rule exists: agent → tools (v4, v6), every pod → STS.
    let mut checks = vec![
        (&a, url(TOOL_V4, TOOL_PORT, "/ping")),
        (&a, url(TOOL_V6, TOOL_PORT, "/ping")),
        (&a, url(MTOOL_V4, TOOL_PORT, "/ping")),
    ];
    for pod in [&a, &t, &m] {
        checks.push((pod, jwks_uri.clone()));
    }
    for (ns_name, u) in checks {
        poll(
            &format!("{u} from {ns_name}"),
            Duration::from_secs(20),
            || status_200(HARNESS.curl(ns_name, None, &u, &[])),
        );
    }

    // --- capture rules in every pod (as the init containers would install them).
    let report = HARNESS.init_iptables(&a, AGENT_V4, &[]);
    eprintln!("init-iptables (agent pod):\n{report}");
    let excluded = TOOL_EXCLUDED_PORT.to_string();
    for (pod, pod_ip) in [(&t, TOOL_V4), (&m, MTOOL_V4)] {
        let report = HARNESS.init_iptables(pod, pod_ip, &[("INBOUND_PORTS_EXCLUDE", &excluded)]);
        eprintln!("init-iptables ({pod}):\n{report}");
        let rules = HARNESS.nat_rules(pod, "AUTHBRIDGE_INBOUND");
        for needle in [
            "REDIRECT --to-ports 15124",
            &format!("--dport {TOOL_EXCLUDED_PORT}"),
        ] {
            assert!(
                rules.contains(needle),
                "{pod}: nat table lacks {needle:?}:\n{rules}"
            );
        }
    }
    assert!(
        HARNESS
            .nat_rules(&a, "AUTHBRIDGE_INBOUND")
            .contains("REDIRECT --to-ports 15123"),
        "agent pod: no outbound REDIRECT"
    );

    // --- configuration and identities, readable by UID 1337 (CI homes are often 0750, so the
    // binary is copied into a world-readable temp dir too).
    let files = ProxyFiles::new("two-pods");
    let (dir, proxy_bin) = (&files.dir, &files.bin);
    let ca = TestCa::new("example.org");
    let identity_yaml = |name: &str, spiffe_id: &str| -> String {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        set_mode(&d, 0o755);
        let (cert, key, bundle) = write_static(&d, &ca.issue_svid(spiffe_id), &ca);
        for f in [&cert, &key, &bundle] {
            // Test material only; the key must be readable by the proxy's UID.
            set_mode(f, 0o644);
        }
        format!(
            "identity:\n  source: static\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  bundle_file: \"{}\"\n",
            cert.display(),
            key.display(),
            bundle.display()
        )
    };

    let agent_routes = format!(
        r#"    - host: "{TOOL_V4}"
      target_audience: "{TOOL_ID}"
      action: exchange
    - host: "{TOOL_V6}"
      target_audience: "{TOOL_ID}"
      action: exchange
    - host: "{MTOOL_V4}"
      target_audience: "{MTOOL_ID}"
      action: exchange
      mtls: true
      mtls_peer: "{MTOOL_ID}"
"#
    );
    let agent_cfg = dir.write(
        "agent.yaml",
        &(identity_yaml("agent-identity", AGENT_ID)
            + &files.agent_config(&token_url, "passthrough", &agent_routes)),
    );
    let tool_yaml = |identity: String, mtls: &str, extra: &str, aud: &str| -> String {
        format!(
            r#"{identity}inbound:
  listen: "0.0.0.0:15124"
  upstream: original-dst
  mtls: {mtls}
{extra}  jwt:
    issuer: "{issuer}"
    jwks_uri: "{jwks_uri}"
    audiences: ["{aud}"]
outbound:
  routes_file: ""
admin:
  listen: "127.0.0.1:9901"
"#
        )
    };
    let tool_cfg = dir.write(
        "tool.yaml",
        &tool_yaml(
            identity_yaml("tool-identity", TOOL_ID),
            "permissive",
            "",
            TOOL_ID,
        ),
    );
    let mtool_cfg = dir.write(
        "mtool.yaml",
        &tool_yaml(
            identity_yaml("mtool-identity", MTOOL_ID),
            "strict",
            &format!("  allowed_peers: [\"{AGENT_ID}\"]\n"),
            MTOOL_ID,
        ),
    );
    for c in [&agent_cfg, &tool_cfg, &mtool_cfg] {
        set_mode(c, 0o644);
    }

    let mut proxies = [
        (&a, "agent", &agent_cfg),
        (&t, "tool", &tool_cfg),
        (&m, "mtool", &mtool_cfg),
    ]
    .map(|(ns_name, name, cfg)| {
        start_authbridge(
            name,
            ns_name,
            proxy_bin,
            cfg,
            dir.path().join(format!("{name}.log")),
        )
    });
    for (ns_name, p) in [&a, &t, &m].into_iter().zip(proxies.iter_mut()) {
        poll(
            &format!("{} authbridge /readyz", p.name),
            Duration::from_secs(20),
            || {
                if let Some(s) = p.exited() {
                    panic!("{} authbridge exited early ({s}):\n{}", p.name, p.logs());
                }
                status_200(HARNESS.curl(ns_name, None, "http://127.0.0.1:9901/readyz", &[]))
            },
        );
    }
    let logs = |what: &str| {
        let mut s = what.to_string();
        for p in &proxies {
            s.push_str(&format!(
                "\n--- {} authbridge log ---\n{}",
                p.name,
                p.logs()
            ));
        }
        s
    };
    let (agent_m0, tool_m0, mtool_m0) = (
        HARNESS.metrics(&a),
        HARNESS.metrics(&t),
        HARNESS.metrics(&m),
    );

    // The agent's plain curl (UID 1000, no proxy settings) with the user's token and a forged
    // identity header: captured in the agent pod, exchanged at the STS for audience = the tool's
    // SPIFFE ID, captured again in the tool pod, validated against the STS's JWKS and forwarded
    // to the app on 127.0.0.1:8080 with identity headers set by the tool's AuthBridge.
    let via_both = |host: &str, path: &str, aud: &str, peer: Option<&str>| -> Value {
        let u = url(host, TOOL_PORT, path);
        let r = HARNESS
            .curl(
                &a,
                Some(CLIENT_UID),
                &u,
                &["-H", &bearer, "-H", "x-authbridge-sub: mallory"],
            )
            .unwrap_or_else(|e| panic!("{}", logs(&e)));
        assert_eq!(
            r.status,
            200,
            "{}",
            logs(&format!(
                "GET {u} as uid {CLIENT_UID}: {} {}",
                r.status, r.body
            ))
        );
        let got = r.json();
        assert_eq!(got["path"], path, "{got}");
        assert_eq!(
            got["listener"],
            format!("0.0.0.0:{TOOL_PORT}"),
            "answered by the wrong listener: {got}"
        );
        assert_eq!(
            got["remote"], "127.0.0.1",
            "the request did not come through the tool's inbound proxy: {got}"
        );
        let claims = exchanged_claims(&got, &user_token);
        assert!(
            auds(&claims).iter().any(|x| x == aud),
            "exchanged token aud lacks {aud}: {claims}"
        );
        assert_eq!(claims["sub"], USER, "sub: {claims}");
        assert_eq!(claims["iss"], issuer.as_str(), "iss: {claims}");
        assert_eq!(claims["act"]["sub"], CLIENT_ID, "act.sub: {claims}");
        let id = &got["identity"];
        assert_eq!(id["x-authbridge-sub"], USER, "identity headers: {got}");
        assert_eq!(
            id["x-authbridge-iss"],
            issuer.as_str(),
            "identity headers: {got}"
        );
        assert_eq!(
            id["x-authbridge-client-id"], CLIENT_ID,
            "identity headers: {got}"
        );
        assert_eq!(
            id.get("x-authbridge-peer-id").and_then(Value::as_str),
            peer,
            "peer id: {got}"
        );
        got
    };

    // 1. IPv4, plaintext agent → tool (permissive inbound + JWT).
    via_both(TOOL_V4, "/tools/run", TOOL_ID, None);
    let ex = last_exchange();
    assert_eq!(ex["form"]["subject_token"], user_token.as_str(), "{ex}");
    assert_eq!(ex["form"]["audience"], TOOL_ID, "{ex}");
    assert_eq!(ex["form"]["client_id"], CLIENT_ID, "{ex}");

    // 2. The same over IPv6 (IP6T_SO_ORIGINAL_DST on both sides); the cached token is reused.
    via_both(TOOL_V6, "/v6/tools/run", TOOL_ID, None);

    // 3. mTLS origination: the agent's AuthBridge speaks mTLS with its SVID to the strict tool
    //    pod, which checks the peer (allowed_peers) and the token (aud = that tool's ID).
    via_both(MTOOL_V4, "/mtls/tools/run", MTOOL_ID, Some(AGENT_ID));
    assert_eq!(last_exchange()["form"]["audience"], MTOOL_ID);
    let agent_m1 = HARNESS.metrics(&a);

    // 4. The user's ORIGINAL token sent straight into the tool pod: UID 1337 is exempt from the
    //    agent pod's capture, so nothing exchanges it; the tool's inbound refuses it (wrong aud).
    let u = url(TOOL_V4, TOOL_PORT, "/tools/run");
    let r = HARNESS
        .curl(&a, Some(PROXY_UID), &u, &["-H", &bearer])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.status,
        401,
        "{}",
        logs(&format!("original token: {}", r.body))
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="authbridge", error="invalid_token""#),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["error"], "unauthorized", "{}", r.body);
    assert!(!r.body.contains(&user_token), "token echoed: {}", r.body);

    // 5. No token at all, from the agent's client: the agent passes it through
    //    (no_token_policy: passthrough) and the tool's inbound refuses it.
    let r = HARNESS
        .curl(&a, Some(CLIENT_UID), &u, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 401, "{}", logs(&format!("no token: {}", r.body)));
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="authbridge""#),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["error"], "unauthorized", "{}", r.body);

    // 6. Plaintext straight into the strict pod (UID 1337, not captured, so no mTLS
    //    origination): no HTTP answer at all, the connection is closed.
    let r = HARNESS.curl(
        &a,
        Some(PROXY_UID),
        &url(MTOOL_V4, TOOL_PORT, "/plain"),
        &["-H", &bearer],
    );
    assert!(
        r.is_err(),
        "the strict pod answered plaintext: {:?}",
        r.map(|r| (r.status, r.body))
    );

    // 7. The tool pod's INBOUND_PORTS_EXCLUDE port is not captured: the app answers directly
    //    (peer = the agent's address, no identity headers), even without a token.
    let r = HARNESS
        .curl(
            &a,
            Some(PROXY_UID),
            &url(TOOL_V4, TOOL_EXCLUDED_PORT, "/direct"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "excluded port: {}", r.body);
    let got = r.json();
    assert_eq!(got["remote"], AGENT_V4, "{got}");
    assert_eq!(got["identity"], serde_json::json!({}), "{got}");

    // 8. The counters on the three admin ports. Agent, steps 1-3: three requests forwarded on
    //    exchange routes after TWO exchanges (IPv6 reused the cached token); step 5 adds one
    //    exchange/forwarded_without_token (no token, no_token_policy: passthrough). Tool:
    //    two allowed, one wrong audience, one missing token (the excluded port never reached
    //    it). Strict tool: one allowed, one plaintext refused.
    let (agent_m2, tool_m1, mtool_m1) = (
        HARNESS.metrics(&a),
        HARNESS.metrics(&t),
        HARNESS.metrics(&m),
    );
    let delta = |m1: &str, m0: &str, k: &str| metric(m1, k) - metric(m0, k);
    let counts = [
        delta(&agent_m1, &agent_m0, EXCH_FWD),
        delta(&agent_m1, &agent_m0, EXCH_OK),
        delta(&agent_m1, &agent_m0, CACHE_HIT),
        delta(&agent_m2, &agent_m1, EXCH_FWD),
        delta(&agent_m2, &agent_m1, EXCH_FWD_NO_TOKEN),
        delta(&agent_m2, &agent_m1, EXCH_OK),
        delta(&tool_m1, &tool_m0, IN_ALLOW_TOKEN),
        delta(&tool_m1, &tool_m0, IN_DENY_AUD),
        delta(&tool_m1, &tool_m0, IN_DENY_NO_TOKEN),
        delta(&tool_m1, &tool_m0, IN_ALL),
        delta(&mtool_m1, &mtool_m0, IN_ALLOW_TOKEN),
        delta(&mtool_m1, &mtool_m0, IN_DENY_PLAINTEXT),
        delta(&mtool_m1, &mtool_m0, IN_ALL),
    ];
    assert_eq!(
        counts,
        [3.0, 2.0, 1.0, 0.0, 1.0, 0.0, 2.0, 1.0, 1.0, 4.0, 1.0, 1.0, 2.0],
        "[agent: exchange/forwarded, exchanges ok, cache hits (steps 1-3); exchange/forwarded, \
         exchange/forwarded_without_token, exchanges ok (steps 4-7); tool: allow token, deny wrong_audience, deny missing_token, \
         all; strict tool: allow token, deny plaintext, all] did not rise as expected:\n\
         --- agent ---\n{}\n--- tool ---\n{}\n--- strict tool ---\n{}",
        grep_metrics(&agent_m2),
        grep_metrics(&tool_m1),
        grep_metrics(&mtool_m1)
    );

    for p in proxies.iter_mut() {
        if let Some(s) = p.exited() {
            panic!(
                "{} authbridge exited during the test ({s}):\n{}",
                p.name,
                p.logs()
            );
        }
        let text = p.logs();
        assert!(
            !text.contains(CLIENT_SECRET) && !text.contains(&user_token),
            "{} authbridge: a secret or the user token appears in the log",
            p.name
        );
    }
    drop(apps);
    HARNESS.passed(started);
}
