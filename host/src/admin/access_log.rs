//! Access log: one line per HTTP request and per TCP connection or UDP
//! flow, as text, JSON or Apache/nginx combined, written by one task from a bounded channel. The data path only
//! ever `try_send`s: when the writer falls behind, lines are dropped and
//! counted (`switchyard_access_log_dropped_total`), never waited for.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

pub use crate::config::limits::Format;

/// Lines waiting for the writer at most.
pub const CAPACITY: usize = 8192;

/// One finished request or connection. Written when it ends: an HTTP
/// request when its response body has been sent (or the client went
/// away), a connection when it closes.
#[derive(Debug, Serialize, Default)]
pub struct Entry {
    /// When it ended: RFC 3339, UTC, milliseconds (set by the writer from
    /// `at`).
    pub ts: String,
    #[serde(skip)]
    pub at: Option<SystemTime>,
    pub listener: String,
    pub client: String,
    /// `http`, `tcp` or `udp`.
    pub kind: &'static str,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0` (the combined format's request line).
    pub protocol: Option<&'static str>,
    pub status: Option<u16>,
    pub pool: Option<String>,
    pub backend: Option<String>,
    /// `forward`, `respond`, `reject`, `fallback` (policy failed), or
    /// `default` (no policy).
    pub decision: &'static str,
    /// Time to the upstream's response head (HTTP) or connect (TCP), ms.
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    /// Client → proxy: request body bytes read (HTTP), bytes (TCP/UDP).
    pub bytes_in: Option<u64>,
    /// Proxy → client: response body bytes sent (HTTP), bytes (TCP/UDP).
    pub bytes_out: Option<u64>,
    /// `TLSv1.3` or `TLSv1.2` on a TLS connection.
    pub tls_version: Option<String>,
    pub sni: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// `X-Request-Id` as the backend got it (`l7/trace.rs`).
    pub request_id: Option<String>,
    /// The W3C trace id the request went out with.
    pub trace_id: Option<String>,
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// A header value as one quoted field: `"` and `\` escaped, controls
/// and non-ASCII as `\xNN` (what nginx does), so a client cannot forge a
/// line or a field.
fn quoted(v: &Option<String>) -> String {
    let Some(v) = v else {
        return "\"-\"".to_owned();
    };
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for b in v.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out.push('"');
    out
}

impl Entry {
    fn text(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} pool={} backend={} decision={} upstream_ms={} total_ms={:.3} bytes_in={} bytes_out={} tls={} sni={} request_id={} trace_id={}",
            self.ts,
            self.listener,
            self.client,
            self.kind,
            opt(&self.method),
            self.target().as_deref().unwrap_or("-"),
            opt(&self.status),
            opt(&self.pool),
            opt(&self.backend),
            self.decision,
            self.upstream_ms
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.3}")),
            self.total_ms,
            opt(&self.bytes_in),
            opt(&self.bytes_out),
            opt(&self.tls_version),
            opt(&self.sni),
            opt(&self.request_id),
            opt(&self.trace_id),
        )
    }

    /// The path with its query, as the client sent them.
    fn target(&self) -> Option<String> {
        let path = self.path.as_ref()?;
        Some(match &self.query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        })
    }

    /// Apache/nginx combined: `client - - [time] "request" status bytes
    /// "referer" "user-agent"`; a connection's request is `"TCP"`.
    fn combined(&self, at: SystemTime) -> String {
        let host = self
            .client
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| self.client.clone(), |a| a.ip().to_string());
        let request = match (&self.method, self.target()) {
            (Some(m), Some(t)) => format!("{m} {t} {}", self.protocol.unwrap_or("HTTP/1.1")),
            _ => self.kind.to_ascii_uppercase(),
        };
        format!(
            "{host} - - [{}] {} {} {} {} {}",
            clf_time(at),
            quoted(&Some(request)),
            opt(&self.status),
            self.bytes_out.unwrap_or(0),
            quoted(&self.referer),
            quoted(&self.user_agent),
        )
    }
}

fn rfc3339(at: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(at)
        .format(&fmt)
        .unwrap_or_default()
}

fn clf_time(at: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from(at)
        .format(&fmt)
        .unwrap_or_default()
}

/// The line of `e` in `format`.
fn line(format: Format, mut e: Entry) -> String {
    let at = e.at.unwrap_or_else(SystemTime::now);
    e.ts = rfc3339(at);
    match format {
        Format::Json => serde_json::to_string(&e).unwrap_or_default(),
        Format::Combined => e.combined(at),
        _ => e.text(),
    }
}

/// Starts a thread that writes what `rx` brings to `out`, one line each
/// (formatted there by `line`, off the serving threads), in batches, until
/// every sender is gone. The access log's writer, and the capture's
/// (`l7/capture.rs`).
pub fn write_lines<T: Send + 'static>(
    name: &str,
    mut out: Box<dyn Write + Send>,
    mut rx: mpsc::Receiver<T>,
    line: impl Fn(T) -> String + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(256);
            while rx.blocking_recv_many(&mut batch, 256) > 0 {
                for item in batch.drain(..) {
                    let _ = writeln!(out, "{}", line(item));
                }
                let _ = out.flush();
            }
        })?;
    Ok(())
}

/// The sending side, cheap to clone into every listener.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<(Format, Entry)>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer: to `file` (appended) or stdout.
    pub fn start(file: Option<PathBuf>, dropped: Counter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match &file {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::channel::<(Format, Entry)>(CAPACITY);
        write_lines("access-log", out, rx, |(format, e)| line(format, e))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues the line `entry()` builds; never waits. The time is taken
    /// now. With the log off nothing is built (an L4 connection's entry
    /// is four strings).
    pub fn log(&self, format: Format, entry: impl FnOnce() -> Entry) {
        if format == Format::Off {
            return;
        }
        let mut entry = entry();
        entry.at.get_or_insert_with(SystemTime::now);
        if self.tx.try_send((format, entry)).is_err() {
            self.dropped.inc();
        }
    }
}
