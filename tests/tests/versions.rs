//! `switchyard:policy` 0.3 beside 0.2: a component built against 0.2 (the
//! committed `tests/fixtures/v0.2/path-router.wasm`) still routes exactly
//! as the 0.3 build of the same source; a 0.3 policy that exports only
//! `on-request` is never called for a hook it does not export; and a
//! key-value call the store refuses comes back to a 0.3 policy as an error
//! instead of trapping it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::policy::{
    ConnectionInfo, EngineSettings, HttpDecision, Limits, OpenDirectory, PolicyEngine, PolicyKind,
    RequestView, types,
};
use switchyard_tests::*;

/// What each request of the table gets: the backend that answered and the
/// path it saw.
async fn routes(h: &Harness) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in ["/api/users?id=7", "/images/cat.png?s=2", "/", "/apix"] {
        let got = h.get("public", path).await;
        assert_eq!(got.status, 200, "{path}");
        let backend = got.text();
        let seen = h.backend(&backend).seen().last().unwrap().uri.clone();
        out.push((backend, seen));
    }
    out
}

#[tokio::test]
async fn a_policy_built_against_0_2_routes_as_its_0_3_build_does() {
    let v02 = temp_dir("v0.2-router");
    std::fs::copy(
        repo().join("tests/fixtures/v0.2/path-router.wasm"),
        v02.join("path-router.wasm"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("policies/path-router.json"),
        v02.join("path-router.json"),
    )
    .unwrap();
    let old = Harness::start(
        &three_pools(&v02.display().to_string()),
        &["web", "api", "images"],
    )
    .await;
    let by_0_2 = routes(&old).await;
    let new = Harness::start(&three_pools("{policies}"), &["web", "api", "images"]).await;
    let by_0_3 = routes(&new).await;
    assert_eq!(
        by_0_2,
        vec![
            ("api".to_owned(), "/api/users?id=7".to_owned()),
            ("images".to_owned(), "/cat.png?s=2".to_owned()),
            ("web".to_owned(), "/".to_owned()),
            ("web".to_owned(), "/apix".to_owned()),
        ]
    );
    assert_eq!(by_0_2, by_0_3, "0.2 and 0.3 builds of path-router agree");
    // Each is the version it claims: the loaded policy's file is the one
    // it was given, and a call is counted per request.
    let p = &old.sy.policies()[0];
    assert!(p.file.starts_with(&v02), "{}", p.file.display());
    assert_eq!(p.stats.calls(), 4);
}

#[tokio::test]
async fn a_policy_without_the_optional_hooks_is_never_called_for_them() {
    let h = Harness::start(
        &format!(
            r#"
[policies]
dir = "{}"
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "request-only"
"#,
            repo().join("tests/fixtures/wasm").display()
        ),
        &["web"],
    )
    .await;
    for _ in 0..3 {
        let got = h.get("l", "/").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["x-request-only"], "1");
        assert!(
            !got.headers.contains_key("x-response-hook"),
            "a hook it does not export was called"
        );
    }
    // Asking for the hook it lacks is an invalid decision: refused (503,
    // the listener's on_error), and nothing reaches the backend.
    let got = h.get("l", "/inspect").await;
    assert_eq!(got.status, 503);
    assert_eq!(h.backend("web").seen().len(), 3);
    let p = &h.sy.policies()[0];
    assert_eq!(p.stats.calls(), 4, "one call per request: on-request only");
    let last = p.stats.last_error.lock().unwrap().clone().unwrap();
    assert!(
        last.contains("does not export switchyard:policy/response-hook"),
        "{last}"
    );
    // Nor may it ask for the body without the body hook.
    let req = hyper::Request::post(format!("http://{}/read-body", h.addr("l")))
        .body(streamed(b"payload".to_vec(), 3))
        .unwrap();
    let got = send(&h.client, req).await;
    assert_eq!(got.status, 503);
    assert_eq!(h.backend("web").seen().len(), 3);
    assert_eq!(p.stats.calls(), 5);
    let last = p.stats.last_error.lock().unwrap().clone().unwrap();
    assert!(
        last.contains("read-body is not allowed here") && last.contains("body-hook"),
        "{last}"
    );
}

#[tokio::test]
async fn a_refused_kv_write_is_an_error_the_policy_handles_not_a_trap() {
    // Namespaces of 32 bytes: no entry fits, since each is charged 64
    // bytes of bookkeeping besides its key and value.
    let engine = PolicyEngine::new(&EngineSettings {
        kv: switchyard::policy::kv::KvLimits {
            max_entries: 10,
            max_bytes: 32,
        },
        ..EngineSettings::default()
    })
    .unwrap();
    let path = repo().join("tests/fixtures/wasm/misbehave.wasm");
    let p = engine
        .load_bytes(
            &path,
            std::fs::read(&path).unwrap(),
            String::new(),
            Some(PolicyKind::Http),
            Limits {
                timeout: Duration::from_millis(500),
                ..Limits::default()
            },
            Arc::new(OpenDirectory),
        )
        .await
        .expect("misbehave loads");
    let conn = Arc::new(ConnectionInfo::new(
        "127.0.0.1:50000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
        "test",
        Some("web"),
        types::Transport::Tcp,
    ));
    let mut req = RequestView::build("GET", "/kv-fill?a", &[("host", "x")]).unwrap();
    let directory: Arc<dyn switchyard::policy::Directory> = Arc::new(OpenDirectory);
    let d = p
        .on_request(&mut req, &conn, Some("web"), &directory)
        .await
        .expect("the policy answers; it is not trapped");
    let HttpDecision::Respond(r) = d else {
        panic!("expected the policy's own answer")
    };
    assert_eq!(r.status, 507);
    let said = String::from_utf8_lossy(&r.body).into_owned();
    assert!(said.contains("Full"), "{said}");
    assert_eq!(p.stats.errors.load(Ordering::Relaxed), 0);
}
