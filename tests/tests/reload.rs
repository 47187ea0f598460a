//! Hot reload under live traffic: policy files swapped, broken, removed;
//! configuration changed; nothing in flight is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use sha2::{Digest, Sha256};
use switchyard_tests::*;

const ROUTE_API: &str = r#"{"routes": [{"prefix": "/api/", "pool": "api"}]}"#;
const ROUTE_IMAGES: &str = r#"{"routes": [{"prefix": "/api/", "pool": "images"}]}"#;

// The policy deadline is raised from 10 ms: these tests check that swaps
// lose nothing, and in a debug build on 2 busy cores a call that waits
// for a fresh instance can pass 10 ms (a timeout falls back to `web`,
// which would count as misrouted). Deadlines have their own tests.
const CONFIG: &str = r#"
[policies]
dir = "policies"
timeout_ms = 100
[pools.web]
backends = ["{web}"]
[pools.api]
backends = ["{api}"]
[pools.images]
backends = ["{images}"]
[listeners.public]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "path-router"
"#;

struct Setup {
    dir: std::path::PathBuf,
    _backends: Vec<TestBackend>,
    sy: switchyard::daemon::Running,
}

async fn setup(tag: &str) -> Setup {
    setup_with(tag, false).await
}

async fn setup_with(tag: &str, strict_policies: bool) -> Setup {
    let dir = temp_dir(tag);
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        repo().join("policies/path-router.wasm"),
        policies.join("path-router.wasm"),
    )
    .expect("run `cargo xtask build-policies` first");
    std::fs::write(policies.join("path-router.json"), ROUTE_API).unwrap();
    let (web, api, images) = (
        TestBackend::start("web").await,
        TestBackend::start("api").await,
        TestBackend::start("images").await,
    );
    let addrs = BTreeMap::from([
        ("web", web.addr),
        ("api", api.addr),
        ("images", images.addr),
    ]);
    let sy = start_watching_strict(&dir, CONFIG, &addrs, strict_policies).await;
    Setup {
        dir,
        _backends: vec![web, api, images],
        sy,
    }
}

