//! `sy-load`: an open-loop HTTP/1.1 load generator, for tail latency.
//!
//! wrk is a closed loop: a slow answer delays the next request on its
//! connection, so the requests a stall would have delayed are never sent
//! and the stall barely shows in the percentiles (coordinated omission).
//! `sy-load` sends request `k` at `start + k / rate` whatever happened to
//! the earlier ones, on the first of `--connections` keep-alive
//! connections that is free, and counts each latency from when the
//! request was due:
//!
//! - a connection free when the request is due sleeps until then, and the
//!   latency starts when it wakes (the timer's lateness, up to a tick of
//!   tokio's 1 ms wheel, is the generator's and is not counted);
//! - a request that found every connection busy is counted from when it
//!   was due, so a stall costs every request it held up, as wrk2 counts.
//!
//! ```text
//! sy-load --addr ADDR --rate N --seconds S [--connections C] [--path P]
//! ```
//!
//! Prints one line: `requests N errors E late L rate R p50 A p90 B p99 C
//! p999 D max E` (milliseconds), where `late` counts requests that found
//! every connection busy. Exit status 1 when any request failed. Loopback
//! only by intent: the address is whatever the caller gives, so give it
//! 127.0.0.1. The run ends by itself after `--seconds` (plus at most 5 s
//! for the last answers).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

const USAGE: &str = "usage: sy-load --addr ADDR --rate N --seconds S [--connections C] [--path P]";

struct Args {
    addr: SocketAddr,
    rate: f64,
    seconds: f64,
    connections: usize,
    path: String,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:9200".parse().unwrap(),
        rate: 0.0,
        seconds: 0.0,
        connections: 50,
        path: "/".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
            "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
            "--path" => args.path = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !(args.rate > 0.0 && args.seconds > 0.0 && args.connections > 0) {
        return Err("--rate, --seconds and --connections must be positive".into());
    }
    Ok(args)
}

/// What the connections share (one thread: no locks).
struct Plan {
    start: Instant,
    interval: Duration,
    total: u64,
    next: Cell<u64>,
    micros: RefCell<Vec<u64>>,
    late: Cell<u64>,
}

impl Plan {
    /// The next request's index and when it was due, or None at the end.
    fn claim(&self) -> Option<Instant> {
        let k = self.next.get();
        if k >= self.total {
            return None;
        }
        self.next.set(k + 1);
        Some(self.start + self.interval.mul_f64(k as f64))
    }
}

async fn connection(plan: Rc<Plan>, addr: SocketAddr, path: Rc<str>) {
    let mut sender = None;
    while let Some(due) = plan.claim() {
        let begin = if Instant::now() > due {
            plan.late.set(plan.late.get() + 1);
            due
        } else {
            tokio::time::sleep_until(due).await;
            Instant::now()
        };
        if sender.is_none() {
            sender = connect(addr).await;
        }
        let ok = match sender.as_mut() {
            Some(s) => send(s, addr, &path).await,
            None => false,
        };
        if ok {
            let us = begin.elapsed().as_micros() as u64;
            plan.micros.borrow_mut().push(us);
        } else {
            sender = None;
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

async fn send(sender: &mut Sender, addr: SocketAddr, path: &str) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .expect("a GET with a valid path");
    match sender.send_request(req).await {
        Ok(resp) if resp.status() == 200 => resp.into_body().collect().await.is_ok(),
        _ => false,
    }
}

fn at(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sy-load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    let plan = Rc::new(Plan {
        start: Instant::now() + Duration::from_millis(100),
        interval: Duration::from_secs_f64(1.0 / args.rate),
        total: (args.rate * args.seconds).round() as u64,
        next: Cell::new(0),
        micros: RefCell::new(Vec::new()),
        late: Cell::new(0),
    });
    let path: Rc<str> = args.path.into();
    let limit = Duration::from_secs_f64(args.seconds + 5.0);
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            tasks.push(tokio::task::spawn_local(connection(
                plan.clone(),
                args.addr,
                path.clone(),
            )));
        }
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    });
    let elapsed = plan.start.elapsed().as_secs_f64();
    let mut micros = plan.micros.take();
    micros.sort_unstable();
    // Failed, never sent, or still unanswered at the time limit.
    let errors = plan.total - micros.len() as u64;
    if micros.is_empty() {
        println!("requests 0 errors {errors}");
        return ExitCode::FAILURE;
    }
    println!(
        "requests {} errors {} late {} rate {:.0} p50 {:.3} p90 {:.3} p99 {:.3} p999 {:.3} max {:.3}",
        micros.len(),
        errors,
        plan.late.get(),
        micros.len() as f64 / elapsed,
        at(&micros, 0.50),
        at(&micros, 0.90),
        at(&micros, 0.99),
        at(&micros, 0.999),
        at(&micros, 1.0),
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
