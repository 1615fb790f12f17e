//! Where a redirected connection was originally headed.
//!
//! In a pod, iptables `REDIRECT` rewrites the destination of the agent's connections to our
//! listener; the kernel remembers the original one and returns it through `SO_ORIGINAL_DST`
//! (`IP6T_SO_ORIGINAL_DST` for IPv6). Tests inject the destination through the same trait
//! without iptables.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Looks up the original destination of an accepted connection.
pub trait OriginalDst: Send + Sync + 'static {
    /// `None` when the connection was not redirected (then it is an explicit-proxy client).
    fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr>;
}

/// The production lookup: `getsockopt(SO_ORIGINAL_DST)` via socket2 (no unsafe here).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let local = match stream.local_addr().ok()? {
            // An IPv4 connection accepted on a dual-stack `[::]` listener has a v4-mapped local
            // address; its NAT entry is IPv4, so ask with the IPv4 option.
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, v6.port())),
                None => SocketAddr::V6(v6),
            },
            v4 => v4,
        };
        let sock = socket2::SockRef::from(stream);
        let addr = if local.is_ipv4() {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        }
        .ok()?
        .as_socket()?;
        // Without a NAT entry some kernels report the local address itself.
        (addr != local).then_some(addr)
    }
}

/// A test seam: decides the original destination from the client's and listener's addresses.
pub struct FnOriginalDst<F>(pub F);

impl<F> OriginalDst for FnOriginalDst<F>
where
    F: Fn(SocketAddr, SocketAddr) -> Option<SocketAddr> + Send + Sync + 'static,
{
    fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        let peer = stream.peer_addr().ok()?;
        let local = stream.local_addr().ok()?;
        (self.0)(peer, local)
    }
}

impl<T: OriginalDst + ?Sized> OriginalDst for Arc<T> {
    fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        (**self).original_dst(stream)
    }
}
