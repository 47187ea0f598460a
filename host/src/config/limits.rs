//! Value types of configuration keys that the modules above `config`
//! read (the policy engine's limits, the access log's format, the path
//! rule): defined here so `config` imports nothing above it, and
//! re-exported where they are used.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Off,
    Text,
    Json,
    /// Apache/nginx "combined", for existing log tooling.
    Combined,
}

/// What to do with `%2F`, `%5C` and `\` in a path (Envoy's
/// `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400: the default, since backends disagree on what they mean (nginx
    /// decodes `%2F` before it removes dot segments; IIS reads `\` as `/`).
    #[default]
    Reject,
    /// Forwarded as they are, never a segment boundary here (escapes in
    /// upper case). Opens path confusion with backends that decode them.
    Keep,
    /// Decoded to `/` (backslashes too) before dot segments are removed,
    /// so they become segment boundaries here as they may on the backend.
    Unescape,
}

/// Per-call and per-instance limits, from `[policies]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline of one hook call (`timeout_ms`).
    pub timeout: Duration,
    /// Deadline of instantiation plus `init`: guests in interpreted languages
    /// need more than a request hook gets.
    pub init_timeout: Duration,
    /// Cap on each linear memory of an instance (`memory_mb`).
    pub memory_bytes: usize,
    /// Warm instances kept per policy (`instances`).
    pub max_idle: usize,
    /// Calls after which an instance is replaced (`max_calls_per_instance`).
    pub max_calls: u64,
    /// Instances of one loaded version that may exist at once, idle or in
    /// a call (`max_instances`): a flood on one policy cannot take another
    /// policy's share of the engine's pool.
    pub max_instances: usize,
    /// Calls that may wait for an instance when all are busy
    /// (`max_queued`); past it a call fails at once as `overloaded`.
    pub max_queued: usize,
    /// How long a call may wait for an instance (`queue_timeout_ms`)
    /// before it fails as `overloaded`.
    pub queue_timeout: Duration,
    /// Hard wall-clock cap on one hook call, whatever it waits on
    /// (`max_call_wall_ms`); when it fires the instance is dropped.
    pub max_call_wall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(10),
            init_timeout: Duration::from_secs(1),
            memory_bytes: 32 << 20,
            max_idle: 4,
            max_calls: 10_000,
            max_instances: 16,
            max_queued: 128,
            queue_timeout: Duration::from_millis(50),
            max_call_wall: Duration::from_secs(1),
        }
    }
}

/// The pooling allocator's process-wide slots, shared by every policy
/// (`total_instances`, `total_memories`, `total_stacks`). Fixed when the
/// engine is made: changing them needs a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Component instances (one per policy instance).
    pub instances: u32,
    /// Linear memories (a Rust policy has one per instance; interpreted
    /// languages several).
    pub memories: u32,
    /// Fiber stacks: one per hook call or instantiation in progress.
    pub stacks: u32,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            instances: 1000,
            memories: 1000,
            stacks: 1000,
        }
    }
}

/// Size caps on policy files (`max_wasm_bytes`, `max_config_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileCaps {
    pub wasm: u64,
    pub config: u64,
}

impl Default for FileCaps {
    fn default() -> Self {
        FileCaps {
            wasm: 128 << 20,
            config: 1 << 20,
        }
    }
}

/// The caps of every namespace (`[policies] kv_max_entries`,
/// `kv_max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}
