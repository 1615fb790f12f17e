//! `authbridge dev` (contract §8): a zero-setup local gateway. An in-memory dev trust domain
//! (`spiffe://dev.local`), the embedded dev issuer, the inbound gateway (JWT validation against
//! the dev issuer — or `--issuer` — and permissive mTLS with the dev identity, forwarding to
//! `--app`), the outbound proxy (explicit HTTP proxy) and the admin server, all on 127.0.0.1,
//! no files read or written unless asked for.

use crate::cli::LogFormat;
use crate::config::NoTokenPolicy as CfgNoTokenPolicy;
use crate::dev_issuer::{DevIssuer, DevTrustDomain, AGENT_ID, JWT_SVID_TTL, TRUST_DOMAIN};
use clap::Args;
use outbound_exchange::proxy::{NoTokenPolicy, Outbound, OutboundSettings};
use outbound_exchange::routes::{parse_routes_yaml, validate_http_url, Action, RouteTable};
use outbound_exchange::sts::{ClientAuth, StsClient};
use proxy_core::admin::{self, AdminState};
use proxy_core::inbound::{Inbound, InboundSettings, InboundUpstream, Mtls};
use proxy_core::metrics::Metrics;
use proxy_core::readiness::Readiness;
use proxy_core::{drain, SoOriginalDst};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The routes `dev` uses when neither `--routes` nor `--config` gives any: requests to tools on
/// this machine are exchanged for a token with audience `dev-tool`; everything else (public
/// APIs with their own keys, HTTPS via CONNECT) passes through untouched.
pub const DEFAULT_ROUTES: &str = r#"- host: "localhost"
  target_audience: dev-tool
- host: "*.localhost"
  target_audience: dev-tool
- host: "127.0.0.1"
  target_audience: dev-tool
- host: "::1"
  target_audience: dev-tool
"#;

const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long `dev` waits for the issuer's JWKS before printing the banner anyway.
const READY_WAIT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the inbound gateway sends validated requests: your agent's HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    app: String,
    /// A routes.yaml to use instead of the built-in dev routes.
    #[arg(long, value_name = "FILE")]
    routes: Option<PathBuf>,
    /// A config file for outbound policy (routes_file, routes, default_policy, no_token_policy,
    /// client_id) and inbound.jwt (audiences, clock_skew, bypass_paths). Listen addresses,
    /// identity and the other inbound settings in it are ignored by `dev`.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use a real issuer instead of the embedded one, for token exchange and for validating
    /// inbound tokens (its discovery document's issuer and jwks_uri), e.g. a Keycloak realm URL
    /// http://localhost:8080/realms/dev (token URL = URL/protocol/openid-connect/token).
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// Port of the inbound gateway on 127.0.0.1.
    #[arg(long, default_value_t = 15124)]
    inbound_port: u16,
    /// Port of the outbound proxy on 127.0.0.1.
    #[arg(long, default_value_t = 15123)]
    outbound_port: u16,
    /// Port of the embedded dev issuer on 127.0.0.1.
    #[arg(long, default_value_t = 15125)]
    issuer_port: u16,
    /// Port of the admin server on 127.0.0.1.
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Binds 127.0.0.1:`port`; a port in use names the port and the flag that changes it.
fn bind(name: &str, port: u16, flag: &str) -> Result<std::net::TcpListener, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{name}: port {port} on 127.0.0.1 is already in use; choose another port with {flag} PORT")
        } else {
            format!("{name}: cannot listen on {addr}: {e} (choose another port with {flag} PORT)")
        }
    })?;
    l.set_nonblocking(true)
        .map_err(|e| format!("{name}: cannot set up {addr}: {e}"))?;
    Ok(l)
}

/// `HOST:PORT` with a numeric port.
fn check_app(app: &str) -> Result<(), String> {
    let ok = app
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--app: {app:?} is not HOST:PORT (e.g. 127.0.0.1:8000)"
        ))
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The outbound policy in effect.
struct Policy {
    table: RouteTable,
    origin: String,
    no_token: NoTokenPolicy,
    client_id: Option<String>,
    /// `inbound.jwt` of `--config` (its audiences, clock_skew and bypass_paths apply).
    inbound_jwt: Option<crate::config::JwtConfig>,
    warnings: Vec<String>,
}

