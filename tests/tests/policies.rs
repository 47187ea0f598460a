//! Every example policy through the real engine, with sample inputs, and
//! every engine limit tripped by the `misbehave` fixture.
//!
//! The `.wasm` files come from `cargo xtask build-policies` (which
//! `cargo xtask test` runs first).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use switchyard::policy::{
    ConnDecision, ConnectionInfo, Directory, EngineSettings, HeaderEdit, HttpDecision, Limits,
    OpenDirectory, Policy, PolicyEngine, PolicyError, PolicyKind, RequestView, StaticDirectory,
    types,
};

static ENGINE: LazyLock<Arc<PolicyEngine>> =
    LazyLock::new(|| PolicyEngine::new(&EngineSettings::default()).expect("policy engine"));

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn wasm_file(rel: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask build-policies` first",
        p.display()
    );
    p
}

async fn load_with(
    rel: &str,
    config: &str,
    kind: PolicyKind,
    limits: Limits,
) -> Result<Arc<Policy>, switchyard::policy::LoadError> {
    let path = wasm_file(rel);
    let wasm = std::fs::read(&path).unwrap();
    ENGINE
        .load_bytes(&path, wasm, config.to_owned(), Some(kind), limits, open())
        .await
}

async fn example(name: &str, config: &str) -> Arc<Policy> {
    let kind = if matches!(name, "sni-router" | "client-hash") {
        PolicyKind::Connection
    } else {
        PolicyKind::Http
    };
    // The examples' decisions are under test here, not the deadline (the
    // misbehave tests below own that): 100 ms instead of 10, so a debug
    // build on two busy cores cannot turn a slow call into a failure.
    let limits = Limits {
        timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    load_with(&format!("policies/{name}.wasm"), config, kind, limits)
        .await
        .unwrap_or_else(|e| panic!("{name} did not load: {e}"))
}

/// Default limits with a 250 ms deadline, for tests of something else
/// than the deadline: a debug build on two cores shared with the
/// CPU-heavy tests of this file can take longer than 10 ms for a call.
fn roomy() -> Limits {
    Limits {
        timeout: Duration::from_millis(250),
        ..Limits::default()
    }
}

async fn misbehave(limits: Limits) -> Arc<Policy> {
    load_with(
        "tests/fixtures/wasm/misbehave.wasm",
        "",
        PolicyKind::Http,
        limits,
    )
    .await
    .expect("misbehave loads")
}

fn open() -> Arc<dyn Directory> {
    Arc::new(OpenDirectory)
}

fn request(path: &str, headers: &[(&str, &str)]) -> Box<RequestView> {
    let mut all = vec![("host", "example.test")];
    all.extend_from_slice(headers);
    RequestView::build("GET", path, &all).unwrap()
}

fn conn_from(ip: &str) -> Arc<ConnectionInfo> {
    Arc::new(ConnectionInfo::new(
        SocketAddr::new(ip.parse().unwrap(), 50000),
        "127.0.0.1:8080".parse().unwrap(),
        "test",
        Some("web"),
        types::Transport::Tcp,
    ))
}

fn with_sni(sni: &str) -> Arc<ConnectionInfo> {
    let mut c = (*conn_from("127.0.0.1")).clone();
    c.tls = Some(types::TlsInfo {
        sni: Some(sni.into()),
        alpn: None,
        version: None,
        client_subject: None,
    });
    Arc::new(c)
}

async fn decide(p: &Policy, path: &str, headers: &[(&str, &str)]) -> HttpDecision {
    p.on_request(
        &mut request(path, headers),
        &conn_from("127.0.0.1"),
        Some("web"),
        &open(),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn forward(d: HttpDecision) -> switchyard::policy::ForwardAction {
    match d {
        HttpDecision::Forward(f) => f,
        HttpDecision::Respond(r) => panic!("expected a forward, got a {} response", r.status),
        HttpDecision::ReadBody(_) => panic!("expected a forward, got read-body"),
    }
}

fn respond(d: HttpDecision) -> switchyard::policy::DirectResponse {
    match d {
        HttpDecision::Respond(r) => r,
        HttpDecision::Forward(f) => panic!("expected a response, got a forward to {:?}", f.pool),
        HttpDecision::ReadBody(_) => panic!("expected a response, got read-body"),
    }
}

fn body(d: HttpDecision) -> String {
    String::from_utf8(respond(d).body.to_vec()).unwrap()
}

const PATH_ROUTER: &str = r#"{"routes": [{"prefix": "/api/", "pool": "api"},
    {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}"#;

// ---------------------------------------------------------------- examples

/// Every example in guest-examples/ must be exercised here: adding a policy
/// without a test fails this test.
#[test]
fn every_example_policy_has_a_test() {
    const TESTED: &[&str] = &[
        "client-hash",
        "deny-list",
        // Through a real listener: tests/tests/policy_api.rs.
        "error-pages",
        // Through a real listener: tests/tests/calls.rs.
        "forward-auth",
        "header-canary",
        // Through a real listener: tests/tests/bodies.rs.
        "json-router",
        // Through a real listener: tests/tests/jwt.rs.
        "jwt-auth",
        // Through a real listener: tests/tests/policy_api.rs.
        "latency-aware",
        "path-router",
        "rate-limit",
        // Through a real listener: tests/tests/policy_api.rs.
        "retry-5xx",
        "sni-router",
        "weighted-split",
    ];
    let mut found = Vec::new();
    for e in std::fs::read_dir(repo().join("guest-examples")).unwrap() {
        let dir = e.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file()
            && std::fs::read_to_string(&manifest)
                .unwrap()
                .contains("cdylib")
        {
            found.push(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    assert_eq!(
        found, TESTED,
        "an example policy has no test in tests/tests/policies.rs (or policy_api.rs, bodies.rs, calls.rs, jwt.rs)"
    );
}

#[tokio::test]
async fn path_router_routes_by_longest_prefix_and_strips() {
    let p = example("path-router", PATH_ROUTER).await;
    let f = forward(decide(&p, "/api/users", &[]).await);
    assert_eq!(f.pool.as_deref(), Some("api"));
    assert_eq!(f.path, None);
    let f = forward(decide(&p, "/images/cat.png", &[]).await);
    assert_eq!(f.pool.as_deref(), Some("images"));
    assert_eq!(f.path.unwrap().as_str(), "/cat.png");
    let f = forward(decide(&p, "/images/", &[]).await);
    assert_eq!(f.path.unwrap().as_str(), "/");
    let f = forward(decide(&p, "/apiary", &[]).await);
    assert_eq!(f.pool, None, "unmatched requests go to the default pool");
}

#[tokio::test]
async fn path_router_refuses_a_bad_config() {
    let e = load_with(
        "policies/path-router.wasm",
        r#"{"routes": [{"prefix": "api", "pool": "api"}]}"#,
        PolicyKind::Http,
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("path-router.wasm"), "{e}");
    assert!(e.to_string().contains("must start with '/'"), "{e}");
}

#[tokio::test]
async fn header_canary_sends_matching_requests_to_the_canary() {
    let cfg = r#"{"header": "x-canary", "value": "always", "pool": "canary", "percent": 100}"#;
    let p = example("header-canary", cfg).await;
    let f = forward(decide(&p, "/", &[("x-canary", "always")]).await);
    assert_eq!(f.pool.as_deref(), Some("canary"));
    assert!(
        f.response_headers
            .iter()
            .any(|e| matches!(e, HeaderEdit::Set(n, v) if n == "x-canary" && v == "true"))
    );
    assert_eq!(
        forward(decide(&p, "/", &[("x-canary", "no")]).await).pool,
        None
    );
    assert_eq!(forward(decide(&p, "/", &[]).await).pool, None);

    let none = r#"{"header": "x-canary", "pool": "canary", "percent": 0}"#;
    let p = example("header-canary", none).await;
    for _ in 0..50 {
        assert_eq!(
            forward(decide(&p, "/", &[("x-canary", "1")]).await).pool,
            None
        );
    }
}

#[tokio::test]
async fn weighted_split_is_sticky_by_cookie_and_splits_by_weight() {
    let cfg = r#"{"splits": [{"pool": "web", "weight": 90}, {"pool": "canary", "weight": 10}]}"#;
    let p = example("weighted-split", cfg).await;
    let f = forward(decide(&p, "/", &[("cookie", "a=b; sy-split=canary")]).await);
    assert_eq!(f.pool.as_deref(), Some("canary"));
    assert!(
        f.response_headers.is_empty(),
        "a sticky client gets no new cookie"
    );

    let mut canary = 0;
    for _ in 0..1000 {
        let f = forward(decide(&p, "/", &[]).await);
        let pool = f.pool.clone().unwrap();
        let cookie = f
            .response_headers
            .iter()
            .find_map(|e| match e {
                HeaderEdit::Append(n, v) if n == "set-cookie" => {
                    Some(v.to_str().unwrap().to_owned())
                }
                _ => None,
            })
            .expect("a new client gets the cookie");
        assert!(cookie.starts_with(&format!("sy-split={pool};")), "{cookie}");
        if pool == "canary" {
            canary += 1;
        }
    }
    // 10% of 1000 is 100; 50..150 is five standard deviations either way.
    assert!((50..150).contains(&canary), "canary got {canary} of 1000");
}

#[tokio::test]
async fn rate_limit_spends_a_shared_bucket_per_client() {
    let p = example("rate-limit", r#"{"rate_per_second": 1, "burst": 3}"#).await;
    let call = |ip: &'static str| {
        let p = p.clone();
        async move {
            p.on_request(&mut request("/", &[]), &conn_from(ip), None, &open())
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        forward(call("198.51.100.7").await);
    }
    let r = respond(call("198.51.100.7").await);
    assert_eq!(r.status, 429);
    let retry = r.headers.iter().find(|(n, _)| n == "retry-after").unwrap();
    assert_eq!(retry.1, "1");
    // Another client has its own bucket.
    forward(call("198.51.100.8").await);

    // Concurrent calls run on several instances; the bucket is shared, so
    // no more than the burst (plus what one second refills) gets through.
    let p = example("rate-limit", r#"{"rate_per_second": 1, "burst": 5}"#).await;
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                p.on_request(
                    &mut request("/", &[]),
                    &conn_from("198.51.100.9"),
                    None,
                    &open(),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut allowed = 0;
    for c in calls {
        if matches!(c.await.unwrap(), HttpDecision::Forward(_)) {
            allowed += 1;
        }
    }
    assert!(
        (5..=6).contains(&allowed),
        "{allowed} of 40 got through a burst of 5"
    );
}

#[tokio::test]
async fn deny_list_forbids_paths_and_networks() {
    let cfg = r#"{"paths": ["/admin/"], "cidrs": ["203.0.113.0/24", "2001:db8::/32"]}"#;
    let p = example("deny-list", cfg).await;
    let call = |path: &'static str, ip: &'static str| {
        let p = p.clone();
        async move {
            p.on_request(&mut request(path, &[]), &conn_from(ip), None, &open())
                .await
                .unwrap()
        }
    };
    assert_eq!(
        respond(call("/admin/users", "198.51.100.1").await).status,
        403
    );
    assert_eq!(respond(call("/", "203.0.113.9").await).status, 403);
    assert_eq!(respond(call("/", "::ffff:203.0.113.9").await).status, 403);
    assert_eq!(respond(call("/", "2001:db8::1").await).status, 403);
    forward(call("/admin", "198.51.100.1").await);
    forward(call("/", "2001:db9::1").await);

    let e = load_with(
        "policies/deny-list.wasm",
        r#"{"cidrs": ["300.1.2.3/8"]}"#,
        PolicyKind::Http,
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("300.1.2.3/8"), "{e}");
}

#[tokio::test]
async fn sni_router_routes_by_server_name() {
    let cfg = r#"{"routes": {"a.test": "a", "b.test": "b", "*.c.test": "c"}}"#;
    let p = example("sni-router", cfg).await;
    let pool_for = |c: Arc<ConnectionInfo>| {
        let p = p.clone();
        async move {
            match p.on_connect(&c, Some("web"), &open()).await.unwrap() {
                ConnDecision::Forward { pool, .. } => pool,
                ConnDecision::Reject => panic!("rejected"),
            }
        }
    };
    assert_eq!(pool_for(with_sni("a.test")).await.as_deref(), Some("a"));
    assert_eq!(pool_for(with_sni("b.test")).await.as_deref(), Some("b"));
    assert_eq!(pool_for(with_sni("x.c.test")).await.as_deref(), Some("c"));
    assert_eq!(pool_for(with_sni("other.test")).await, None);
    assert_eq!(
        pool_for(conn_from("127.0.0.1")).await,
        None,
        "no TLS, no SNI"
    );
}

fn backend(name: &str, healthy: bool) -> types::Backend {
    types::Backend {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        weight: 1,
        healthy,
        in_flight: 0,
    }
}

#[tokio::test]
async fn client_hash_is_consistent_and_skips_unhealthy_backends() {
    let p = example("client-hash", "").await;
    let dir = |healthy_b: bool| -> Arc<dyn Directory> {
        let backends = vec![
            backend("a", true),
            backend("b", healthy_b),
            backend("c", true),
        ];
        Arc::new(StaticDirectory::new(BTreeMap::from([(
            "web".to_string(),
            backends,
        )])))
    };
    let pick = |ip: String, d: Arc<dyn Directory>| {
        let p = p.clone();
        async move {
            match p
                .on_connect(&conn_from(&ip), Some("web"), &d)
                .await
                .unwrap()
            {
                ConnDecision::Forward { backend, .. } => backend.unwrap(),
                ConnDecision::Reject => panic!("rejected"),
            }
        }
    };
    let all = dir(true);
    let mut before = Vec::new();
    for i in 0..60 {
        let ip = format!("10.1.{}.{}", i / 7, i);
        let b = pick(ip.clone(), all.clone()).await;
        assert_eq!(
            b,
            pick(ip.clone(), all.clone()).await,
            "same client, same backend"
        );
        before.push((ip, b));
    }
    let used: std::collections::BTreeSet<_> = before.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(used.len(), 3, "60 clients spread over all three backends");

    // b goes unhealthy: its clients move, nobody else's do.
    let without_b = dir(false);
    for (ip, was) in before {
        let now = pick(ip, without_b.clone()).await;
        assert_ne!(now, "b");
        if was != "b" {
            assert_eq!(now, was, "a client of a healthy backend moved");
        }
    }
}

// ------------------------------------------------------------------ limits

fn limits(timeout_ms: u64, memory_mb: usize) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        memory_bytes: memory_mb << 20,
        ..Limits::default()
    }
}

#[tokio::test]
async fn an_infinite_loop_ends_as_a_timeout_and_the_policy_keeps_serving() {
    let p = misbehave(limits(10, 32)).await;
    let started = Instant::now();
    let e = p
        .on_request(
            &mut request("/loop", &[]),
            &conn_from("127.0.0.1"),
            None,
            &open(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, PolicyError::Timeout(_)), "{e}");
    assert_eq!(e.outcome(), "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    forward(decide(&p, "/", &[]).await);
}

#[tokio::test]
async fn a_sleep_through_wasi_ends_at_the_deadline() {
    // The epoch interrupts wasm code only; a guest blocked in
    // `wasi:io/poll` is stopped by the call's timer.
    let p = misbehave(limits(50, 32)).await;
    let (r, took) = p
        .on_request_timed(
            &mut request("/sleep?3000", &[]),
            &conn_from("127.0.0.1"),
            None,
            &open(),
        )
        .await;
    let e = r.unwrap_err();
    assert!(
        matches!(e, PolicyError::Timeout(d) if d == Duration::from_millis(50)),
        "{e}"
    );
    assert!(took >= Duration::from_millis(50), "cut at {took:?}");
    assert!(took < Duration::from_millis(75), "cut at {took:?}");
    // The instance that slept is dropped; the policy keeps serving.
    forward(decide(&p, "/", &[]).await);
    // A sleep within the deadline is allowed to finish.
    assert_eq!(body(decide(&p, "/sleep?5", &[]).await), "slept 5 ms");
}

#[tokio::test]
async fn the_wall_clock_cap_bounds_a_call_whatever_its_deadline() {
    let p = misbehave(Limits {
        timeout: Duration::from_secs(5),
        max_call_wall: Duration::from_millis(40),
        ..Limits::default()
    })
    .await;
    let started = Instant::now();
    let e = p
        .on_request(
            &mut request("/sleep?3000", &[]),
            &conn_from("127.0.0.1"),
            None,
            &open(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, PolicyError::Timeout(d) if d == Duration::from_millis(40)),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn calls_past_the_budget_queue_then_fail_as_overloaded() {
    let p = misbehave(Limits {
        timeout: Duration::from_secs(2),
        max_instances: 2,
        max_idle: 2,
        max_queued: 2,
        queue_timeout: Duration::from_millis(100),
        ..Limits::default()
    })
    .await;
    // Two calls hold both instances for 400 ms; two more wait in the
    // queue and give up after 100 ms; the fifth is refused at once.
    let call = |path: &'static str| {
        let p = p.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = p
                .on_request(
                    &mut request(path, &[]),
                    &conn_from("127.0.0.1"),
                    None,
                    &open(),
                )
                .await;
            (r.map(drop), started.elapsed())
        })
    };
    let holders = [call("/sleep?400"), call("/sleep?400")];
    switchyard_tests::wait_until(
        "two calls hold both instances",
        Duration::from_secs(5),
        || p.calls_in_progress() == 2,
    )
    .await;
    let queued = [call("/count"), call("/count")];
    switchyard_tests::wait_until("two calls queue", Duration::from_millis(80), || {
        p.calls_queued() == 2
    })
    .await;
    let (refused, took) = call("/count").await.unwrap();
    assert!(
        matches!(refused, Err(PolicyError::Overloaded(2))),
        "{refused:?}"
    );
    assert!(took < Duration::from_millis(20), "refused after {took:?}");
    for q in queued {
        let (r, took) = q.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.outcome(), "overloaded", "{e}");
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(300),
            "{took:?}"
        );
    }
    for h in holders {
        assert!(h.await.unwrap().0.is_ok());
    }
    assert!(p.live_instances() <= 2);
    assert_eq!(
        p.stats
            .overloaded
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn a_million_distinct_keys_evict_the_oldest_and_never_fill_the_store() {
    // An engine of its own: its KV namespaces hold 1,000 entries.
    let engine = PolicyEngine::new(&EngineSettings {
        kv: switchyard::policy::kv::KvLimits {
            max_entries: 1_000,
            max_bytes: 1 << 20,
        },
        ..EngineSettings::default()
    })
    .unwrap();
    let path = wasm_file("tests/fixtures/wasm/misbehave.wasm");
    let p = engine
        .load_bytes(
            &path,
            std::fs::read(&path).unwrap(),
            String::new(),
            Some(PolicyKind::Http),
            limits(10_000, 32),
            open(),
        )
        .await
        .unwrap();
    // 100 calls of 10,000 new keys each: a million distinct keys, as a
    // rate limiter keyed by a spoofed source address would see them.
    for round in 0..100 {
        let d = decide(&p, &format!("/kv-fill?{round}"), &[]).await;
        assert_eq!(body(d), "true", "round {round}: the newest key reads back");
    }
    let evicted: u64 = engine.kv.evictions().iter().map(|(_, n)| n).sum();
    assert_eq!(
        evicted,
        1_000_000 - 1_000,
        "every key past the cap evicted one"
    );
}

#[tokio::test]
async fn a_memory_hog_hits_the_cap_and_the_policy_keeps_serving() {
    // A generous deadline, so that the memory cap is what stops it.
    let p = misbehave(limits(5_000, 16)).await;
    let e = p
        .on_request(
            &mut request("/hog", &[]),
            &conn_from("127.0.0.1"),
            None,
            &open(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, PolicyError::Memory(16)), "{e}");
    forward(decide(&p, "/", &[]).await);
}

#[tokio::test]
async fn a_panic_is_a_trap_and_the_instance_is_replaced() {
    let p = misbehave(roomy()).await;
    // The load check left one warm instance that has served one call.
    assert_eq!(
        body(decide(&p, "/count", &[]).await),
        "2",
        "the warm instance is reused"
    );
    let e = p
        .on_request(
            &mut request("/panic", &[]),
            &conn_from("127.0.0.1"),
            None,
            &open(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, PolicyError::Trap(_)), "{e}");
    assert!(e.to_string().contains("misbehave asked to panic"), "{e}");
    assert_eq!(e.outcome(), "trap");
    assert_eq!(
        body(decide(&p, "/count", &[]).await),
        "1",
        "a fresh instance after the trap"
    );
    assert_eq!(body(decide(&p, "/count", &[]).await), "2");
    assert_eq!(p.stats.errors.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_lent_request_comes_back_whatever_the_call_did() {
    let p = misbehave(limits(50, 16)).await;
    for path in [
        "/",
        "/count",
        "/loop",
        "/hog",
        "/panic",
        "/bad-pool",
        "/crlf",
    ] {
        let mut req = request(path, &[("x-keep", "1"), ("x-keep", "2")]);
        let r = p
            .on_request(&mut req, &conn_from("127.0.0.1"), None, &open())
            .await;
        assert_eq!(req.uri.path(), path, "{path}: {r:?}");
        assert_eq!(req.headers.get_all("x-keep").iter().count(), 2, "{path}");
        assert_eq!(req.authority.as_ref().unwrap(), "example.test", "{path}");
        assert_eq!(req.method, "GET", "{path}");
    }
}

#[tokio::test]
async fn a_policy_reads_each_part_of_the_request_on_demand() {
    let p = misbehave(roomy()).await;
    let mut req = RequestView::build(
        "POST",
        "/echo?a=1",
        &[
            ("host", "ex.test:8080"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("cookie", "a=b; id=7"),
        ],
    )
    .unwrap();
    // Not UTF-8: shown with a replacement character.
    req.headers.insert(
        "x-probe",
        http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
    );
    req.scheme = "https";
    req.version = http::Version::HTTP_2;
    let d = p
        .on_request(&mut req, &conn_from("::ffff:192.0.2.9"), None, &open())
        .await
        .unwrap();
    assert_eq!(
        body(d),
        "method=POST scheme=https authority=ex.test:8080 path=/echo query=a=1 version=2 \
         probe=caf\u{FFFD} PROBE=caf\u{FFFD} multi=1|2 cookie=7 headers=5 \
         client=192.0.2.9 local-port=8080 listener=test pool=web transport=tcp"
    );
}

#[tokio::test]
async fn instances_are_recycled_after_max_calls() {
    let p = misbehave(Limits {
        max_calls: 3,
        ..roomy()
    })
    .await;
    assert_eq!(body(decide(&p, "/count", &[]).await), "2");
    assert_eq!(body(decide(&p, "/count", &[]).await), "3");
    assert_eq!(
        body(decide(&p, "/count", &[]).await),
        "1",
        "recycled after 3 calls"
    );
}

#[tokio::test]
async fn invalid_decisions_are_typed_errors() {
    let p = misbehave(roomy()).await;
    let dir: Arc<dyn Directory> = Arc::new(StaticDirectory::new(BTreeMap::from([(
        "web".to_string(),
        vec![backend("b1", true)],
    )])));
    for (path, want) in [
        ("/bad-backend", "no backend named \"no-such-backend\""),
        ("/bad-pool", "no pool named \"no-such-pool\""),
        ("/crlf", "x-injected"),
        ("/framing", "content-length"),
    ] {
        let e = p
            .on_request(
                &mut request(path, &[]),
                &conn_from("127.0.0.1"),
                Some("web"),
                &dir,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, PolicyError::InvalidDecision(_)), "{path}: {e}");
        assert!(e.to_string().contains(want), "{path}: {e}");
    }
    forward(
        p.on_request(
            &mut request("/", &[]),
            &conn_from("127.0.0.1"),
            Some("web"),
            &dir,
        )
        .await
        .unwrap(),
    );
}

// --------------------------------------------------------------- bad files

async fn refused(file_name: &str, bytes: Vec<u8>, config: &str, kind: PolicyKind) -> String {
    let dir = std::env::temp_dir().join(format!("switchyard-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file_name);
    let e = ENGINE
        .load_bytes(
            &path,
            bytes,
            config.into(),
            Some(kind),
            Limits::default(),
            open(),
        )
        .await
        .expect_err("a bad file must be refused");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&path.display().to_string()),
        "names the file: {msg}"
    );
    msg
}

#[tokio::test]
async fn bad_files_are_refused_with_the_file_and_the_reason() {
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let e = refused("junk.wasm", junk, "", PolicyKind::Http).await;
    assert!(e.contains("not a WebAssembly binary"), "{e}");

    let core = b"\0asm\x01\0\0\0".to_vec();
    let e = refused("core.wasm", core, "", PolicyKind::Http).await;
    assert!(
        e.contains("core WebAssembly module, not a component"),
        "{e}"
    );

    let mut truncated = std::fs::read(wasm_file("policies/path-router.wasm")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let e = refused("half.wasm", truncated, PATH_ROUTER, PolicyKind::Http).await;
    assert!(e.contains("does not compile"), "{e}");

    let sni = std::fs::read(wasm_file("policies/sni-router.wasm")).unwrap();
    let e = refused("sni.wasm", sni, "{\"routes\": {}}", PolicyKind::Http).await;
    assert!(
        e.contains("does not implement the world switchyard:policy/http-policy"),
        "{e}"
    );

    // A component built against an older WIT package: it imports
    // `switchyard:policy/log@0.1.0` (an empty instance type; hand-encoded:
    // preamble, a type section with one empty instance type, an import
    // section with that one import).
    let name = b"switchyard:policy/log@0.1.0";
    let mut old = b"\0asm\x0d\0\x01\0".to_vec();
    old.extend_from_slice(&[0x07, 0x03, 0x01, 0x42, 0x00]);
    old.extend_from_slice(&[0x0a, (name.len() + 5) as u8, 0x01, 0x00, name.len() as u8]);
    old.extend_from_slice(name);
    old.extend_from_slice(&[0x05, 0x00]);
    let e = refused("old.wasm", old, "", PolicyKind::Http).await;
    assert!(
        e.contains("built against switchyard:policy@0.1.0")
            && e.contains(&format!(
                "implements switchyard:policy@{}",
                switchyard::policy::WIT_VERSION
            )),
        "{e}"
    );

    let http = std::fs::read(wasm_file("policies/path-router.wasm")).unwrap();
    let e = refused("router.wasm", http, PATH_ROUTER, PolicyKind::Connection).await;
    assert!(e.contains("switchyard:policy/connection-policy"), "{e}");

    let m = std::fs::read(wasm_file("tests/fixtures/wasm/misbehave.wasm")).unwrap();
    let e = refused(
        "failing-init.wasm",
        m.clone(),
        "fail-init",
        PolicyKind::Http,
    )
    .await;
    assert!(
        e.contains("init refused its config: config asked init to fail"),
        "{e}"
    );

    let started = Instant::now();
    let e = refused("looping-init.wasm", m, "loop-init", PolicyKind::Http).await;
    assert!(e.contains("deadline"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
