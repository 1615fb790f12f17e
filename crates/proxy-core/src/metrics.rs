//! Prometheus metrics (§7). Counters for each label combination are resolved once at start so
//! the hot path only does an atomic increment.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

type Labels = [(&'static str, &'static str); 2];
type Label = [(&'static str, &'static str); 1];

/// Every counter AuthBridge exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    outbound: Family<Labels, Counter>,
    inbound: Family<Labels, Counter>,
    exchanges: Family<Label, Counter>,
    cache: Family<Label, Counter>,
    route_reloads: Family<Label, Counter>,
    /// JWKS fetches (`result` = success|failure).
    pub jwks_refreshes: Family<Label, Counter>,
    /// Identity updates (`result` = success|failure).
    pub svid_rotations: Family<Label, Counter>,
    /// TLS connections to exchange routes that had to be refused.
    pub tls_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("authbridge");
        let outbound = Family::<Labels, Counter>::default();
        let inbound = Family::<Labels, Counter>::default();
        let exchanges = Family::<Label, Counter>::default();
        let cache = Family::<Label, Counter>::default();
        let route_reloads = Family::<Label, Counter>::default();
        let jwks_refreshes = Family::<Label, Counter>::default();
        let svid_rotations = Family::<Label, Counter>::default();
        let tls_refused = Counter::default();
        registry.register(
            "outbound_requests",
            "Outbound requests by route action and outcome",
            outbound.clone(),
        );
        registry.register(
            "inbound_decisions",
            "Inbound requests by decision and reason",
            inbound.clone(),
        );
        registry.register(
            "token_exchanges",
            "RFC 8693 token exchanges sent to the STS by result",
            exchanges.clone(),
        );
        registry.register(
            "exchange_cache",
            "Exchanged-token cache lookups (hit, miss, shared = joined an in-flight exchange)",
            cache.clone(),
        );
        registry.register(
            "route_reloads",
            "Routes file reloads by result",
            route_reloads.clone(),
        );
        registry.register(
            "jwks_refreshes",
            "JWKS fetches by result",
            jwks_refreshes.clone(),
        );
        registry.register(
            "svid_rotations",
            "Identity (SVID) updates by result",
            svid_rotations.clone(),
        );
        registry.register(
            "outbound_tls_refused",
            "TLS connections refused: outbound TLS to exchange routes (tokens inside TLS cannot be rewritten) and inbound mTLS handshakes that failed verification",
            tls_refused.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            outbound,
            inbound,
            exchanges,
            cache,
            route_reloads,
            jwks_refreshes,
            svid_rotations,
            tls_refused,
        }
    }

    /// The counter for an outbound request outcome.
    pub fn outbound(&self, action: &'static str, outcome: &'static str) -> Counter {
        self.outbound
            .get_or_create(&[("action", action), ("outcome", outcome)])
            .clone()
    }
    /// The counter for an inbound decision.
    pub fn inbound(&self, decision: &'static str, reason: &'static str) -> Counter {
        self.inbound
            .get_or_create(&[("decision", decision), ("reason", reason)])
            .clone()
    }
    pub fn exchange(&self, result: &'static str) -> Counter {
        self.exchanges.get_or_create(&[("result", result)]).clone()
    }
    pub fn cache(&self, result: &'static str) -> Counter {
        self.cache.get_or_create(&[("result", result)]).clone()
    }
    pub fn route_reload(&self, result: &'static str) -> Counter {
        self.route_reloads
            .get_or_create(&[("result", result)])
            .clone()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
