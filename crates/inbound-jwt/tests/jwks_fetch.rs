//! JWKS fetching against a real HTTP endpoint: readiness, refresh, unknown-kid refetch and its
//! rate limit, rotation, issuer outages, metrics.

mod common;

use common::*;
use inbound_jwt::{Jwks, JwksError, JwtConfig, JwtError, Validator};
use proxy_core::metrics::Metrics;
use proxy_core::readiness::Readiness;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    server: JwksServer,
    validator: Arc<Validator>,
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

async fn setup(mode: Mode, tweak: impl FnOnce(&mut JwtConfig)) -> Setup {
    let server = JwksServer::start(mode).await;
    let mut cfg = config(&server.url);
    cfg.fetch_timeout = Duration::from_millis(500);
    tweak(&mut cfg);
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let validator = Arc::new(Validator::start(cfg, metrics.clone(), &readiness).unwrap());
    Setup {
        server,
        validator,
        readiness,
        metrics,
    }
}

fn ok_doc(keys: &[&TestKey]) -> Mode {
    Mode::Ok(jwks_doc(
        &keys.iter().map(|k| k.public.clone()).collect::<Vec<_>>(),
    ))
}

fn refreshes(m: &Metrics, result: &str) -> u64 {
    let text = m.encode();
    let needle = format!("authbridge_jwks_refreshes_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn loads_then_ready_and_validates() {
    let k = keys();
    let s = setup(ok_doc(&[&k.rsa, &k.p256]), |_| {}).await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    assert!(s.validator.jwks().is_loaded());
    assert_eq!(s.validator.jwks().key_count(), 2);
    s.validator.validate(&k.rsa.sign(&claims())).await.unwrap();
    s.validator.validate(&k.p256.sign(&claims())).await.unwrap();
    assert_eq!(s.server.fetches(), 1);
    assert_eq!(refreshes(&s.metrics, "success"), 1);
}

#[tokio::test]
async fn first_fetch_failing_is_not_ready_then_recovers() {
    let k = keys();
    let s = setup(Mode::Status(500), |_| {}).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!s.readiness.is_ready());
    assert_eq!(s.readiness.waiting_for(), vec!["jwks".to_string()]);
    assert!(!s.validator.jwks().is_loaded());
    assert!(s.server.fetches() >= 2, "retried with backoff");
    assert!(refreshes(&s.metrics, "failure") >= 2);
    // Tokens cannot be validated yet.
    let t = k.rsa.sign(&claims());
    assert_eq!(
        s.validator.validate(&t).await.unwrap_err(),
        JwtError::NoKeys
    );
    // Garbage and key-less documents do not make it ready either.
    s.server.set(Mode::Ok("<html>".into()));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!s.readiness.is_ready());
    s.server
        .set(Mode::Ok(r#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#.into()));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!s.readiness.is_ready());
    // Issuer comes up.
    s.server.set(ok_doc(&[&k.rsa]));
    assert!(eventually(10, || s.readiness.is_ready()).await);
    s.validator.validate(&t).await.unwrap();
    assert!(refreshes(&s.metrics, "success") >= 1);
}

#[tokio::test]
async fn unreachable_issuer_is_not_ready() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", l.local_addr().unwrap());
    drop(l);
    let readiness = Readiness::new();
    let metrics = Arc::new(Metrics::new());
    let jwks = Jwks::start(&config(&url), metrics.clone(), &readiness).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!readiness.is_ready());
    assert!(!jwks.is_loaded());
    assert!(matches!(jwks.refresh().await, Err(JwksError::Transport(_))));
}

#[tokio::test]
async fn bad_uri_is_refused() {
    let r = Readiness::new();
    let m = Arc::new(Metrics::new());
    for uri in ["ftp://x/jwks", "/jwks", "", "file:///etc/passwd"] {
        assert_eq!(
            Jwks::start(&config(uri), m.clone(), &r).unwrap_err(),
            JwksError::BadUri
        );
    }
    assert!(r.is_ready(), "nothing registered");
}

