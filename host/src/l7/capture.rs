//! `capture = { file, sample, redact }` on an HTTP listener: a sampled
//! share of request heads, as the policy would see them, written as JSON
//! lines in the case format of `switchyard policy test --cases` (without
//! `expect`, with `at_unix_ms`), for `switchyard policy replay`.
//!
//! The request path only draws a random number and, for a sampled
//! request, formats one line and `try_send`s it: a writer thread appends
//! to the file, and when it falls behind lines are dropped and counted,
//! never waited for. The file is created with mode 0600: a head can hold
//! what `redact` does not name.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, Request};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::rollout::Capture;

/// Lines waiting for the writer at most.
pub const CAPACITY: usize = 1024;
/// A head whose line would be longer is not captured: the queue holds at
/// most 32 MiB.
pub const MAX_LINE: usize = 32 << 10;

pub struct CaptureWriter {
    pub settings: Capture,
    tx: mpsc::Sender<String>,
    /// Sampled heads not written: the writer behind, or over [`MAX_LINE`].
    pub dropped: AtomicU64,
}

impl CaptureWriter {
    /// Opens (appends to) the file and starts its writer thread.
    pub fn start(settings: &Capture) -> std::io::Result<Arc<CaptureWriter>> {
        use std::os::unix::fs::OpenOptionsExt;
        let out = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&settings.file)?,
        );
        let (tx, rx) = mpsc::channel::<String>(CAPACITY);
        crate::admin::access_log::write_lines("capture", Box::new(out), rx, |line| line)?;
        Ok(Arc::new(CaptureWriter {
            settings: settings.clone(),
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Writes `req` (from `client`) when the sample draws it.
    pub fn maybe<B>(&self, req: &Request<B>, client: IpAddr) {
        if fastrand::f64() >= self.settings.sample {
            return;
        }
        let line = case_line(req, client, &self.settings.redact, SystemTime::now());
        if line.len() > MAX_LINE || self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// One case line: the request's method, path and query, headers (the
/// `redact` ones' values hidden; a `host` from the URI's authority when
/// HTTP/2 sent no header), the client, and when.
pub fn case_line<B>(
    req: &Request<B>,
    client: IpAddr,
    redact: &[HeaderName],
    at: SystemTime,
) -> String {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut headers: Vec<[String; 2]> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = if redact.contains(n) {
                "[redacted]".to_owned()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            [n.as_str().to_owned(), value]
        })
        .collect();
    if !req.headers().contains_key(http::header::HOST)
        && let Some(a) = req.uri().authority()
    {
        headers.insert(0, ["host".to_owned(), a.as_str().to_owned()]);
    }
    json!({
        "name": format!("captured {} {path}", req.method()),
        "at_unix_ms": at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "request": {
            "method": req.method().as_str(),
            "path": path,
            "headers": headers,
            "client": client.to_string(),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_head_hides_what_redact_names() {
        let req = Request::get("http://a.test/x?q=1")
            .header("authorization", "Bearer secret")
            .header("x-seen", "yes")
            .body(())
            .unwrap();
        let redact = [HeaderName::from_static("authorization")];
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1234);
        let line = case_line(&req, "10.0.0.7".parse().unwrap(), &redact, at);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["at_unix_ms"], 1234);
        assert_eq!(v["request"]["path"], "/x?q=1");
        assert_eq!(v["request"]["client"], "10.0.0.7");
        let headers = v["request"]["headers"].to_string();
        assert!(!headers.contains("secret"), "{headers}");
        assert!(
            headers.contains(r#"["authorization","[redacted]"]"#),
            "{headers}"
        );
        assert!(headers.contains(r#"["host","a.test"]"#), "{headers}");
        assert!(headers.contains(r#"["x-seen","yes"]"#), "{headers}");
    }
}
