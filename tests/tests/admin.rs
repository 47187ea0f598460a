//! The admin listener: metrics, health and readiness, pools and policies,
//! and draining a backend by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_tests::*;

const CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"
[policies]
dir = "{policies}"
[pools.web]
backends = ["{a}", "{b}"]
[pools.api]
backends = ["{a}"]
[pools.images]
backends = ["{a}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "path-router"
"#;

#[tokio::test]
async fn metrics_pools_policies_and_drain() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let sy = start_switchyard(CONFIG, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let admin = sy.admin_addr.expect("admin listener");
    let c = client(false);
    for _ in 0..10 {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 200);
    }
    assert_eq!(get(&c, admin, "/healthz", &[]).await.status, 200);
    assert_eq!(get(&c, admin, "/readyz", &[]).await.status, 200);

    let m = get(&c, admin, "/metrics", &[]).await.text();
    for want in [
        "switchyard_http_requests_total{listener=\"l\",pool=\"web\",backend=",
        "status_class=\"2xx\"} 5",
        "switchyard_http_request_duration_seconds_bucket{",
        "switchyard_policy_calls_total{policy=\"path-router\",outcome=\"ok\"} 10",
        "switchyard_policy_call_duration_seconds_count{policy=\"path-router\"} 10",
        "switchyard_policy_version_info{policy=\"path-router\",version=",
        "switchyard_backend_healthy{pool=\"web\",backend=",
        "switchyard_active_connections{listener=\"l\"}",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }

    let pools: serde_json::Value =
        serde_json::from_slice(&get(&c, admin, "/api/pools/web", &[]).await.body).unwrap();
    assert_eq!(pools["backends"].as_array().unwrap().len(), 2);
    assert_eq!(pools["backends"][0]["available"], true);
    let totals: u64 = pools["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["total"].as_u64().unwrap())
        .sum();
    assert_eq!(totals, 10, "per-backend totals add up to the requests sent");
    let policies: serde_json::Value =
        serde_json::from_slice(&get(&c, admin, "/api/policies", &[]).await.body).unwrap();
    assert_eq!(policies[0]["name"], "path-router");
    assert_eq!(policies[0]["calls"], 10);
    assert!(
        policies[0]["p99_us_at_most"].as_f64().unwrap()
            >= policies[0]["p50_us_at_most"].as_f64().unwrap()
    );
    assert_eq!(
        policies[0]["version"].as_str().unwrap(),
        sy.policy_version("l").unwrap()
    );

    // Drain b: nothing new goes to it; undrain: it is back.
    let path = format!("/api/pools/web/backends/{}/drain", b.addr);
    assert_eq!(post(&c, admin, &path).await.status, 200);
    for _ in 0..10 {
        assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.text(), "a");
    }
    let path = format!("/api/pools/web/backends/{}/undrain", b.addr);
    assert_eq!(post(&c, admin, &path).await.status, 200);
    let mut to_b = 0;
    for _ in 0..10 {
        if get(&c, sy.addr("l"), "/", &[]).await.text() == "b" {
            to_b += 1;
        }
    }
    assert_eq!(to_b, 5);
    assert_eq!(get(&c, admin, "/api/pools/nope", &[]).await.status, 404);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn no_admin_section_means_no_admin_listener() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let text = CONFIG.replace("[admin]\nbind = \"127.0.0.1:0\"\n", "");
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    assert!(sy.admin_addr.is_none());
    sy.shutdown(Duration::from_secs(5)).await;
}

