//! The recent reloads, for the status page: every policy load (at start
//! and on change) and every configuration reload, with its outcome. The
//! newest [`KEPT`] are kept; the counters in `/metrics` keep the totals.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many reloads the status page can show.
pub const KEPT: usize = 32;
/// The longest detail kept (a refused file's reason can be long).
const MAX_DETAIL: usize = 1024;

/// One reload and how it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Reload {
    pub at_unix_ms: u64,
    /// `policy` or `config`.
    pub what: &'static str,
    /// The policy's name, or the configuration file.
    pub name: String,
    pub ok: bool,
    /// The version loaded, or why it was refused.
    pub detail: String,
}

#[derive(Default)]
pub struct Reloads(Mutex<VecDeque<Reload>>);

impl Reloads {
    /// Records one reload: `Ok(what was loaded)` or `Err(why not)`.
    pub fn record(&self, what: &'static str, name: &str, outcome: Result<String, String>) {
        let ok = outcome.is_ok();
        let mut detail = outcome.unwrap_or_else(|e| e);
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push('…');
        }
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut kept = self.0.lock().expect("reloads");
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Reload {
            at_unix_ms,
            what,
            name: name.to_owned(),
            ok,
            detail,
        });
    }

    /// The kept reloads, newest first.
    pub fn recent(&self) -> Vec<Reload> {
        self.0
            .lock()
            .expect("reloads")
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_are_kept_and_details_are_capped() {
        let r = Reloads::default();
        for i in 0..KEPT + 5 {
            r.record("policy", &format!("p{i}"), Ok("v".into()));
        }
        r.record("config", "x.toml", Err("é".repeat(MAX_DETAIL)));
        let recent = r.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].name, "x.toml");
        assert!(!recent[0].ok);
        assert!(recent[0].detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert_eq!(recent[1].name, format!("p{}", KEPT + 4));
        assert_eq!(recent[KEPT - 1].name, "p6");
    }
}
