//! The configuration file as written: serde types that mirror the TOML
//! exactly (unknown keys are errors). `super::validate` turns them into the
//! checked `Config` the rest of the daemon uses. Defaults live here and in
//! `docs/CONFIG.md`, which lists every key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

mod listener;
pub use listener::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub policies: PoliciesFile,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolFile>,
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerFile>,
    #[serde(default)]
    pub runtime: RuntimeFile,
    #[serde(default)]
    pub dns: super::dns::DnsFile,
    #[serde(default)]
    pub kv: super::kv::KvFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub bind: String,
    /// A file holding the bearer token every endpoint but `/healthz` and
    /// `/readyz` requires.
    pub token_file: Option<PathBuf>,
    /// Names besides the listener's address that `Host` may carry.
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    10
}
fn default_memory_mb() -> u64 {
    32
}
fn default_instances() -> usize {
    4
}
fn default_max_calls() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}
fn default_max_instances() -> usize {
    16
}
fn default_max_queued() -> usize {
    128
}
fn default_queue_timeout_ms() -> u64 {
    50
}
fn default_pool_total() -> u32 {
    1000
}
fn default_max_wasm_bytes() -> u64 {
    128 << 20
}
fn default_max_config_bytes() -> u64 {
    1 << 20
}
fn default_kv_max_entries() -> usize {
    100_000
}
fn default_kv_max_bytes() -> usize {
    64 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesFile {
    pub dir: Option<PathBuf>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default = "default_instances")]
    pub instances: usize,
    #[serde(default = "default_max_calls")]
    pub max_calls_per_instance: u64,
    #[serde(default = "yes")]
    pub cache: bool,
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Default: the larger of 1000 and `timeout_ms` (a cold instance's
    /// instantiation and init), plus `timeout_ms` (the call).
    pub max_call_wall_ms: Option<u64>,
    #[serde(default = "default_pool_total")]
    pub total_instances: u32,
    #[serde(default = "default_pool_total")]
    pub total_memories: u32,
    #[serde(default = "default_pool_total")]
    pub total_stacks: u32,
    #[serde(default = "default_max_wasm_bytes")]
    pub max_wasm_bytes: u64,
    #[serde(default = "default_max_config_bytes")]
    pub max_config_bytes: u64,
    #[serde(default = "default_kv_max_entries")]
    pub kv_max_entries: usize,
    #[serde(default = "default_kv_max_bytes")]
    pub kv_max_bytes: usize,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub rollout: BTreeMap<String, super::rollout::RolloutFile>,
}

impl Default for PoliciesFile {
    fn default() -> Self {
        PoliciesFile {
            dir: None,
            timeout_ms: default_timeout_ms(),
            memory_mb: default_memory_mb(),
            instances: default_instances(),
            max_calls_per_instance: default_max_calls(),
            cache: true,
            cache_dir: None,
            max_instances: default_max_instances(),
            max_queued: default_max_queued(),
            queue_timeout_ms: default_queue_timeout_ms(),
            max_call_wall_ms: None,
            total_instances: default_pool_total(),
            total_memories: default_pool_total(),
            total_stacks: default_pool_total(),
            max_wasm_bytes: default_max_wasm_bytes(),
            max_config_bytes: default_max_config_bytes(),
            kv_max_entries: default_kv_max_entries(),
            kv_max_bytes: default_kv_max_bytes(),
            state_dir: None,
            rollout: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Weighted,
    LeastRequest,
    P2c,
    Random,
    Hash,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendFile {
    Address(String),
    Full(BackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    pub address: String,
    pub name: Option<String>,
    pub weight: Option<u32>,
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    #[serde(default)]
    pub algorithm: Algorithm,
    pub backends: Vec<BackendFile>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub http2: bool,
    pub hash_key: Option<String>,
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    pub max_requests_per_backend: Option<u32>,
    /// http: open HTTP/1.1 connections per backend (default 1024).
    #[serde(default = "default_max_connections_per_backend")]
    pub max_connections_per_backend: usize,
    /// http: idle pooled HTTP/1.1 connections kept per backend (default
    /// 128).
    #[serde(default = "default_max_idle_per_backend")]
    pub max_idle_per_backend: usize,
    #[serde(default = "default_resolve_interval_ms")]
    pub resolve_interval_ms: u64,
    pub health: Option<HealthFile>,
    pub outlier: Option<OutlierFile>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Speak TLS to the backends.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA(s) that sign the backends' certificates; without
    /// it, the system's roots.
    pub ca: Option<PathBuf>,
    /// The name the backends' certificates are checked against (and sent
    /// as SNI); without it, each backend's host name or IP address.
    pub server_name: Option<String>,
    /// A client certificate (PEM chain) and key for mTLS to the backends.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// http: a response body that sends nothing this long is cut and the
    /// backend charged (default 60000).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// http: the longest a request may take upstream, resends and the
    /// response body included (default: no limit).
    pub total_timeout_ms: Option<u64>,
    /// http: resends of a failed request to other backends (default 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// http: which failures are resent (default both).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// http: resends of requests that reached a backend, as a share of
    /// the pool's requests over the last 10 s (default 20).
    #[serde(default = "default_retry_budget_percent")]
    pub retry_budget_percent: u32,
    /// http: resends allowed per second on top of that share (default 10).
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
}

/// A failure of an upstream exchange that may be resent (nginx's
/// `proxy_next_upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Cannot connect, or the connection reset or closed before the
    /// response head.
    Error,
    /// No response head within `response_timeout_ms`.
    Timeout,
}

fn default_max_connections_per_backend() -> usize {
    1024
}
fn default_max_idle_per_backend() -> usize {
    128
}
fn default_body_timeout_ms() -> u64 {
    60_000
}
fn default_retries() -> u32 {
    1
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Error, RetryOn::Timeout]
}
fn default_retry_budget_percent() -> u32 {
    20
}
fn default_min_retries_per_second() -> u32 {
    10
}

/// The PROXY protocol version sent to a pool's backends on TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Tcp,
    Http,
}

fn d_interval() -> u64 {
    5_000
}
fn d_check_timeout() -> u64 {
    1_000
}
fn d_healthy() -> u32 {
    2
}
fn d_unhealthy() -> u32 {
    3
}
fn d_path() -> String {
    "/".into()
}
fn d_expect() -> String {
    "200-399".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub kind: CheckKind,
    #[serde(default = "d_path")]
    pub path: String,
    #[serde(default = "d_expect")]
    pub expect_status: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(default = "d_interval")]
    pub interval_ms: u64,
    #[serde(default = "d_check_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "d_healthy")]
    pub healthy_threshold: u32,
    #[serde(default = "d_unhealthy")]
    pub unhealthy_threshold: u32,
}

fn d_consecutive() -> u32 {
    5
}
fn d_base_ejection() -> u64 {
    30_000
}
fn d_max_ejection() -> u64 {
    300_000
}
fn d_max_ejected_percent() -> u32 {
    50
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    #[serde(default = "d_consecutive")]
    pub consecutive_5xx: u32,
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    #[serde(default = "d_base_ejection")]
    pub base_ejection_ms: u64,
    #[serde(default = "d_max_ejection")]
    pub max_ejection_ms: u64,
    #[serde(default = "d_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

fn default_resolve_interval_ms() -> u64 {
    30_000
}

fn default_response_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    pub worker_threads: Option<usize>,
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    pub access_log_file: Option<PathBuf>,
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

impl Default for RuntimeFile {
    fn default() -> Self {
        RuntimeFile {
            worker_threads: None,
            drain_timeout_ms: default_drain_timeout_ms(),
            access_log_file: None,
        }
    }
}
