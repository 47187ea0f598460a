//! TLS termination on HTTP listeners, over real loopback sockets, with
//! certificates made in the test: SNI certificate choice (exact, wildcard,
//! default), ALPN to HTTP/2, the 421 guard, certificate reload from disk,
//! client certificates, and TLS from a pool to its backends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_tests::tls::{
    HttpsReply, Leaf, TestCa, https_backend, https_backend_mtls, https_get,
};
use switchyard_tests::*;

/// Writes `leaf` as `NAME.pem` / `NAME.key` into `dir`.
fn write_pair(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/wasm")
}

/// A listener `web` on TLS with certificates `a` (a.test), `w` (*.w.test)
/// and a separate default (default.test), policy `misbehave` (whose
/// `/conn` answers with what it sees of the connection), pool `web`.
fn https_config(extra_tls: &str) -> String {
    format!(
        r#"
[policies]
dir = "{policies}"
[pools.web]
backends = ["{{web}}"]
[listeners.web]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
[listeners.web.tls]
certs = [{{ cert = "a.pem", key = "a.key" }}, {{ cert = "w.pem", key = "w.key" }}]
default = {{ cert = "default.pem", key = "default.key" }}
{extra_tls}
"#,
        policies = fixtures().display()
    )
}

struct Site {
    ca: TestCa,
    leaves: BTreeMap<&'static str, Leaf>,
    dir: PathBuf,
    _web: TestBackend,
    sy: switchyard::daemon::Running,
}

impl Site {
    async fn start(tag: &str, extra_tls: &str) -> Site {
        let ca = TestCa::new("switchyard test CA");
        let dir = temp_dir(tag);
        let mut leaves = BTreeMap::new();
        for (file, names) in [
            ("a", &["a.test"][..]),
            ("w", &["*.w.test"][..]),
            ("default", &["default.test"][..]),
        ] {
            let leaf = ca.leaf(names);
            write_pair(&dir, file, &leaf);
            leaves.insert(file, leaf);
        }
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let web = TestBackend::start("web").await;
        let sy = start_watching(
            &dir,
            &https_config(extra_tls),
            &BTreeMap::from([("web", web.addr)]),
        )
        .await;
        Site {
            ca,
            leaves,
            dir,
            _web: web,
            sy,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sy.addr("web")
    }

    async fn get(&self, sni: &str, host: &str, path: &str) -> Result<HttpsReply, String> {
        https_get(self.addr(), self.ca.client(&["http/1.1"]), sni, host, path).await
    }
}

#[tokio::test]
async fn each_name_gets_its_own_certificate_and_wildcards_match_one_label() {
    let site = Site::start("tls-names", "").await;
    let a = site.get("a.test", "a.test", "/").await.unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "web"));
    assert_eq!(a.cert, site.leaves["a"].cert);
    let w = site.get("x.w.test", "x.w.test", "/").await.unwrap();
    assert_eq!(w.status, 200);
    assert_eq!(w.cert, site.leaves["w"].cert);
    // An unknown name gets the default certificate (and so fails the
    // client's verification for that name).
    let unknown = site.get("nope.test", "nope.test", "/").await;
    assert!(unknown.is_err(), "{unknown:?}");
    // The policy sees the TLS facts and the scheme.
    let conn = site.get("a.test", "a.test", "/conn").await.unwrap();
    assert_eq!(
        conn.body,
        "scheme=https sni=a.test alpn=http/1.1 version=TLSv1.3 subject=-"
    );
}

#[tokio::test]
async fn a_client_without_sni_gets_the_default_certificate() {
    let site = Site::start("tls-default", "").await;
    let mut config = (*site.ca.client(&[])).clone();
    config.enable_sni = false;
    let reply = https_get(
        site.addr(),
        Arc::new(config),
        "default.test",
        "default.test",
        "/conn",
    )
    .await
    .unwrap();
    assert_eq!(reply.cert, site.leaves["default"].cert);
    assert!(reply.body.contains("sni=-"), "{}", reply.body);
}

