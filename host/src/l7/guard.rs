//! Timers on a client connection's bytes, below hyper:
//!
//! - **first byte**: enough bytes to tell the protocol (`sniff.rs`: the
//!   first read of an HTTP/1.1 request, or HTTP/2's whole 24-byte
//!   preface) must arrive within `first_byte_timeout_ms`; the sniff reads
//!   through this stream and hands back what it read
//!   ([`Guarded::sniffed`]). hyper's `header_read_timeout` only starts
//!   after it; on TLS listeners the handshake timeout ends with the
//!   handshake. Without this, a connection that sends nothing is held
//!   forever.
//! - **send**: a write that makes no progress for `send_timeout_ms` (a
//!   client that stopped reading) ends the connection (nginx's
//!   `send_timeout`).
//!
//! Each closes the connection with a `TimedOut` I/O error, and is counted
//! in `switchyard_timeouts_total{phase="first_byte"|"send"}`. [`Idle`] is
//! the same timer for bodies (`request_body`, `upstream_body`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The counters a guard increments when it closes a connection.
#[derive(Clone, Debug, Default)]
pub struct TimeoutCounters {
    pub first_byte: Counter,
    pub send: Counter,
    pub request_body: Counter,
    pub upstream_body: Counter,
    pub idle: Counter,
    pub tunnel: Counter,
    pub total: Counter,
}

/// A timer for a stream that must make progress every `timeout`: armed
/// when a poll finds nothing, disarmed by progress. One allocation, at
/// the first poll that finds nothing; re-armed in place after that.
#[derive(Debug)]
pub struct Idle {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Idle {
    pub fn new(timeout: Duration) -> Self {
        Idle {
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// After progress.
    pub fn reset(&mut self) {
        self.armed = false;
    }

    /// After a poll that found nothing: whether the time is up (the
    /// waker is registered otherwise).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = || tokio::time::Instant::now() + self.timeout;
        let timer = match &mut self.timer {
            Some(t) => {
                if !self.armed {
                    t.as_mut().reset(deadline());
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline()))),
        };
        self.armed = true;
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A client stream with a first-byte timer and a send-stall timer.
pub struct Guarded<S> {
    inner: S,
    /// What the protocol sniff read, read again first ([`Self::sniffed`]).
    head: Bytes,
    /// Armed until the sniff has read enough to tell the protocol.
    first_byte: Option<Pin<Box<Sleep>>>,
    send_timeout: Duration,
    /// Armed while a write or flush makes no progress.
    stalled: Option<Pin<Box<Sleep>>>,
    counters: TimeoutCounters,
    /// Set for HTTP/1.1 ([`Self::linger`]): whether, and how long, a
    /// shutdown reads what the client still sends.
    linger: Option<(std::sync::Arc<Streams>, Duration)>,
    /// Reading and dropping the rest after the write side was shut.
    lingering: Option<Lingering>,
}

impl<S> Guarded<S> {
    pub fn new(
        inner: S,
        first_byte_timeout: Duration,
        send_timeout: Duration,
        counters: TimeoutCounters,
    ) -> Self {
        Guarded {
            inner,
            head: Bytes::new(),
            first_byte: Some(Box::pin(tokio::time::sleep(first_byte_timeout))),
            send_timeout,
            stalled: None,
            counters,
            linger: None,
            lingering: None,
        }
    }

    /// A lingering close (nginx's `lingering_close`, RFC 9112 §9.6): when
    /// a request on `streams` had a body, the shutdown that closes the
    /// connection shuts the write side, then reads and drops what the
    /// client still sends until it closes, sends nothing for 5 s, or
    /// `time` has passed. Without it, an answer given before the body was
    /// read (a 413, a policy's refusal) is followed by a close with bytes
    /// unread or still arriving, the kernel answers them with a reset, and
    /// the client, still sending, can lose the answer.
    pub fn linger(&mut self, streams: std::sync::Arc<Streams>, time: Duration) {
        self.linger = Some((streams, time));
    }

    /// The protocol sniff (`sniff.rs`) read `head` and told the protocol:
    /// the first-byte timer ends, and `head` is read again first. Until
    /// then the timer runs, so a client that sends an HTTP/2 preface a
    /// byte at a time is closed like one that sends nothing.
    pub fn sniffed(&mut self, head: Bytes) {
        self.first_byte = None;
        self.head = head;
    }

    /// Polls the send-stall timer after a write returned `Pending`.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        self.counters.send.inc();
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for send_timeout_ms",
        ))
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head[..n]);
            this.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                if let Some(timer) = &mut this.first_byte
                    && timer.as_mut().poll(cx).is_ready()
                {
                    this.counters.first_byte.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no byte from the client within first_byte_timeout_ms",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            match this.linger.take() {
                Some((streams, time)) if streams.had_body() => {
                    this.lingering = Some(Lingering::new(time));
                }
                _ => return Poll::Ready(Ok(())),
            }
        }
        let lingering = this.lingering.as_mut().expect("set above");
        lingering.poll_drain(&mut this.inner, cx).map(Ok)
    }
}

