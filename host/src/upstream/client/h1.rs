//! HTTP/1.1 helpers of the client: the origin form, the URI a connection
//! is opened with, waiting for a connection to be ready, and the slot
//! guard that gives a connection's count back when a request is dropped.

use http::{Request, Uri};

use super::{ClientError, H1, UpstreamBody, UpstreamClient};

/// A connection counted in its backend's `open`, until it is lent to a
/// response (disarmed) or given back on drop.
pub(super) struct Slot<'a> {
    pub(super) client: &'a UpstreamClient,
    pub(super) shard: usize,
    pub(super) authority: &'a str,
    pub(super) armed: bool,
}

impl Slot<'_> {
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.client.closed(self.shard, self.authority);
        }
    }
}

/// Whether a connection takes a request before the deadline. One whose
/// response just ended may need one more poll of its task first; usually
/// it is ready at once, and then no timer is made.
pub(super) async fn ready(
    conn: &mut H1,
    deadline: &mut impl FnMut() -> tokio::time::Instant,
) -> bool {
    conn.sender.is_ready()
        || matches!(
            tokio::time::timeout_at(deadline(), conn.sender.ready()).await,
            Ok(Ok(()))
        )
}

/// The URI a connection to `authority` is opened with.
pub(super) fn connect_uri(
    scheme: &Option<http::uri::Scheme>,
    authority: &http::uri::Authority,
) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = scheme.clone();
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    Uri::from_parts(parts).expect("a scheme and an authority make a URI")
}

/// HTTP/1.1 sends the origin form (`Host` is set by the caller): the
/// absolute URI is taken apart, not cloned; its scheme and authority are
/// needed again only to open a connection.
pub(super) fn to_origin_form(
    req: &mut Request<UpstreamBody>,
) -> Result<(Option<http::uri::Scheme>, http::uri::Authority), ClientError> {
    let http::uri::Parts {
        scheme,
        authority,
        path_and_query,
        ..
    } = std::mem::take(req.uri_mut()).into_parts();
    let Some(authority) = authority else {
        return Err(ClientError::Request("no backend address in the URI".into()));
    };
    *req.uri_mut() =
        Uri::from(path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    Ok((scheme, authority))
}

/// `/path?query` of an absolute URI.
pub(super) fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::from(pq)
}
