//! A throw-away X.509 CA for one trust domain, issuing X.509-SVIDs shaped like SPIRE's.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, RsaKeySize, SanType,
};

/// Key algorithm of an issued SVID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (what SPIRE issues by default).
    #[default]
    EcdsaP256,
    /// ECDSA P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
}

/// Knobs for [`TestCa::issue_svid_with`], mostly to build SVIDs that a client must reject.
///
/// `SvidOptions::default()` gives the same SVID as [`TestCa::issue_svid`].
#[derive(Clone, Debug, Default)]
pub struct SvidOptions {
    /// Start of validity; default: now minus 1 minute.
    pub not_before: Option<SystemTime>,
    /// End of validity; default: now plus 1 hour. Set it in the past for an expired SVID.
    pub not_after: Option<SystemTime>,
    /// Issue the leaf with `CA:TRUE` and `keyCertSign` (not a valid SVID).
    pub is_ca: bool,
    /// Leave out the SPIFFE ID URI SAN (not a valid SVID).
    pub no_uri_san: bool,
    /// Add a second URI SAN (not a valid SVID).
    pub extra_uri_san: Option<String>,
    /// DNS SANs to add (allowed by the X.509-SVID spec).
    pub dns_sans: Vec<String>,
    /// Key algorithm; default ECDSA P-256.
    pub key_type: KeyType,
}

/// An X.509-SVID: certificate chain (leaf first) and its PKCS#8 private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Svid {
    /// The SPIFFE ID the SVID was issued for (even when `no_uri_san` left it out of the cert).
    pub spiffe_id: String,
    /// DER certificates, leaf first (no root).
    pub chain_der: Vec<Vec<u8>>,
    /// Unencrypted PKCS#8 DER private key of the leaf.
    pub key_pkcs8_der: Vec<u8>,
}

impl Svid {
    /// The chain as concatenated `CERTIFICATE` PEM blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain_der
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect()
    }

    /// The private key as a PKCS#8 `PRIVATE KEY` PEM block.
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_pkcs8_der)
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> &[u8] {
        &self.chain_der[0]
    }

    /// The trust domain name of `spiffe_id` (`example.org`).
    pub fn trust_domain(&self) -> &str {
        trust_domain_of(&self.spiffe_id)
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain_der.len())
            .finish_non_exhaustive()
    }
}

/// A self-signed CA for one trust domain (ECDSA P-256, valid 10 years from 1 hour ago).
pub struct TestCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA for `trust_domain` (`example.org`; a `spiffe://` prefix is accepted and dropped).
    ///
    /// # Panics
    /// If key generation or signing fails (never expected).
    pub fn new(trust_domain: &str) -> Self {
        let trust_domain = trust_domain_of(trust_domain).to_owned();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::default();
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIFFE");
        dn.push(
            DnType::CommonName,
            format!("fake-workload-api CA {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .expect("trust domain URI is ASCII"),
        )];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            trust_domain,
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The trust domain name, without `spiffe://`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// `(trust domain, [CA cert DER])`, the shape [`crate::FakeWorkloadApi::start`] takes.
    pub fn bundle(&self) -> (String, Vec<Vec<u8>>) {
        (self.trust_domain.clone(), vec![self.cert_der.clone()])
    }

    /// A valid X.509-SVID for `spiffe_id`: valid 1 h, `CA:FALSE` (critical),
    /// `digitalSignature`, `serverAuth`+`clientAuth`, exactly one URI SAN, ECDSA P-256.
    ///
    /// # Panics
    /// If `spiffe_id` is not ASCII or signing fails.
    pub fn issue_svid(&self, spiffe_id: &str) -> Svid {
        self.issue_svid_with(spiffe_id, SvidOptions::default())
    }

    /// An SVID shaped by `opts` (see [`SvidOptions`]).
    ///
    /// # Panics
    /// If a SAN is not ASCII or signing fails.
    pub fn issue_svid_with(&self, spiffe_id: &str, opts: SvidOptions) -> Svid {
        let key = match opts.key_type {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
        }
        .expect("SVID key");
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.not_before = opts
            .not_before
            .unwrap_or(now - Duration::from_secs(60))
            .into();
        params.not_after = opts
            .not_after
            .unwrap_or(now + Duration::from_secs(3600))
            .into();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIRE");
        params.distinguished_name = dn;
        let uri = |s: &str| SanType::URI(s.to_owned().try_into().expect("URI SAN is ASCII"));
        if !opts.no_uri_san {
            params.subject_alt_names.push(uri(spiffe_id));
        }
        if let Some(extra) = &opts.extra_uri_san {
            params.subject_alt_names.push(uri(extra));
        }
        for dns in &opts.dns_sans {
            params.subject_alt_names.push(SanType::DnsName(
                dns.clone().try_into().expect("DNS SAN is ASCII"),
            ));
        }
        if opts.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign SVID");
        Svid {
            spiffe_id: spiffe_id.to_owned(),
            chain_der: vec![cert.der().to_vec()],
            key_pkcs8_der: key.serialize_der(),
        }
    }
}

/// `spiffe://example.org/a/b` or `example.org` → `example.org`.
pub(crate) fn trust_domain_of(id: &str) -> &str {
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    rest.split('/').next().unwrap_or(rest)
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
