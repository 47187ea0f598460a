//! Certificates made in the test (rcgen), rustls configs that trust them,
//! and a TLS backend that names itself and echoes.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The one crypto provider the tests use (the daemon's, ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in DER and PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        TestCa { issuer }
    }

    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names; `*.x` wildcards allowed)
    /// signed by this CA; the first name is also the common name.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls client that trusts only this CA and offers `alpn`.
    pub fn client(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        self.client_config(alpn, None)
    }

    /// A client that trusts this CA and presents `leaf` as its certificate.
    pub fn client_with_cert(&self, alpn: &[&str], leaf: &Leaf) -> Arc<rustls::ClientConfig> {
        self.client_config(alpn, Some(leaf))
    }

    fn client_config(&self, alpn: &[&str], cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut c = match cert {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key())
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(c)
    }
}

/// A rustls server config serving `leaf`.
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert.clone()], leaf.key())
            .expect("server cert"),
    )
}

/// A TLS backend: after the handshake it writes `name\n`, then echoes.
pub async fn echo_backend(name: &str, leaf: &Leaf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(leaf));
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = tls.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One HTTPS exchange as the client saw it.
#[derive(Debug)]
pub struct HttpsReply {
    pub status: u16,
    pub body: String,
    pub version: http::Version,
    pub alpn: Option<String>,
    /// The certificate the server presented.
    pub cert: CertificateDer<'static>,
}

/// `GET path` over a fresh TLS connection to `at`, made for `server_name`
/// (sent as SNI unless the config disables it), with `Host: host`. Speaks
/// HTTP/2 when ALPN picked it. Any failure (handshake, a refused client
/// certificate, the exchange) is an `Err` with the reason.
pub async fn https_get(
    at: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    host: &str,
    path: &str,
) -> Result<HttpsReply, String> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?;
    let io = TokioIo::new(tls);
    let empty = || http_body_util::Empty::<bytes::Bytes>::new();
    let resp = if alpn.as_deref() == Some("h2") {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let req = http::Request::get(format!("https://{host}{path}"))
            .body(empty())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(empty())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(HttpsReply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        version,
        alpn,
        cert,
    })
}

/// An HTTPS backend (HTTP/1.1 and HTTP/2 by ALPN) that answers every
/// request with `name`.
pub async fn https_backend(name: &str, leaf: &Leaf) -> SocketAddr {
    serve_https(name, (*server_config(leaf)).clone()).await
}

/// As [`https_backend`], requiring a client certificate signed by
/// `clients`.
pub async fn https_backend_mtls(name: &str, leaf: &Leaf, clients: &TestCa) -> SocketAddr {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(clients.cert()).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.cert.clone()], leaf.key())
        .expect("server cert");
    serve_https(name, config).await
}

async fn serve_https(name: &str, mut config: rustls::ServerConfig) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let name = bytes::Bytes::from(name.to_owned());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let name = name.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(name),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}
