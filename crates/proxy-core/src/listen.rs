//! Binding listeners. `0.0.0.0:PORT` means "every address": where the kernel has IPv6 it is
//! bound as a dual-stack `[::]:PORT` socket, so connections that the IPv6 capture rules redirect
//! to `[::1]:PORT` are accepted as well as IPv4 ones (§6: IPv4 and IPv6 alike).

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use tokio::net::TcpListener;

/// Binds `addr` (dual-stack for `0.0.0.0`) with `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip().is_unspecified() && addr.is_ipv4() {
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, addr.port()));
        if let Ok(l) = bind_one(v6, Some(false)) {
            return Ok(l);
        }
    }
    bind_one(addr, None)
}

fn bind_one(addr: SocketAddr, v6_only: Option<bool>) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if let Some(only) = v6_only {
        sock.set_only_v6(only)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// Accepts connections until drain is signaled, handing each to `handle` on its own task
/// (holding a drain guard, so drain waits for it). Accept errors (e.g. out of file
/// descriptors) are logged and retried after a short pause.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    drain: crate::drain::Watch,
    name: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, crate::drain::Watch) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = drain.signaled() => break,
        };
        let guard = drain.conn_guard();
        let fut = handle(stream, drain.clone());
        tokio::spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }
    tracing::debug!(listener = name, "listener closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unspecified_v4_accepts_both_families() {
        let l = bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            tokio::net::TcpStream::connect(("::1", port)).await.unwrap();
        }
    }
}
