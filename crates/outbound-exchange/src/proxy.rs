//! The outbound listener (contract §5): redirected connections (original destination ≠ our
//! address) are forwarded to where they were going; other connections are explicit-proxy
//! clients (absolute-form requests and `CONNECT` tunnels). Plain HTTP (HTTP/1.1 or h2c prior
//! knowledge) is parsed, routed by host and, on exchange routes, carries an exchanged token.
//! TLS is routed by SNI: passthrough routes are spliced, exchange routes are refused.
//!
//! Upstream connections are owned by the downstream connection that caused them (like the
//! agent's own connection would have been), so a redirected connection never shares an
//! upstream connection with another destination.

use crate::cache::{CacheConfig, CacheKey, TokenCache};
use crate::glob::normalize_host;
use crate::routes::{Action, MtlsTarget, Route, RouteTable};
use crate::sts::{ExchangeError, ExchangeRequest, StsClient};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proxy_core::drain;
use proxy_core::forward::{self, ForwardError};
use proxy_core::http::{bearer_token, json_error, Body};
use proxy_core::metrics::Metrics;
use proxy_core::sniff::{sniff, Sniffed};
use proxy_core::upstream;
use proxy_core::OriginalDst;
use spiffe_source::tls::{ExpectedPeer, IdentityRx};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `no_token_policy`: what an exchange route does with a request that has no bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTokenPolicy {
    Deny,
    ClientCredentials,
    Passthrough,
}

/// Settings of the outbound proxy.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub token_url: Option<String>,
    pub no_token_policy: NoTokenPolicy,
    pub connect_timeout: Duration,
    /// Time a client has to send its first byte / a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (bigger ones get 431).
    pub max_header_bytes: usize,
    pub cache: CacheConfig,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            token_url: None,
            no_token_policy: NoTokenPolicy::Deny,
            connect_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            cache: CacheConfig::default(),
        }
    }
}

/// The outbound proxy.
pub struct Outbound {
    routes: watch::Receiver<Arc<RouteTable>>,
    sts: Option<StsClient>,
    cache: TokenCache<ExchangeError>,
    orig_dst: Arc<dyn OriginalDst>,
    settings: OutboundSettings,
    metrics: Arc<Metrics>,
    /// Our own listening address (set by [`Outbound::serve`]), for loop detection.
    local: std::sync::OnceLock<SocketAddr>,
    /// Our X.509 identity, for routes that originate mTLS.
    identity: std::sync::OnceLock<IdentityRx>,
}

