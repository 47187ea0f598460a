//! `forward-auth`: asks an auth service about every request before it
//! goes on, like nginx's `auth_request`, Traefik's ForwardAuth and Envoy's
//! ext_authz.
//!
//! Config: `{"pool": "auth", "path": "/verify", "copy_request_headers":
//! ["authorization", "cookie"], "copy_response_headers": ["x-auth-user"]}`.
//!
//! For each request it sends `GET <path>` to a backend of `pool` (which
//! the listener must list in `policy_call_pools`) with the request's
//! `copy_request_headers`, plus `x-forwarded-method` and `x-forwarded-uri`
//! saying what is asked for. A 2xx answer lets the request through to the
//! listener's pool, with the answer's `copy_response_headers` set on it (a
//! client's own value of those headers is removed first, so it cannot
//! forge them). Any other status goes back to the client with the auth
//! service's body and its `content-type`, `www-authenticate`, `location`
//! and `set-cookie` (a login redirect works). An auth service that cannot
//! be reached fails closed: 503, or 504 when it timed out.

use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::call::{CallError, http_call, request};
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    pool: String,
    path: String,
    #[serde(default)]
    copy_request_headers: Vec<String>,
    #[serde(default)]
    copy_response_headers: Vec<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// What a refusal carries back to the client besides its body.
const PASSED_BACK: [&str; 4] = ["content-type", "www-authenticate", "location", "set-cookie"];

struct ForwardAuth;

impl HttpPolicy for ForwardAuth {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if !c.path.starts_with('/') {
            return Err(config_error("path: must start with '/'"));
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
        let Some(c) = CONFIG.get() else {
            return respond(503).into();
        };
        let mut uri = req.path();
        if let Some(q) = req.query() {
            uri.push('?');
            uri.push_str(&q);
        }
        let mut ask = request("GET", &c.path)
            .header("x-forwarded-method", &req.method())
            .header("x-forwarded-uri", &uri);
        for name in &c.copy_request_headers {
            for value in req.header_values(name) {
                ask = ask.header(name, &value);
            }
        }
        let answer = match http_call(&c.pool, &ask) {
            Ok(a) => a,
            Err(CallError::Timeout) => return respond(504).body("auth timed out\n").into(),
            Err(e) => {
                log::warn(&format!("auth call failed: {e:?}"));
                return respond(503).body("auth unavailable\n").into();
            }
        };
        if (200..300).contains(&answer.status) {
            let mut f = forward();
            for name in &c.copy_response_headers {
                f = f.remove_request_header(name);
                for value in answer.header_values(name) {
                    f = f.append_request_header(name, value);
                }
            }
            return f.into();
        }
        let mut refusal = respond(answer.status).body(answer.body.clone());
        for name in PASSED_BACK {
            for value in answer.header_values(name) {
                refusal = refusal.header(name, value);
            }
        }
        refusal.into()
    }
}

http_policy!(ForwardAuth);
