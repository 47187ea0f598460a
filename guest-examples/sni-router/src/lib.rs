//! `sni-router` (L4): sends a TLS connection to a pool by the server name
//! in its ClientHello, without terminating TLS. `*.example.test` matches
//! one label; exact names win. Unmatched or missing SNI goes to the
//! listener's default pool.
//!
//! Config: `{"routes": {"a.test": "a", "b.test": "b", "*.c.test": "c"}}`.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    routes: HashMap<String, String>,
}

static ROUTES: OnceLock<HashMap<String, String>> = OnceLock::new();

struct SniRouter;

impl ConnectionPolicy for SniRouter {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        let routes = c
            .routes
            .into_iter()
            .map(|(name, pool)| (name.to_ascii_lowercase(), pool))
            .collect();
        ROUTES
            .set(routes)
            .map_err(|_| "init called twice".to_string())
    }

    fn on_connect(conn: &Connection) -> ConnectDecision {
        let routes = ROUTES.get();
        let sni = conn.tls().and_then(|t| t.sni);
        let pool = routes.zip(sni.as_deref()).and_then(|(routes, sni)| {
            routes.get(sni).or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                routes.get(&format!("*.{parent}"))
            })
        });
        match pool {
            Some(pool) => ConnectForward::to_pool(pool).into(),
            None => ConnectForward::default_pool().into(),
        }
    }
}

connection_policy!(SniRouter);
