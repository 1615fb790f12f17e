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

/// The PEM files of one identity: a chain (leaf first), its key, and optionally the bundle of
/// its trust domain.
struct PemFiles<'a> {
    cert: &'a Path,
    key: &'a Path,
    bundle: Option<&'a Path>,
}

/// The bytes of the cert, key and (if present) bundle files.
#[derive(PartialEq, Eq)]
struct PemSet(Vec<u8>, Vec<u8>, Option<Vec<u8>>);

impl PemFiles<'_> {
    /// Reads the files; with `optional_bundle`, a missing bundle file counts as none.
    fn read(&self, optional_bundle: bool) -> Result<PemSet, IdentityError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                crate::x509::err(&p.display().to_string(), format!("cannot read: {e}"))
            })
        };
        let bundle = match self.bundle {
            Some(b) if optional_bundle && !b.exists() => None,
            Some(b) => Some(read(b)?),
            None => None,
        };
        Ok(PemSet(read(self.cert)?, read(self.key)?, bundle))
    }

    /// Validates the set as an identity; errors name the file at fault.
    fn parse(&self, set: &PemSet) -> Result<X509Identity, IdentityError> {
        let names = [
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.bundle
                .map(|b| b.display().to_string())
                .unwrap_or_default(),
        ];
        X509Identity::from_pem(
            &set.0,
            &set.1,
            set.2.as_deref(),
            [&names[0], &names[1], &names[2]],
        )
    }
}

fn load_pem_files(
    cert: &Path,
    key: &Path,
    bundle: Option<&Path>,
) -> Result<X509Identity, IdentityError> {
    let files = PemFiles { cert, key, bundle };
    files.parse(&files.read(false)?)
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

async fn watch_files(
    dir: PathBuf,
    tx: watch::Sender<Option<Arc<X509Identity>>>,
    on_event: EventFn,
) {
    let (cert, key, bundle) = (
        dir.join("svid.pem"),
        dir.join("svid_key.pem"),
        dir.join("svid_bundle.pem"),
    );
    let files = PemFiles {
        cert: &cert,
        key: &key,
        bundle: Some(&bundle),
    };
    // What was last seen, so a bad or missing set is reported once and retried when any file
    // changes: `Ok(set)` the bytes last tried, `Err(())` the files could not be read.
    let mut last: Option<Result<PemSet, ()>> = None;
    loop {
        match files.read(true) {
            Ok(set) => {
                if last.as_ref().is_none_or(|l| l.as_ref() != Ok(&set)) {
                    match files.parse(&set) {
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
                    last = Some(Ok(set));
                }
            }
            Err(e) => {
                if last != Some(Err(())) {
                    last = Some(Err(()));
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the SVID files (svid.pem, svid_key.pem); keeping the previous identity if any");
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
