//! `json-router`: routes a request by one top-level field of its JSON
//! body, and counts requests per route in its own metric.
//!
//! Config: `{"field": "tenant", "routes": {"a": "pool_a", "b": "pool_b"},
//! "max_body": 65536}`.
//!
//! A request that may have a body (a `content-length` above zero, or a
//! method other than GET, HEAD, OPTIONS and TRACE without one) asks for it, up to `max_body` bytes
//! ([`read_body`]); the body hook parses it and sends it to the pool its
//! field's value names. Anything else goes to the listener's pool: a
//! request without a body, a body that is not a JSON object, a field that
//! is missing, not a string or not in `routes`, and a body over
//! `max_body` (forwarded unread, never refused).
//!
//! Metric: `requests`, a counter exported as
//! `switchyard_policy_json_router_requests_total{route}`, where
//! `route` is the field's value when it is in `routes`, else `default`.
//! A body over `max_body` is not counted: the policy is not called again
//! for it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    field: String,
    routes: BTreeMap<String, String>,
    #[serde(default = "default_max_body")]
    max_body: u32,
}

fn default_max_body() -> u32 {
    64 * 1024
}

static CONFIG: OnceLock<Config> = OnceLock::new();

const METRIC: &str = "requests";

struct JsonRouter;

/// Whether the request may have a body: a `content-length` above zero,
/// or none with a method that carries one (an HTTP/2 body need not say
/// its length, and an HTTP/1.1 request without a length has an empty
/// body, cheap to read).
fn has_body(req: &RequestHead) -> bool {
    match req.header("content-length") {
        Some(n) => n.trim() != "0",
        None => !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE"),
    }
}

/// The pool the body's field routes to, and the route's label.
fn route<'c>(config: &'c Config, body: &[u8]) -> Option<(&'c str, &'c str)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let key = value.as_object()?.get(&config.field)?.as_str()?;
    config
        .routes
        .get_key_value(key)
        .map(|(k, pool)| (k.as_str(), pool.as_str()))
}

fn count(route: &str) {
    metrics::counter_add(METRIC, &[route.to_owned()], 1);
}

impl HttpPolicy for JsonRouter {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if c.field.is_empty() {
            return Err(config_error("field: must not be empty"));
        }
        metrics::define(
            METRIC,
            "Requests routed by the JSON body, by route (default: the listener's pool)",
            metrics::MetricKind::Counter,
            &["route".to_owned()],
        )?;
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
        let Some(config) = CONFIG.get() else {
            return forward().into();
        };
        if !has_body(req) {
            count("default");
            return forward().into();
        }
        // Over `max_body`: the listener's pool, the body streamed unread.
        read_body(config.max_body).or_forward(forward()).into()
    }

    fn on_request_body(_req: &RequestHead, body: Vec<u8>, _context: Option<Vec<u8>>) -> Decision {
        let Some(config) = CONFIG.get() else {
            return forward().into();
        };
        match route(config, &body) {
            Some((label, pool)) => {
                count(label);
                forward().pool(pool).into()
            }
            None => {
                count("default");
                forward().into()
            }
        }
    }
}

http_policy_with_body!(JsonRouter);
