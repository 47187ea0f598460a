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

/// The PROXY header that tells a backend who the client is: `client` is the
/// (possibly PROXY-given) client address, `local` the address it connected
/// to. Mixed families (an IPv4 client on an IPv6 socket) are sent as IPv6.
pub fn header(
    version: crate::config::ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        crate::config::ProxyProtocol::V1 => v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        crate::config::ProxyProtocol::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .unwrap_or_default(),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyProtocol;

    #[test]
    fn v1_and_v2_headers_parse_back_to_the_client() {
        let client: SocketAddr = "192.0.2.7:4711".parse().unwrap();
        let local: SocketAddr = "[::ffff:127.0.0.1]:8443".parse().unwrap();
        let v1 = header(ProxyProtocol::V1, client, local);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 8443\r\n");
        for h in [v1, header(ProxyProtocol::V2, client, local)] {
            let parsed = HeaderResult::parse(&h);
            assert_eq!(source(&parsed), Some(client));
            assert_eq!(header_len(&parsed), Some(h.len()));
        }
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let client: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let local: SocketAddr = "[2001:db8::1]:2".parse().unwrap();
        let h = header(ProxyProtocol::V1, client, local);
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n");
    }
}
