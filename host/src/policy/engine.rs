//! The policy engine: one `wasmtime::Engine` with the pooling allocator and
//! epoch interruption, one `Linker` with the host imports, and the steps
//! that turn a `.wasm` file into a validated, ready-to-call [`Policy`].
//!
//! Loading is two steps so that the expensive one stays off the serving
//! path: [`PolicyEngine::compile`] is synchronous CPU work (run it on a
//! blocking or dedicated low-priority thread), [`PolicyEngine::activate`]
//! instantiates, runs `init` with the policy's config and one smoke call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use super::bindings::{http, v0_2};
use super::directory::Directory;
use super::host_api::HostState;
use super::instances::{Policy, Pre};
use super::kv::KvStore;
use super::ticker::Ticker;
use super::{LoadError, PolicyKind};
pub use crate::config::limits::{Limits, PoolLimits};

/// Engine-wide settings.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The pooling allocator's process-wide slots.
    pub pool: PoolLimits,
    /// The caps of each policy's KV namespace (in memory).
    pub kv: super::kv::KvLimits,
    /// Where the namespaces live (`[kv]`).
    pub kv_store: crate::config::kv::KvBackend,
    /// The store's metrics, registered by the caller.
    pub kv_metrics: super::kv_handle::KvMetrics,
    /// `policy replay`: a frozen clock and seeded random for every
    /// instance (`host_api.rs`); `None` serves with the real ones.
    pub frozen: Option<Arc<super::host_api::Frozen>>,
}

/// What one policy may hold of the engine's pool at most: its instance
/// budget, each with its memories, and one stack per concurrent call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub instances: u64,
    pub memories: u64,
    pub stacks: u64,
}

impl Need {
    /// The share of a policy with `memories` memories per instance under
    /// `limits`, counted twice: during a reload the old version serves its
    /// last calls while the new one takes the next.
    pub fn of(limits: &Limits, memories: usize) -> Need {
        let n = 2 * limits.max_instances as u64;
        Need {
            instances: n,
            memories: n * memories as u64,
            // An instantiation or a call takes a stack; a call waiting in
            // the queue does not.
            stacks: n,
        }
    }
}

/// Memories per instance assumed when a component does not say (it
/// imports core modules): the most a component may have.
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;

impl PoolLimits {
    /// Why `needs` do not fit in these slots, naming the keys to change.
    pub fn overcommitted(&self, needs: impl IntoIterator<Item = Need>) -> Option<String> {
        let mut sum = Need {
            instances: 0,
            memories: 0,
            stacks: 0,
        };
        for n in needs {
            sum.instances += n.instances;
            sum.memories += n.memories;
            sum.stacks += n.stacks;
        }
        let over: Vec<String> = [
            ("instances", sum.instances, self.instances),
            ("memories", sum.memories, self.memories),
            ("stacks", sum.stacks, self.stacks),
        ]
        .iter()
        .filter(|(_, need, have)| *need > u64::from(*have))
        .map(|(what, need, have)| format!("{need} {what} > policies.total_{what} = {have}"))
        .collect();
        (!over.is_empty()).then(|| {
            format!(
                "the policies' instance budgets (policies.max_instances, counted twice for \
                 reloads) do not fit in the engine's pool: {}; lower max_instances or raise \
                 the totals",
                over.join(", ")
            )
        })
    }
}

/// Compiled, type-checked code of one policy file, not yet initialised.
pub struct Compiled {
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    pub(crate) kind: PolicyKind,
    pub(crate) version: String,
    pub(crate) pre: Pre,
    pub(crate) compile_time: Duration,
    pub(crate) from_cache: bool,
    /// Linear memories one instance allocates.
    pub(crate) memories: usize,
    /// Loaded as a shadow: its instances, the smoke call's and `init`'s
    /// included, use the scratch KV namespace from the start.
    pub scratch_kv: bool,
}

impl Compiled {
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    /// What this policy may hold of the engine's pool under `limits`.
    pub fn need(&self, limits: &Limits) -> Need {
        Need::of(limits, self.memories)
    }
}

