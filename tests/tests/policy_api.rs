//! `switchyard:policy@0.3.0`'s additions, through a real listener: the
//! per-request context, carried from `on-request` to the response hook
//! whichever pooled instance serves each; a response hook that replaces
//! the upstream response (the `error-pages` example).

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_tests::*;

fn misbehave_in_front_of_web() -> String {
    format!(
        r#"
[policies]
dir = "{}"
instances = 4
max_instances = 4
timeout_ms = 500
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
"#,
        repo().join("tests/fixtures/wasm").display()
    )
}

/// 64 requests at once, each with its own context, over four instances:
/// each response hook sees its own request's context, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_response_hook_gets_its_own_requests_context() {
    let h = Harness::start(&misbehave_in_front_of_web(), &["web"]).await;
    let addr = h.addr("l");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64 {
        let c = h.client.clone();
        calls.spawn(async move {
            let got = get(&c, addr, &format!("/context?req-{i}"), &[]).await;
            (i, got)
        });
    }
    let mut seen = 0;
    while let Some(r) = calls.join_next().await {
        let (i, got) = r.unwrap();
        assert_eq!(got.status, 200, "{i}");
        assert_eq!(got.headers["x-context"], format!("req-{i}").as_str());
        seen += 1;
    }
    assert_eq!(seen, 64);
    let p = &h.sy.policies()[0];
    assert!(
        p.stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "served by one instance only: the test shows nothing"
    );
}

