//! The daemon's state and how it changes: publishing each listener's
//! state and the admin view, opening listeners, and committing a reload.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{error, info};

use super::plan::{Bound, Current, Plan};
use super::policies::{Loader, PolicyKey, key_of};
use super::{Control, Daemon, ListenerHandle, View};
use crate::config::{Config, HttpSettings, Listener, ProtocolSettings};
use crate::l4::L4State;
use crate::l7::HttpState;
use crate::listener::{self, Handler, Served};
use crate::policy::{Directory, Policy};

impl Daemon {
    pub(super) fn directory(&self) -> Arc<dyn Directory> {
        self.upstreams.clone()
    }

    /// What a reload needs to load policies without this lock.
    pub(super) fn loader(&self) -> Loader {
        Loader {
            engine: self.engine.clone(),
            compiler: self.compiler.clone(),
            metrics: self.metrics.clone(),
            directory: self.directory(),
            policies: self.policies.clone(),
        }
    }

    /// Publishes a listener's current state.
    pub(super) fn publish(&self, name: &str) {
        let (Some(h), Some(cfg)) = (self.listeners.get(name), self.config.listeners.get(name))
        else {
            return;
        };
        let key = key_of(cfg);
        let policy = key.as_ref().and_then(|k| self.policies.get(k).cloned());
        match (&h.served, &cfg.settings) {
            (Served::Stream(Handler::Http(s)), ProtocolSettings::Http(p)) => {
                let mut state = self.http_state(name, cfg.with(p.as_ref()), policy);
                if let Some(c) = key.and_then(|k| self.canaries.get(&k)) {
                    let mut canary =
                        self.http_state(name, cfg.with(p.as_ref()), Some(c.run.canary.clone()));
                    canary.rollout = Some(Box::new(crate::l7::Rollout {
                        run: c.run.clone(),
                        side: crate::policy::rollout::CANARY,
                        canary_state: None,
                    }));
                    state.rollout = Some(Box::new(crate::l7::Rollout {
                        run: c.run.clone(),
                        side: crate::policy::rollout::LIVE,
                        canary_state: Some(Arc::new(canary)),
                    }));
                }
                s.store(Arc::new(state))
            }
            (Served::Stream(Handler::Tcp(s)), ProtocolSettings::Tcp(p)) => {
                s.store(Arc::new(self.l4_state(name, cfg.with(p), policy)))
            }
            (Served::Datagram(s), ProtocolSettings::Udp(p)) => {
                s.store(Arc::new(self.l4_state(name, cfg.with(p), policy)))
            }
            // A listener whose protocol changed is closed and bound again
            // (`plan.rs`), never published over.
            _ => {
                error!(listener = %name, "listener state does not match its protocol; not published")
            }
        }
    }

    /// The pools an HTTP listener's policy sees, with the calls it may
    /// make.
    fn policy_directory(&self, cfg: &Listener<HttpSettings>) -> Arc<dyn crate::policy::Directory> {
        if cfg.policy_call_pools.is_empty() {
            return self.upstreams.clone();
        }
        Arc::new(crate::upstream::calls::PolicyCalls {
            upstreams: self.upstreams.clone(),
            allowed: cfg.policy_call_pools.clone(),
            timeout: cfg.policy_call_timeout,
        })
    }

    pub(super) fn http_state(
        &self,
        name: &str,
        cfg: Listener<HttpSettings>,
        policy: Option<Arc<Policy>>,
    ) -> HttpState {
        let tls = self.terminators.get(name).cloned();
        let cfg_capture = cfg.capture.as_ref().and_then(|c| self.capture_writer(c));
        let name: crate::admin::metrics::Label = name.into();
        HttpState {
            policy_metrics: policy
                .as_ref()
                .map(|p| self.metrics.policy_handles(&p.name)),
            requests: self.metrics.request_handles(&name),
            body_counters: Arc::new(crate::l7::body::BodyCounters {
                total: self.metrics.timeout_counter(&name, "total"),
                upstream_body: self.metrics.timeout_counter(&name, "upstream_body"),
                bytes_out: self.metrics.bytes_counter(&name, "out"),
            }),
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
            default_pool: cfg
                .pool
                .as_deref()
                .and_then(|p| self.upstreams.pool(p))
                .cloned(),
            policy_directory: self.policy_directory(&cfg),
            server: crate::l7::sniff::builders(&cfg),
            config: cfg,
            policy,
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            tls,
            rollout: None,
            capture: cfg_capture,
        }
    }