/// The process's one policy engine.
pub struct PolicyEngine {
    pub(crate) engine: Engine,
    cache: Option<Cache>,
    linker: Linker<HostState>,
    pub kv: KvStore,
    /// The policies' own metrics, one collector for the admin listener.
    pub custom_metrics: Arc<super::metrics::CustomMetrics>,
    pub(crate) ticker: Ticker,
    pub(crate) pool: PoolLimits,
    pub(crate) frozen: Option<Arc<super::host_api::Frozen>>,
}

/// The content hash by which a policy version is known: the first 12 hex
/// digits of the SHA-256 of the `.wasm` file and its config.
pub fn version_of(wasm: &[u8], config: &str) -> String {
    let mut h = Sha256::new();
    h.update(wasm);
    h.update([0]);
    h.update(config.as_bytes());
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn wasm_kind(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary".into());
    }
    // Core modules have layer 0, components layer 1 (bytes 6..8).
    if bytes[6..8] == [0, 0] {
        return Err("a core WebAssembly module, not a component \
             (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)"
            .into());
    }
    Ok(())
}

/// The `switchyard:policy` version a component imports, when it imports
/// any of its interfaces (every policy imports `types`).
fn wit_version(component: &Component, engine: &Engine) -> Option<String> {
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| {
            let (_, version) = name.strip_prefix("switchyard:policy/")?.split_once('@')?;
            Some(version.to_owned())
        })
}

