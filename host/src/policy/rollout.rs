//! A canary: a new version of a policy that decides the requests of a
//! share of the clients, while the current version decides the rest, until
//! the host promotes it or rolls it back (`[policies.rollout.NAME]`,
//! `daemon/rollout.rs` applies the verdict).
//!
//! For each side the host counts the requests it decided, those whose
//! policy call failed (trap, timeout, invalid decision: what `on_error`
//! handles), and those a backend answered with a 5xx (or failed on). The
//! counting is three relaxed atomics on a request of a listener whose
//! policy has a canary running; a listener without one pays one branch.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Policy;
use crate::config::rollout::Rollout;

/// Below this, the current version's error rate counts as this: a canary
/// with 1 error against a current version with none is not "infinitely
/// worse".
pub const RATE_FLOOR: f64 = 0.01;

/// What one side decided.
#[derive(Default, Debug)]
struct Side {
    requests: AtomicU64,
    policy_errors: AtomicU64,
    server_errors: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub policy_errors: u64,
    pub server_errors: u64,
}

impl Side {
    fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Relaxed),
            policy_errors: self.policy_errors.load(Relaxed),
            server_errors: self.server_errors.load(Relaxed),
        }
    }
}

/// How a canary ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// It serves everything from now on.
    Promote(String),
    /// The current version serves everything; the canary's bytes are
    /// refused.
    Rollback(String),
}

/// One canary run: the current version, the new one, and their counts.
pub struct Canary {
    pub live: Arc<Policy>,
    pub canary: Arc<Policy>,
    pub settings: Rollout,
    started: Instant,
    started_unix: u64,
    sides: [Side; 2],
    /// Set by the admin API (`promote`, `rollback`).
    forced: Mutex<Option<Verdict>>,
    /// The daemon's judge, woken when a verdict may be due.
    wake: Arc<tokio::sync::Notify>,
    /// In shadow mode (`shadow = true`): the new version decides no
    /// request, only runs after the serving one; it ends by hand.
    pub shadow: Option<Arc<super::shadow::ShadowDiffs>>,
}

/// Which side a request is on.
pub const LIVE: usize = 0;
pub const CANARY: usize = 1;

impl Canary {
    pub fn new(
        live: Arc<Policy>,
        canary: Arc<Policy>,
        settings: Rollout,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        let shadow = settings
            .shadow
            .then(|| Arc::new(super::shadow::ShadowDiffs::new(settings.redact.clone())));
        Canary {
            live,
            canary,
            settings,
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sides: Default::default(),
            forced: Mutex::new(None),
            wake,
            shadow,
        }
    }

    /// Whether a client's requests go to the canary, by `client_hash`, the
    /// stable hash of its address (`balance::stable_hash_ip`), so one
    /// client sees one version throughout.
    pub fn picks(&self, client_hash: u64) -> bool {
        self.shadow.is_none() && client_hash % 100 < u64::from(self.settings.canary_percent)
    }

    /// Counts one request `side` decided.
    pub fn record(&self, side: usize, policy_failed: bool, server_error: bool) {
        let s = &self.sides[side];
        s.requests.fetch_add(1, Relaxed);
        if policy_failed {
            s.policy_errors.fetch_add(1, Relaxed);
        }
        if server_error {
            s.server_errors.fetch_add(1, Relaxed);
        }
        if side == CANARY && self.verdict().is_some() {
            self.wake.notify_one();
        }
    }

    pub fn counts(&self, side: usize) -> Counts {
        self.sides[side].counts()
    }

    /// A verdict from the admin API, applied at once.
    pub fn force(&self, v: Verdict) {
        *self.forced.lock().expect("forced verdict") = Some(v);
        self.wake.notify_one();
    }

    /// The verdict now, if there is one (`None`: keep counting).
    pub fn verdict(&self) -> Option<Verdict> {
        if let Some(v) = self.forced.lock().expect("forced verdict").clone() {
            return Some(v);
        }
        if self.shadow.is_some() {
            return None;
        }
        judge(
            self.counts(LIVE),
            self.counts(CANARY),
            &self.settings,
            self.started.elapsed(),
            short(&self.live.version),
        )
    }

    /// When the run ends without enough requests.
    pub fn deadline(&self) -> Instant {
        self.started + self.settings.max_duration
    }

    /// For `GET /api/policies` and the status page.
    pub fn json(&self) -> Value {
        let side = |c: Counts| {
            json!({
                "requests": c.requests,
                "policy_errors": c.policy_errors,
                "server_errors": c.server_errors,
            })
        };
        json!({
            "mode": if self.shadow.is_some() { "shadow" } else { "canary" },
            "shadow": self.shadow.as_ref().map(|s| s.json()),
            "version": self.canary.version,
            "live_version": self.live.version,
            "percent": self.settings.canary_percent,
            "min_requests": self.settings.min_requests,
            "started_unix": self.started_unix,
            "remaining_s": self.deadline().saturating_duration_since(Instant::now()).as_secs(),
            "canary": side(self.counts(CANARY)),
            "live": side(self.counts(LIVE)),
        })
    }
}