/// A context over 512 bytes is an invalid decision: refused before
/// anything reaches the backend.
#[tokio::test]
async fn a_context_over_its_cap_is_refused() {
    let h = Harness::start(&misbehave_in_front_of_web(), &["web"]).await;
    let at_cap = "x".repeat(512);
    let got = h.get("l", &format!("/context?{at_cap}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["x-context"].len(), 512);
    let over = "x".repeat(513);
    let got = h.get("l", &format!("/context?{over}")).await;
    assert_eq!(got.status, 503);
    assert_eq!(
        h.backend("web").seen().len(),
        1,
        "the refused one never left"
    );
    wait_until(
        "the refusal is the policy's error",
        Duration::from_secs(5),
        || {
            h.sy.policies()[0]
                .stats
                .last_error
                .lock()
                .unwrap()
                .as_deref()
                .is_some_and(|e| e.contains("a context of 513 bytes, over 512"))
        },
    )
    .await;
}

/// `error-pages` with its config from the issue: the listed statuses get
/// the configured page with the backend's status, anything else goes
/// through as the backend sent it.
#[tokio::test]
async fn error_pages_replaces_the_listed_statuses_and_passes_the_rest() {
    let backends = vec![
        TestBackend::failing("b502", 502).await,
        TestBackend::failing("b503", 503).await,
        TestBackend::failing("b500", 500).await,
        TestBackend::start("ok").await,
    ];
    let mut toml = "[policies]\ndir = \"{policies}\"\n".to_string();
    for b in ["b502", "b503", "b500", "ok"] {
        toml.push_str(&format!(
            "[pools.{b}]\nbackends = [\"{{{b}}}\"]\n[listeners.{b}]\nprotocol = \"http\"\n\
             bind = \"127.0.0.1:0\"\npool = \"{b}\"\npolicy = \"error-pages\"\n"
        ));
    }
    let h = Harness::with(&toml, backends).await;
    let got = h.get("b502", "/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["content-type"], "text/html");
    assert_eq!(got.text(), "<h1>We'll be right back</h1>");
    let got = h.get("b503", "/").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.text(), "<h1>Busy, try again soon</h1>");
    // Not listed: the backend's own answer.
    let got = h.get("b500", "/").await;
    assert_eq!(got.status, 500);
    assert_ne!(got.text(), "<h1>We'll be right back</h1>");
    assert_eq!(got.text(), h.backend("b500").name.as_str());
    let got = h.get("ok", "/").await;
    assert_eq!((got.status.as_u16(), got.text()), (200, "ok".to_owned()));
    // Every request went to its backend; the hook ran once for each.
    for b in ["b502", "b503", "b500", "ok"] {
        assert_eq!(h.backend(b).seen().len(), 1, "{b}");
    }
    let calls = h.sy.policies()[0].stats.calls();
    assert_eq!(calls, 8, "on-request and on-response per request");
}

/// The log hook's summary of the last request, as the `log-hook` fixture
/// keeps it, once it is there: the hook runs after the response.
async fn last_log(h: &Harness, listener: &str, want: &str) -> Vec<String> {
    let mut last = String::new();
    for _ in 0..500 {
        last = h.get(listener, "/read-log").await.text();
        if last.starts_with(want) {
            return last.split(' ').map(str::to_owned).collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no summary starting {want:?} within 5 s; last: {last:?}");
}

/// `on-log` learns how each request ended, after its response: status,
/// pool and backend, outcome, body bytes each way and the context.
#[tokio::test]
async fn the_log_hook_learns_how_each_request_ended() {
    let backends = vec![
        TestBackend::start("web").await,
        TestBackend::failing("down", 503).await,
    ];
    let mut toml = format!(
        "[policies]\ndir = \"{}\"\n",
        repo().join("tests/fixtures/wasm").display()
    );
    for b in ["web", "down"] {
        toml.push_str(&format!(
            "[pools.{b}]\nbackends = [\"{{{b}}}\"]\n[listeners.{b}]\nprotocol = \"http\"\n\
             bind = \"127.0.0.1:0\"\npool = \"{b}\"\npolicy = \"log-hook\"\n"
        ));
    }
    let h = Harness::with(&toml, backends).await;

    assert_eq!(h.get("web", "/hello").await.text(), "web");
    let s = last_log(&h, "web", "/hello ").await;
    let backend = h.backend("web").addr.to_string();
    assert_eq!(
        s,
        [
            "/hello", "200", "web", &backend, "ok", "0", "3", "upstream", "total"
        ]
    );

    // A body each way: 1,000 bytes up, echoed back.
    let req = http::Request::post(format!("http://{}/echo", h.addr("web")))
        .body(streamed(pattern(1000), 100))
        .unwrap();
    let got = send(&h.client, req).await;
    assert_eq!(got.body.len(), 1000);
    let s = last_log(&h, "web", "/echo ").await;
    assert_eq!(
        (s[4].as_str(), s[5].as_str(), s[6].as_str()),
        ("ok", "1000", "1000")
    );

    // The backend's 503 is what the client got.
    assert_eq!(h.get("down", "/x").await.status, 503);
    let s = last_log(&h, "down", "/x ").await;
    assert_eq!((s[1].as_str(), s[2].as_str()), ("503", "down"));

    // A client that goes away in the middle of a large response.
    let mut raw = tokio::net::TcpStream::connect(h.addr("web")).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"GET /bytes/30000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(n > 0);
    drop(raw);
    let s = last_log(&h, "web", "/bytes/30000000 ").await;
    assert_eq!(s[4], "client-abort", "{s:?}");
    let sent: u64 = s[6].parse().unwrap();
    assert!(sent < 30_000_000, "{sent}");
}

/// A policy's own metrics (defined in `init`, updated from `on-request`
/// and `on-log`) are on the admin listener as
/// `switchyard_policy_<policy>_<name>`, capped at 100 label sets a
/// metric, and gone once no listener names the policy.
#[tokio::test]
async fn a_policys_own_metrics_are_exported_capped_and_dropped_with_it() {
    let config = |policy: &str| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[policies]\ndir = \"{}\"\n[pools.web]\nbackends = [\"{{web}}\"]\n\
             [listeners.web]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{policy}",
            repo().join("tests/fixtures/wasm").display()
        )
    };
    let h = Harness::start(&config("policy = \"log-hook\"\n"), &["web"]).await;
    for path in ["/hello", "/hello", "/api/x"] {
        assert_eq!(h.get("web", path).await.status, 200);
    }
    let requests = "switchyard_policy_log_hook_requests_total";
    assert_eq!(h.metric(requests, "route=\"hello\"").await, 2.0);
    assert_eq!(h.metric(requests, "route=\"api\"").await, 1.0);
    // Observed by the log hook, after each response.
    h.wait_for_metric(
        "switchyard_policy_log_hook_response_bytes_count",
        "",
        3.0,
        Duration::from_secs(5),
    )
    .await;

    // The load-time smoke call (`GET /`) counted too: route "".
    assert_eq!(h.metric(requests, "route=\"\"").await, 1.0);
    // 120 more routes: 97 fit beside "", hello and api; 23 count as other.
    for i in 0..120 {
        assert_eq!(h.get("web", &format!("/r{i}")).await.status, 200);
    }
    assert_eq!(h.metric(requests, "route=\"other\"").await, 23.0);
    assert_eq!(h.metric(requests, "route=\"r96\"").await, 1.0);
    assert_eq!(h.metric(requests, "route=\"r97\"").await, 0.0);
    assert_eq!(h.metric(requests, "").await, 124.0);

    // The listener stops naming the policy: its metrics go.
    let text = fill(
        &config(""),
        &BTreeMap::from([("web", h.backend("web").addr)]),
    )
    .replace("{policies}", "");
    let new =
        switchyard::config::Config::parse(std::path::Path::new("/tmp/sy.toml"), &text).unwrap();
    h.sy.reload(new).await.expect("the reload is accepted");
    let admin = h.sy.admin_addr.unwrap();
    let text = get(&h.client, admin, "/metrics", &[]).await.text();
    assert!(!text.contains("switchyard_policy_log_hook_"), "{text}");
}

/// `latency-aware`: after a few samples, the backend that answers 30 ms
/// late gets little more than its exploration share, where round robin
/// would give it a quarter. It is listed first: a policy that learned
/// nothing (every backend without a sample ties) would send it nearly
/// everything.
#[tokio::test]
async fn latency_aware_learns_to_avoid_the_slow_backend() {
    let slow_served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = slow_served.clone();
    let slow = RawBackend::start(move |mut s| {
        let counter = counter.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 4096];
            loop {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Paces this backend's answers: it is the slow one.
                tokio::time::sleep(Duration::from_millis(30)).await;
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let fast = [
        TestBackend::start("f1").await,
        TestBackend::start("f2").await,
        TestBackend::start("f3").await,
    ];
    let toml = format!(
        "[policies]\ndir = \"{{policies}}\"\n[pools.web]\nbackends = [\"{}\", \"{}\", \"{}\", \"{}\"]\n\
         [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"latency-aware\"\n",
        slow.addr, fast[0].addr, fast[1].addr, fast[2].addr
    );
    let sy = start_switchyard(&toml, &BTreeMap::new()).await;
    let c = client(false);
    let n = 300;
    for _ in 0..n {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    }
    let to_slow = slow_served.load(std::sync::atomic::Ordering::Relaxed);
    let to_fast: usize = fast.iter().map(|b| b.seen().len()).sum();
    eprintln!("latency-aware: slow backend {to_slow} of {n}, fast ones {to_fast}");
    assert_eq!(to_slow + to_fast, n);
    // Exploration alone sends it ~2.5% (10% at random over four); round
    // robin would send 25%.
    assert!(to_slow < n / 10, "the slow backend got {to_slow} of {n}");
    assert!(
        fast.iter().all(|b| !b.seen().is_empty()),
        "every fast backend is used"
    );
}

/// `retry-5xx` with the issue's config: a GET answered 503 by one backend
/// is sent once more, to the other, and the client gets its 200; a POST
/// (not idempotent) gets the 503 as it came.
#[tokio::test]
async fn retry_5xx_resends_an_idempotent_request_once_on_another_backend() {
    let backends = vec![
        TestBackend::failing("down", 503).await,
        TestBackend::start("up").await,
    ];
    let toml = "[policies]\ndir = \"{policies}\"\n[pools.web]\nbackends = [\"{down}\", \"{up}\"]\n\
                [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"retry-5xx\"\n";
    let h = Harness::with(toml, backends).await;
    for i in 0..10 {
        let got = h.get("l", &format!("/get-{i}")).await;
        assert_eq!(
            (got.status.as_u16(), got.text()),
            (200, "up".to_owned()),
            "{i}"
        );
    }
    let down = h.backend("down").seen().len();
    let up = h.backend("up").seen().len();
    assert!(
        down >= 3,
        "round robin sent the failing backend {down} of 10"
    );
    assert_eq!(up, 10, "every request ended at the healthy backend");
    // A POST is not resent: whoever answered, the client gets it.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&h.client, h.addr("l"), "/post").await.status.as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    let posts_down = h
        .backend("down")
        .seen()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    let posts_up = h
        .backend("up")
        .seen()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts_down + posts_up, 4, "no POST was sent twice");
}