    /// The writer of `capture`, shared by every state of the listeners
    /// that name the same file with the same settings (a reload keeps it).
    fn capture_writer(
        &self,
        capture: &crate::config::rollout::Capture,
    ) -> Option<Arc<crate::l7::capture::CaptureWriter>> {
        let mut writers = self.captures.lock().expect("capture writers");
        if let Some(w) = writers.iter().find(|w| w.settings == *capture) {
            return Some(w.clone());
        }
        match crate::l7::capture::CaptureWriter::start(capture) {
            Ok(w) => {
                writers.retain(|o| o.settings.file != capture.file);
                writers.push(w.clone());
                Some(w)
            }
            Err(e) => {
                error!(file = %capture.file.display(), error = %e, "cannot open the capture file; nothing is captured");
                None
            }
        }
    }

    pub(super) fn l4_state<P>(
        &self,
        name: &str,
        cfg: Listener<P>,
        policy: Option<Arc<Policy>>,
    ) -> L4State<P> {
        L4State {
            name: name.into(),
            config: cfg,
            policy,
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
        }
    }

    pub(super) fn publish_view(&self) {
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
            protocols: self
                .config
                .listeners
                .iter()
                .map(|(n, l)| (n.clone(), protocol(l).to_owned()))
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
            canaries: self
                .canaries
                .iter()
                .map(|(k, c)| (k.name.clone(), c.run.clone()))
                .collect(),
            engine: Some(self.engine.clone()),
            ready: self.started,
        }));
        // Only the versions in use: a replaced version's series goes.
        self.metrics.policy_version.clear();
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

    /// Starts a listener on its bound sockets: an accept loop per worker.
    pub(super) fn open(&mut self, name: &str, socket: listener::Socket) -> anyhow::Result<()> {
        let l = self.config.listeners[name].clone();
        let addr = socket.local_addr()?;
        let served = match &l.settings {
            ProtocolSettings::Http(p) => Served::Stream(Handler::Http(Arc::new(
                ArcSwap::from_pointee(self.http_state(name, l.with(p.as_ref()), None)),
            ))),
            ProtocolSettings::Tcp(p) => Served::Stream(Handler::Tcp(Arc::new(
                ArcSwap::from_pointee(self.l4_state(name, l.with(p), None)),
            ))),
            ProtocolSettings::Udp(p) => Served::Datagram(Arc::new(ArcSwap::from_pointee(
                self.l4_state(name, l.with(p), None),
            ))),
        };
        let (stop, stop_rx) = watch::channel(false);
        self.listeners.insert(
            name.to_owned(),
            ListenerHandle {
                protocol: l.protocol(),
                bind: l.bind,
                addr,
                served: served.clone(),
                stop,
            },
        );
        // Policy first, then accept.
        self.publish(name);
        info!(listener = %name, %addr, protocol = ?l.protocol(), "listening");
        // Tracked like connections, so a drain also waits for the accept
        // loops to take what the kernel had queued before they close.
        match (socket, served) {
            (listener::Socket::Udp(socket), Served::Datagram(state)) => {
                // One socket, on the first worker. UDP has nothing to
                // drain: its flows end when the listener stops (removed,
                // or at shutdown).
                let tracker = self.conns.tracker.clone();
                let name = name.to_owned();
                self.spawn_on(0, async move {
                    match tokio::net::UdpSocket::from_std(socket) {
                        Ok(s) => crate::l4::udp::serve(Arc::new(s), state, stop_rx, tracker).await,
                        Err(e) => error!(listener = %name, error = %e, "cannot serve the socket"),
                    }
                });
            }
            (listener::Socket::Tcp(sockets), Served::Stream(handler)) => {
                let slots = Arc::new(tokio::sync::Semaphore::new(l.max_connections));
                for (i, socket) in sockets.into_iter().enumerate() {
                    let accept = listener::accept_loop(
                        name.to_owned(),
                        socket,
                        handler.clone(),
                        slots.clone(),
                        stop_rx.clone(),
                        self.conns.clone(),
                    );
                    self.spawn_on(i, accept);
                }
            }
            _ => anyhow::bail!("listeners.{name}: its socket does not match its protocol"),
        }
        Ok(())
    }

    /// Runs a listener's task on worker `i`, tracked with the connections.
    fn spawn_on(&self, i: usize, task: impl Future<Output = ()> + Send + 'static) {
        let task = self.conns.tracker.track_future(task);
        match &self.options.workers {
            Some(w) => w.spawn(i, task),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Names whose policy metrics exist but that no listener uses now.
    fn metrics_no_listener_names(&self, in_use: &[PolicyKey]) -> Vec<String> {
        self.engine
            .custom_metrics
            .names()
            .into_iter()
            .filter(|n| !in_use.iter().any(|k| &k.name == n))
            .collect()
    }

    pub(super) fn republish(&self, key: &PolicyKey) {
        for (name, l) in &self.config.listeners {
            if key_of(l).as_ref() == Some(key) {
                self.publish(name);
            }
        }
    }

    /// What a plan reuses of the running daemon.
    pub(super) fn current(&self) -> Current {
        Current {
            loader: self.loader(),
            upstreams: Some(self.upstreams.clone()),
            dns: self.dns.clone(),
            terminators: self.terminators.clone(),
            listeners: self
                .listeners
                .iter()
                .map(|(n, h)| {
                    let bound = Bound {
                        protocol: h.protocol,
                        bind: h.bind,
                    };
                    (n.clone(), bound)
                })
                .collect(),
        }
    }

    /// Commits a plan: binds what is new or moved first (a failure
    /// refuses the plan with nothing changed), then swaps certificates,
    /// pools and policies, closes listeners that are gone or moved, opens
    /// the new ones and publishes. Quick, with the lock held.
    pub(super) fn commit(&mut self, plan: Plan) -> Result<(), Vec<String>> {
        let Plan {
            config,
            upstreams,
            dns,
            fresh,
            terminators,
            listeners,
        } = plan;
        let mut sockets = BTreeMap::new();
        let mut problems = Vec::new();
        let workers = self.options.workers.as_ref().map_or(1, |w| w.len());
        for name in &listeners.bind {
            let l = &config.listeners[name];
            match listener::bind(l.protocol(), l.bind, workers) {
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
        // Capture files are opened again: moved away, a new one starts.
        self.captures.lock().expect("capture writers").clear();
        self.terminators = terminators;
        self.watch_cert_files();
        upstreams.start_health_checks();
        self.upstreams = upstreams;
        dns.keep_only(&config);
        self.dns = Some(dns);
        self.config = config;
        for name in &listeners.close {
            if let Some(h) = self.listeners.remove(name) {
                // Stop accepting; its connections finish on their own.
                let _ = h.stop.send(true);
                info!(listener = %name, addr = %h.addr, "listener closed");
            }
        }
        let in_use: Vec<PolicyKey> = self.config.listeners.values().filter_map(key_of).collect();
        self.canaries.retain(|k, c| {
            let keep = in_use.contains(k) && self.config.policies.rollout.contains_key(&k.name);
            if !keep {
                c.run.canary.retire();
            }
            keep
        });
        self.policies.retain(|k, p| {
            let keep = in_use.contains(k);
            if !keep {
                p.retire();
            }
            keep
        });
        // A policy's own metrics go with the last listener that names it.
        for gone in self.metrics_no_listener_names(&in_use) {
            self.engine.custom_metrics.forget(&gone);
        }
        for (name, socket) in sockets {
            if let Err(e) = self.open(&name, socket) {
                // At start-up a listener that cannot open stops the start;
                // on a reload the others serve on, and it is logged.
                if !self.started {
                    return Err(vec![format!("listeners.{name}: {e:#}")]);
                }
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

/// Applies a new configuration, or refuses it whole and keeps the running
/// one. Builds the plan (names, policies, certificates) without the
/// daemon's lock; the caller holds the reload lock.
pub(super) async fn apply(control: &Control, new: Config) -> Result<(), Vec<String>> {
    let current = control.state.lock().await.current();
    let plan = Plan::build(new, current).await?;
    control.state.lock().await.commit(plan)
}

/// A listener's protocol as the status page names it.
fn protocol(l: &crate::config::ListenerConfig) -> &'static str {
    use crate::config::ProtocolSettings as P;
    match &l.settings {
        P::Http(h) if h.tls.is_some() => "https",
        P::Http(_) => "http",
        P::Tcp(t) if t.peek_sni => "tls",
        P::Tcp(_) => "tcp",
        P::Udp(_) => "udp",
    }
}