impl PolicyEngine {
    pub fn new(settings: &EngineSettings) -> anyhow::Result<Arc<Self>> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        cfg.wasm_component_model(true);
        let mut pool = PoolingAllocationConfig::default();
        // Sized by `[policies] total_*`; interpreted-language components
        // bring several core instances and memories apiece.
        let limits = settings.pool;
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances.saturating_mul(5))
            .total_memories(limits.memories)
            .total_tables(limits.instances.saturating_mul(2))
            .total_stacks(limits.stacks)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(16)
            .max_core_instances_per_component(50)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20)
            .table_elements(100_000);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let cache_dir = settings.cache_dir.as_deref().and_then(|dir| {
            match super::files::own_private_dir(dir) {
                Ok(()) => Some(dir),
                Err(why) => {
                    tracing::warn!(cache_dir = %dir.display(),
                        "policies.cache_dir {} refused: {why}; compiling without a cache",
                        dir.display());
                    None
                }
            }
        });
        let cache = match cache_dir {
            Some(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(dir);
                Some(Cache::new(cache)?)
            }
            None => None,
        };
        cfg.cache(cache.clone());
        let engine = Engine::new(&cfg)?;
        let mut linker = Linker::new(&engine);
        http::HttpPolicy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        // The same imports as `switchyard:policy@0.2.0`, for policies built
        // against it (`v0_2.rs`).
        v0_2::http::HttpPolicy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        // Guests built with WASI toolchains (Python, JavaScript, C, and
        // Rust's std) import WASI; they get the empty context of HostState.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Ok(Arc::new(PolicyEngine {
            ticker: Ticker::start(engine.clone()),
            engine,
            cache,
            linker,
            kv: KvStore::new(settings.kv, &settings.kv_store, settings.kv_metrics.clone())
                .map_err(|e| anyhow::anyhow!(e))?,
            custom_metrics: Arc::default(),
            pool: settings.pool,
            frozen: settings.frozen.clone(),
        }))
    }

    /// Compiles and type-checks `wasm` (CPU-heavy: keep it off the serving
    /// threads). `expected` is the world the caller needs; `None` accepts
    /// either and tells which it is.
    pub fn compile(
        &self,
        name: &str,
        file: &Path,
        wasm: &[u8],
        config: &str,
        expected: Option<PolicyKind>,
    ) -> Result<Compiled, LoadError> {
        let err = |reason: String| LoadError {
            file: file.to_path_buf(),
            reason,
        };
        wasm_kind(wasm).map_err(err)?;
        let started = Instant::now();
        let hits_before = self.cache_hits();
        let component = Component::from_binary(&self.engine, wasm)
            .map_err(|e| err(format!("does not compile: {e:#}")))?;
        let compile_time = started.elapsed();
        let from_cache = self.cache_hits() > hits_before;
        let version = wit_version(&component, &self.engine);
        let v0_2 = match version.as_deref() {
            None => false,
            Some(v) if v == super::WIT_VERSION => false,
            Some(v) if v == super::WIT_VERSION_0_2 => true,
            Some(v) => {
                return Err(err(format!(
                    "was built against switchyard:policy@{v}, and this host implements \
                     switchyard:policy@{} (and @{}): rebuild it against the current wit/ \
                     (or SDK)",
                    super::WIT_VERSION,
                    super::WIT_VERSION_0_2
                )));
            }
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            err(format!(
                "imports something the host does not provide: {e:#}"
            ))
        })?;
        let memories = component
            .resources_required()
            .map_or(MAX_MEMORIES_PER_COMPONENT as usize, |r| {
                r.num_memories as usize
            });
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let kind = match expected {
            Some(k) => k,
            None if exports.iter().any(|e| e == "on-connect") => PolicyKind::Connection,
            None => PolicyKind::Http,
        };
        let wrong_world = |e: wasmtime::Error| {
            err(format!(
                "does not implement the world {} (exports: {}): {e:#}",
                kind.world(),
                exports.join(", ")
            ))
        };
        let pre = Pre::new(kind, v0_2, instance_pre).map_err(wrong_world)?;
        Ok(Compiled {
            name: name.to_owned(),
            file: file.to_path_buf(),
            kind,
            version: version_of(wasm, config),
            pre,
            compile_time,
            from_cache,
            memories,
            scratch_kv: false,
        })
    }

    /// The pooling allocator's process-wide slots.
    pub fn pool_limits(&self) -> PoolLimits {
        self.pool
    }

    /// Live instances, memories and stacks in the pooling allocator, as
    /// wasmtime counts them.
    pub fn pool_usage(&self) -> Option<(u64, usize, usize)> {
        let m = self.engine.pooling_allocator_metrics()?;
        Some((m.component_instances(), m.memories(), m.stacks()))
    }

    /// Whether compiled code is cached on disk (a refused `cache_dir`
    /// turns the cache off).
    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// Compilations answered from the on-disk cache since start.
    pub fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::cache_hits)
    }

    /// Compilations that were not in the cache since start.
    pub fn cache_misses(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::cache_misses)
    }

    /// Instantiates a compiled policy, runs `init(config)` and a smoke call,
    /// and returns it ready to serve with that instance warm.
    pub async fn activate(
        self: &Arc<Self>,
        compiled: Compiled,
        config: &str,
        limits: Limits,
        directory: Arc<dyn Directory>,
    ) -> Result<Arc<Policy>, LoadError> {
        let file = compiled.file.clone();
        let policy = Policy::new(self.clone(), compiled, config, limits);
        policy.smoke_test(directory).await.map_err(|e| LoadError {
            file,
            reason: e.to_string(),
        })?;
        Ok(policy)
    }

    /// Compiles (on a blocking thread) and activates a policy from its
    /// bytes and config.
    pub async fn load_bytes(
        self: &Arc<Self>,
        wasm_path: &Path,
        wasm: Vec<u8>,
        config: String,
        expected: Option<PolicyKind>,
        limits: Limits,
        directory: Arc<dyn Directory>,
    ) -> Result<Arc<Policy>, LoadError> {
        let name = policy_name(wasm_path);
        let this = self.clone();
        let path = wasm_path.to_path_buf();
        let cfg = config.clone();
        let compiled =
            tokio::task::spawn_blocking(move || this.compile(&name, &path, &wasm, &cfg, expected))
                .await
                .map_err(|e| LoadError {
                    file: wasm_path.to_path_buf(),
                    reason: format!("compile task failed: {e}"),
                })??;
        self.activate(compiled, &config, limits, directory).await
    }
}

/// `policies/path-router.wasm` -> `path-router`.
pub fn policy_name(wasm_path: &Path) -> String {
    wasm_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_change_with_code_or_config() {
        let a = version_of(b"code", "{}");
        assert_eq!(a.len(), 12);
        assert_eq!(a, version_of(b"code", "{}"));
        assert_ne!(a, version_of(b"code", "{ }"));
        assert_ne!(a, version_of(b"cod", "e{}"));
    }

    #[test]
    fn core_modules_and_junk_are_named_as_such() {
        assert!(wasm_kind(b"\0asm\x01\0\0\0").unwrap_err().contains("core"));
        assert!(
            wasm_kind(b"random bytes")
                .unwrap_err()
                .contains("not a WebAssembly")
        );
        assert!(wasm_kind(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
