//! Edge hardening III (issue 19): policies stay within their budgets and
//! cannot starve each other, through the daemon and real sockets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchyard_tests::*;

fn fixtures() -> String {
    repo().join("tests/fixtures/wasm").display().to_string()
}

/// 2,000 concurrent requests at a policy whose budget is 8 instances:
/// never more than 8 exist (by the project's count and by wasmtime's),
/// the calls past the queue fail fast as `overloaded`, and a second policy
/// under steady load meanwhile answers every request in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_policy_stays_within_its_budget_and_spares_another() {
    let web = TestBackend::start("web").await;
    // A second key (same file, another config): a policy of its own, with
    // its own budget.
    let steady = temp_dir("steady").join("steady.json");
    std::fs::write(&steady, "{}").unwrap();
    let text = format!(
        r#"
[policies]
dir = "{fixtures}"
timeout_ms = 500
max_instances = 8
instances = 4
max_queued = 64
queue_timeout_ms = 100
[pools.web]
backends = ["{{web}}"]
[listeners.flooded]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
http2_max_concurrent_streams = 2000
[listeners.steady]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
policy_config = "{steady}"
"#,
        fixtures = fixtures(),
        steady = steady.display()
    );
    let sy = Arc::new(start_switchyard(&text, &BTreeMap::from([("web", web.addr)])).await);
    let flooded_addr = sy.addr("flooded");
    let steady_addr = sy.addr("steady");
    let policies = sy.policies();
    assert_eq!(policies.len(), 2);
    // The flooded one is the key without policy_config: the one whose
    // counters the flood moves; find it after the flood by its calls.

    // Sample both counts while the flood runs.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sy, done, policies) = (sy.clone(), done.clone(), policies.clone());
        tokio::spawn(async move {
            let (mut most_live, mut most_wasm) = (0usize, 0u64);
            while !done.load(Ordering::Relaxed) {
                let live: Vec<usize> = policies.iter().map(|p| p.live_instances()).collect();
                most_live = most_live.max(*live.iter().max().unwrap());
                let (wasm, _, _) = sy.wasm_pool_usage().expect("a pooling engine");
                // wasmtime counts both policies' instances.
                most_wasm = most_wasm.max(wasm);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (most_live, most_wasm)
        })
    };

    // Steady: one request at a time to the other policy.
    let steady = {
        let done = done.clone();
        tokio::spawn(async move {
            let c = client(false);
            let mut times = Vec::new();
            let mut errors = 0;
            while !done.load(Ordering::Relaxed) && times.len() < 2_000 {
                let started = Instant::now();
                let got = get(&c, steady_addr, "/count", &[]).await;
                times.push(started.elapsed());
                if got.status != 200 {
                    errors += 1;
                }
            }
            (times, errors)
        })
    };

    // The flood: 2,000 concurrent streams on one HTTP/2 connection, each
    // holding an instance for 20 ms.
    let c = client(true);
    let flood: Vec<_> = (0..2_000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let got = get(&c, flooded_addr, "/sleep?20", &[]).await;
                (got.status.as_u16(), started.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = Vec::new();
    for f in flood {
        match f.await.unwrap() {
            (200, _) => ok += 1,
            (503, took) => refused.push(took),
            (other, _) => panic!("a flooded call answered {other}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    let (most_live, most_wasm) = sampler.await.unwrap();
    let (times, steady_errors) = steady.await.unwrap();

    let flooded = policies.iter().max_by_key(|p| p.stats.calls()).unwrap();
    let other = policies.iter().min_by_key(|p| p.stats.calls()).unwrap();
    let overloaded = flooded.stats.overloaded.load(Ordering::Relaxed);
    eprintln!(
        "flood: {ok} answered, {} refused ({overloaded} overloaded); most live {most_live}, \
         most in wasmtime's pool {most_wasm}; steady: {} calls",
        refused.len(),
        times.len()
    );
    assert!(ok >= 8, "the budget still serves: {ok} answered");
    assert!(overloaded > 0 && refused.len() as u64 == overloaded);
    assert!(
        most_live <= 8,
        "{most_live} instances of one policy at once"
    );
    // wasmtime's count holds both policies: the flooded one's 8 at most and
    // the steady one's, which a sequential client keeps to its 1 warm.
    let steady_instances = other.live_instances() as u64;
    assert!(
        most_wasm <= 8 + steady_instances.max(1),
        "wasmtime counted {most_wasm} instances"
    );
    // A call that cannot be queued fails at once; one that waits in the
    // queue fails by queue_timeout_ms (100 ms). The bound is end to end,
    // through 2,000 HTTP/2 streams of a debug build sharing two cores with
    // the other tests: 1 s. The median shows the queue's own bound.
    let mut refused_sorted = refused.clone();
    refused_sorted.sort();
    let slowest = refused_sorted.last().unwrap();
    let median = refused_sorted[refused_sorted.len() / 2];
    eprintln!("overloaded answers: median {median:?}, slowest {slowest:?}");
    assert!(
        *slowest < Duration::from_secs(1),
        "an overloaded call took {slowest:?}"
    );
    // The other policy never noticed: no errors, p99 under 500 ms (debug
    // build, two shared cores; the flood's own requests wait up to 1 s).
    assert_eq!(steady_errors, 0, "the steady policy failed calls");
    assert!(times.len() >= 10, "only {} steady calls", times.len());
    let mut sorted = times.clone();
    sorted.sort();
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    eprintln!("steady p99 {p99:?}");
    assert!(p99 < Duration::from_millis(500), "steady p99 {p99:?}");
    Arc::try_unwrap(sy)
        .ok()
        .expect("no other handle")
        .shutdown(Duration::from_secs(5))
        .await;
}

/// A policy that sleeps through WASI is cut off at its deadline, and a
/// configuration reload made while it sleeps completes at once.
#[tokio::test]
async fn a_wasi_sleep_is_cut_at_the_deadline_and_does_not_stall_reloads() {
    let web = TestBackend::start("web").await;
    let config = |timeout_ms: u64| {
        format!(
            r#"
[policies]
dir = "{fixtures}"
timeout_ms = {timeout_ms}
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
"#,
            fixtures = fixtures()
        )
    };
    let addrs = BTreeMap::from([("web", web.addr)]);
    let sy = start_switchyard(&config(300), &addrs).await;
    let addr = sy.addr("l");
    let old_policy = sy.policies()[0].clone();
    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let got = get(&client(false), addr, "/sleep?3000", &[]).await;
        (got.status, started.elapsed())
    });
    wait_until(
        "the request's policy call sleeps",
        Duration::from_secs(5),
        || old_policy.calls_in_progress() == 1,
    )
    .await;
    // The reload gives the listener another policy config: a new policy
    // key, so it compiles, instantiates and smoke-tests a policy while the
    // request's call sleeps.
    let other = temp_dir("sleep-reload").join("other.json");
    std::fs::write(&other, "{}").unwrap();
    let text = fill(&config(300), &addrs).replace(
        "policy = \"misbehave\"",
        &format!(
            "policy = \"misbehave\"\npolicy_config = \"{}\"",
            other.display()
        ),
    );
    let new =
        switchyard::config::Config::parse(std::path::Path::new("/tmp/sy.toml"), &text).unwrap();
    let started = Instant::now();
    sy.reload(new).await.expect("the reload is accepted");
    let reload = started.elapsed();
    let (status, took) = sleeper.await.unwrap();
    eprintln!("reload took {reload:?}; the sleeping request ended after {took:?}");
    assert!(
        reload < Duration::from_millis(250),
        "the reload waited {reload:?} for a sleeping policy"
    );
    assert_ne!(sy.policy_version("l"), None);
    assert_eq!(status, 503, "a timed-out policy fails closed");
    assert!(took >= Duration::from_millis(300), "cut at {took:?}");
    assert!(took < Duration::from_millis(600), "cut at {took:?}");
    // The version that slept is the one the reload replaced.
    let p = &old_policy;
    assert!(
        p.stats
            .last_error
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|e| e.contains("deadline")),
        "{:?}",
        p.stats.last_error.lock().unwrap()
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A decision with 100,000 header operations is an invalid decision: the
/// request fails closed and the process serves the next one.
#[tokio::test]
async fn a_decision_with_100000_header_operations_is_refused() {
    let web = TestBackend::start("web").await;
    let text = one_http_pool(
        &format!("[policies]\ndir = \"{}\"\ntimeout_ms = 2000\n", fixtures()),
        "",
        "policy = \"misbehave\"",
    );
    let sy = start_switchyard(&text, &BTreeMap::from([("web", web.addr)])).await;
    let c = client(false);
    let got = get(&c, sy.addr("l"), "/many-headers", &[]).await;
    assert_eq!(got.status, 503);
    assert!(got.headers.get("x-many").is_none());
    let err = sy.policies()[0].stats.last_error.lock().unwrap().clone();
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("invalid decision") && e.contains("header operations")),
        "{err:?}"
    );
    assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    sy.shutdown(Duration::from_secs(5)).await;
}

fn policy_dir_with_misbehave(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    std::fs::copy(
        repo().join("tests/fixtures/wasm/misbehave.wasm"),
        dir.join("misbehave.wasm"),
    )
    .unwrap();
    dir
}

async fn check_policy_dir(dir: &std::path::Path) -> Result<(), Vec<String>> {
    let cfg = dir.join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[policies]\ndir = \"{}\"\ncache = false\n[pools.web]\nbackends = [\"127.0.0.1:9\"]\n\
             [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"misbehave\"\n",
            dir.display()
        ),
    )
    .unwrap();
    switchyard::cli::check(&cfg).await
}

