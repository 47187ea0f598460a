//! `header-canary`: requests whose header matches go, in the configured
//! share, to a canary pool; the response says so in `x-canary: true`.
//!
//! Config: `{"header": "x-canary", "value": "always", "pool": "canary", "percent": 100}`.
//! `value` is optional (any value matches when absent); `percent` defaults to 100.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    value: Option<String>,
    pool: String,
    #[serde(default = "all")]
    percent: u64,
}

fn all() -> u64 {
    100
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct HeaderCanary;

impl HttpPolicy for HeaderCanary {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if c.percent > 100 {
            return Err(format!("config: percent is {}, must be 0-100", c.percent));
        }
        CONFIG.set(c).map_err(|_| "init called twice".to_string())
    }

    fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
        let Some(c) = CONFIG.get() else {
            return forward().into();
        };
        let matched = match (req.header(&c.header), &c.value) {
            (Some(v), Some(want)) => v == *want,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if matched && random::next_u64() % 100 < c.percent {
            forward()
                .pool(&c.pool)
                .set_response_header("x-canary", "true")
                .into()
        } else {
            forward().into()
        }
    }
}

http_policy!(HeaderCanary);
