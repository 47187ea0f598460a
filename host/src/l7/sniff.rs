//! HTTP/1.1 or HTTP/2 on a client connection, told from its first read,
//! and the connection served by hyper's server for that version.
//!
//! hyper-util's auto server did this until issue 26: it reads exactly 24
//! bytes (the length of HTTP/2's preface) to decide, and hyper then reads
//! the rest of the request, so every new HTTP/1.1 connection cost two
//! `recvfrom` where nginx makes one (`strace -c`, bench/RESULTS.md). Here
//! the first read takes up to [`FIRST_READ`] bytes, and what it read is
//! handed back to the client stream, which hyper reads it from first
//! (`guard::Guarded::sniffed`). The rest is hyper's own `server::conn`
//! for each version, as auto uses it, built with the listener's settings
//! ([`builders`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::guard::Guarded;
use crate::config::{HttpSettings, Listener};

/// HTTP/2's client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first read's size: hyper's own first read buffer.
pub const FIRST_READ: usize = 8192;

/// What the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    H1,
    H2,
}

/// Reads the connection's first bytes (one read, unless they are a part
/// of the HTTP/2 preface) and tells the version. `None` when the client
/// closed before sending anything that decides it.
pub async fn sniff<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<Option<(Version, Bytes)>> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some((Version::H1, buf.freeze())));
        }
        if buf.len() >= H2_PREFACE.len() {
            return Ok(Some((Version::H2, buf.freeze())));
        }
    }
}

/// How long a drain lets a new connection send its first bytes, counted
/// from its accept: one long round trip.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The first phase of a connection: the protocol, told from its first
/// read ([`sniff`]), with what was read handed back to the stream.
/// `None` when there is nothing to serve: the client closed (or the
/// first-byte timer, which counted it, closed it) before a request, or a
/// drain began while it had sent nothing for [`DRAIN_GRACE`] since it was
/// `accepted` (a listener's `last_call` connections are not drained).
pub async fn sniff_or_drain<S: AsyncRead + Unpin>(
    stream: &mut Guarded<S>,
    drain: &mut tokio::sync::watch::Receiver<bool>,
    last_call: bool,
    peer: SocketAddr,
    accepted: std::time::Instant,
) -> Option<Version> {
    let sniffed = if last_call {
        sniff(stream).await
    } else {
        let accepted = tokio::time::Instant::from_std(accepted);
        let drained = async {
            let _ = drain.wait_for(|d| *d).await;
            // A connection accepted a moment ago most likely has its
            // request on the wire: closing it now would answer it with
            // nothing (seen in the upgrade test once workers served
            // connections beside the drain).
            tokio::time::sleep_until(accepted + DRAIN_GRACE).await;
        };
        tokio::select! {
            biased;
            r = sniff(stream) => r,
            () = drained => return None,
        }
    };
    match sniffed {
        Ok(Some((version, head))) => {
            stream.sniffed(head);
            Some(version)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended before a request");
            None
        }
    }
}

/// hyper's server for each version, with the listener's settings.
#[derive(Clone)]
pub struct Builders<E> {
    pub http1: http1::Builder,
    pub http2: http2::Builder<E>,
}

/// One client connection served by hyper: HTTP/1.1 (with upgrades) or
/// HTTP/2. The HTTP/2 one is the larger; the whole is boxed once where it
/// is made (`server.rs`), so the difference costs nothing per poll.
#[allow(clippy::large_enum_variant)]
pub enum ServerConn<I, S, E>
where
    S: HttpService<Incoming>,
{
    H1(http1::UpgradeableConnection<TokioIo<I>, S>),
    H2(http2::Connection<TokioIo<I>, S, E>),
}

impl<E: Clone> Builders<E> {
    pub fn serve<I, S, B>(&self, version: Version, io: I, service: S) -> ServerConn<I, S, E>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    {
        match version {
            Version::H1 => ServerConn::H1(
                self.http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            ),
            Version::H2 => ServerConn::H2(self.http2.serve_connection(TokioIo::new(io), service)),
        }
    }
}

impl<I, S, B, E> ServerConn<I, S, E>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    /// Finishes the requests in flight, then closes (HTTP/1.1: after the
    /// current response; HTTP/2: GOAWAY).
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            ServerConn::H1(c) => Pin::new(c).graceful_shutdown(),
            ServerConn::H2(c) => Pin::new(c).graceful_shutdown(),
        }
    }
}

impl<I, S, B, E> Future for ServerConn<I, S, E>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ServerConn::H1(c) => Pin::new(c).poll(cx),
            ServerConn::H2(c) => Pin::new(c).poll(cx),
        }
    }
}

/// Spawns each HTTP/2 stream's future boxed. The request's future is
/// ~5.6 KB, and a task built around it moved it five times on the way in
/// (tokio's task cell, its stage, the spawn path): boxed once here, the
/// task holds a pointer. HTTP/1.1 polls its future in place and never
/// comes here (`bench/RESULTS.md`, issue 26).
#[derive(Clone, Copy, Debug)]
pub struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// hyper's HTTP/1.1 and HTTP/2 servers (h2c on the same port, told
/// apart by `sniff`) with the listener's limits and timers; keep-alive on
/// (a listener's last connections turn it off on a copy).
pub fn builders(cfg: &Listener<HttpSettings>) -> Builders<BoxingExecutor> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_headers(cfg.max_headers)
        .max_buf_size(cfg.max_header_bytes);
    let mut http2 = hyper::server::conn::http2::Builder::new(BoxingExecutor);
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.http2_keepalive_timeout)
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256);
    Builders { http1, http2 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::ReadBuf;

    async fn sniffed(chunks: &[&[u8]]) -> Option<(Version, Bytes)> {
        sniff(&mut Chunks::of(chunks)).await.unwrap()
    }

    /// A reader that returns each chunk from a read of its own, then the
    /// end.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl Chunks {
        fn of(chunks: &[&[u8]]) -> Self {
            Chunks(chunks.iter().map(|c| c.to_vec()).collect())
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut c) = self.get_mut().0.pop_front() {
                assert!(c.len() <= buf.remaining());
                buf.put_slice(&c);
                c.clear();
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn http1_is_told_from_the_first_read_and_kept_whole() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (v, head) = sniffed(&[req]).await.unwrap();
        assert_eq!(v, Version::H1);
        assert_eq!(&head[..], &req[..], "one read, all of it");
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_http2() {
        let (v, head) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n\0\0"])
            .await
            .unwrap();
        assert_eq!(v, Version::H2);
        assert!(head.starts_with(H2_PREFACE));
        assert_eq!(head.len(), H2_PREFACE.len() + 2);
    }

    #[tokio::test]
    async fn a_near_preface_is_http1_and_an_early_close_is_nothing() {
        let (v, _) = sniffed(&[b"PRI * HTTP/1.1\r\n"]).await.unwrap();
        assert_eq!(v, Version::H1);
        assert!(sniffed(&[b"PRI * "]).await.is_none(), "closed mid-preface");
        assert!(sniffed(&[]).await.is_none(), "closed at once");
    }
}
