//! Shadow mode (`shadow = true` in `[policies.rollout.NAME]`): the new
//! version decides the same requests as the serving one, after the
//! response has been sent, and its decisions are only compared. Counted by
//! kind of difference, with a small sample of differing requests (method,
//! path, both decisions; the configured headers' values hidden).
//!
//! Its KV writes go to a scratch namespace (`NAME.shadow`) and its
//! `http-call`s are answered `not-allowed` without a byte sent
//! ([`Stubbed`]): a shadow can change nothing the serving version reads.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use http::HeaderName;
use serde_json::{Value, json};

use super::bindings::http_client::{CallError, OutgoingRequest};
use super::bindings::types::Backend;
use super::directory::{CallFuture, Directory};
use super::view::RequestView;
use super::{HttpDecision, PolicyError};

/// The kinds of difference, in the order they are told apart: another
/// pool, another backend of the same pool, an answer against a forward
/// (or a body read), other edits to the same target; or the shadow failed.
pub const KINDS: [&str; 5] = ["pool", "backend", "respond_vs_forward", "edits", "error"];
/// Differing requests kept for `GET /api/policies/NAME/diff`.
pub const SAMPLES: usize = 20;
/// Shadow calls running at once; past it a request is not shadowed (and
/// is counted as skipped), so a slow shadow cannot pile up work.
pub const MAX_IN_FLIGHT: usize = 64;

/// What a shadow run has seen.
pub struct ShadowDiffs {
    same: AtomicU64,
    kinds: [AtomicU64; KINDS.len()],
    skipped: AtomicU64,
    in_flight: AtomicUsize,
    samples: Mutex<VecDeque<Value>>,
    redact: Vec<HeaderName>,
}

/// The kind of difference between two decisions, if any; `default_pool`
/// is what a forward without a pool goes to.
pub fn kind(
    live: &HttpDecision,
    shadow: &HttpDecision,
    default_pool: Option<&str>,
) -> Option<usize> {
    use HttpDecision::{Forward, ReadBody, Respond};
    if live == shadow {
        return None;
    }
    Some(match (live, shadow) {
        (Forward(a), Forward(b)) => {
            let pool =
                |f: &super::ForwardAction| f.pool.clone().or(default_pool.map(str::to_owned));
            if pool(a) != pool(b) {
                0
            } else if a.backend != b.backend {
                1
            } else if (super::ForwardAction {
                pool: None,
                ..a.clone()
            }) == (super::ForwardAction {
                pool: None,
                ..b.clone()
            }) {
                return None;
            } else {
                3
            }
        }
        (Respond(_), Respond(_)) | (ReadBody(_), ReadBody(_)) => 3,
        _ => 2,
    })
}

/// `value` with the value of every `[name, value]` pair whose name is in
/// `redact` (header edits and answer headers) hidden.
fn redacted(value: Value, redact: &[HeaderName]) -> Value {
    match value {
        Value::Array(items) => {
            if let [Value::String(n), Value::String(_)] = items.as_slice()
                && redact.iter().any(|r| r.as_str().eq_ignore_ascii_case(n))
            {
                return json!([n, "[redacted]"]);
            }
            Value::Array(items.into_iter().map(|v| redacted(v, redact)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, redacted(v, redact)))
                .collect(),
        ),
        v => v,
    }
}

impl ShadowDiffs {
    pub fn new(redact: Vec<HeaderName>) -> Self {
        ShadowDiffs {
            same: AtomicU64::new(0),
            kinds: Default::default(),
            skipped: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            samples: Mutex::new(VecDeque::new()),
            redact,
        }
    }

