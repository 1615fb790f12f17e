//! The inbound listener (contract §5 Inbound): terminates mTLS from SPIFFE peers (strict,
//! permissive — TLS told from plaintext by the first byte — or disabled), checks the peer
//! against the allowed trust domains and `allowed_peers`, runs the request authorizer (JWT
//! validation), sets the `x-authbridge-*` headers and forwards to the agent: the original
//! destination port on 127.0.0.1 (transparent) or a fixed `host:port` (gateway).

use crate::drain;
use crate::forward::{self, BoxIo, ForwardError, Upstreams};
use crate::http::{json_error, Body};
use crate::metrics::Metrics;
use crate::orig_dst::OriginalDst;
use crate::sniff::{sniff, Sniffed};
use crate::upstream;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;

use spiffe_source::tls::IdentityRx;
use spiffe_source::{IdPattern, SpiffeId};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// The caller's SPIFFE ID (set by the listener after mTLS).
pub const HEADER_PEER_ID: HeaderName = HeaderName::from_static("x-authbridge-peer-id");
/// The token's `sub` (set by the authorizer).
pub const HEADER_SUB: HeaderName = HeaderName::from_static("x-authbridge-sub");
/// The token's `iss` (set by the authorizer).
pub const HEADER_ISS: HeaderName = HeaderName::from_static("x-authbridge-iss");
/// The token's `azp`, else `client_id` (set by the authorizer).
pub const HEADER_CLIENT_ID: HeaderName = HeaderName::from_static("x-authbridge-client-id");

/// Removes every `x-authbridge-*` identity header AuthBridge sets: caller-sent copies are
/// never passed to the agent.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    for h in [HEADER_PEER_ID, HEADER_SUB, HEADER_ISS, HEADER_CLIENT_ID] {
        headers.remove(h);
    }
}
/// A boxed future returned by [`Authorizer::authorize`].
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Response<Body>>> + Send + 'a>>;

/// Decides whether a request may reach the agent (JWT validation). On success it may add
/// headers; on failure it returns the response to send (401 …).
pub trait Authorizer: Send + Sync + 'static {
    fn authorize<'a>(&'a self, headers: &'a mut HeaderMap, path: &'a str) -> AuthFuture<'a>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtls {
    Strict,
    Permissive,
    Disabled,
}

#[derive(Debug, Clone)]
pub enum InboundUpstream {
    /// The original destination port, on 127.0.0.1 (the agent in the same pod).
    OriginalDst,
    /// Gateway mode: always this `host:port`.
    Fixed(String),
}

