//! The daemon as an operator runs it: a real process, real signals.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard_tests::signal;

/// A backend that answers every request after `delay`, and tells `seen`
/// when a request arrives.
fn slow_backend(delay: Duration, seen: mpsc::Sender<()>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let seen = seen.clone();
                        async move {
                            let _ = seen.send(());
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                "slow done",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// Kills the daemon (by its PID) if a test ends early.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `switchyard run` and returns it with the address it listens on.
fn start_daemon(tag: &str, config: &str) -> (Daemon, SocketAddr, mpsc::Receiver<String>) {
    let dir = std::env::temp_dir().join(format!("switchyard-daemon-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut addr = None;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the daemon logs its listening address, then that it runs");
        if line.contains("listening")
            && let Some(a) = line.split("addr=").nth(1)
        {
            addr = Some(a.split_whitespace().next().unwrap().parse().unwrap());
        }
        if line.contains("switchyard running") {
            break;
        }
    }
    let addr = addr.expect("a listening address was logged");
    (Daemon(child), addr, rx)
}

/// Polls `check` every 10 ms, failing after 10 s.
fn wait_for(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the daemon did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let (seen_tx, seen) = mpsc::channel();
    let backend = slow_backend(Duration::from_millis(800), seen_tx);
    let (mut daemon, addr, _log) = start_daemon(
        "sigterm",
        &format!(
            "[pools.web]\nbackends = [\"{backend}\"]\n[listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[runtime]\ndrain_timeout_ms = 10000\n"
        ),
    );
    let child = &mut daemon.0;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    seen.recv_timeout(Duration::from_secs(10))
        .expect("the backend got the request");
    signal(child.id(), "-TERM");
    let mut out = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("slow done"), "{out}");
    let status = wait_exit(child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // Once draining, nothing new is accepted.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[test]
fn a_second_signal_exits_at_once() {
    let (seen_tx, seen) = mpsc::channel();
    let backend = slow_backend(Duration::from_secs(60), seen_tx);
    let (mut daemon, addr, _log) = start_daemon(
        "second",
        &format!(
            "[pools.web]\nbackends = [\"{backend}\"]\n[listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[runtime]\ndrain_timeout_ms = 60000\n"
        ),
    );
    let child = &mut daemon.0;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    seen.recv_timeout(Duration::from_secs(10)).unwrap();
    signal(child.id(), "-TERM");
    // Must not exit while the request is in flight: watched throughout.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(300) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited after {:?} with a 60 s request in flight",
            watched.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(child.id(), "-INT");
    let status = wait_exit(child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

/// A fast backend answering "ok" (for load through an upgrade).
fn fast_backend() -> SocketAddr {
    let (tx, _rx) = mpsc::channel();
    // The receiver is dropped: `send` just fails, which the backend ignores.
    slow_backend(Duration::ZERO, tx)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_new_process_takes_over_the_port_while_the_old_one_drains() {
    let backend = fast_backend();
    let port = free_port();
    let config = format!(
        "[pools.web]\nbackends = [\"{backend}\"]\n[listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:{port}\"\npool = \"web\"\n[runtime]\ndrain_timeout_ms = 5000\n"
    );
    let (mut old, addr, _log_old) = start_daemon("upgrade-old", &config);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let r = (|| -> std::io::Result<String> {
                    let mut s = TcpStream::connect(addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok(out)
                })();
                match r {
                    Ok(out) if out.starts_with("HTTP/1.1 200") => {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    wait_for("the old process serves the load", || {
        served.load(std::sync::atomic::Ordering::Relaxed) >= 20
    });
    let (mut new, new_addr, _log_new) = start_daemon("upgrade-new", &config);
    assert_eq!(new_addr, addr, "both processes listen on the same port");
    signal(old.0.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut old.0, Duration::from_secs(10)).code(),
        Some(0)
    );
    let before = served.load(std::sync::atomic::Ordering::Relaxed);
    wait_for("the new process serves after the old one left", || {
        served.load(std::sync::atomic::Ordering::Relaxed) >= before + 20
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let failures = failures.lock().unwrap();
    // A connection the kernel hashes to the old listener between its last
    // accept and its close is reset, unless the host migrates such
    // connections (`net.ipv4.tcp_migrate_req`, docs/OPERATIONS.md). That
    // window is microseconds wide: without the sysctl one reset is
    // tolerated (and said), never more, and never another failure.
    let migrates = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    let resets = failures
        .iter()
        .filter(|f| f.contains("ConnectionReset"))
        .count();
    if !migrates && resets == 1 && failures.len() == 1 {
        eprintln!("one connection reset in the close window (tcp_migrate_req is off)");
    } else {
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    }
    signal(new.0.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut new.0, Duration::from_secs(10)).code(),
        Some(0)
    );
}

/// Under systemd the soft open-file limit is 1,024 by default: the daemon
/// raises it to the hard limit at start, and warns when the listeners'
/// `max_connections` (times two: client and upstream sockets) exceed it.
#[test]
fn the_open_file_soft_limit_is_raised_and_a_short_one_is_warned_about() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    if hard == "unlimited" || hard.parse::<u64>().unwrap() <= 256 {
        eprintln!("SKIPPED: the hard open-file limit ({hard}) leaves nothing to raise");
        return;
    }
    let hard: u64 = hard.parse().unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-daemon-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    // More connections than the hard limit can hold twice over.
    let max = hard;
    std::fs::write(
        &path,
        format!(
            "[pools.web]\nbackends = [\"127.0.0.1:9\"]\n[listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\nmax_connections = {max}\n"
        ),
    )
    .unwrap();
    // A shell lowers the soft limit, then becomes the daemon (same PID).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" run --config \"$1\" --log-level info")
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon_pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let _daemon = Daemon(child);
    let mut warned = false;
    let mut running = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        warned |= line.contains("open-file limit below");
        if line.contains("switchyard running") {
            running = true;
            break;
        }
    }
    assert!(running, "the daemon started");
    assert!(warned, "the short limit was warned about");
    let limits = std::fs::read_to_string(format!("/proc/{daemon_pid}/limits")).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        soft, hard,
        "the soft limit was raised from 256 to the hard limit"
    );
}

/// Every request to a dead backend fails and would log a warning or two:
/// 10,000 of them must not write 10,000 lines. Each call site logs at
/// most 10 lines a second, then says how many it suppressed.
#[test]
fn ten_thousand_failing_requests_log_a_bounded_number_of_lines() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (daemon, addr, lines) = start_daemon(
        "logflood",
        &format!(
            "[pools.web]\nbackends = [\"{dead_addr}\"]\nretries = 0\n\
             [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n"
        ),
    );
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut failed = 0;
    for _ in 0..10_000 {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 5"), "{status:?}");
        failed += 1;
        // Skip the rest of the head and the body.
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
    let took = started.elapsed();
    // Let the log thread write what it queued.
    std::thread::sleep(Duration::from_millis(300));
    let logged: Vec<String> = lines.try_iter().collect();
    let warnings = logged.iter().filter(|l| l.contains("WARN")).count();
    let seconds = took.as_secs() + 1;
    eprintln!("{failed} failed requests in {took:?}: {warnings} warning lines");
    // Each failing request passes two call sites (connect failed, request
    // failed); each may write 10 lines and one "suppressed" line a second.
    assert!(
        warnings as u64 <= 2 * 11 * (seconds + 1),
        "{warnings} warning lines for {failed} failed requests in {took:?}"
    );
    assert!(warnings >= 2, "the failures were not logged at all");
    assert!(
        logged.iter().any(|l| l.contains("suppressed")),
        "the suppressed lines were not counted"
    );
    drop(daemon);
}

/// The write-type syscalls (`write`, `writev`, ...: `syscw` in
/// `/proc/PID/task/TID/io`) the daemon's worker threads have made.
fn worker_writes(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("switchyard-w") {
            continue;
        }
        let io = std::fs::read_to_string(task.join("io")).unwrap();
        let syscw = io
            .lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .expect("a syscw line");
        total += syscw.trim().parse::<u64>().unwrap();
    }
    total
}

/// One `GET /` on `conn` (keep-alive); the status line.
fn keep_alive_get(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).unwrap();
    head.lines().next().unwrap().to_owned()
}

/// A keep-alive request costs its worker two writes, one to the backend
/// and one to the client, and no wake-up of its own: tokio's
/// current-thread driver writes to its eventfd when a timer is set
/// earlier than the wake it planned, which the response timeout and
/// hyper's header timer did on every request until the workers got a
/// heartbeat (`workers::HEARTBEAT`).
#[test]
fn a_keep_alive_request_costs_its_worker_two_writes_and_no_wake_up() {
    let backend = fast_backend();
    let config = format!(
        "[pools.web]\nbackends = [\"{backend}\"]\n\
         [listeners.l]\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         request_ids = false\n[runtime]\nworker_threads = 1\n"
    );
    let (daemon, addr, _log) = start_daemon("wakes", &config);
    let pid = daemon.0.id();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..50 {
        assert_eq!(keep_alive_get(&mut conn), "HTTP/1.1 200 OK");
    }
    let before = worker_writes(pid);
    let n = 500;
    for _ in 0..n {
        assert_eq!(keep_alive_get(&mut conn), "HTTP/1.1 200 OK");
    }
    let per_request = (worker_writes(pid) - before) as f64 / n as f64;
    // 2.00 with the heartbeat, 3.00 without. The heartbeat's own
    // re-arm writes to the eventfd 4 times a second, a few hundredths
    // of a write per request over this run.
    assert!(
        per_request < 2.1,
        "{per_request:.2} writes per keep-alive request"
    );
}