/// `name{labels} value` lines of a Prometheus text exposition, parsed.
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn sample(
    m: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    m.iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

fn fixtures_dir() -> String {
    repo().join("tests/fixtures/wasm").display().to_string()
}

#[tokio::test]
async fn counters_equal_the_traffic_sent_and_traps_are_counted() {
    let (a, b) = (
        TestBackend::start("a").await,
        TestBackend::failing("b", 503).await,
    );
    let text = format!(
        r#"
[admin]
bind = "127.0.0.1:0"
[policies]
dir = "{}"
[pools.web]
backends = ["{{a}}", "{{b}}"]
[listeners.l]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "misbehave"
on_error = "fallback"
"#,
        fixtures_dir()
    );
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let c = client(false);
    for _ in 0..20 {
        get(&c, sy.addr("l"), "/", &[]).await;
    }
    for _ in 0..3 {
        get(&c, sy.addr("l"), "/panic", &[]).await;
    }
    let m = parse_metrics(
        &get(&c, sy.admin_addr.unwrap(), "/metrics", &[])
            .await
            .text(),
    );
    let a_name = a.addr.to_string();
    let b_name = b.addr.to_string();
    let req = "switchyard_http_requests_total";
    // Round robin over 23 requests: 12 to one, 11 to the other.
    let to_a = sample(&m, req, &[("backend", &a_name), ("status_class", "2xx")]);
    let to_b = sample(&m, req, &[("backend", &b_name), ("status_class", "5xx")]);
    assert_eq!(to_a + to_b, 23.0, "{to_a} + {to_b}");
    assert!((11.0..=12.0).contains(&to_a), "{to_a}");
    assert_eq!(
        sample(&m, req, &[("backend", &a_name), ("status_class", "5xx")]),
        0.0
    );
    let calls = "switchyard_policy_calls_total";
    assert_eq!(
        sample(&m, calls, &[("policy", "misbehave"), ("outcome", "ok")]),
        20.0
    );
    assert_eq!(
        sample(&m, calls, &[("policy", "misbehave"), ("outcome", "trap")]),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            "switchyard_policy_reloads_total",
            &[("policy", "misbehave"), ("result", "ok")]
        ),
        1.0
    );
    // Each answer's body is the backend's one-letter name.
    assert_eq!(
        sample(
            &m,
            "switchyard_bytes_total",
            &[("listener", "l"), ("direction", "out")]
        ),
        23.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn readyz_is_503_until_the_policies_are_loaded() {
    let a = TestBackend::start("a").await;
    let dir = temp_dir("readyz");
    std::fs::copy(
        repo().join("tests/fixtures/wasm/misbehave.wasm"),
        dir.join("misbehave.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join("misbehave.json"), "slow-init").unwrap();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:{admin_port}\"\n[policies]\ndir = \"{}\"\n[pools.web]\nbackends = [\"{{a}}\"]\n[listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\npolicy = \"misbehave\"\n",
        dir.display()
    );
    let addrs = BTreeMap::from([("a", a.addr)]);
    let starting = tokio::spawn(async move { start_switchyard(&text, &addrs).await });
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let c = client(false);
    let mut saw_503 = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        {
            drop(s);
            let got = get(&c, admin, "/readyz", &[]).await;
            if got.status == 503 {
                saw_503 = true;
            } else if got.status == 200 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "/readyz said 503 while the policy loaded");
    let sy = starting.await.unwrap();
    assert_eq!(get(&c, admin, "/healthz", &[]).await.status, 200);
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn draining_a_backend_lets_its_in_flight_request_finish() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let text = CONFIG.replace("policy = \"path-router\"\n", "");
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let (admin, l) = (sy.admin_addr.unwrap(), sy.addr("l"));
    // A slow upload: round robin sends the first request to a, so warm up
    // once to make the upload land on b.
    let c = client(false);
    assert_eq!(get(&c, l, "/", &[]).await.text(), "a");
    let data = pattern(1024 * 1024);
    let chunks: Vec<bytes::Bytes> = data
        .chunks(32 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let body = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
        let chunk = it.next()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, hyper::Error>(hyper::body::Frame::data(chunk)), it))
    });
    let upload = tokio::spawn(async move {
        let req = http::Request::post(format!("http://{l}/echo"))
            .body(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(body),
            ))
            .unwrap();
        send(&client(false), req).await
    });
    until_seen(&b, "/echo").await;
    let path = format!("/api/pools/web/backends/{}/drain", b.addr);
    assert_eq!(post(&c, admin, &path).await.status, 200);
    for _ in 0..6 {
        assert_eq!(
            get(&c, l, "/", &[]).await.text(),
            "a",
            "nothing new reaches a drained backend"
        );
    }
    let got = upload.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body.len(),
        data.len(),
        "the in-flight upload on b finished"
    );
    assert_eq!(got.headers["x-backend"], "b");
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn access_log_lines_carry_pool_backend_and_decision() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = temp_dir("access-log");
    let log = dir.join("access.log");
    let text = CONFIG
        .replace(
            "policy = \"path-router\"\n",
            "policy = \"path-router\"\naccess_log = \"json\"\n",
        )
        .replace(
            "[admin]\nbind = \"127.0.0.1:0\"\n",
            &format!("[runtime]\naccess_log_file = \"{}\"\n", log.display()),
        );
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let c = client(false);
    get(&c, sy.addr("l"), "/api/users", &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        if let Some(l) = std::fs::read_to_string(&log)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
        {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["listener"], "l");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/api/users");
    assert_eq!(v["status"], 200);
    assert_eq!(v["pool"], "api");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(v["decision"], "forward");
    assert!(v["total_ms"].as_f64().unwrap() >= v["upstream_ms"].as_f64().unwrap());
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn connect_errors_are_counted_per_backend_and_kind() {
    let dead = dead_addr().await;
    let sy = start_switchyard(
        "[admin]\nbind = \"127.0.0.1:0\"\n[pools.web]\nbackends = [\"{dead}\"]\nconnect_timeout_ms = 500\n[listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n",
        &BTreeMap::from([("dead", dead)]),
    )
    .await;
    let c = client(false);
    assert_eq!(get(&c, sy.addr("l"), "/", &[]).await.status, 502);
    let m = parse_metrics(
        &get(&c, sy.admin_addr.unwrap(), "/metrics", &[])
            .await
            .text(),
    );
    let name = dead.to_string();
    assert_eq!(
        sample(
            &m,
            "switchyard_upstream_connect_errors_total",
            &[("backend", &name), ("kind", "connect")]
        ),
        1.0
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// Sends `head` (CRLF-separated lines, no final blank line) to the admin
/// listener and returns the status code of its answer.
async fn raw_status(admin: std::net::SocketAddr, head: &str) -> u16 {
    let text = raw(
        admin,
        format!("{head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn drained(sy: &switchyard::daemon::Running, backend: std::net::SocketAddr) -> bool {
    let upstreams = sy.upstreams();
    let pool = upstreams.pool("web").unwrap();
    pool.backends
        .iter()
        .find(|b| *b.name == *backend.to_string())
        .unwrap()
        .drained()
}

#[tokio::test]
async fn a_cross_site_post_cannot_drain_a_backend() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let sy = start_switchyard(CONFIG, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let admin = sy.admin_addr.unwrap();
    let drain = format!("POST /api/pools/web/backends/{}/drain HTTP/1.1", b.addr);
    let host = format!("Host: {admin}");
    // What a web page the operator opens can send with
    // fetch(url, {method: 'POST', mode: 'no-cors'}).
    let cross_site = format!(
        "{drain}\r\n{host}\r\nOrigin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain"
    );
    assert_eq!(raw_status(admin, &cross_site).await, 403);
    // A text/plain POST with no Origin (an older browser, a form) is not
    // JSON, so no simple request can change state.
    assert_eq!(
        raw_status(
            admin,
            &format!("{drain}\r\n{host}\r\nContent-Type: text/plain")
        )
        .await,
        415
    );
    // Same site but another origin (another port on the same host).
    let other_port = format!(
        "{drain}\r\n{host}\r\nOrigin: http://127.0.0.1:1\r\nSec-Fetch-Site: same-site\r\nContent-Type: application/json"
    );
    assert_eq!(raw_status(admin, &other_port).await, 403);
    assert!(
        !drained(&sy, b.addr),
        "a refused request drained the backend"
    );
    // DNS rebinding: a page at evil.example resolved to 127.0.0.1.
    let rebound = format!(
        "GET /api/pools HTTP/1.1\r\nHost: evil.example:{}",
        admin.port()
    );
    assert_eq!(raw_status(admin, &rebound).await, 421);
    assert_eq!(
        raw_status(admin, "GET /metrics HTTP/1.1\r\nHost: evil.example").await,
        421
    );
    // The same-origin JSON POST the status page (or curl) sends works.
    let same_origin = format!(
        "{drain}\r\n{host}\r\nOrigin: http://{admin}\r\nSec-Fetch-Site: same-origin\r\nContent-Type: application/json"
    );
    assert_eq!(raw_status(admin, &same_origin).await, 200);
    assert!(drained(&sy, b.addr));
    assert_eq!(
        raw_status(
            admin,
            &format!("GET /healthz HTTP/1.1\r\nHost: localhost:{}", admin.port())
        )
        .await,
        200
    );
    sy.shutdown(Duration::from_secs(5)).await;
}

/// [`CONFIG`] with `[admin] token_file`.
fn with_token_file(path: &std::path::Path) -> String {
    CONFIG.replace(
        "bind = \"127.0.0.1:0\"\n[policies]",
        &format!(
            "bind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[policies]",
            path.display()
        ),
    )
}

#[tokio::test]
async fn with_a_token_only_requests_that_carry_it_pass() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = temp_dir("admin-token");
    let token = "s3cret-token-0123456789";
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let text = with_token_file(&dir.join("token"));
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let admin = sy.admin_addr.unwrap();
    let host = format!("Host: {admin}");
    for path in ["/metrics", "/api/pools", "/api/policies", "/api/status"] {
        assert_eq!(
            raw_status(admin, &format!("GET {path} HTTP/1.1\r\n{host}")).await,
            401,
            "{path}"
        );
        assert_eq!(
            raw_status(
                admin,
                &format!(
                    "GET {path} HTTP/1.1\r\n{host}\r\nAuthorization: Bearer wrong-token-0123456789"
                )
            )
            .await,
            401,
            "{path}"
        );
        assert_eq!(
            raw_status(
                admin,
                &format!("GET {path} HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {token}")
            )
            .await,
            200,
            "{path}"
        );
    }
    // Probes need no token.
    assert_eq!(
        raw_status(admin, &format!("GET /healthz HTTP/1.1\r\n{host}")).await,
        200
    );
    assert_eq!(
        raw_status(admin, &format!("GET /readyz HTTP/1.1\r\n{host}")).await,
        200
    );
    let drain = format!(
        "POST /api/pools/web/backends/{}/drain HTTP/1.1\r\n{host}\r\nContent-Type: application/json",
        b.addr
    );
    assert_eq!(raw_status(admin, &drain).await, 401);
    assert!(!drained(&sy, b.addr));
    assert_eq!(
        raw_status(admin, &format!("{drain}\r\nAuthorization: Bearer {token}")).await,
        200
    );
    assert!(drained(&sy, b.addr));
    sy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idle_admin_connection_is_closed() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let sy = start_switchyard(CONFIG, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let admin = sy.admin_addr.unwrap();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    // Nothing sent: the header-read timeout (5 s) closes it.
    let closed = until_closed(&mut s, Duration::from_secs(8)).await;
    let (after, _) = closed.expect("the admin listener closed an idle connection");
    assert!(after >= Duration::from_secs(4), "closed after {after:?}");
    sy.shutdown(Duration::from_secs(5)).await;
}

/// The status page's files need no token (they hold no data; the page's
/// script sends the token to the API), and they come with a policy that
/// runs no script but their own and forbids framing. A backend whose name
/// has a `:` can be drained with the name percent-encoded, as the page
/// sends it.
#[tokio::test]
async fn the_status_page_has_a_strict_csp_and_needs_no_token() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = temp_dir("admin-page");
    std::fs::write(dir.join("token"), "page-token-0123456789\n").unwrap();
    let text = with_token_file(&dir.join("token"));
    let sy = start_switchyard(&text, &BTreeMap::from([("a", a.addr), ("b", b.addr)])).await;
    let (admin, c) = (sy.admin_addr.unwrap(), client(false));
    for (path, kind) in [
        ("/", "text/html"),
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
    ] {
        let got = get(&c, admin, path, &[]).await;
        assert_eq!(got.status, 200, "{path}");
        let header = |n: &str| {
            got.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("x-content-type-options"), "nosniff");
    }
    let page = get(&c, admin, "/", &[]).await.text();
    assert!(page.contains("<script src=\"/status.js\">"));
    assert!(!page.contains("<script>"), "no inline script");
    assert_eq!(get(&c, admin, "/api/status", &[]).await.status, 401);
    let auth = [("authorization", "Bearer page-token-0123456789")];
    let status: serde_json::Value =
        serde_json::from_slice(&get(&c, admin, "/api/status", &auth).await.body).unwrap();
    assert_eq!(status["listeners"][0]["name"], "l");
    assert_eq!(status["listeners"][0]["protocol"], "http");
    assert_eq!(status["reloads"][0]["what"], "policy");
    assert_eq!(status["reloads"][0]["ok"], true);
    let encoded = a.addr.to_string().replace(':', "%3A");
    let req = http::Request::post(format!(
        "http://{admin}/api/pools/web/backends/{encoded}/drain"
    ))
    .header("content-type", "application/json")
    .header("authorization", "Bearer page-token-0123456789")
    .body(full(bytes::Bytes::new()))
    .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    assert!(drained(&sy, a.addr));
    sy.shutdown(Duration::from_secs(5)).await;
}