pub struct InboundSettings {
    pub upstream: InboundUpstream,
    pub mtls: Mtls,
    /// Trust domains whose peers may call; empty = our own trust domain only.
    pub allowed_trust_domains: Vec<String>,
    /// Peer SPIFFE ID patterns; empty = any peer of an allowed trust domain.
    pub allowed_peers: Vec<IdPattern>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub connect_timeout: Duration,
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings {
            upstream: InboundUpstream::OriginalDst,
            mtls: Mtls::Permissive,
            allowed_trust_domains: Vec::new(),
            allowed_peers: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

pub struct Inbound {
    settings: InboundSettings,
    identity: IdentityRx,
    tls: tokio_rustls::TlsAcceptor,
    authz: Option<Arc<dyn Authorizer>>,
    orig_dst: Arc<dyn OriginalDst>,
    metrics: Arc<Metrics>,
    local: OnceLock<SocketAddr>,
}

/// Per downstream connection.
struct Conn {
    dest: String,
    peer: Option<SpiffeId>,
    /// Whether `peer` may call (decided once per connection: the peer cannot change on it).
    peer_allowed: Result<(), String>,
    upstreams: Upstreams<()>,
}

impl Conn {
    fn new(inbound: &Inbound, dest: String, peer: Option<SpiffeId>) -> Conn {
        Conn {
            peer_allowed: inbound.peer_allowed(peer.as_ref()),
            dest,
            peer,
            upstreams: Upstreams::new(),
        }
    }
}

impl Inbound {
    pub fn new(
        settings: InboundSettings,
        identity: IdentityRx,
        authz: Option<Arc<dyn Authorizer>>,
        orig_dst: Arc<dyn OriginalDst>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let tls = tokio_rustls::TlsAcceptor::from(spiffe_source::tls::server_config(
            identity.clone(),
            &[b"h2", b"http/1.1"],
        ));
        Arc::new(Inbound {
            settings,
            identity,
            tls,
            authz,
            orig_dst,
            metrics,
            local: OnceLock::new(),
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: drain::Watch) {
        if let Ok(a) = listener.local_addr() {
            let _ = self.local.set(a);
        }
        crate::listen::accept_loop(listener, drain, "inbound", |stream, drain| {
            let this = self.clone();
            async move { this.handle_conn(stream, drain).await }
        })
        .await;
    }

    fn destination(&self, stream: &TcpStream) -> Option<String> {
        match &self.settings.upstream {
            InboundUpstream::Fixed(hp) => Some(hp.clone()),
            InboundUpstream::OriginalDst => {
                let d = self.orig_dst.original_dst(stream)?;
                // Addressed to this listener itself: not redirected, nowhere to forward.
                if self.local.get().is_some_and(|l| l.port() == d.port()) {
                    return None;
                }
                Some(format!("127.0.0.1:{}", d.port()))
            }
        }
    }

    async fn handle_conn(self: Arc<Self>, stream: TcpStream, drain: drain::Watch) {
        let _ = stream.set_nodelay(true);
        let Some(dest) = self.destination(&stream) else {
            tracing::info!(
                direction = "inbound",
                "connection was not redirected by iptables and no inbound.upstream is set; closing"
            );
            self.metrics.inbound("deny", "no_destination").inc();
            return;
        };
        let (sniffed, io) = match sniff(stream, self.settings.header_read_timeout).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "inbound connection closed before a request");
                return;
            }
        };
        match (sniffed, self.settings.mtls) {
            (Sniffed::Tls { .. }, Mtls::Strict | Mtls::Permissive) => {
                let hs =
                    tokio::time::timeout(self.settings.header_read_timeout, self.tls.accept(io))
                        .await;
                let tls = match hs {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(direction = "inbound", error = %e, "mTLS handshake refused");
                        self.metrics.inbound("deny", "handshake").inc();
                        self.metrics.tls_refused.inc();
                        return;
                    }
                    Err(_) => {
                        tracing::info!(direction = "inbound", "mTLS handshake timed out");
                        self.metrics.inbound("deny", "handshake_timeout").inc();
                        return;
                    }
                };
                let peer = spiffe_source::tls::peer_id(tls.get_ref().1.peer_certificates());
                let conn = Conn::new(&self, dest, peer);
                self.serve_http(tls, conn, drain).await;
            }
            (Sniffed::Plain, Mtls::Strict) => {
                tracing::info!(
                    direction = "inbound",
                    "plaintext connection on a strict mTLS port refused"
                );
                self.metrics.inbound("deny", "plaintext").inc();
            }
            (Sniffed::Tls { .. }, Mtls::Disabled) | (Sniffed::Plain, _) => {
                let conn = Conn::new(&self, dest, None);
                self.serve_http(io, conn, drain).await;
            }
        }
    }

