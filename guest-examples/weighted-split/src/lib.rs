//! `weighted-split`: an A/B split between pools by percentage, sticky by a
//! cookie: a client that has the cookie keeps its pool, a new client is
//! assigned one by weight and gets the cookie.
//!
//! Config: `{"cookie": "sy-split", "splits": [{"pool": "a", "weight": 90}, {"pool": "b", "weight": 10}]}`.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Split {
    pool: String,
    weight: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_cookie")]
    cookie: String,
    splits: Vec<Split>,
    /// Lifetime of the cookie in seconds.
    #[serde(default = "default_max_age")]
    max_age: u64,
}

fn default_cookie() -> String {
    "sy-split".into()
}
fn default_max_age() -> u64 {
    86_400
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct WeightedSplit;

impl HttpPolicy for WeightedSplit {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if c.splits.iter().map(|s| s.weight).sum::<u64>() == 0 {
            return Err("config: splits need a total weight above 0".into());
        }
        CONFIG.set(c).map_err(|_| "init called twice".to_string())
    }

    fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
        let Some(c) = CONFIG.get() else {
            return forward().into();
        };
        if let Some(pool) = req.cookie(&c.cookie)
            && c.splits.iter().any(|s| s.pool == pool)
        {
            return forward().pool(&pool).into();
        }
        let total: u64 = c.splits.iter().map(|s| s.weight).sum();
        let mut ticket = random::next_u64() % total;
        let split = c
            .splits
            .iter()
            .find(|s| {
                if ticket < s.weight {
                    true
                } else {
                    ticket -= s.weight;
                    false
                }
            })
            .unwrap_or(&c.splits[0]);
        let cookie = format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly",
            c.cookie, split.pool, c.max_age
        );
        forward()
            .pool(&split.pool)
            .append_response_header("set-cookie", &cookie)
            .into()
    }
}

http_policy!(WeightedSplit);
