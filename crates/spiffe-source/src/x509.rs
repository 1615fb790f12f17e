//! X.509-SVIDs and trust bundles: validation per the X.509-SVID specification and the
//! pre-computed material handshakes need (a rustls `CertifiedKey`, webpki trust anchors per
//! trust domain).

use crate::{IdentityError, SpiffeId};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CA certificates of one trust domain, with their webpki trust anchors.
pub struct TrustBundle {
    pub certs: Vec<CertificateDer<'static>>,
    pub anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        source_name: &str,
    ) -> Result<Self, IdentityError> {
        let mut anchors = Vec::with_capacity(certs.len());
        for (i, c) in certs.iter().enumerate() {
            let a = webpki::anchor_from_trusted_cert(c).map_err(|e| {
                err(
                    source_name,
                    format!("bundle certificate #{i} is not a usable CA certificate: {e}"),
                )
            })?;
            anchors.push(a.to_owned());
        }
        Ok(TrustBundle { certs, anchors })
    }
}

/// The agent's X.509 identity at one point in time: its SVID (chain + key) and the trust
/// bundles it verifies peers with, keyed by trust domain name. Immutable; a rotation publishes
/// a new one.
pub struct X509Identity {
    spiffe_id: SpiffeId,
    certified_key: Arc<CertifiedKey>,
    bundles: HashMap<String, TrustBundle>,
    not_after: SystemTime,
    /// Where it came from (for logs): a file path, a socket, "static".
    pub source: String,
}

impl std::fmt::Debug for X509Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("trust_domains", &self.bundles.keys().collect::<Vec<_>>())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

pub(crate) fn err(source_name: &str, message: impl Into<String>) -> IdentityError {
    IdentityError::Source {
        source_name: source_name.to_string(),
        message: message.into(),
    }
}

impl X509Identity {
    /// Validates and assembles an identity. `chain[0]` is the leaf. Checks: the leaf is an
    /// X.509-SVID (exactly one URI SAN holding a SPIFFE ID with a path, not a CA, digital
    /// signature key usage, no certificate-signing usage), it is within its validity period,
    /// the key belongs to the leaf, and — when a bundle for the SVID's own trust domain is
    /// given — that bundle signs the chain.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: Vec<(String, Vec<CertificateDer<'static>>)>,
        source_name: &str,
    ) -> Result<X509Identity, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| err(source_name, "the SVID certificate chain is empty"))?;
        let (spiffe_id, not_before, not_after) = validate_svid_leaf(leaf.as_ref())
            .map_err(|m| err(source_name, format!("not a valid X.509-SVID: {m}")))?;
        let now = SystemTime::now();
        if not_after <= now {
            return Err(err(
                source_name,
                format!("the X.509-SVID for {spiffe_id} has expired"),
            ));
        }
        if not_before > now + Duration::from_secs(60) {
            return Err(err(
                source_name,
                format!("the X.509-SVID for {spiffe_id} is not valid yet"),
            ));
        }
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified_key = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
            err(
                source_name,
                format!("the private key does not belong to the SVID certificate or cannot be used: {e}"),
            )
        })?;
        let mut map = HashMap::new();
        for (td, certs) in bundles {
            if certs.is_empty() {
                continue;
            }
            let b = TrustBundle::new(certs, source_name)?;
            map.insert(td, b);
        }
        let own_td = spiffe_id.trust_domain().to_string();
        if let Some(b) = map.get(&own_td) {
            let algs = provider.signature_verification_algorithms.all;
            let verify = |usage| verify_chain(&chain[0], &chain[1..], b, usage, algs);
            verify(webpki::KeyUsage::client_auth())
                .or_else(|_| verify(webpki::KeyUsage::server_auth()))
                .map_err(|e| {
                    err(
                        source_name,
                        format!("the bundle of trust domain {own_td} does not sign the SVID for {spiffe_id}: {e}"),
                    )
                })?;
        }
        Ok(X509Identity {
            spiffe_id,
            certified_key: Arc::new(certified_key),
            bundles: map,
            not_after,
            source: source_name.to_string(),
        })
    }

    /// Parses PEM texts (the spiffe-helper / static layout): `chain_pem` holds the leaf first,
    /// `key_pem` one private key, `bundle_pem` the CA certificates of our trust domain.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: Option<&[u8]>,
        names: [&str; 3],
    ) -> Result<X509Identity, IdentityError> {
        let chain = parse_certs(chain_pem, names[0])?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            err(
                names[1],
                format!("no usable PEM private key: {}", pem_error(&e)),
            )
        })?;
        let bundle = match bundle_pem {
            Some(b) => parse_certs(b, names[2])?,
            None => Vec::new(),
        };
        // The bundle file belongs to our own trust domain (spiffe-helper writes only it; a
        // federated bundle file is not part of its layout).
        let td = {
            let (id, _, _) = validate_svid_leaf(chain[0].as_ref())
                .map_err(|m| err(names[0], format!("not a valid X.509-SVID: {m}")))?;
            id.trust_domain().to_string()
        };
        let source = names[0];
        X509Identity::new(chain, key, vec![(td, bundle)], source)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }
    pub fn trust_domain(&self) -> &str {
        self.spiffe_id.trust_domain()
    }
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }
    pub fn bundle(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.bundles.keys().map(|s| s.as_str())
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// A short fingerprint of the leaf (SHA-256 prefix, hex) for logs.
    pub fn leaf_fingerprint(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.chain()[0].as_ref());
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
    /// True when `other` carries the same SVID and bundles (no rotation happened).
    pub fn same_material(&self, other: &X509Identity) -> bool {
        self.chain() == other.chain()
            && self.bundles.len() == other.bundles.len()
            && self
                .bundles
                .iter()
                .all(|(k, v)| other.bundles.get(k).is_some_and(|o| o.certs == v.certs))
    }
}