#[tokio::test]
async fn unknown_kid_refetches_and_rotation_needs_no_restart() {
    let k = keys();
    let s = setup(ok_doc(&[&k.rsa]), |c| {
        c.unknown_kid_min_interval = Duration::from_millis(200);
        c.refresh_interval = Duration::from_secs(3600);
    })
    .await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    let old = k.rsa.sign(&claims());
    s.validator.validate(&old).await.unwrap();
    // The issuer rotates: adds rsa-2 (and later drops rsa-1).
    s.server.set(ok_doc(&[&k.rsa, &k.rsa2]));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = s.server.fetches();
    let new = k.rsa2.sign(&claims());
    s.validator.validate(&new).await.unwrap();
    assert_eq!(
        s.server.fetches(),
        before + 1,
        "one refetch for the unknown kid"
    );
    // Known kids cause no fetch.
    s.validator.validate(&new).await.unwrap();
    s.validator.validate(&old).await.unwrap();
    assert_eq!(s.server.fetches(), before + 1);

    // rsa-1 is withdrawn: after the next refresh, even a cached rsa-1 token is refused.
    s.server.set(ok_doc(&[&k.rsa2]));
    s.validator.jwks().refresh().await.unwrap();
    assert_eq!(
        s.validator.validate(&old).await.unwrap_err(),
        JwtError::UnknownKid
    );
    s.validator.validate(&new).await.unwrap();
    // Still unknown after a refetch → refused.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let stranger = TestKey::new(Kind::P256, Some("stranger"));
    let f = s.server.fetches();
    assert_eq!(
        s.validator
            .validate(&stranger.sign(&claims()))
            .await
            .unwrap_err(),
        JwtError::UnknownKid
    );
    assert_eq!(s.server.fetches(), f + 1);
}

