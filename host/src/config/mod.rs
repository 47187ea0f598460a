//! Configuration: the TOML file (`file.rs`) checked into a `Config`.
//!
//! Every problem is reported, not just the first, each as one line naming
//! the file and the key: `switchyard.toml: listeners.web.pool: no pool named
//! "ap1" (pools: api, web)`. Bad configuration never panics.

pub mod dns;
pub mod file;
pub mod kv;
pub mod limits;
mod listeners;
mod pools;
pub mod rollout;
mod settings;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use file::FileConfig;
pub use file::{
    Algorithm, CertFile, CheckKind, ClientAuth, OnError, Protocol, ProxyProtocol, UnknownSni,
};

use limits::{FileCaps, Limits, PoolLimits};
pub use settings::{
    HttpSettings, Listener, ListenerConfig, ProtocolSettings, TcpSettings, UdpSettings,
};
use validate::validate;

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    pub admin: Option<AdminConfig>,
    pub policies: PolicySettings,
    pub pools: BTreeMap<String, PoolConfig>,
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub runtime: RuntimeConfig,
    pub dns: dns::DnsConfig,
    /// Where policies' key-value namespaces live (read at start only).
    pub kv: kv::KvBackend,
}

/// The admin listener (`[admin]`).
#[derive(Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// The bearer token from `token_file`, when one is set.
    pub token: Option<Arc<str>>,
    /// Extra names `Host` may carry (lower case, without a port).
    pub hosts: Vec<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("hosts", &self.hosts)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// The watched directory, resolved against the config file's folder.
    pub dir: PathBuf,
    pub limits: Limits,
    /// Compiled-artifact cache; `None` when `cache = false`.
    pub cache_dir: Option<PathBuf>,
    /// The engine's pooling-allocator slots (fixed at start).
    pub pool: PoolLimits,
    /// Size caps on policy files.
    pub files: FileCaps,
    /// Caps of each policy's KV namespace (fixed at start).
    pub kv: limits::KvLimits,
    /// Policies whose new versions start as canaries, by name.
    pub rollout: BTreeMap<String, rollout::Rollout>,
    /// Where rollouts keep the last good version of each policy and the
    /// digests they refused (`state_dir`, else systemd's
    /// `$STATE_DIRECTORY`).
    pub state_dir: Option<PathBuf>,
}

/// Where a backend is: an IP address, or a DNS name whose every address
/// (A and AAAA), or every SRV target, is a backend; names are resolved at
/// start and again as their TTL says, at least every
/// `resolve_interval_ms` (`upstream/dns.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddress {
    Ip(SocketAddr),
    Name {
        host: String,
        port: u16,
    },
    /// `srv:_service._proto.name`: port, weight and priority come from
    /// the records.
    Srv {
        name: String,
    },
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Ip(a) => write!(f, "{a}"),
            BackendAddress::Name { host, port } => write!(f, "{host}:{port}"),
            BackendAddress::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

impl BackendAddress {
    fn parse(s: &str) -> Option<BackendAddress> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(BackendAddress::Ip(a));
        }
        if let Some(name) = s.strip_prefix("srv:") {
            // `_service._proto.` labels carry underscores.
            return dns_name(name, true).then(|| BackendAddress::Srv {
                name: name.to_ascii_lowercase(),
            });
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        dns_name(host, false).then(|| BackendAddress::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether it is a name to resolve.
    pub fn is_name(&self) -> bool {
        !matches!(self, BackendAddress::Ip(_))
    }
}

/// A DNS name of letters, digits and `-` (and `_` when `underscore`),
/// labels of 1-63 bytes, at most 253 in all; a trailing dot is allowed.
fn dns_name(name: &str, underscore: bool) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique in the pool; defaults to the address as written.
    pub name: String,
    pub address: BackendAddress,
    pub weight: u32,
}

/// What the `hash` algorithm hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Path,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub algorithm: Algorithm,
    pub backends: Vec<BackendConfig>,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 (prior knowledge) to the backends.
    pub http2: bool,
    pub hash_key: HashKey,
    /// Time to wait for the response head once the request is sent.
    pub response_timeout: Duration,
    /// Pooled upstream connections idle longer than this are closed.
    pub idle_timeout: Duration,
    pub max_requests_per_backend: Option<u32>,
    /// HTTP: open HTTP/1.1 connections per backend, and idle ones kept.
    pub max_connections_per_backend: usize,
    pub max_idle_per_backend: usize,
    /// How often backends given by DNS name are resolved again.
    pub resolve_interval: Duration,
    /// Active health checks (`[pools.NAME.health]`).
    pub health: Option<HealthCheck>,
    /// Passive outlier detection (`[pools.NAME.outlier]`).
    pub outlier: Option<Outlier>,
    /// Send a PROXY protocol header first on each TCP connection.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS to the backends (`tls = true`).
    pub tls: Option<PoolTls>,
    /// HTTP: how a failed request is resent to another backend.
    pub retry: Retry,
    /// HTTP: the longest a response body may send nothing.
    pub body_timeout: Duration,
    /// HTTP: the longest a request may take upstream, all included.
    pub total_timeout: Option<Duration>,
}

