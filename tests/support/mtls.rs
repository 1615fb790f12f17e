//! mTLS clients for the inbound tests: SPIFFE identities from `fake_workload_api::TestCa`,
//! real TLS handshakes, HTTP/1.1 on top.
#![allow(dead_code)]

use bytes::Bytes;
use fake_workload_api::{Svid, TestCa};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use spiffe_source::tls::{client_config, ExpectedPeer};
use spiffe_source::X509Identity;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// An identity holding `svid` and the given bundles (trust domain, CA).
pub fn identity(svid: &Svid, bundles: &[&TestCa]) -> Arc<X509Identity> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Arc::new(
        spiffe_source::source::identity_from_der(
            svid.chain_der.clone(),
            svid.key_pkcs8_der.clone(),
            bundles
                .iter()
                .map(|c| (c.trust_domain().to_string(), vec![c.cert_der()]))
                .collect(),
        )
        .expect("test identity"),
    )
}

/// Writes `svid` as the static identity files (cert, key, bundle) into `dir`.
pub fn write_static(dir: &Path, svid: &Svid, ca: &TestCa) -> (PathBuf, PathBuf, PathBuf) {
    let c = dir.join("svid.pem");
    let k = dir.join("svid_key.pem");
    let b = dir.join("svid_bundle.pem");
    std::fs::write(&c, svid.chain_pem()).unwrap();
    std::fs::write(&k, svid.key_pem()).unwrap();
    std::fs::write(&b, ca.cert_pem()).unwrap();
    (c, k, b)
}

pub struct MtlsClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub server_leaf: Vec<u8>,
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl MtlsClient {
    /// Handshakes with `addr` presenting `ident` (or no certificate when `None`).
    pub async fn connect(
        addr: SocketAddr,
        ident: Option<Arc<X509Identity>>,
        trust: Arc<X509Identity>,
    ) -> Result<MtlsClient, String> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // The client presents `ident` and verifies the server with `trust`'s bundles.
        let (_tx, rx) = watch::channel(Some(trust));
        let mut cfg = (*client_config(rx, ExpectedPeer::Any, &[b"http/1.1"])).clone();
        let (_tx2, rx2) = watch::channel(ident);
        if _tx2.borrow().is_none() {
            cfg.client_auth_cert_resolver = Arc::new(NoCert);
        } else {
            let c = client_config(rx2, ExpectedPeer::Any, &[]);
            cfg.client_auth_cert_resolver = c.client_auth_cert_resolver.clone();
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = connector
            .connect(
                rustls::pki_types::ServerName::try_from("agent").unwrap(),
                tcp,
            )
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let server_leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c[0].as_ref().to_vec())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(MtlsClient {
            sender,
            server_leaf,
        })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
        let mut b = http::Request::get(path).header("host", "agent.local");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::new())).unwrap()).await
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<Answer, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

#[derive(Debug)]
struct NoCert;
impl rustls::client::ResolvesClientCert for NoCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

/// One HTTP/2 request over mTLS (ALPN `h2`); returns (negotiated ALPN, status, body).
pub async fn h2_get(
    addr: SocketAddr,
    ident: Arc<X509Identity>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Option<Vec<u8>>, u16, String), String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (_tx, rx) = watch::channel(Some(ident));
    let cfg = client_config(rx, ExpectedPeer::Any, &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("agent").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = http::Request::get(format!("https://agent.local{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = sender
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((alpn, status, String::from_utf8_lossy(&body).into_owned()))
}
