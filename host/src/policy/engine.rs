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

use super::bindings::{connection, http};
use super::directory::Directory;
use super::host_api::HostState;
use super::instances::{Policy, Pre};
use super::kv::KvStore;
use super::ticker::Ticker;
use super::{LoadError, PolicyKind};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(10),
            init_timeout: Duration::from_secs(1),
            memory_bytes: 32 << 20,
            max_idle: 4,
            max_calls: 10_000,
        }
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
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
}

impl Compiled {
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The process's one policy engine.
pub struct PolicyEngine {
    pub(crate) engine: Engine,
    cache: Option<Cache>,
    linker: Linker<HostState>,
    pub(crate) kv: KvStore,
    pub(crate) ticker: Ticker,
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
        // Sized for a few dozen policies with a handful of warm instances
        // each; interpreted-language components bring several core
        // instances and memories apiece.
        pool.total_component_instances(200)
            .total_core_instances(1000)
            .total_memories(200)
            .total_tables(400)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_core_instances_per_component(50)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20)
            .table_elements(100_000);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let cache = match &settings.cache_dir {
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
        // Guests built with WASI toolchains (Python, JavaScript, C, and
        // Rust's std) import WASI; they get the empty context of HostState.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Ok(Arc::new(PolicyEngine {
            ticker: Ticker::start(engine.clone()),
            engine,
            cache,
            linker,
            kv: KvStore::default(),
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
        if let Some(v) = wit_version(&component, &self.engine).filter(|v| v != super::WIT_VERSION) {
            return Err(err(format!(
                "was built against switchyard:policy@{v}, and this host implements \
                 switchyard:policy@{}: rebuild it against the current wit/ (or SDK)",
                super::WIT_VERSION
            )));
        }
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            err(format!(
                "imports something the host does not provide: {e:#}"
            ))
        })?;
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
        let pre = match kind {
            PolicyKind::Http => {
                Pre::Http(http::HttpPolicyPre::new(instance_pre).map_err(wrong_world)?)
            }
            PolicyKind::Connection => Pre::Connection(
                connection::ConnectionPolicyPre::new(instance_pre).map_err(wrong_world)?,
            ),
        };
        Ok(Compiled {
            name: name.to_owned(),
            file: file.to_path_buf(),
            kind,
            version: version_of(wasm, config),
            pre,
            compile_time,
            from_cache,
        })
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

/// Reads a policy file and its config: `config_path` when given, else the
/// `.json` beside the `.wasm` when it exists, else an empty config.
pub fn read_policy_files(
    wasm_path: &Path,
    config_path: Option<&Path>,
) -> Result<(Vec<u8>, String), LoadError> {
    let wasm = std::fs::read(wasm_path).map_err(|e| LoadError {
        file: wasm_path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })?;
    let default_config = wasm_path.with_extension("json");
    let config_file = config_path.unwrap_or(&default_config);
    let config = match std::fs::read_to_string(config_file) {
        Ok(c) => c,
        Err(e) if config_path.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            String::new()
        }
        Err(e) => {
            return Err(LoadError {
                file: config_file.to_path_buf(),
                reason: format!("cannot read: {e}"),
            });
        }
    };
    Ok((wasm, config))
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