/// Verifies `leaf` (with `intermediates`) against `bundle` for the given usage, now, with the
/// crypto provider's signature algorithms `algs`.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: webpki::KeyUsage,
    algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
) -> Result<(), webpki::Error> {
    let now = rustls_pki_types::UnixTime::now();
    webpki::EndEntityCert::try_from(leaf)?
        .verify_for_usage(algs, &bundle.anchors, intermediates, now, usage, None, None)
        .map(|_| ())
}

fn parse_certs(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        out.push(c.map_err(|e| err(name, format!("bad PEM certificate: {}", pem_error(&e))))?);
    }
    if out.is_empty() {
        return Err(err(
            name,
            "no PEM certificate found (empty, truncated or not PEM)",
        ));
    }
    Ok(out)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM block of the expected type found".into(),
        E::MissingSectionEnd { .. } => "a PEM block is not terminated (half-written file?)".into(),
        E::IllegalSectionStart { .. } => "malformed PEM header line".into(),
        E::Base64Decode(_) => "PEM body is not valid base64".into(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// Checks the X.509-SVID leaf rules and returns (SPIFFE ID, not before, not after).
pub fn validate_svid_leaf(der: &[u8]) -> Result<(SpiffeId, SystemTime, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
    let id = spiffe_id_of(&cert)?;
    if id.path().is_empty() {
        return Err(format!(
            "the SPIFFE ID {id} of a leaf SVID must have a path"
        ));
    }
    if let Ok(Some(bc)) = cert.basic_constraints() {
        if bc.value.ca {
            return Err("the leaf certificate is a CA (basicConstraints CA=true)".into());
        }
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.value.digital_signature() {
                return Err("key usage lacks digitalSignature".into());
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err("a leaf SVID must not have keyCertSign or cRLSign key usage".into());
            }
        }
        Ok(None) => {}
        Err(_) => return Err("unparseable key usage extension".into()),
    }
    let v = cert.validity();
    let ts = |t: &ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    Ok((id, ts(&v.not_before), ts(&v.not_after)))
}

/// The SPIFFE ID in the certificate's one URI SAN.
pub fn spiffe_id_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<SpiffeId, String> {
    use x509_parser::extensions::GeneralName;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| "unparseable subjectAltName extension".to_string())?
        .ok_or_else(|| "no subjectAltName (an SVID needs exactly one URI SAN)".to_string())?;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris
        .next()
        .ok_or_else(|| "no URI SAN (an SVID needs exactly one URI SAN)".to_string())?;
    if uris.next().is_some() {
        return Err("more than one URI SAN (an SVID has exactly one)".into());
    }
    SpiffeId::parse(first)
}

/// The SPIFFE ID of a DER certificate (peer leaf), validating the SVID leaf rules.
pub fn peer_spiffe_id(der: &[u8]) -> Result<SpiffeId, String> {
    validate_svid_leaf(der).map(|(id, _, _)| id)
}
