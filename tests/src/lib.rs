//! Test harness over real loopback sockets: small in-process backends
//! bound to port 0, a Switchyard started from TOML text with `{name}`
//! placeholders for backend addresses, and clients.
//!
//! The tests are not black-box. Traffic goes through real sockets, but the
//! daemon runs in the test's process, started through
//! `switchyard::daemon`, and tests read what it exposes there as well as
//! what it says on the wire: [`switchyard::daemon::Running`]'s view of
//! pools, policies and refused files, and the `/metrics` text of its admin
//! listener. The only black-box tests are `host/tests/daemon.rs` and
//! `host/tests/cli.rs`, which run the binary.
//!
//! A test waits for events, never for time: [`wait_until`] a condition,
//! [`Harness::wait_for_metric`] a counter, [`until_seen`] a request at a
//! backend. Sleeps in tests pace traffic (a slow upload, a backend that
//! answers late); none stands in for "long enough for it to happen".

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use switchyard;

pub mod redis;
pub mod tls;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// A whole body in one frame.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// A backend answering with its name; special paths:
/// `/echo` streams the request body back, `/bytes/N` answers N bytes,
/// `/hang` never answers, `/status/N` answers status N, `/ws` switches
/// protocols and echoes raw bytes.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted since start.
    pub connections: Arc<AtomicUsize>,
    /// Connections open now (closed by either side ends one).
    pub open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend the test writes itself: `serve` runs on each accepted
