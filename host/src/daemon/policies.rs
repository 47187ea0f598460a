//! Policies as the daemon loads them: named by listeners (`PolicyKey`),
//! read from the watched directory, compiled on the low-priority thread,
//! checked against the engine's pool and smoke-called, all without the
//! daemon's lock (`Loader`); and the rescan that follows file changes,
//! keeping the last good version of what is broken or gone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::Control;
use crate::admin::Metrics;
use crate::config::{Config, ListenerConfig, Protocol};
use crate::policy::{self, Directory, Policy, PolicyEngine, PolicyKind, version_of};
use crate::reload::Compiler;

/// A policy as listeners name it: file name, optional other config, world.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PolicyKey {
    pub(super) name: String,
    pub(super) config: Option<PathBuf>,
    pub(super) kind: PolicyKind,
}

pub(super) fn key_of(l: &ListenerConfig) -> Option<PolicyKey> {
    let kind = match l.protocol() {
        Protocol::Http => PolicyKind::Http,
        Protocol::Tcp | Protocol::Udp => PolicyKind::Connection,
    };
    l.policy.as_ref().map(|name| PolicyKey {
        name: name.clone(),
        config: l.policy_config.clone(),
        kind,
    })
}

/// Reads a policy's files (on a blocking thread) for `config`.
pub(super) async fn read_policy(
    config: &Config,
    key: &PolicyKey,
) -> Result<(PathBuf, Vec<u8>, String), policy::LoadError> {
    let file = config.policy_file(&key.name);
    let (wasm, cfg) = policy::read_policy_files_async(
        config.policies.dir.clone(),
        file.clone(),
        key.config.clone(),
        config.policies.files,
    )
    .await?;
    Ok((file, wasm, cfg))
}

/// Whether new versions of `key`'s policy start as canaries.
fn rolled_out(config: &Config, key: &PolicyKey) -> bool {
    config.policies.rollout.contains_key(&key.name)
}

/// [`read_policy`], except for a rolled-out policy whose `state_dir`
/// keeps a serving version other than the file's (`rollout.rs`): that
/// version serves. The file is then a refused version (never loaded
/// again), or one that had not proved itself, such as a canary when the
/// daemon stopped; the rescan after start makes it a canary again.
async fn read_serving(
    config: &Config,
    key: &PolicyKey,
) -> Result<(PathBuf, Vec<u8>, String), policy::LoadError> {
    let (file, wasm, cfg) = read_policy(config, key).await?;
    if !rolled_out(config, key) {
        return Ok((file, wasm, cfg));
    }
    let version = version_of(&wasm, &cfg);
    let refused = super::rollout::refused_on_disk(config, &key.name, &version);
    match super::rollout::kept_serving(config, &key.name) {
        Some(kept) if version_of(&kept.1, &kept.2) != version => {
            warn!(policy = %key.name, file = %file.display(), kept = %kept.0.display(), version = %version,
            "{}", if refused {
                "the policy file is a version a rollout refused; serving the kept version"
            } else {
                "the policy file has not proved itself; serving the kept version, the file starts as a canary"
            });
            Ok(kept)
        }
        None if refused => Err(policy::LoadError {
            file,
            reason: format!(
                "version {version} was rolled back, and policies.state_dir keeps no serving version"
            ),
        }),
        _ => Ok((file, wasm, cfg)),
    }
}

/// What loading policies needs, taken from the daemon under its lock and
/// used without it: reading files, compiling and the smoke call never
/// hold the daemon's state.
pub(super) struct Loader {
    pub(super) engine: Arc<PolicyEngine>,
    pub(super) compiler: Compiler,
    pub(super) metrics: Arc<Metrics>,
    /// The pools the smoke call sees.
    pub(super) directory: Arc<dyn Directory>,
    /// The policies loaded now.
    pub(super) policies: BTreeMap<PolicyKey, Arc<Policy>>,
}

