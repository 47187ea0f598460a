//! The policy key-value store on Redis (`[kv] backend = "redis"`, issue
//! 23), against a real redis-server on loopback: the same answers as the
//! memory store for every operation, one limit for every instance that
//! shares it, errors (never a hang) when Redis is down, and a Redis wait
//! that does not count against a policy's `timeout_ms`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard::config::kv::{KvBackend, RedisSettings};
use switchyard::policy::kv::{KvError, KvLimits, KvStore};
use switchyard::policy::kv_handle::{KvHandle, KvMetrics};
use switchyard_tests::redis::TestRedis;
use switchyard_tests::*;

fn redis_store(url: &str, timeout_ms: u64) -> KvStore {
    let settings = RedisSettings {
        url: url.to_owned(),
        pool_size: 2,
        timeout: Duration::from_millis(timeout_ms),
        key_prefix: "switchyard:".into(),
    };
    KvStore::new(
        KvLimits::default(),
        &KvBackend::Redis(settings),
        KvMetrics::default(),
    )
    .unwrap()
}

/// One script of every operation; what each answered.
async fn script(ns: &KvHandle) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: &str, r: String| out.push(format!("{what}: {r}"));
    note("get absent", format!("{:?}", ns.get("a").await));
    note(
        "set",
        format!("{:?}", ns.set("a", b"1".to_vec(), None).await),
    );
    note("get", format!("{:?}", ns.get("a").await));
    let cas = ns.compare_and_swap("a", None, b"x".to_vec(), None).await;
    note("cas on absent, key present", format!("{cas:?}"));
    let cas = ns
        .compare_and_swap("a", Some(b"0"), b"x".to_vec(), None)
        .await;
    note("cas mismatch", format!("{cas:?}"));
    let cas = ns
        .compare_and_swap("a", Some(b"1"), b"2".to_vec(), None)
        .await;
    note("cas match", format!("{cas:?}"));
    let cas = ns
        .compare_and_swap("new", None, b"n".to_vec(), Some(60_000))
        .await;
    note("cas absent", format!("{cas:?}"));
    note("get after cas", format!("{:?}", ns.get("a").await));
    note(
        "incr create",
        format!("{:?}", ns.increment("n", 5, Some(60_000)).await),
    );
    note("incr", format!("{:?}", ns.increment("n", -7, None).await));
    note("get counter", format!("{:?}", ns.get("n").await));
    note(
        "incr a counter-like value",
        format!("{:?}", ns.increment("a", 10, None).await),
    );
    note(
        "set text",
        format!("{:?}", ns.set("t", b"text".to_vec(), None).await),
    );
    note(
        "incr non-counter",
        format!("{:?}", ns.increment("t", 4, None).await),
    );
    note(
        "incr overflow-free",
        format!("{:?}", ns.increment("big", i64::MAX, None).await),
    );
    note("delete", format!("{:?}", ns.delete("a").await));
    note("delete again", format!("{:?}", ns.delete("a").await));
    note(
        "delete key over 1 KiB",
        format!("{:?}", ns.delete(&"k".repeat(2000)).await),
    );
    note(
        "ttl set",
        format!("{:?}", ns.set("short", b"s".to_vec(), Some(50)).await),
    );
    note(
        "ttl never",
        format!("{:?}", ns.set("long", b"l".to_vec(), Some(u64::MAX)).await),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    note("after ttl", format!("{:?}", ns.get("short").await));
    note("no expiry", format!("{:?}", ns.get("long").await));
    let big_key = "k".repeat(1025);
    note(
        "get key over 1 KiB",
        format!("{:?}", ns.get(&big_key).await),
    );
    let too_large = matches!(
        ns.set(&big_key, b"v".to_vec(), None).await,
        Err(KvError::KeyTooLarge(1025))
    );
    note("key over 1 KiB refused", format!("{too_large}"));
    let big_value = vec![0; 64 * 1024 + 1];
    let too_large = matches!(
        ns.set("v", big_value, None).await,
        Err(KvError::ValueTooLarge(_))
    );
    note("value over 64 KiB refused", format!("{too_large}"));
    out
}

#[tokio::test]
async fn redis_and_memory_answer_every_operation_alike() {
    let redis = TestRedis::start().await;
    let memory = KvStore::default();
    let remote = redis_store(&redis.url(), 1000);
    let expected = script(&memory.namespace("p")).await;
    let got = script(&remote.namespace("p")).await;
    assert_eq!(got, expected);
    // Namespaces are key prefixes: one policy's keys are not another's.
    assert_eq!(remote.namespace("q").get("n").await.unwrap(), None);
    assert_eq!(
        redis.command(&["GET", "switchyard:p:n"]).await.as_deref(),
        Some("$2")
    );
}

