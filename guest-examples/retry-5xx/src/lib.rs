//! `retry-5xx`: sends a request whose backend answered one of the listed
//! statuses once more, to another backend of the pool.
//!
//! Config: `{"statuses": [502, 503]}`.
//!
//! The host decides whether the request may be resent (an idempotent
//! method whose body was kept, the pool's `retries` and retry budget) and
//! retries at most once: the second answer goes to the client whatever it
//! is.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    statuses: Vec<u16>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct Retry5xx;

impl HttpPolicy for Retry5xx {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if let Some(s) = c.statuses.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(config_error(format!("statuses: {s} is not a status")));
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(_req: &RequestHead, _conn: &Connection) -> Decision {
        forward().inspect_response().into()
    }

    fn on_response(
        _req: &RequestHead,
        resp: &ResponseHead,
        _body: ResponseBody,
        _context: Option<Vec<u8>>,
    ) -> ResponseAction {
        match CONFIG.get() {
            Some(c) if c.statuses.contains(&resp.status()) => ResponseAction::Retry,
            _ => Vec::new().into(),
        }
    }
}

http_policy_with_response!(Retry5xx);
