//! Canary rollouts (`[policies.rollout.NAME]`): starting a canary when a
//! new version of a policy loads, the task that applies a verdict
//! (`policy/rollout.rs` judges), and what is kept in `state_dir`:
//!
//! - `NAME/serving.wasm`, `NAME/serving.json`: the bytes of the version
//!   serving now (the last one promoted, or the first one loaded), so that
//!   a restart serves it, and not a refused file, or a canary's, still on
//!   disk (a canary's file starts as a canary again);
//! - `NAME/canary.wasm`, `NAME/canary.json`: the canary's, renamed over
//!   the first two when it is promoted;
//! - `NAME/refused`: the versions rolled back, one per line (the newest
//!   [`REFUSED_KEPT`]), which are never loaded again.
//!
//! One folder per policy (mode 0700, files 0600: a config can hold
//! secrets), so no policy name can collide with another's files; each
//! file is written beside, synced and renamed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use super::policies::PolicyKey;
use super::{Control, Daemon};
use crate::config::Config;
use crate::policy::Policy;
use crate::policy::rollout::{Canary, Verdict, short};

/// Refused versions kept per policy.
const REFUSED_KEPT: usize = 100;

/// A canary running, with its bytes (kept for its promotion).
pub(super) struct CanaryRun {
    pub(super) run: Arc<Canary>,
    wasm: Vec<u8>,
    cfg: String,
}

/// `which` of policy `name`'s files (`serving.wasm`, `refused` …).
fn file(dir: &Path, name: &str, which: &str) -> PathBuf {
    dir.join(name).join(which)
}

/// Policy `name`'s folder, made (0700) when missing.
fn folder(dir: &Path, name: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join(name))
}

/// Writes beside (0600), syncs, then renames: a crash never leaves half a
/// file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes a version's pair of files (`serving` or `canary`).
fn write_pair(dir: &Path, name: &str, which: &str, wasm: &[u8], cfg: &str) -> std::io::Result<()> {
    folder(dir, name)?;
    write_atomically(&file(dir, name, &format!("{which}.wasm")), wasm)?;
    write_atomically(&file(dir, name, &format!("{which}.json")), cfg.as_bytes())
}

/// Keeps `wasm` and `cfg` as the version serving now, if `name` is rolled
/// out (a failure is logged: the policy serves on, a restart after a
/// rollback would then serve the file on disk).
pub(super) fn keep_serving(config: &Config, name: &str, wasm: &[u8], cfg: &str) {
    let (Some(dir), true) = (
        &config.policies.state_dir,
        config.policies.rollout.contains_key(name),
    ) else {
        return;
    };
    if let Err(e) = write_pair(dir, name, "serving", wasm, cfg) {
        warn!(policy = %name, dir = %dir.display(), error = %e,
            "cannot keep the serving version in policies.state_dir");
    }
}

/// Whether `version` of `name` was rolled back (on disk, so also before
/// this process started).
pub(super) fn refused_on_disk(config: &Config, name: &str, version: &str) -> bool {
    let Some(dir) = &config.policies.state_dir else {
        return false;
    };
    std::fs::read(file(dir, name, "refused")).is_ok_and(|t| {
        String::from_utf8_lossy(&t)
            .lines()
            .any(|l| l.trim() == version)
    })
}

/// The bytes kept as serving for `name`, if any.
pub(super) fn kept_serving(config: &Config, name: &str) -> Option<(PathBuf, Vec<u8>, String)> {
    let dir = config.policies.state_dir.as_ref()?;
    let wasm_file = file(dir, name, "serving.wasm");
    let wasm = std::fs::read(&wasm_file).ok()?;
    let cfg = std::fs::read_to_string(file(dir, name, "serving.json")).ok()?;
    Some((wasm_file, wasm, cfg))
}

fn remember_refused(dir: &Path, name: &str, version: &str) -> std::io::Result<()> {
    folder(dir, name)?;
    let path = file(dir, name, "refused");
    let old = std::fs::read(&path).unwrap_or_default();
    let old = String::from_utf8_lossy(&old);
    let mut lines: Vec<&str> = old.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.push(version);
    let start = lines.len().saturating_sub(REFUSED_KEPT);
    write_atomically(&path, format!("{}\n", lines[start..].join("\n")).as_bytes())
}

