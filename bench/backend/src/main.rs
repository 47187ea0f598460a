//! `sy-backend`: a small, fast HTTP backend for benchmarks and the demo.
//!
//! It answers every request with `200`, `content-type: text/plain`,
//! `x-backend: NAME` and a fixed body that is built once at start and cloned
//! (a reference-count bump) per response. A request whose path starts with
//! `/echo` gets its own body streamed back instead. HTTP/1.1 (keep-alive) and
//! cleartext HTTP/2 with prior knowledge are served on the same port.
//!
//! ```text
//! sy-backend [--bind ADDR] [--body-size N] [--name NAME] [--threads N] [--delay-ms N] [--show-path]
//! ```
//!
//! The first line on stdout is `listening on ADDR` (the bound address, useful
//! with port 0). SIGTERM or ctrl-c ends the process with status 0.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const USAGE: &str = "\
usage: sy-backend [--bind ADDR] [--body-size N] [--name NAME] [--threads N] [--delay-ms N] [--show-path]

  --bind ADDR      address to listen on (default 127.0.0.1:9001; port 0 picks one)
  --body-size N    answer with N bytes (default 0: answer with NAME and a newline)
  --name NAME      value of the x-backend header and the default body (default backend)
  --threads N      tokio worker threads (default 1)
  --delay-ms N     answer each request N ms late (default 0: at once)
  --show-path      answer `NAME saw PATH` with the path and query it got (the demo)

Serves HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port.
A request whose path starts with /echo gets its body streamed back.
The first stdout line is `listening on ADDR`.";

#[derive(Debug)]
struct Args {
    bind: SocketAddr,
    body_size: usize,
    name: String,
    threads: usize,
    delay_ms: u64,
    show_path: bool,
}

/// Parses the command line; `Err` carries the message to print (usage for `--help`).
fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        bind: SocketAddr::from(([127, 0, 0, 1], 9001)),
        body_size: 0,
        name: "backend".to_owned(),
        threads: 1,
        delay_ms: 0,
        show_path: false,
    };
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        if flag == "--show-path" {
            args.show_path = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("sy-backend: {flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--bind" => {
                let v = value()?;
                args.bind = v
                    .parse()
                    .map_err(|e| format!("sy-backend: --bind {v:?}: {e}"))?;
            }
            "--body-size" => {
                let v = value()?;
                args.body_size = v
                    .parse()
                    .map_err(|e| format!("sy-backend: --body-size {v:?}: {e}"))?;
            }
            "--name" => {
                let v = value()?;
                HeaderValue::from_str(&v)
                    .map_err(|_| format!("sy-backend: --name {v:?} is not a valid header value"))?;
                args.name = v;
            }
            "--threads" => {
                let v = value()?;
                args.threads = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("sy-backend: --threads {v:?}: want an integer >= 1")),
                };
            }
            "--delay-ms" => {
                let v = value()?;
                args.delay_ms = v
                    .parse()
                    .map_err(|e| format!("sy-backend: --delay-ms {v:?}: {e}"))?;
            }
            _ => return Err(format!("sy-backend: unknown argument {flag:?}\n\n{USAGE}")),
        }
    }
    Ok(args)
}

/// What every response shares; cloning it is reference-count bumps only.
#[derive(Clone)]
struct Fixed {
    body: Bytes,
    name: HeaderValue,
    /// Each answer this late (a slow backend, for balancing benchmarks).
    delay: Option<Duration>,
    /// Answer `NAME saw PATH` (the demo shows what a rewrite did).
    show_path: bool,
}

type Body = Either<Full<Bytes>, Incoming>;

static X_BACKEND: HeaderName = HeaderName::from_static("x-backend");

fn respond(fixed: &Fixed, req: Request<Incoming>) -> Response<Body> {
    let body = if req.uri().path().starts_with("/echo") {
        Either::Right(req.into_body())
    } else if fixed.show_path {
        let name = fixed.name.to_str().unwrap_or("backend");
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        Either::Left(Full::new(Bytes::from(format!("{name} saw {target}\n"))))
    } else {
        Either::Left(Full::new(fixed.body.clone()))
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(X_BACKEND.clone(), fixed.name.clone());
    resp
}

async fn serve(listener: TcpListener, fixed: Fixed) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. EMFILE under a connection storm: back off briefly, keep serving.
                eprintln!("sy-backend: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let fixed = fixed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let delay = fixed.delay;
                let resp = respond(&fixed, req);
                async move {
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            // Clients resetting or closing mid-request is normal under load.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg == USAGE => {
            println!("{msg}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };

    let body = if args.body_size == 0 {
        Bytes::from(format!("{}\n", args.name))
    } else {
        // A readable repeating pattern ending in a newline.
        let mut v: Vec<u8> = b"0123456789abcdefghijklmnopqrstuvwxyz"
            .iter()
            .copied()
            .cycle()
            .take(args.body_size)
            .collect();
        if let Some(last) = v.last_mut() {
            *last = b'\n';
        }
        Bytes::from(v)
    };
    let fixed = Fixed {
        body,
        name: HeaderValue::from_str(&args.name).expect("validated in parse_args"),
        delay: (args.delay_ms > 0).then(|| Duration::from_millis(args.delay_ms)),
        show_path: args.show_path,
    };

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sy-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    rt.block_on(async move {
        let listener = match TcpListener::bind(args.bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sy-backend: cannot bind {}: {e}", args.bind);
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().unwrap_or(args.bind);
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {local}");
            let _ = out.flush();
        }
        // The accept loop runs on a worker thread, like the connections, so
        // the main thread only waits for the signal.
        let server = tokio::spawn(serve(listener, fixed));
        shutdown_signal().await;
        server.abort();
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.bind, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(a.body_size, 0);
        assert_eq!(a.name, "backend");
        assert!(!a.show_path);
        assert!(parse(&["--show-path"]).unwrap().show_path);
        assert_eq!(a.threads, 1);
    }

    #[test]
    fn all_flags_both_forms() {
        let a = parse(&[
            "--bind",
            "127.0.0.1:0",
            "--body-size=4096",
            "--name",
            "api",
            "--threads=2",
            "--delay-ms",
            "20",
        ])
        .unwrap();
        assert_eq!(a.bind.port(), 0);
        assert_eq!(a.body_size, 4096);
        assert_eq!(a.name, "api");
        assert_eq!(a.threads, 2);
        assert_eq!(a.delay_ms, 20);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["--bind", "nope"]).is_err());
        assert!(parse(&["--threads", "0"]).is_err());
        assert!(parse(&["--body-size"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["--delay-ms", "soon"]).is_err());
        assert!(parse(&["--name", "a\nb"]).is_err());
    }
}
