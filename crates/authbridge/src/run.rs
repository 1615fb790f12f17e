//! `authbridge run`: wires config → listeners, starts the routes reloader, serves until
//! SIGTERM, then drains.

use crate::cli::LogFormat;
use crate::config::{
    build_table, ClientAuthKind, Config, Effective, IdentitySource, MtlsMode, NoTokenPolicy,
};
use outbound_exchange::proxy::{NoTokenPolicy as Policy, Outbound, OutboundSettings};
use outbound_exchange::routes::{parse_routes_yaml, Route, RouteTable};
use outbound_exchange::sts::{ClientAuth, StsClient};
use proxy_core::admin::{self, AdminState};
use proxy_core::inbound::{Inbound, InboundSettings, InboundUpstream, Mtls};
use proxy_core::metrics::Metrics;
use proxy_core::readiness::Readiness;
use proxy_core::{drain, SoOriginalDst};
use spiffe_source::{Identity, JwtSvidProvider, SourceSpec};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub fn init_tracing(format: LogFormat) {
    crate::logging::init(format);
}

fn config_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

pub fn run(path: &Path, log_format: LogFormat) -> ExitCode {
    let name = path.display().to_string();
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let eff = match cfg.validate(&name) {
        Ok(e) => e,
        Err(e) => return config_error(e),
    };
    let file_routes = match &eff.routes_file {
        Some(p) => match outbound_exchange::routes::load_routes_file(p) {
            Ok(r) => r,
            Err(e) => return config_error(e),
        },
        None => Vec::new(),
    };
    let table = build_table(file_routes, &eff.inline_routes, cfg.outbound.default_policy);
    if let Err(e) = cfg.validate_exchange(&name, &table) {
        return config_error(e);
    }
    init_tracing(log_format);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let _enter = rt.enter();
    let metrics = Arc::new(Metrics::new());
    let identity = match start_identity(&cfg, &eff, &metrics) {
        Ok(i) => i,
        Err(e) => return config_error(format!("{name}: identity: {e}")),
    };
    let sts = match build_sts(&cfg, &eff, &identity) {
        Ok(s) => s,
        Err(e) => return config_error(format!("{name}: {e}")),
    };
    rt.block_on(serve(cfg, eff, table, sts, identity, metrics))
}

/// Starts the configured identity source; rotations and errors are counted in
/// `authbridge_svid_rotations{result}`.
pub(crate) fn start_identity(
    cfg: &Config,
    eff: &Effective,
    metrics: &Arc<Metrics>,
) -> Result<Identity, spiffe_source::IdentityError> {
    let spec = match cfg.identity.source {
        IdentitySource::None => SourceSpec::None,
        IdentitySource::Files => SourceSpec::Files {
            dir: PathBuf::from(&cfg.identity.svid_dir),
        },
        IdentitySource::Static => SourceSpec::Static {
            cert: PathBuf::from(&cfg.identity.cert_file),
            key: PathBuf::from(&cfg.identity.key_file),
            bundle: (!cfg.identity.bundle_file.is_empty())
                .then(|| PathBuf::from(&cfg.identity.bundle_file)),
        },
        IdentitySource::WorkloadApi => SourceSpec::WorkloadApi {
            endpoint: eff.workload_api_endpoint.clone(),
        },
    };
    let m = metrics.clone();
    let on_event: spiffe_source::source::EventFn = Arc::new(move |kind, result| {
        let label = match (kind, result) {
            (_, "rotated") => "success",
            _ => "failure",
        };
        m.svid_rotations.get_or_create(&[("result", label)]).inc();
    });
    spiffe_source::source::start(&spec, on_event)
}

/// The multi-threaded runtime; exit code 1 when it cannot start.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

fn build_sts(
    cfg: &Config,
    eff: &Effective,
    identity: &Identity,
) -> Result<Option<StsClient>, String> {
    let client_id = (!cfg.outbound.client_id.is_empty()).then(|| cfg.outbound.client_id.clone());
    let auth = match cfg.outbound.client_auth {
        ClientAuthKind::ClientSecret => {
            if cfg.outbound.client_secret_file.is_empty() {
                return Ok(None);
            }
            let f = &cfg.outbound.client_secret_file;
            let secret = std::fs::read_to_string(f)
                .map_err(|e| format!("outbound.client_secret_file: cannot read {f}: {e}"))?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(format!("outbound.client_secret_file: {f} is empty"));
            }
            ClientAuth::Secret(Arc::from(secret))
        }
        ClientAuthKind::JwtSpiffe => match &identity.jwt {
            JwtSvidProvider::None => return Ok(None),
            provider => ClientAuth::JwtSpiffe {
                provider: provider.clone(),
                audience: (!cfg.outbound.jwt_svid_audience.is_empty())
                    .then(|| cfg.outbound.jwt_svid_audience.clone()),
            },
        },
    };
    StsClient::new(client_id, auth, eff.exchange_timeout).map(Some)
}