#[derive(Debug, Clone)]
enum Mode {
    /// Redirected by iptables; goes to the original destination.
    Redirected(SocketAddr),
    /// An explicit proxy client talking to us directly.
    Explicit,
    /// Inside a `CONNECT host:port` tunnel.
    Tunnel { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Dest {
    Addr(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Addr(a) => write!(f, "{a}"),
            Dest::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Per downstream connection.
struct ConnCtx {
    mode: Mode,
    upstreams: forward::Upstreams<(Dest, Option<MtlsTarget>)>,
}

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Outbound {
    pub fn new(
        routes: watch::Receiver<Arc<RouteTable>>,
        sts: Option<StsClient>,
        orig_dst: Arc<dyn OriginalDst>,
        settings: OutboundSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            routes,
            sts,
            cache: TokenCache::new(settings.cache),
            orig_dst,
            settings,
            metrics,
            local: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        })
    }

    /// Accepts connections until drain starts; open connections finish their requests.
    /// Gives the proxy our live X.509 identity, used by routes with `mtls: true`.
    pub fn set_identity(&self, identity: IdentityRx) {
        let _ = self.identity.set(identity);
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: drain::Watch) {
        if let Ok(a) = listener.local_addr() {
            let _ = self.local.set(a);
        }
        proxy_core::listen::accept_loop(listener, drain, "outbound", |stream, drain| {
            let this = self.clone();
            async move { this.handle_conn(stream, drain).await }
        })
        .await;
    }

    async fn handle_conn(self: Arc<Self>, stream: TcpStream, drain: drain::Watch) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let mode = match self.orig_dst.original_dst(&stream) {
            Some(d) if Some(d) != local && !self.is_self(&d) => Mode::Redirected(d),
            _ => Mode::Explicit,
        };
        self.serve_io(stream, mode, drain).await;
    }

    fn is_self(&self, d: &SocketAddr) -> bool {
        match self.local.get() {
            Some(l) => {
                d.port() == l.port()
                    && (d.ip() == l.ip()
                        || d.ip().is_loopback()
                        || l.ip().is_unspecified() && d.ip().is_unspecified())
            }
            None => false,
        }
    }

    fn is_self_name(&self, host: &str, port: u16) -> bool {
        let Some(l) = self.local.get() else {
            return false;
        };
        if port != l.port() {
            return false;
        }
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            Ok(ip) => ip.is_loopback() || ip == l.ip() || ip.is_unspecified(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        }
    }

    async fn serve_io<I>(self: Arc<Self>, io: I, mode: Mode, drain: drain::Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sniffed, io) = match sniff(io, self.settings.header_read_timeout).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "outbound connection closed before a request");
                return;
            }
        };
        match sniffed {
            Sniffed::Tls { sni } => self.handle_tls(io, sni, mode).await,
            Sniffed::Plain => self.serve_http(io, mode, drain).await,
        }
    }

    fn serve_tunnel(
        self: Arc<Self>,
        io: TokioIo<hyper::upgrade::Upgraded>,
        host: String,
        port: u16,
        drain: drain::Watch,
    ) -> BoxFut {
        Box::pin(async move {
            self.serve_io(io, Mode::Tunnel { host, port }, drain).await;
        })
    }

    async fn handle_tls<I>(self: Arc<Self>, mut io: I, sni: Option<String>, mode: Mode)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (dest, hosts) = match &mode {
            Mode::Redirected(d) => (
                Dest::Addr(*d),
                vec![sni.clone().unwrap_or_else(|| d.ip().to_string())],
            ),
            Mode::Tunnel { host, port } => {
                let mut hosts = vec![host.clone()];
                hosts.extend(sni.clone());
                (Dest::Name(host.clone(), *port), hosts)
            }
            Mode::Explicit => {
                tracing::info!(
                    direction = "outbound",
                    "TLS sent to the proxy port without CONNECT; closing"
                );
                self.metrics.outbound("none", "bad_request").inc();
                return;
            }
        };
        let table = self.routes.borrow().clone();
        let mut action = Action::Passthrough;
        let mut shown = String::new();
        for h in &hosts {
            let norm = normalize_host(h);
            let d = table.lookup(&norm);
            shown = norm.into_owned();
            if d.action != Action::Passthrough {
                action = d.action;
                break;
            }
        }
        match action {
            Action::Passthrough => {
                let started = Instant::now();
                let up = match self.connect(&dest).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::info!(direction = "outbound", host = %shown, %dest, error = %e, "TLS passthrough: upstream unreachable");
                        self.metrics.outbound("passthrough", "upstream_error").inc();
                        return;
                    }
                };
                self.metrics.outbound("passthrough", "tls_spliced").inc();
                let mut up = up;
                let r = tokio::io::copy_bidirectional(&mut io, &mut up).await;
                tracing::debug!(direction = "outbound", host = %shown, %dest, duration_ms = started.elapsed().as_millis() as u64, result = ?r.map_err(|e| e.kind()), "TLS passthrough closed");
            }
            Action::Exchange => {
                self.metrics.tls_refused.inc();
                self.metrics.outbound("exchange", "tls_refused").inc();
                tracing::warn!(direction = "outbound", host = %shown, %dest, "TLS to an exchange route: the token inside cannot be replaced, connection refused (send plain HTTP to this host so AuthBridge can exchange, or make the route passthrough)");
            }
            Action::Deny => {
                self.metrics.outbound("deny", "denied").inc();
                tracing::info!(direction = "outbound", host = %shown, %dest, "TLS to a denied route: connection closed");
            }
        }
    }

    async fn connect(&self, dest: &Dest) -> std::io::Result<TcpStream> {
        match dest {
            Dest::Addr(a) => upstream::connect(*a, self.settings.connect_timeout).await,
            Dest::Name(h, p) => upstream::connect_host(h, *p, self.settings.connect_timeout).await,
        }
    }

    async fn serve_http<I>(self: Arc<Self>, io: I, mode: Mode, drain: drain::Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = Arc::new(ConnCtx {
            mode,
            upstreams: forward::Upstreams::new(),
        });
        let this = self.clone();
        let drain2 = drain.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let ctx = ctx.clone();
            let drain = drain2.clone();
            async move { Ok::<_, Infallible>(this.handle_request(req, ctx, drain).await) }
        });
        proxy_core::http::serve_connection(
            io,
            svc,
            self.settings.header_read_timeout,
            self.settings.max_header_bytes,
            drain,
            "outbound",
        )
        .await;
    }

    async fn handle_request(
        self: Arc<Self>,
        req: Request<Incoming>,
        ctx: Arc<ConnCtx>,
        drain: drain::Watch,
    ) -> Response<Body> {
        let started = Instant::now();
        if req.method() == Method::CONNECT {
            return match ctx.mode {
                Mode::Explicit => self.handle_connect(req, drain),
                _ => json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "bad_request",
                    "CONNECT is only accepted from explicit proxy clients",
                ),
            };
        }
        // Where it goes, and which host the routes see.
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let dest = match &ctx.mode {
            Mode::Redirected(d) => Dest::Addr(*d),
            Mode::Tunnel { host, port } => Dest::Name(host.clone(), *port),
            Mode::Explicit => {
                let Some(a) = req.uri().authority() else {
                    return self.reject(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "an explicit proxy request needs an absolute URI (GET http://host/path)",
                        "none",
                        started,
                    );
                };
                if req.uri().scheme_str() == Some("https") {
                    return self.reject(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "https:// URLs must be tunnelled with CONNECT",
                        "none",
                        started,
                    );
                }
                let port = a.port_u16().unwrap_or(80);
                if self.is_self_name(a.host(), port) {
                    return self.reject(
                        StatusCode::LOOP_DETECTED,
                        "loop_detected",
                        "the request is addressed to the proxy itself",
                        "none",
                        started,
                    );
                }
                Dest::Name(a.host().to_string(), port)
            }
        };
        let route_host = match (&authority, &dest) {
            (Some(a), _) => a.clone(),
            (None, Dest::Addr(d)) => d.ip().to_string(),
            (None, Dest::Name(h, _)) => h.clone(),
        };
        let normalized = normalize_host(&route_host).into_owned();
        let table = self.routes.borrow().clone();
        let decision = table.lookup(&normalized);
        let action = decision.action;
        let index = decision.index;
        let mut req = req;
        let mut without_token = false;
        match action {
            Action::Deny => {
                let r = json_error(
                    StatusCode::FORBIDDEN,
                    "route_denied",
                    "outbound requests to this host are denied by policy",
                );
                self.metrics.outbound("deny", "denied").inc();
                access_log(&normalized, index, action, r.status(), started);
                return r;
            }
            Action::Passthrough => {}
            Action::Exchange => match self.exchanged_token(&req, decision.route).await {
                Ok(Some(value)) => {
                    req.headers_mut().insert(header::AUTHORIZATION, value);
                }
                // No bearer token and `no_token_policy: passthrough`: forwarded as is.
                Ok(None) => without_token = true,
                Err(resp) => {
                    access_log(&normalized, index, action, resp.status(), started);
                    return resp;
                }
            },
        }
        let mtls = decision.route.and_then(|r| r.mtls.clone());
        let resp = self.forward(req, dest, mtls, authority, &ctx).await;
        self.metrics
            .outbound(
                action.as_str(),
                if resp.status() == StatusCode::BAD_GATEWAY {
                    "upstream_error"
                } else if without_token {
                    "forwarded_without_token"
                } else {
                    "forwarded"
                },
            )
            .inc();
        access_log(&normalized, index, action, resp.status(), started);
        resp
    }

    fn reject(
        &self,
        status: StatusCode,
        code: &str,
        msg: &str,
        action: &'static str,
        started: Instant,
    ) -> Response<Body> {
        self.metrics.outbound(action, "bad_request").inc();
        let r = json_error(status, code, msg);
        access_log("-", None, Action::Passthrough, r.status(), started);
        r
    }

    /// The `Authorization` value for an exchange route: `Ok(None)` = forward unchanged
    /// (`no_token_policy: passthrough`), `Err` = the answer to the agent.
    async fn exchanged_token(
        &self,
        req: &Request<Incoming>,
        route: Option<&Route>,
    ) -> Result<Option<HeaderValue>, Response<Body>> {
        let fail = |msg: String| {
            self.metrics.outbound("exchange", "exchange_failed").inc();
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_exchange_failed",
                &msg,
            )
        };
        let subject = bearer_token(req.headers());
        if subject.is_none() {
            match self.settings.no_token_policy {
                NoTokenPolicy::Deny => {
                    self.metrics.outbound("exchange", "missing_token").inc();
                    let mut r = json_error(
                        StatusCode::UNAUTHORIZED,
                        "missing_token",
                        "this route exchanges the caller's token, but the request has no bearer token",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"authbridge\""),
                    );
                    return Err(r);
                }
                NoTokenPolicy::Passthrough => return Ok(None),
                NoTokenPolicy::ClientCredentials => {}
            }
        }
        let Some(token_url) = route
            .and_then(|r| r.token_url.as_deref())
            .or(self.settings.token_url.as_deref())
        else {
            return Err(fail("no token_url is configured for this route".into()));
        };
        let Some(sts) = &self.sts else {
            return Err(fail(
                "token exchange is not configured (no client authentication)".into(),
            ));
        };
        let audience = route.and_then(|r| r.audience.as_deref());
        let scope = route.and_then(|r| r.scopes.as_deref());
        let key = CacheKey::new(subject, audience, scope, token_url);
        let (result, outcome) = self
            .cache
            .get_or_fetch(key, || async {
                let r = sts
                    .exchange(&ExchangeRequest {
                        token_url,
                        subject_token: subject,
                        audience,
                        scope,
                    })
                    .await;
                self.metrics.exchange(if r.is_ok() { "success" } else { "failure" }).inc();
                if let Err(e) = &r {
                    tracing::warn!(direction = "outbound", audience = ?audience, token_url = %token_url, error = %e, "token exchange failed");
                }
                r.map(|i| (i.access_token, i.expires_in))
            })
            .await;
        self.metrics.cache(outcome.as_str()).inc();
        match result {
            Ok(token) => {
                let mut v = String::with_capacity(7 + token.len());
                v.push_str("Bearer ");
                v.push_str(&token);
                HeaderValue::try_from(v)
                    .map(|mut v| {
                        v.set_sensitive(true);
                        Some(v)
                    })
                    .map_err(|_| {
                        fail(
                            "token endpoint answer unusable: access_token is not a header value"
                                .into(),
                        )
                    })
            }
            Err(e) => Err(fail(format!("token exchange failed: {e}"))),
        }
    }

    fn handle_connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        drain: drain::Watch,
    ) -> Response<Body> {
        let started = Instant::now();
        let Some((auth, port)) = req
            .uri()
            .authority()
            .and_then(|a| Some((a.clone(), a.port_u16()?)))
        else {
            return self.reject(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "CONNECT needs host:port",
                "none",
                started,
            );
        };
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if self.is_self_name(&host, port) {
            return self.reject(
                StatusCode::LOOP_DETECTED,
                "loop_detected",
                "the tunnel is addressed to the proxy itself",
                "none",
                started,
            );
        }
        let normalized = normalize_host(&host).into_owned();
        let decision = self.routes.borrow().lookup(&normalized).action;
        if decision == Action::Deny {
            self.metrics.outbound("deny", "denied").inc();
            let r = json_error(
                StatusCode::FORBIDDEN,
                "route_denied",
                "outbound requests to this host are denied by policy",
            );
            access_log(&normalized, None, Action::Deny, r.status(), started);
            return r;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = drain.conn_guard();
            match hyper::upgrade::on(req).await {
                Ok(up) => this.serve_tunnel(TokioIo::new(up), host, port, drain).await,
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        Response::new(proxy_core::http::empty())
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        dest: Dest,
        mtls: Option<MtlsTarget>,
        authority: Option<String>,
        ctx: &ConnCtx,
    ) -> Response<Body> {
        let authority = authority.unwrap_or_else(|| dest.to_string());
        let key = (dest.clone(), mtls.clone());
        let (dest_ref, mtls_ref) = (&dest, &mtls);
        let send = |req, h2, upgrade| {
            ctx.upstreams
                .send(key, h2, upgrade, req, move || async move {
                    let tcp = self.connect(dest_ref).await.map_err(|e| e.to_string())?;
                    match mtls_ref {
                        None => Ok(Box::new(tcp) as forward::BoxIo),
                        Some(target) => self
                            .originate_mtls(tcp, dest_ref, target, h2)
                            .await
                            .map(|s| Box::new(s) as forward::BoxIo),
                    }
                })
        };
        match forward::forward(req, &authority, None, send).await {
            Ok(r) => r,
            Err(ForwardError::BadTarget) => json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid request target",
            ),
            Err(ForwardError::Upstream(e)) => {
                tracing::info!(direction = "outbound", %dest, error = %e, "upstream request failed");
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    &format!("cannot reach {dest}: {e}"),
                )
            }
        }
    }
}