#[tokio::test]
async fn redis_down_is_an_error_within_the_timeout_and_it_recovers() {
    let mut redis = TestRedis::start().await;
    let port = redis.addr.port();
    let store = redis_store(&redis.url(), 100);
    let ns = store.namespace("p");
    ns.set("k", b"v".to_vec(), None).await.unwrap();
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let r = ns.get("k").await;
        assert!(matches!(r, Err(KvError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "an operation on a dead Redis took {:?}",
            started.elapsed()
        );
    }
    // Back (empty: no persistence): the same store works again.
    let _back = TestRedis::start_on(port).await;
    let started = Instant::now();
    loop {
        if ns.set("k", b"again".to_vec(), None).await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ns.get("k").await.unwrap(), Some(b"again".to_vec()));
}

fn rate_limited(redis: &str, kv_timeout_ms: u64) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
[policies]
dir = "{{dir}}"
[kv]
backend = "redis"
url = "{redis}"
timeout_ms = {kv_timeout_ms}
[pools.web]
backends = ["{{web}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "rate-limit"
"#
    )
}

/// Starts one instance whose `rate-limit` has the config `rate`.
async fn with_policy_dir(text: &str, rate: &str, web: &TestBackend) -> switchyard::daemon::Running {
    let dir = temp_dir("kv-redis");
    std::fs::copy(
        repo().join("policies/rate-limit.wasm"),
        dir.join("rate-limit.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join("rate-limit.json"), rate).unwrap();
    let text = text.replace("{dir}", &dir.display().to_string());
    start_switchyard(&text, &BTreeMap::from([("web", web.addr)])).await
}

/// Two instances, one Redis: the bucket is shared, so a burst of 20 is
/// 20 across both, not 20 each.
#[tokio::test]
async fn two_instances_share_one_rate_limit() {
    let redis = TestRedis::start().await;
    let web = TestBackend::start("web").await;
    let text = rate_limited(&redis.url(), 500);
    let rate = r#"{"rate_per_second": 1, "burst": 20}"#;
    let a = with_policy_dir(&text, rate, &web).await;
    let b = with_policy_dir(&text, rate, &web).await;
    let c = client(false);
    let mut allowed = 0;
    for i in 0..60 {
        let at = if i % 2 == 0 { a.addr("l") } else { b.addr("l") };
        if get(&c, at, "/", &[]).await.status == 200 {
            allowed += 1;
        }
    }
    // 20, plus at most a token or two refilled while the loop ran.
    assert!((20..=22).contains(&allowed), "{allowed} of 60 allowed");
    assert_eq!(metric(&a, "switchyard_kv_errors_total", "").await, 0.0);
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

/// A Redis that stalls (`DEBUG SLEEP`) holds the policy's call, but the
/// wait is not the guest's: no timeout at `timeout_ms` (10 ms).
#[tokio::test]
async fn a_slow_redis_does_not_count_against_the_policy_timeout() {
    let redis = TestRedis::start().await;
    let web = TestBackend::start("web").await;
    let text = rate_limited(&redis.url(), 2000);
    let rate = r#"{"rate_per_second": 100, "burst": 100}"#;
    let sy = with_policy_dir(&text, rate, &web).await;
    let c = client(false);
    assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    let url = redis.addr;
    let stall = tokio::spawn(async move {
        let r = TestRedis::command_at(url, &["DEBUG", "SLEEP", "0.3"]).await;
        assert_eq!(r.as_deref(), Some("+OK"));
    });
    // Wait until Redis is really asleep: a PING gets no answer in 20 ms.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let ping = TestRedis::command_at(url, &["PING"]);
        if tokio::time::timeout(Duration::from_millis(20), ping)
            .await
            .is_err()
        {
            break;
        }
        assert!(Instant::now() < deadline, "redis never blocked");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    let got = get(&c, sy.addr("l"), "/", &[]).await;
    let took = started.elapsed();
    stall.await.unwrap();
    assert_eq!(got.status, 200);
    assert!(took >= Duration::from_millis(150), "took {took:?}: no wait");
    let labels = "outcome=\"timeout\"";
    assert_eq!(
        metric(&sy, "switchyard_policy_calls_total", labels).await,
        0.0
    );
    assert_eq!(metric(&sy, "switchyard_kv_errors_total", "").await, 0.0);
    sy.shutdown(Duration::from_secs(5)).await;
}

/// Redis down: the shipped rate-limit lets requests through (it fails
/// open, with a warning), each within the KV timeout, and the errors
/// are counted.
#[tokio::test]
async fn with_redis_down_the_rate_limit_fails_open() {
    let mut redis = TestRedis::start().await;
    let web = TestBackend::start("web").await;
    let text = rate_limited(&redis.url(), 100);
    let rate = r#"{"rate_per_second": 1, "burst": 1}"#;
    let sy = with_policy_dir(&text, rate, &web).await;
    redis.kill();
    let c = client(false);
    for _ in 0..5 {
        let started = Instant::now();
        let got = get(&c, sy.addr("l"), "/", &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let errors = metric(&sy, "switchyard_kv_errors_total", "backend=\"redis\"").await;
    assert!(errors >= 5.0, "kv errors counted: {errors}");
    sy.shutdown(Duration::from_secs(5)).await;
}
