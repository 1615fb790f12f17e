//! A fake SPIFFE Workload API (a stand-in for the SPIRE agent) for tests, plus a test CA.
//!
//! This crate owns:
//! - [`TestCa`]: an rcgen CA for one trust domain that issues X.509-SVIDs shaped like SPIRE's
//!   (and, through [`SvidOptions`], deliberately broken ones: expired, CA leaf, no or two URI SANs);
//! - [`FakeWorkloadApi`]: a tonic gRPC server on a Unix socket implementing the official
//!   `SpiffeWorkloadAPI` service (`proto/workload.proto`) — `FetchX509SVID`, `FetchX509Bundles`,
//!   `FetchJWTSVID`, `FetchJWTBundles`, `ValidateJWTSVID` — that the real `spiffe` crate client
//!   (`X509Source`, `JwtSource`, `WorkloadApiClient`) talks to. Tests push rotations, rotate the
//!   JWT signing key, take the agent away, and observe JWT-SVID requests and reconnects;
//! - [`pb`]: the generated messages, server and client stubs (for raw-protocol tests).
//!
//! Like SPIRE, every call must carry the metadata `workload.spiffe.io: true`, or it fails
//! with `InvalidArgument`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fake_workload_api::{FakeWorkloadApi, TestCa};
//! let ca = TestCa::new("example.org");
//! let svid = ca.issue_svid("spiffe://example.org/ns/default/sa/agent");
//! let dir = std::env::temp_dir().join("fwa-demo");
//! std::fs::create_dir_all(&dir)?;
//! let fake = FakeWorkloadApi::start(&dir.join("agent.sock"), svid, vec![ca.bundle()]).await?;
//! let endpoint = fake.endpoint(); // "unix:///tmp/fwa-demo/agent.sock"
//! # let _ = endpoint; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod ca;
mod jwt;
mod server;

pub use ca::{KeyType, Svid, SvidOptions, TestCa};
pub use server::{Bundles, FakeWorkloadApi, JwtRequest, DEFAULT_JWT_TTL, SECURITY_HEADER};

/// Messages and gRPC stubs generated from the SPIFFE `workload.proto` (no protobuf package,
/// so the service path is `/SpiffeWorkloadAPI/<Method>`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("_");
}
