//! A response body from a pooled connection: the connection goes back to
//! its backend's idle stack when the body ends, and is closed when the
//! body is dropped before its end.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;

use super::{H1, Inner};

/// A pooled HTTP/1.1 connection lent to one response, to be given back.
pub(super) struct Back {
    pub(super) client: Arc<Inner>,
    /// The worker whose connections it is.
    pub(super) shard: usize,
    pub(super) authority: Arc<str>,
    pub(super) conn: H1,
}

impl Back {
    /// The response ended: the connection is idle again (or closed, past
    /// `max_idle_per_backend`).
    pub(super) fn give(self) {
        let mut hosts = self.client.hosts(self.shard);
        let Some(h) = hosts.get_mut(&*self.authority) else {
            return;
        };
        if h.h1.len() < self.client.max_idle {
            let mut conn = self.conn;
            conn.last_used = Instant::now();
            h.h1.push(conn);
        } else {
            h.open = h.open.saturating_sub(1);
        }
        h.freed.notify_one();
    }

    /// The response was dropped before its end: hyper closes the
    /// connection.
    pub(super) fn drop_conn(self) {
        let mut hosts = self.client.hosts(self.shard);
        if let Some(h) = hosts.get_mut(&*self.authority) {
            h.open = h.open.saturating_sub(1);
            h.freed.notify_one();
        }
    }
}

/// A backend's response body; an HTTP/1.1 one gives its connection back
/// to the pool when it ends.
pub struct ResponseBody {
    pub(super) inner: Incoming,
    pub(super) back: Option<Back>,
}

impl ResponseBody {
    pub(super) fn unpooled(inner: Incoming) -> Self {
        ResponseBody { inner, back: None }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(back) = this.back.take() {
            back.give();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            if hyper::body::Body::is_end_stream(&self.inner) {
                back.give();
            } else {
                back.drop_conn();
            }
        }
    }
}
