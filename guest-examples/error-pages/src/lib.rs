//! `error-pages`: replaces the upstream responses of the statuses it lists
//! with a configured page; every other response goes through untouched.
//!
//! Config: `{"pages": {"502": "<h1>We'll be right back</h1>", "503": "..."},
//! "content_type": "text/html"}`.
//!
//! Every request asks for the response hook (`inspect_response`), which
//! answers with [`ResponseAction::Replace`] for a listed status: the
//! client gets the page with the backend's status, and the backend's own
//! body is never read.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use switchyard_policy::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    pages: BTreeMap<u16, String>,
    #[serde(default = "html")]
    content_type: String,
}

fn html() -> String {
    "text/html".to_owned()
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct ErrorPages;

impl HttpPolicy for ErrorPages {
    fn init(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(config_error)?;
        if let Some(s) = c.pages.keys().find(|s| !(200..=599).contains(*s)) {
            return Err(config_error(format!("pages: {s} is not a final status")));
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
        let status = resp.status();
        match CONFIG.get().and_then(|c| Some((c, c.pages.get(&status)?))) {
            Some((c, page)) => respond(status)
                .header("content-type", &c.content_type)
                .body(page.as_bytes())
                .into(),
            None => Vec::new().into(),
        }
    }
}

http_policy_with_response!(ErrorPages);
