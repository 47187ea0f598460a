//! systemd's readiness protocol (issue 24): the daemon, run as systemd
//! runs a `Type=notify` service, with `NOTIFY_SOCKET` naming a datagram
//! socket of the test's own, sends `READY=1` only once its listener
//! accepts and its policy serves, `RELOADING=1` then `READY=1` around a
//! SIGHUP reload, and `STOPPING=1` when SIGTERM starts the drain.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_tests::*;
use tokio::net::UnixDatagram;

/// The next notification, as its lines.
async fn next(socket: &UnixDatagram) -> String {
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .expect("a notification within 30 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn systemd_hears_ready_only_once_serving_then_reloading_and_stopping() {
    let web = TestBackend::start("web").await;
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.join("switchyard.toml");
    let text = fill(
        &format!(
            r#"
[policies]
dir = "{{policies}}"
[pools.web]
backends = ["{{web}}"]
[pools.api]
backends = ["{{web}}"]
[pools.images]
backends = ["{{web}}"]
[listeners.public]
protocol = "http"
bind = "127.0.0.1:{port}"
pool = "web"
policy = "path-router"
"#
        ),
        &BTreeMap::from([("web", web.addr)]),
    );
    let policies = repo().join("policies").display().to_string();
    std::fs::write(&config, text.replace("{policies}", &policies)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();

    let ready = next(&socket).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving: 1 listeners"), "{ready}");
    // At READY=1 the listener accepts and the policy decides: the request
    // reaches the backend through path-router at once.
    let at = format!("127.0.0.1:{port}").parse().unwrap();
    let got = get(&client(false), at, "/api/x", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(web.seen().len(), 1);

    signal(pid, "-HUP");
    let reloading = next(&socket).await;
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    let again = next(&socket).await;
    assert!(again.lines().any(|l| l == "READY=1"), "{again}");

    signal(pid, "-TERM");
    let stopping = next(&socket).await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