fn load_policy(args: &DevArgs) -> Result<Policy, String> {
    let mut warnings = Vec::new();
    let (cfg, table, w) = if args.config.is_some() || args.routes.is_some() {
        crate::cli::load_all(args.config.as_deref(), args.routes.as_deref())?
    } else {
        (
            crate::config::Config::default(),
            RouteTable::new(Vec::new(), Action::Passthrough),
            Vec::new(),
        )
    };
    warnings.extend(w);
    let no_token = match (&args.config, cfg.outbound.no_token_policy) {
        (None, _) => NoTokenPolicy::Passthrough,
        (Some(_), CfgNoTokenPolicy::Deny) => NoTokenPolicy::Deny,
        (Some(_), CfgNoTokenPolicy::ClientCredentials) => NoTokenPolicy::ClientCredentials,
        (Some(_), CfgNoTokenPolicy::Passthrough) => NoTokenPolicy::Passthrough,
    };
    if let Some(c) = &args.config {
        let name = c.display();
        if cfg.inbound.jwt.is_some() {
            warnings.push(format!(
                "{name}: inbound.jwt.issuer and jwks_uri are ignored by dev (the embedded issuer or --issuer is used); its audiences, clock_skew and bypass_paths apply"
            ));
        }
        if !cfg.outbound.token_url.is_empty() {
            warnings.push(format!(
                "{name}: outbound.token_url is ignored by dev (the embedded issuer or --issuer is used)"
            ));
        }
    }
    let client_id = (!cfg.outbound.client_id.is_empty()).then(|| cfg.outbound.client_id.clone());
    let (table, origin) = match (&args.routes, &args.config) {
        (Some(r), _) => (table, r.display().to_string()),
        (None, Some(c)) if !table.routes.is_empty() => (table, c.display().to_string()),
        _ => {
            let routes = parse_routes_yaml(DEFAULT_ROUTES, "dev default routes")
                .map_err(|e| e.to_string())?;
            (
                RouteTable::new(routes, table.default_policy),
                "built-in dev defaults; --routes FILE to change".to_string(),
            )
        }
    };
    Ok(Policy {
        table,
        origin,
        no_token,
        client_id,
        inbound_jwt: cfg.inbound.jwt.clone(),
        warnings,
    })
}

/// The issuer tokens are exchanged at and inbound tokens are validated against.
struct IssuerInfo {
    token_url: String,
    /// Audience of the JWT-SVID client assertion.
    assertion_aud: String,
    /// The `iss` inbound tokens must carry.
    issuer: String,
    jwks_uri: String,
    external: bool,
}

/// A real issuer given with `--issuer`: its token URL, `iss` and JWKS from its discovery
/// document, after checking it answers.
async fn probe_issuer(url: &str) -> Result<IssuerInfo, String> {
    validate_http_url(url).map_err(|e| format!("--issuer: {e}"))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let disco = format!("{url}/.well-known/openid-configuration");
    let resp = http.get(&disco).send().await.map_err(|e| {
        let why = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        format!("--issuer: {url} is unreachable (GET {disco}: {why}); is the issuer running?")
    })?;
    if !resp.status().is_success() {
        return Err(format!(
            "--issuer: GET {disco} answered HTTP {}; expected an OpenID discovery document (for Keycloak give the realm URL, e.g. http://localhost:8080/realms/NAME)",
            resp.status().as_u16()
        ));
    }
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|_| format!("--issuer: {disco} is not JSON"))?;
    let field = |name: &str| v.get(name).and_then(|t| t.as_str()).map(str::to_string);
    // Keycloak: the realm's own endpoints, reachable at the URL the developer gave (its
    // discovery document may name a hostname only the container network resolves).
    let keycloak = url.contains("/realms/");
    let (token_url, jwks_uri) = if keycloak {
        (
            format!("{url}/protocol/openid-connect/token"),
            format!("{url}/protocol/openid-connect/certs"),
        )
    } else {
        (
            field("token_endpoint")
                .ok_or_else(|| format!("--issuer: {disco} has no token_endpoint"))?,
            field("jwks_uri").ok_or_else(|| format!("--issuer: {disco} has no jwks_uri"))?,
        )
    };
    validate_http_url(&token_url).map_err(|e| format!("--issuer: token_endpoint: {e}"))?;
    validate_http_url(&jwks_uri).map_err(|e| format!("--issuer: jwks_uri: {e}"))?;
    Ok(IssuerInfo {
        token_url,
        assertion_aud: url.to_string(),
        issuer: field("issuer").unwrap_or_else(|| url.to_string()),
        jwks_uri,
        external: true,
    })
}