impl Daemon {
    /// `canary`, a new version of `key`'s policy, starts deciding the
    /// share of clients its rollout says; a canary already running for
    /// `key` is replaced, and its count starts again.
    pub(super) fn start_canary(
        &mut self,
        key: &PolicyKey,
        live: Arc<Policy>,
        canary: Arc<Policy>,
        wasm: Vec<u8>,
        cfg: String,
    ) {
        let Some(settings) = self.config.policies.rollout.get(&key.name).cloned() else {
            // Not rolled out (any more): it serves.
            if let Some(old) = self.policies.insert(key.clone(), canary) {
                old.retire();
            }
            return;
        };
        if let Some(dir) = &self.config.policies.state_dir
            && let Err(e) = write_pair(dir, &key.name, "canary", &wasm, &cfg)
        {
            warn!(policy = %key.name, error = %e, "cannot keep the canary in policies.state_dir");
        }
        if settings.shadow {
            // Loaded on the scratch KV already (`Loader::load`).
            info!(policy = %key.name, version = %canary.version, live = %live.version,
                "policy={} version={} starts as a shadow: it decides nothing, its decisions are compared",
                key.name, canary.version);
        } else {
            info!(policy = %key.name, version = %canary.version, live = %live.version,
                percent = settings.canary_percent, min_requests = settings.min_requests,
                "policy={} version={} starts as a canary for {}% of clients",
                key.name, canary.version, settings.canary_percent);
        }
        let run = Arc::new(Canary::new(
            live,
            canary,
            settings,
            self.rollout_wake.clone(),
        ));
        if let Some(old) = self
            .canaries
            .insert(key.clone(), CanaryRun { run, wasm, cfg })
        {
            info!(policy = %key.name, version = %old.run.canary.version,
                "canary replaced by a newer file; its count starts again");
            old.run.canary.retire();
        }
        self.metrics.reloads.record(
            "rollout",
            &key.name,
            Ok(format!(
                "{} {} started",
                if self.canaries[key].run.shadow.is_some() {
                    "shadow"
                } else {
                    "canary"
                },
                short(&self.canaries[key].run.canary.version)
            )),
        );
    }

    /// Applies `verdict` to `key`'s canary.
    pub(super) fn end_canary(&mut self, key: &PolicyKey, verdict: Verdict) {
        let Some(c) = self.canaries.remove(key) else {
            return;
        };
        let (name, version) = (&key.name, c.run.canary.version.clone());
        let dir = self.config.policies.state_dir.clone();
        let outcome = match verdict {
            Verdict::Promote(why) => {
                info!(policy = %name, version = %version, "policy={name} version={version} promoted: {why}");
                if let Some(dir) = &dir {
                    let moved = std::fs::rename(
                        file(dir, name, "canary.wasm"),
                        file(dir, name, "serving.wasm"),
                    )
                    .and_then(|()| {
                        std::fs::rename(
                            file(dir, name, "canary.json"),
                            file(dir, name, "serving.json"),
                        )
                    });
                    if moved.is_err() {
                        keep_serving(&self.config, name, &c.wasm, &c.cfg);
                    }
                }
                if c.run.shadow.is_some() {
                    c.run.canary.use_scratch_kv(false);
                }
                if let Some(old) = self.policies.insert(key.clone(), c.run.canary.clone()) {
                    old.retire();
                }
                self.count_rollout(name, "promoted");
                Ok(format!("promoted {}: {why}", short(&version)))
            }
            Verdict::Rollback(why) => {
                warn!(policy = %name, version = %version,
                    "policy={name} version={version} rolled back: {why}; version {} keeps serving",
                    c.run.live.version);
                c.run.canary.retire();
                if let Some(dir) = &dir {
                    let _ = std::fs::remove_file(file(dir, name, "canary.wasm"));
                    let _ = std::fs::remove_file(file(dir, name, "canary.json"));
                    if let Err(e) = remember_refused(dir, name, &version) {
                        warn!(policy = %name, error = %e, "cannot remember the refused version");
                    }
                }
                self.refused.insert(
                    key.clone(),
                    (version.clone(), format!("rolled back: {why}")),
                );
                self.count_rollout(name, "rolled_back");
                Err(format!("rolled back {}: {why}", short(&version)))
            }
        };
        self.metrics.reloads.record("rollout", name, outcome);
        self.republish(key);
        self.publish_view();
    }

    fn count_rollout(&self, policy: &str, outcome: &'static str) {
        self.metrics
            .policy_reloads
            .get_or_create(&crate::admin::metrics::ReloadLabels {
                policy: policy.into(),
                result: outcome,
            })
            .inc();
    }
}

/// Applies verdicts as they come: woken by a canary whose count makes one
/// due (or an admin request), and every 250 ms for `max_duration_s`. Ends
/// when the daemon is gone.
pub(super) async fn judge(control: Weak<Control>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(250), wake.notified()).await;
        let Some(c) = control.upgrade() else { return };
        let due = c
            .state
            .lock()
            .await
            .canaries
            .values()
            .any(|r| r.run.verdict().is_some());
        if !due {
            continue;
        }
        // A verdict changes the policies: as a reload does, one at a time.
        let _reloading = c.reloads.lock().await;
        let mut d = c.state.lock().await;
        let verdicts: Vec<(PolicyKey, Verdict)> = d
            .canaries
            .iter()
            .filter_map(|(k, r)| r.run.verdict().map(|v| (k.clone(), v)))
            .collect();
        for (key, verdict) in verdicts {
            d.end_canary(&key, verdict);
        }
    }
}
