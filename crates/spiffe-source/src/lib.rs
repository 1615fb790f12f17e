//! `spiffe-source` owns the agent's SPIFFE identity: SPIFFE ID parsing, X.509-SVID and bundle
//! validation, the identity sources, and the rustls configurations built from the live
//! identity.
//!
//! Sources ([`source::SourceSpec`]):
//! - `workload-api`: the SPIRE agent's Workload API via the `spiffe` crate (`X509Source`
//!   streaming SVIDs and bundles, JWT-SVIDs fetched per audience and cached);
//! - `files`: the layout spiffe-helper writes (`svid.pem`, `svid_key.pem`, `svid_bundle.pem`,
//!   `jwt_svid.token`), re-read so a rename-over or a `..data` symlink swap is picked up;
//! - `static`: fixed development certificates; `none`.
//!
//! Every source publishes into a `tokio::sync::watch` channel ([`tls::IdentityRx`]); the TLS
//! resolvers and verifiers read it per handshake, so rotations need no restart and do not cut
//! open connections. A candidate that fails validation never replaces the last good identity.
#![forbid(unsafe_code)]

pub mod id;
pub mod jwt_svid;
pub mod source;
pub mod tls;
pub mod workload;
pub mod x509;

pub use id::{check_trust_domain, IdPattern, SpiffeId};
pub use jwt_svid::{JwtSvid, JwtSvidProvider, SvidMinter};
pub use source::{Identity, SourceSpec};
pub use x509::X509Identity;

/// Errors from an identity source. Messages name the source (file path or socket) and never
/// contain key material or tokens.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    #[error("no identity source configured (identity.source: none)")]
    None,
}
