//! The bodies crossing the proxy: the backend's response body on its way
//! to the client ([`Tracked`]: in-flight count, body idle and total
//! timers), and the client's request body on its way upstream
//! ([`ClientBody`]: byte count, size cap, idle timer, and whose fault a
//! failure is), plus a small body kept to be sent again ([`Replay`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::error::ProxyError;
use crate::upstream::health::{self, Outcome};
use crate::upstream::{BoxError, InFlight, Pool, ResponseBody, UpstreamBody};

/// A backend's response body on its way to the client: it keeps the
/// backend's in-flight count until the last byte has gone, and a backend
/// that stops sending its body for the pool's
/// `body_timeout_ms` has it cut (the client's connection or stream ends
/// with it) and is charged with a failure.
pub(super) struct Tracked {
    pub(super) inner: ResponseBody,
    /// What the response hook read of the body, sent before the rest.
    pub(super) read: Option<Box<Buffered>>,
    pub(super) in_flight: InFlight,
    pub(super) pool: Arc<Pool>,
    pub(super) idle: super::guard::Idle,
    /// `total_timeout_ms`, when the pool has one: the body must end by it.
    pub(super) deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The listener's counters a response body increments (one reference
    /// count per response, and a finished reload's state is not kept
    /// alive by a long body).
    pub(super) counters: Arc<BodyCounters>,
    /// The request stays in progress on its connection until this body
    /// ends (the connection's idle timeout does not run meanwhile).
    pub(super) _open: super::guard::InProgress,
}

/// A listener's counters for response bodies.
#[derive(Debug, Default)]
pub struct BodyCounters {
    pub total: prometheus_client::metrics::counter::Counter,
    pub upstream_body: prometheus_client::metrics::counter::Counter,
    pub bytes_out: crate::admin::metrics::ShardedCounter,
}

#[derive(Debug, thiserror::Error)]
#[error("the backend sent no body byte for body_timeout_ms")]
pub(super) struct BodyStalled;

#[derive(Debug, thiserror::Error)]
#[error("the response did not end within total_timeout_ms")]
pub(super) struct TotalTimeout;

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(read) = &mut this.read {
            if let Some(frame) = read.next_frame() {
                if let Some(data) = frame.data_ref() {
                    this.counters.bytes_out.inc_by(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            this.read = None;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.counters.upstream_body.inc();
                    health::report(&this.pool, this.in_flight.backend(), Outcome::Failure);
                    return Poll::Ready(Some(Err(BodyStalled.into())));
                }
                if let Some(d) = &mut this.deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    this.counters.total.inc();
                    return Poll::Ready(Some(Err(TotalTimeout.into())));
                }
                Poll::Pending
            }
            Poll::Ready(polled) => {
                this.idle.reset();
                if let Some(Ok(frame)) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    this.counters.bytes_out.inc_by(data.len() as u64);
                }
                Poll::Ready(polled.map(|r| r.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.as_ref().is_none_or(|r| r.is_empty()) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let n = self.read.as_ref().map_or(0, |r| r.len());
        plus(self.inner.size_hint(), n)
    }
}

/// `hint` with `n` more bytes.
fn plus(hint: SizeHint, n: u64) -> SizeHint {
    let mut out = SizeHint::new();
    if let Some(upper) = hint.upper() {
        out.set_upper(upper.saturating_add(n));
    }
    out.set_lower(hint.lower().saturating_add(n));
    out
}

/// A body, or its beginning, read for a policy ([`read_up_to`]): its
/// data as it came, then its trailers when it ended.
#[derive(Default)]
pub(super) struct Buffered {
    pub(super) chunks: std::collections::VecDeque<Bytes>,
    pub(super) trailers: Option<http::HeaderMap>,
}

impl Buffered {
    fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        match self.chunks.pop_front() {
            Some(d) => Some(Frame::data(d)),
            None => self.trailers.take().map(Frame::trailers),
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    /// The data in one buffer of exactly its length, for a policy (one
    /// copy; none for a single chunk that is not shared).
    pub(super) fn take_data(&mut self) -> Vec<u8> {
        if self.chunks.len() == 1 {
            return self.chunks.pop_front().map(Vec::from).unwrap_or_default();
        }
        let mut all = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        for c in self.chunks.drain(..) {
            all.extend_from_slice(&c);
        }
        all
    }
}

/// Why a body could not be read for a policy.
pub(super) enum ReadFailed<E> {
    /// Nothing for the idle timeout.
    Idle,
    Body(E),
}

/// Reads `body` until its end (`true`) or past `limit` bytes (`false`),
/// each frame within `idle` when given. The chunks are kept as they came:
/// no buffer grows past what was read.
pub(super) async fn read_up_to<B>(
    body: &mut B,
    limit: u64,
    idle: Option<std::time::Duration>,
) -> Result<(Buffered, bool), ReadFailed<B::Error>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut read = Buffered::default();
    let mut len = 0u64;
    loop {
        let frame = match idle {
            Some(t) => tokio::time::timeout(t, body.frame())
                .await
                .map_err(|_| ReadFailed::Idle)?,
            None => body.frame().await,
        };
        let frame = match frame {
            None => return Ok((read, true)),
            Some(f) => f.map_err(ReadFailed::Body)?,
        };
        match frame.into_data() {
            Ok(d) => {
                len += d.len() as u64;
                if !d.is_empty() {
                    read.chunks.push_back(d);
                }
                if len > limit {
                    return Ok((read, false));
                }
            }
            Err(frame) => read.trailers = frame.into_trailers().ok(),
        }
    }
}

/// A client body the policy read the beginning of (it was over the
/// policy's limit): that beginning first, then the rest as it comes.
pub(super) struct Prefixed {
    pub(super) first: Buffered,
    pub(super) rest: ClientBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.first.next_frame() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        plus(self.rest.size_hint(), self.first.len())
    }
}

