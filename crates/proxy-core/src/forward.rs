//! Forwarding one HTTP request to the next hop, shared by both directions: rewriting the
//! request target for the upstream protocol, hop-by-hop headers, upgrades (WebSocket) spliced
//! after `101`, and the upstream connections a downstream connection owns.

use crate::http::{strip_hop_by_hop, wants_upgrade, Body};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to an upstream (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

enum UpSender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// The upstream connections owned by one downstream connection, per (destination, h2).
pub struct Upstreams<K> {
    conns: tokio::sync::Mutex<HashMap<(K, bool), UpSender>>,
}

impl<K: Hash + Eq + Clone> Default for Upstreams<K> {
    fn default() -> Self {
        Upstreams {
            conns: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub enum ForwardError {
    /// The request target cannot be expressed for the next hop (answer 400).
    BadTarget,
    /// The upstream could not be reached or failed (answer 502); the text names no secret.
    Upstream(String),
}

impl<K: Hash + Eq + Clone> Upstreams<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `req` on a reusable connection to `key`, opening one with `connect` if needed.
    pub async fn send<F, Fut>(
        &self,
        key: K,
        h2: bool,
        upgrade: bool,
        req: Request<Body>,
        connect: F,
    ) -> Result<Response<Incoming>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BoxIo, String>>,
    {
        let key = (key, h2);
        let existing = self.conns.lock().await.remove(&key);
        let reusable = match existing {
            Some(UpSender::H1(mut s)) => {
                (!s.is_closed() && s.ready().await.is_ok()).then_some(UpSender::H1(s))
            }
            Some(UpSender::H2(mut s)) => {
                (!s.is_closed() && s.ready().await.is_ok()).then_some(UpSender::H2(s))
            }
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => open(connect().await?, h2).await?,
        };
        match &mut sender {
            UpSender::H1(s) => {
                let fut = s.send_request(req);
                if !upgrade {
                    self.conns.lock().await.insert(key, sender);
                }
                fut.await.map_err(|e| describe_hyper(&e))
            }
            UpSender::H2(s) => {
                let mut s2 = s.clone();
                self.conns.lock().await.insert(key, sender);
                s2.send_request(req).await.map_err(|e| describe_hyper(&e))
            }
        }
    }
}

async fn open(io: BoxIo, h2: bool) -> Result<UpSender, String> {
    let io = TokioIo::new(io);
    if h2 {
        let (s, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| describe_hyper(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(UpSender::H2(s))
    } else {
        let (s, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| describe_hyper(&e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(UpSender::H1(s))
    }
}

/// A hyper error described without request contents.
pub fn describe_hyper(e: &hyper::Error) -> String {
    if e.is_closed() || e.is_incomplete_message() {
        "connection closed by upstream".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        "protocol error".into()
    }
}

/// Forwards `req` with `authority` as its target authority. With `upstream_h2: None`, HTTP/2
/// downstream requests go on as HTTP/2 (absolute URI) and HTTP/1.x as HTTP/1.1; `Some(v)`
/// forces the upstream protocol. HTTP/1.1 requests are origin-form with `Host` kept or set.
/// `send(request, h2, upgrade)` delivers it. A `101 Switching Protocols` answer splices the
/// two upgraded connections.
pub async fn forward<F, Fut>(
    mut req: Request<Incoming>,
    authority: &str,
    upstream_h2: Option<bool>,
    send: F,
) -> Result<Response<Body>, ForwardError>
where
    F: FnOnce(Request<Body>, bool, bool) -> Fut,
    Fut: Future<Output = Result<Response<Incoming>, String>>,
{
    let upgrade = wants_upgrade(req.headers());
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let h2 = upstream_h2.unwrap_or(req.version() == Version::HTTP_2);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if h2 {
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|_| ForwardError::BadTarget)?;
        parts.version = Version::HTTP_2;
    } else {
        parts.uri = pq.parse().map_err(|_| ForwardError::BadTarget)?;
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    let req = Request::from_parts(parts, body.boxed());
    let mut resp = send(req, h2, upgrade)
        .await
        .map_err(ForwardError::Upstream)?;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(down) = down_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(down, up) {
                    Ok((d, u)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(d),
                            &mut TokioIo::new(u),
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp.map(|b| b.boxed()))
}
