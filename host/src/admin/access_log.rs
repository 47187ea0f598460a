//! Access log: one line per HTTP request and per TCP connection, as text
//! or JSON, written by one task from a bounded channel. The data path only
//! ever `try_send`s: when the writer falls behind, lines are dropped and
//! counted (`switchyard_access_log_dropped_total`), never waited for.

use std::io::Write;
use std::path::PathBuf;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

pub use crate::config::limits::Format;

/// Lines waiting for the writer at most.
pub const CAPACITY: usize = 8192;

/// One finished request or connection.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub listener: String,
    pub client: String,
    /// `http` or `tcp`.
    pub kind: &'static str,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub pool: Option<String>,
    pub backend: Option<String>,
    /// `forward`, `respond`, `reject`, `fallback` (policy failed), or
    /// `default` (no policy).
    pub decision: &'static str,
    /// Time to the upstream's response head (HTTP) or connect (TCP), ms.
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    /// HTTP: the response's declared length; TCP: bytes client→backend.
    pub bytes_in: Option<u64>,
    /// TCP: bytes backend→client.
    pub bytes_out: Option<u64>,
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

impl Entry {
    fn text(&self) -> String {
        format!(
            "{} {} {} {} {} {} pool={} backend={} decision={} upstream_ms={} total_ms={:.3} bytes_in={} bytes_out={}",
            self.listener,
            self.client,
            self.kind,
            opt(&self.method),
            opt(&self.path),
            opt(&self.status),
            opt(&self.pool),
            opt(&self.backend),
            self.decision,
            self.upstream_ms
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.3}")),
            self.total_ms,
            opt(&self.bytes_in),
            opt(&self.bytes_out),
        )
    }
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
        let mut out: Box<dyn Write + Send> = match &file {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, mut rx) = mpsc::channel::<(Format, Entry)>(CAPACITY);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(256);
                while rx.blocking_recv_many(&mut batch, 256) > 0 {
                    for (format, e) in batch.drain(..) {
                        let line = match format {
                            Format::Json => serde_json::to_string(&e).unwrap_or_default(),
                            _ => e.text(),
                        };
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues a line; never waits.
    pub fn log(&self, format: Format, entry: Entry) {
        if format == Format::Off {
            return;
        }
        if self.tx.try_send((format, entry)).is_err() {
            self.dropped.inc();
        }
    }
}
