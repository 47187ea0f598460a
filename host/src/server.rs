//! Wires the daemon together and keeps it current: policy engine, pools,
//! listeners; policy and configuration reloads; shutdown with drain.
//!
//! A listener starts accepting only once its policy has loaded and passed
//! its checks, so the first request is already routed by it. Every change
//! after that is published by swapping a listener's state (`ArcSwap`):
//! requests and connections already running finish on the state they
//! started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AccessLog, Metrics};
use crate::config::{Config, ListenerConfig, Protocol};
use crate::l4::L4State;
use crate::l7::HttpState;
use crate::listener::{self, Connections, Handler};
use crate::policy::{
    self, Directory, EngineSettings, Policy, PolicyEngine, PolicyKind, version_of,
};
use crate::reload::{self, Change, Compiler, Watches};
use crate::upstream::Upstreams;

/// How the daemon treats its inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// A removed policy file makes its listeners fall back to the pool's
    /// algorithm, instead of keeping the last loaded version.
    pub strict_policies: bool,
    /// Watch the policy directory and the config file for changes.
    pub watch: bool,
}

/// A policy as listeners name it: file name, optional other config, world.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PolicyKey {
    name: String,
    config: Option<PathBuf>,
    kind: PolicyKind,
}

fn key_of(l: &ListenerConfig) -> Option<PolicyKey> {
    let kind = match l.protocol {
        Protocol::Http => PolicyKind::Http,
        Protocol::Tcp | Protocol::Udp => PolicyKind::Connection,
    };
    l.policy.as_ref().map(|name| PolicyKey {
        name: name.clone(),
        config: l.policy_config.clone(),
        kind,
    })
}

struct ListenerHandle {
    protocol: Protocol,
    bind: SocketAddr,
    addr: SocketAddr,
    handler: Handler,
    stop: watch::Sender<bool>,
}

pub use crate::admin::View;

