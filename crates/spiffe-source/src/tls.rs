//! rustls configurations built from the live identity. The certificate resolvers and verifiers
//! read the current [`X509Identity`] from a `tokio::sync::watch` channel on every handshake, so
//! a rotated SVID or a new bundle is used by the next handshake, and connections already open
//! keep the keys they negotiated. We own these (rather than spiffe-rustls' `mtls_server`) so a
//! rotation can never leave a window in which handshakes are refused.

use crate::x509::{peer_spiffe_id, verify_chain, X509Identity};
use crate::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    ServerConfig, SignatureScheme,
};
use std::sync::Arc;
use tokio::sync::watch;

/// The live identity: `None` until the first SVID is loaded.
pub type IdentityRx = watch::Receiver<Option<Arc<X509Identity>>>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Presents the current SVID.
#[derive(Debug)]
struct SvidResolver(IdentityRx);

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|i| i.certified_key().clone())
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|i| i.certified_key().clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn other(msg: String) -> Error {
    #[derive(Debug)]
    struct Msg(String);
    impl std::fmt::Display for Msg {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Msg {}
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Msg(msg)))))
}

fn map_webpki(e: webpki::Error) -> Error {
    match e {
        webpki::Error::UnknownIssuer => Error::InvalidCertificate(CertificateError::UnknownIssuer),
        webpki::Error::CertExpired { .. } => Error::InvalidCertificate(CertificateError::Expired),
        webpki::Error::CertNotValidYet { .. } => {
            Error::InvalidCertificate(CertificateError::NotValidYet)
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            Error::InvalidCertificate(CertificateError::BadSignature)
        }
        other_err => other(format!("certificate verification failed: {other_err}")),
    }
}

/// Verifies a peer chain: the leaf must be an X.509-SVID and chain to the bundle of the
/// peer's own trust domain in the current identity.
fn verify_peer(
    rx: &IdentityRx,
    provider: &CryptoProvider,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, Error> {
    let id = peer_spiffe_id(end_entity.as_ref())
        .map_err(|m| other(format!("peer certificate is not an X.509-SVID: {m}")))?;
    let ident = rx.borrow().clone();
    let ident = ident.ok_or_else(|| other("no local identity loaded yet".into()))?;
    let bundle = ident
        .bundle(id.trust_domain())
        .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
    let algs = provider.signature_verification_algorithms.all;
    verify_chain(end_entity, intermediates, bundle, usage, algs).map_err(map_webpki)?;
    Ok(id)
}

/// The handshake-signature methods both verifiers share: checked with the provider's
/// algorithms (aws-lc-rs), as rustls' own WebPKI verifiers do.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    rx: IdentityRx,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_peer(
            &self.rx,
            &self.provider,
            end_entity,
            intermediates,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }
    handshake_signatures!();
}

/// What the client side of an mTLS connection expects of the server's SPIFFE ID.
#[derive(Debug, Clone)]
pub enum ExpectedPeer {
    /// Any SVID that chains to a bundle we hold.
    Any,
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
    /// Any SPIFFE ID in this trust domain.
    TrustDomain(String),
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    rx: IdentityRx,
    expected: ExpectedPeer,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = verify_peer(
            &self.rx,
            &self.provider,
            end_entity,
            intermediates,
            webpki::KeyUsage::server_auth(),
        )?;
        let ok = match &self.expected {
            ExpectedPeer::Any => true,
            ExpectedPeer::Exact(want) => &id == want,
            ExpectedPeer::TrustDomain(td) => id.trust_domain() == td,
        };
        if !ok {
            return Err(other(format!(
                "server SPIFFE ID {id} is not the expected peer"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
    handshake_signatures!();
}

/// The inbound mTLS server configuration: presents our current SVID and requires a client
/// X.509-SVID that chains to the bundle of the client's trust domain. Whether that trust
/// domain and SPIFFE ID are *allowed* is decided per request (403), from [`peer_id`].
pub fn server_config(rx: IdentityRx, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let provider = provider();
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            rx: rx.clone(),
            provider,
        }))
        .with_cert_resolver(Arc::new(SvidResolver(rx)));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// The client configuration for mTLS origination: presents our current SVID and verifies the
/// server's X.509-SVID against our bundles (and `expected`).
pub fn client_config(rx: IdentityRx, expected: ExpectedPeer, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            rx: rx.clone(),
            expected,
            provider,
        }))
        .with_client_cert_resolver(Arc::new(SvidResolver(rx)));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// The SPIFFE ID of the verified peer of a finished handshake.
pub fn peer_id(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    peer_certificates
        .and_then(|c| c.first())
        .and_then(|leaf| peer_spiffe_id(leaf.as_ref()).ok())
}
