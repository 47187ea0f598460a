//! Learning the server name (SNI) and ALPN of a TLS connection from its
//! ClientHello, without terminating TLS: the bytes are read into a buffer,
//! parsed by rustls's own `Acceptor`, and then forwarded to the backend
//! untouched. Bounded in bytes and time; a client that does not speak TLS
//! (or sends nothing) simply has no SNI.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most ClientHello bytes read before giving up (a hello with
/// post-quantum key shares is ~1.8 KiB; several records are allowed).
pub const MAX_HELLO: usize = 16 * 1024;

/// What a ClientHello told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The server name, lower-case.
    pub sni: Option<String>,
    /// The first protocol the client offered.
    pub alpn: Option<String>,
    /// `TLSv1.3` when the client offered a TLS 1.3 suite, else `TLSv1.2`.
    pub version: Option<String>,
}

/// What the bytes so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A complete ClientHello.
    Tls(Hello),
    /// Not a TLS handshake (or a malformed one): route without SNI.
    NotTls,
    /// A TLS handshake record whose ClientHello is not complete yet.
    Incomplete,
}

/// Parses the start of a connection. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Peeked {
    // A handshake record (22) of TLS 1.x (3.x); anything else is not TLS,
    // decided on the first byte so a plain-text client never waits.
    match bytes {
        [] => return Peeked::Incomplete,
        [first, ..] if *first != 0x16 => return Peeked::NotTls,
        [_, major, ..] if *major != 0x03 => return Peeked::NotTls,
        _ => {}
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) if bytes.len() < MAX_HELLO => Peeked::Incomplete,
        Ok(None) | Err(_) => Peeked::NotTls,
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let tls13 = hello
                .cipher_suites()
                .iter()
                .any(|s| (0x1301..=0x1305).contains(&u16::from(*s)));
            Peeked::Tls(Hello {
                sni: hello.server_name().map(str::to_ascii_lowercase),
                alpn: hello
                    .alpn()
                    .and_then(|mut protocols| protocols.next())
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                version: Some(if tls13 { "TLSv1.3" } else { "TLSv1.2" }.to_owned()),
            })
        }
    }
}

/// Reads from `client` into `buf` until the ClientHello is complete, the
/// bytes are clearly not TLS, `MAX_HELLO` is reached, the client stops
/// sending, or `timeout` passes. Everything read stays in `buf`, for the
/// caller to forward first.
pub async fn read_client_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Option<Hello> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        match parse(buf) {
            Peeked::Tls(hello) => return Some(hello),
            Peeked::NotTls => return None,
            Peeked::Incomplete => {}
        }
        let want = (MAX_HELLO - buf.len()).min(chunk.len());
        let n = match tokio::time::timeout_at(deadline, client.read(&mut chunk[..want])).await {
            Ok(Ok(n)) if n > 0 => n,
            // Closed (or half-closed), failed, or too slow: no SNI.
            _ => return None,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client.
    fn rustls_hello(name: &str, alpn: &[&str]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write");
        }
        out
    }

    #[test]
    fn a_rustls_client_hello_gives_sni_alpn_and_version() {
        let hello = rustls_hello("A.Test", &["h2", "http/1.1"]);
        assert_eq!(
            parse(&hello),
            Peeked::Tls(Hello {
                sni: Some("a.test".into()),
                alpn: Some("h2".into()),
                version: Some("TLSv1.3".into()),
            })
        );
    }

    #[test]
    fn an_openssl_client_hello_gives_sni_alpn_and_version() {
        // Captured from `openssl s_client -connect 127.0.0.1:PORT
        // -servername b.test -alpn http/1.1,h2` (OpenSSL 3.0).
        let hello = include_bytes!("testdata/openssl-client-hello.bin");
        assert_eq!(
            parse(hello),
            Peeked::Tls(Hello {
                sni: Some("b.test".into()),
                alpn: Some("http/1.1".into()),
                version: Some("TLSv1.3".into()),
            })
        );
    }

    #[test]
    fn every_prefix_of_a_hello_is_incomplete_and_then_complete() {
        let hello = rustls_hello("b.test", &[]);
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Peeked::Incomplete, "cut at {cut}");
        }
        assert!(matches!(parse(&hello), Peeked::Tls(h) if h.sni.as_deref() == Some("b.test")));
    }

    #[test]
    fn a_hello_without_sni_is_tls_without_a_name() {
        let hello = rustls_hello("127.0.0.1", &[]);
        assert!(matches!(
            parse(&hello),
            Peeked::Tls(Hello { sni: None, .. })
        ));
    }

    #[test]
    fn plain_text_is_not_tls_from_the_first_byte() {
        assert_eq!(parse(b"G"), Peeked::NotTls);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
        assert_eq!(parse(b"\x16\x01"), Peeked::NotTls);
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.6\r\n"), Peeked::NotTls);
    }

    #[test]
    fn a_corrupt_hello_is_not_tls() {
        let mut hello = rustls_hello("a.test", &[]);
        // A handshake type other than ClientHello.
        hello[5] = 2;
        assert_eq!(parse(&hello), Peeked::NotTls);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_bytes_after_a_record_header_parse_without_panicking(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)
        ) {
            let mut input = vec![0x16, 0x03, 0x01];
            input.extend(bytes);
            let _ = parse(&input);
        }
    }
}
