//! The file's values checked into a [`Config`], one function per section.
//! Every problem is collected, each naming its key.
//!
//! One rule for numbers: a value below its minimum (a zero timeout, a zero
//! count) or out of its range is an error that names the key, never
//! raised or cut in silence ([`at_least`]). `docs/UPGRADING.md` lists the
//! values that were once clamped and are now refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::file::{AdminFile, FileConfig, PoliciesFile};
use super::limits::{self, FileCaps, Limits, PoolLimits};
use super::{AdminConfig, Config, PolicySettings, RuntimeConfig};

pub(super) type Problems = Vec<String>;

/// `v`, or an error naming `key` when it is below `min`.
pub(super) fn at_least<T: PartialOrd + fmt::Display + Copy>(
    problems: &mut Problems,
    key: &str,
    v: T,
    min: T,
) -> T {
    if v < min {
        problems.push(format!("{key}: must be at least {min}"));
    }
    v
}

/// Milliseconds that must be at least 1 (zero would mean "at once").
pub(super) fn ms(problems: &mut Problems, key: &str, v: u64) -> Duration {
    Duration::from_millis(at_least(problems, key, v, 1))
}

pub(super) fn names<T>(m: &BTreeMap<String, T>) -> String {
    if m.is_empty() {
        "none defined".into()
    } else {
        m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

pub(super) fn valid_policy_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.starts_with('.')
}

pub(super) fn validate(f: FileConfig, path: &Path, base: &Path) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let admin = f.admin.and_then(|a| admin(a, base, &mut problems));
    let policies = policies(f.policies, base, &mut problems);
    let mut pools = BTreeMap::new();
    for (name, p) in f.pools {
        let c = super::pools::pool(&name, p, base, &mut problems);
        pools.insert(name, c);
    }
    let mut listeners = BTreeMap::new();
    let mut binds = BTreeMap::new();
    for (name, l) in f.listeners {
        if let Some(c) =
            super::listeners::listener(&name, l, &pools, base, &mut binds, &mut problems)
        {
            listeners.insert(name, c);
        }
    }
    bodies_fit_policies(&listeners, &policies, &mut problems);
    rollouts_name_http_policies(&listeners, &policies, &mut problems);
    if let Some(n) = f.runtime.worker_threads {
        at_least(&mut problems, "runtime.worker_threads", n, 1);
    }
    let dns = super::dns::dns(f.dns, &mut problems);
    let kv = super::kv::kv(f.kv, &mut problems);
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
        dns,
        kv,
    })
}

/// A rollout is for a policy an HTTP listener runs: a connection policy
/// decides once per connection and has no 5xx to compare.
fn rollouts_name_http_policies(
    listeners: &BTreeMap<String, super::ListenerConfig>,
    policies: &PolicySettings,
    problems: &mut Problems,
) {
    for name in policies.rollout.keys() {
        let users: Vec<&super::ListenerConfig> = listeners
            .values()
            .filter(|l| l.policy.as_deref() == Some(name.as_str()))
            .collect();
        if users.is_empty() {
            problems.push(format!(
                "policies.rollout.{name}: no listener runs a policy named {name:?}"
            ));
        } else if users.iter().any(|l| l.protocol() != super::Protocol::Http) {
            problems.push(format!(
                "policies.rollout.{name}: only an HTTP listener's policy can be rolled out \
                 (a TCP or UDP listener runs {name:?})"
            ));
        } else if users.iter().any(|l| l.policy_config.is_some()) {
            // state_dir keeps one serving version per policy name.
            problems.push(format!(
                "policies.rollout.{name}: a rolled-out policy reads its own {name}.json; \
                 drop policy_config from the listeners that run it"
            ));
        }
    }
}

/// A body a policy reads is copied into its instance's memory, and then
/// parsed there: a cap over half that memory would make the largest
/// allowed body trap the instance it is handed to.
fn bodies_fit_policies(
    listeners: &BTreeMap<String, super::ListenerConfig>,
    policies: &PolicySettings,
    problems: &mut Problems,
) {
    let memory = policies.limits.memory_bytes as u64;
    for (name, l) in listeners {
        if let super::ProtocolSettings::Http(h) = &l.settings
            && l.policy.is_some()
            && h.max_policy_body_bytes > memory / 2
        {
            problems.push(format!(
                "listeners.{name}.max_policy_body_bytes: {} is over half of a policy's memory \
                 (policies.memory_mb = {} MiB): lower it, or raise memory_mb",
                h.max_policy_body_bytes,
                memory >> 20
            ));
        }
    }
}

fn admin(a: AdminFile, base: &Path, problems: &mut Problems) -> Option<AdminConfig> {
    let Ok(bind) = a.bind.parse::<SocketAddr>() else {
        problems.push(format!(
            "admin.bind: {:?} is not an address like \"127.0.0.1:9901\"",
            a.bind
        ));
        return None;
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
                problems.push(format!(
                    "admin.token_file: cannot read {}: {e}",
                    file.display()
                ));
                None
            }
        },
    };
    Some(AdminConfig {
        bind,
        token,
        hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
    })
}

