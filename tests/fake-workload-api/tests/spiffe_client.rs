//! The fake driven by the real `spiffe` 0.19 client: `X509Source`, `JwtSource`, `WorkloadApiClient`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use fake_workload_api::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use fake_workload_api::{pb, FakeWorkloadApi, KeyType, Svid, SvidOptions, TestCa};
use spiffe::{JwtSource, TrustDomain, WorkloadApiClient, X509Source, X509Svid};

const AGENT: &str = "spiffe://example.org/ns/default/sa/agent";

/// A fresh directory for one test's socket (short path: sun_path is 108 bytes).
fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwa-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("agent.sock")
}

async fn start(name: &str) -> (TestCa, FakeWorkloadApi) {
    let ca = TestCa::new("example.org");
    let fake = FakeWorkloadApi::start(&socket_path(name), ca.issue_svid(AGENT), vec![ca.bundle()])
        .await
        .unwrap();
    (ca, fake)
}

/// An `X509Source` on the fake, once its update stream is open: `build()` reads the first
/// message of one `FetchX509SVID` stream and drops it, then the supervisor opens its own.
async fn x509_source(fake: &FakeWorkloadApi) -> X509Source {
    let before = fake.connections();
    let source = X509Source::builder()
        .endpoint(fake.endpoint())
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .initial_sync_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    eventually("supervisor stream", || fake.connections() == before + 2).await;
    source
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn x509_source_gets_the_svid_and_bundle() {
    let (ca, fake) = start("x509").await;
    assert!(fake.endpoint().starts_with("unix:///"));
    let source = x509_source(&fake).await;
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), AGENT);
    assert_eq!(svid.leaf().as_bytes(), fake.current_svid().leaf_der());
    let td = TrustDomain::new("example.org").unwrap();
    let bundle = source.try_bundle_for_trust_domain(&td).unwrap();
    assert_eq!(bundle.authorities()[0].as_bytes(), ca.cert_der());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.connections(), 2);
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_svid_reaches_the_source_within_2s() {
    let (ca, fake) = start("push").await;
    let source = x509_source(&fake).await;
    let federated = TestCa::new("other.org");
    let next = ca.issue_svid("spiffe://example.org/ns/default/sa/rotated");
    fake.push_x509(next, vec![ca.bundle(), federated.bundle()]);
    eventually("rotated SVID", || {
        source
            .svid()
            .is_ok_and(|s| s.spiffe_id().to_string().ends_with("/rotated"))
    })
    .await;
    let other = TrustDomain::new("other.org").unwrap();
    assert!(source.try_bundle_for_trust_domain(&other).is_some());
    // A push is delivered on the open stream, not by reconnecting.
    assert_eq!(fake.connections(), 2);
    source.shutdown().await;
}

#[tokio::test]
async fn x509_bundles_stream_follows_pushes() {
    let (ca, fake) = start("bundles").await;
    let client = WorkloadApiClient::connect_to(fake.endpoint())
        .await
        .unwrap();
    let set = client.fetch_x509_bundles().await.unwrap();
    assert_eq!(set.len(), 1);
    let mut stream = client.stream_x509_bundles().await.unwrap();
    use futures_util::StreamExt as _;
    assert_eq!(stream.next().await.unwrap().unwrap().len(), 1);
    let other = TestCa::new("spiffe://other.org");
    fake.push_x509(fake.current_svid(), vec![ca.bundle(), other.bundle()]);
    let next = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.len(), 2);
}

#[tokio::test]
async fn jwt_svid_has_audience_verifies_with_jwks_and_is_recorded() {
    let (_ca, fake) = start("jwt").await;
    let source = JwtSource::builder()
        .endpoint(fake.endpoint())
        .initial_sync_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let before = SystemTime::now() - Duration::from_secs(1);
    let svid = source.fetch_jwt_svid(["a"]).await.unwrap();
    assert_eq!(svid.audience(), ["a"]);
    assert_eq!(svid.spiffe_id().to_string(), AGENT);
    assert_eq!(svid.key_id(), fake.current_jwt_kid());
    assert_eq!(fake.last_jwt_svid().as_deref(), Some(svid.token()));

    // Verify with the JWKS using jsonwebtoken.
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&fake.jwks_json()).unwrap();
    let jwk = jwks.find(svid.key_id()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["a"]);
    validation.set_required_spec_claims(&["exp", "sub", "aud", "iat"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(svid.token(), &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], AGENT);
    assert_eq!(data.header.kid.as_deref(), Some(svid.key_id()));
    let (iat, exp) = (
        data.claims["iat"].as_u64().unwrap(),
        data.claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 300);

    // The JwtSource parsed the same JWKS from FetchJWTBundles.
    let td = TrustDomain::new("example.org").unwrap();
    let bundle = source.try_bundle_for_trust_domain(&td).unwrap();
    assert!(bundle.find_jwt_authority(svid.key_id()).is_some());

    let requests = fake.jwt_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].audiences, ["a"]);
    assert_eq!(requests[0].spiffe_id, "");
    assert!(requests[0].at >= before);
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_key_rotation_ttl_and_validation() {
    let (_ca, fake) = start("jwtrot").await;
    let source = JwtSource::builder()
        .endpoint(fake.endpoint())
        .initial_sync_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let old_kid = fake.current_jwt_kid();
    fake.rotate_jwt_key();
    let new_kid = fake.current_jwt_kid();
    assert_ne!(old_kid, new_kid);
    eventually("rotated JWKS", || {
        source
            .try_bundle_for_trust_domain(&td)
            .is_some_and(|b| b.find_jwt_authority(&new_kid).is_some())
    })
    .await;
    fake.set_jwt_ttl(Duration::from_secs(60));
    let svid = source.fetch_jwt_svid(["b", "c"]).await.unwrap();
    assert_eq!(svid.key_id(), new_kid);
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(svid.token())
        .map(|d| d.claims)
        .unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    fake.retire_old_jwt_keys();
    eventually("old kid retired", || {
        source
            .try_bundle_for_trust_domain(&td)
            .is_some_and(|b| b.find_jwt_authority(&old_kid).is_none())
    })
    .await;

    // ValidateJWTSVID: the agent checks signature and audience.
    let client = WorkloadApiClient::connect_to(fake.endpoint())
        .await
        .unwrap();
    let ok = client.validate_jwt_token("c", svid.token()).await.unwrap();
    assert_eq!(ok.spiffe_id().to_string(), AGENT);
    assert!(client
        .validate_jwt_token("zzz", svid.token())
        .await
        .is_err());
    let mut forged = svid.token().to_owned();
    forged.pop();
    forged.push(if svid.token().ends_with('A') {
        'B'
    } else {
        'A'
    });
    assert!(client.validate_jwt_token("c", &forged).await.is_err());

    // Asking for another identity: PermissionDenied, still recorded.
    let other = spiffe::SpiffeId::new("spiffe://example.org/other").unwrap();
    assert!(client.fetch_jwt_svid(["x"], Some(&other)).await.is_err());
    assert_eq!(
        fake.jwt_requests().last().unwrap().spiffe_id,
        "spiffe://example.org/other"
    );
    source.shutdown().await;
}