/// The inbound JWT check: the issuer's `iss` and JWKS; audiences, clock skew and bypass paths
/// from `--config`'s `inbound.jwt` when given, else the agent's SPIFFE ID and the defaults.
fn inbound_jwt(policy: &Policy, info: &IssuerInfo) -> crate::config::JwtConfig {
    let mut j = policy.inbound_jwt.clone().unwrap_or_default();
    j.issuer = info.issuer.clone();
    j.jwks_uri = info.jwks_uri.clone();
    if j.audiences.is_empty() {
        j.audiences = vec![AGENT_ID.to_string()];
    }
    j
}

fn describe_route(r: &outbound_exchange::Route) -> String {
    let mut s = format!("{:?} -> {}", r.pattern.as_str(), r.action);
    if let Some(a) = &r.audience {
        s.push_str(&format!(", audience {a:?}"));
    }
    if let Some(sc) = &r.scopes {
        s.push_str(&format!(", scopes {sc:?}"));
    }
    if let Some(u) = &r.token_url {
        s.push_str(&format!(", token_url {u}"));
    }
    s
}

fn no_token_str(p: NoTokenPolicy) -> &'static str {
    match p {
        NoTokenPolicy::Deny => "deny (401 missing_token)",
        NoTokenPolicy::ClientCredentials => "client-credentials",
        NoTokenPolicy::Passthrough => "passthrough (sent on unchanged)",
    }
}

/// The four listeners, bound before anything is printed.
struct Listeners {
    inbound: std::net::TcpListener,
    outbound: std::net::TcpListener,
    issuer: std::net::TcpListener,
    admin: std::net::TcpListener,
}