    async fn serve_http<I>(self: Arc<Self>, io: I, conn: Conn, drain: drain::Watch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(conn);
        let this = self.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(this.handle_request(req, &conn).await) }
        });
        crate::http::serve_connection(
            io,
            svc,
            self.settings.header_read_timeout,
            self.settings.max_header_bytes,
            drain,
            "inbound",
        )
        .await;
    }

    /// Whether `peer` may call: allowed trust domain and `allowed_peers`.
    fn peer_allowed(&self, peer: Option<&SpiffeId>) -> Result<(), String> {
        let Some(peer) = peer else {
            // Plaintext (permissive) or TLS with mTLS disabled: no peer identity to check.
            if self.settings.allowed_peers.is_empty() {
                return Ok(());
            }
            return Err(
                "allowed_peers is set and the caller presented no SPIFFE identity (plaintext)"
                    .into(),
            );
        };
        let td_ok = if self.settings.allowed_trust_domains.is_empty() {
            self.identity
                .borrow()
                .as_ref()
                .is_some_and(|i| i.trust_domain() == peer.trust_domain())
        } else {
            self.settings
                .allowed_trust_domains
                .iter()
                .any(|t| t == peer.trust_domain())
        };
        if !td_ok {
            return Err(format!("peer {peer} is not in an allowed trust domain"));
        }
        if !self.settings.allowed_peers.is_empty()
            && !self
                .settings
                .allowed_peers
                .iter()
                .any(|p| p.matches(peer.as_str()))
        {
            return Err(format!("peer {peer} is not in allowed_peers"));
        }
        Ok(())
    }

    async fn handle_request(&self, mut req: Request<Incoming>, conn: &Conn) -> Response<Body> {
        let started = Instant::now();
        strip_identity_headers(req.headers_mut());
        let resp = self.authorize_and_forward(req, conn).await;
        access_log(conn, &resp, started);
        resp
    }

    async fn authorize_and_forward(
        &self,
        mut req: Request<Incoming>,
        conn: &Conn,
    ) -> Response<Body> {
        if let Err(why) = &conn.peer_allowed {
            tracing::info!(direction = "inbound", reason = %why, "peer denied");
            self.metrics.inbound("deny", "peer_not_allowed").inc();
            return json_error(StatusCode::FORBIDDEN, "forbidden", why);
        }
        if let Some(peer) = &conn.peer {
            if let Ok(v) = HeaderValue::from_str(peer.as_str()) {
                req.headers_mut().insert(HEADER_PEER_ID, v);
            }
        }
        if let Some(authz) = &self.authz {
            let path = req.uri().path().to_string();
            if let Err(resp) = authz.authorize(req.headers_mut(), &path).await {
                return resp;
            }
        } else {
            self.metrics.inbound("allow", "no_jwt").inc();
        }
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_else(|| conn.dest.clone());
        let timeout = self.settings.connect_timeout;
        let dest = conn.dest.as_str();
        let send = |req, h2, upgrade| {
            conn.upstreams
                .send((), h2, upgrade, req, move || async move {
                    connect(dest, timeout).await
                })
        };
        // The agent gets HTTP/1.1 whatever the caller spoke (as Envoy does by default): agent
        // frameworks rarely accept h2c.
        match forward::forward(req, &authority, Some(false), send).await {
            Ok(r) => r,
            Err(ForwardError::BadTarget) => json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid request target",
            ),
            Err(ForwardError::Upstream(e)) => {
                tracing::info!(direction = "inbound", dest = %conn.dest, error = %e, "agent unreachable");
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    &format!("cannot reach the agent at {}: {e}", conn.dest),
                )
            }
        }
    }
}

async fn connect(dest: &str, timeout: Duration) -> Result<BoxIo, String> {
    let r = match dest.parse::<SocketAddr>() {
        Ok(a) => upstream::connect(a, timeout).await,
        Err(_) => {
            let (h, p) = dest
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("bad upstream address {dest:?}"))?;
            upstream::connect_host(h.trim_start_matches('[').trim_end_matches(']'), p, timeout)
                .await
        }
    };
    r.map(|s| Box::new(s) as BoxIo).map_err(|e| e.to_string())
}

fn access_log(conn: &Conn, resp: &Response<Body>, started: Instant) {
    tracing::info!(
        target: "authbridge::access",
        direction = "inbound",
        host = %conn.dest,
        peer = conn.peer.as_ref().map(|p| p.as_str()).unwrap_or(""),
        route = -1,
        action = if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) { "deny" } else { "allow" },
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
}
