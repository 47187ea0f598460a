//! `latency-aware`: sends each request to the healthy backend of the
//! listener's pool with the lowest moving average of its response time.
//!
//! Config (optional): `{"alpha": 0.3, "probe_after_ms": 1000,
//! "explore_percent": 0}`: the weight of the newest sample in the
//! exponentially weighted moving average (EWMA); how old a backend's
//! average may get before one request is sent to it to measure it again
//! (so a backend that was slow and recovered is noticed); and a share of
//! requests sent at random. Each random request that lands on a slow
//! backend is a slow response: at 1% over four backends the p99 was the
//! slow backend's (`bench/balance`, `bench/RESULTS.md`), which is why
//! probing by age is the default.
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
    #[serde(default)]
    explore_percent: u64,
    #[serde(default = "alpha")]
    alpha: f64,
    #[serde(default = "probe_after")]
    probe_after_ms: u64,
}

fn probe_after() -> u64 {
    1000
}

fn alpha() -> f64 {
    0.3
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn key(backend: &str) -> String {
    format!("ewma:{backend}")
}

/// A backend's entry: `EWMA_MS WALL_MS`, the average and when it was
/// last measured (or last claimed for a probe).
fn parse(v: &[u8]) -> Option<(f64, u64)> {
    let (ewma, at) = std::str::from_utf8(v).ok()?.split_once(' ')?;
    Some((ewma.parse().ok()?, at.parse().ok()?))
}

/// The backend's EWMA in ms for choosing; 0 (the fastest) when it has no
/// sample, or when its sample is older than `probe_after_ms` and this
/// request wins the probe (the entry's time is moved to now first, so one
/// request probes, not every request until the answer). A store that
/// cannot answer counts as no sample.
fn ewma(c: &Config, backend: &str) -> f64 {
    let Ok(Some(v)) = kv::get(&key(backend)) else {
        return 0.0;
    };
    let Some((ewma, at)) = parse(&v) else {
        return 0.0;
    };
    let now = clock::wall_now_ms();
    if now.saturating_sub(at) < c.probe_after_ms {
        return ewma;
    }
    let claimed = format!("{ewma} {now}");
    match kv::compare_and_swap(&key(backend), Some(&v), claimed.as_bytes(), None) {
        Ok(true) => 0.0,
        _ => ewma,
    }
}

struct LatencyAware;

impl HttpPolicy for LatencyAware {
    fn init(config: String) -> Result<(), String> {
        let c: Config = if config.trim().is_empty() {
            Config {
                explore_percent: 0,
                alpha: alpha(),
                probe_after_ms: probe_after(),
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
            let scored: Vec<(f64, &Backend)> =
                healthy.iter().map(|b| (ewma(c, &b.name), b)).collect();
            scored
                .iter()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, b)| *b)
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
            let new = match current.as_deref().and_then(parse) {
                Some((old, _)) => old + c.alpha * (ms - old),
                None => ms,
            };
            let entry = format!("{new} {}", clock::wall_now_ms());
            let stored =
                kv::compare_and_swap(&key(&backend), current.as_deref(), entry.as_bytes(), None);
            if !matches!(stored, Ok(false)) {
                return;
            }
        }
    }
}

http_policy_with_log!(LatencyAware);