#[tokio::test]
async fn unknown_sni_reject_refuses_unknown_names_and_serves_known_ones() {
    let site = Site::start("tls-reject", "unknown_sni = \"reject\"").await;
    assert!(site.get("a.test", "a.test", "/").await.is_ok());
    let err = site.get("nope.test", "nope.test", "/").await.unwrap_err();
    assert!(err.starts_with("handshake"), "{err}");
}

#[tokio::test]
async fn alpn_h2_gives_http2_end_to_end_over_tls() {
    let site = Site::start("tls-h2", "").await;
    let reply = https_get(
        site.addr(),
        site.ca.client(&["h2", "http/1.1"]),
        "a.test",
        "a.test",
        "/conn",
    )
    .await
    .unwrap();
    assert_eq!(reply.alpn.as_deref(), Some("h2"));
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert!(reply.body.contains("alpn=h2"), "{}", reply.body);
}

#[tokio::test]
async fn a_host_other_than_the_sni_is_421_unless_the_listener_opts_out() {
    let site = Site::start("tls-421", "").await;
    let fronted = site.get("a.test", "b.test", "/").await.unwrap();
    assert_eq!(fronted.status, 421);
    let with_port = site.get("a.test", "A.test:443", "/").await.unwrap();
    assert_eq!(with_port.status, 200);
    let open = Site::start("tls-421-off", "check_host = false").await;
    let fronted = open.get("a.test", "b.test", "/").await.unwrap();
    assert_eq!(fronted.status, 200);
}