async fn raw_client(fake: &FakeWorkloadApi) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let path = fake.socket_path().to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

#[tokio::test]
async fn request_without_security_header_is_rejected() {
    let (_ca, fake) = start("header").await;
    let mut client = raw_client(&fake).await;
    let err = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(fake.jwt_requests().is_empty());
    assert_eq!(fake.connections(), 0);

    // With the header, the same raw client works.
    let mut req = tonic::Request::new(pb::X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = client.fetch_x509svid(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids[0].spiffe_id, AGENT);
    assert!(!first.svids[0].bundle.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_agent_keeps_last_svid_and_source_reconnects() {
    let (_ca, fake) = start("unavail").await;
    let source = x509_source(&fake).await;
    fake.set_unavailable(true);
    let client = WorkloadApiClient::connect_to(fake.endpoint())
        .await
        .unwrap();
    assert!(client.fetch_x509_svid().await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The source keeps serving its last SVID while the agent is away.
    assert_eq!(source.svid().unwrap().spiffe_id().to_string(), AGENT);
    assert_eq!(fake.connections(), 2);
    fake.set_unavailable(false);
    eventually("reconnect", || fake.connections() >= 3).await;
    assert!(source.svid().is_ok());
    source.shutdown().await;
}

#[tokio::test]
async fn shutdown_removes_the_socket() {
    let (_ca, fake) = start("shutdown").await;
    let path = fake.socket_path().to_owned();
    let source = x509_source(&fake).await;
    assert!(path.exists());
    tokio::time::timeout(Duration::from_secs(5), fake.shutdown())
        .await
        .unwrap();
    assert!(!path.exists());
    source.shutdown().await;
}

#[tokio::test]
async fn dropping_the_fake_removes_the_socket() {
    let (_ca, fake) = start("drop").await;
    let path = fake.socket_path().to_owned();
    drop(fake);
    assert!(!path.exists());
}

fn parse(svid: &Svid) -> Result<X509Svid, spiffe::X509SvidError> {
    X509Svid::parse_from_der(&svid.chain_der.concat(), &svid.key_pkcs8_der)
}

#[test]
fn every_key_type_is_a_valid_svid_and_broken_options_are_rejected() {
    let ca = TestCa::new("example.org");
    for key_type in [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
    ] {
        let svid = ca.issue_svid_with(
            AGENT,
            SvidOptions {
                key_type,
                ..SvidOptions::default()
            },
        );
        let parsed = parse(&svid).unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        assert_eq!(parsed.spiffe_id().to_string(), AGENT);
    }
    let broken = [
        SvidOptions {
            is_ca: true,
            ..SvidOptions::default()
        },
        SvidOptions {
            no_uri_san: true,
            dns_sans: vec!["agent.local".into()],
            ..SvidOptions::default()
        },
        SvidOptions {
            extra_uri_san: Some("spiffe://example.org/second".into()),
            ..SvidOptions::default()
        },
    ];
    for opts in broken {
        let label = format!("{opts:?}");
        assert!(parse(&ca.issue_svid_with(AGENT, opts)).is_err(), "{label}");
    }
    let svid = ca.issue_svid(AGENT);
    assert!(svid
        .chain_pem()
        .starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(svid.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(ca.cert_pem().ends_with("-----END CERTIFICATE-----\n"));
    assert_eq!(svid.trust_domain(), "example.org");
}

#[tokio::test]
async fn expired_svid_is_not_usable() {
    let ca = TestCa::new("example.org");
    let now = SystemTime::now();
    let expired = ca.issue_svid_with(
        AGENT,
        SvidOptions {
            not_before: Some(now - Duration::from_secs(7200)),
            not_after: Some(now - Duration::from_secs(3600)),
            ..SvidOptions::default()
        },
    );
    let fake = FakeWorkloadApi::start(&socket_path("expired"), expired, vec![ca.bundle()])
        .await
        .unwrap();
    // The client parses it (it does not check validity dates) ...
    let client = WorkloadApiClient::connect_to(fake.endpoint())
        .await
        .unwrap();
    assert!(client.fetch_x509_svid().await.is_ok());
    // ... but X509Source will not start on it (it keeps retrying until the timeout).
    let built = X509Source::builder()
        .endpoint(fake.endpoint())
        .initial_sync_timeout(Duration::from_millis(500))
        .build()
        .await;
    assert!(built.is_err());
}
