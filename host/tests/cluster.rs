//! A multi-instance deployment on loopback (issue 23, docs/SCALING.md):
//! one Switchyard L4 listener in front, three Switchyard L7 processes
//! behind it (127.0.0.41-43, the same ports), checked on their admin
//! `/readyz` (`health.port`), sharing one policy directory and one
//! `redis-server`. It shows that the rate limit is global, that every
//! instance picks the same backend for each key, that losing an instance
//! costs only the requests in flight on it, and that a policy change
//! reaches every instance within 2 s.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchyard_tests::redis::TestRedis;
use switchyard_tests::*;

/// One `switchyard run` process, killed by its PID when dropped.
struct Instance {
    ip: Ipv4Addr,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same ports on every instance's address: traffic through the
/// rate-limit policy, traffic hashed by `x-user`, and the admin API.
#[derive(Clone, Copy)]
struct Ports {
    limited: u16,
    hashed: u16,
    admin: u16,
}

fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}

/// The instances' configuration: one text, the bind address aside.
fn instance_config(
    ip: Ipv4Addr,
    p: Ports,
    policies: &Path,
    redis: &str,
    web: &[SocketAddr],
) -> String {
    let backends: Vec<String> = web.iter().map(|a| format!("\"{a}\"")).collect();
    let backends = backends.join(", ");
    format!(
        r#"
[admin]
bind = "{ip}:{admin}"
[policies]
dir = "{dir}"
[kv]
backend = "redis"
url = "{redis}"
timeout_ms = 500
[pools.web]
backends = [{backends}]
[pools.hashed]
algorithm = "hash"
hash_key = "header:x-user"
backends = [{backends}]
[listeners.limited]
protocol = "http"
bind = "{ip}:{limited}"
pool = "web"
policy = "rate-limit"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]
[listeners.hashed]
protocol = "http"
bind = "{ip}:{hashed}"
pool = "hashed"
"#,
        admin = p.admin,
        limited = p.limited,
        hashed = p.hashed,
        dir = policies.display(),
    )
}

