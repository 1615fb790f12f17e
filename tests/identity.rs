//! Identity from the SPIFFE Workload API, end to end: `authbridge run` with
//! `identity.source: workload-api` talks (through the real `spiffe` crate client) to a fake
//! SPIRE agent on a Unix socket that pushes rotations mid-test.

use authbridge_e2e::mtls::{identity, MtlsClient};
use authbridge_e2e::sts::Sts;
use authbridge_e2e::upstream::Upstream;
use authbridge_e2e::{jwt_claims, metric, Proxy, TempDir};
use fake_workload_api::{FakeWorkloadApi, TestCa};
use std::time::{Duration, Instant};

const AGENT: &str = "spiffe://example.org/ns/team1/sa/agent";
const CALLER: &str = "spiffe://example.org/ns/team1/sa/caller";

fn inbound_config(endpoint: &str, up: &Upstream) -> String {
    format!(
        "identity:\n  source: workload-api\n  workload_api_socket: {endpoint}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: \"{}\"\n  mtls: strict\noutbound:\n  listen: \"{{OUT}}\"\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        up.addr
    )
}

/// A running agent: a fake Workload API holding `first` (an SVID of `AGENT`), and
/// `authbridge run` with strict inbound mTLS in front of an upstream app.
struct Agent {
    ca: TestCa,
    first: fake_workload_api::Svid,
    fake: FakeWorkloadApi,
    _up: Upstream,
    proxy: Proxy,
    /// A caller identity (`CALLER`) that trusts `ca`.
    caller: std::sync::Arc<spiffe_source::X509Identity>,
}

