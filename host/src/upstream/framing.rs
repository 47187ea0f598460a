//! A backend's response whose framing could be read two ways never
//! reaches a client: hyper reads such a response one way, Switchyard
//! answers 502 and drops the connection. `docs/SECURITY.md` has the table.

use http::HeaderMap;
use http::header;

use crate::headers::tokens;

/// A backend's response whose framing could be read two ways (RFC 9112
/// §6.1, §6.3): `Content-Length` with `Transfer-Encoding`, a
/// `Transfer-Encoding` that is not exactly one `chunked`, or
/// `Content-Length` lines that differ. hyper reads such responses one way
/// (the first two as chunked or to EOF); Switchyard answers 502 and closes
/// that connection.
pub fn check_response_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    // Most responses carry one Content-Length line and no
    // Transfer-Encoding: one pass over the head says so without a
    // look-up by name (bench/count: ~400 instructions per response).
    let (mut te, mut lengths, mut list) = (false, 0, false);
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            te = true;
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            list |= value.as_bytes().contains(&b',');
        }
    }
    if !te && lengths <= 1 && !list {
        return Ok(());
    }
    if te {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err("Content-Length and Transfer-Encoding together");
        }
        let mut t = tokens(headers, &header::TRANSFER_ENCODING);
        if !(t.next().is_some_and(|c| c.eq_ignore_ascii_case("chunked")) && t.next().is_none()) {
            return Err("a Transfer-Encoding other than one chunked");
        }
        return Ok(());
    }
    let mut lengths = tokens(headers, &header::CONTENT_LENGTH);
    if let Some(first) = lengths.next()
        && lengths.any(|l| l != first)
    {
        return Err("differing Content-Length values");
    }
    Ok(())
}