async fn serve(
    cfg: Config,
    eff: Effective,
    table: RouteTable,
    sts: Option<StsClient>,
    identity: Identity,
    metrics: Arc<Metrics>,
) -> ExitCode {
    for w in &eff.warnings {
        tracing::warn!("{w}");
    }
    for w in table.warnings() {
        tracing::warn!("routes: {w}");
    }
    tracing::info!(config = %serde_json::to_string(&cfg.dump()).unwrap_or_default(), "effective configuration");
    let readiness = Readiness::new();
    let (drain_trigger, drain_watch) = drain::channel();

    let bind = |key: &str, addr: std::net::SocketAddr| {
        proxy_core::listen::bind(addr).map_err(|e| {
            eprintln!("error: {key}: cannot listen on {addr}: {e}");
            ExitCode::from(1)
        })
    };
    let (outbound_listener, inbound_listener, admin_listener) = match (
        bind("outbound.listen", eff.outbound_listen),
        bind("inbound.listen", eff.inbound_listen),
        bind("admin.listen", eff.admin_listen),
    ) {
        (Ok(o), Ok(i), Ok(a)) => (o, i, a),
        (Err(code), _, _) | (_, Err(code), _) | (_, _, Err(code)) => return code,
    };

    let needs_sts = sts.is_some();
    // The JWT-SVID file matters only while some route exchanges tokens.
    let exchanges = table.needs_exchange();
    let (routes_tx, routes_rx) = watch::channel(Arc::new(table));
    if let Some(path) = eff.routes_file.clone() {
        tokio::spawn(reload_routes(
            path,
            eff.inline_routes.clone(),
            cfg.outbound.default_policy,
            needs_sts,
            cfg.identity.source != IdentitySource::None,
            routes_tx,
            metrics.clone(),
        ));
    }
    if let (IdentitySource::Files, ClientAuthKind::JwtSpiffe, true) =
        (cfg.identity.source, cfg.outbound.client_auth, exchanges)
    {
        let pending = readiness.pending("identity");
        let path = Path::new(&cfg.identity.svid_dir).join("jwt_svid.token");
        tokio::spawn(async move {
            let p = JwtSvidProvider::File { path };
            let mut logged = false;
            loop {
                match p.fetch("").await {
                    Ok(svid) => {
                        tracing::info!(spiffe_id = %svid.spiffe_id, "identity loaded (JWT-SVID)");
                        pending.ready();
                        return;
                    }
                    Err(e) if !logged => {
                        tracing::warn!(error = %e, "waiting for identity");
                        logged = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    let settings = OutboundSettings {
        token_url: (!cfg.outbound.token_url.is_empty()).then(|| cfg.outbound.token_url.clone()),
        no_token_policy: match cfg.outbound.no_token_policy {
            NoTokenPolicy::Deny => Policy::Deny,
            NoTokenPolicy::ClientCredentials => Policy::ClientCredentials,
            NoTokenPolicy::Passthrough => Policy::Passthrough,
        },
        cache: outbound_exchange::cache::CacheConfig {
            max_entries: cfg.outbound.token_cache_size,
            ..Default::default()
        },
        ..Default::default()
    };
    let outbound = Outbound::new(
        routes_rx,
        sts,
        Arc::new(SoOriginalDst),
        settings,
        metrics.clone(),
    );
    // Readiness waits for the X.509-SVID from sources that always provide one, and from the
    // files source when strict mTLS cannot work without it (spiffe-helper may be configured
    // to write only jwt_svid.token for outbound-only pods).
    if matches!(
        cfg.identity.source,
        IdentitySource::WorkloadApi | IdentitySource::Static
    ) || (cfg.identity.source == IdentitySource::Files && cfg.inbound.mtls == MtlsMode::Strict)
    {
        // Not ready until the first SVID, and again whenever it is withdrawn (expired with no
        // replacement), so traffic moves away from a pod that cannot do mTLS.
        let mut pending = Some(readiness.pending("identity"));
        let mut rx = identity.x509.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            loop {
                if rx.wait_for(|v| v.is_some()).await.is_err() {
                    return;
                }
                drop(pending.take());
                if rx.wait_for(|v| v.is_none()).await.is_err() {
                    return;
                }
                tracing::warn!("no valid X.509-SVID any more: reporting not ready");
                pending = Some(readiness.pending("identity"));
            }
        });
    }
    let authz = match &cfg.inbound.jwt {
        Some(j) => match inbound_authorizer(j, &identity.x509, &metrics, &readiness) {
            Ok(a) => Some(a),
            Err(e) => return config_error(format!("inbound.jwt: {e}")),
        },
        None => None,
    };
    let inbound = Inbound::new(
        InboundSettings {
            upstream: if cfg.inbound.upstream == "original-dst" {
                InboundUpstream::OriginalDst
            } else {
                InboundUpstream::Fixed(cfg.inbound.upstream.clone())
            },
            mtls: match cfg.inbound.mtls {
                MtlsMode::Strict => Mtls::Strict,
                MtlsMode::Permissive => Mtls::Permissive,
                MtlsMode::Disabled => Mtls::Disabled,
            },
            // Empty = our own trust domain: identity.trust_domain when set, else our SVID's.
            allowed_trust_domains: if cfg.inbound.allowed_trust_domains.is_empty()
                && !cfg.identity.trust_domain.is_empty()
            {
                vec![cfg.identity.trust_domain.clone()]
            } else {
                cfg.inbound.allowed_trust_domains.clone()
            },
            allowed_peers: eff.allowed_peers.clone(),
            header_read_timeout: eff.inbound_header_timeout,
            ..Default::default()
        },
        identity.x509.clone(),
        authz,
        Arc::new(SoOriginalDst),
        metrics.clone(),
    );
    outbound.set_identity(identity.x509.clone());
    let dump_cfg = cfg.clone();
    let state = AdminState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        config_dump: Arc::new(move || dump_cfg.dump()),
    };
    tracing::info!(inbound = %eff.inbound_listen, outbound = %eff.outbound_listen, admin = %eff.admin_listen, "listening");
    let in_task = tokio::spawn(inbound.serve(inbound_listener, drain_watch.clone()));
    let out_task = tokio::spawn(outbound.serve(outbound_listener, drain_watch.clone()));
    let out_task = tokio::spawn(async move {
        let _ = tokio::join!(in_task, out_task);
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, state, drain_watch.clone()));
    drop(drain_watch);

    let code = wait_then_drain(drain_trigger, eff.drain_grace, out_task).await;
    admin_task.abort();
    code
}

/// Waits for SIGTERM / ctrl-c, then drains: listeners close, in-flight requests get `grace`.
pub(crate) async fn wait_then_drain(
    trigger: drain::DrainTrigger,
    grace: Duration,
    out_task: tokio::task::JoinHandle<()>,
) -> ExitCode {
    shutdown_signal().await;
    tracing::info!(grace = ?grace, open = trigger.open_connections(), "draining: listeners closed, finishing in-flight requests");
    let clean = trigger.drain(grace).await;
    let _ = out_task.await;
    if clean {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("grace period over with connections still open; exiting");
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Polls the routes file (robust to ConfigMap `..data` symlink swaps and rename-over, which
/// change what the path resolves to) and applies a valid new version within about a second.
/// An invalid one keeps the routes in effect, logs why and counts the failure.
async fn reload_routes(
    path: PathBuf,
    inline: Vec<Route>,
    default_policy: outbound_exchange::Action,
    have_sts: bool,
    have_identity: bool,
    tx: watch::Sender<Arc<RouteTable>>,
    metrics: Arc<Metrics>,
) {
    let mut last = std::fs::read(&path).ok();
    let name = path.display().to_string();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "cannot read routes file; keeping the routes in effect");
                continue;
            }
        };
        if now == last {
            continue;
        }
        let text = now
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let result = parse_routes_yaml(&text, &name).map_err(|e| e.to_string()).and_then(|routes| {
            let table = build_table(routes, &inline, default_policy);
            if table.needs_exchange() && !have_sts {
                Err(format!("{name}: the new routes exchange tokens, but no token exchange client is configured (outbound.client_auth / identity)"))
            } else if let Some(r) = table.routes.iter().find(|r| r.mtls.is_some() && !have_identity) {
                Err(format!("{}: mtls: true needs our X.509-SVID, but identity.source is none", r.origin))
            } else {
                Ok(table)
            }
        });
        last = now;
        match result {
            Ok(table) => {
                tracing::info!(file = %name, routes = table.routes.len(), "routes reloaded");
                for w in table.warnings() {
                    tracing::warn!("routes: {w}");
                }
                metrics.route_reload("success").inc();
                let _ = tx.send(Arc::new(table));
            }
            Err(e) => {
                metrics.route_reload("failure").inc();
                tracing::error!(error = %e, "invalid routes file; keeping the routes in effect");
            }
        }
    }
}

/// The inbound JWT check: JWKS fetched in the background (pending `jwks` until loaded), the
/// audiences from the config or, by default, our own SPIFFE ID once the identity is loaded.
/// Until then requests that need a token are refused with 503 (fail closed).
pub(crate) fn inbound_authorizer(
    j: &crate::config::JwtConfig,
    identity: &spiffe_source::tls::IdentityRx,
    metrics: &Arc<Metrics>,
    readiness: &Readiness,
) -> Result<Arc<dyn proxy_core::inbound::Authorizer>, String> {
    let clock_skew = proxy_core::duration::parse_duration(&j.clock_skew)
        .map_err(|e| format!("clock_skew: {e}"))?;
    let bypass =
        inbound_jwt::BypassPaths::new(&j.bypass_paths).map_err(|e| format!("bypass_paths: {e}"))?;
    let cell = Arc::new(std::sync::OnceLock::new());
    let authorizer = JwtAuthorizer {
        auth: cell.clone(),
        bypass: bypass.clone(),
        metrics: metrics.clone(),
    };
    let build = {
        let j = j.clone();
        let metrics = metrics.clone();
        let cell = cell.clone();
        move |audiences: Vec<String>, readiness: &Readiness| -> Result<(), String> {
            let mut jc =
                inbound_jwt::JwtConfig::new(j.issuer.clone(), j.jwks_uri.clone(), audiences);
            jc.clock_skew = clock_skew;
            let jwks = inbound_jwt::Jwks::start(&jc, metrics.clone(), readiness)
                .map_err(|e| format!("jwks_uri: {e}"))?;
            let validator = Arc::new(inbound_jwt::Validator::new(jc, jwks));
            let _ = cell.set(inbound_jwt::JwtAuth::new(
                validator,
                bypass.clone(),
                &metrics,
            ));
            Ok(())
        }
    };
    if !j.audiences.is_empty() {
        build(j.audiences.clone(), readiness)?;
    } else {
        // Our SPIFFE ID (the default audience) is needed before the JWKS check can start.
        let pending = readiness.pending("jwks");
        let mut rx = identity.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let Ok(id) = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone()) else {
                return;
            };
            let Some(id) = id else { return };
            let aud = id.spiffe_id().to_string();
            tracing::info!(audience = %aud, "inbound.jwt.audiences defaults to our SPIFFE ID");
            if let Err(e) = build(vec![aud], &readiness) {
                tracing::error!(error = %e, "inbound.jwt");
            }
            drop(pending);
        });
    }
    Ok(Arc::new(authorizer))
}

struct JwtAuthorizer {
    auth: Arc<std::sync::OnceLock<inbound_jwt::JwtAuth>>,
    /// Used only until `auth` exists, so health checks on bypass paths work meanwhile.
    bypass: inbound_jwt::BypassPaths,
    metrics: Arc<Metrics>,
}

impl proxy_core::inbound::Authorizer for JwtAuthorizer {
    fn authorize<'a>(
        &'a self,
        headers: &'a mut http::HeaderMap,
        path: &'a str,
    ) -> proxy_core::inbound::AuthFuture<'a> {
        Box::pin(async move {
            match self.auth.get() {
                Some(auth) => auth.authorize(headers, path).await.map(|_| ()),
                // Caller copies of the identity headers were removed by the listener.
                None if self.bypass.matches(path) => Ok(()),
                None => Err({
                    self.metrics.inbound("deny", "not_ready").inc();
                    proxy_core::http::json_error(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "not_ready",
                        "the identity that inbound tokens must be addressed to is not loaded yet",
                    )
                }),
            }
        })
    }
}
