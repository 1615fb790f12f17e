//! X.509-SVID validation, the files source (rename-over and `..data` swaps), and TLS
//! handshakes under rotation through real sockets.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, ServerName};
use spiffe_source::source::{start, EventFn, SourceSpec};
use spiffe_source::tls::{client_config, peer_id, server_config, ExpectedPeer};
use spiffe_source::x509::X509Identity;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    params: CertificateParams,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.clone().self_signed(&key).unwrap();
        Ca { cert, key, params }
    }
    fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
    fn pem(&self) -> String {
        self.cert.pem()
    }
    fn issue(
        &self,
        id: Option<&str>,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String, Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(id) = id {
            p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        tweak(&mut p);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (
            cert.pem(),
            key.serialize_pem(),
            cert.der().to_vec(),
            key.serialize_der(),
        )
    }
}

fn ident(ca: &Ca, id: &str, extra: &[(&str, &Ca)]) -> X509Identity {
    let (_, _, der, key) = ca.issue(Some(id), |_| {});
    let td = id
        .trim_start_matches("spiffe://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut bundles = vec![(td, vec![ca.der()])];
    for (td, c) in extra {
        bundles.push((td.to_string(), vec![c.der()]));
    }
    spiffe_source::source::identity_from_der(vec![der], key, bundles).unwrap()
}

fn names() -> [&'static str; 3] {
    ["svid.pem", "svid_key.pem", "svid_bundle.pem"]
}

#[test]
fn svid_validation_rules() {
    let ca = Ca::new("ca");
    let other = Ca::new("other");
    let (c, k, _, _) = ca.issue(Some("spiffe://example.org/ns/a/sa/b"), |_| {});
    let ok = X509Identity::from_pem(
        c.as_bytes(),
        k.as_bytes(),
        Some(ca.pem().as_bytes()),
        names(),
    )
    .unwrap();
    assert_eq!(ok.spiffe_id().as_str(), "spiffe://example.org/ns/a/sa/b");

    let bad = |c: &str, k: &str, b: Option<&str>| {
        X509Identity::from_pem(c.as_bytes(), k.as_bytes(), b.map(|b| b.as_bytes()), names())
            .unwrap_err()
            .to_string()
    };
    // No URI SAN.
    let (c2, k2, _, _) = ca.issue(None, |p| {
        p.subject_alt_names = vec![SanType::DnsName("x".try_into().unwrap())]
    });
    assert!(
        bad(&c2, &k2, None).contains("URI SAN"),
        "{}",
        bad(&c2, &k2, None)
    );
    // Two URI SANs.
    let (c3, k3, _, _) = ca.issue(Some("spiffe://example.org/a"), |p| {
        p.subject_alt_names
            .push(SanType::URI("spiffe://example.org/b".try_into().unwrap()))
    });
    assert!(bad(&c3, &k3, None).contains("more than one URI SAN"));
    // A CA as leaf.
    let (c4, k4, _, _) = ca.issue(Some("spiffe://example.org/a"), |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert!(bad(&c4, &k4, None).contains("CA"));
    // Expired.
    let (c5, k5, _, _) = ca.issue(Some("spiffe://example.org/a"), |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    assert!(bad(&c5, &k5, None).contains("expired"));
    // Key of another certificate.
    assert!(
        bad(&c, &k2, None).contains("private key does not belong"),
        "{}",
        bad(&c, &k2, None)
    );
    // A bundle that does not sign the SVID.
    assert!(bad(&c, &k, Some(&other.pem())).contains("does not sign"));
    // Garbage and half-written PEM.
    assert!(bad("garbage", &k, None).contains("svid.pem"));
    let half = &c[..c.len() / 2];
    assert!(bad(half, &k, None).contains("svid.pem"));
    assert!(bad(&c, "nope", None).contains("svid_key.pem"));
    // Trust domain root as leaf ID (no path).
    let (c6, k6, _, _) = ca.issue(Some("spiffe://example.org"), |_| {});
    assert!(bad(&c6, &k6, None).contains("path"));
    // Not a SPIFFE URI.
    let (c7, k7, _, _) = ca.issue(Some("https://example.org/a"), |_| {});
    assert!(bad(&c7, &k7, None).contains("SPIFFE"));
}

fn counter() -> (EventFn, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    (
        Arc::new(move |kind, result| {
            if kind == "x509" && result == "rotated" {
                n2.fetch_add(1, Ordering::SeqCst);
            }
        }),
        n,
    )
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ab-ident-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn wait_for_id(rx: &watch::Receiver<Option<Arc<X509Identity>>>, want_leaf: &[u8]) -> bool {
    for _ in 0..40 {
        if rx
            .borrow()
            .as_ref()
            .is_some_and(|i| i.chain()[0].as_ref() == want_leaf)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn write_set(dir: &Path, c: &str, k: &str, b: &str) {
    // spiffe-helper style: write to temp files, then rename over.
    for (name, data) in [("svid.pem", c), ("svid_key.pem", k), ("svid_bundle.pem", b)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[tokio::test]
async fn files_source_reloads_on_rename_and_keeps_last_good() {
    let ca = Ca::new("ca");
    let dir = tmpdir("rename");
    let (c1, k1, d1, _) = ca.issue(Some("spiffe://example.org/one"), |_| {});
    write_set(&dir, &c1, &k1, &ca.pem());
    let (ev, rotations) = counter();
    let id = start(&SourceSpec::Files { dir: dir.clone() }, ev).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(3), id.x509_ready())
        .await
        .unwrap();
    assert_eq!(first.spiffe_id().as_str(), "spiffe://example.org/one");

    let (c2, k2, d2, _) = ca.issue(Some("spiffe://example.org/two"), |_| {});
    write_set(&dir, &c2, &k2, &ca.pem());
    assert!(wait_for_id(&id.x509, &d2).await, "rotation not picked up");
    assert_eq!(rotations.load(Ordering::SeqCst), 1);

    // A corrupt set (cert of one SVID, key of another) keeps the previous identity.
    let (c3, _k3, d3, _) = ca.issue(Some("spiffe://example.org/three"), |_| {});
    write_set(&dir, &c3, &k1, &ca.pem());
    assert!(!wait_for_id(&id.x509, &d3).await);
    assert_eq!(id.current().unwrap().chain()[0].as_ref(), &d2[..]);
    // Half-written cert: still the previous one.
    std::fs::write(dir.join("svid.pem"), &c1[..c1.len() / 3]).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(id.current().unwrap().chain()[0].as_ref(), &d2[..]);
    // Completed: picked up.
    write_set(&dir, &c1, &k1, &ca.pem());
    assert!(wait_for_id(&id.x509, &d1).await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn files_source_follows_kubernetes_data_symlink_swap() {
    let ca = Ca::new("ca");
    let dir = tmpdir("dotdata");
    let put = |gen: &str, c: &str, k: &str| {
        let g = dir.join(gen);
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("svid.pem"), c).unwrap();
        std::fs::write(g.join("svid_key.pem"), k).unwrap();
        std::fs::write(g.join("svid_bundle.pem"), ca.pem()).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(gen, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    let (c1, k1, _, _) = ca.issue(Some("spiffe://example.org/one"), |_| {});
    put("..2026_01", &c1, &k1);
    for f in ["svid.pem", "svid_key.pem", "svid_bundle.pem"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
    }
    let (ev, _) = counter();
    let id = start(&SourceSpec::Files { dir: dir.clone() }, ev).unwrap();
    tokio::time::timeout(Duration::from_secs(3), id.x509_ready())
        .await
        .unwrap();
    let (c2, k2, d2, _) = ca.issue(Some("spiffe://example.org/two"), |_| {});
    put("..2026_02", &c2, &k2);
    assert!(
        wait_for_id(&id.x509, &d2).await,
        "..data swap not picked up"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn static_source_errors_name_the_file() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ev, _) = counter();
        let e = start(
            &SourceSpec::Static {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
                bundle: None,
            },
            ev,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    });
}

/// A TLS echo server using the live identity; returns its address.
async fn tls_server(
    rx: watch::Receiver<Option<Arc<X509Identity>>>,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(rx, &[]));
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p2 = peers.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let peers = p2.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let id = peer_id(tls.get_ref().1.peer_certificates()).map(|i| i.to_string());
                peers.lock().unwrap().push(id.unwrap_or_default());
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, peers)
}

async fn connect(
    addr: std::net::SocketAddr,
    rx: watch::Receiver<Option<Arc<X509Identity>>>,
    expected: ExpectedPeer,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    let connector = tokio_rustls::TlsConnector::from(client_config(rx, expected, &[]));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("agent").unwrap(), tcp)
        .await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    Ok((tls, leaf))
}

#[tokio::test]
async fn mtls_rotation_new_handshakes_use_new_svid_open_connections_survive() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = Ca::new("ca");
    let server = ident(&ca, "spiffe://example.org/server", &[]);
    let first_leaf = server.chain()[0].as_ref().to_vec();
    let (stx, srx) = watch::channel(Some(Arc::new(server)));
    let (_ctx, crx) = watch::channel(Some(Arc::new(ident(
        &ca,
        "spiffe://example.org/client",
        &[],
    ))));
    let (addr, peers) = tls_server(srx).await;

    let (mut open, leaf) = connect(addr, crx.clone(), ExpectedPeer::Any).await.unwrap();
    assert_eq!(leaf, first_leaf);
    assert_eq!(peers.lock().unwrap()[0], "spiffe://example.org/client");

    // Rotate; handshakes in a tight loop meanwhile must all succeed.
    let rotated = ident(&ca, "spiffe://example.org/server", &[]);
    let new_leaf = rotated.chain()[0].as_ref().to_vec();
    let hammer = {
        let crx = crx.clone();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..60 {
                connect(addr, crx.clone(), ExpectedPeer::Any)
                    .await
                    .expect("handshake during rotation");
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    stx.send_replace(Some(Arc::new(rotated)));
    assert_eq!(hammer.await.unwrap(), 60);
    let (_, leaf2) = connect(addr, crx.clone(), ExpectedPeer::Any).await.unwrap();
    assert_eq!(leaf2, new_leaf);
    // The connection opened before the rotation still works.
    open.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn bundle_push_trusts_new_ca_only_after_the_push_and_foreign_domains_need_a_bundle() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = Ca::new("ca");
    let new_ca = Ca::new("new-ca");
    let fed_ca = Ca::new("partner");
    let (stx, srx) = watch::channel(Some(Arc::new(ident(
        &ca,
        "spiffe://example.org/server",
        &[],
    ))));
    let (addr, _) = tls_server(srx).await;
    // A client with an SVID from the new CA.
    let (_ctx, crx_new) = watch::channel(Some(Arc::new({
        let (_, _, der, key) = new_ca.issue(Some("spiffe://example.org/client"), |_| {});
        spiffe_source::source::identity_from_der(
            vec![der],
            key,
            vec![("example.org".into(), vec![ca.der(), new_ca.der()])],
        )
        .unwrap()
    })));
    assert!(
        connect(addr, crx_new.clone(), ExpectedPeer::Any)
            .await
            .is_err(),
        "new CA trusted before the push"
    );
    // Push a bundle holding both CAs (same server SVID).
    let cur = stx.borrow().clone().unwrap();
    let (_, _, der, key) = ca.issue(Some("spiffe://example.org/server"), |_| {});
    let _ = cur;
    stx.send_replace(Some(Arc::new(
        spiffe_source::source::identity_from_der(
            vec![der],
            key,
            vec![("example.org".into(), vec![ca.der(), new_ca.der()])],
        )
        .unwrap(),
    )));
    connect(addr, crx_new, ExpectedPeer::Any)
        .await
        .expect("new CA trusted after the push");

    // A federated peer: refused until the server holds partner.example's bundle.
    let (_ftx, frx) = watch::channel(Some(Arc::new({
        let (_, _, der, key) = fed_ca.issue(Some("spiffe://partner.example/client"), |_| {});
        spiffe_source::source::identity_from_der(
            vec![der],
            key,
            vec![
                ("partner.example".into(), vec![fed_ca.der()]),
                ("example.org".into(), vec![ca.der()]),
            ],
        )
        .unwrap()
    })));
    assert!(connect(addr, frx.clone(), ExpectedPeer::Any).await.is_err());
    stx.send_replace(Some(Arc::new(ident(
        &ca,
        "spiffe://example.org/server",
        &[("partner.example", &fed_ca)],
    ))));
    connect(addr, frx.clone(), ExpectedPeer::Any)
        .await
        .expect("federated peer after bundle");

    // Expected peer on the client side.
    assert!(connect(
        addr,
        frx.clone(),
        ExpectedPeer::Exact(spiffe_source::SpiffeId::parse("spiffe://example.org/other").unwrap())
    )
    .await
    .is_err());
    connect(
        addr,
        frx,
        ExpectedPeer::Exact(spiffe_source::SpiffeId::parse("spiffe://example.org/server").unwrap()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn client_without_certificate_or_with_plain_tls_cert_is_refused() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = Ca::new("ca");
    let (_stx, srx) = watch::channel(Some(Arc::new(ident(
        &ca,
        "spiffe://example.org/server",
        &[],
    ))));
    let (addr, _) = tls_server(srx).await;
    // No client certificate.
    let (_tx, none_rx) = watch::channel(None);
    assert!(connect(addr, none_rx, ExpectedPeer::Any).await.is_err());
    let _ = CertificateDer::from(vec![]);
}
