//! The request as the policy sees it, and the request as the backend gets
//! it: the snapshot taken before the policy call, and the upstream URI and
//! headers built from the decision afterwards.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Uri, Version, header};

use crate::config::HashKey;
use crate::policy::{ForwardAction, types};

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

fn version(v: Version) -> types::HttpVersion {
    match v {
        Version::HTTP_10 | Version::HTTP_09 => types::HttpVersion::Http10,
        Version::HTTP_2 => types::HttpVersion::Http2,
        Version::HTTP_3 => types::HttpVersion::Http3,
        _ => types::HttpVersion::Http11,
    }
}

/// The policy's view of a request head.
pub fn snapshot(
    method: &http::Method,
    uri: &Uri,
    v: Version,
    headers: &HeaderMap,
    scheme: &str,
    authority: Option<&str>,
) -> types::RequestHead {
    types::RequestHead {
        method: method.as_str().to_owned(),
        scheme: scheme.to_owned(),
        authority: authority.unwrap_or_default().to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(n, v)| types::Header {
                name: n.as_str().to_owned(),
                value: match v.to_str() {
                    Ok(s) => s.to_owned(),
                    Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                },
            })
            .collect(),
        version: version(v),
    }
}

/// The URI sent to a backend: its address, and the path (rewritten or not).
/// A rewritten path without `?` keeps the client's query string.
pub fn upstream_uri(
    original: &Uri,
    action: &ForwardAction,
    backend: &str,
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
        .authority(Authority::try_from(backend)?)
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
    use crate::balance::stable_hash;
    match key {
        HashKey::ClientIp => Some(stable_hash(&client)),
        HashKey::Path => Some(stable_hash(uri.path())),
        HashKey::Header(h) => headers.get(h).map(|v| stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| stable_hash(v)),
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
        let u = upstream_uri(&orig, &action(None), "127.0.0.1:9001", false).unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9001/images/a.png?size=2");
        let u = upstream_uri(&orig, &action(Some("/a.png")), "127.0.0.1:9001", false).unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9001/a.png?size=2");
        let u = upstream_uri(&orig, &action(Some("/b?x=1")), "[::1]:80", true).unwrap();
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

    #[test]
    fn the_snapshot_carries_every_header_and_the_split_target() {
        let uri: Uri = "/p/q?x=1&y".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        let s = snapshot(
            &http::Method::POST,
            &uri,
            Version::HTTP_2,
            &h,
            "http",
            Some("ex.test"),
        );
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/p/q");
        assert_eq!(s.query.as_deref(), Some("x=1&y"));
        assert_eq!(s.authority, "ex.test");
        assert_eq!(s.headers.len(), 2);
        assert!(matches!(s.version, types::HttpVersion::Http2));
    }
}
