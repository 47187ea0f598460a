//! Wires the daemon together and keeps it current: policy engine, pools,
//! listeners; policy and configuration reloads; shutdown with drain.
//!
//! A listener starts accepting only once its policy has loaded and passed
//! its checks, so the first request is already routed by it. Every change
//! after that is published by swapping a listener's state (`ArcSwap`):
//! requests and connections already running finish on the state they
//! started with.

mod certs;
mod dns_refresh;
mod notify;
mod plan;
mod policies;
mod rollout;
mod signals;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AccessLog, Metrics};
use crate::config::{Config, Protocol};
use crate::listener::{Connections, Served};
use crate::policy::{EngineSettings, Policy, PolicyEngine};
use crate::reload::{self, Change, Compiler, Watches};
use crate::upstream::Upstreams;
use policies::{PolicyKey, rescan};
use signals::raise_fd_limit;
use state::apply;

pub use crate::admin::View;

/// How the daemon treats its inputs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A removed policy file makes its listeners fall back to the pool's
    /// algorithm, instead of keeping the last loaded version.
    pub strict_policies: bool,
    /// Watch the policy directory and the config file for changes.
    pub watch: bool,
    /// Where listeners accept and connections are served: one socket
    /// per worker. Without, on the runtime that starts the daemon.
    pub workers: Option<Arc<crate::workers::Workers>>,
}

struct ListenerHandle {
    protocol: Protocol,
    bind: SocketAddr,
    addr: SocketAddr,
    served: Served,
    stop: watch::Sender<bool>,
}

struct Daemon {
    engine: Arc<PolicyEngine>,
    compiler: Compiler,
    config: Config,
    options: Options,
    upstreams: Arc<Upstreams>,
    /// The resolver of the running configuration and its last answers.
    dns: Option<Arc<crate::upstream::dns::Dns>>,
    listeners: BTreeMap<String, ListenerHandle>,
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
    /// The capture files' writers (`l7/capture.rs`).
    captures: std::sync::Mutex<Vec<Arc<crate::l7::capture::CaptureWriter>>>,
    /// Canaries running, by policy (`rollout.rs`).
    canaries: BTreeMap<PolicyKey, rollout::CanaryRun>,
    /// Wakes the task that applies canary verdicts.
    rollout_wake: Arc<tokio::sync::Notify>,
    /// The last version refused per policy and why, so a broken file is
    /// reported once, not at every unrelated event.
    refused: BTreeMap<PolicyKey, (String, String)>,
    /// Policies whose file is gone and that were reported so.
    missing: BTreeMap<PolicyKey, ()>,
    conns: Connections,
    drain: watch::Sender<bool>,
    view: Arc<ArcSwap<View>>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    /// Start-up finished: every listener bound, every policy loaded.
    started: bool,
    /// TLS termination by listener name.
    terminators: BTreeMap<String, Arc<crate::tls::Terminator>>,
    /// File watches (with `Options::watch`); certificate folders are
    /// added as listeners name them.
    watches: Option<Watches>,
}

/// The daemon's state behind its lock, and the lock that serializes
/// reloads. A reload holds `reloads` from start to end and takes `state`
/// only to read or change the state, never while it reads files,
/// compiles, resolves names or calls a policy: a slow policy load stalls
/// neither shutdown nor the admin view, and a later reload waits at most
/// for the load in progress, whose every step has a deadline.
struct Control {
    state: Mutex<Daemon>,
    reloads: Mutex<()>,
    /// Configuration files refused since start (they did not parse,
    /// validate or apply; the running configuration stayed).
    configs_refused: std::sync::atomic::AtomicU64,
    /// Certificate reloads refused since start.
    certs_refused: std::sync::atomic::AtomicU64,
}

/// A started daemon.
pub struct Running {
    daemon: Arc<Control>,
    view: Arc<ArcSwap<View>>,
    /// Where the admin API listens, when configured.
    pub admin_addr: Option<SocketAddr>,
}

