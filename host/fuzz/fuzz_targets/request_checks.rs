//! Request validation and path normalization on arbitrary bytes.
//!
//! The bytes are read as an HTTP/1.1 head by httparse (hyper's parser);
//! what it accepts goes through `check_request`, and its path through
//! `normalize` with each escaped-slash action. Properties:
//! - nothing panics;
//! - normalizing twice equals normalizing once;
//! - no normalized path has a `.` or `..` segment, or an empty one
//!   before its end.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};
use libfuzzer_sys::fuzz_target;
use switchyard::l7::framing::check_request;
use switchyard::l7::path::{EscapedSlashes, normalize};

fn check_path(path: &str) {
    for action in [
        EscapedSlashes::Reject,
        EscapedSlashes::Keep,
        EscapedSlashes::Unescape,
    ] {
        let Ok(once) = normalize(path, action) else {
            continue;
        };
        if !once.starts_with('/') {
            assert_eq!(&*once, path, "only rooted paths change");
            continue;
        }
        let twice = normalize(&once, action).expect("a normalized path is accepted again");
        assert_eq!(twice, once, "normalizing is idempotent");
        let segments: Vec<&str> = once[1..].split('/').collect();
        for (i, s) in segments.iter().enumerate() {
            assert!(*s != "." && *s != "..", "dot segment in {once:?}");
            assert!(
                !s.is_empty() || i + 1 == segments.len(),
                "empty segment in {once:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Any text is a path candidate, parsed or not.
    if let Ok(text) = std::str::from_utf8(data) {
        check_path(text.split(['?', ' ', '\r', '\n']).next().unwrap_or(""));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let Some(Ok(uri)) = req.path.map(|p| p.parse::<Uri>()) else {
        return;
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let _ = check_request(version, &uri, &map, 8192);
    check_path(uri.path());
});
