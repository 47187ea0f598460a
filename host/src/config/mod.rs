//! Configuration: the TOML file (`file.rs`) checked into a `Config`.
//!
//! Every problem is reported, not just the first, each as one line naming
//! the file and the key: `switchyard.toml: listeners.web.pool: no pool named
//! "ap1" (pools: api, web)`. Bad configuration never panics.

pub mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use file::{
    Algorithm, CertFile, CheckKind, ClientAuth, OnError, Protocol, ProxyProtocol, UnknownSni,
};
use file::{BackendFile, FileConfig};

use crate::policy::{FileCaps, Limits, PoolLimits};

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
    pub kv: crate::policy::kv::KvLimits,
}

/// Where a backend is: an IP address, or a DNS name resolved at start and
/// again every `resolve_interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Ip(a) => write!(f, "{a}"),
            BackendAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl BackendAddress {
    fn parse(s: &str) -> Option<BackendAddress> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(BackendAddress::Ip(a));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        valid.then(|| BackendAddress::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
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
pub struct ListenerConfig {
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub pool: Option<String>,
    /// The policy's name: `policies/<name>.wasm`.
    pub policy: Option<String>,
    pub on_error: OnError,
    /// Another config for the policy than `<policy>.json`.
    pub policy_config: Option<PathBuf>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_request_body_bytes: Option<u64>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Peers whose `X-Forwarded-For` (and PROXY header) is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection must start with a PROXY protocol v1/v2 header from
    /// a `trusted_proxies` peer; others are closed.
    pub accept_proxy_protocol: bool,
    pub http2_max_concurrent_streams: u32,
    /// One access-log line per request or connection: off, text or json.
    pub access_log: crate::admin::access_log::Format,
    /// tcp: read the ClientHello (bounded by `sni_peek_timeout` and 16 KiB)
    /// so the policy sees SNI and ALPN.
    pub peek_sni: bool,
    pub sni_peek_timeout: Duration,
    /// tcp: a connection with no bytes either way this long is closed;
    /// udp: a flow with no datagram either way this long is forgotten.
    pub idle_timeout: Duration,
    /// http: TLS termination.
    pub tls: Option<ListenerTls>,
    /// http: the longest request target accepted (414 beyond).
    pub max_uri_bytes: usize,
    /// http: normalize paths (`l7/path.rs`); off passes them raw.
    pub normalize_path: bool,
    /// http: what `%2F`, `%5C` and `\` in a path do.
    pub path_with_escaped_slashes: crate::l7::path::EscapedSlashes,
    /// http: the longest wait for a connection's first byte.
    pub first_byte_timeout: Duration,
    /// http: the longest a write to the client may make no progress.
    pub send_timeout: Duration,
    /// http: the longest a request body may send nothing.
    pub request_body_timeout: Duration,
    /// http: HTTP/2 PING interval, and the wait for its ack.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// http: an upgraded tunnel quiet this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// udp: new flows one source address may start per second.
    pub new_flows_per_source_per_second: u32,
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

fn names<T>(m: &BTreeMap<String, T>) -> String {
    if m.is_empty() {
        "none defined".into()
    } else {
        m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

fn valid_policy_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.starts_with('.')
}

fn validate(f: FileConfig, path: &Path, base: &Path) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();

    let admin = f.admin.and_then(|a| {
        let bind = match a.bind.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                problems.push(format!(
                    "admin.bind: {:?} is not an address like \"127.0.0.1:9901\"",
                    a.bind
                ));
                return None;
            }
        };
        let token = match a.token_file.map(|t| base.join(t)) {
            None => None,
            Some(file) => match std::fs::read_to_string(&file) {
                Ok(t) if t.trim().len() >= 16 && t.trim().bytes().all(|b| b.is_ascii_graphic()) => {
                    Some(Arc::from(t.trim()))
                }
                Ok(_) => {
                    problems.push(format!(
                        "admin.token_file: {} must hold one token of at least 16 printable ASCII characters",
                        file.display()
                    ));
                    None
                }
                Err(e) => {
                    problems.push(format!("admin.token_file: cannot read {}: {e}", file.display()));
                    None
                }
            },
        };
        Some(AdminConfig {
            bind,
            token,
            hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        })
    });

    let p = f.policies;
    if p.timeout_ms == 0 {
        problems.push("policies.timeout_ms: must be at least 1".into());
    }
    if p.memory_mb == 0 || p.memory_mb > 4096 {
        problems.push("policies.memory_mb: must be between 1 and 4096".into());
    }
    if p.max_calls_per_instance == 0 {
        problems.push("policies.max_calls_per_instance: must be at least 1".into());
    }
    if p.max_instances == 0 {
        problems.push("policies.max_instances: must be at least 1".into());
    }
    if p.instances > p.max_instances {
        problems.push(format!(
            "policies.instances: {} warm instances cannot be kept with policies.max_instances = {}",
            p.instances, p.max_instances
        ));
    }
    if p.queue_timeout_ms == 0 {
        problems.push("policies.queue_timeout_ms: must be at least 1".into());
    }
    // Room for a cold instance (instantiate and init: the larger of 1 s and
    // timeout_ms) and then the call itself.
    let max_call_wall_ms = p
        .max_call_wall_ms
        .unwrap_or(p.timeout_ms.max(1000).saturating_add(p.timeout_ms));
    if max_call_wall_ms < p.timeout_ms {
        problems.push(format!(
            "policies.max_call_wall_ms: {max_call_wall_ms} is below policies.timeout_ms = {}",
            p.timeout_ms
        ));
    }
    if p.kv_max_entries == 0 {
        problems.push("policies.kv_max_entries: must be at least 1".into());
    }
    if p.kv_max_bytes < 64 << 10 {
        problems.push("policies.kv_max_bytes: must be at least 65536".into());
    }
    for (key, v) in [
        ("total_instances", p.total_instances),
        ("total_memories", p.total_memories),
        ("total_stacks", p.total_stacks),
    ] {
        if v == 0 {
            problems.push(format!("policies.{key}: must be at least 1"));
        }
    }
    let timeout = Duration::from_millis(p.timeout_ms);
    let policies = PolicySettings {
        dir: base.join(p.dir.unwrap_or_else(|| PathBuf::from("policies"))),
        limits: Limits {
            timeout,
            init_timeout: timeout.max(Duration::from_secs(1)),
            memory_bytes: usize::try_from(p.memory_mb.min(4096) << 20).unwrap_or(usize::MAX),
            max_idle: p.instances,
            max_calls: p.max_calls_per_instance.max(1),
            max_instances: p.max_instances.max(1),
            max_queued: p.max_queued,
            queue_timeout: Duration::from_millis(p.queue_timeout_ms),
            max_call_wall: Duration::from_millis(max_call_wall_ms).max(timeout),
        },
        pool: PoolLimits {
            instances: p.total_instances,
            memories: p.total_memories,
            stacks: p.total_stacks,
        },
        files: FileCaps {
            wasm: p.max_wasm_bytes,
            config: p.max_config_bytes,
        },
        kv: crate::policy::kv::KvLimits {
            max_entries: p.kv_max_entries,
            max_bytes: p.kv_max_bytes,
        },
        cache_dir: match (p.cache, p.cache_dir) {
            (false, _) => None,
            (true, Some(d)) => Some(base.join(d)),
            (true, None) => default_cache_dir(),
        },
    };

    let mut pools = BTreeMap::new();
    for (name, pool) in f.pools {
        let key = format!("pools.{name}");
        if pool.backends.is_empty() {
            problems.push(format!("{key}.backends: a pool needs at least one backend"));
        }
        let mut backends: Vec<BackendConfig> = Vec::new();
        for (i, b) in pool.backends.into_iter().enumerate() {
            let (address, bname, weight) = match b {
                BackendFile::Address(a) => (a, None, None),
                BackendFile::Full(t) => (t.address, t.name, t.weight),
            };
            let bkey = format!("{key}.backends[{i}]");
            let Some(addr) = BackendAddress::parse(&address) else {
                problems.push(format!(
                    "{bkey}: {address:?} is not an address like \"127.0.0.1:9001\" or \"backend.internal:9001\""
                ));
                continue;
            };
            if weight == Some(0) {
                problems.push(format!("{bkey}.weight: must be at least 1"));
            }
            let bname = bname.unwrap_or_else(|| addr.to_string());
            if backends.iter().any(|x| x.name == bname) {
                problems.push(format!("{bkey}: a second backend named {bname:?}"));
                continue;
            }
            backends.push(BackendConfig {
                name: bname,
                address: addr,
                weight: weight.unwrap_or(1).max(1),
            });
        }
        if !pool.tls
            && (pool.ca.is_some()
                || pool.server_name.is_some()
                || pool.client_cert.is_some()
                || pool.client_key.is_some())
        {
            problems.push(format!(
                "{key}: ca, server_name, client_cert and client_key need tls = true"
            ));
        }
        if pool.client_cert.is_some() != pool.client_key.is_some() {
            problems.push(format!("{key}: client_cert and client_key go together"));
        }
        if let Some(n) = &pool.server_name
            && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            problems.push(format!(
                "{key}.server_name: {n:?} is not a DNS name or IP address"
            ));
        }
        let tls = pool.tls.then(|| PoolTls {
            ca: pool.ca.map(|p| base.join(p)),
            server_name: pool.server_name.clone(),
            client_cert: pool
                .client_cert
                .zip(pool.client_key)
                .map(|(cert, key)| CertFile {
                    cert: base.join(cert),
                    key: base.join(key),
                }),
        });
        let hash_key = match pool.hash_key.as_deref() {
            None | Some("client_ip") => HashKey::ClientIp,
            Some("path") => HashKey::Path,
            Some(k) if let Some(name) = k.strip_prefix("header:") => {
                match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => HashKey::Header(h),
                    Err(_) => {
                        problems.push(format!("{key}.hash_key: {k:?} names no valid header"));
                        HashKey::ClientIp
                    }
                }
            }
            Some(k) if let Some(name) = k.strip_prefix("cookie:").filter(|n| !n.is_empty()) => {
                HashKey::Cookie(name.to_owned())
            }
            Some(k) => {
                problems.push(format!(
                    "{key}.hash_key: {k:?} is not one of \"client_ip\", \"path\", \"header:NAME\", \"cookie:NAME\""
                ));
                HashKey::ClientIp
            }
        };
        let health = pool.health.and_then(|h| {
            let range = h.expect_status.split_once('-').map_or_else(
                || h.expect_status.trim().parse::<u16>().ok().map(|x| (x, x)),
                |(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)),
            );
            let Some(expect) =
                range.filter(|(a, b)| (100..=599).contains(a) && a <= b && *b <= 599)
            else {
                problems.push(format!(
                    "{key}.health.expect_status: {:?} is not a status or range like \"200-399\"",
                    h.expect_status
                ));
                return None;
            };
            if !h.path.starts_with('/') {
                problems.push(format!("{key}.health.path: must start with '/'"));
            }
            if h.interval_ms == 0 || h.timeout_ms == 0 {
                problems.push(format!(
                    "{key}.health: interval_ms and timeout_ms must be at least 1"
                ));
            }
            Some(HealthCheck {
                kind: h.kind,
                path: h.path,
                expect_status: expect,
                host: h.host,
                interval: Duration::from_millis(h.interval_ms.max(1)),
                timeout: Duration::from_millis(h.timeout_ms.max(1)),
                healthy_threshold: h.healthy_threshold.max(1),
                unhealthy_threshold: h.unhealthy_threshold.max(1),
            })
        });
        if pool.total_timeout_ms == Some(0) {
            problems.push(format!("{key}.total_timeout_ms: must be at least 1"));
        }
        if pool.max_connections_per_backend == 0 {
            problems.push(format!(
                "{key}.max_connections_per_backend: must be at least 1"
            ));
        }
        if pool.retry_budget_percent > 100 {
            problems.push(format!(
                "{key}.retry_budget_percent: must be between 0 and 100"
            ));
        }
        if pool.hash_key.is_some() && pool.algorithm != Algorithm::Hash {
            problems.push(format!(
                "{key}.hash_key: only used with algorithm = \"hash\""
            ));
        }
        pools.insert(
            name,
            PoolConfig {
                algorithm: pool.algorithm,
                backends,
                connect_timeout: Duration::from_millis(pool.connect_timeout_ms.max(1)),
                http2: pool.http2,
                hash_key,
                response_timeout: Duration::from_millis(pool.response_timeout_ms.max(1)),
                idle_timeout: Duration::from_millis(pool.idle_timeout_ms.max(1)),
                max_requests_per_backend: pool.max_requests_per_backend,
                max_connections_per_backend: pool.max_connections_per_backend.max(1),
                max_idle_per_backend: pool.max_idle_per_backend,
                resolve_interval: Duration::from_millis(pool.resolve_interval_ms.max(100)),
                health,
                outlier: pool.outlier.map(|o| Outlier {
                    consecutive_5xx: o.consecutive_5xx.max(1),
                    consecutive_failures: o.consecutive_failures.max(1),
                    base_ejection: Duration::from_millis(o.base_ejection_ms.max(1)),
                    max_ejection: Duration::from_millis(
                        o.max_ejection_ms.max(o.base_ejection_ms).max(1),
                    ),
                    max_ejected_percent: o.max_ejected_percent.min(100),
                }),
                proxy_protocol: pool.proxy_protocol,
                tls,
                body_timeout: ms(pool.body_timeout_ms),
                total_timeout: pool.total_timeout_ms.map(ms),
                retry: Retry {
                    retries: pool.retries,
                    on_error: pool.retry_on.contains(&file::RetryOn::Error),
                    on_timeout: pool.retry_on.contains(&file::RetryOn::Timeout),
                    budget_percent: pool.retry_budget_percent,
                    min_per_second: pool.min_retries_per_second,
                },
            },
        );
    }

    let mut listeners = BTreeMap::new();
    let mut binds: BTreeMap<(SocketAddr, bool), String> = BTreeMap::new();
    for (name, l) in f.listeners {
        let key = format!("listeners.{name}");
        let bind = match l.bind.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                problems.push(format!(
                    "{key}.bind: {:?} is not an address like \"127.0.0.1:8080\"",
                    l.bind
                ));
                continue;
            }
        };
        if bind.port() != 0 {
            let udp = l.protocol == Protocol::Udp;
            if let Some(other) = binds.insert((bind, udp), name.clone()) {
                problems.push(format!(
                    "{key}.bind: {bind} is already bound by listeners.{other}"
                ));
            }
        }
        if let Some(pool) = &l.pool
            && !pools.contains_key(pool)
        {
            problems.push(format!(
                "{key}.pool: no pool named {pool:?} (pools: {})",
                names(&pools)
            ));
        }
        if l.pool.is_none() && l.policy.is_none() {
            problems.push(format!(
                "{key}: needs a pool, a policy, or both (pools: {})",
                names(&pools)
            ));
        }
        if let Some(policy) = &l.policy
            && !valid_policy_name(policy)
        {
            problems.push(format!(
                "{key}.policy: {policy:?} is not a policy name (the file name without .wasm)"
            ));
        }
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in l.trusted_proxies.iter().enumerate() {
            match cidr
                .parse::<ipnet::IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => problems.push(format!(
                    "{key}.trusted_proxies[{i}]: {cidr:?} is not a CIDR like \"10.0.0.0/8\""
                )),
            }
        }
        if l.accept_proxy_protocol && trusted_proxies.is_empty() {
            problems.push(format!(
                "{key}.accept_proxy_protocol: needs trusted_proxies (the peers allowed to send it)"
            ));
        }
        if l.peek_sni == Some(true) && l.protocol != Protocol::Tcp {
            problems.push(format!(
                "{key}.peek_sni: only tcp listeners peek at the TLS ClientHello"
            ));
        }
        if l.accept_proxy_protocol && l.protocol == Protocol::Udp {
            problems.push(format!(
                "{key}.accept_proxy_protocol: not supported on udp listeners"
            ));
        }
        if l.max_connections == 0 {
            problems.push(format!("{key}.max_connections: must be at least 1"));
        }
        if l.max_header_bytes < 8192 {
            problems.push(format!("{key}.max_header_bytes: must be at least 8192"));
        }
        if l.protocol != Protocol::Http {
            for (set, k) in [
                (l.max_uri_bytes.is_some(), "max_uri_bytes"),
                (l.normalize_path.is_some(), "normalize_path"),
                (
                    l.path_with_escaped_slashes.is_some(),
                    "path_with_escaped_slashes",
                ),
            ] {
                if set {
                    problems.push(format!("{key}.{k}: only http listeners read paths"));
                }
            }
        }
        if l.max_uri_bytes == Some(0) {
            problems.push(format!("{key}.max_uri_bytes: must be at least 1"));
        }
        for (value, k) in [
            (l.first_byte_timeout_ms, "first_byte_timeout_ms"),
            (l.send_timeout_ms, "send_timeout_ms"),
            (l.request_body_timeout_ms, "request_body_timeout_ms"),
            (l.http2_keepalive_interval_ms, "http2_keepalive_interval_ms"),
            (l.http2_keepalive_timeout_ms, "http2_keepalive_timeout_ms"),
            (l.tunnel_idle_timeout_ms, "tunnel_idle_timeout_ms"),
        ] {
            match value {
                Some(_) if l.protocol != Protocol::Http => {
                    problems.push(format!("{key}.{k}: only http listeners have it"))
                }
                Some(0) => problems.push(format!("{key}.{k}: must be at least 1")),
                _ => {}
            }
        }
        if l.policy_config.is_some() && l.policy.is_none() {
            problems.push(format!("{key}.policy_config: set without a policy"));
        }
        let peek_sni = l.protocol == Protocol::Tcp && l.peek_sni.unwrap_or(l.policy.is_some());
        let abs = |c: file::CertFile| CertFile {
            cert: base.join(c.cert),
            key: base.join(c.key),
        };
        let tls = l.tls.map(|t| {
            if t.certs.is_empty() {
                problems.push(format!(
                    "{key}.tls.certs: needs at least one {{ cert = \"FILE\", key = \"FILE\" }}"
                ));
            }
            ListenerTls {
                certs: t.certs.into_iter().map(abs).collect(),
                default: t.default.map(abs),
                unknown_sni: t.unknown_sni,
                client_ca: t.client_ca.map(|p| base.join(p)),
                client_auth: t.client_auth,
                check_host: t.check_host,
                handshake_timeout: Duration::from_millis(t.handshake_timeout_ms.max(1)),
            }
        });
        if tls.is_some() && l.protocol != Protocol::Http {
            problems.push(format!(
                "{key}.tls: only http listeners terminate TLS (a tcp listener passes it through; see peek_sni)"
            ));
        }
        listeners.insert(
            name,
            ListenerConfig {
                protocol: l.protocol,
                bind,
                pool: l.pool,
                policy: l.policy,
                on_error: l.on_error,
                policy_config: l.policy_config.map(|p| base.join(p)),
                max_connections: l.max_connections.max(1),
                header_read_timeout: Duration::from_millis(l.header_read_timeout_ms.max(1)),
                max_request_body_bytes: l.max_request_body_bytes,
                max_header_bytes: l.max_header_bytes.max(8192),
                max_headers: l.max_headers,
                accept_proxy_protocol: l.accept_proxy_protocol,
                trusted_proxies,
                http2_max_concurrent_streams: l.http2_max_concurrent_streams,
                access_log: l.access_log,
                peek_sni,
                tls,
                max_uri_bytes: l.max_uri_bytes.unwrap_or(8192),
                normalize_path: l.normalize_path.unwrap_or(true),
                path_with_escaped_slashes: l.path_with_escaped_slashes.unwrap_or_default(),
                first_byte_timeout: ms(l.first_byte_timeout_ms.unwrap_or(l.header_read_timeout_ms)),
                send_timeout: ms(l.send_timeout_ms.unwrap_or(60_000)),
                request_body_timeout: ms(l.request_body_timeout_ms.unwrap_or(60_000)),
                http2_keepalive_interval: ms(l.http2_keepalive_interval_ms.unwrap_or(30_000)),
                http2_keepalive_timeout: ms(l.http2_keepalive_timeout_ms.unwrap_or(20_000)),
                tunnel_idle_timeout: ms(l.tunnel_idle_timeout_ms.unwrap_or(300_000)),
                new_flows_per_source_per_second: l
                    .new_flows_per_source_per_second
                    .unwrap_or(100)
                    .max(1),
                sni_peek_timeout: Duration::from_millis(l.sni_peek_timeout_ms.max(1)),
                idle_timeout: Duration::from_millis(
                    l.idle_timeout_ms
                        .unwrap_or(match l.protocol {
                            Protocol::Udp => 60_000,
                            Protocol::Tcp => 300_000,
                            Protocol::Http => 75_000,
                        })
                        .max(1),
                ),
            },
        );
    }

    if f.runtime.worker_threads == Some(0) {
        problems.push("runtime.worker_threads: must be at least 1".into());
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        source: path.to_path_buf(),
        admin,
        policies,
        pools,
        listeners,
        runtime: RuntimeConfig {
            worker_threads: f.runtime.worker_threads,
            drain_timeout: Duration::from_millis(f.runtime.drain_timeout_ms),
            access_log_file: f.runtime.access_log_file.map(|p| base.join(p)),
        },
    })
}

/// `$XDG_CACHE_HOME/switchyard` or `~/.cache/switchyard`, else a folder in
/// the system temp directory.
/// Where compiled policies are cached when `cache_dir` is not set:
/// systemd's `$CACHE_DIRECTORY` (the first, when it lists several), else
/// `$XDG_CACHE_HOME/switchyard`, else `~/.cache/switchyard`; never a shared
/// temporary folder, where another local user could plant native code
/// that wasmtime would run. `None` (no cache) when none of them is set.
fn default_cache_dir() -> Option<PathBuf> {
    let set = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(dirs) = set("CACHE_DIRECTORY") {
        let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
        if let Some(d) = first.filter(|d| d.is_absolute()) {
            return Some(d);
        }
    }
    set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("switchyard"))
}

/// Milliseconds from the file (validated to be at least 1 where zero
/// would mean "at once").
fn ms(v: u64) -> Duration {
    Duration::from_millis(v.max(1))
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
