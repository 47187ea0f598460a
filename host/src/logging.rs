//! Logging that the traffic cannot turn against the process.
//!
//! - [`warn_limited!`](crate::warn_limited): a `warn!` that one call site
//!   may emit at most [`PER_SECOND`] times a second. Past that its lines
//!   are counted, and the next line it is allowed says how many were
//!   suppressed (as the kernel's `printk_ratelimit` does). Every warning a
//!   client or a backend can cause once per request, connection or
//!   datagram goes through it.
//! - [`guest_line`]: a policy's log line capped at [`GUEST_LINE_MAX`]
//!   bytes, with control characters escaped, so that a guest cannot forge
//!   log lines with a newline or flood the log with one huge line.
//! - The binary writes through `tracing-appender`'s non-blocking writer: a
//!   serving thread hands its line to a bounded queue and goes on; a
//!   dedicated thread writes it. When the queue is full, lines are
//!   dropped rather than stalling the proxy on a slow stderr.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines one call site may log in one second.
pub const PER_SECOND: u64 = 10;

/// The most bytes of one guest log line.
pub const GUEST_LINE_MAX: usize = 4096;

fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// The budget of one call site: the second it counts (high 32 bits) and
/// the lines it let through in it (low 32), in one word, so that one
/// compare-and-swap moves both and the window never goes back.
pub struct RateLimit {
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    pub const fn new() -> Self {
        RateLimit {
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged, `n` being how many were
    /// suppressed since the last one that was; `None` to suppress it.
    pub fn admit(&self) -> Option<u64> {
        let now = now_secs() & 0xffff_ffff;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            let (window, count) = (state >> 32, state & 0xffff_ffff);
            let (next, first) = if now > window {
                ((now << 32) | 1, true)
            } else if count < PER_SECOND {
                (state + 1, false)
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.state.compare_exchange_weak(
                state,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) if first => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Ok(_) => return Some(0),
                Err(seen) => state = seen,
            }
        }
    }
}

/// `tracing::warn!`, at most [`PER_SECOND`] lines a second from this call
/// site; see the module's documentation.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::new();
        if let Some(suppressed) = LIMIT.admit() {
            if suppressed > 0 {
                ::tracing::warn!(suppressed, "{suppressed} lines like the next were suppressed");
            }
            ::tracing::warn!($($arg)+);
        }
    }};
}

/// A guest's log line as it may be written: at most [`GUEST_LINE_MAX`]
/// bytes (cut on a character boundary, the cut said), with every control
/// character but tab written as an escape (`\n`, `\u{1b}`).
pub fn guest_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(GUEST_LINE_MAX) + 16);
    for (i, c) in message.char_indices() {
        if out.len() >= GUEST_LINE_MAX {
            out.push_str(&format!(" [{} more bytes cut]", message.len() - i));
            break;
        }
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_logs_at_most_its_budget_a_second() {
        let limit = RateLimit::new();
        let admitted = (0..1000).filter(|_| limit.admit().is_some()).count() as u64;
        // The run may cross one second boundary: at most two windows.
        assert!(admitted <= 2 * PER_SECOND, "{admitted}");
        assert!(admitted >= PER_SECOND.min(1000));
    }

    #[test]
    fn threads_racing_at_one_site_share_one_budget() {
        let limit = std::sync::Arc::new(RateLimit::new());
        let admitted: u64 = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || {
                    (0..10_000).filter(|_| limit.admit().is_some()).count() as u64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert!(
            (PER_SECOND..=2 * PER_SECOND).contains(&admitted),
            "{admitted}"
        );
    }

    #[test]
    fn guest_lines_are_capped_and_escaped() {
        assert_eq!(
            guest_line("a\nfake: line\r\x1b[31m"),
            "a\\nfake: line\\r\\u{1b}[31m"
        );
        assert_eq!(guest_line("tab\tok"), "tab\tok");
        let long = "é".repeat(GUEST_LINE_MAX);
        let line = guest_line(&long);
        assert!(line.len() < GUEST_LINE_MAX + 40, "{}", line.len());
        assert!(line.ends_with("more bytes cut]"), "{line}");
    }
}
