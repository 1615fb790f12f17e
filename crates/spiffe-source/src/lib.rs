//! `spiffe-source` owns the agent's SPIFFE identity: SPIFFE ID parsing and the sources of
//! JWT-SVIDs (and, as they land, X.509-SVIDs and bundles) that the rest of AuthBridge uses.
//!
//! Sources:
//! - `files`: the layout spiffe-helper writes (`jwt_svid.token`, …), re-read when it changes,
//!   so a rename-over or a `..data` symlink swap is picked up on the next use.
#![forbid(unsafe_code)]

pub mod id;
pub mod jwt_svid;

pub use id::SpiffeId;
pub use jwt_svid::{JwtSvid, JwtSvidProvider, SvidMinter};

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