impl Running {
    /// Each listener's bound address (useful with port 0).
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.view.load().addrs[listener]
    }

    /// The pools now in use.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.view.load().upstreams.clone()
    }

    /// The policy version a listener serves with now.
    pub fn policy_version(&self, listener: &str) -> Option<String> {
        self.view.load().policy_versions.get(listener).cloned()
    }

    /// Why the newest file of a policy was refused, if it was.
    pub fn policy_error(&self, policy: &str) -> Option<String> {
        self.view.load().policy_errors.get(policy).cloned()
    }

    /// Configuration files the watcher saw refused since start.
    pub fn configs_refused(&self) -> u64 {
        self.daemon
            .configs_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Certificate reloads the watcher saw refused since start.
    pub fn certs_refused(&self) -> u64 {
        self.daemon
            .certs_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the daemon has seen that a policy's file is gone.
    pub fn policy_missing(&self, policy: &str) -> bool {
        self.view.load().policies_missing.contains(policy)
    }

    /// (hits, misses) of the compiled-policy cache since start.
    /// The loaded policy versions in use (tests read their counters).
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        self.view.load().policies.clone()
    }

    /// Live instances, memories and stacks in the engine's pool, as
    /// wasmtime counts them.
    pub fn wasm_pool_usage(&self) -> Option<(u64, usize, usize)> {
        self.view.load().engine.as_ref()?.pool_usage()
    }

    pub fn cache_stats(&self) -> (usize, usize) {
        let v = self.view.load();
        (v.cache_hits, v.cache_misses)
    }

    /// Applies a new configuration; on error the running one stays.
    pub async fn reload(&self, config: Config) -> Result<(), Vec<String>> {
        let _reloading = self.daemon.reloads.lock().await;
        apply(&self.daemon, config).await
    }

    /// Re-reads the configuration file and applies it.
    pub async fn reload_from_file(&self) -> Result<(), Vec<String>> {
        let source = self.daemon.state.lock().await.config.source.clone();
        let config = Config::load(&source)
            .map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())?;
        self.reload(config).await
    }

    /// Looks for changed policy files now (the watcher does it on events).
    pub async fn rescan_policies(&self) {
        let _reloading = self.daemon.reloads.lock().await;
        rescan(&self.daemon).await
    }

    /// Stops at once, waiting for nothing: listeners stop accepting and
    /// every connection is cancelled. For a test harness's `Drop`, which
    /// cannot wait; `false` when a reload holds the state just then (what
    /// it serves then ends with the runtime).
    pub fn stop_now(&self) -> bool {
        let Ok(d) = self.daemon.state.try_lock() else {
            return false;
        };
        d.stop_accepting();
        d.conns.cancel.cancel();
        true
    }

    /// Stops accepting, asks every connection to finish what it is doing,
    /// and waits up to `drain` for them. Returns whether all finished.
    pub async fn shutdown(self, drain: Duration) -> bool {
        let d = self.daemon.state.lock().await;
        d.stop_accepting();
        let tracker = d.conns.tracker.clone();
        let cancel = d.conns.cancel.clone();
        drop(d);
        tracker.close();
        let drained = tokio::time::timeout(drain, tracker.wait()).await.is_ok();
        // What is left (upgraded tunnels) is closed now.
        cancel.cancel();
        drained
    }
}

impl Daemon {
    /// Tells every listener to stop accepting and every connection to
    /// finish what it is doing.
    fn stop_accepting(&self) {
        for h in self.listeners.values() {
            let _ = h.stop.send(true);
        }
        let _ = self.drain.send(true);
    }
}

/// The store of the `kv` import is made at start: a reload keeps it.
async fn warn_kv(control: &Control, new: Config) -> Config {
    if control.state.lock().await.config.kv != new.kv {
        warn!("[kv] changed: the running store stays until a restart");
    }
    new
}

