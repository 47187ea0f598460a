//! The admin API's requests that change state: draining a backend, and
//! ending a canary by hand (`mod.rs` has already checked that they are
//! same-origin JSON, and carry the token when one is set); and a shadow's
//! differences.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tracing::info;

use super::{View, json_reply};
use crate::policy::rollout::Verdict;

/// `POST /api/pools/NAME/backends/BACKEND/drain` (or `undrain`); the
/// backend by name or address.
pub(super) fn drain(view: &View, name: &str, backend: &str, action: &str) -> Response<Full<Bytes>> {
    let Some(p) = view.upstreams.pool(name) else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no pool named {name:?}")}),
        );
    };
    let found = p
        .backends
        .iter()
        .find(|b| *b.name == *backend || b.address().authority == backend);
    match found {
        Some(b) => {
            b.set_drained(action == "drain");
            info!(pool = %name, backend = %b.name, action = %action, "admin");
            json_reply(
                StatusCode::OK,
                &json!({"pool": name, "backend": &*b.name, "drained": b.drained()}),
            )
        }
        None => json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("pool {name:?} has no backend {backend:?}")}),
        ),
    }
}

/// `POST /api/policies/NAME/promote` (or `rollback`): 202, applied by the
/// daemon's rollout task within moments; 404 without a canary running.
pub(super) fn end_canary(view: &View, name: &str, action: &str) -> Response<Full<Bytes>> {
    let Some(c) = view.canaries.get(name) else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("policy {name:?} has no canary running")}),
        );
    };
    c.force(if action == "promote" {
        Verdict::Promote("promoted by hand (admin API)".into())
    } else {
        Verdict::Rollback("rolled back by hand (admin API)".into())
    });
    info!(policy = %name, version = %c.canary.version, action = %action, "admin");
    json_reply(
        StatusCode::ACCEPTED,
        &json!({"policy": name, "version": c.canary.version, "action": action}),
    )
}

/// `GET /api/policies/NAME/diff`: a shadow's differences from the serving
/// version, by kind, with the newest differing requests.
pub(super) fn shadow_diff(view: &View, name: &str) -> Response<Full<Bytes>> {
    let shadow = view
        .canaries
        .get(name)
        .and_then(|c| c.shadow.as_ref().map(|s| (c, s)));
    let Some((c, s)) = shadow else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("policy {name:?} has no shadow running")}),
        );
    };
    let mut v = s.diff_json();
    v["policy"] = json!(name);
    v["version"] = json!(c.canary.version);
    v["live_version"] = json!(c.live.version);
    json_reply(StatusCode::OK, &v)
}