/// When and how often an HTTP pool resends a failed request (`docs/CONFIG.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Resends per request, each to a backend not tried yet.
    pub retries: u32,
    /// Resend on connect errors, resets and EOF before the response head.
    pub on_error: bool,
    /// Resend when the response head did not come within the timeout.
    pub on_timeout: bool,
    /// Resends of requests that reached a backend, over the last 10 s: at
    /// most this share of the pool's requests, plus `min_per_second` per
    /// second (Finagle's and Linkerd's retry budget).
    pub budget_percent: u32,
    pub min_per_second: u32,
}

/// TLS from a pool to its backends; paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<CertFile>,
}

/// TLS termination on an HTTP listener; paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certs: Vec<CertFile>,
    pub default: Option<CertFile>,
    pub unknown_sni: UnknownSni,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub check_host: bool,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub path: String,
    /// Inclusive range of statuses that pass.
    pub expect_status: (u16, u16),
    pub host: Option<String>,
    /// Check this port of the backend's address instead of its own (an
    /// admin listener's `/readyz` beside the traffic port).
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub worker_threads: Option<usize>,
    /// How long shutdown waits for in-flight requests and connections.
    pub drain_timeout: Duration,
    /// Where access-log lines go (stdout when unset).
    pub access_log_file: Option<PathBuf>,
}

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_path_buf(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Config::parse(path, &text)
    }

    /// Checks configuration text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let errors = |problems| ConfigErrors {
            file: path.to_path_buf(),
            problems,
        };
        let file = parse_toml(text).map_err(|p| errors(vec![p]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        validate(file, path, base).map_err(errors)
    }

    /// The `.wasm` file of a policy named in a listener.
    pub fn policy_file(&self, name: &str) -> PathBuf {
        self.policies.dir.join(format!("{name}.wasm"))
    }
}

fn parse_toml(text: &str) -> Result<FileConfig, String> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| {
            format!(
                " (line {})",
                text[..s.start.min(text.len())].lines().count().max(1)
            )
        })
        .unwrap_or_default()
    };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| format!("{}{}", e.message().trim_end(), line_of(e.span())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = line_of(inner.span());
        let msg = inner.message().trim_end().to_owned();
        if path == "." || path.is_empty() {
            format!("{msg}{at}")
        } else {
            format!("{path}: {msg}{at}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("/etc/sy/switchyard.toml"), text)
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
        [policies]
        timeout_ms = 5
        [pools.web]
        backends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3, name = "b" }]
        [pools.api]
        algorithm = "least_request"
        backends = ["127.0.0.1:9003"]
        [listeners.public]
        protocol = "http"
        bind = "127.0.0.1:8080"
        pool = "web"
        policy = "path-router"
    "#;

    #[test]
    fn a_good_file_resolves_paths_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.policies.dir, Path::new("/etc/sy/policies"));
        assert_eq!(
            c.policy_file("path-router"),
            Path::new("/etc/sy/policies/path-router.wasm")
        );
        assert_eq!(c.policies.limits.timeout, Duration::from_millis(5));
        // Room for a cold instance (1 s) and the call (5 ms).
        assert_eq!(c.policies.limits.max_call_wall, Duration::from_millis(1005));
        assert_eq!(c.policies.limits.max_instances, 16);
        assert_eq!(c.policies.limits.memory_bytes, 32 << 20);
        assert!(c.admin.is_none());
        let web = &c.pools["web"];
        assert_eq!(web.algorithm, Algorithm::RoundRobin);
        assert_eq!(web.backends[0].name, "127.0.0.1:9001");
        assert_eq!(web.backends[1].name, "b");
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(c.listeners["public"].on_error, OnError::Reject);
    }

    #[test]
    fn an_unknown_pool_names_file_key_and_choices() {
        let text = GOOD.replace("pool = \"web\"", "pool = \"ap1\"");
        assert_eq!(
            problems(&text),
            "/etc/sy/switchyard.toml: listeners.public.pool: no pool named \"ap1\" (pools: api, web)"
        );
    }

    #[test]
    fn an_unknown_key_names_its_path() {
        let text = GOOD.replace(
            "algorithm = \"least_request\"",
            "algoritm = \"least_request\"",
        );
        let e = problems(&text);
        assert!(e.starts_with("/etc/sy/switchyard.toml: pools.api"), "{e}");
        assert!(e.contains("unknown field `algoritm`"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_path() {
        let text = GOOD.replace("least_request", "fastest");
        let e = problems(&text);
        assert!(e.contains("pools.api.algorithm"), "{e}");
        assert!(e.contains("fastest"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_once_per_line() {
        let text = r#"
            [admin]
            bind = "localhost"
            [pools.web]
            backends = ["nope", "127.0.0.1:1", "127.0.0.1:1"]
            [listeners.a]
            protocol = "tcp"
            bind = "127.0.0.1:80"
            [listeners.b]
            protocol = "http"
            bind = "127.0.0.1:80"
            pool = "web"
            policy = "../etc/passwd"
        "#;
        let e = problems(text);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 6, "{e}");
        for want in [
            "admin.bind",
            "pools.web.backends[0]",
            "pools.web.backends[2]: a second backend",
            "listeners.a: needs a pool",
            "listeners.b.bind: 127.0.0.1:80 is already bound by listeners.a",
            "listeners.b.policy",
        ] {
            assert!(e.contains(want), "missing {want:?} in\n{e}");
        }
    }

    #[test]
    fn toml_syntax_errors_give_a_line() {
        let e = problems("[pools.web]\nbackends = [\n");
        assert!(e.contains("line"), "{e}");
    }
}
