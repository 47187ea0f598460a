//! Change detection for hot reload: a watch on the policy directory and on
//! the configuration file's folder (never single files: an editor's
//! write-and-rename or a Kubernetes `..data` symlink swap replaces the file
//! a per-file watch would follow), bursts debounced into one rescan, and
//! one low-priority thread that compiles policies off the serving threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::policy::{Compiled, LoadError, PolicyEngine, PolicyKind};

/// How long a burst of file events is collected before one rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Policies,
    Config,
    /// A file in a folder holding TLS certificates, keys or CAs.
    Certs,
    /// A backend DNS name's set of addresses changed (`upstream/dns.rs`).
    Resolved,
}

/// Keeps the OS watches alive; dropping it stops them.
pub struct Watches {
    watcher: notify::RecommendedWatcher,
    watched: Vec<PathBuf>,
}

impl Watches {
    /// Also watches the folders of `files` (TLS certificates and keys);
    /// changes there are reported as [`Change::Certs`].
    pub fn watch_files(&mut self, files: impl IntoIterator<Item = PathBuf>) {
        for f in files {
            let abs = std::fs::canonicalize(&f).unwrap_or(f);
            let Some(dir) = abs.parent().map(Path::to_path_buf) else {
                continue;
            };
            if self.watched.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.watched.push(dir),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch a certificate folder; its files reload on SIGHUP only")
                }
            }
        }
    }
}

/// Watches `policy_dir` (when it exists) and the folder of `config_file`,
/// sending debounced [`Change`]s to `tx`: one per kind per burst.
pub fn watch(
    policy_dir: &Path,
    config_file: &Path,
    tx: mpsc::Sender<Change>,
) -> notify::Result<Watches> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Change>();
    let policy_dir_abs =
        std::fs::canonicalize(policy_dir).unwrap_or_else(|_| policy_dir.to_path_buf());
    let config_abs =
        std::fs::canonicalize(config_file).unwrap_or_else(|_| config_file.to_path_buf());
    let config_name = config_abs.file_name().map(|n| n.to_owned());
    let config_dir = config_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (pdir, cdir) = (policy_dir_abs.clone(), config_dir.clone());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else {
            return;
        };
        if event.kind.is_access() {
            return;
        }
        for p in &event.paths {
            let parent = p.parent().unwrap_or(Path::new(""));
            if parent == cdir && p.file_name().map(|n| n.to_owned()) == config_name {
                let _ = raw_tx.send(Change::Config);
            } else if parent == pdir || p == &pdir {
                // Anything in the policy directory: a .wasm, a .json, or a
                // `..data` swap that changes what both resolve to.
                let _ = raw_tx.send(Change::Policies);
            } else {
                // A certificate folder (or another file beside the config):
                // certificates are re-read and compared, so a false alarm
                // costs a few file reads.
                let _ = raw_tx.send(Change::Certs);
            }
        }
    })?;
    let mut watched = Vec::new();
    if policy_dir_abs.is_dir() {
        watcher.watch(&policy_dir_abs, RecursiveMode::NonRecursive)?;
        watched.push(policy_dir_abs.clone());
    } else {
        debug!(dir = %policy_dir.display(), "policy directory does not exist; not watched");
    }
    if config_dir != policy_dir_abs {
        watcher.watch(&config_dir, RecursiveMode::NonRecursive)?;
        watched.push(config_dir.clone());
    }
    tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            let mut seen = vec![first];
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(more) = raw_rx.try_recv() {
                if !seen.contains(&more) {
                    seen.push(more);
                }
            }
            // A config change rescans policies and reloads certificates too.
            let changes = if seen.contains(&Change::Config) {
                vec![Change::Config]
            } else {
                seen
            };
            for change in changes {
                debug!(?change, "change detected");
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Watches { watcher, watched })
}

struct Job {
    engine: Arc<PolicyEngine>,
    name: String,
    file: PathBuf,
    wasm: Vec<u8>,
    config: String,
    kind: PolicyKind,
    reply: oneshot::Sender<Result<Compiled, LoadError>>,
}

/// One thread, at the lowest scheduling priority, that compiles policies
/// one at a time, so a slow compile (seconds for a Python guest) never takes
/// the cores from serving.
#[derive(Clone)]
pub struct Compiler {
    jobs: std_mpsc::Sender<Job>,
}

impl Compiler {
    pub fn start() -> Compiler {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("policy-compile".into())
            .spawn(move || {
                if let Err(e) = thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Min,
                ) {
                    warn!(error = ?e, "cannot lower the compile thread's priority");
                }
                while let Ok(job) = rx.recv() {
                    let r = job.engine.compile(
                        &job.name,
                        &job.file,
                        &job.wasm,
                        &job.config,
                        Some(job.kind),
                    );
                    let _ = job.reply.send(r);
                }
            })
            .expect("spawn the policy compile thread");
        Compiler { jobs }
    }

    pub async fn compile(
        &self,
        engine: &Arc<PolicyEngine>,
        name: &str,
        file: &Path,
        wasm: Vec<u8>,
        config: String,
        kind: PolicyKind,
    ) -> Result<Compiled, LoadError> {
        let (reply, rx) = oneshot::channel();
        let gone = || LoadError {
            file: file.to_path_buf(),
            reason: "the compile thread stopped".into(),
        };
        self.jobs
            .send(Job {
                engine: engine.clone(),
                name: name.to_owned(),
                file: file.to_path_buf(),
                wasm,
                config,
                kind,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
