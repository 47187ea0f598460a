//! A real `redis-server` (Debian's package, which `cargo xtask test`
//! installs) on a free loopback port, for the shared KV store's tests.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A redis-server of its own, stopped by its PID when dropped.
pub struct TestRedis {
    pub addr: SocketAddr,
    child: Child,
}

/// A port nothing listens on now (bound, then closed).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl TestRedis {
    /// Starts one (no persistence; `DEBUG` allowed, to make it slow) and
    /// waits until it answers `PING`.
    pub async fn start() -> TestRedis {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (to bring a stopped one back in place).
    pub async fn start_on(port: u16) -> TestRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (cargo xtask test installs Debian's redis-server)");
        let r = TestRedis {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        };
        let started = Instant::now();
        loop {
            if r.command(&["PING"]).await.is_some_and(|a| a == "+PONG") {
                return r;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Sends one command (RESP) and returns the first line of the answer.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        Self::command_at(self.addr, args).await
    }

    /// [`TestRedis::command`] to a server at `addr`.
    pub async fn command_at(addr: SocketAddr, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(text.lines().next().unwrap_or_default().to_owned())
    }

    /// Stops it now (SIGKILL by PID) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
