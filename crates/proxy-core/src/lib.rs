//! `proxy-core` owns the parts of AuthBridge that move bytes and are not about identity or
//! policy: listener plumbing, the original-destination seam (`SO_ORIGINAL_DST` in production,
//! injectable in tests), protocol sniffing (TLS ClientHello / SNI), upstream connections with
//! loop avoidance (socket mark), HTTP helpers shared by both directions, the admin server
//! (health, readiness, metrics, config dump) and graceful drain.
#![forbid(unsafe_code)]

pub mod admin;
pub mod drain;
pub mod duration;
pub mod forward;
pub mod http;
pub mod inbound;
pub mod iptables;
pub mod listen;
pub mod metrics;
pub mod orig_dst;
pub mod readiness;
pub mod sniff;
pub mod upstream;

pub use orig_dst::{OriginalDst, SoOriginalDst};
