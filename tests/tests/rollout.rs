//! Canary rollouts (`[policies.rollout.NAME]`), on real sockets: clients
//! on 100 loopback addresses, a fixture policy whose versions (by config)
//! trap on, or misroute, the paths under `/t/`. Which clients a canary
//! decides for is the stable hash of their address, as documented; the
//! test asks the same function which they are.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"
[policies]
dir = "{dir}"
state_dir = "{state}"
{policies}
[policies.rollout.m]
canary_percent = 20
min_requests = {min_requests}
max_duration_s = 60
max_error_ratio = 2.0
min_errors = 5
{shadow}
[pools.web]
backends = ["{web}"]
[pools.bad]
backends = ["{bad}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "m"
on_error = "reject"
{listener}
"#;

std::thread_local! {
    /// More `[policies]` keys for the next [`setup_full`] on this thread.
    static POLICIES_MORE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The clients: 127.0.0.2 ..= 127.0.0.101.
fn clients() -> Vec<IpAddr> {
    (2..=101)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Whether a canary at 20% decides for `client`.
fn canary_client(client: IpAddr) -> bool {
    switchyard::balance::stable_hash_ip(client) % 100 < 20
}

/// `GET path` from `client`'s address; the status code.
async fn get_from(client: IpAddr, addr: SocketAddr, path: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(client, 0)).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

struct Setup {
    sy: switchyard::daemon::Running,
    dir: PathBuf,
    state: PathBuf,
    config: String,
    _web: TestBackend,
    bad: TestBackend,
}

fn fixture() -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/wasm/misbehave.wasm"))
        .expect("misbehave.wasm (cargo xtask build-policies)")
}

/// v1 (config `{}`) serving, with `min_requests` for a promotion.
async fn setup(min_requests: u32) -> Setup {
    setup_with(min_requests, "").await
}

/// [`setup`] with more keys in `[policies.rollout.m]`.
async fn setup_with(min_requests: u32, more: &str) -> Setup {
    setup_full(min_requests, more, "").await
}

/// [`setup_with`] with more keys in `[listeners.l]`.
async fn setup_full(min_requests: u32, more: &str, listener: &str) -> Setup {
    let (web, bad) = (
        TestBackend::start("web").await,
        TestBackend::failing("bad", 500).await,
    );
    let dir = temp_dir("rollout-policies");
    let state = temp_dir("rollout-state");
    std::fs::write(dir.join("m.wasm"), fixture()).unwrap();
    std::fs::write(dir.join("m.json"), "{}").unwrap();
    let config = CONFIG
        .replace("{dir}", &dir.display().to_string())
        .replace("{state}", &state.display().to_string())
        .replace("{min_requests}", &min_requests.to_string())
        .replace("{shadow}", more)
        .replace("{listener}", listener)
        .replace("{policies}", POLICIES_MORE.with(|p| p.take()).as_str());
    let addrs = BTreeMap::from([("web", web.addr), ("bad", bad.addr)]);
    let config = fill(&config, &addrs);
    let sy = start_switchyard(&config, &BTreeMap::new()).await;
    Setup {
        sy,
        dir,
        state,
        config,
        _web: web,
        bad,
    }
}

impl Setup {
    /// The policy's entry in `GET /api/policies`.
    async fn policy(&self) -> Value {
        let got = get(
            &client(false),
            self.sy.admin_addr.unwrap(),
            "/api/policies",
            &[],
        )
        .await;
        let all: Value = serde_json::from_slice(&got.body).unwrap();
        all.as_array().unwrap()[0].clone()
    }

    /// Writes a new config for `m` and has the daemon look at it.
    async fn new_version(&self, cfg: &str) {
        replace_file(&self.dir.join("m.json"), cfg.as_bytes());
        self.sy.rescan_policies().await;
        let p = self.policy().await;
        assert!(p["canary"].is_object(), "a canary runs: {p}");
    }

    /// Waits until no canary runs; the policy's entry then.
    async fn until_settled(&self) -> Value {
        let started = Instant::now();
        loop {
            let p = self.policy().await;
            if p["canary"].is_null() {
                return p;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still a canary: {p}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each client sends `/a` four times and `/t/x` once, in rounds, until
    /// `done` says so (checked between clients) or `rounds` end; every
    /// failure as (client, path).
    async fn traffic(
        &self,
        rounds: usize,
        mut done: impl FnMut() -> bool,
    ) -> Vec<(IpAddr, String)> {
        let mut failed = Vec::new();
        for _ in 0..rounds {
            for c in clients() {
                for path in ["/a", "/a", "/t/x", "/a", "/a"] {
                    if get_from(c, self.sy.addr("l"), path).await != 200 {
                        failed.push((c, path.to_owned()));
                    }
                }
                if done() {
                    return failed;
                }
            }
        }
        failed
    }
}

fn version_of(dir: &Path) -> String {
    let wasm = std::fs::read(dir.join("m.wasm")).unwrap();
    let cfg = std::fs::read_to_string(dir.join("m.json")).unwrap();
    switchyard::policy::engine::version_of(&wasm, &cfg)
}

#[tokio::test]
async fn a_canary_that_traps_is_rolled_back_and_stays_refused_after_a_restart() {
    let s = setup(400).await;
    let v1 = s.policy().await["version"].as_str().unwrap().to_owned();
    assert!(clients().iter().any(|c| canary_client(*c)));
    s.new_version(r#"{"v": 2, "trap-on-t": true}"#).await;
    let v2 = version_of(&s.dir);
    let failed = s.traffic(2, || false).await;
    // Only the canary's share failed: its clients, on /t/.
    assert!(!failed.is_empty());
    for (c, path) in &failed {
        assert!(canary_client(*c) && path == "/t/x", "{c} {path} failed");
    }
    let p = s.until_settled().await;
    assert_eq!(p["version"], v1.as_str(), "v1 serves on");
    let why = p["last_refused"].as_str().unwrap();
    assert!(why.starts_with("rolled back: policy errors"), "{why}");
    // Rolled back at once: at min_errors (5), give or take the requests
    // in flight while the verdict was applied; not after 2 rounds.
    assert!(failed.len() < 10, "{} failures", failed.len());
    // After the rollback v1 decides everything.
    let canary = clients().into_iter().find(|c| canary_client(*c)).unwrap();
    assert_eq!(get_from(canary, s.sy.addr("l"), "/t/x").await, 200);
    let refused = std::fs::read_to_string(s.state.join("m/refused")).unwrap();
    assert_eq!(refused.trim(), v2);
    assert_eq!(
        std::fs::read_to_string(s.state.join("m/serving.json")).unwrap(),
        "{}"
    );

    // A restart with v2 still on disk serves v1, kept in state_dir, and
    // does not try v2 again.
    s.sy.shutdown(Duration::from_secs(5)).await;
    let config =
        switchyard::config::Config::parse(Path::new("/tmp/rollout.toml"), &s.config).unwrap();
    let sy = switchyard::daemon::start_with(config, options(false, false))
        .await
        .unwrap()
        .0;
    let admin = sy.admin_addr.unwrap();
    let all: Value =
        serde_json::from_slice(&get(&client(false), admin, "/api/policies", &[]).await.body)
            .unwrap();
    assert_eq!(all[0]["version"], v1.as_str());
    assert!(all[0]["canary"].is_null());
    sy.rescan_policies().await;
    assert_eq!(get_from(canary, sy.addr("l"), "/t/x").await, 200);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_clean_canary_is_promoted_after_min_requests() {
    let s = setup(40).await;
    s.new_version(r#"{"v": 2}"#).await;
    let v2 = version_of(&s.dir);
    let failed = s.traffic(3, || false).await;
    assert!(failed.is_empty(), "{failed:?}");
    let p = s.until_settled().await;
    assert_eq!(p["version"], v2.as_str(), "v2 promoted");
    assert!(p["last_refused"].is_null());
    assert_eq!(
        std::fs::read_to_string(s.state.join("m/serving.json")).unwrap(),
        r#"{"v": 2}"#
    );
    let reloads = metric(
        &s.sy,
        "switchyard_policy_reloads_total",
        "result=\"promoted\"",
    )
    .await;
    assert_eq!(reloads, 1.0);
    s.sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_canary_sending_to_a_failing_pool_is_rolled_back_on_its_5xx() {
    let s = setup(400).await;
    s.new_version(r#"{"v": 2, "route-to-bad": true}"#).await;
    let failed = s.traffic(2, || false).await;
    for (c, path) in &failed {
        assert!(canary_client(*c) && path == "/t/x", "{c} {path} failed");
    }
    let p = s.until_settled().await;
    let why = p["last_refused"].as_str().unwrap();
    assert!(why.starts_with("rolled back: upstream 5xx"), "{why}");
    let canary = clients().into_iter().find(|c| canary_client(*c)).unwrap();
    assert_eq!(get_from(canary, s.sy.addr("l"), "/t/x").await, 200);
    s.sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_admin_api_promotes_or_rolls_back_by_hand() {
    let s = setup(100_000).await;
    let admin = s.sy.admin_addr.unwrap();
    let c = client(false);
    assert_eq!(post(&c, admin, "/api/policies/m/promote").await.status, 404);
    s.new_version(r#"{"v": 2}"#).await;
    // A newer file during a canary replaces it, and its count starts again.
    let canary = clients().into_iter().find(|c| canary_client(*c)).unwrap();
    for _ in 0..3 {
        assert_eq!(get_from(canary, s.sy.addr("l"), "/a").await, 200);
    }
    assert_eq!(s.policy().await["canary"]["canary"]["requests"], 3);
    s.new_version(r#"{"v": 2.5}"#).await;
    let p = s.policy().await;
    assert_eq!(p["canary"]["version"], version_of(&s.dir).as_str());
    assert_eq!(p["canary"]["canary"]["requests"], 0);
    assert_eq!(
        post(&c, admin, "/api/policies/m/rollback").await.status,
        202
    );
    let p = s.until_settled().await;
    assert!(p["last_refused"].as_str().unwrap().contains("by hand"));
    s.new_version(r#"{"v": 3}"#).await;
    let v3 = version_of(&s.dir);
    assert_eq!(post(&c, admin, "/api/policies/m/promote").await.status, 202);
    assert_eq!(s.until_settled().await["version"], v3.as_str());
    s.sy.shutdown(Duration::from_secs(5)).await;
}

/// A shadow decides every request after v1 and is only compared: the
/// clients get v1's decisions (nothing reaches `bad`), and the diff counts
/// exactly the requests on which v2 would have chosen another pool.
#[tokio::test]
async fn a_shadow_counts_exactly_the_decisions_that_differ_and_serves_none() {
    let s = setup_with(10, "shadow = true").await;
    s.new_version(r#"{"v": 2, "route-to-bad": true}"#).await;
    let p = s.policy().await;
    assert_eq!(p["canary"]["mode"], "shadow");
    let addr = s.sy.addr("l");
    let c = clients()[0];
    for i in 0..27 {
        let path = if i % 4 == 0 { "/t/x" } else { "/a" };
        assert_eq!(get_from(c, addr, path).await, 200, "{path}");
    }
    assert!(s.bad.seen().is_empty(), "a shadow's decision was acted on");
    let admin = s.sy.admin_addr.unwrap();
    let started = Instant::now();
    let diff = loop {
        let got = get(&client(false), admin, "/api/policies/m/diff", &[]).await;
        assert_eq!(got.status, 200);
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        if v["same"].as_u64().unwrap() + v["differ"].as_u64().unwrap() == 27 {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(diff["differ"], 7, "{diff}");
    assert_eq!(diff["by_kind"]["pool"], 7, "{diff}");
    assert_eq!(diff["same"], 20, "{diff}");
    let samples = diff["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 7);
    assert_eq!(samples[0]["path"], "/t/x");
    assert_eq!(samples[0]["shadow"]["forward"]["pool"], "bad");
    assert!(samples[0]["live"]["forward"]["pool"].is_null());
    // A shadow is never promoted by its count; by hand it is, and serves.
    assert!(s.policy().await["canary"].is_object());
    let promote = post(&client(false), admin, "/api/policies/m/promote").await;
    assert_eq!(promote.status, 202);
    s.until_settled().await;
    assert_eq!(
        get_from(c, addr, "/t/x").await,
        500,
        "v2 serves: /t/ goes to bad"
    );
    assert_eq!(
        get(&client(false), admin, "/api/policies/m/diff", &[])
            .await
            .status,
        404
    );
    s.sy.shutdown(Duration::from_secs(5)).await;
}

/// `capture` on a listener writes sampled request heads (all of them at
/// `sample = 1.0`) as case lines, `authorization` hidden, which `policy
/// test --cases` runs as they are.
#[tokio::test]
async fn a_capture_writes_case_lines_that_policy_test_runs() {
    let dir = temp_dir("capture");
    let file = dir.join("capture.jsonl");
    let listener = format!(
        "capture = {{ file = \"{}\", sample = 1.0 }}",
        file.display()
    );
    let s = setup_full(10, "", &listener).await;
    let addr = s.sy.addr("l");
    let c = client(false);
    for i in 0..5 {
        let got = get(
            &c,
            addr,
            &format!("/t/{i}?q={i}"),
            &[("authorization", "Bearer secret-token"), ("x-n", "7")],
        )
        .await;
        assert_eq!(got.status, 200);
    }
    let started = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().count() == 5 {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!text.contains("secret-token"), "{text}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["request"]["method"], "GET");
        assert_eq!(v["request"]["path"], format!("/t/{i}?q={i}"));
        assert_eq!(v["request"]["client"], "127.0.0.1");
        let headers = v["request"]["headers"].as_array().unwrap();
        assert!(headers.contains(&serde_json::json!(["authorization", "[redacted]"])));
        assert!(headers.contains(&serde_json::json!(["x-n", "7"])));
        assert!(v["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    // The capture is a cases file as it is.
    let t = switchyard::cli::PolicyTest {
        file: s.dir.join("m.wasm"),
        config: None,
        request: "GET /".into(),
        headers: Vec::new(),
        client: "127.0.0.1".into(),
        sni: None,
        pool: Some("web".into()),
        pools: None,
        body: None,
        response: None,
        response_headers: Vec::new(),
        cases: Some(file.clone()),
    };
    match switchyard::cli::policy_test(&t).await.unwrap() {
        switchyard::cli::Tested::Cases { failed } => assert_eq!(failed, 0),
        switchyard::cli::Tested::Decision(d) => panic!("not a cases run: {d}"),
    }
    s.sy.shutdown(Duration::from_secs(5)).await;
}

/// A file put back to the serving version ends its canary; a restart
/// during a canary serves the kept version, and the file, which has not
/// proved itself, starts as a canary again (it is not promoted by the
/// restart).
#[tokio::test]
async fn a_restart_during_a_canary_serves_the_kept_version_and_starts_it_again() {
    let s = setup(100_000).await;
    let v1 = s.policy().await["version"].as_str().unwrap().to_owned();
    s.new_version(r#"{"v": 2}"#).await;
    replace_file(&s.dir.join("m.json"), b"{}");
    s.sy.rescan_policies().await;
    let p = s.until_settled().await;
    assert_eq!(p["version"], v1.as_str());
    assert!(
        p["last_refused"]
            .as_str()
            .unwrap()
            .contains("serving version again"),
        "{p}"
    );
    s.new_version(r#"{"v": 3}"#).await;
    let v3 = version_of(&s.dir);
    s.sy.shutdown(Duration::from_secs(5)).await;
    let config =
        switchyard::config::Config::parse(Path::new("/tmp/rollout.toml"), &s.config).unwrap();
    let sy = switchyard::daemon::start_with(config, options(false, false))
        .await
        .unwrap()
        .0;
    let admin = sy.admin_addr.unwrap();
    let started = Instant::now();
    loop {
        let got = get(&client(false), admin, "/api/policies", &[]).await;
        let all: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(all[0]["version"], v1.as_str(), "the kept version serves");
        if all[0]["canary"]["version"] == v3.as_str() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{all}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sy.shutdown(Duration::from_secs(5)).await;
}

/// A shadow's KV is its own: each version fills 10,000 keys per request
/// into a namespace capped at 15,000, so after two requests each of the
/// two namespaces has evicted exactly 5,000 (checked by mutation: with the
/// shadow on the serving namespace, this fails).
#[tokio::test]
async fn a_shadow_writes_its_own_kv_namespace() {
    POLICIES_MORE.with(|p| *p.borrow_mut() = "timeout_ms = 5000\nkv_max_entries = 15000".into());
    let s = setup_with(10, "shadow = true").await;
    s.new_version(r#"{"v": 2}"#).await;
    let (addr, admin, c) = (s.sy.addr("l"), s.sy.admin_addr.unwrap(), client(false));
    for (i, round) in ["a", "b"].iter().enumerate() {
        let got = get(&c, addr, &format!("/kv-fill?{round}"), &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let started = Instant::now();
        loop {
            let v: Value =
                serde_json::from_slice(&get(&c, admin, "/api/policies/m/diff", &[]).await.body)
                    .unwrap();
            if v["same"].as_u64().unwrap() + v["differ"].as_u64().unwrap() == i as u64 + 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let evicted = |policy: &'static str| {
        let sy = &s.sy;
        async move {
            metric(
                sy,
                "switchyard_kv_evictions_total",
                &format!("policy=\"{policy}\""),
            )
            .await
        }
    };
    assert_eq!(evicted("m").await, 5000.0);
    assert_eq!(evicted("m.shadow").await, 5000.0);
    s.sy.shutdown(Duration::from_secs(5)).await;
}
