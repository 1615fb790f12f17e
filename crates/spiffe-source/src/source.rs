//! Identity sources: where the agent's X.509-SVID, bundles and JWT-SVIDs come from, and the
//! tasks that keep them current. Every source publishes into one `watch` channel
//! ([`IdentityRx`]); a candidate that fails validation never replaces the last good identity.

use crate::jwt_svid::JwtSvidProvider;
use crate::tls::IdentityRx;
use crate::workload::WorkloadJwt;
use crate::x509::X509Identity;
use crate::IdentityError;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Which source, with its settings (config `identity`).
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// The SPIFFE Workload API (SPIRE agent) at `endpoint` (`unix:///path` or `tcp://h:p`).
    WorkloadApi {
        endpoint: String,
    },
    /// spiffe-helper's layout in `dir`: `svid.pem`, `svid_key.pem`, `svid_bundle.pem`,
    /// `jwt_svid.token`.
    Files {
        dir: PathBuf,
    },
    /// Fixed development certificates.
    Static {
        cert: PathBuf,
        key: PathBuf,
        bundle: Option<PathBuf>,
    },
    None,
}

/// Called on identity events: (`"x509"` | `"jwt"`, `"rotated"` | `"error"` | `"expired"`).
pub type EventFn = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// The running identity: the live X.509 identity and the JWT-SVID provider.
pub struct Identity {
    pub x509: IdentityRx,
    pub jwt: JwtSvidProvider,
    /// Keeps the publisher alive for sources without a task (static, none).
    _tx: Option<Arc<watch::Sender<Option<Arc<X509Identity>>>>>,
}

impl Identity {
    /// Waits until the first X.509-SVID is loaded.
    pub async fn x509_ready(&self) -> Arc<X509Identity> {
        let mut rx = self.x509.clone();
        loop {
            if let Some(i) = rx.borrow_and_update().clone() {
                return i;
            }
            if rx.changed().await.is_err() {
                // The publisher is gone without ever publishing: wait forever (not ready).
                std::future::pending::<()>().await;
            }
        }
    }
    /// The current X.509 identity, if loaded.
    pub fn current(&self) -> Option<Arc<X509Identity>> {
        self.x509.borrow().clone()
    }
}

/// Interval at which file sources are re-read (well inside the 2 s rotation contract).
pub const FILE_POLL: Duration = Duration::from_millis(500);

