//! `client-hash` (L4): the same client IP goes to the same backend while
//! that backend is healthy, using rendezvous (highest-random-weight)
//! hashing over the pool's healthy backends from the `backends` import.
//! When a backend goes away only its clients move.
//!
//! Config (optional): `{"pool": "tcp"}`; default: the listener's pool.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    pool: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct ClientHash;

impl ConnectionPolicy for ClientHash {
    fn init(config: String) -> Result<(), String> {
        let c = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(&config).map_err(config_error)?
        };
        CONFIG.set(c).map_err(|_| "init called twice".to_string())
    }

    fn on_connect(conn: &Connection) -> ConnectDecision {
        let configured = CONFIG.get().and_then(|c| c.pool.clone());
        let Some(pool) = configured.or_else(|| conn.pool()) else {
            return ConnectForward::default_pool().into();
        };
        let client = conn.client().ip;
        let backends = backends::for_pool(&pool).unwrap_or_default();
        let best = backends.iter().filter(|b| b.healthy).max_by_key(|b| {
            let mut key = client.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(b.name.as_bytes());
            fnv1a(&key)
        });
        match best {
            Some(b) => ConnectForward::to_pool(&pool).backend(&b.name).into(),
            // Nothing healthy: let the host decide (it refuses fast).
            None => ConnectForward::to_pool(&pool).into(),
        }
    }
}

connection_policy!(ClientHash);