/// Polls until `path` is answered by `want`, for at most `limit`.
async fn until_answered_by(
    sy: &switchyard::daemon::Running,
    path: &str,
    want: &str,
    limit: Duration,
) -> Duration {
    let c = client(false);
    let started = Instant::now();
    loop {
        let got = get(&c, sy.addr("public"), path, &[]).await;
        if got.text() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{path} still answered by {:?} after {limit:?}",
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_policy_config_takes_effect_within_two_seconds() {
    let s = setup("config-swap").await;
    assert_eq!(
        get(&client(false), s.sy.addr("public"), "/api/x", &[])
            .await
            .text(),
        "api"
    );
    let before = s.sy.policy_version("public").unwrap();
    replace_file(
        &s.dir.join("policies/path-router.json"),
        ROUTE_IMAGES.as_bytes(),
    );
    until_answered_by(&s.sy, "/api/x", "images", Duration::from_secs(2)).await;
    assert_ne!(s.sy.policy_version("public").unwrap(), before);
    s.sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn fifty_swaps_under_load_fail_no_request() {
    let s = setup("fifty").await;
    let addr = s.sy.addr("public");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        load.push(tokio::spawn(async move {
            let c = client(false);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let got = get(&c, addr, "/api/x", &[]).await;
                if got.status == 200 && (got.text() == "api" || got.text() == "images") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let json = s.dir.join("policies/path-router.json");
    for i in 0..50 {
        let text = if i % 2 == 0 { ROUTE_IMAGES } else { ROUTE_API };
        replace_file(&json, text.as_bytes());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // The last write routes /api/ to api again.
    until_answered_by(&s.sy, "/api/x", "api", Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "failed or misrouted requests"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the load loop ran");
    s.sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn broken_policy_files_leave_the_last_good_version_serving() {
    let s = setup("broken").await;
    let wasm = s.dir.join("policies/path-router.wasm");
    let good = std::fs::read(&wasm).unwrap();
    let version = s.sy.policy_version("public").unwrap();
    let junk: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let wrong_world = std::fs::read(repo().join("policies/sni-router.wasm")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("random bytes", junk, "not a WebAssembly binary"),
        (
            "a truncated copy",
            good[..good.len() / 2].to_vec(),
            "does not compile",
        ),
        (
            "a wrong-world component",
            wrong_world,
            "does not implement the world",
        ),
    ];
    for (what, bytes, reason) in cases {
        replace_file(&wasm, &bytes);
        let started = Instant::now();
        let err = loop {
            if let Some(e) = s.sy.policy_error("path-router")
                && e.contains(reason)
            {
                break e;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what} was not reported"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            err.contains("path-router.wasm"),
            "{what}: names the file: {err}"
        );
        assert_eq!(
            s.sy.policy_version("public").unwrap(),
            version,
            "{what} replaced the policy"
        );
        let got = get(&client(false), s.sy.addr("public"), "/api/x", &[]).await;
        assert_eq!(got.text(), "api", "{what}: the old version still routes");
    }
    // Removing the file keeps the last version too: once the daemon has
    // seen it gone, the old version still routes.
    std::fs::remove_file(&wasm).unwrap();
    wait_until("the removal seen", Duration::from_secs(5), || {
        s.sy.policy_missing("path-router")
    })
    .await;
    assert_eq!(
        get(&client(false), s.sy.addr("public"), "/api/x", &[])
            .await
            .text(),
        "api"
    );
    // And a good file is taken again.
    replace_file(&wasm, &good);
    replace_file(
        &s.dir.join("policies/path-router.json"),
        ROUTE_IMAGES.as_bytes(),
    );
    until_answered_by(&s.sy, "/api/x", "images", Duration::from_secs(3)).await;
    s.sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_config_reload_adds_a_backend_without_breaking_an_upload() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = temp_dir("config-reload");
    let one = r#"
[pools.web]
backends = ["{a}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
"#;
    let addrs = BTreeMap::from([("a", a.addr), ("b", b.addr)]);
    let sy = start_watching(&dir, one, &addrs).await;
    let addr = sy.addr("l");

    // A slow upload: 2 MB in 40 chunks, 25 ms apart, started before the reload.
    let data = pattern(2 * 1024 * 1024);
    let want = Sha256::digest(&data);
    let chunks: Vec<Bytes> = data
        .chunks(data.len() / 40 + 1)
        .map(Bytes::copy_from_slice)
        .collect();
    let body = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
        let c = it.next()?;
        tokio::time::sleep(Duration::from_millis(25)).await;
        Some((Ok::<_, hyper::Error>(hyper::body::Frame::data(c)), it))
    });
    let upload = tokio::spawn(async move {
        let req = Request::post(format!("http://{addr}/echo"))
            .body(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(body),
            ))
            .unwrap();
        send(&client(false), req).await
    });
    until_seen(&a, "/echo").await;

    let two = one.replace(r#"backends = ["{a}"]"#, r#"backends = ["{a}", "{b}"]"#);
    replace_file(&dir.join("switchyard.toml"), fill(&two, &addrs).as_bytes());
    let c = client(false);
    let started = Instant::now();
    loop {
        if get(&c, addr, "/", &[]).await.text() == "b" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the new backend is never used"
        );
    }
    let got = upload.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        Sha256::digest(&got.body),
        want,
        "the upload finished intact"
    );

    // A config that does not validate is refused; the running one stays.
    replace_file(
        &dir.join("switchyard.toml"),
        b"[pools.web]\nbackends = []\n",
    );
    wait_until("the bad config refused", Duration::from_secs(5), || {
        sy.configs_refused() >= 1
    })
    .await;
    assert_eq!(get(&c, addr, "/", &[]).await.status, 200);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn restarting_with_unchanged_policies_uses_the_compile_cache() {
    let dir = temp_dir("cache");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let names = [
        "path-router",
        "header-canary",
        "weighted-split",
        "rate-limit",
        "deny-list",
    ];
    let mut toml = format!(
        "[policies]\ndir = \"policies\"\ncache_dir = \"{}\"\n[pools.web]\nbackends = [\"127.0.0.1:9\"]\n",
        dir.join("cache").display()
    );
    for n in names {
        std::fs::copy(
            repo().join(format!("policies/{n}.wasm")),
            policies.join(format!("{n}.wasm")),
        )
        .unwrap();
        std::fs::copy(
            repo().join(format!("policies/{n}.json")),
            policies.join(format!("{n}.json")),
        )
        .unwrap();
        toml.push_str(&format!(
            "[listeners.{n}]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"{n}\"\n"
        ));
    }
    let first = start_watching(&dir, &toml, &BTreeMap::new()).await;
    let (hits, misses) = first.cache_stats();
    assert_eq!((hits, misses), (0, 5), "a cold cache compiles all five");
    first.shutdown(Duration::from_secs(5)).await;
    let second = start_watching(&dir, &toml, &BTreeMap::new()).await;
    assert_eq!(second.cache_stats(), (5, 0), "a restart compiles nothing");
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn with_strict_policies_a_removed_file_falls_back_to_the_pool() {
    let s = setup_with("strict", true).await;
    assert_eq!(
        get(&client(false), s.sy.addr("public"), "/api/x", &[])
            .await
            .text(),
        "api"
    );
    std::fs::remove_file(s.dir.join("policies/path-router.wasm")).unwrap();
    until_answered_by(&s.sy, "/api/x", "web", Duration::from_secs(2)).await;
    assert_eq!(s.sy.policy_version("public"), None);
    s.sy.shutdown(Duration::from_secs(5)).await;
}