#[tokio::test]
async fn policy_files_that_leave_the_directory_are_refused_by_name() {
    // A config symlinked to a file outside `dir` (a stand-in for a TLS
    // key) would be handed to the guest's init, which can echo it back.
    let secret = temp_dir("secret").join("key.pem");
    std::fs::write(&secret, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let dir = policy_dir_with_misbehave("escape");
    std::os::unix::fs::symlink(&secret, dir.join("misbehave.json")).unwrap();
    let problems = check_policy_dir(&dir).await.unwrap_err().join("\n");
    assert!(
        problems.contains(&dir.join("misbehave.json").display().to_string()),
        "{problems}"
    );
    assert!(
        problems.contains("outside the policy directory"),
        "{problems}"
    );

    // Symlinks that stay inside the directory, as Kubernetes' ConfigMap
    // volumes make them, are fine.
    let dir = policy_dir_with_misbehave("inside");
    std::fs::create_dir(dir.join("..data")).unwrap();
    std::fs::rename(
        dir.join("misbehave.wasm"),
        dir.join("..data/misbehave.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join("..data/misbehave.json"), "{}").unwrap();
    std::os::unix::fs::symlink("..data/misbehave.wasm", dir.join("misbehave.wasm")).unwrap();
    std::os::unix::fs::symlink("..data/misbehave.json", dir.join("misbehave.json")).unwrap();
    check_policy_dir(&dir)
        .await
        .expect("symlinks within dir load");

    // A FIFO inside the directory is no policy: refused at once, without
    // waiting for a writer (which would hang every later reload).
    let dir = policy_dir_with_misbehave("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("misbehave.json"))
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    let started = Instant::now();
    let problems = tokio::time::timeout(Duration::from_secs(10), check_policy_dir(&dir))
        .await
        .expect("a FIFO does not hang the read")
        .unwrap_err()
        .join("\n");
    assert!(problems.contains("misbehave.json"), "{problems}");
    assert!(problems.contains("not a regular file"), "{problems}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_2_gb_sparse_wasm_is_refused_by_its_size_without_being_read() {
    let dir = policy_dir_with_misbehave("sparse");
    let f = std::fs::File::create(dir.join("misbehave.wasm")).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);
    let started = Instant::now();
    let problems = check_policy_dir(&dir).await.unwrap_err().join("\n");
    let took = started.elapsed();
    assert!(problems.contains("misbehave.wasm"), "{problems}");
    assert!(
        problems.contains("2147483648 bytes, over policies.max_wasm_bytes"),
        "{problems}"
    );
    // Reading 2 GiB of zeros takes seconds and 2 GiB of memory.
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn a_compile_cache_others_can_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let web = TestBackend::start("web").await;
    let start = |cache: std::path::PathBuf| {
        let text = one_http_pool(
            &format!(
                "[policies]\ndir = \"{}\"\ncache_dir = \"{}\"\n",
                fixtures(),
                cache.display()
            ),
            "",
            "policy = \"misbehave\"",
        );
        let addrs = BTreeMap::from([("web", web.addr)]);
        async move { start_switchyard(&text, &addrs).await }
    };
    let shared = temp_dir("cache-shared");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let why = switchyard::policy::own_private_dir(&shared).unwrap_err();
    assert!(why.contains("others may write"), "{why}");
    let sy = start(shared.clone()).await;
    assert_eq!(
        get(&client(false), sy.addr("l"), "/", &[]).await.status,
        200
    );
    sy.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "nothing may be cached in a folder others can write"
    );
    // The same with a private folder: the cache is written.
    let private = temp_dir("cache-private");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sy = start(private.clone()).await;
    sy.shutdown(Duration::from_secs(5)).await;
    assert!(
        std::fs::read_dir(&private).unwrap().count() > 0,
        "the private cache is used"
    );
}
