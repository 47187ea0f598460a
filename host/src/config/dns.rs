//! `[dns]`: the resolvers behind backends given by name.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::validate::{Problems, ms};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// Resolvers as `ip` or `ip:port` (port 53); none: the system's
    /// (`/etc/resolv.conf`).
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for DnsFile {
    fn default() -> Self {
        DnsFile {
            servers: Vec::new(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    2000
}

/// The resolvers, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Empty: the system's resolvers.
    pub servers: Vec<SocketAddr>,
    /// One query's time to answer (one attempt per server).
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_millis(default_timeout_ms()),
        }
    }
}

pub(super) fn dns(f: DnsFile, problems: &mut Problems) -> DnsConfig {
    let mut servers = Vec::new();
    for (i, s) in f.servers.iter().enumerate() {
        match s
            .parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        {
            Ok(a) => servers.push(a),
            Err(_) => problems.push(format!(
                "dns.servers[{i}]: {s:?} is not an address like \"10.0.0.2\" or \"127.0.0.1:5353\""
            )),
        }
    }
    DnsConfig {
        servers,
        timeout: ms(problems, "dns.timeout_ms", f.timeout_ms),
    }
}