impl Loader {
    /// Compiles (on the low-priority thread) and activates one policy.
    /// `config` is the configuration it is loaded for and `fresh` what
    /// else was loaded for it and is not in `self.policies` yet: the
    /// instance budgets of all of them must fit in the engine's pool.
    pub(super) async fn load(
        &self,
        key: &PolicyKey,
        file: PathBuf,
        wasm: Vec<u8>,
        cfg: String,
        config: &Config,
        fresh: &BTreeMap<PolicyKey, Arc<Policy>>,
    ) -> Result<Arc<Policy>, policy::LoadError> {
        let started = Instant::now();
        // The limits of the configuration being loaded, not the running one.
        let limits = config.policies.limits.clone();
        let loaded = async {
            let mut compiled = self
                .compiler
                .compile(&self.engine, &key.name, &file, wasm, cfg.clone(), key.kind)
                .await?;
            // A new version of a policy with a shadow rollout, while one
            // serves, is a shadow: its KV is the scratch one from `init` on.
            compiled.scratch_kv = self.policies.contains_key(key)
                && config
                    .policies
                    .rollout
                    .get(&key.name)
                    .is_some_and(|r| r.shadow);
            let keys: std::collections::BTreeSet<PolicyKey> =
                config.listeners.values().filter_map(key_of).collect();
            let needs = keys.iter().filter_map(|k| {
                if k == key {
                    Some(compiled.need(&limits))
                } else {
                    fresh
                        .get(k)
                        .or_else(|| self.policies.get(k))
                        .map(|p| p.need())
                }
            });
            if let Some(why) = self.engine.pool_limits().overcommitted(needs) {
                return Err(policy::LoadError {
                    file: file.clone(),
                    reason: why,
                });
            }
            self.engine
                .activate(compiled, &cfg, limits.clone(), self.directory.clone())
                .await
        }
        .await;
        self.metrics
            .policy_reloads
            .get_or_create(&crate::admin::metrics::ReloadLabels {
                policy: key.name.as_str().into(),
                result: if loaded.is_ok() { "ok" } else { "error" },
            })
            .inc();
        self.metrics.reloads.record(
            "policy",
            &key.name,
            match &loaded {
                Ok(p) => Ok(format!("version {}", p.version)),
                Err(e) => Err(e.to_string()),
            },
        );
        let p = loaded?;
        info!(
            policy = %p.name,
            version = %p.version,
            compile_ms = p.compile_time.as_millis() as u64,
            "policy={} version={} loaded in {} ms ({})",
            p.name,
            p.version,
            started.elapsed().as_millis(),
            if p.from_cache { "compiled code from cache" } else { "compiled" }
        );
        Ok(p)
    }

    /// Loads every policy the configuration's listeners name that is not
    /// loaded yet. Any failure refuses the whole set.
    pub(super) async fn load_missing(
        &self,
        config: &Config,
    ) -> Result<BTreeMap<PolicyKey, Arc<Policy>>, Vec<String>> {
        let mut fresh = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, l) in &config.listeners {
            let Some(key) = key_of(l) else {
                continue;
            };
            if self.policies.contains_key(&key) || fresh.contains_key(&key) {
                continue;
            }
            let loaded = match read_serving(config, &key).await {
                Ok((file, wasm, cfg)) => {
                    let keep = rolled_out(config, &key).then(|| (wasm.clone(), cfg.clone()));
                    let p = self.load(&key, file, wasm, cfg, config, &fresh).await;
                    if let (Ok(_), Some((wasm, cfg))) = (&p, keep) {
                        super::rollout::keep_serving(config, &key.name, &wasm, &cfg);
                    }
                    p
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(p) => {
                    fresh.insert(key, p);
                }
                Err(e) => problems.push(format!("{e} (policy of listeners.{name})")),
            }
        }
        if problems.is_empty() {
            Ok(fresh)
        } else {
            Err(problems)
        }
    }
}