/// connection. Stops accepting when dropped.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    pub async fn start<F, Fut>(serve: F) -> RawBackend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream));
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// An HTTP backend whose answers the test writes: `answer` maps each
/// request to its response (HTTP/1.1 and h2c).
pub async fn http_backend<F, Fut>(answer: F) -> RawBackend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    RawBackend::start(move |stream| {
        let answer = answer.clone();
        async move {
            let svc = service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deterministic test bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

async fn answer(
    name: String,
    fail_with: Option<u16>,
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Body> {
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let mut resp = if let Some(code) = fail_with {
        let mut r = Response::new(full(name.clone()));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        r
    } else if path == "/echo" {
        Response::new(req.into_body().boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Response::new(full(pattern(n.parse().unwrap_or(0))))
    } else if path == "/hang" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Response::new(full(""))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(name.clone()));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        r
    } else if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return r;
    } else {
        Response::new(full(name.clone()))
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    resp
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name, None).await
    }

    /// A backend that answers every request with `status`.
    pub async fn failing(name: &str, status: u16) -> TestBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name, Some(status)).await
    }

    /// Starts on a given address (to restart a stopped backend in place).
    /// Dropping it closes the listener and every open connection.
    pub async fn start_on(at: SocketAddr, name: &str, fail_with: Option<u16>) -> TestBackend {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let open_now = Arc::new(AtomicUsize::new(0));
        let (n, s, c, o) = (
            name.to_owned(),
            seen.clone(),
            connections.clone(),
            open_now.clone(),
        );
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                o.fetch_add(1, Ordering::Relaxed);
                let (n, s, o) = (n.clone(), s.clone(), o.clone());
                open.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, s) = (n.clone(), s.clone());
                        async move { Ok::<_, Infallible>(answer(n, fail_with, req, s).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                    o.fetch_sub(1, Ordering::Relaxed);
                });
                while open.try_join_next().is_some() {}
            }
        });
        TestBackend {
            name: name.to_owned(),
            addr,
            seen,
            connections,
            open: open_now,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An address nothing listens on (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts Switchyard from TOML text. `{policies}` becomes the repository's
/// `policies/`; `{NAME}` becomes `addrs[NAME]`. Listeners should bind port 0.
pub async fn start_switchyard(
    toml: &str,
    addrs: &BTreeMap<&str, SocketAddr>,
) -> switchyard::daemon::Running {
    start_switchyard_with(toml, addrs, options(false, false)).await
}

/// As [`start_switchyard`], with the daemon's `options`.
pub async fn start_switchyard_with(
    toml: &str,
    addrs: &BTreeMap<&str, SocketAddr>,
    options: switchyard::daemon::Options,
) -> switchyard::daemon::Running {
    let text = toml.replace("{policies}", &repo().join("policies").display().to_string());
    let text = test_deadline(&fill(&text, addrs));
    let config = switchyard::config::Config::parse(Path::new("/tmp/switchyard-test.toml"), &text)
        .unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"));
    switchyard::daemon::start_with(config, options)
        .await
        .expect("switchyard starts")
        .0
}

/// How the tests start a daemon: on two workers of its own, as the binary
/// runs (`host/src/workers.rs`), so that every test exercises them; with
/// `SWITCHYARD_TEST_WORKERS=0`, on the test's own runtime.
pub fn options(watch: bool, strict_policies: bool) -> switchyard::daemon::Options {
    let workers = std::env::var("SWITCHYARD_TEST_WORKERS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(2);
    switchyard::daemon::Options {
        watch,
        strict_policies,
        workers: (workers > 0).then(|| switchyard::workers::Workers::start(workers).unwrap()),
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    BoxBody<Bytes, hyper::Error>,
>;

/// An HTTP/1.1 client (`h2 = false`) or an HTTP/2 prior-knowledge one.
pub fn client(h2: bool) -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// A response, read whole.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(c: &Client, req: Request<BoxBody<Bytes, hyper::Error>>) -> Got {
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("response within 20 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(c: &Client, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send(c, b.body(full(Bytes::new())).unwrap()).await
}

/// A request body streamed in chunks.
pub fn streamed(data: Vec<u8>, chunk: usize) -> BoxBody<Bytes, hyper::Error> {
    let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// Sends raw bytes and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh, empty folder for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "switchyard-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a file the way deploy tools do: beside it, then renamed over it.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A config whose `[policies]` names no `timeout_ms` gets 250 ms there.
/// The default, 10 ms, counts wall time; a debug build under the whole
/// suite's load (each daemon on two workers, many daemons at once)
/// missed it now and then, in tests that are not about the deadline
/// (a 503 where a fast policy call was meant to pass). The tests about
/// the deadline name theirs.
pub fn test_deadline(toml: &str) -> String {
    let Some(at) = toml.find("[policies]\n") else {
        return toml.to_owned();
    };
    let body = at + "[policies]\n".len();
    let section = toml[body..].split("\n[").next().unwrap_or("");
    if section
        .lines()
        .any(|l| l.trim_start().starts_with("timeout_ms"))
    {
        return toml.to_owned();
    }
    format!("{}timeout_ms = 250\n{}", &toml[..body], &toml[body..])
}

/// Fills `{NAME}` placeholders with addresses.
pub fn fill(toml: &str, addrs: &BTreeMap<&str, SocketAddr>) -> String {
    let mut text = toml.to_owned();
    for (name, addr) in addrs {
        text = text.replace(&format!("{{{name}}}"), &addr.to_string());
    }
    text
}

/// Starts Switchyard from `dir/switchyard.toml` (written from `toml`),
/// watching its policy directory and config file.
pub async fn start_watching(
    dir: &Path,
    toml: &str,
    addrs: &BTreeMap<&str, SocketAddr>,
) -> switchyard::daemon::Running {
    start_watching_strict(dir, toml, addrs, false).await
}

/// As [`start_watching`], choosing `--strict-policies`.
pub async fn start_watching_strict(
    dir: &Path,
    toml: &str,
    addrs: &BTreeMap<&str, SocketAddr>,
    strict_policies: bool,
) -> switchyard::daemon::Running {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, test_deadline(&fill(toml, addrs))).unwrap();
    let config = switchyard::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    switchyard::daemon::start_with(config, options(true, strict_policies))
        .await
        .expect("switchyard starts")
        .0
}

/// A POST with an empty JSON body, as the admin API wants it.
pub async fn post(c: &Client, addr: SocketAddr, path: &str) -> Got {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(full(Bytes::new()))
        .unwrap();
    send(c, req).await
}

/// Polls `check` every 10 ms until it holds, failing the test with `what`
/// after `limit`. Returns how long it took.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Checks `check` every 10 ms throughout `window` and fails the test the
/// first time it does not hold: for what must *not* happen (a client
/// served past a cap). The assertion runs during the whole window; it is
/// not a sleep followed by a look.
pub async fn holds_for(what: &str, window: Duration, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        assert!(check(), "{what}: broken after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(check(), "{what}: broken at the end of {window:?}");
}

/// Waits (at most 10 s) until a backend has seen a request to `path`: the
/// readiness signal for "this request is in flight there".
pub async fn until_seen(b: &TestBackend, path: &str) {
    let what = format!("{} sees {path}", b.name);
    wait_until(&what, Duration::from_secs(10), || {
        b.seen().iter().any(|s| s.uri.starts_with(path))
    })
    .await;
}

/// Reads one HTTP/1.1 head (through the blank line) byte by byte, so
/// nothing after it is consumed. `None` at EOF or error.
pub async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The `Content-Length` a head declares (0 when none).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until EOF or an error: how long that took and how many bytes
/// came; `None` if the stream was still open after `limit`.
pub async fn until_closed(s: &mut TcpStream, limit: Duration) -> Option<(Duration, usize)> {
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), n)),
            Ok(Ok(k)) => n += k,
        }
    }
}

/// A config of one pool `web` (backend `{web}`) and one HTTP listener `l`
/// on port 0: `head` goes first (`[admin]`, `[policies]`…), `pool` and
/// `listener` extend the two sections.
pub fn one_http_pool(head: &str, pool: &str, listener: &str) -> String {
    format!(
        "{head}\n[pools.web]\nbackends = [\"{{web}}\"]\n{pool}\n\
         [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{listener}\n"
    )
}

/// Three pools (`web`, `api`, `images`, each with the backend of that
/// name) and one HTTP listener `public` in front of `web` whose policy is
/// `path-router` from the policy directory `dir` (`"{policies}"`: the
/// repository's `policies/`).
pub fn three_pools(dir: &str) -> String {
    format!(
        r#"
[policies]
dir = "{dir}"
[pools.web]
backends = ["{{web}}"]
[pools.api]
backends = ["{{api}}"]
[pools.images]
backends = ["{{images}}"]
[listeners.public]
protocol = "http"
bind = "127.0.0.1:0"
pool = "web"
policy = "path-router"
"#
    )
}

/// One test's world: named backends, a Switchyard started from TOML whose
/// `{NAME}` placeholders are their addresses (and `{policies}` the
/// repository's policy directory), and an HTTP/1.1 client. Dropping it
/// stops Switchyard at once (listeners closed, connections cancelled) and
/// the backends, so a test that fails half-way leaves nothing serving.
pub struct Harness {
    pub sy: switchyard::daemon::Running,
    backends: BTreeMap<String, TestBackend>,
    pub client: Client,
}

/// A [`TestBackend`] named after each of `names`.
async fn made(names: &[&str]) -> Vec<TestBackend> {
    let mut made = Vec::new();
    for name in names {
        made.push(TestBackend::start(name).await);
    }
    made
}

impl Harness {
    /// Starts a [`TestBackend`] named after each of `backends`, then
    /// Switchyard.
    pub async fn start(toml: &str, backends: &[&str]) -> Harness {
        Harness::with(toml, made(backends).await).await
    }

    /// Starts Switchyard in front of backends the test made.
    pub async fn with(toml: &str, backends: Vec<TestBackend>) -> Harness {
        let addrs: BTreeMap<&str, SocketAddr> =
            backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
        let sy = start_switchyard_with(toml, &addrs, options(false, false)).await;
        Harness {
            sy,
            backends: backends.into_iter().map(|b| (b.name.clone(), b)).collect(),
            client: client(false),
        }
    }

    pub fn backend(&self, name: &str) -> &TestBackend {
        self.backends.get(name).unwrap_or_else(|| {
            panic!(
                "no backend {name:?} (backends: {:?})",
                self.backends.keys().collect::<Vec<_>>()
            )
        })
    }

    /// A listener's bound address.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.sy.addr(listener)
    }

    /// `GET path` on a listener, with the harness's HTTP/1.1 client.
    pub async fn get(&self, listener: &str, path: &str) -> Got {
        get(&self.client, self.addr(listener), path, &[]).await
    }

    /// The sum of the `/metrics` samples of `name` whose labels contain
    /// `labels` (`""` for all). Needs an `[admin]` listener.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric(&self.sy, name, labels).await
    }

    /// Waits (at most `limit`) until [`Harness::metric`] reaches
    /// `at_least`, and returns it: how a test learns that something it
    /// cannot see on the wire (a refused file, a timeout) has happened.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &str,
        at_least: f64,
        limit: Duration,
    ) -> f64 {
        wait_for_metric(&self.sy, name, labels, at_least, limit).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.sy.stop_now();
    }
}

/// The sum of the `/metrics` samples of `name` whose labels contain
/// `labels` (`""` for all), read from Switchyard's admin listener.
pub async fn metric(sy: &switchyard::daemon::Running, name: &str, labels: &str) -> f64 {
    let admin = sy
        .admin_addr
        .expect("metric() needs an [admin] listener in the test's config");
    let text = get(&client(false), admin, "/metrics", &[]).await.text();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls [`metric`] every 10 ms until it reaches `at_least`, failing the
/// test after `limit`; returns the value reached.
pub async fn wait_for_metric(
    sy: &switchyard::daemon::Running,
    name: &str,
    labels: &str,
    at_least: f64,
    limit: Duration,
) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let v = metric(sy, name, labels).await;
        if v >= at_least {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "{name}{{{labels}}} is {v}, not {at_least} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `sig` (`-HUP`, `-TERM`, …) to a process this test started, by
/// its PID, with `kill`.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
