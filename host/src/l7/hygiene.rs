//! Proxy hygiene: what a request and response must lose or gain when they
//! cross the proxy, and which messages never cross it. Hop-by-hop fields
//! (RFC 9110 §7.6.1) stop here, the client's address is established once
//! (so policies, logs and backends all see the same one), and
//! `X-Forwarded-*` / `Forwarded` tell the backend who asked.
//!
//! Framing: hyper's parser refuses differing duplicate `Content-Length`,
//! obs-fold, a `Transfer-Encoding` that does not end in `chunked`, NUL and
//! bare CR; with `Content-Length` and `Transfer-Encoding` together it reads
//! the body as chunked, drops the length and closes after the response
//! (RFC 9112 §6.1). What hyper accepts but Switchyard refuses is checked
//! in `framing.rs`. `docs/SECURITY.md` has the table.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Fields the proxy sets itself: a `Connection` line cannot name them away
/// (else a client removes the chain its front proxy built, and the backend
/// sees the front proxy as the client).
fn set_by_proxy(n: &HeaderName) -> bool {
    n == X_FORWARDED_FOR
        || n == X_FORWARDED_PROTO
        || n == X_FORWARDED_HOST
        || n == header::FORWARDED
        || n == X_REAL_IP
}

/// Whether the client's `TE` accepts trailers: gRPC's `te: trailers`,
/// which an HTTP/2 backend must see again.
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    tokens(headers, &header::TE).any(|t| {
        t.split(';')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("trailers"))
    })
}

pub(super) use crate::headers::tokens;

