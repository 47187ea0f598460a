//! What the benches send through a policy: one request head and its
//! connection, like the proxy builds them.

use std::sync::Arc;

use switchyard::policy::{ConnectionInfo, RequestView, types};

/// A request with `extra` more headers beyond the usual three (`host`,
/// `user-agent`, `accept`), each a realistic size.
pub fn request_with(path_and_query: &str, extra: usize) -> Box<RequestView> {
    let names: Vec<String> = (0..extra).map(|i| format!("x-header-{i}")).collect();
    let mut headers = vec![
        ("host", "example.test"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
    ];
    headers.extend(names.iter().map(|n| (n.as_str(), "some value of a header")));
    RequestView::build("GET", path_and_query, &headers).unwrap()
}

pub fn request(path: &str) -> Box<RequestView> {
    request_with(&format!("{path}?verbose=1"), 0)
}

pub fn connection() -> Arc<ConnectionInfo> {
    Arc::new(ConnectionInfo::new(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
        "bench",
        Some("web"),
        types::Transport::Tcp,
    ))
}
