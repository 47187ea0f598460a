//! The framing and head checks hyper leaves to its user: a request that
//! could be read two ways never reaches a backend ([`check_request`]); a
//! backend's response that could be never reaches a client
//! (`upstream::framing`). hyper itself already refuses differing
//! duplicate `Content-Length`, obs-fold, NUL and bare CR, and a
//! `Transfer-Encoding` that does not end in `chunked`. `docs/SECURITY.md`
//! has the table.

use http::HeaderMap;
use http::header;

use crate::headers::tokens;

/// Why a request is refused before it reaches a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a message Switchyard will not forward as it could be read two
    /// ways.
    BadRequest(&'static str),
    /// 414: the request target is longer than `max_uri_bytes`.
    UriTooLong(usize),
    /// 501: a transfer coding other than `chunked`.
    NotImplemented(String),
}

/// The framing and target checks hyper leaves to its user (RFC 9110,
/// 9112, 9113), on a request head as hyper parsed it:
/// - at most one `Host`, exactly one in HTTP/1.1 (RFC 9112 §3.2), valid
///   as `uri-host [":" port]`; in HTTP/2 it must name what `:authority`
///   names (RFC 9113 §8.3.1);
/// - `Transfer-Encoding` is exactly one `chunked`: `chunked` twice is
///   400, another coding before it 501 (RFC 9112 §6.1, §7);
/// - the request target is at most `max_uri_bytes` long (414).
pub fn check_request(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
    max_uri_bytes: usize,
) -> Result<(), Refusal> {
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > max_uri_bytes {
        return Err(Refusal::UriTooLong(max_uri_bytes));
    }
    // One pass over the head instead of a look-up per name (cheaper for
    // the usual few fields; bench/count).
    let (mut host, mut hosts, mut te) = (None, 0, false);
    for (name, value) in headers {
        if name == header::HOST {
            host = Some(value);
            hosts += 1;
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        }
    }
    if hosts > 1 {
        return Err(Refusal::BadRequest("more than one Host"));
    }
    match (host, version) {
        (None, http::Version::HTTP_11) => {
            return Err(Refusal::BadRequest("an HTTP/1.1 request without Host"));
        }
        (Some(h), _) if !valid_host(h.as_bytes()) => {
            return Err(Refusal::BadRequest("an invalid Host"));
        }
        (Some(h), http::Version::HTTP_2) => {
            if let Some(a) = uri.authority()
                && !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes())
            {
                return Err(Refusal::BadRequest("host disagrees with :authority"));
            }
        }
        _ => {}
    }
    if te {
        let mut chunked = 0;
        let mut other = None;
        for t in tokens(headers, &header::TRANSFER_ENCODING) {
            if t.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                other.get_or_insert(t);
            }
        }
        if chunked != 1 {
            return Err(Refusal::BadRequest("Transfer-Encoding is not one chunked"));
        }
        if let Some(coding) = other {
            return Err(Refusal::NotImplemented(format!(
                "transfer coding {coding:?} is not implemented"
            )));
        }
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2-3), or empty
/// (RFC 9112 §3.2: a target without an authority). No userinfo, path or
/// query. Checked by byte class here rather than with `http`'s
/// `Authority` parser, which copies the value into a new buffer first
/// (two thirds of the checks' cost per request, measured with callgrind
/// in `host/benches/request_checks.rs`).
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h {
        [] => return true,
        [b'[', rest @ ..] => {
            // IP-literal: hex digits, ':' and '.' (IPv4 tail) in brackets.
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &rest[..end];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return false;
            }
            match &rest[end + 1..] {
                [] => return true,
                [b':', port @ ..] => (&[][..], port),
                _ => return false,
            }
        }
        _ => match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], &h[i + 1..]),
            None => (h, &[][..]),
        },
    };
    host.iter().all(|&b| REG_NAME[b as usize]) && port.iter().all(u8::is_ascii_digit)
}

/// reg-name and IPv4address bytes: unreserved, `%` of pct-encoded,
/// sub-delims (RFC 3986 §3.2.2).
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_uri_host_and_port_only() {
        for ok in [
            "",
            "a.test",
            "a.test:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1.2.3.4]:1",
            "xn--caf-dma.test",
            "a.test:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "evil@a.test",
            "a.test/x",
            "a.test?x",
            "a.test#x",
            "a\\b",
            "[::1",
            "[]",
            "[::1]x",
            "a.test:80x",
            "caf\u{e9}.test",
            "a b",
            "[g::1]",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }
}