/// How long a lingering close waits for the client's next bytes
/// (nginx's `lingering_timeout`).
const LINGER_QUIET: Duration = Duration::from_secs(5);

/// A lingering close in progress ([`Guarded::linger`]).
struct Lingering {
    /// `lingering_time_ms` after the shutdown: the end, whatever comes.
    end: tokio::time::Instant,
    /// The earlier of `end` and [`LINGER_QUIET`] after the last read.
    timer: Pin<Box<Sleep>>,
}

impl Lingering {
    fn new(time: Duration) -> Self {
        let now = tokio::time::Instant::now();
        let end = now + time;
        Lingering {
            end,
            timer: Box::pin(tokio::time::sleep_until(end.min(now + LINGER_QUIET))),
        }
    }

    /// Reads and drops until the client closes, an error, or the timer.
    fn poll_drain<S: AsyncRead + Unpin>(&mut self, io: &mut S, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let mut buf = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let now = tokio::time::Instant::now();
                    if now >= self.end {
                        return Poll::Ready(());
                    }
                    self.timer.as_mut().reset(self.end.min(now + LINGER_QUIET));
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return self.timer.as_mut().poll(cx),
            }
        }
    }
}

/// Requests in progress on one client connection, for its idle timeout:
/// a connection with none for `idle_timeout_ms` is shut down gracefully
/// (HTTP/2: GOAWAY). A request counts until its response body ends.
#[derive(Debug)]
pub struct Streams {
    active: std::sync::atomic::AtomicUsize,
    /// Whether any request on the connection had a body (for a lingering
    /// close, [`Guarded::linger`]).
    had_body: std::sync::atomic::AtomicBool,
    /// When `active` last fell to zero, in ms since `start`.
    idle_since_ms: std::sync::atomic::AtomicU64,
    start: std::time::Instant,
}

/// One request in progress; dropped when its response is done.
#[derive(Debug)]
pub struct InProgress(std::sync::Arc<Streams>);

impl InProgress {
    /// This request has a body ([`Streams::saw_body`]).
    pub fn saw_body(&self) {
        self.0.saw_body();
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let s = &self.0;
        if s.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = u64::try_from(s.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            s.idle_since_ms.store(now, Ordering::Release);
        }
    }
}

impl Streams {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Streams {
            active: Default::default(),
            had_body: Default::default(),
            idle_since_ms: Default::default(),
            start: std::time::Instant::now(),
        })
    }

    /// When the connection was accepted (this was made).
    pub fn started(&self) -> std::time::Instant {
        self.start
    }

    /// A request with a body came on this connection.
    pub fn saw_body(&self) {
        self.had_body
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn had_body(&self) -> bool {
        self.had_body.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn begin(self: &std::sync::Arc<Self>) -> InProgress {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InProgress(self.clone())
    }

    /// Resolves once the connection has had no request in progress for
    /// `timeout`.
    ///
    /// Polled at every wake of its connection's task (it is one branch of
    /// a `select!`), this future polls its timer only once per arming: the
    /// timer keeps the task's waker from that poll and wakes the task
    /// when it fires, and until then `is_elapsed` (one atomic load) says
    /// there is nothing to do. A poll of a `Sleep` costs ~100 instructions,
    /// and a keep-alive request wakes the task more than once (bench/count).
    pub async fn idle(&self, timeout: Duration) {
        use std::sync::atomic::Ordering;
        let timer = tokio::time::sleep(timeout);
        tokio::pin!(timer);
        // Whether the timer holds this task's waker for its current arming.
        let mut registered = false;
        std::future::poll_fn(|cx| {
            loop {
                if registered && !timer.is_elapsed() {
                    return Poll::Pending;
                }
                // Unconstrained: with the task's cooperative budget spent
                // (a busy connection polled first), a `Sleep` answers
                // Pending without registering, and `registered` would then
                // never see it fire.
                let mut polled = tokio::task::unconstrained(timer.as_mut());
                if Pin::new(&mut polled).poll(cx).is_pending() {
                    registered = true;
                    return Poll::Pending;
                }
                let wait = if self.active.load(Ordering::Acquire) == 0 {
                    let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                    let idle_for = self.start.elapsed().saturating_sub(since);
                    if idle_for >= timeout {
                        return Poll::Ready(());
                    }
                    timeout - idle_for
                } else {
                    timeout
                };
                timer.as_mut().reset(tokio::time::Instant::now() + wait);
                registered = false;
            }
        })
        .await
    }
}
