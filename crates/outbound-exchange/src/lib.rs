//! `outbound-exchange` owns the outbound half of AuthBridge: the routes table (kagenti's
//! `routes.yaml`, glob host patterns, first match wins), the RFC 8693 token-exchange client
//! that authenticates as the agent (JWT-SVID `jwt-spiffe` assertion or client secret), the
//! bounded exchanged-token cache with single-flight, and the outbound proxy that captures the
//! agent's egress (redirected or explicit-proxy) and applies the route's action.
#![forbid(unsafe_code)]

pub mod cache;
pub mod glob;
pub mod proxy;
pub mod routes;
pub mod sts;

pub use routes::{Action, Route, RouteTable};
