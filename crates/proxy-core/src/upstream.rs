//! Connections from the proxy to the next hop, with loop avoidance.
//!
//! The proxy runs as UID 1337 and the capture rules exempt that UID; in addition every
//! upstream socket carries [`SOCKET_MARK`] where the kernel lets us set it (`SO_MARK` needs
//! `CAP_NET_ADMIN`), so rules can also exempt marked packets.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// The mark set on upstream sockets (same value Istio uses for its own traffic).
pub const SOCKET_MARK: u32 = 1337;

static MARK_WARNED: AtomicBool = AtomicBool::new(false);

/// Connects to `addr` with `TCP_NODELAY` and, where permitted, `SO_MARK`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(&sock).set_mark(SOCKET_MARK) {
        if !MARK_WARNED.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, "cannot set SO_MARK on upstream sockets (needs CAP_NET_ADMIN); relying on the UID exemption");
        }
    }
    sock.set_nodelay(true)?;
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )),
    }
}

/// Resolves `host:port` (a name or an IP literal) and connects to the first address that
/// answers.
pub async fn connect_host(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return connect(SocketAddr::new(ip, port), timeout).await;
    }
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host((bare, port)))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("resolving {bare} timed out"),
            )
        })??;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{bare} has no addresses"));
    for addr in addrs {
        match connect(addr, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