struct Daemon {
    engine: Arc<PolicyEngine>,
    compiler: Compiler,
    config: Config,
    options: Options,
    upstreams: Arc<Upstreams>,
    listeners: BTreeMap<String, ListenerHandle>,
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
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

/// Reads a policy's files (on a blocking thread) for `config`.
async fn read_policy(
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

/// What loading policies needs, taken from the daemon under its lock and
/// used without it: reading files, compiling and the smoke call never
/// hold the daemon's state.
struct Loader {
    engine: Arc<PolicyEngine>,
    compiler: Compiler,
    metrics: Arc<Metrics>,
    /// The pools the smoke call sees.
    directory: Arc<dyn Directory>,
    /// The policies loaded now.
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
}

impl Loader {
    /// Compiles (on the low-priority thread) and activates one policy.
    /// `config` is the configuration it is loaded for and `fresh` what
    /// else was loaded for it and is not in `self.policies` yet: the
    /// instance budgets of all of them must fit in the engine's pool.
    async fn load(
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
            let compiled = self
                .compiler
                .compile(&self.engine, &key.name, &file, wasm, cfg.clone(), key.kind)
                .await?;
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
    async fn load_missing(
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
            let loaded = match read_policy(config, &key).await {
                Ok((file, wasm, cfg)) => self.load(&key, file, wasm, cfg, config, &fresh).await,
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

impl Daemon {
    fn directory(&self) -> Arc<dyn Directory> {
        self.upstreams.clone()
    }

    /// What a reload needs to load policies without this lock.
    fn loader(&self) -> Loader {
        Loader {
            engine: self.engine.clone(),
            compiler: self.compiler.clone(),
            metrics: self.metrics.clone(),
            directory: self.directory(),
            policies: self.policies.clone(),
        }
    }

    /// Publishes a listener's current state.
    fn publish(&self, name: &str) {
        let (Some(h), Some(cfg)) = (self.listeners.get(name), self.config.listeners.get(name))
        else {
            return;
        };
        let policy = key_of(cfg).and_then(|k| self.policies.get(&k).cloned());
        match &h.handler {
            Handler::Http(s) => s.store(Arc::new(self.http_state(name, cfg, policy))),
            Handler::L4(s) => s.store(Arc::new(self.l4_state(name, cfg, policy))),
        }
    }

    fn http_state(
        &self,
        name: &str,
        cfg: &ListenerConfig,
        policy: Option<Arc<Policy>>,
    ) -> HttpState {
        let tls = self.terminators.get(name).cloned();
        let name: crate::admin::metrics::Label = name.into();
        HttpState {
            policy_metrics: policy
                .as_ref()
                .map(|p| self.metrics.policy_handles(&p.name)),
            bytes: (
                self.metrics.bytes_counter(&name, "in"),
                self.metrics.bytes_counter(&name, "out"),
            ),
            timeouts: crate::l7::guard::TimeoutCounters {
                first_byte: self.metrics.timeout_counter(&name, "first_byte"),
                send: self.metrics.timeout_counter(&name, "send"),
                request_body: self.metrics.timeout_counter(&name, "request_body"),
                upstream_body: self.metrics.timeout_counter(&name, "upstream_body"),
                idle: self.metrics.timeout_counter(&name, "idle"),
                tunnel: self.metrics.timeout_counter(&name, "tunnel"),
                total: self.metrics.timeout_counter(&name, "total"),
            },
            name,
            config: cfg.clone(),
            policy,
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            tls,
        }
    }

    /// The TLS terminators of `config`'s listeners: kept where the settings
    /// did not change (re-reading their files), new where they did.
    fn terminators_for(
        &self,
        config: &Config,
    ) -> Result<BTreeMap<String, Arc<crate::tls::Terminator>>, Vec<String>> {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, l) in &config.listeners {
            let Some(tls) = &l.tls else {
                continue;
            };
            let made = match self.terminators.get(name) {
                Some(t) if t.settings == *tls => t.reload().map(|_| t.clone()),
                _ => crate::tls::Terminator::new(name, tls).map(Arc::new),
            };
            match made {
                Ok(t) => {
                    out.insert(name.clone(), t);
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Reads every listener's certificate files again; a broken file keeps
    /// the last good set serving.
    /// Re-reads every listener's certificates; returns how many were
    /// refused (the last loaded pair keeps serving).
    fn reload_certs(&self) -> u64 {
        let mut refused = 0;
        for (name, t) in &self.terminators {
            match t.reload() {
                Ok(true) => info!(listener = %name, "TLS certificates reloaded"),
                Ok(false) => {}
                Err(e) => {
                    refused += 1;
                    warn!(listener = %name, "{e}; the last loaded certificates keep serving")
                }
            }
        }
        refused
    }

    fn watch_cert_files(&mut self) {
        if let Some(w) = &mut self.watches {
            w.watch_files(self.terminators.values().flat_map(|t| t.files()));
        }
    }

    fn l4_state(&self, name: &str, cfg: &ListenerConfig, policy: Option<Arc<Policy>>) -> L4State {
        L4State {
            name: name.into(),
            config: cfg.clone(),
            policy,
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
        }
    }

    fn publish_view(&self) {
        let policy_versions = self
            .config
            .listeners
            .iter()
            .filter_map(|(n, l)| {
                let p = key_of(l).and_then(|k| self.policies.get(&k))?;
                Some((n.clone(), p.version.clone()))
            })
            .collect();
        self.view.store(Arc::new(View {
            addrs: self
                .listeners
                .iter()
                .map(|(n, h)| (n.clone(), h.addr))
                .collect(),
            upstreams: self.upstreams.clone(),
            policy_versions,
            policy_errors: self
                .refused
                .iter()
                .map(|(k, (_, e))| (k.name.clone(), e.clone()))
                .collect(),
            policies_missing: self.missing.keys().map(|k| k.name.clone()).collect(),
            cache_hits: self.engine.cache_hits(),
            cache_misses: self.engine.cache_misses(),
            policies: self.policies.values().cloned().collect(),
            engine: Some(self.engine.clone()),
            ready: self.started,
        }));
        for p in self.policies.values() {
            self.metrics
                .policy_version
                .get_or_create(&crate::admin::metrics::PolicyVersion {
                    policy: p.name.clone(),
                    version: p.version.as_str().into(),
                })
                .set(1);
        }
    }

    /// Binds a listener and starts its accept loop.
    fn open(&mut self, name: &str, socket: listener::Socket) -> anyhow::Result<()> {
        let l = self.config.listeners[name].clone();
        let addr = socket.local_addr()?;
        let handler = match l.protocol {
            Protocol::Http => Handler::Http(Arc::new(ArcSwap::from_pointee(
                self.http_state(name, &l, None),
            ))),
            Protocol::Tcp | Protocol::Udp => Handler::L4(Arc::new(ArcSwap::from_pointee(
                self.l4_state(name, &l, None),
            ))),
        };
        let (stop, stop_rx) = watch::channel(false);
        self.listeners.insert(
            name.to_owned(),
            ListenerHandle {
                protocol: l.protocol,
                bind: l.bind,
                addr,
                handler: handler.clone(),
                stop,
            },
        );
        // Policy first, then accept.
        self.publish(name);
        info!(listener = %name, %addr, protocol = ?l.protocol, "listening");
        // Tracked like connections, so a drain also waits for the accept
        // loop to take what the kernel had queued before it closes.
        match (socket, handler) {
            (listener::Socket::Udp(socket), Handler::L4(state)) => {
                // UDP has nothing to drain: its flows end when the
                // listener stops (removed, or at shutdown).
                self.conns.tracker.spawn(crate::l4::udp::serve(
                    socket,
                    state,
                    stop_rx,
                    self.conns.tracker.clone(),
                ));
            }
            (listener::Socket::Tcp(socket), handler) => {
                self.conns.tracker.spawn(listener::accept_loop(
                    name.to_owned(),
                    socket,
                    handler,
                    l.max_connections,
                    stop_rx,
                    self.conns.clone(),
                ));
            }
            (listener::Socket::Udp(_), _) => {
                anyhow::bail!("listeners.{name}: a udp socket for a non-udp listener")
            }
        }
        Ok(())
    }

    fn republish(&self, key: &PolicyKey) {
        for (name, l) in &self.config.listeners {
            if key_of(l).as_ref() == Some(key) {
                self.publish(name);
            }
        }
    }

    /// The part of a reload that changes the daemon: certificates,
    /// binding, swapping pools and policies. Quick, with the lock held.
    fn finish_apply(
        &mut self,
        new: Config,
        upstreams: Arc<Upstreams>,
        fresh: BTreeMap<PolicyKey, Arc<Policy>>,
    ) -> Result<(), Vec<String>> {
        let terminators = self.terminators_for(&new)?;
        // Bind what is new or moved before changing anything, so a bind
        // failure refuses the reload cleanly.
        let mut sockets = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, l) in &new.listeners {
            let same = self
                .listeners
                .get(name)
                .is_some_and(|h| h.bind == l.bind && h.protocol == l.protocol);
            if same {
                continue;
            }
            match listener::bind(l.protocol, l.bind) {
                Ok(s) => {
                    sockets.insert(name.clone(), s);
                }
                Err(e) => problems.push(format!(
                    "listeners.{name}.bind: cannot bind {}: {e}",
                    l.bind
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        self.policies.extend(fresh);
        self.terminators = terminators;
        self.watch_cert_files();
        upstreams.start_health_checks();
        self.upstreams = upstreams;
        let old_names: Vec<String> = self.listeners.keys().cloned().collect();
        self.config = new;
        for name in old_names {
            let keep = self.config.listeners.get(&name).is_some_and(|l| {
                let h = &self.listeners[&name];
                h.bind == l.bind && h.protocol == l.protocol
            });
            if !keep && let Some(h) = self.listeners.remove(&name) {
                // Stop accepting; its connections finish on their own.
                let _ = h.stop.send(true);
                info!(listener = %name, addr = %h.addr, "listener closed");
            }
        }
        let in_use: Vec<PolicyKey> = self.config.listeners.values().filter_map(key_of).collect();
        self.policies.retain(|k, p| {
            let keep = in_use.contains(k);
            if !keep {
                p.retire();
            }
            keep
        });
        for (name, socket) in sockets {
            if let Err(e) = self.open(&name, socket) {
                error!(listener = %name, error = %e, "cannot open listener");
            }
        }
        let names: Vec<String> = self.listeners.keys().cloned().collect();
        for name in names {
            self.publish(&name);
        }
        self.publish_view();
        Ok(())
    }
}

/// Looks at every policy file in use; loads what changed, keeps the last
/// good version of what is broken or gone. Reads and loads without the
/// daemon's lock; the caller holds the reload lock.
async fn rescan(control: &Control) {
    let (loader, config, present, current, refused) = {
        let mut d = control.state.lock().await;
        let keys: std::collections::BTreeSet<PolicyKey> =
            d.config.listeners.values().filter_map(key_of).collect();
        let mut present = Vec::new();
        for key in keys {
            let file = d.config.policy_file(&key.name);
            if file.exists() {
                d.missing.remove(&key);
                present.push(key);
                continue;
            }
            if d.missing.insert(key.clone(), ()).is_none() {
                if d.options.strict_policies {
                    warn!(policy = %key.name, file = %file.display(),
                        "policy file removed; its listeners fall back to the pool's algorithm (--strict-policies)");
                    if let Some(old) = d.policies.remove(&key) {
                        old.retire();
                    }
                    d.republish(&key);
                } else {
                    warn!(policy = %key.name, file = %file.display(),
                        "policy file removed; the last loaded version keeps serving");
                }
            }
        }
        let current: BTreeMap<PolicyKey, String> = d
            .policies
            .iter()
            .map(|(k, p)| (k.clone(), p.version.clone()))
            .collect();
        let refused: BTreeMap<PolicyKey, String> = d
            .refused
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        (d.loader(), d.config.clone(), present, current, refused)
    };
    let mut outcomes = Vec::new();
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
        if now == Some(&version) || refused.get(&key) == Some(&version) {
            continue;
        }
        let loaded = loader
            .load(&key, file, wasm, cfg, &config, &BTreeMap::new())
            .await;
        outcomes.push((key, version, now.cloned(), loaded));
    }
    let mut d = control.state.lock().await;
    for (key, version, current, loaded) in outcomes {
        match loaded {
            Ok(p) => {
                d.refused.remove(&key);
                if let Some(old) = d.policies.insert(key.clone(), p) {
                    old.retire();
                }
                d.republish(&key);
            }
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

/// Applies a new configuration, or refuses it whole and keeps the running
/// one. Resolves names and loads policies without the daemon's lock; the
/// caller holds the reload lock.
async fn apply(control: &Control, new: Config) -> Result<(), Vec<String>> {
    let (loader, current) = {
        let d = control.state.lock().await;
        (d.loader(), d.upstreams.clone())
    };
    let upstreams = Arc::new(Upstreams::rebuild(Some(&current), &new)?);
    let unresolved = upstreams.resolve().await;
    if !unresolved.is_empty() {
        return Err(unresolved);
    }
    let loader = Loader {
        directory: upstreams.clone(),
        ..loader
    };
    let fresh = loader.load_missing(&new).await?;
    control
        .state
        .lock()
        .await
        .finish_apply(new, upstreams, fresh)
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

    /// Stops accepting, asks every connection to finish what it is doing,
    /// and waits up to `drain` for them. Returns whether all finished.
    pub async fn shutdown(self, drain: Duration) -> bool {
        let d = self.daemon.state.lock().await;
        for h in d.listeners.values() {
            let _ = h.stop.send(true);
        }
        let _ = d.drain.send(true);
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

/// Resolves backends given by DNS name again every `resolve_interval_ms`,
/// so they follow their records; a failed lookup keeps the last address.
/// Ends when the daemon is gone.
async fn re_resolve(view: std::sync::Weak<ArcSwap<View>>) {
    loop {
        let interval = match view.upgrade() {
            Some(v) => v.load().upstreams.resolve_interval(),
            None => return,
        };
        tokio::time::sleep(interval.unwrap_or(Duration::from_secs(1))).await;
        if interval.is_none() {
            continue;
        }
        let Some(v) = view.upgrade() else {
            return;
        };
        let upstreams = v.load().upstreams.clone();
        drop(v);
        for problem in upstreams.resolve().await {
            warn!("{problem}; keeping the last address");
        }
    }
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
    if change == Change::Config {
        let source = control.state.lock().await.config.source.clone();
        match Config::load(&source) {
            Ok(c) => match apply(control, c).await {
                Ok(()) => info!(config = %source.display(), "configuration reloaded"),
                Err(problems) => {
                    control
                        .configs_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    for p in &problems {
                        warn!(config = %source.display(), "{p}");
                    }
                    warn!(config = %source.display(), "configuration refused; the running one stays");
                }
            },
            Err(e) => {
                control
                    .configs_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for line in e.to_string().lines() {
                    warn!("{line}");
                }
                warn!(config = %source.display(), "configuration refused; the running one stays");
            }
        }
    }
    rescan(control).await;
}

/// Loads every policy, binds every listener and starts accepting; with
/// `options.watch`, follows changes to policies and configuration.
pub async fn start_with(
    config: Config,
    options: Options,
) -> anyhow::Result<(Running, mpsc::Sender<Change>)> {
    let engine = PolicyEngine::new(&EngineSettings {
        cache_dir: config.policies.cache_dir.clone(),
        pool: config.policies.pool,
        kv: config.policies.kv,
    })?;
    let metrics = Arc::new(Metrics::default());
    let access_log = AccessLog::start(
        config.runtime.access_log_file.clone(),
        metrics.access_log_dropped.clone(),
    )
    .context("runtime.access_log_file: cannot open")?;
    let (drain, drain_rx) = watch::channel(false);
    let view = Arc::new(ArcSwap::from_pointee(View::default()));
    let mut daemon = Daemon {
        engine,
        compiler: Compiler::start(),
        upstreams: Arc::new(Upstreams::new(&config).map_err(|p| anyhow::anyhow!(p.join("\n")))?),
        config: config.clone(),
        options,
        listeners: BTreeMap::new(),
        policies: BTreeMap::new(),
        refused: BTreeMap::new(),
        missing: BTreeMap::new(),
        conns: Connections {
            tracker: TaskTracker::new(),
            drain: drain_rx,
            cancel: tokio_util::sync::CancellationToken::new(),
        },
        drain,
        view: view.clone(),
        metrics,
        access_log,
        started: false,
        terminators: BTreeMap::new(),
        watches: None,
    };
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
    let unresolved = daemon.upstreams.resolve().await;
    if !unresolved.is_empty() {
        anyhow::bail!("{}", unresolved.join("\n"));
    }
    let fresh = daemon
        .loader()
        .load_missing(&config)
        .await
        .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    daemon.policies = fresh;
    daemon.terminators = daemon
        .terminators_for(&config)
        .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    for (name, l) in &config.listeners {
        let socket = listener::bind(l.protocol, l.bind)
            .with_context(|| format!("listeners.{name}.bind: cannot bind {}", l.bind))?;
        daemon.open(name, socket)?;
    }
    daemon.started = true;
    daemon.publish_view();
    let (tx, mut rx) = mpsc::channel::<Change>(8);
    if options.watch {
        daemon.watches = Some(
            reload::watch(&config.policies.dir, &config.source, tx.clone())
                .context("cannot watch the policy directory and config file")?,
        );
        daemon.watch_cert_files();
    }
    daemon.upstreams.start_health_checks();
    tokio::spawn(re_resolve(Arc::downgrade(&view)));
    let daemon = Arc::new(Control {
        state: Mutex::new(daemon),
        reloads: Mutex::new(()),
        configs_refused: std::sync::atomic::AtomicU64::new(0),
        certs_refused: std::sync::atomic::AtomicU64::new(0),
    });
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
    signals.wait_for_stop(&changes).await;
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

/// Raises the soft limit on open files to the hard limit (systemd's
/// default soft limit is 1,024), and warns when the listeners could need
/// more than that: each client connection may hold an upstream one too.
fn raise_fd_limit(config: &Config) {
    let need: u64 = config
        .listeners
        .values()
        .map(|l| 2 * l.max_connections as u64)
        .sum();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            info!(
                open_files = limit,
                "open-file limit raised to the hard limit"
            );
            if need > limit {
                warn!(
                    limit,
                    need,
                    "open-file limit below 2 x the listeners' max_connections (client and upstream sockets): raise LimitNOFILE or lower max_connections"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
}

mod signals {
    use tokio::sync::mpsc;

    use crate::reload::Change;

    /// SIGINT, SIGTERM and SIGHUP, registered with the OS when installed.
    pub struct Signals {
        #[cfg(unix)]
        int: tokio::signal::unix::Signal,
        #[cfg(unix)]
        term: tokio::signal::unix::Signal,
        #[cfg(unix)]
        hup: tokio::signal::unix::Signal,
    }

    impl Signals {
        pub fn install() -> std::io::Result<Signals> {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                Ok(Signals {
                    int: signal(SignalKind::interrupt())?,
                    term: signal(SignalKind::terminate())?,
                    hup: signal(SignalKind::hangup())?,
                })
            }
            #[cfg(not(unix))]
            Ok(Signals {})
        }

        /// Waits for SIGINT/SIGTERM; SIGHUP meanwhile asks for a config
        /// reload.
        pub async fn wait_for_stop(&mut self, changes: &mpsc::Sender<Change>) {
            #[cfg(unix)]
            loop {
                tokio::select! {
                    _ = self.int.recv() => return,
                    _ = self.term.recv() => return,
                    _ = self.hup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        let _ = changes.send(Change::Config).await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = changes;
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