/// The client's request body on its way upstream: counts its bytes, stops
/// at the listener's size cap, and notes whether it failed on the
/// client's side (bad chunked framing, fewer bytes than its length, over
/// the cap), so that failure is answered 400 or 413 and never charged to
/// the backend.
pub(super) struct ClientBody<B = Incoming> {
    pub(super) inner: B,
    /// `request_body_timeout_ms` between two frames (a slow upload).
    pub(super) idle: super::guard::Idle,
    pub(super) timeouts: prometheus_client::metrics::counter::Counter,
    pub(super) bytes_in: crate::admin::metrics::ShardedCounter,
    /// Bytes still allowed under `max_request_body_bytes`.
    pub(super) left: u64,
    pub(super) fault: Arc<BodyFault>,
}

/// How a client body failed, seen by the request after the upstream
/// exchange failed; and whether the body was waiting on the client (a
/// response timeout then is the client's slowness, not the backend's; a
/// body the backend stopped reading is not waiting on the client).
#[derive(Default)]
pub(super) struct BodyFault(
    pub(super) std::sync::OnceLock<BodyFailure>,
    pub(super) std::sync::atomic::AtomicBool,
    /// Body bytes read from the client so far (the log hook's summary).
    pub(super) std::sync::atomic::AtomicU64,
);

impl<B> ClientBody<B> {
    /// `body`, counted against `left` bytes (`max_request_body_bytes`) and
    /// timed by the listener's `request_body_timeout_ms`.
    pub(super) fn new(
        body: B,
        state: &super::server::HttpState,
        left: u64,
        fault: Arc<BodyFault>,
    ) -> Self {
        ClientBody {
            inner: body,
            idle: super::guard::Idle::new(state.config.request_body_timeout),
            timeouts: state.timeouts.request_body.clone(),
            bytes_in: state.bytes.0.clone(),
            left,
            fault,
        }
    }
}

impl BodyFault {
    pub(super) fn waiting_on_client(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub(super) enum BodyFailure {
    TooLarge,
    Malformed(String),
    /// Nothing for `request_body_timeout_ms`.
    Idle,
}

#[derive(Debug, thiserror::Error)]
#[error("the client sent no body byte for request_body_timeout_ms")]
pub(super) struct UploadStalled;

#[derive(Debug, thiserror::Error)]
#[error("request body over max_request_body_bytes")]
pub(super) struct TooLarge;

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let waiting = polled.is_pending();
        if waiting != this.fault.waiting_on_client() {
            this.fault
                .1
                .store(waiting, std::sync::atomic::Ordering::Relaxed);
        }
        if waiting {
            if this.idle.expired(cx) {
                this.timeouts.inc();
                let _ = this.fault.0.set(BodyFailure::Idle);
                return Poll::Ready(Some(Err(UploadStalled.into())));
            }
            return Poll::Pending;
        }
        this.idle.reset();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > this.left {
                        let _ = this.fault.0.set(BodyFailure::TooLarge);
                        return Poll::Ready(Some(Err(TooLarge.into())));
                    }
                    this.left -= n;
                    this.bytes_in.inc_by(n);
                    this.fault
                        .2
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = this.fault.0.set(BodyFailure::Malformed(e.to_string()));
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose own body failed.
pub(super) fn body_error(failure: Option<&BodyFailure>, limit: u64) -> ProxyError {
    match failure {
        Some(BodyFailure::TooLarge) | None => ProxyError::BodyTooLarge { limit },
        Some(BodyFailure::Malformed(why)) => ProxyError::BadRequestBody(why.clone()),
        Some(BodyFailure::Idle) => ProxyError::BodyTimeout,
    }
}

/// Bodies of at most this many bytes are kept to be sent again (nginx
/// buffers request bodies whole by default; this keeps streaming for the
/// rest).
pub(super) const REPLAY_CAP: u64 = 64 * 1024;

pub(super) fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body read whole, to send again on a resend.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) data: Bytes,
    pub(super) trailers: Option<http::HeaderMap>,
}

impl Replay {
    pub(super) fn body(&self) -> UpstreamBody {
        let data = Full::new(self.data.clone()).map_err(|never| match never {});
        match self.trailers.clone() {
            None => data.boxed_unsync(),
            Some(t) => data
                .with_trailers(async move { Some(Ok(t)) })
                .boxed_unsync(),
        }
    }
}