fn start_instance(ip: Ipv4Addr, config: &str, dir: &Path) -> Instance {
    let path = dir.join(format!("instance-{ip}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Instance { ip, child }
}

/// One `GET path` on a connection of its own: whether it got a 200 (a
/// refused or broken connection, or none within 2 s, is "no").
async fn ok_once(at: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(at).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: {at}\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether an instance's admin `/readyz` answers 200.
async fn ready(admin: SocketAddr) -> bool {
    ok_once(admin, "/readyz").await
}

/// The policy version an instance serves its `limited` listener with.
async fn version(c: &Client, admin: SocketAddr) -> String {
    let text = get(c, admin, "/metrics", &[]).await.text();
    text.lines()
        .find(|l| {
            l.starts_with("switchyard_policy_version_info{")
                && l.contains("rate-limit")
                && l.ends_with(" 1")
        })
        .and_then(|l| l.split("version=\"").nth(1))
        .and_then(|v| v.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_an_l4_tier_behave_as_one() {
    let redis = TestRedis::start().await;
    let web = [
        TestBackend::start("web-a").await,
        TestBackend::start("web-b").await,
        TestBackend::start("web-c").await,
    ];
    let web_addrs: Vec<SocketAddr> = web.iter().map(|b| b.addr).collect();
    let dir = temp("files");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        repo().join("policies/rate-limit.wasm"),
        policies.join("rate-limit.wasm"),
    )
    .unwrap();
    let rate = |burst: u32| format!(r#"{{"rate_per_second": 1, "burst": {burst}}}"#);
    std::fs::write(policies.join("rate-limit.json"), rate(100)).unwrap();

    let ips: Vec<Ipv4Addr> = (41..=43).map(|o| Ipv4Addr::new(127, 0, 0, o)).collect();
    let ports = Ports {
        limited: free_port_on(&ips),
        hashed: free_port_on(&ips),
        admin: free_port_on(&ips),
    };
    let mut instances: Vec<Instance> = ips
        .iter()
        .map(|ip| {
            let text = instance_config(*ip, ports, &policies, &redis.url(), &web_addrs);
            start_instance(*ip, &text, &dir)
        })
        .collect();
    let c = client(false);
    let admin = |ip: Ipv4Addr| SocketAddr::new(IpAddr::V4(ip), ports.admin);
    let started = Instant::now();
    for ip in &ips {
        while !ready(admin(*ip)).await {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{ip} not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The L4 tier: two TCP listeners (rate-limited traffic with a PROXY
    // header naming the client; hashed traffic), each instance checked on
    // its admin `/readyz`.
    let members = |port: u16| -> String {
        ips.iter()
            .map(|ip| format!("\"{ip}:{port}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let health = format!(
        "kind = \"http\"\npath = \"/readyz\"\nport = {}\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
        ports.admin
    );
    let front_text = format!(
        r#"
[pools.limited]
backends = [{limited}]
proxy_protocol = "v2"
[pools.limited.health]
{health}
[pools.hashed]
backends = [{hashed}]
[pools.hashed.health]
{health}
[listeners.limited]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "limited"
[listeners.hashed]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "hashed"
"#,
        limited = members(ports.limited),
        hashed = members(ports.hashed),
    );
    let front = start_switchyard(&front_text, &BTreeMap::new()).await;

    // 1. The rate limit is global: a burst of 100 per client, spread over
    // the three instances (the L4 tier balances round-robin), lets ~100
    // of 300 through, not 300.
    // A new connection each: the L4 tier balances connections.
    let mut allowed = 0;
    for _ in 0..300 {
        if ok_once(front.addr("limited"), "/").await {
            allowed += 1;
        }
    }
    assert!(
        (95..=105).contains(&allowed),
        "{allowed} of 300 allowed; a global limit of 100 allows 95-105"
    );
    for ip in &ips {
        let text = get(&c, admin(*ip), "/metrics", &[]).await.text();
        let served = text
            .lines()
            .filter(|l| l.starts_with("switchyard_http_requests_total{") && l.contains("limited"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        assert!(
            served >= 50.0,
            "{ip} served {served}: the load was not spread"
        );
    }

    // 2. All instances agree: each of 1,000 keys gets the same backend
    // from every instance.
    for key in 0..1000 {
        let user = format!("user-{key}");
        let mut seen = Vec::new();
        for ip in &ips {
            let at = SocketAddr::new(IpAddr::V4(*ip), ports.hashed);
            seen.push(get(&c, at, "/", &[("x-user", &user)]).await.text());
        }
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "{user}: instances disagree: {seen:?}"
        );
    }

    // 3. Losing an instance: SIGKILL one under steady load (a new
    // connection per request, 6 clients through the L4 tier). Only
    // requests around the kill fail: at most one in flight per client at
    // the kill, and those started while the dying instance could still
    // complete a handshake; none started after the L4 tier's checks took
    // it out.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // When each failed request started.
    let failed = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let mut load = Vec::new();
    for _ in 0..6 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let at = front.addr("hashed");
        load.push(tokio::spawn(async move {
            let began = Instant::now();
            while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(20) {
                let started = Instant::now();
                let ok = ok_once(at, "/").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.lock().unwrap().push(started);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = instances.remove(0);
    let killed_ip = killed.ip;
    let kill_at = Instant::now();
    drop(killed); // SIGKILL, by its PID
    let u = front.upstreams();
    let pool = u.pool("hashed").unwrap().clone();
    let dead = pool
        .backend(&format!("{killed_ip}:{}", ports.hashed))
        .unwrap()
        .clone();
    wait_until(
        "the L4 tier's checks take it out",
        Duration::from_secs(5),
        || !dead.healthy(),
    )
    .await;
    let out_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);
    let failed = failed.lock().unwrap().clone();
    assert!(sent > 100, "only {sent} requests");
    let before_kill = failed.iter().filter(|t| **t < kill_at).count();
    assert!(
        before_kill <= 6,
        "{before_kill} failed that started before the kill"
    );
    assert!(
        failed.iter().all(|t| *t <= out_at),
        "a request started after the checks took the instance out failed"
    );
    assert!(failed.len() <= 12, "{} of {sent} failed", failed.len());
    let failed = failed.len();
    eprintln!("cluster: {failed} of {sent} requests failed when an instance was killed");

    // 4. Changes reach everyone: a new policy config (a new version) is
    // served by the two instances left within 2 s.
    let before = version(&c, admin(ips[1])).await;
    assert!(!before.is_empty());
    switchyard_tests::replace_file(&policies.join("rate-limit.json"), rate(50).as_bytes());
    let changed = Instant::now();
    for ip in &ips[1..] {
        loop {
            let now = version(&c, admin(*ip)).await;
            if !now.is_empty() && now != before {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(2),
                "{ip} still serves {before} after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = changed.elapsed();
    assert_eq!(
        version(&c, admin(ips[1])).await,
        version(&c, admin(ips[2])).await
    );
    eprintln!("cluster: the new policy version was live everywhere after {took:?}");
    front.shutdown(Duration::from_secs(5)).await;
}