impl Outbound {
    /// Wraps `tcp` in TLS presenting our SVID and verifying the destination's.
    async fn originate_mtls(
        &self,
        tcp: TcpStream,
        dest: &Dest,
        target: &MtlsTarget,
        h2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let Some(identity) = self.identity.get().filter(|i| i.borrow().is_some()) else {
            return Err("mTLS origination needs our X.509-SVID, which is not loaded".into());
        };
        let expected = match &target.peer {
            Some(id) => ExpectedPeer::Exact(id.clone()),
            None => ExpectedPeer::Any,
        };
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let cfg = spiffe_source::tls::client_config(identity.clone(), expected, alpn);
        let name = match dest {
            Dest::Addr(a) => rustls::pki_types::ServerName::IpAddress(a.ip().into()),
            Dest::Name(h, _) => rustls::pki_types::ServerName::try_from(h.clone())
                .map_err(|_| format!("{h} is not a valid TLS server name"))?,
        };
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("mTLS handshake failed: {e}"))
    }
}

fn access_log(
    host: &str,
    route: Option<usize>,
    action: Action,
    status: StatusCode,
    started: Instant,
) {
    tracing::info!(
        target: "authbridge::access",
        direction = "outbound",
        host,
        route = route.map(|r| r as i64).unwrap_or(-1),
        action = action.as_str(),
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
}
