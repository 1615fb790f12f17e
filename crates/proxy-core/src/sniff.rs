//! Protocol sniffing on a fresh connection: is it TLS, and if so which SNI does the
//! ClientHello carry? The bytes read are replayed through [`Prefixed`], so the next hop sees the
//! stream untouched.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest TLS record we are willing to buffer to find the SNI (one full record).
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// An I/O object that first replays `prefix` and then reads from `inner`.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Self { prefix, inner }
    }
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello; `sni` when the client sent a server_name.
    Tls { sni: Option<String> },
    /// Anything else (treated as HTTP by the caller).
    Plain,
}

/// Reads the first byte (and, for TLS, the whole first record) with a deadline.
/// Returns the verdict and the stream with everything read replayed.
pub async fn sniff<T: AsyncRead + Unpin>(
    mut io: T,
    deadline: Duration,
) -> io::Result<(Sniffed, Prefixed<T>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let fut = async {
        let n = io.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before first byte",
            ));
        }
        if buf[0] != 0x16 {
            return Ok(Sniffed::Plain);
        }
        // TLS: read the full first record (header + length).
        while buf.len() < 5 {
            if io.read_buf(&mut buf).await? == 0 {
                return Ok(Sniffed::Tls { sni: None });
            }
        }
        let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
        let want = (5 + len).min(MAX_RECORD);
        buf.reserve(want.saturating_sub(buf.len()));
        while buf.len() < want {
            if io.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok(Sniffed::Tls {
            sni: client_hello_sni(&buf),
        })
    };
    let verdict = tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data from client in time"))??;
    Ok((verdict, Prefixed::new(buf, io)))
}

/// Extracts the SNI host name from a TLS record holding a ClientHello; `None` when absent or
/// malformed.
pub fn client_hello_sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(2)?; // legacy record version
    let rec_len = r.u16()? as usize;
    let mut r = Reader(r.take(rec_len.min(r.0.len()))?);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let hs_len = r.u24()? as usize;
    let mut r = Reader(r.take(hs_len.min(r.0.len()))?);
    r.skip(2 + 32)?; // client_version + random
    let sid = r.u8()? as usize;
    r.skip(sid)?;
    let cs = r.u16()? as usize;
    r.skip(cs)?;
    let comp = r.u8()? as usize;
    r.skip(comp)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()? as usize;
        let body = exts.take(len)?;
        if ty == 0 {
            let mut s = Reader(body);
            let list_len = s.u16()? as usize;
            let mut list = Reader(s.take(list_len)?);
            while !list.0.is_empty() {
                let name_type = list.u8()?;
                let n = list.u16()? as usize;
                let name = list.take(n)?;
                if name_type == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                        return None;
                    }
                    return Some(name.to_ascii_lowercase());
                }
            }
            return None;
        }
    }
    None
}

/// A minimal TLS 1.2-style ClientHello record carrying `sni` (no server_name extension when
/// `sni` is empty). For tests and benchmarks of SNI routing.
pub fn client_hello_record(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    if !sni.is_empty() {
        let mut list = vec![0u8];
        list.extend((sni.len() as u16).to_be_bytes());
        list.extend(sni.as_bytes());
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend(list);
        ext.extend(0u16.to_be_bytes());
        ext.extend((body.len() as u16).to_be_bytes());
        ext.extend(body);
    }
    let mut hs = vec![3, 3];
    hs.extend([7u8; 32]);
    hs.push(0); // session id
    hs.extend(2u16.to_be_bytes());
    hs.extend([0x13, 0x01]);
    hs.extend([1, 0]);
    hs.extend((ext.len() as u16).to_be_bytes());
    hs.extend(ext);
    let mut msg = vec![1];
    msg.extend(&(hs.len() as u32).to_be_bytes()[1..]);
    msg.extend(hs);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((msg.len() as u16).to_be_bytes());
    rec.extend(msg);
    rec
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: Option<&str>) -> Vec<u8> {
        match sni {
            Some(name) => client_hello_record(name),
            None => client_hello_record(""),
        }
    }

    #[test]
    fn finds_sni() {
        assert_eq!(
            client_hello_sni(&hello(Some("API.Example.com"))).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(client_hello_sni(&hello(None)), None);
    }

    #[test]
    fn truncated_and_garbage_are_none() {
        let h = hello(Some("a.b"));
        for cut in 0..h.len() {
            let _ = client_hello_sni(&h[..cut]);
        }
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(client_hello_sni(&[0x16, 3, 1, 0xff, 0xff, 1]), None);
    }

    #[tokio::test]
    async fn sniff_replays_bytes() {
        let data = hello(Some("x.y"));
        let (v, mut io) = sniff(&data[..], Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            v,
            Sniffed::Tls {
                sni: Some("x.y".into())
            }
        );
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        let (v, _) = sniff(&b"GET / HTTP/1.1\r\n\r\n"[..], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(v, Sniffed::Plain);
    }
}