/// Whether a request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields. With `keep_upgrade`, `Upgrade` and a
/// `Connection: upgrade` survive, as an upgrade needs them end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most heads carry none of these: one pass over the (few) names is
    // cheaper than hashing every hop-by-hop name into the map.
    if !keep_upgrade
        && !headers
            .keys()
            .any(|n| n == header::UPGRADE || crate::headers::is_hop_by_hop(n))
    {
        return;
    }
    // Fields named by Connection are hop-by-hop too (RFC 9110 §7.6.1),
    // but never the ones this proxy sets itself.
    let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(set_by_proxy(n) || keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &crate::headers::HOP_BY_HOP {
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in
/// which case the rightmost `X-Forwarded-For` entry that is not itself a
/// trusted proxy (what HAProxy and nginx's `real_ip_recursive` do).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// The peer's address as the forwarding headers show it, formatted once
/// per connection rather than per request.
#[derive(Debug, Clone)]
pub struct PeerText {
    /// The IP alone: `X-Forwarded-For` from an untrusted peer.
    pub ip: HeaderValue,
    /// The `for=` node of `Forwarded` (RFC 7239 §6: IPv6 quoted, bracketed).
    pub node: String,
}

impl PeerText {
    pub fn of(peer: IpAddr) -> Self {
        let ip = peer.to_canonical();
        let text = ip.to_string();
        let node = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        PeerText {
            ip: HeaderValue::from_str(&text).expect("an IP address is a valid header value"),
            node,
        }
    }
}

/// The last `Forwarded` element built on a connection, and the `Host` it
/// was built for: a keep-alive client names the same host request after
/// request, and building the element (escaping, checking the value) is
/// most of what `add_forwarded` costs (bench/count).
#[derive(Debug, Default)]
pub struct ForwardedCache(std::sync::Mutex<Option<(Option<HeaderValue>, HeaderValue)>>);

impl ForwardedCache {
    fn get_or_build(
        &self,
        host: Option<&HeaderValue>,
        build: impl FnOnce() -> Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        // `try_lock`: the streams of an HTTP/2 connection never wait on
        // each other for it; a busy cache is passed by.
        let Ok(mut last) = self.0.try_lock() else {
            return build();
        };
        if let Some((h, v)) = &*last
            && h.as_ref() == host
        {
            return Some(v.clone());
        }
        let v = build()?;
        *last = Some((host.cloned(), v.clone()));
        Some(v)
    }
}

/// `for=...;host="...";proto=...`: this proxy's element of `Forwarded`.
fn forwarded_element(
    peer: &PeerText,
    scheme: &str,
    host: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let host = host.and_then(|h| h.to_str().ok());
    let mut forwarded = String::with_capacity(48 + host.map_or(0, str::len));
    forwarded.push_str("for=");
    forwarded.push_str(&peer.node);
    if let Some(h) = host {
        // A quoted-string (RFC 7239 §4): a `"` or `\` in the client's Host
        // is escaped, so it cannot close the string and add parameters.
        forwarded.push_str(";host=\"");
        for c in h.chars() {
            if c == '"' || c == '\\' {
                forwarded.push('\\');
            }
            forwarded.push(c);
        }
        forwarded.push('"');
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(scheme);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)).ok()
}

fn scheme_value(scheme: &str) -> HeaderValue {
    match scheme {
        "https" => HeaderValue::from_static("https"),
        _ => HeaderValue::from_static("http"),
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded`. From an untrusted
/// peer, whatever the client sent is replaced; from a trusted proxy, the
/// peer is appended to the chain it sent. `host` is the authority the
/// client named (`:authority` or `Host`), as it sent it.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &PeerText,
    trusted_peer: bool,
    scheme: &str,
    host: Option<&HeaderValue>,
    cache: &ForwardedCache,
) {
    // From a trusted peer, every line of the chain it sent, in order.
    let prior = |headers: &HeaderMap, name: &HeaderName| {
        if !trusted_peer {
            return None;
        }
        let mut lines = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        let first = lines.next()?;
        Some(lines.fold(first.to_owned(), |mut all, line| {
            all.push_str(", ");
            all.push_str(line);
            all
        }))
    };
    // Looked for before it is removed: most requests carry none, and a
    // pass over the (few, mostly standard) names costs less than hashing
    // this one into the map.
    if !trusted_peer && headers.keys().any(|k| k == X_REAL_IP) {
        headers.remove(&X_REAL_IP);
    }
    // Up to four fields are added: one growth of the map, not two.
    headers.reserve(4);
    let xff = match prior(headers, &X_FORWARDED_FOR) {
        Some(p) => chained(&p, peer.ip.to_str().unwrap_or_default()),
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    let host_value = host;
    let forwarded = match prior(headers, &header::FORWARDED) {
        Some(p) => forwarded_element(peer, scheme, host)
            .and_then(|own| chained(&p, own.to_str().unwrap_or_default())),
        None => cache.get_or_build(host, || forwarded_element(peer, scheme, host)),
    };
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    let keep_prior =
        |headers: &HeaderMap, name: &HeaderName| trusted_peer && headers.contains_key(name);
    if !keep_prior(headers, &X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, scheme_value(scheme));
    }
    if !keep_prior(headers, &X_FORWARDED_HOST) {
        match host_value {
            Some(v) => {
                headers.insert(&X_FORWARDED_HOST, v.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// `prior, next` as a header value.
fn chained(prior: &str, next: &str) -> Option<HeaderValue> {
    let mut s = String::with_capacity(prior.len() + 2 + next.len());
    s.push_str(prior);
    s.push_str(", ");
    s.push_str(next);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "basic x"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn x_forwarded_for_is_only_believed_from_trusted_peers() {
        let h = map(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn forwarded_headers_replace_a_strangers_and_extend_a_proxys() {
        let peer: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        let host = HeaderValue::from_static("example.test");
        add_forwarded(
            &mut h,
            &PeerText::of(peer.ip()),
            false,
            "http",
            Some(&host),
            &ForwardedCache::default(),
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.1");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1;host=\"example.test\";proto=http"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");

        let mut h = HeaderMap::new();
        let sneaky = HeaderValue::from_static("a\";for=6.6.6.6;x=\"\\");
        add_forwarded(
            &mut h,
            &PeerText::of(peer.ip()),
            false,
            "http",
            Some(&sneaky),
            &ForwardedCache::default(),
        );
        assert_eq!(
            h["forwarded"],
            r#"for=198.51.100.1;host="a\";for=6.6.6.6;x=\"\\";proto=http"#
        );

        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        add_forwarded(
            &mut h,
            &PeerText::of(v6.ip()),
            true,
            "https",
            None,
            &ForwardedCache::default(),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 2001:db8::1");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=https");
    }

    #[test]
    fn the_forwarded_cache_follows_the_host() {
        let peer = PeerText::of("198.51.100.1".parse().unwrap());
        let cache = ForwardedCache::default();
        for host in ["a.test", "a.test", "b.test", "a.test"] {
            let mut h = HeaderMap::new();
            let v = HeaderValue::from_static(host);
            add_forwarded(&mut h, &peer, false, "http", Some(&v), &cache);
            assert_eq!(
                h["forwarded"],
                format!("for=198.51.100.1;host=\"{host}\";proto=http").as_str()
            );
        }
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &peer, false, "http", None, &cache);
        assert_eq!(h["forwarded"], "for=198.51.100.1;proto=http");
    }
}
