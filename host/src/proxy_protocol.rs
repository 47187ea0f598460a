//! Accepting the PROXY protocol (v1 text, v2 binary) from a trusted load
//! balancer in front of Switchyard, so the real client's address is the one
//! policies, logs and backends see. Parsing is the `ppp` crate's; this
//! module only finds the header's end without reading past it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header accepted: v1 is at most 107 bytes; v2 with TLVs is
/// bounded here.
const MAX_HEADER: usize = 1024;

/// How long a peer may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The client address a PROXY header names; `None` for `UNKNOWN` / `LOCAL`
/// (health checks of the balancer in front), where the peer stands.
fn source(h: &HeaderResult<'_>) -> Option<SocketAddr> {
    match h {
        HeaderResult::V1(Ok(h)) => match &h.addresses {
            v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v1::Addresses::Unknown => None,
        },
        HeaderResult::V2(Ok(h)) => match &h.addresses {
            v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            _ => None,
        },
        _ => None,
    }
}

fn header_len(h: &HeaderResult<'_>) -> Option<usize> {
    match h {
        HeaderResult::V1(Ok(h)) => Some(h.header.len()),
        HeaderResult::V2(Ok(h)) => Some(h.len()),
        _ => None,
    }
}

/// Checks the peer is trusted, then reads exactly one PROXY header from
/// the connection and returns the client address it names (or the peer's
/// for `UNKNOWN`/`LOCAL`). Anything else is an error: the caller closes.
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
) -> Result<SocketAddr, String> {
    let peer_ip = peer.ip().to_canonical();
    if !trusted.iter().any(|n| n.contains(&peer_ip)) {
        return Err(format!("{peer_ip} is not in trusted_proxies"));
    }
    let deadline = Instant::now() + HEADER_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.peek(&mut buf))
            .await
            .map_err(|_| "no PROXY header in time".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a PROXY header".into());
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == buf.len() {
                return Err("PROXY header too long".into());
            }
            // Split across segments: wait for more (peek would return the
            // same bytes at once).
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let Some(len) = header_len(&parsed) else {
            return Err("not a valid PROXY protocol header".into());
        };
        let client = source(&parsed).unwrap_or(peer);
        let mut header = vec![0u8; len];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(client);
    }
}