async fn start_agent(tag: &str) -> Agent {
    let dir = TempDir::new(tag);
    let ca = TestCa::new("example.org");
    let first = ca.issue_svid(AGENT);
    let fake = FakeWorkloadApi::start(
        &dir.path().join("agent.sock"),
        first.clone(),
        vec![ca.bundle()],
    )
    .await
    .unwrap();
    let up = Upstream::start().await;
    let proxy = Proxy::start(&inbound_config(&fake.endpoint(), &up), dir).await;
    let caller = identity(&ca.issue_svid(CALLER), &[&ca]);
    Agent {
        ca,
        first,
        fake,
        _up: up,
        proxy,
        caller,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_svid_is_used_by_new_handshakes_while_open_connections_keep_working() {
    let Agent {
        ca,
        first,
        fake,
        proxy,
        caller,
        _up,
        ..
    } = start_agent("wl-rotate").await;

    let mut open = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
        .await
        .unwrap();
    assert_eq!(open.server_leaf, first.leaf_der());
    assert_eq!(open.get("/a", &[]).await.unwrap().status, 200);

    let second = ca.issue_svid(AGENT);
    fake.push_x509(second.clone(), vec![ca.bundle()]);
    let pushed = Instant::now();
    // New handshakes present the new SVID within 2 s; none is refused meanwhile.
    loop {
        let mut c = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
            .await
            .expect("handshake refused during rotation");
        assert_eq!(c.get("/b", &[]).await.unwrap().status, 200);
        if c.server_leaf == second.leaf_der() {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(2),
            "rotated SVID not presented within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the rotation still works.
    assert_eq!(open.get("/c", &[]).await.unwrap().status, 200);
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "authbridge_svid_rotations_total{result=\"success\"}") >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_in_the_bundle_is_trusted_right_after_the_push_and_not_before() {
    let Agent {
        ca,
        fake,
        proxy,
        _up,
        ..
    } = start_agent("wl-bundle").await;
    let next_ca = TestCa::new("example.org");
    // A caller whose SVID comes from the next CA (it trusts both, to verify our SVID).
    let caller = {
        let svid = next_ca.issue_svid(CALLER);
        std::sync::Arc::new(
            spiffe_source::source::identity_from_der(
                svid.chain_der.clone(),
                svid.key_pkcs8_der.clone(),
                vec![(
                    "example.org".into(),
                    vec![ca.cert_der(), next_ca.cert_der()],
                )],
            )
            .unwrap(),
        )
    };
    let before = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone()).await;
    let refused = match before {
        Err(_) => true,
        Ok(mut c) => c.get("/", &[]).await.is_err(),
    };
    assert!(refused, "a CA not yet in the bundle was trusted");
    fake.push_x509(
        fake.current_svid(),
        vec![(
            "example.org".into(),
            vec![ca.cert_der(), next_ca.cert_der()],
        )],
    );
    let pushed = Instant::now();
    loop {
        if let Ok(mut c) =
            MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone()).await
        {
            if let Ok(a) = c.get("/", &[]).await {
                assert_eq!(a.status, 200);
                break;
            }
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(2),
            "new CA not trusted within 2 s of the push"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_workload_api_delivers_then_ready() {
    let dir = TempDir::new("wl-ready");
    let sock = dir.path().join("agent.sock");
    let up = Upstream::start().await;
    let endpoint = format!("unix://{}", sock.display());
    let mut proxy = Proxy::spawn(&inbound_config(&endpoint, &up), dir, &[], &[]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut saw_not_ready = false;
    for _ in 0..30 {
        if let Ok(r) = client
            .get(format!("http://{}/readyz", proxy.admin))
            .send()
            .await
        {
            assert_ne!(r.status(), 200, "ready without an identity");
            let body = r.text().await.unwrap();
            assert!(body.contains("identity"), "{body}");
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_not_ready, "admin never answered:\n{}", proxy.logs());
    let ca = TestCa::new("example.org");
    let _fake = FakeWorkloadApi::start(&sock, ca.issue_svid(AGENT), vec![ca.bundle()])
        .await
        .unwrap();
    proxy.wait_ready().await;
    let logs = proxy.logs();
    assert!(
        logs.contains(sock.to_str().unwrap()),
        "the waiting message names the socket:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_uses_the_jwt_svid_the_workload_api_issued_for_the_audience() {
    let dir = TempDir::new("wl-jwt");
    let ca = TestCa::new("example.org");
    let fake = FakeWorkloadApi::start(
        &dir.path().join("agent.sock"),
        ca.issue_svid(AGENT),
        vec![ca.bundle()],
    )
    .await
    .unwrap();
    let jwks = dir.write("spiffe.jwks", &fake.jwks_json());
    let sts = Sts::builder()
        .spiffe_jwks(&jwks)
        .spiffe_audience("sts-audience")
        .spiffe_client(AGENT)
        .start()
        .await;
    let up = Upstream::start().await;
    let config = format!(
        "identity:\n  source: workload-api\n  workload_api_socket: {ep}\noutbound:\n  listen: \"{{OUT}}\"\n  token_url: {url}\n  jwt_svid_audience: sts-audience\n  routes:\n    - host: localhost\n      target_audience: tool-aud\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        ep = fake.endpoint(),
        url = sts.token_url,
    );
    let proxy = Proxy::start(&config, dir).await;
    let user = sts.mint_user_token("alice", "agent", "openid").await;
    let r = proxy
        .client()
        .get(format!("http://localhost:{}/tool", up.addr.port()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", proxy.logs());
    let exchanged = body["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(jwt_claims(exchanged)["aud"], "tool-aud");
    // The client assertion the STS received is the JWT-SVID the Workload API issued, for the
    // configured audience, and client_id defaulted to our SPIFFE ID.
    let reqs = sts.requests().await;
    let form = &reqs.last().unwrap()["form"];
    let assertion = form["client_assertion"].as_str().unwrap();
    assert_eq!(Some(assertion.to_string()), fake.last_jwt_svid());
    assert_eq!(form["client_id"], AGENT);
    let asked = fake.jwt_requests();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|r| r.audiences == vec!["sts-audience".to_string()]),
        "{:?}",
        asked.iter().map(|r| &r.audiences).collect::<Vec<_>>()
    );
    let aud = jwt_claims(assertion)["aud"].clone();
    assert!(
        aud == "sts-audience" || aud == serde_json::json!(["sts-audience"]),
        "{aud}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_svid_keeps_serving_while_the_agent_is_away_and_rotation_resumes() {
    let Agent {
        ca,
        first,
        fake,
        proxy,
        caller,
        _up,
        ..
    } = start_agent("wl-away").await;
    fake.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The agent is gone: handshakes keep using the last SVID, and the pod stays ready.
    let mut c = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
        .await
        .unwrap();
    assert_eq!(c.server_leaf, first.leaf_der());
    assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
    let ready = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/readyz", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // It comes back with a new SVID: the source reconnects and new handshakes use it.
    let second = ca.issue_svid(AGENT);
    fake.set_unavailable(false);
    fake.push_x509(second.clone(), vec![ca.bundle()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
            .await
            .unwrap();
        if c.server_leaf == second.leaf_der() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reconnect to the Workload API:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_source_rotation_by_rename_and_data_swap_reaches_new_handshakes() {
    let dir = TempDir::new("files-rotate");
    let ca = TestCa::new("example.org");
    let svid_dir = dir.path().join("svid");
    std::fs::create_dir_all(&svid_dir).unwrap();
    // Kubernetes layout: files are symlinks into ..data, which points at a timestamped dir.
    let publish = |gen: &str, svid: &fake_workload_api::Svid| {
        let g = svid_dir.join(gen);
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("svid.pem"), svid.chain_pem()).unwrap();
        std::fs::write(g.join("svid_key.pem"), svid.key_pem()).unwrap();
        std::fs::write(g.join("svid_bundle.pem"), ca.cert_pem()).unwrap();
        let tmp = svid_dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(gen, &tmp).unwrap();
        std::fs::rename(&tmp, svid_dir.join("..data")).unwrap();
    };
    let first = ca.issue_svid(AGENT);
    publish("..2026_11_29_a", &first);
    for f in ["svid.pem", "svid_key.pem", "svid_bundle.pem"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), svid_dir.join(f)).unwrap();
    }
    let up = Upstream::start().await;
    let config = format!(
        "identity:\n  source: files\n  svid_dir: {}\ninbound:\n  listen: \"{{IN}}\"\n  upstream: \"{}\"\n  mtls: strict\noutbound:\n  listen: \"{{OUT}}\"\nadmin:\n  listen: \"{{ADMIN}}\"\n",
        svid_dir.display(),
        up.addr
    );
    let proxy = Proxy::start(&config, dir).await;
    let caller = identity(&ca.issue_svid(CALLER), &[&ca]);
    let leaf = |c: &MtlsClient| c.server_leaf.clone();
    let mut open = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
        .await
        .unwrap();
    assert_eq!(leaf(&open), first.leaf_der());

    let wait_for = |want: Vec<u8>| {
        let caller = caller.clone();
        let addr = proxy.inbound;
        async move {
            let t = Instant::now();
            loop {
                let c = MtlsClient::connect(addr, Some(caller.clone()), caller.clone())
                    .await
                    .unwrap();
                if c.server_leaf == want {
                    return;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "rotation not picked up within 2 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // ..data symlink swap.
    let second = ca.issue_svid(AGENT);
    publish("..2026_11_29_b", &second);
    wait_for(second.leaf_der().to_vec()).await;
    // spiffe-helper's rename-over (replace the symlinks by files written then renamed).
    let third = ca.issue_svid(AGENT);
    for (name, data) in [
        ("svid_key.pem", third.key_pem()),
        ("svid.pem", third.chain_pem()),
    ] {
        let tmp = svid_dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, svid_dir.join(name)).unwrap();
    }
    wait_for(third.leaf_der().to_vec()).await;
    // A mismatched set (new cert, old key) is refused; the last good identity stays.
    let fourth = ca.issue_svid(AGENT);
    std::fs::write(svid_dir.join("svid.pem"), fourth.chain_pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
        .await
        .unwrap();
    assert_eq!(c.server_leaf, third.leaf_der());
    assert!(proxy.logs().contains("svid"), "the warning names the file");
    // The connection from before every rotation still works.
    assert_eq!(open.get("/", &[]).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_svid_with_no_replacement_is_withdrawn_and_the_pod_turns_not_ready() {
    let Agent {
        ca,
        fake,
        proxy,
        _up,
        ..
    } = start_agent("wl-expire").await;
    // The agent hands out an SVID that expires in 2 s, then goes away.
    let short = ca.issue_svid_with(
        AGENT,
        fake_workload_api::SvidOptions {
            not_after: Some(std::time::SystemTime::now() + Duration::from_secs(2)),
            ..Default::default()
        },
    );
    fake.push_x509(short.clone(), vec![ca.bundle()]);
    let caller = identity(&ca.issue_svid(CALLER), &[&ca]);
    let t = Instant::now();
    loop {
        let c = MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone())
            .await
            .unwrap();
        if c.server_leaf == short.leaf_der() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "short-lived SVID not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.set_unavailable(true);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client
            .get(format!("http://{}/readyz", proxy.admin))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            assert!(r.text().await.unwrap().contains("identity"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with an expired SVID:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Fail closed: no handshake presents the expired certificate.
    let r = async {
        let mut c =
            MtlsClient::connect(proxy.inbound, Some(caller.clone()), caller.clone()).await?;
        c.get("/", &[]).await
    }
    .await;
    assert!(r.is_err(), "a handshake succeeded with an expired SVID");
}
