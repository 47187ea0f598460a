//! What issue 17's checks cost per request: `check_request` (Host,
//! transfer codings, target length) and path normalization, on the
//! request `wrk` sends (`GET /`, Host only) and on a browser-like one
//! (a longer path, a query and nine headers), plus a path that needs
//! the slow path (dot segments and an escape).
//!
//! `cargo bench -p switchyard --bench request_checks` gives criterion's
//! time per call. `SY_ITERS=N target/release/deps/request_checks-*`
//! instead runs each case N times in a plain loop and exits, for
//! `valgrind --tool=callgrind` to count instructions (run it with N and
//! with 0; the difference over N is instructions per call).

use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};
use switchyard::l7::framing::check_request;
use switchyard::l7::path::{EscapedSlashes, normalize};

fn head(target: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    (target.parse().unwrap(), map)
}

fn cases() -> Vec<(&'static str, Uri, HeaderMap)> {
    let browser = [
        ("host", "shop.example.test"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("referer", "https://shop.example.test/"),
        ("sec-fetch-mode", "navigate"),
        ("connection", "keep-alive"),
    ];
    let (u1, h1) = head("/", &[("host", "127.0.0.1:9200")]);
    let (u2, h2) = head("/api/v1/catalog/items/12345?sort=price&page=2", &browser);
    let (u3, h3) = head("/static/../api/%7Euser/./x", &[("host", "a.test")]);
    vec![("wrk", u1, h1), ("browser", u2, h2), ("slow path", u3, h3)]
}

fn checks(uri: &Uri, headers: &HeaderMap) {
    let _ = black_box(check_request(
        Version::HTTP_11,
        black_box(uri),
        black_box(headers),
        8192,
    ));
    let _ = black_box(normalize(black_box(uri.path()), EscapedSlashes::Reject));
}

fn bench(c: &mut Criterion) {
    for (name, uri, headers) in cases() {
        c.bench_function(&format!("check_request + normalize, {name}"), |b| {
            b.iter(|| checks(&uri, &headers))
        });
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("SY_ITERS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        let which = std::env::var("SY_CASE").unwrap_or_else(|_| "wrk".into());
        let cases = cases();
        let (_, uri, headers) = cases
            .iter()
            .find(|(name, ..)| *name == which)
            .expect("SY_CASE is wrk, browser or slow path");
        for _ in 0..n {
            checks(uri, headers);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
