//! The access log (issue 24): each field read back from the file, at L7
//! and at L4, in every format (`json`, `text`, `combined`). `bytes_in` is
//! client → proxy and `bytes_out` proxy → client at both layers (body
//! bytes at L7); the line is written when the response body has ended.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use switchyard_tests::tls::TestCa;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The lines of `log` once there are `n`, within 5 s.
async fn lines(log: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<String> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} lines: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `2026-12-03T05:34:31.123Z`.
fn is_rfc3339_ms(ts: &str) -> bool {
    let b = ts.as_bytes();
    ts.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

fn config(format: &str, log: &Path, dir: &Path) -> String {
    format!(
        r#"
[pools.web]
backends = ["{{web}}"]
[listeners.h]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
access_log = "{format}"
[listeners.t]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "web"
access_log = "{format}"
[listeners.s]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
access_log = "{format}"
[listeners.s.tls]
certs = [{{ cert = "{cert}", key = "{key}" }}]
[runtime]
access_log_file = "{log}"
"#,
        log = log.display(),
        cert = dir.join("a.pem").display(),
        key = dir.join("a.key").display(),
    )
}

/// One HTTP/1.1 request as raw bytes over a TCP listener; the whole
/// answer (the backend closes after it).
async fn raw_exchange(at: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer
}

#[tokio::test]
async fn every_field_reads_back_at_l7_and_l4_in_every_format() {
    let web = TestBackend::start("web").await;
    let ca = TestCa::new("access-log-ca");
    let leaf = ca.leaf(&["a.test"]);
    for format in ["json", "text", "combined"] {
        let dir = temp_dir("access-log");
        std::fs::write(dir.join("a.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("a.key"), &leaf.key_pem).unwrap();
        let log = dir.join("access.log");
        let sy = start_switchyard(
            &config(format, &log, &dir),
            &BTreeMap::from([("web", web.addr)]),
        )
        .await;

        // L7: an 11-byte upload echoed back (11 bytes out), with a query,
        // a user agent and a referer.
        let req = http::Request::post(format!("http://{}/echo?x=1&y=2", sy.addr("h")))
            .header("user-agent", "probe/1 \"quoted\"")
            .header("referer", "http://r.test/")
            .body(
                Full::new(Bytes::from_static(b"hello world"))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap();
        let got = send(&client(false), req).await;
        assert_eq!(got.text(), "hello world");
        let seen = web.seen().last().unwrap().headers.clone();
        let l7 = lines(&log, 1).await.remove(0);

        // L4: a raw request through the TCP listener; in and out are the
        // bytes each way.
        let request = b"GET /bytes/100 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let answer = raw_exchange(sy.addr("t"), request).await;
        let l4 = lines(&log, 2).await.remove(1);

        // TLS: the version and SNI of the connection.
        let reply = tls::https_get(
            sy.addr("s"),
            ca.client(&["http/1.1"]),
            "a.test",
            "a.test",
            "/",
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        let s = lines(&log, 3).await.remove(2);

        match format {
            "json" => {
                let v: serde_json::Value = serde_json::from_str(&l7).unwrap();
                assert!(is_rfc3339_ms(v["ts"].as_str().unwrap()), "{l7}");
                assert_eq!(v["listener"], "h");
                assert_eq!(v["kind"], "http");
                assert_eq!(v["method"], "POST");
                assert_eq!(v["path"], "/echo");
                assert_eq!(v["query"], "x=1&y=2");
                assert_eq!(v["protocol"], "HTTP/1.1");
                assert_eq!(v["status"], 200);
                assert_eq!(v["bytes_in"], 11);
                assert_eq!(v["bytes_out"], 11);
                assert_eq!(v["user_agent"], "probe/1 \"quoted\"");
                assert_eq!(v["referer"], "http://r.test/");
                assert_eq!(v["backend"], web.addr.to_string());
                assert!(v["tls_version"].is_null());
                // The request id and trace the backend got, logged.
                let id = v["request_id"].as_str().unwrap();
                assert_eq!(id.len(), 32, "{l7}");
                assert_eq!(seen["x-request-id"], id);
                let trace = v["trace_id"].as_str().unwrap();
                assert_eq!(trace.len(), 32, "{l7}");
                let parent = seen["traceparent"].to_str().unwrap();
                assert_eq!(&parent[3..35], trace, "{parent}");
                let v: serde_json::Value = serde_json::from_str(&l4).unwrap();
                assert_eq!(v["kind"], "tcp");
                assert_eq!(v["bytes_in"], request.len());
                assert_eq!(v["bytes_out"], answer.len());
                assert!(is_rfc3339_ms(v["ts"].as_str().unwrap()), "{l4}");
                let v: serde_json::Value = serde_json::from_str(&s).unwrap();
                assert_eq!(v["tls_version"], "TLSv1.3");
                assert_eq!(v["sni"], "a.test");
            }
            "text" => {
                let f: Vec<&str> = l7.split(' ').collect();
                assert!(is_rfc3339_ms(f[0]), "{l7}");
                assert_eq!(f[1], "h", "{l7}");
                assert_eq!(
                    &f[3..8],
                    ["http", "POST", "/echo?x=1&y=2", "200", "pool=web"],
                    "{l7}"
                );
                assert!(l7.contains(" bytes_in=11 bytes_out=11 "), "{l7}");
                assert!(l7.contains(" tls=- sni=- request_id="), "{l7}");
                let trace = l7.rsplit("trace_id=").next().unwrap();
                assert_eq!(trace.len(), 32, "{l7}");
                assert!(l4.contains(" tcp "), "{l4}");
                assert!(
                    l4.contains(&format!(
                        " bytes_in={} bytes_out={} ",
                        request.len(),
                        answer.len()
                    )),
                    "{l4}"
                );
                assert!(s.contains(" tls=TLSv1.3 sni=a.test "), "{s}");
            }
            _ => {
                assert!(l7.starts_with("127.0.0.1 - - ["), "{l7}");
                assert!(
                    l7.ends_with(
                        r#" "POST /echo?x=1&y=2 HTTP/1.1" 200 11 "http://r.test/" "probe/1 \"quoted\"""#
                    ),
                    "{l7}"
                );
                // `[03/Dec/2026:05:34:31 +0000]`
                let time = l7.split('[').nth(1).unwrap().split(']').next().unwrap();
                assert_eq!(time.len(), 26, "{time}");
                assert!(time.ends_with(" +0000"), "{time}");
                assert!(
                    l4.ends_with(&format!(r#" "TCP" - {} "-" "-""#, answer.len())),
                    "{l4}"
                );
            }
        }
        sy.shutdown(Duration::from_secs(5)).await;
    }
}
