//! The status page in a real browser: Debian's `chromium`, driven through
//! `chromedriver` (WebDriver) by fantoccini. `cargo xtask test` installs
//! both; without them this test fails and says how to get them.
//!
//! The page is read as a user reads it: the text of its cells, after its
//! own script has fetched and drawn them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};
use switchyard_tests::*;

const TOKEN: &str = "status-page-test-token-0123456789";

const CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"
token_file = "{token}"
[policies]
dir = "{policies}"
[pools.web]
backends = ["{a}", "{b}"]
[pools.api]
backends = ["{bad}"]
[pools.images]
backends = ["{a}"]
[listeners.site]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "path-router"
[listeners.raw]
protocol = "tcp"
bind = "127.0.0.1:0"
pool = "web"
"#;

/// chromedriver on a free loopback port, stopped (by its PID) on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let exe = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .expect(
                "chromedriver is missing: `cargo xtask test` installs Debian's \
                 chromium and chromium-driver",
            );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        Driver { child, port }
    }

    /// A headless chromium session, once the driver listens.
    async fn session(&self, profile: &std::path::Path) -> Browser {
        let started = Instant::now();
        loop {
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver never listened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let options = json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1280,1200", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        let caps = serde_json::Map::from_iter([
            ("browserName".to_owned(), json!("chrome")),
            ("goog:chromeOptions".to_owned(), options),
        ]);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session (is Debian's chromium installed?)")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every number cell the page drew, as `ROW/KEY` → text, where ROW is
/// `listener/NAME`, `backend/POOL/NAME` or `policy/NAME`.
const READ_CELLS: &str = r#"
const out = {};
for (const td of document.querySelectorAll('td[data-k]')) {
  const tr = td.parentElement;
  const row = tr.dataset.listener !== undefined ? 'listener/' + tr.dataset.listener
    : tr.dataset.backend !== undefined ? 'backend/' + tr.dataset.pool + '/' + tr.dataset.backend
    : tr.dataset.policy !== undefined ? 'policy/' + tr.dataset.policy : null;
  if (row) out[row + '/' + td.dataset.k] = td.textContent;
}
out.loaded = document.body.dataset.loaded || '';
return out;
"#;

async fn cells(browser: &Browser) -> BTreeMap<String, String> {
    let v = browser.execute(READ_CELLS, vec![]).await.unwrap();
    serde_json::from_value(v).unwrap()
}

/// Waits until the page has drawn again after `after` (its `loaded`
/// stamp changes), and returns what it drew.
async fn redrawn(browser: &Browser, after: &str) -> BTreeMap<String, String> {
    let started = Instant::now();
    loop {
        let c = cells(browser).await;
        if !c["loaded"].is_empty() && c["loaded"] != after {
            return c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the page never redrew"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of a family's series whose labels include every `labels` pair,
/// from `/metrics` (with the token).
async fn from_metrics(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let auth = format!("Bearer {TOKEN}");
    let text = get(
        &client(false),
        admin,
        "/metrics",
        &[("authorization", &auth)],
    )
    .await
    .text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the page fits `width` × `height` without scrolling sideways
/// (wide tables scroll inside their own box).
async fn fits(browser: &Browser, width: u32, height: u32) -> bool {
    // WebDriver's resize returns once the window has the size; reading
    // scrollWidth then lays the page out at it.
    browser.set_window_size(width, height).await.unwrap();
    let v = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    v == Value::Bool(true)
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("SWITCHYARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp_dir("status-page").join("status-page.png"))
}

/// Traffic over a few of the sampler's intervals, then none: 72 HTTP
/// requests on `site` (12 of them answered 500 by `bad`), 3 TCP
/// connections on `raw`.
async fn send_traffic(sy: &switchyard::daemon::Running) {
    let c = client(false);
    for _ in 0..12 {
        for _ in 0..4 {
            assert_eq!(get(&c, sy.addr("site"), "/", &[]).await.status, 200);
        }
        assert_eq!(get(&c, sy.addr("site"), "/api/x", &[]).await.status, 500);
        assert_eq!(get(&c, sy.addr("site"), "/images/y", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(sy.addr("raw"))
            .await
            .unwrap();
        let head = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes())
            .await
            .unwrap();
        let mut body = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut body)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"));
    }
}

/// Opens the page; it asks for the token (the API answers 401 without
/// it), once, and is given it.
async fn log_in(browser: &Browser, admin: SocketAddr) {
    browser.goto(&format!("http://{admin}/")).await.unwrap();
    let field = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#login:not([hidden]) #token"))
        .await
        .expect("the page asks for the token");
    field.send_keys(TOKEN).await.unwrap();
    browser
        .find(Locator::Css("#login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Every number the page drew after the traffic ended is /metrics's.
async fn check_numbers(
    page: &BTreeMap<String, String>,
    admin: SocketAddr,
    rows: &[(&str, String)],
) {
    let number = |key: &str| -> f64 {
        let text = page
            .get(key)
            .unwrap_or_else(|| panic!("no cell {key}: {page:?}"));
        text.parse().unwrap_or_else(|_| panic!("{key} = {text:?}"))
    };
    let requests = "switchyard_http_requests_total";
    let tcp = "switchyard_tcp_connections_total";
    assert_eq!(number("listener/site/requests"), 72.0);
    assert_eq!(
        number("listener/site/requests"),
        from_metrics(admin, requests, &[("listener", "site")]).await
    );
    assert_eq!(number("listener/raw/requests"), 3.0);
    assert_eq!(
        number("listener/raw/requests"),
        from_metrics(admin, tcp, &[("listener", "raw")]).await
    );
    let mut total = 0.0;
    for (pool, backend) in rows {
        let labels = [("pool", *pool), ("backend", backend.as_str())];
        let sent =
            from_metrics(admin, requests, &labels).await + from_metrics(admin, tcp, &labels).await;
        let row = format!("backend/{pool}/{backend}");
        assert_eq!(number(&format!("{row}/requests")), sent, "{row}");
        let errors = [labels[0], labels[1], ("status_class", "5xx")];
        assert_eq!(
            number(&format!("{row}/server_errors")),
            from_metrics(admin, requests, &errors).await,
            "{row}"
        );
        total += sent;
    }
    assert_eq!(total, 75.0, "every request and connection is on some row");
    assert_eq!(
        number("policy/path-router/calls"),
        from_metrics(
            admin,
            "switchyard_policy_calls_total",
            &[("policy", "path-router")]
        )
        .await
    );
    assert_eq!(page["policy/path-router/errors"], "none");
    assert_eq!(page["policy/path-router/canary"], "none");
}

/// Whether `/api/pools/web` says `backend` is drained.
async fn drained_in_api(admin: SocketAddr, backend: &str) -> bool {
    let auth = format!("Bearer {TOKEN}");
    let pools = get(
        &client(false),
        admin,
        "/api/pools/web",
        &[("authorization", &auth)],
    )
    .await;
    let v: Value = serde_json::from_slice(&pools.body).unwrap();
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["name"] == backend && b["drained"] == true)
}

/// Presses drain on `backend`'s row: the API sees it drained, and the page
/// then offers undrain.
async fn drain_from_the_page(browser: &Browser, admin: SocketAddr, backend: &str) {
    let button =
        format!("tr[data-pool=\"web\"][data-backend=\"{backend}\"] button[data-action=\"drain\"]");
    assert!(!drained_in_api(admin, backend).await);
    browser
        .find(Locator::Css(&button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let started = Instant::now();
    while !drained_in_api(admin, backend).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "drain never reached the API"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let undrain = button.replace("\"drain\"", "\"undrain\"");
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&undrain))
        .await
        .expect("the page shows the backend drained");
    let page = cells(browser).await;
    assert_eq!(page[&format!("backend/web/{backend}/health")], "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_metrics_says_and_drains_a_backend() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let bad = TestBackend::failing("bad", 500).await;
    let dir = temp_dir("status-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = CONFIG.replace("{token}", &token_file.display().to_string());
    let addrs = BTreeMap::from([("a", a.addr), ("b", b.addr), ("bad", bad.addr)]);
    let sy = start_switchyard(&config, &addrs).await;
    let admin = sy.admin_addr.unwrap();
    send_traffic(&sy).await;

    let driver = Driver::start();
    let browser = driver.session(&dir.join("profile")).await;
    log_in(&browser, admin).await;
    // Drawn twice: the second time surely after the traffic ended.
    let page = redrawn(&browser, "").await;
    let page = redrawn(&browser, &page["loaded"]).await;
    let rows = [
        ("web", a.addr.to_string()),
        ("web", b.addr.to_string()),
        ("api", bad.addr.to_string()),
        ("images", a.addr.to_string()),
    ];
    check_numbers(&page, admin, &rows).await;
    assert_eq!(
        page[&format!("backend/api/{}/server_errors", bad.addr)],
        "12"
    );
    assert_eq!(
        page[&format!("backend/api/{}/error_ratio", bad.addr)],
        "100.0%"
    );

    drain_from_the_page(&browser, admin, &a.addr.to_string()).await;
    assert_eq!(
        get(&client(false), sy.addr("site"), "/", &[]).await.text(),
        "b"
    );

    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    eprintln!("status page screenshot: {}", path.display());

    // A phone, and a terminal-sized window: no sideways scrolling.
    assert!(
        fits(&browser, 390, 844).await,
        "the page overflows a phone's width"
    );
    assert!(
        fits(&browser, 640, 400).await,
        "the page overflows a small window"
    );
    browser.close().await.unwrap();
    drop(driver);
    sy.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