#[tokio::test]
async fn burst_of_unknown_kids_fetches_at_most_a_few_times() {
    let k = keys();
    let s = setup(ok_doc(&[&k.p256]), |c| {
        c.refresh_interval = Duration::from_secs(3600);
        c.unknown_kid_min_interval = Duration::from_millis(300);
    })
    .await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    // Let the rate limit window of the initial fetch pass so the burst may fetch once.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = s.server.fetches();
    let attacker = TestKey::new(Kind::P256, None);
    let tokens: Vec<String> = (0..50)
        .map(|i| {
            attacker
                .with(
                    Some(&format!("unknown-{i}")),
                    jsonwebtoken::Algorithm::ES256,
                )
                .sign(&claims())
        })
        .collect();
    let mut tasks = Vec::new();
    for t in tokens.clone() {
        let v = s.validator.clone();
        tasks.push(tokio::spawn(async move { v.validate(&t).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), JwtError::UnknownKid);
    }
    let burst = s.server.fetches() - before;
    assert!(
        (1..=2).contains(&burst),
        "burst of 50 caused {burst} fetches"
    );
    // An immediate second wave within the window fetches nothing.
    let before = s.server.fetches();
    for t in &tokens {
        assert_eq!(
            s.validator.validate(t).await.unwrap_err(),
            JwtError::UnknownKid
        );
    }
    assert!(s.server.fetches() - before <= 1);
    // Legitimate tokens kept working throughout.
    s.validator.validate(&k.p256.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn default_rate_limit_blocks_refetch_storms() {
    let k = keys();
    let s = setup(ok_doc(&[&k.p256]), |_| {}).await; // default: 5 s between refetches
    assert!(eventually(5, || s.readiness.is_ready()).await);
    let before = s.server.fetches();
    let attacker = TestKey::new(Kind::P256, None);
    for i in 0..50 {
        let t = attacker
            .with(Some(&format!("k{i}")), jsonwebtoken::Algorithm::ES256)
            .sign(&claims());
        assert_eq!(
            s.validator.validate(&t).await.unwrap_err(),
            JwtError::UnknownKid
        );
    }
    assert!(s.server.fetches() - before <= 1);
}

#[tokio::test]
async fn issuer_down_keeps_cached_keys() {
    let k = keys();
    let s = setup(ok_doc(&[&k.rsa, &k.ed]), |c| {
        c.verified_cache_size = 0; // every validation uses the keys
        c.unknown_kid_min_interval = Duration::from_millis(100);
        c.refresh_interval = Duration::from_secs(1);
    })
    .await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    s.server.set(Mode::Status(503));
    assert_eq!(
        s.validator.jwks().refresh().await,
        Err(JwksError::Status(503))
    );
    s.validator.validate(&k.rsa.sign(&claims())).await.unwrap();
    // Garbage answers do not replace the set either.
    s.server.set(Mode::Ok("{\"keys\":\"nope\"}".into()));
    assert_eq!(s.validator.jwks().refresh().await, Err(JwksError::NotJwks));
    s.server.set(Mode::Ok(r#"{"keys":[]}"#.into()));
    assert_eq!(
        s.validator.jwks().refresh().await,
        Err(JwksError::NoUsableKeys)
    );
    // The issuer disappears entirely; periodic refreshes fail in the background.
    s.server.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(refreshes(&s.metrics, "failure") >= 4);
    s.validator.validate(&k.rsa.sign(&claims())).await.unwrap();
    s.validator.validate(&k.ed.sign(&claims())).await.unwrap();
    // An unknown kid while down: the refetch fails, known keys still work.
    let stranger = TestKey::new(Kind::Ed25519, Some("new"));
    assert_eq!(
        s.validator
            .validate(&stranger.sign(&claims()))
            .await
            .unwrap_err(),
        JwtError::UnknownKid
    );
    s.validator.validate(&k.ed.sign(&claims())).await.unwrap();
    assert!(s.readiness.is_ready(), "stays ready on a cached key set");
}

#[tokio::test]
async fn hanging_issuer_times_out() {
    let k = keys();
    let s = setup(ok_doc(&[&k.rsa]), |c| {
        c.fetch_timeout = Duration::from_millis(300);
        c.refresh_interval = Duration::from_secs(3600);
        c.unknown_kid_min_interval = Duration::from_millis(50);
    })
    .await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    s.server.set(Mode::Hang);
    let start = Instant::now();
    assert_eq!(
        s.validator.jwks().refresh().await,
        Err(JwksError::Transport("timed out"))
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    // An unknown kid waits at most about one fetch timeout, then is refused.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let start = Instant::now();
    let t = k
        .rsa
        .with(Some("other"), jsonwebtoken::Algorithm::RS256)
        .sign(&claims());
    assert_eq!(
        s.validator.validate(&t).await.unwrap_err(),
        JwtError::UnknownKid
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    s.validator.validate(&k.rsa.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn periodic_refresh_picks_up_new_keys() {
    let k = keys();
    let s = setup(ok_doc(&[&k.p256]), |c| {
        c.refresh_interval = Duration::from_secs(1);
        c.unknown_kid_min_interval = Duration::from_secs(3600);
    })
    .await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    s.server.set(ok_doc(&[&k.p256, &k.p384]));
    assert!(eventually(5, || s.validator.jwks().key_count() == 2).await);
    s.validator.validate(&k.p384.sign(&claims())).await.unwrap();
    assert!(refreshes(&s.metrics, "success") >= 2);
}

#[tokio::test]
async fn skipped_keys_do_not_spoil_the_set() {
    let k = keys();
    let doc = jwks_doc(&[
        json!({"kty":"oct","kid":"hmac","k":b64("secret")}),
        k.rsa.jwk_with(json!({"use":"enc","kid":"enc-key"})),
        json!({"kty":"EC","crv":"P-521","kid":"p521","x":b64([1;66]),"y":b64([1;66])}),
        k.p256.jwk_with(json!({"use":"sig","alg":"ES256"})),
        json!({"kty":"RSA","kid":"bad","n":"!!","e":"AQAB"}),
    ]);
    let s = setup(Mode::Ok(doc), |_| {}).await;
    assert!(eventually(5, || s.readiness.is_ready()).await);
    assert_eq!(s.validator.jwks().key_count(), 1);
    s.validator.validate(&k.p256.sign(&claims())).await.unwrap();
    // A token naming the encryption key is refused without using it.
    let t = k
        .rsa
        .with(Some("enc-key"), jsonwebtoken::Algorithm::RS256)
        .sign(&claims());
    assert_eq!(
        s.validator.validate(&t).await.unwrap_err(),
        JwtError::UnknownKid
    );
}
