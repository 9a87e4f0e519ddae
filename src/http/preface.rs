//! hyper-util's automatic HTTP/1 / HTTP/2 detection reads a connection's first bytes with no time
//! limit, before hyper's own header timeout starts: a client that connects and sends nothing, or
//! dribbles `PRI * HTTP/2.0`, would hold its connection (and an fd) forever. `PrefaceDeadline`
//! fails reads with `TimedOut` once the deadline passes, until the bytes read so far tell the two
//! versions apart; from then on it is a plain pass-through and hyper's timeouts apply.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct PrefaceDeadline<T> {
    inner: T,
    /// None once the version is known (or the peer closed).
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, all equal to the HTTP/2 preface's start.
    matched: usize,
}

impl<T> PrefaceDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        PrefaceDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }

    fn observe(&mut self, new: &[u8]) {
        let rest = &H2_PREFACE[self.matched..];
        let n = new.len().min(rest.len());
        self.matched += n;
        if new.is_empty() || new[..n] != rest[..n] || self.matched == H2_PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.observe(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            err => err,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn first_read(sent: &[u8], then_silent: bool) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(sent).await.unwrap();
        let _open = if then_silent { Some(client) } else { None };
        let mut conn = PrefaceDeadline::new(server, Duration::from_millis(50));
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(got);
            }
            got.extend_from_slice(&buf[..n]);
            if conn.deadline.is_none() {
                return Ok(got);
            }
        }
    }

    #[tokio::test]
    async fn silence_times_out() {
        let e = first_read(b"", true).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_partial_h2_preface_times_out() {
        let e = first_read(b"PRI * HTTP/2", true).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn http1_or_a_full_preface_lifts_the_deadline() {
        assert_eq!(first_read(b"GET", true).await.unwrap(), b"GET");
        assert_eq!(first_read(b"PU", true).await.unwrap(), b"PU");
        assert_eq!(first_read(H2_PREFACE, true).await.unwrap(), H2_PREFACE);
    }
}