pub fn dev(args: DevArgs, log_format: LogFormat) -> ExitCode {
    if let Err(e) = check_app(&args.app) {
        return usage_error(e);
    }
    let external = args
        .issuer
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_string());
    let policy = match load_policy(&args) {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    let trust = match DevTrustDomain::generate() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let issuer_url = format!("http://127.0.0.1:{}", args.issuer_port);
    let issuer = match DevIssuer::new(issuer_url.clone(), trust.clone()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut bound = Vec::new();
    for (name, port, flag) in [
        ("inbound", args.inbound_port, "--inbound-port"),
        ("outbound", args.outbound_port, "--outbound-port"),
        ("issuer", args.issuer_port, "--issuer-port"),
        ("admin", args.admin_port, "--admin-port"),
    ] {
        match bind(name, port, flag) {
            Ok(l) => bound.push(l),
            Err(e) => return usage_error(e),
        }
    }
    let [inbound, outbound, issuer_l, admin]: [std::net::TcpListener; 4] = match bound.try_into() {
        Ok(a) => a,
        Err(_) => return ExitCode::from(1),
    };
    let listeners = Listeners {
        inbound,
        outbound,
        issuer: issuer_l,
        admin,
    };
    let rt = match crate::run::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let info = match &external {
        None => IssuerInfo {
            token_url: issuer.token_url(),
            assertion_aud: issuer_url.clone(),
            issuer: issuer_url.clone(),
            jwks_uri: format!("{issuer_url}/jwks"),
            external: false,
        },
        Some(u) => match rt.block_on(probe_issuer(u)) {
            Ok(i) => i,
            Err(e) => return usage_error(e),
        },
    };
    let sts = match StsClient::new(
        policy.client_id.clone(),
        ClientAuth::JwtSpiffe {
            provider: trust.provider(),
            audience: Some(info.assertion_aud.clone()),
        },
        Duration::from_secs(10),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let jwt = inbound_jwt(&policy, &info);
    crate::run::init_tracing(log_format);
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    for w in policy.table.warnings() {
        tracing::warn!("routes: {w}");
    }
    let banner = banner(&args, &policy, &trust, &issuer_url, &info, &jwt);
    rt.block_on(serve(
        listeners, issuer, trust, sts, policy, info, jwt, args.app, banner,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    listeners: Listeners,
    issuer: Arc<DevIssuer>,
    trust: Arc<DevTrustDomain>,
    sts: StsClient,
    policy: Policy,
    info: IssuerInfo,
    jwt: crate::config::JwtConfig,
    app: String,
    banner: String,
) -> ExitCode {
    let conv = tokio::net::TcpListener::from_std;
    let (inbound_l, outbound_l, issuer_l, admin_l) = match (
        conv(listeners.inbound),
        conv(listeners.outbound),
        conv(listeners.issuer),
        conv(listeners.admin),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            eprintln!("error: cannot register the listeners with the runtime");
            return ExitCode::from(1);
        }
    };
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let (drain_trigger, drain_watch) = drain::channel();

    // The agent's X.509-SVID for inbound mTLS; never rotated (it outlives any dev session).
    let agent_x509 = match trust.agent_x509() {
        Ok(i) => Arc::new(i),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (_x509_tx, x509_rx) = watch::channel(Some(agent_x509));
    let authz = match crate::run::inbound_authorizer(&jwt, &x509_rx, &metrics, &readiness) {
        Ok(a) => a,
        Err(e) => return usage_error(format!("inbound.jwt: {e}")),
    };
    let inbound = Inbound::new(
        InboundSettings {
            upstream: InboundUpstream::Fixed(app.clone()),
            mtls: Mtls::Permissive,
            ..Default::default()
        },
        x509_rx,
        Some(authz),
        Arc::new(SoOriginalDst),
        metrics.clone(),
    );

    let addr =
        |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let routes_dump: Vec<String> = policy.table.routes.iter().map(describe_route).collect();
    let dump = serde_json::json!({
        "mode": "dev",
        "trust_domain": format!("spiffe://{TRUST_DOMAIN}"),
        "agent_spiffe_id": AGENT_ID,
        "inbound": {
            "listen": addr(&inbound_l),
            "upstream": app,
            "mtls": "permissive",
            "jwt": {
                "issuer": jwt.issuer,
                "jwks_uri": jwt.jwks_uri,
                "audiences": jwt.audiences,
                "clock_skew": jwt.clock_skew,
                "bypass_paths": jwt.bypass_paths,
            },
        },
        "outbound": {
            "listen": addr(&outbound_l),
            "token_url": info.token_url,
            "client_auth": "jwt-spiffe",
            "default_policy": policy.table.default_policy.as_str(),
            "no_token_policy": no_token_str(policy.no_token),
            "routes_origin": policy.origin,
            "routes": routes_dump,
        },
        "issuer": issuer.url(),
        "external_issuer": info.external,
    });
    let (_routes_tx, routes_rx) = watch::channel(Arc::new(policy.table));
    let settings = OutboundSettings {
        token_url: Some(info.token_url),
        no_token_policy: policy.no_token,
        ..Default::default()
    };
    let outbound = Outbound::new(
        routes_rx,
        Some(sts),
        Arc::new(SoOriginalDst),
        settings,
        metrics.clone(),
    );
    let state = AdminState {
        readiness: readiness.clone(),
        metrics,
        config_dump: Arc::new(move || dump.clone()),
    };
    let in_task = tokio::spawn(inbound.serve(inbound_l, drain_watch.clone()));
    let out_task = tokio::spawn(outbound.serve(outbound_l, drain_watch.clone()));
    let proxies = tokio::spawn(async move {
        let _ = tokio::join!(in_task, out_task);
    });
    let issuer_task = tokio::spawn(issuer.serve(issuer_l, drain_watch.clone()));
    let admin_task = tokio::spawn(admin::serve(admin_l, state, drain_watch.clone()));
    drop(drain_watch);

    // The banner invites requests: print it once the JWKS is loaded, so the first pasted
    // command is validated rather than answered 503.
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    while !readiness.is_ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !readiness.is_ready() {
        tracing::warn!(waiting_for = ?readiness.waiting_for(), "not ready yet; inbound requests get 503 until the issuer's JWKS is loaded");
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!("authbridge dev ready");

    let code = crate::run::wait_then_drain(drain_trigger, DRAIN_GRACE, proxies).await;
    issuer_task.abort();
    admin_task.abort();
    code
}

fn banner(
    args: &DevArgs,
    policy: &Policy,
    trust: &DevTrustDomain,
    issuer_url: &str,
    info: &IssuerInfo,
    jwt: &crate::config::JwtConfig,
) -> String {
    let in_addr = format!("127.0.0.1:{}", args.inbound_port);
    let out_addr = format!("127.0.0.1:{}", args.outbound_port);
    let bar = "=".repeat(78);
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line(&bar);
    line("  AUTHBRIDGE DEV -- DEVELOPMENT ONLY -- DO NOT USE IN PRODUCTION");
    line("  Ephemeral in-memory keys; the dev issuer mints tokens and certificates for anyone");
    line("  who asks. Listens on 127.0.0.1 only.");
    line(&bar);
    line(&format!("inbound: {in_addr}"));
    line(&format!("outbound: {out_addr}"));
    line(&format!("issuer: {issuer_url}"));
    line(&format!("admin: 127.0.0.1:{}", args.admin_port));
    line("");
    line(&format!(
        "inbound gateway -> your agent at {} (--app):",
        args.app
    ));
    line(&format!(
        "  JWT: iss {}, keys {}, aud {}",
        jwt.issuer,
        jwt.jwks_uri,
        jwt.audiences.join(" or ")
    ));
    line(&format!(
        "  mTLS: permissive (plain HTTP works; TLS callers need an X.509-SVID of spiffe://{TRUST_DOMAIN}: POST {issuer_url}/dev/svid)"
    ));
    line("  the agent gets x-authbridge-sub, -iss, -client-id (and -peer-id over mTLS)");
    line(&format!(
        "  no token needed: {}",
        jwt.bypass_paths.join(" ")
    ));
    line("");
    line(&format!(
        "identity (in memory, trust domain spiffe://{TRUST_DOMAIN}):"
    ));
    line(&format!(
        "  JWT-SVID   {AGENT_ID}  ES256, minted per exchange, valid {}s, aud {}",
        JWT_SVID_TTL.as_secs(),
        info.assertion_aud
    ));
    line(&format!(
        "  X.509-SVID {}  expires {}  (CA spiffe://{TRUST_DOMAIN}, expires {})",
        trust.x509.agent.spiffe_id,
        rfc3339(trust.x509.agent.not_after),
        rfc3339(trust.x509.ca_not_after)
    ));
    line("");
    line(&format!("routes ({}):", policy.origin));
    for (i, r) in policy.table.routes.iter().enumerate() {
        line(&format!("  {i}: {}", describe_route(r)));
    }
    line(&format!(
        "  no route matches -> {}",
        policy.table.default_policy
    ));
    line(&format!(
        "  exchange route, request without a bearer token -> {}",
        no_token_str(policy.no_token)
    ));
    line("");
    if info.external {
        line(&format!("token exchange: {} (--issuer)", info.token_url));
        line(&format!(
            "  client auth: jwt-spiffe: client_assertion = JWT-SVID sub {AGENT_ID}, aud {},",
            info.assertion_aud
        ));
        line(&format!(
            "  client_id {}; the issuer must trust the dev trust domain's JWT bundle, served at {issuer_url}/dev/jwt-bundle",
            policy.client_id.as_deref().unwrap_or(AGENT_ID)
        ));
        line("  (Keycloak 26: a SPIFFE identity provider for spiffe://dev.local with that bundle endpoint, and a");
        line("  client whose authenticator is \"Signed JWT - Federated\" with that provider and subject");
        line(&format!(
            "  {AGENT_ID}). The keys change on every start. Get user tokens from the real issuer;"
        ));
        line("  /dev/token tokens are not accepted there, nor by the inbound gateway.");
    } else {
        line(&format!(
            "token exchange: {} (embedded dev issuer; client auth jwt-spiffe as {AGENT_ID})",
            info.token_url
        ));
    }
    line("");
    line(&format!(
        "try it (paste into another terminal; your agent listens on {}):",
        args.app
    ));
    let aud = jwt
        .audiences
        .first()
        .map(String::as_str)
        .unwrap_or(AGENT_ID);
    if info.external {
        line(&format!(
            "  TOKEN=...   # a user token from {} with aud {aud}",
            info.issuer
        ));
    } else {
        line(&format!(
            "  TOKEN=$(curl -s --noproxy '*' -d sub=alice -d aud={aud} {issuer_url}/dev/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
        ));
    }
    line(&format!(
        "  curl -i --noproxy '*' -H \"Authorization: Bearer $TOKEN\" http://{in_addr}/   # to your agent, validated; it sees x-authbridge-sub"
    ));
    line(
        "  # then start your agent from a shell with this: its calls to tools get exchanged tokens",
    );
    line(&format!(
        "  export HTTP_PROXY=http://{out_addr} http_proxy=http://{out_addr}"
    ));
    line(&bar);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_parse_and_match_local_hosts_only() {
        let t = RouteTable::new(
            parse_routes_yaml(DEFAULT_ROUTES, "d").unwrap(),
            Action::Passthrough,
        );
        for h in ["localhost", "tool.localhost", "127.0.0.1", "::1"] {
            assert_eq!(t.lookup(h).action, Action::Exchange, "{h}");
            assert_eq!(
                t.lookup(h).route.unwrap().audience.as_deref(),
                Some("dev-tool")
            );
        }
        assert_eq!(t.lookup("api.openai.com").action, Action::Passthrough);
    }

    #[test]
    fn dates_and_app() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert!(check_app("127.0.0.1:8000").is_ok());
        assert!(check_app("[::1]:8000").is_ok());
        assert!(check_app("nope").is_err());
        assert!(check_app(":80").is_err());
    }
}
