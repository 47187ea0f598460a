//! Header facts shared by the proxy and the policy checks, defined once:
//! the hop-by-hop fields (RFC 9110 §7.6.1), and the elements of a
//! list-valued field.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Fields that never cross a hop, besides those a `Connection` line
/// names. `Trailer` is not one: it is end to end (RFC 9110 §6.6.2), and
/// gRPC needs it. `TE` is, but `TE: trailers` is sent again toward
/// HTTP/2 pools (RFC 9113 §8.2.2). `Upgrade` is hop-by-hop too, but kept
/// for an upgrade, so it is handled on its own.
pub const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Whether `name` is one of [`HOP_BY_HOP`]. Inlined, with the standard
/// names compared first: `<[HeaderName]>::contains` is an out-of-line
/// call per comparison, and this runs for every field of every request
/// and response (bench/count: ~500 instructions per request).
#[inline]
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

/// Whether a field is the proxy's to set and never a policy's: the
/// hop-by-hop fields, `Upgrade`, and the message's framing and target
/// (`Trailer`, `Content-Length`, `Host`), which only the host can keep
/// consistent.
pub fn host_only(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || name == header::UPGRADE
        || name == header::TRAILER
        || name == header::CONTENT_LENGTH
        || name == header::HOST
}

/// The comma-separated elements of every line of a field, trimmed, empty
/// ones skipped (RFC 9110 §5.6.1).
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