fn policies(p: PoliciesFile, base: &Path, problems: &mut Problems) -> PolicySettings {
    let timeout = ms(problems, "policies.timeout_ms", p.timeout_ms);
    if p.memory_mb == 0 || p.memory_mb > 4096 {
        problems.push("policies.memory_mb: must be between 1 and 4096".into());
    }
    at_least(
        problems,
        "policies.max_calls_per_instance",
        p.max_calls_per_instance,
        1,
    );
    at_least(problems, "policies.max_instances", p.max_instances, 1);
    if p.instances > p.max_instances {
        problems.push(format!(
            "policies.instances: {} warm instances cannot be kept with policies.max_instances = {}",
            p.instances, p.max_instances
        ));
    }
    let queue_timeout = ms(problems, "policies.queue_timeout_ms", p.queue_timeout_ms);
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
    at_least(problems, "policies.kv_max_entries", p.kv_max_entries, 1);
    at_least(problems, "policies.kv_max_bytes", p.kv_max_bytes, 64 << 10);
    for (key, v) in [
        ("total_instances", p.total_instances),
        ("total_memories", p.total_memories),
        ("total_stacks", p.total_stacks),
    ] {
        at_least(problems, &format!("policies.{key}"), v, 1);
    }
    let state_dir = p
        .state_dir
        .map(|d| base.join(d))
        .or_else(|| systemd_dir("STATE_DIRECTORY"));
    PolicySettings {
        rollout: super::rollout::rollouts(p.rollout, &state_dir, problems),
        state_dir,
        dir: base.join(p.dir.unwrap_or_else(|| PathBuf::from("policies"))),
        limits: Limits {
            timeout,
            // A derived floor, not a key: instantiation and `init` of
            // interpreted guests need more than a request hook gets.
            init_timeout: timeout.max(Duration::from_secs(1)),
            memory_bytes: usize::try_from(p.memory_mb << 20).unwrap_or(usize::MAX),
            max_idle: p.instances,
            max_calls: p.max_calls_per_instance,
            max_instances: p.max_instances,
            max_queued: p.max_queued,
            queue_timeout,
            max_call_wall: Duration::from_millis(max_call_wall_ms),
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
        kv: limits::KvLimits {
            max_entries: p.kv_max_entries,
            max_bytes: p.kv_max_bytes,
        },
        cache_dir: match (p.cache, p.cache_dir) {
            (false, _) => None,
            (true, Some(d)) => Some(base.join(d)),
            (true, None) => default_cache_dir(),
        },
    }
}

/// The first absolute directory of a systemd directory variable
/// (`$CACHE_DIRECTORY`, `$STATE_DIRECTORY`: colon-separated lists).
fn systemd_dir(var: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os(var).filter(|v| !v.is_empty())?;
    let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
    first.filter(|d| d.is_absolute())
}

/// Where compiled policies are cached when `cache_dir` is not set:
/// systemd's `$CACHE_DIRECTORY` (the first, when it lists several), else
/// `$XDG_CACHE_HOME/switchyard`, else `~/.cache/switchyard`; never a shared
/// temporary folder, where another local user could plant native code
/// that wasmtime would run. `None` (no cache) when none of them is set.
fn default_cache_dir() -> Option<PathBuf> {
    let set = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(d) = systemd_dir("CACHE_DIRECTORY") {
        return Some(d);
    }
    set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("switchyard"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Values that were once raised in silence (`docs/UPGRADING.md`) are
    /// refused, each naming its key.
    #[test]
    fn a_value_below_its_minimum_is_an_error_naming_the_key() {
        let pool = "[pools.web]\nbackends = [\"127.0.0.1:9\"]\n";
        let listener = |proto: &str, extra: &str| {
            format!(
                "{pool}[listeners.l]\nprotocol = \"{proto}\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{extra}"
            )
        };
        let cases = [
            (
                format!("{pool}connect_timeout_ms = 0\n"),
                "pools.web.connect_timeout_ms",
            ),
            (
                format!("{pool}response_timeout_ms = 0\n"),
                "pools.web.response_timeout_ms",
            ),
            (
                format!("{pool}idle_timeout_ms = 0\n"),
                "pools.web.idle_timeout_ms",
            ),
            (
                format!("{pool}body_timeout_ms = 0\n"),
                "pools.web.body_timeout_ms",
            ),
            (
                format!("{pool}resolve_interval_ms = 50\n"),
                "pools.web.resolve_interval_ms",
            ),
            (
                format!("{pool}[pools.web.health]\nkind = \"tcp\"\nhealthy_threshold = 0\n"),
                "pools.web.health.healthy_threshold",
            ),
            (
                format!("{pool}[pools.web.outlier]\nconsecutive_5xx = 0\n"),
                "pools.web.outlier.consecutive_5xx",
            ),
            (
                format!("{pool}[pools.web.outlier]\nbase_ejection_ms = 0\n"),
                "pools.web.outlier.base_ejection_ms",
            ),
            (
                format!("{pool}[pools.web.outlier]\nbase_ejection_ms = 10\nmax_ejection_ms = 5\n"),
                "pools.web.outlier.max_ejection_ms",
            ),
            (
                format!("{pool}[pools.web.outlier]\nmax_ejected_percent = 101\n"),
                "pools.web.outlier.max_ejected_percent",
            ),
            (
                listener("http", "header_read_timeout_ms = 0\n"),
                "listeners.l.header_read_timeout_ms",
            ),
            (
                listener("tcp", "idle_timeout_ms = 0\n"),
                "listeners.l.idle_timeout_ms",
            ),
            (
                listener("tcp", "sni_peek_timeout_ms = 0\n"),
                "listeners.l.sni_peek_timeout_ms",
            ),
            (
                listener("udp", "new_flows_per_source_per_second = 0\n"),
                "listeners.l.new_flows_per_source_per_second",
            ),
        ];
        for (text, key) in cases {
            let e = crate::config::Config::parse(Path::new("/etc/sy/s.toml"), &text)
                .err()
                .unwrap_or_else(|| panic!("{key}: accepted\n{text}"))
                .to_string();
            assert!(e.contains(&format!("{key}: ")), "{key}: {e}");
        }
    }
}
