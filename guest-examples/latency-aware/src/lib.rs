//! `latency-aware`: sends each request to the healthy backend of the
//! listener's pool with the lowest moving average of its response time,
//! and a small share of requests to a random healthy backend, so a
//! backend that got better is noticed.
//!
//! Config (optional): `{"explore_percent": 10, "alpha": 0.3}`: the share
//! of requests sent at random, and the weight of the newest sample in
//! the exponentially weighted moving average (EWMA).
//!
//! The log hook learns each response's upstream time after the response
//! has been sent (it adds no latency) and folds it into the backend's
//! EWMA in the KV store, shared by every instance. A backend without a
//! sample yet counts as the fastest, so every backend is tried.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "explore")]
    explore_percent: u64,
    #[serde(default = "alpha")]
    alpha: f64,
}

fn explore() -> u64 {
    10
}

fn alpha() -> f64 {
    0.3
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn key(backend: &str) -> String {
    format!("ewma:{backend}")
}

/// The backend's EWMA in ms; a store that cannot answer counts as no
/// sample.
fn ewma(backend: &str) -> Option<f64> {
    let v = kv::get(&key(backend)).ok()??;
    std::str::from_utf8(&v).ok()?.parse().ok()
}

struct LatencyAware;

impl HttpPolicy for LatencyAware {
    fn init(config: String) -> Result<(), String> {
        let c: Config = if config.trim().is_empty() {
            Config {
                explore_percent: explore(),
                alpha: alpha(),
            }
        } else {
            serde_json::from_str(&config).map_err(config_error)?
        };
        if c.explore_percent > 100 || !(c.alpha > 0.0 && c.alpha <= 1.0) {
            return Err(config_error(
                "explore_percent is 0..=100 and alpha in (0, 1]",
            ));
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(_req: &RequestHead, conn: &Connection) -> Decision {
        let (Some(c), Some(pool)) = (CONFIG.get(), conn.pool()) else {
            return forward().into();
        };
        let healthy: Vec<Backend> = backends::for_pool(&pool)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.healthy)
            .collect();
        if healthy.is_empty() {
            return forward().into();
        }
        let pick = if random::next_u64() % 100 < c.explore_percent {
            &healthy[(random::next_u64() % healthy.len() as u64) as usize]
        } else {
            healthy
                .iter()
                .min_by(|a, b| {
                    let (x, y) = (ewma(&a.name).unwrap_or(0.0), ewma(&b.name).unwrap_or(0.0));
                    x.total_cmp(&y)
                })
                .expect("not empty")
        };
        forward().backend(&pick.name).into()
    }

    fn on_log(_req: &RequestHead, _context: Option<Vec<u8>>, s: LogSummary) {
        let (Some(c), Some(backend), Some(ms)) = (CONFIG.get(), s.backend, s.upstream_ms) else {
            return;
        };
        // Compare-and-swap, so two instances logging at once both count.
        for _ in 0..4 {
            let current = kv::get(&key(&backend)).ok().flatten();
            let old = current
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<f64>().ok());
            let new = match old {
                Some(old) => old + c.alpha * (ms - old),
                None => ms,
            };
            let stored = kv::compare_and_swap(
                &key(&backend),
                current.as_deref(),
                new.to_string().as_bytes(),
                None,
            );
            if !matches!(stored, Ok(false)) {
                return;
            }
        }
    }
}

http_policy_with_log!(LatencyAware);
