//! The SPIFFE Workload API source (SPIRE agent socket), through the `spiffe` crate:
//! `X509Source` streams X.509-SVIDs and bundles (with its own reconnect and backoff; the last
//! SVID stays in use while the agent is unreachable), and JWT-SVIDs are fetched per audience
//! and cached until half their lifetime has passed.

use crate::jwt_svid::JwtSvid;
use crate::source::{expire_if_needed, publish, EventFn};
use crate::x509::{err, X509Identity};
use crate::IdentityError;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use spiffe::{WorkloadApiClient, X509Source};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Rejects endpoint strings the Workload API client cannot use, naming the value.
pub fn check_endpoint(endpoint: &str) -> Result<(), IdentityError> {
    spiffe::transport::Endpoint::parse(endpoint)
        .map(|_| ())
        .map_err(|e| {
            err(
                endpoint,
                format!(
                    "invalid Workload API endpoint (expected unix:///path or tcp://host:port): {e}"
                ),
            )
        })
}

fn convert(src: &X509Source, endpoint: &str) -> Result<X509Identity, IdentityError> {
    let svid = src
        .svid()
        .map_err(|e| err(endpoint, format!("no X.509-SVID: {e}")))?;
    let bundles = src
        .bundle_set()
        .map_err(|e| err(endpoint, format!("no X.509 bundles: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(svid.private_key().as_bytes().to_vec().into());
    let bundles = bundles
        .iter()
        .map(|(td, b)| {
            (
                td.to_string(),
                b.authorities()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect(),
            )
        })
        .collect();
    X509Identity::new(chain, key, bundles, endpoint)
}

pub(crate) async fn run_x509(
    endpoint: String,
    tx: watch::Sender<Option<Arc<X509Identity>>>,
    on_event: EventFn,
) {
    let mut warned = false;
    let source = loop {
        match X509Source::builder()
            .endpoint(&endpoint)
            .initial_sync_timeout(Duration::from_secs(5))
            .build()
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                on_event("x509", "error");
                if !warned {
                    tracing::warn!(endpoint = %endpoint, error = %e, "waiting for the SPIFFE Workload API (is the SPIRE agent socket mounted?)");
                    warned = true;
                } else {
                    tracing::debug!(endpoint = %endpoint, error = %e, "Workload API still unavailable");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut updates = source.updated();
    loop {
        match convert(&source, &endpoint) {
            Ok(ident) => publish(&tx, ident, &on_event),
            Err(e) => {
                on_event("x509", "error");
                tracing::warn!(error = %e, "Workload API update rejected; keeping the previous identity");
            }
        }
        tokio::select! {
            r = updates.changed() => {
                if let Err(e) = r {
                    tracing::error!(endpoint = %endpoint, error = %e, "Workload API source closed");
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        expire_if_needed(&tx, &on_event);
    }
}

struct Cached {
    svid: JwtSvid,
    refresh_at: SystemTime,
}

/// JWT-SVIDs from the Workload API, per audience, cached until half their lifetime.
pub struct WorkloadJwt {
    endpoint: String,
    client: tokio::sync::Mutex<Option<WorkloadApiClient>>,
    cache: Mutex<HashMap<String, Cached>>,
    on_event: EventFn,
}

impl std::fmt::Debug for WorkloadJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadJwt")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

const MAX_AUDIENCES: usize = 64;

impl WorkloadJwt {
    pub fn new(endpoint: String, on_event: EventFn) -> Self {
        WorkloadJwt {
            endpoint,
            client: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            on_event,
        }
    }

    /// The cached JWT-SVID for `audience` while it is before its refresh time (half-life,
    /// so always before expiry).
    fn fresh(&self, audience: &str) -> Option<JwtSvid> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache.get(audience)?;
        (c.refresh_at > SystemTime::now()).then(|| c.svid.clone())
    }

    pub async fn fetch(&self, audience: &str) -> Result<JwtSvid, IdentityError> {
        if let Some(svid) = self.fresh(audience) {
            return Ok(svid);
        }
        let mut guard = self.client.lock().await;
        // Another caller may have refreshed it while we waited.
        if let Some(svid) = self.fresh(audience) {
            return Ok(svid);
        }
        let mut last_err = None;
        for _attempt in 0..2 {
            if guard.is_none() {
                match WorkloadApiClient::connect_to(&self.endpoint).await {
                    Ok(c) => *guard = Some(c),
                    Err(e) => {
                        last_err = Some(format!("cannot connect: {e}"));
                        continue;
                    }
                }
            }
            let client = guard.as_ref().expect("connected above");
            match client.fetch_jwt_svid([audience], None).await {
                Ok(s) => {
                    let svid = JwtSvid::from_compact(s.token(), &self.endpoint)?;
                    let fetched = SystemTime::now();
                    if svid.expiry <= fetched {
                        return Err(err(
                            &self.endpoint,
                            "the Workload API returned an expired JWT-SVID",
                        ));
                    }
                    let half = svid.expiry.duration_since(fetched).unwrap_or_default() / 2;
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= MAX_AUDIENCES && !cache.contains_key(audience) {
                        cache.clear();
                    }
                    let rotated = cache.contains_key(audience);
                    cache.insert(
                        audience.to_string(),
                        Cached {
                            svid: svid.clone(),
                            refresh_at: fetched + half,
                        },
                    );
                    if rotated {
                        (self.on_event)("jwt", "rotated");
                    }
                    return Ok(svid);
                }
                Err(e) => {
                    last_err = Some(format!(
                        "FetchJWTSVID for audience {audience:?} failed: {e}"
                    ));
                    *guard = None;
                }
            }
        }
        (self.on_event)("jwt", "error");
        // Keep using a still-valid cached JWT-SVID while the agent is unreachable.
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(audience)
        {
            if c.svid.expiry > SystemTime::now() + Duration::from_secs(5) {
                tracing::warn!(endpoint = %self.endpoint, error = %last_err.as_deref().unwrap_or(""), "Workload API unavailable; using the cached JWT-SVID");
                return Ok(c.svid.clone());
            }
        }
        Err(err(
            &self.endpoint,
            last_err.unwrap_or_else(|| "unavailable".into()),
        ))
    }
}