/// Waits until a handshake for `name` presents `want`.
async fn until_served(site: &Site, name: &str, want: &Leaf) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(r) = site.get(name, name, "/").await
            && r.cert == want.cert
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate for {name} was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let site = Site::start("tls-reload", "").await;
    let renewed = site.ca.leaf(&["a.test"]);
    // Key first, then certificate, as a renewal tool might: the half-way
    // state (new key, old certificate) is refused and the old pair serves.
    replace_file(&site.dir.join("a.key"), renewed.key_pem.as_bytes());
    replace_file(&site.dir.join("a.pem"), renewed.cert_pem.as_bytes());
    until_served(&site, "a.test", &renewed).await;
    // A corrupt replacement: refused, the renewed pair keeps serving.
    let refused = site.sy.certs_refused();
    replace_file(
        &site.dir.join("a.pem"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    wait_until(
        "the corrupt certificate refused",
        Duration::from_secs(5),
        || site.sy.certs_refused() > refused,
    )
    .await;
    for _ in 0..3 {
        let r = site.get("a.test", "a.test", "/").await.unwrap();
        assert_eq!(r.cert, renewed.cert);
    }
    // And a good file after the broken one is taken again.
    let again = site.ca.leaf(&["a.test"]);
    replace_file(&site.dir.join("a.key"), again.key_pem.as_bytes());
    replace_file(&site.dir.join("a.pem"), again.cert_pem.as_bytes());
    until_served(&site, "a.test", &again).await;
}

#[tokio::test]
async fn a_required_client_certificate_is_checked_and_its_subject_reaches_the_policy() {
    let site = Site::start("tls-mtls", "client_ca = \"ca.pem\"").await;
    // Without a certificate: refused.
    let none = site.get("a.test", "a.test", "/").await;
    assert!(none.is_err(), "{none:?}");
    // With one from another CA: refused.
    let stranger = TestCa::new("someone else").leaf(&["client.test"]);
    let wrong = https_get(
        site.addr(),
        site.ca.client_with_cert(&[], &stranger),
        "a.test",
        "a.test",
        "/",
    )
    .await;
    assert!(wrong.is_err(), "{wrong:?}");
    // With one the CA signed: served, and the policy sees who.
    let client = site.ca.leaf(&["client.test"]);
    let ok = https_get(
        site.addr(),
        site.ca.client_with_cert(&[], &client),
        "a.test",
        "a.test",
        "/conn",
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    assert!(ok.body.ends_with("subject=CN=client.test"), "{}", ok.body);
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_absent() {
    let site = Site::start(
        "tls-mtls-optional",
        "client_ca = \"ca.pem\"\nclient_auth = \"optional\"",
    )
    .await;
    let none = site.get("a.test", "a.test", "/conn").await.unwrap();
    assert!(none.body.ends_with("subject=-"), "{}", none.body);
}

#[tokio::test]
async fn a_pool_with_tls_verifies_its_backends_against_the_ca() {
    let ca = TestCa::new("backend CA");
    let dir = temp_dir("tls-upstream");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let other = TestCa::new("not the backend's CA");
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
    let b = https_backend("secure", &ca.leaf(&["backend.test"])).await;
    let config = r#"
[pools.good]
backends = ["{b}"]
tls = true
ca = "ca.pem"
server_name = "backend.test"
[pools.h2]
backends = ["{b}"]
tls = true
http2 = true
ca = "ca.pem"
server_name = "backend.test"
[pools.wrong_ca]
backends = ["{b}"]
tls = true
ca = "other-ca.pem"
server_name = "backend.test"
[pools.wrong_name]
backends = ["{b}"]
tls = true
ca = "ca.pem"
server_name = "elsewhere.test"
[listeners.good]
protocol = "http"
bind = "127.0.0.1:0"
pool = "good"
[listeners.h2]
protocol = "http"
bind = "127.0.0.1:0"
pool = "h2"
[listeners.wrong_ca]
protocol = "http"
bind = "127.0.0.1:0"
pool = "wrong_ca"
[listeners.wrong_name]
protocol = "http"
bind = "127.0.0.1:0"
pool = "wrong_name"
"#;
    let sy = start_watching(&dir, config, &BTreeMap::from([("b", b)])).await;
    let c = client(false);
    for (listener, status) in [
        ("good", 200),
        ("h2", 200),
        ("wrong_ca", 502),
        ("wrong_name", 502),
    ] {
        let got = get(&c, sy.addr(listener), "/", &[]).await;
        assert_eq!(got.status.as_u16(), status, "{listener}: {}", got.text());
        if status == 200 {
            assert_eq!(got.text(), "secure");
        }
    }
}

#[tokio::test]
async fn a_pool_presents_its_client_certificate_to_a_backend_that_requires_one() {
    let ca = TestCa::new("backend and client CA");
    let dir = temp_dir("tls-upstream-mtls");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    write_pair(&dir, "proxy", &ca.leaf(&["proxy.test"]));
    let b = https_backend_mtls("mutual", &ca.leaf(&["backend.test"]), &ca).await;
    let config = r#"
[pools.with_cert]
backends = ["{b}"]
tls = true
ca = "ca.pem"
server_name = "backend.test"
client_cert = "proxy.pem"
client_key = "proxy.key"
[pools.without]
backends = ["{b}"]
tls = true
ca = "ca.pem"
server_name = "backend.test"
[listeners.with_cert]
protocol = "http"
bind = "127.0.0.1:0"
pool = "with_cert"
[listeners.without]
protocol = "http"
bind = "127.0.0.1:0"
pool = "without"
"#;
    let sy = start_watching(&dir, config, &BTreeMap::from([("b", b)])).await;
    let c = client(false);
    let got = get(&c, sy.addr("with_cert"), "/", &[]).await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "mutual"));
    let got = get(&c, sy.addr("without"), "/", &[]).await;
    assert_eq!(got.status.as_u16(), 502, "{}", got.text());
}

#[tokio::test]
async fn a_broken_certificate_at_start_names_the_key_and_file() {
    let dir = temp_dir("tls-broken");
    std::fs::write(dir.join("a.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("a.key"), "not a key").unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(
        &path,
        r#"
[pools.web]
backends = ["127.0.0.1:9"]
[listeners.web]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
[listeners.web.tls]
certs = [{ cert = "a.pem", key = "a.key" }]
"#,
    )
    .unwrap();
    let config = switchyard::config::Config::load(&path).unwrap();
    let err = switchyard::daemon::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("listeners.web.tls.certs[0].cert"), "{err}");
    assert!(err.contains("a.pem"), "{err}");
}
