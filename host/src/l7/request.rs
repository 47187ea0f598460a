//! The request as the backend gets it: the client's authority, and the
//! upstream URI built from the decision.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Uri, header};

use crate::config::HashKey;
use crate::policy::ForwardAction;

/// The authority the client named: `:authority`/absolute-form first, then
/// `Host` (only when it is visible ASCII), as a header value ready to
/// forward.
pub fn authority(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    match uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => headers
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    }
}

/// The URI sent to a backend: its address, and the path (rewritten or not).
/// A rewritten path without `?` keeps the client's query string.
pub fn upstream_uri(
    original: &Uri,
    action: &ForwardAction,
    backend: &Authority,
    tls: bool,
) -> Result<Uri, http::Error> {
    let path_and_query = match &action.path {
        Some(p) if p.query().is_some() => p.clone(),
        Some(p) => match original.query() {
            Some(q) => PathAndQuery::try_from(format!("{}?{q}", p.path()))?,
            None => p.clone(),
        },
        None => original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    Uri::builder()
        .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
        .authority(backend.clone())
        .path_and_query(path_and_query)
        .build()
}

/// Whether a request's authority (port stripped, case ignored) names the
/// host a TLS connection was made for.
pub fn host_matches(authority: &str, sni: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        // `[::1]:443` or `name:443`, but not a bare IPv6 address.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case(sni)
}

/// The value the pool's `hash` algorithm hashes, when the request has it.
pub fn hash_key(
    key: &HashKey,
    client: std::net::IpAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<u64> {
    use crate::balance::{stable_hash, stable_hash_ip};
    match key {
        HashKey::ClientIp => Some(stable_hash_ip(client)),
        HashKey::Path => Some(stable_hash(uri.path().as_bytes())),
        HashKey::Header(h) => headers.get(h).map(|v| stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| stable_hash(v.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(path: Option<&str>) -> ForwardAction {
        ForwardAction {
            path: path.map(|p| PathAndQuery::try_from(p).unwrap()),
            ..ForwardAction::default()
        }
    }

    #[test]
    fn upstream_uri_keeps_or_replaces_path_and_query() {
        let orig: Uri = "/images/a.png?size=2".parse().unwrap();
        let u = upstream_uri(
            &orig,
            &action(None),
            &"127.0.0.1:9001".parse().unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9001/images/a.png?size=2");
        let u = upstream_uri(
            &orig,
            &action(Some("/a.png")),
            &"127.0.0.1:9001".parse().unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9001/a.png?size=2");
        let u = upstream_uri(
            &orig,
            &action(Some("/b?x=1")),
            &"[::1]:80".parse().unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(u.to_string(), "https://[::1]:80/b?x=1");
    }

    #[test]
    fn host_matches_ignores_port_case_and_a_trailing_dot() {
        assert!(host_matches("a.test", "a.test"));
        assert!(host_matches("A.Test:8443", "a.test"));
        assert!(host_matches("a.test.", "a.test"));
        assert!(host_matches("[::1]:443", "::1"));
        assert!(!host_matches("b.test", "a.test"));
        assert!(!host_matches("a.test.evil", "a.test"));
        assert!(!host_matches("b.test:443", "a.test"));
    }
}