/// Starts a source. Static certificates are loaded (and errors returned) right here; the
/// Workload API and files sources load in the background (see [`Identity::x509_ready`]).
pub fn start(spec: &SourceSpec, on_event: EventFn) -> Result<Identity, IdentityError> {
    match spec {
        SourceSpec::None => {
            let (tx, rx) = watch::channel(None);
            Ok(Identity {
                x509: rx,
                jwt: JwtSvidProvider::None,
                _tx: Some(Arc::new(tx)),
            })
        }
        SourceSpec::Static { cert, key, bundle } => {
            let ident = load_pem_files(cert, key, bundle.as_deref())?;
            tracing::warn!(
                spiffe_id = %ident.spiffe_id(),
                cert = %cert.display(),
                "identity.source: static — DEVELOPMENT ONLY: this certificate is never rotated; use workload-api or files in production"
            );
            let (tx, rx) = watch::channel(Some(Arc::new(ident)));
            Ok(Identity {
                x509: rx,
                jwt: JwtSvidProvider::None,
                _tx: Some(Arc::new(tx)),
            })
        }
        SourceSpec::Files { dir } => {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(watch_files(dir.clone(), tx, on_event));
            Ok(Identity {
                x509: rx,
                jwt: JwtSvidProvider::File {
                    path: dir.join("jwt_svid.token"),
                },
                _tx: None,
            })
        }
        SourceSpec::WorkloadApi { endpoint } => {
            crate::workload::check_endpoint(endpoint)?;
            let (tx, rx) = watch::channel(None);
            tokio::spawn(crate::workload::run_x509(
                endpoint.clone(),
                tx,
                on_event.clone(),
            ));
            Ok(Identity {
                x509: rx,
                jwt: JwtSvidProvider::WorkloadApi(Arc::new(WorkloadJwt::new(
                    endpoint.clone(),
                    on_event,
                ))),
                _tx: None,
            })
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path)
        .map_err(|e| crate::x509::err(&path.display().to_string(), format!("cannot read: {e}")))
}

fn load_pem_files(
    cert: &Path,
    key: &Path,
    bundle: Option<&Path>,
) -> Result<X509Identity, IdentityError> {
    let c = read(cert)?;
    let k = read(key)?;
    let b = match bundle {
        Some(p) => Some(read(p)?),
        None => None,
    };
    let names = [
        cert.display().to_string(),
        key.display().to_string(),
        bundle.map(|b| b.display().to_string()).unwrap_or_default(),
    ];
    X509Identity::from_pem(&c, &k, b.as_deref(), [&names[0], &names[1], &names[2]])
}

/// Publishes `next` unless it carries the same material as the current identity.
pub(crate) fn publish(
    tx: &watch::Sender<Option<Arc<X509Identity>>>,
    next: X509Identity,
    on_event: &EventFn,
) {
    let changed = tx
        .borrow()
        .as_ref()
        .is_none_or(|cur| !cur.same_material(&next));
    if !changed {
        return;
    }
    let first = tx.borrow().is_none();
    tracing::info!(
        spiffe_id = %next.spiffe_id(),
        source = %next.source,
        leaf = %next.leaf_fingerprint(),
        trust_domains = ?next.trust_domains().collect::<Vec<_>>(),
        "{}",
        if first { "X.509 identity loaded" } else { "X.509 identity rotated" }
    );
    if !first {
        on_event("x509", "rotated");
    }
    tx.send_replace(Some(Arc::new(next)));
}

/// Drops the identity once its SVID has expired (fail closed: handshakes then fail rather
/// than present an expired certificate).
pub(crate) fn expire_if_needed(tx: &watch::Sender<Option<Arc<X509Identity>>>, on_event: &EventFn) {
    let expired = tx
        .borrow()
        .as_ref()
        .is_some_and(|i| i.not_after() <= SystemTime::now());
    if expired {
        tracing::error!("the X.509-SVID has expired and no new one arrived: mTLS handshakes are refused until the source delivers a valid SVID");
        on_event("x509", "expired");
        tx.send_replace(None);
    }
}

/// The bytes of `svid.pem`, `svid_key.pem` and (if present) `svid_bundle.pem`.
type PemSet = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

async fn watch_files(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<X509Identity>>>,
    on_event: EventFn,
) {
    let cert = dir.join("svid.pem");
    let key = dir.join("svid_key.pem");
    let bundle = dir.join("svid_bundle.pem");
    // The bytes last tried, so a bad set is reported once, and retried when any file changes.
    let mut last_tried: Option<[u8; 32]> = None;
    loop {
        let read_all = || -> std::io::Result<PemSet> {
            let c = std::fs::read(&cert)?;
            let k = std::fs::read(&key)?;
            let b = match std::fs::read(&bundle) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            Ok((c, k, b))
        };
        match read_all() {
            Ok((c, k, b)) => {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(&c);
                h.update([0]);
                h.update(&k);
                h.update([0]);
                h.update(b.as_deref().unwrap_or_default());
                let digest: [u8; 32] = h.finalize().into();
                if last_tried != Some(digest) {
                    last_tried = Some(digest);
                    let names = [
                        cert.display().to_string(),
                        key.display().to_string(),
                        bundle.display().to_string(),
                    ];
                    match X509Identity::from_pem(
                        &c,
                        &k,
                        b.as_deref(),
                        [&names[0], &names[1], &names[2]],
                    ) {
                        Ok(ident) => publish(&tx, ident, &on_event),
                        Err(e) => {
                            on_event("x509", "error");
                            if tx.borrow().is_some() {
                                tracing::warn!(error = %e, "new SVID files rejected; keeping the previous identity");
                            } else {
                                tracing::warn!(error = %e, "waiting for a valid SVID in {}", dir.display());
                            }
                        }
                    }
                }
            }
            Err(e) => {
                if last_tried.is_some() || tx.borrow().is_none() {
                    // Report a missing file once per state change.
                    let marker = [0xffu8; 32];
                    if last_tried != Some(marker) {
                        last_tried = Some(marker);
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot read the SVID files (svid.pem, svid_key.pem); keeping the previous identity if any");
                    }
                }
            }
        }
        expire_if_needed(&tx, &on_event);
        tokio::time::sleep(FILE_POLL).await;
    }
}

/// Helper for tests and tools: an identity from DER parts.
pub fn identity_from_der(
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
    bundles: Vec<(String, Vec<Vec<u8>>)>,
) -> Result<X509Identity, IdentityError> {
    X509Identity::new(
        chain.into_iter().map(CertificateDer::from).collect(),
        rustls_pki_types::PrivateKeyDer::Pkcs8(key_pkcs8.into()),
        bundles
            .into_iter()
            .map(|(td, c)| (td, c.into_iter().map(CertificateDer::from).collect()))
            .collect(),
        "in-memory",
    )
}
