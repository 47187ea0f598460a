//! Request ids and W3C trace context, stamped in the request filter before
//! the policy runs, so a policy reads them as headers, the backend gets
//! them, and the access log carries them (listener key `request_ids`,
//! default on):
//! - `X-Request-Id`: kept when a trusted peer (`trusted_proxies`) sent one
//!   value of 1-128 visible ASCII bytes; otherwise (none, or from anyone
//!   else) replaced by 32 random hex digits, so a client cannot choose the
//!   id a log search finds.
//! - `traceparent` (W3C Trace Context, version `00`): a valid one keeps
//!   its trace id and flags, with this proxy's own new span id as the
//!   parent the backend sees; a missing or invalid one starts a new trace
//!   (flags `00`: not sampled here), and any `tracestate` is dropped with
//!   it, as the specification says.

use http::{HeaderMap, HeaderName, HeaderValue};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest request id kept from a trusted peer.
const MAX_ID: usize = 128;

/// `N` random lowercase hex digits (N ≤ 32: 128 random bits), in
/// place: one draw of the thread's generator and a table lookup
/// per nibble (a `Vec` built byte by byte cost ~1,000 instructions per
/// request for the two ids; bench/count).
fn random_hex<const N: usize>() -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    let mut bits = fastrand::u128(..);
    for digit in out.iter_mut() {
        *digit = DIGITS[(bits & 15) as usize];
        bits >>= 4;
    }
    out
}

fn is_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The trace id and flags of a valid `traceparent`.
fn parse(v: &[u8]) -> Option<(&[u8], &[u8])> {
    // version-traceid-parentid-flags; a later version may append fields.
    if v.len() < 55 || (v.len() > 55 && (v[..2] == *b"00" || v[55] != b'-')) {
        return None;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = v[2] == b'-' && v[35] == b'-' && v[52] == b'-';
    let valid = dashes
        && is_hex(version)
        && version != b"ff"
        && is_hex(trace)
        && is_hex(parent)
        && is_hex(flags)
        && trace.iter().any(|c| *c != b'0')
        && parent.iter().any(|c| *c != b'0');
    valid.then_some((trace, flags))
}

/// Stamps both headers on a request; returns the request id and the trace
/// id it goes out with.
pub(super) fn stamp(headers: &mut HeaderMap, trusted_peer: bool) -> (HeaderValue, HeaderValue) {
    let mut ids = headers.get_all(&X_REQUEST_ID).iter();
    let kept = match (ids.next(), ids.next()) {
        (Some(v), None)
            if trusted_peer
                && !v.is_empty()
                && v.len() <= MAX_ID
                && v.as_bytes().iter().all(|c| c.is_ascii_graphic()) =>
        {
            Some(v.clone())
        }
        _ => None,
    };
    let request_id = kept.unwrap_or_else(|| {
        let id = HeaderValue::from_bytes(&random_hex::<32>()).expect("hex is a header value");
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        id
    });
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    let incoming = match (parents.next(), parents.next()) {
        (Some(v), None) => parse(v.as_bytes()).map(|(t, f)| {
            let mut trace = [0u8; 32];
            trace.copy_from_slice(t);
            (trace, [f[0], f[1]])
        }),
        _ => None,
    };
    let (trace, flags) = incoming.unwrap_or_else(|| {
        headers.remove(&TRACESTATE);
        (random_hex::<32>(), *b"00")
    });
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    out[3..35].copy_from_slice(&trace);
    out[36..52].copy_from_slice(&random_hex::<16>());
    out[53..].copy_from_slice(&flags);
    headers.insert(
        TRACEPARENT.clone(),
        HeaderValue::from_bytes(&out).expect("hex is a header value"),
    );
    let trace_id = HeaderValue::from_bytes(&trace).expect("hex is a header value");
    (request_id, trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_with_a_new_parent() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", VALID.parse().unwrap());
        h.insert("tracestate", "a=b".parse().unwrap());
        let (_, trace) = stamp(&mut h, false);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = h["traceparent"].to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "the proxy's own span");
        assert_eq!(h["tracestate"], "a=b");
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", bad.parse().unwrap());
            h.insert("tracestate", "a=b".parse().unwrap());
            let (_, trace) = stamp(&mut h, true);
            assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            let out = h["traceparent"].to_str().unwrap();
            assert_eq!(out.len(), 55);
            assert!(out.ends_with("-00"), "{out}");
            assert!(h.get("tracestate").is_none(), "{bad}");
        }
    }

    #[test]
    fn a_request_id_is_kept_only_from_a_trusted_peer() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(stamp(&mut h, true).0, "abc-123");
        let (id, _) = stamp(&mut h, false);
        assert_ne!(id, "abc-123");
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
        // Two values, or one too long, are replaced even from a trusted peer.
        let mut h = HeaderMap::new();
        h.append("x-request-id", "a".parse().unwrap());
        h.append("x-request-id", "b".parse().unwrap());
        assert_eq!(stamp(&mut h, true).0.len(), 32);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "x".repeat(129).parse().unwrap());
        assert_eq!(stamp(&mut h, true).0.len(), 32);
    }
}
