//! `[kv]`: where policies' key-value namespaces live.

use std::time::Duration;

use serde::Deserialize;

use super::validate::{Problems, ms};

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvBackendFile {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvFile {
    #[serde(default)]
    pub backend: KvBackendFile,
    pub url: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl Default for KvFile {
    fn default() -> Self {
        KvFile {
            backend: KvBackendFile::Memory,
            url: None,
            pool_size: default_pool_size(),
            timeout_ms: default_timeout_ms(),
            key_prefix: default_key_prefix(),
        }
    }
}

fn default_pool_size() -> usize {
    4
}
fn default_timeout_ms() -> u64 {
    100
}
fn default_key_prefix() -> String {
    "switchyard:".into()
}

/// What `[kv]` says about Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// Connections (each multiplexes its commands).
    pub pool_size: usize,
    /// Each operation's time to answer.
    pub timeout: Duration,
    /// Before each policy's `NAME:`.
    pub key_prefix: String,
}

/// The store, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KvBackend {
    /// Each process its own (`[policies] kv_max_entries`, `kv_max_bytes`).
    #[default]
    Memory,
    Redis(RedisSettings),
}

pub(super) fn kv(f: KvFile, problems: &mut Problems) -> KvBackend {
    let timeout: Duration = ms(problems, "kv.timeout_ms", f.timeout_ms);
    match f.backend {
        KvBackendFile::Memory => {
            if f.url.is_some() {
                problems.push("kv.url: set, but kv.backend is \"memory\"".into());
            }
            KvBackend::Memory
        }
        KvBackendFile::Redis => {
            let Some(url) = f.url else {
                problems.push(
                    "kv.url: required with backend = \"redis\" (e.g. \"redis://127.0.0.1:6379/0\")"
                        .into(),
                );
                return KvBackend::Memory;
            };
            if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
                problems.push(format!(
                    "kv.url: {url:?} is not a redis:// or redis+unix:// URL (TLS, rediss://, is not built in)"
                ));
            } else if let Err(e) = redis::Client::open(url.as_str()) {
                problems.push(format!("kv.url: {e}"));
            }
            if !(1..=64).contains(&f.pool_size) {
                problems.push("kv.pool_size: must be 1 to 64".into());
            }
            if f.key_prefix.len() > 64 || f.key_prefix.contains(char::is_whitespace) {
                problems.push("kv.key_prefix: at most 64 bytes, no whitespace".into());
            }
            KvBackend::Redis(RedisSettings {
                url,
                pool_size: f.pool_size,
                timeout,
                key_prefix: f.key_prefix,
            })
        }
    }
}
