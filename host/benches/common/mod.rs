//! What the benches send through a policy: one request head and its
//! connection, like the proxy builds them.

use switchyard::policy::types;

pub fn request(path: &str) -> types::RequestHead {
    types::RequestHead {
        method: "GET".into(),
        scheme: "http".into(),
        authority: "example.test".into(),
        path: path.into(),
        query: Some("verbose=1".into()),
        headers: vec![
            types::Header {
                name: "user-agent".into(),
                value: "bench/1.0".into(),
            },
            types::Header {
                name: "accept".into(),
                value: "*/*".into(),
            },
        ],
        version: types::HttpVersion::Http11,
    }
}

pub fn connection() -> types::ConnectionInfo {
    types::ConnectionInfo {
        client: types::SocketAddress {
            ip: "127.0.0.1".into(),
            port: 40000,
        },
        local: types::SocketAddress {
            ip: "127.0.0.1".into(),
            port: 8080,
        },
        listener: "bench".into(),
        pool: Some("web".into()),
        transport: types::Transport::Tcp,
        tls: None,
    }
}