/// Looks at every policy file in use; loads what changed, keeps the last
/// good version of what is broken or gone. Reads and loads without the
/// daemon's lock; the caller holds the reload lock.
pub(super) async fn rescan(control: &Control) {
    let (loader, config, present, current, refused, canaries) = {
        let mut d = control.state.lock().await;
        let present = d.present_policies();
        let current: BTreeMap<PolicyKey, String> = d
            .policies
            .iter()
            .map(|(k, p)| (k.clone(), p.version.clone()))
            .collect();
        // Refused, or running as a canary: not loaded again.
        let refused: BTreeMap<PolicyKey, String> = d
            .refused
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .chain(
                d.canaries
                    .iter()
                    .map(|(k, c)| (k.clone(), c.run.canary.version.clone())),
            )
            .collect();
        let canaries: Vec<PolicyKey> = d.canaries.keys().cloned().collect();
        (
            d.loader(),
            d.config.clone(),
            present,
            current,
            refused,
            canaries,
        )
    };
    let mut outcomes = Vec::new();
    // Canaries whose file went back to the serving version.
    let mut reverted = Vec::new();
    for key in present {
        let (file, wasm, cfg) = match read_policy(&config, &key).await {
            Ok(x) => x,
            Err(e) => {
                warn!(policy = %key.name, error = %e, "cannot read the policy; the last loaded version keeps serving");
                continue;
            }
        };
        let version = version_of(&wasm, &cfg);
        let now = current.get(&key);
        if now == Some(&version) && canaries.contains(&key) {
            reverted.push(key);
            continue;
        }
        if now == Some(&version)
            || refused.get(&key) == Some(&version)
            || (rolled_out(&config, &key)
                && super::rollout::refused_on_disk(&config, &key.name, &version))
        {
            continue;
        }
        let keep = rolled_out(&config, &key).then(|| (wasm.clone(), cfg.clone()));
        let loaded = loader
            .load(&key, file, wasm, cfg, &config, &BTreeMap::new())
            .await;
        outcomes.push((key, version, now.cloned(), loaded, keep));
    }
    let mut d = control.state.lock().await;
    for key in reverted {
        let why = "the policy file is the serving version again".to_owned();
        d.end_canary(&key, crate::policy::rollout::Verdict::Rollback(why));
    }
    for (key, version, current, loaded, keep) in outcomes {
        match loaded {
            Ok(p) => d.loaded(&key, p, keep),
            Err(e) => {
                warn!(policy = %key.name, version = %version, current = ?current,
                    "policy={} version={} refused: {}; the last loaded version keeps serving",
                    key.name, version, e);
                d.refused.insert(key, (version, e.to_string()));
            }
        }
    }
    d.publish_view();
}

impl super::Daemon {
    /// The policies in use whose file is there; those whose file is gone
    /// are noted (once) and, with `--strict-policies`, unloaded.
    fn present_policies(&mut self) -> Vec<PolicyKey> {
        let keys: std::collections::BTreeSet<PolicyKey> =
            self.config.listeners.values().filter_map(key_of).collect();
        let mut present = Vec::new();
        for key in keys {
            let file = self.config.policy_file(&key.name);
            if file.exists() {
                self.missing.remove(&key);
                present.push(key);
                continue;
            }
            if self.missing.insert(key.clone(), ()).is_none() {
                if self.options.strict_policies {
                    warn!(policy = %key.name, file = %file.display(),
                        "policy file removed; its listeners fall back to the pool's algorithm (--strict-policies)");
                    if let Some(old) = self.policies.remove(&key) {
                        old.retire();
                    }
                    self.republish(&key);
                } else {
                    warn!(policy = %key.name, file = %file.display(),
                        "policy file removed; the last loaded version keeps serving");
                }
            }
        }
        present
    }

    /// A new version of `key`'s policy loaded: it serves, or, with a
    /// rollout (`keep` holds its bytes) and a version serving, it starts
    /// as a canary.
    fn loaded(&mut self, key: &PolicyKey, p: Arc<Policy>, keep: Option<(Vec<u8>, String)>) {
        self.refused.remove(key);
        let live = self.policies.get(key).cloned();
        match (keep, live) {
            (Some((wasm, cfg)), Some(live)) => self.start_canary(key, live, p, wasm, cfg),
            (keep, _) => {
                if let Some((wasm, cfg)) = keep {
                    super::rollout::keep_serving(&self.config, &key.name, &wasm, &cfg);
                }
                if let Some(old) = self.policies.insert(key.clone(), p) {
                    old.retire();
                }
            }
        }
        self.republish(key);
    }
}
