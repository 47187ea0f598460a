//! `path-router`: picks the pool by the longest matching path prefix.
//!
//! Config: `{"routes": [{"prefix": "/api/", "pool": "api"},
//!                      {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}`.
//! Unmatched requests go to the listener's default pool.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    prefix: String,
    pool: String,
    #[serde(default)]
    strip_prefix: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    routes: Vec<Route>,
}

static ROUTES: OnceLock<Vec<Route>> = OnceLock::new();

struct PathRouter;

impl HttpPolicy for PathRouter {
    fn init(config: String) -> Result<(), String> {
        let mut config: Config = serde_json::from_str(&config).map_err(config_error)?;
        if let Some(r) = config.routes.iter().find(|r| !r.prefix.starts_with('/')) {
            return Err(format!(
                "config: route prefix {:?} must start with '/'",
                r.prefix
            ));
        }
        // Longest prefix first, so "/api/v2/" wins over "/api/".
        config
            .routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        ROUTES
            .set(config.routes)
            .map_err(|_| "init called twice".to_string())
    }

    fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
        let path = req.path();
        let routes = ROUTES.get().map(Vec::as_slice).unwrap_or_default();
        let Some(route) = routes.iter().find(|r| path.starts_with(&r.prefix)) else {
            return forward().into();
        };
        let mut decision = forward().pool(&route.pool);
        if route.strip_prefix {
            // Keep the leading slash: "/images/a.png" -> "/a.png", "/images/" -> "/".
            let rest = &path[route.prefix.len()..];
            let rest = rest.trim_start_matches('/');
            decision = decision.path(&format!("/{rest}"));
        }
        decision.into()
    }
}

http_policy!(PathRouter);
