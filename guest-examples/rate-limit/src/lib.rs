//! `rate-limit`: a token bucket per client IP, kept in the host key-value
//! store so that every instance (and every reloaded version) shares it.
//! Over the limit: `429 Too Many Requests` with `Retry-After`.
//!
//! Config: `{"rate_per_second": 10, "burst": 20}`.
//!
//! A bucket is `"<milli-tokens> <last refill, wall-clock ms>"` under the
//! client's IP. Updates use compare-and-swap, so concurrent instances never
//! both spend the same token; a bucket nobody touches expires once it would
//! be full.
//!
//! The stamp is wall time, not the monotonic clock: with `[kv] backend =
//! "redis"` every instance of a deployment reads and writes the same
//! bucket, and each machine's monotonic clock counts from its own boot.
//! Wall clocks under NTP agree within milliseconds, which moves a refill by
//! as many milli-tokens per token of rate; a clock that steps back refills
//! nothing until it catches up (the difference saturates at 0), so a skewed
//! instance can only be stricter, never let more through. (The store's own
//! clock, Redis `TIME`, would need a round trip of its own per request.)

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rate_per_second: u64,
    burst: u64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// How often to retry when another instance updated the bucket first.
const CAS_ATTEMPTS: usize = 16;

struct RateLimit;

fn parse(v: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (tokens, at) = s.split_once(' ')?;
    Some((tokens.parse().ok()?, at.parse().ok()?))
}

impl HttpPolicy for RateLimit {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if c.rate_per_second == 0 || c.burst == 0 {
            return Err("config: rate_per_second and burst must be at least 1".into());
        }
        CONFIG.set(c).map_err(|_| "init called twice".to_string())
    }

    fn on_request(_req: &RequestHead, conn: &Connection) -> Decision {
        let Some(c) = CONFIG.get() else {
            return forward().into();
        };
        let key = conn.client().ip;
        let full = c.burst * 1000;
        // Time for an empty bucket to refill, plus a second: the TTL.
        let ttl_ms = c.burst * 1000 / c.rate_per_second + 1000;
        for _ in 0..CAS_ATTEMPTS {
            let now = clock::wall_now_ms();
            // A store that cannot answer lets the request through: a rate
            // limiter that fails closed turns a store outage into an outage.
            let current = match kv::get(&key) {
                Ok(v) => v,
                Err(e) => {
                    log::warn(&format!(
                        "rate-limit: kv unavailable ({e:?}); request allowed"
                    ));
                    return forward().into();
                }
            };
            let (tokens, at) = current.as_deref().and_then(parse).unwrap_or((full, now));
            let elapsed_ms = now.saturating_sub(at);
            // milli-tokens gained = elapsed_ms * rate
            let gained = elapsed_ms.saturating_mul(c.rate_per_second);
            let tokens = tokens.saturating_add(gained).min(full);
            if tokens < 1000 {
                // Whole seconds until one token is back, at least 1.
                let wait_ms = (1000 - tokens) / c.rate_per_second;
                let retry_after = wait_ms.div_ceil(1000).max(1).to_string();
                return respond(429)
                    .header("retry-after", &retry_after)
                    .header("content-type", "text/plain")
                    .body("too many requests\n")
                    .into();
            }
            let next = format!("{} {}", tokens - 1000, now);
            match kv::compare_and_swap(&key, current.as_deref(), next.as_bytes(), Some(ttl_ms)) {
                Ok(true) => return forward().into(),
                Ok(false) => {}
                Err(e) => {
                    log::warn(&format!(
                        "rate-limit: kv unavailable ({e:?}); request allowed"
                    ));
                    return forward().into();
                }
            }
        }
        // Heavy contention on one key: let the request through rather than
        // fail it for a reason the client cannot act on.
        log::warn("rate-limit: bucket contended; request allowed");
        forward().into()
    }
}

http_policy!(RateLimit);