    /// A slot for one shadow call, given back when dropped (a task that
    /// panics gives it back too); `None` (counted as skipped) when
    /// [`MAX_IN_FLIGHT`] run.
    pub fn admit(self: &std::sync::Arc<Self>) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Relaxed);
            self.skipped.fetch_add(1, Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Compares the shadow's result with the decision that was acted on.
    pub fn record(
        &self,
        req: &RequestView,
        live: &HttpDecision,
        shadow: &Result<HttpDecision, PolicyError>,
        default_pool: Option<&str>,
    ) {
        let differs = match shadow {
            Ok(d) => kind(live, d, default_pool),
            Err(_) => Some(4),
        };
        let Some(k) = differs else {
            self.same.fetch_add(1, Relaxed);
            return;
        };
        self.kinds[k].fetch_add(1, Relaxed);
        let sample = json!({
            "kind": KINDS[k],
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "live": redacted(live.to_json(), &self.redact),
            "shadow": match shadow {
                Ok(d) => redacted(d.to_json(), &self.redact),
                Err(e) => json!({"error": e.to_string()}),
            },
        });
        let mut samples = self.samples.lock().expect("shadow samples");
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The counts.
    pub fn json(&self) -> Value {
        let by_kind: serde_json::Map<String, Value> = KINDS
            .iter()
            .zip(&self.kinds)
            .map(|(k, n)| ((*k).to_owned(), json!(n.load(Relaxed))))
            .collect();
        let differ: u64 = self.kinds.iter().map(|n| n.load(Relaxed)).sum();
        json!({
            "same": self.same.load(Relaxed),
            "differ": differ,
            "by_kind": by_kind,
            "skipped": self.skipped.load(Relaxed),
        })
    }

    /// The counts and the newest differing requests, oldest first.
    pub fn diff_json(&self) -> Value {
        let mut v = self.json();
        v["samples"] = Value::Array(
            self.samples
                .lock()
                .expect("shadow samples")
                .iter()
                .cloned()
                .collect(),
        );
        v
    }
}

/// One running shadow call's place among [`MAX_IN_FLIGHT`].
pub struct Slot(std::sync::Arc<ShadowDiffs>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The directory a shadow call sees: the same pools, and every
/// `http-call` refused without a byte sent.
pub struct Stubbed(pub std::sync::Arc<dyn Directory>);

impl Directory for Stubbed {
    fn backends(&self, pool: &str) -> Option<Vec<Backend>> {
        self.0.backends(pool)
    }

    fn check(&self, pool: &str, backend: Option<&str>) -> Result<(), String> {
        self.0.check(pool, backend)
    }

    fn http_call(&self, pool: &str, _request: OutgoingRequest) -> CallFuture {
        let why = format!("pool {pool:?}: http-call is stubbed in shadow mode");
        Box::pin(std::future::ready(Err(CallError::NotAllowed(why))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ForwardAction;

    fn forward(pool: Option<&str>, backend: Option<&str>, path: Option<&str>) -> HttpDecision {
        HttpDecision::Forward(ForwardAction {
            pool: pool.map(str::to_owned),
            backend: backend.map(str::to_owned),
            path: path.map(|p| p.parse().unwrap()),
            ..ForwardAction::default()
        })
    }

    #[test]
    fn differences_are_told_apart_by_kind() {
        let web = Some("web");
        let plain = forward(None, None, None);
        assert_eq!(kind(&plain, &plain, web), None);
        // No pool is the listener's pool.
        assert_eq!(kind(&plain, &forward(Some("web"), None, None), web), None);
        assert_eq!(
            kind(&plain, &forward(Some("api"), None, None), web),
            Some(0)
        );
        assert_eq!(kind(&plain, &forward(None, Some("b"), None), web), Some(1));
        assert_eq!(kind(&plain, &forward(None, None, Some("/x")), web), Some(3));
        let answer = HttpDecision::Respond(crate::policy::decision::DirectResponse {
            status: http::StatusCode::FORBIDDEN,
            headers: vec![(
                HeaderName::from_static("set-cookie"),
                http::HeaderValue::from_static("s=secret"),
            )],
            body: bytes::Bytes::new(),
        });
        assert_eq!(kind(&plain, &answer, web), Some(2));
        let shown = redacted(answer.to_json(), &[HeaderName::from_static("set-cookie")]);
        assert!(!shown.to_string().contains("secret"), "{shown}");
        assert!(shown.to_string().contains("[redacted]"), "{shown}");
    }
}
