//! Plain TCP connections that send large cached bodies with `sendfile(2)` (issue
//! 21, part 1).
//!
//! hyper writes a response as a list of slices: the head it formatted, then the
//! body's `Bytes`, which for a hit is a slice of the stored entry. When that entry
//! lives in a file of its own ([`crate::store::mapped`]), [`SendfileTcp`] hands the
//! kernel the file's pages instead of the bytes: the body is not copied into the
//! socket, as nginx serves static files. Everything else (small bodies, misses
//! streamed from the origin, TLS, which must encrypt every byte) is written as
//! before.
//!
//! The slices before a file-backed one go out with `MSG_MORE`, so the head and the
//! start of the body still leave in one segment.

// Calls sendfile(2) and sendmsg(2) on the socket: needs `unsafe` (libc calls).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::store::mapped;

/// Smallest slice worth a look-up: a full HTTP/2 DATA frame's payload (16 KiB);
/// anything smaller is copied, which costs less than asking.
const SENDFILE_MIN: usize = 16 << 10;

/// A plain TCP connection whose writes send file-backed slices with `sendfile`.
pub struct SendfileTcp {
    inner: TcpStream,
    /// Body bytes sent from files.
    sent: Counter,
}

impl SendfileTcp {
    /// Wraps an accepted connection; `sent` counts the bytes sent from files.
    pub fn new(inner: TcpStream, sent: Counter) -> Self {
        Self { inner, sent }
    }

    /// Calls `op` on the socket once it is writable, until it stops blocking.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(RawFd) -> isize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let socket = self.inner.as_raw_fd();
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                let n = op(socket);
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Sends up to `len` bytes of `file` from `offset`.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let Ok(offset) = libc::off_t::try_from(offset) else {
            return Poll::Ready(Err(io::ErrorKind::InvalidInput.into()));
        };
        let sent = ready!(self.poll_write_with(cx, |socket| {
            let mut at = offset;
            // SAFETY: `file` is open while the slice it backs is borrowed (see
            // `mapped::file_of`), and the kernel writes only `at`.
            unsafe { libc::sendfile(socket, file, &mut at, len) }
        }))?;
        self.sent.inc_by(sent as u64);
        Poll::Ready(Ok(sent))
    }

    /// Writes `bufs`, telling the kernel more follows at once.
    fn poll_send_more(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |socket| {
            // SAFETY: a zeroed msghdr is valid (no address, no control data).
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            // `IoSlice` is ABI-compatible with `iovec`; the kernel only reads them.
            message.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            message.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
            // SAFETY: `message` points at `bufs`, alive for the call.
            unsafe { libc::sendmsg(socket, &message, libc::MSG_MORE | libc::MSG_NOSIGNAL) }
        })
    }
}

/// The first of `bufs` that is a large slice of a file-backed entry: its index,
/// file and offset.
fn first_file_backed(bufs: &[io::IoSlice<'_>]) -> Option<(usize, RawFd, u64)> {
    bufs.iter().enumerate().find_map(|(i, buf)| {
        if buf.len() < SENDFILE_MIN {
            return None;
        }
        mapped::file_of(buf).map(|(file, offset)| (i, file, offset))
    })
}

impl AsyncRead for SendfileTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match first_file_backed(bufs) {
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Some((0, file, offset)) => self.poll_send_file(cx, file, offset, bufs[0].len()),
            Some((before, ..)) => self.poll_send_more(cx, &bufs[..before]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair over loopback: the wrapped server side and the client side.
    async fn pair(sent: Counter) -> (SendfileTcp, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (SendfileTcp::new(accepted.unwrap().0, sent), client.unwrap())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[tokio::test]
    async fn head_body_and_tail_arrive_in_order_and_the_body_went_by_sendfile() {
        let sent = Counter::default();
        let (mut server, mut client) = pair(sent.clone()).await;
        let stored = mapped::copy_into_file(&pattern(3 << 20, 7)).expect("mapped");
        let body = stored.slice(1000..(3 << 20) - 1000);
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 3143728\r\n\r\n");
        let tail = Bytes::from(pattern(5000, 9));
        let expected = [&head[..], &body[..], &tail[..]].concat();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            // Slowly at first, so the socket's buffer fills and sends block.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            client.read_exact(&mut got).await.unwrap();
            assert!(
                got == expected,
                "the bytes that arrived differ from those written"
            );
        });
        let mut bufs: Vec<Bytes> = vec![head, body.clone(), tail];
        while !bufs.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
            let mut n = server.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            while n > 0 {
                let first = &mut bufs[0];
                let take = n.min(first.len());
                bytes::Buf::advance(first, take);
                n -= take;
                if first.is_empty() {
                    bufs.remove(0);
                }
            }
        }
        server.flush().await.unwrap();
        reader.await.unwrap();
        assert_eq!(sent.get(), body.len() as u64);
    }

    #[tokio::test]
    async fn heap_bodies_are_written_as_before() {
        let sent = Counter::default();
        let (mut server, mut client) = pair(sent.clone()).await;
        let body = pattern(100 << 10, 3);
        server.write_all(&body).await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == body);
        assert_eq!(sent.get(), 0);
    }
}