/// The verdict on a canary's counts against the current version's after
/// `elapsed`: rolled back when one of its error rates passes the bound
/// with at least `min_errors` errors, or when `max_duration` ends first;
/// promoted at `min_requests` with both rates within the bound.
fn judge(
    live: Counts,
    canary: Counts,
    s: &Rollout,
    elapsed: std::time::Duration,
    live_version: &str,
) -> Option<Verdict> {
    let mut worse = None;
    for (kind, c, l) in [
        ("policy errors", canary.policy_errors, live.policy_errors),
        ("upstream 5xx", canary.server_errors, live.server_errors),
    ] {
        let rate = ratio(c, canary.requests);
        let bound = s.max_error_ratio * ratio(l, live.requests).max(RATE_FLOOR);
        if rate > bound {
            let why = format!(
                "{kind}: {c} of {} requests ({:.1}%) against {l} of {} ({:.1}%) for \
                 version {live_version}; the bound is {:.1}%",
                canary.requests,
                rate * 100.0,
                live.requests,
                ratio(l, live.requests) * 100.0,
                bound * 100.0
            );
            if c >= s.min_errors {
                return Some(Verdict::Rollback(why));
            }
            worse.get_or_insert(why);
        }
    }
    if canary.requests >= s.min_requests && worse.is_none() {
        return Some(Verdict::Promote(format!(
            "{} requests; policy errors {} and upstream 5xx {}, within {}x version {live_version}",
            canary.requests, canary.policy_errors, canary.server_errors, s.max_error_ratio,
        )));
    }
    if elapsed >= s.max_duration {
        return Some(Verdict::Rollback(format!(
            "{} of min_requests = {} requests in max_duration_s = {}{}",
            canary.requests,
            s.min_requests,
            s.max_duration.as_secs(),
            worse.map(|w| format!(" ({w})")).unwrap_or_default()
        )));
    }
    None
}

fn ratio(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// A version as logs show it: its first 12 hex digits.
pub fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> Rollout {
        Rollout {
            canary_percent: 20,
            min_requests: 100,
            max_duration: Duration::from_secs(60),
            max_error_ratio: 2.0,
            min_errors: 5,
            shadow: false,
            redact: Vec::new(),
        }
    }

    fn counts(requests: u64, policy_errors: u64, server_errors: u64) -> Counts {
        Counts {
            requests,
            policy_errors,
            server_errors,
        }
    }

    fn verdict(live: Counts, canary: Counts, elapsed_s: u64) -> Option<Verdict> {
        judge(
            live,
            canary,
            &settings(),
            Duration::from_secs(elapsed_s),
            "v1",
        )
    }

    #[test]
    fn a_canary_is_judged_on_both_rates_with_a_floor() {
        let clean = counts(400, 0, 0);
        // Still counting.
        assert_eq!(verdict(clean, counts(50, 0, 0), 1), None);
        // 4 errors in 20 is 20%, over the 2% bound, but under min_errors.
        assert_eq!(verdict(clean, counts(20, 4, 0), 1), None);
        let Some(Verdict::Rollback(why)) = verdict(clean, counts(25, 5, 0), 1) else {
            panic!("5 policy errors in 25 roll back");
        };
        assert!(why.starts_with("policy errors: 5 of 25"), "{why}");
        let Some(Verdict::Rollback(why)) = verdict(clean, counts(30, 0, 6), 1) else {
            panic!("upstream 5xx roll back too");
        };
        assert!(why.starts_with("upstream 5xx"), "{why}");
        // 1 error in 100 is within the floor: promoted at min_requests.
        assert!(matches!(
            verdict(clean, counts(100, 1, 0), 1),
            Some(Verdict::Promote(_))
        ));
        // The bound follows the current version's rate: 10% there allows 20%.
        let noisy = counts(400, 40, 0);
        assert!(matches!(
            verdict(noisy, counts(100, 15, 0), 1),
            Some(Verdict::Promote(_))
        ));
        assert!(matches!(
            verdict(noisy, counts(100, 25, 0), 1),
            Some(Verdict::Rollback(_))
        ));
        // Out of time without enough requests.
        let Some(Verdict::Rollback(why)) = verdict(clean, counts(50, 0, 0), 60) else {
            panic!("max_duration ends it");
        };
        assert!(why.starts_with("50 of min_requests = 100"), "{why}");
        // At min_requests but over the bound (under min_errors): not promoted.
        assert_eq!(verdict(clean, counts(100, 3, 0), 1), None);
    }
}