async fn on_change(control: &Control, change: Change) {
    let _reloading = control.reloads.lock().await;
    if change == Change::Certs {
        let refused = control.state.lock().await.reload_certs();
        control
            .certs_refused
            .fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    if change == Change::Resolved {
        let config = control.state.lock().await.config.clone();
        if let Err(problems) = apply(control, config).await {
            for p in &problems {
                warn!("{p}");
            }
            warn!("pools not rebuilt after a DNS change; the running ones stay");
        }
        return;
    }
    if change == Change::Config {
        notify::reloading();
        let source = control.state.lock().await.config.source.clone();
        let outcome = match Config::load(&source) {
            Ok(c) => apply(control, warn_kv(control, c).await).await,
            Err(e) => Err(e.to_string().lines().map(str::to_owned).collect()),
        };
        let name = source.display().to_string();
        match &outcome {
            Ok(()) => info!(config = %name, "configuration reloaded"),
            Err(problems) => {
                control
                    .configs_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for p in problems {
                    warn!(config = %name, "{p}");
                }
                warn!(config = %name, "configuration refused; the running one stays");
            }
        }
        let detail = outcome
            .map(|()| "applied".to_owned())
            .map_err(|p| p.join("; "));
        let metrics = control.state.lock().await.metrics.clone();
        metrics.reloads.record("config", &name, detail);
        notify::ready(&notify::status(control).await);
    }
    rescan(control).await;
}

impl Daemon {
    /// A daemon with nothing loaded, bound or published yet.
    fn new(config: &Config, options: Options, view: Arc<ArcSwap<View>>) -> anyhow::Result<Self> {
        let mut metrics = Metrics::default();
        let engine = PolicyEngine::new(&EngineSettings {
            cache_dir: config.policies.cache_dir.clone(),
            pool: config.policies.pool,
            kv: config.policies.kv,
            kv_store: config.kv.clone(),
            kv_metrics: metrics.kv.clone(),
            frozen: None,
        })?;
        metrics.add_collector(Box::new(engine.custom_metrics.clone()));
        let accepted = crate::workers::Accepted::default();
        metrics.add_collector(Box::new(accepted.clone()));
        let metrics = Arc::new(metrics);
        let access_log = AccessLog::start(
            config.runtime.access_log_file.clone(),
            metrics.access_log_dropped.clone(),
        )
        .context("runtime.access_log_file: cannot open")?;
        let (drain, drain_rx) = watch::channel(false);
        Ok(Daemon {
            engine,
            compiler: Compiler::start(),
            // The plan at start builds the pools; until then, none.
            upstreams: Arc::new(Upstreams::default()),
            dns: None,
            config: config.clone(),
            options,
            listeners: BTreeMap::new(),
            policies: BTreeMap::new(),
            canaries: BTreeMap::new(),
            captures: std::sync::Mutex::new(Vec::new()),
            rollout_wake: Arc::new(tokio::sync::Notify::new()),
            refused: BTreeMap::new(),
            missing: BTreeMap::new(),
            conns: Connections {
                tracker: TaskTracker::new(),
                drain: drain_rx,
                cancel: tokio_util::sync::CancellationToken::new(),
                accepted,
            },
            drain,
            view,
            metrics,
            access_log,
            started: false,
            terminators: BTreeMap::new(),
            watches: None,
        })
    }
}

/// Loads every policy, binds every listener and starts accepting; with
/// `options.watch`, follows changes to policies and configuration.
pub async fn start_with(
    config: Config,
    options: Options,
) -> anyhow::Result<(Running, mpsc::Sender<Change>)> {
    let view = Arc::new(ArcSwap::from_pointee(View::default()));
    let watch = options.watch;
    let mut daemon = Daemon::new(&config, options, view.clone())?;
    // The admin listener comes first, so /healthz answers and /readyz says
    // 503 while policies load.
    daemon.publish_view();
    let admin_addr = match config.admin.clone() {
        Some(admin) => {
            let bind = admin.bind;
            Some(
                admin::serve(admin, view.clone(), daemon.metrics.clone())
                    .await
                    .with_context(|| format!("admin.bind: cannot bind {bind}"))?,
            )
        }
        None => None,
    };
    // The same plan `switchyard check` builds, then every listener bound.
    let plan = plan::Plan::build(config.clone(), daemon.current())
        .await
        .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    daemon
        .commit(plan)
        .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    daemon.started = true;
    daemon.publish_view();
    let (tx, mut rx) = mpsc::channel::<Change>(8);
    if watch {
        daemon.watches = Some(
            reload::watch(&config.policies.dir, &config.source, tx.clone())
                .context("cannot watch the policy directory and config file")?,
        );
        daemon.watch_cert_files();
    }
    daemon.upstreams.start_health_checks();
    let daemon = Arc::new(Control {
        state: Mutex::new(daemon),
        reloads: Mutex::new(()),
        configs_refused: std::sync::atomic::AtomicU64::new(0),
        certs_refused: std::sync::atomic::AtomicU64::new(0),
    });
    tokio::spawn(dns_refresh::re_resolve(Arc::downgrade(&daemon)));
    let wake = daemon.state.lock().await.rollout_wake.clone();
    tokio::spawn(rollout::judge(Arc::downgrade(&daemon), wake));
    if !config.policies.rollout.is_empty() {
        // A file newer than the kept serving version starts as a canary.
        let d = daemon.clone();
        tokio::spawn(async move {
            let _reloading = d.reloads.lock().await;
            rescan(&d).await;
        });
    }
    let d = daemon.clone();
    tokio::spawn(async move {
        while let Some(change) = rx.recv().await {
            on_change(&d, change).await;
        }
    });
    Ok((
        Running {
            daemon,
            view,
            admin_addr,
        },
        tx,
    ))
}

/// Refuses `config` exactly as `run` would, but binds nothing and serves
/// nothing: the plan start-up builds (pools and names, policies read,
/// compiled, fitted into the engine's pool and smoke-called, TLS
/// terminators), on an engine of its own.
pub async fn check(config: Config) -> Result<(), Vec<String>> {
    let engine = PolicyEngine::new(&EngineSettings {
        cache_dir: config.policies.cache_dir.clone(),
        pool: config.policies.pool,
        kv: config.policies.kv,
        kv_store: config.kv.clone(),
        ..Default::default()
    })
    .map_err(|e| vec![format!("policy engine: {e:#}")])?;
    let current = plan::Current {
        loader: policies::Loader {
            engine,
            compiler: Compiler::start(),
            metrics: Arc::new(Metrics::default()),
            directory: Arc::new(Upstreams::default()),
            policies: BTreeMap::new(),
        },
        upstreams: None,
        dns: None,
        terminators: BTreeMap::new(),
        listeners: BTreeMap::new(),
    };
    plan::Plan::build(config, current).await.map(|_| ())
}

/// Starts without watching files (tests drive reloads themselves).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    Ok(start_with(config, Options::default()).await?.0)
}

/// Runs until SIGINT or SIGTERM, reloading the configuration on SIGHUP.
/// A second SIGINT/SIGTERM during the drain exits at once (status 130).
pub async fn run(config: Config, options: Options) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while policies load must not
    // kill the process with the default action.
    let mut signals = signals::Signals::install()?;
    raise_fd_limit(&config);
    let source = config.source.clone();
    let drain = config.runtime.drain_timeout;
    let (running, changes) = start_with(
        config,
        Options {
            watch: true,
            ..options
        },
    )
    .await?;
    info!(config = %source.display(), "switchyard running");
    notify::ready(&notify::status(&running.daemon).await);
    signals.wait_for_stop(&changes).await;
    notify::stopping();
    info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: draining connections"
    );
    tokio::spawn(async move {
        signals.wait_for_stop(&changes).await;
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
    if running.shutdown(drain).await {
        info!("drained; bye");
    } else {
        warn!("drain timeout reached; closing the remaining connections");
    }
    Ok(())
}
