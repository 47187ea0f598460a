//! Wires the daemon together: policy engine, pools, listeners. A listener
//! starts accepting only once its policy has loaded and passed its checks,
//! so the first request is already routed by it. Owns shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;

use crate::config::{Config, Protocol};
use crate::l4::TcpState;
use crate::l7::HttpState;
use crate::listener::{self, Handler};
use crate::policy::{self, Directory, EngineSettings, Policy, PolicyEngine, PolicyKind};
use crate::upstream::Upstreams;

/// A started daemon.
pub struct Running {
    /// Each listener's bound address (useful with port 0).
    pub addrs: BTreeMap<String, SocketAddr>,
    pub upstreams: Arc<Upstreams>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting and waits for the accept loops to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn load_policy(
    engine: &Arc<PolicyEngine>,
    config: &Config,
    listener: &str,
    directory: Arc<dyn Directory>,
) -> anyhow::Result<Option<Arc<Policy>>> {
    let l = &config.listeners[listener];
    let Some(name) = &l.policy else {
        return Ok(None);
    };
    let kind = match l.protocol {
        Protocol::Http => PolicyKind::Http,
        Protocol::Tcp | Protocol::Udp => PolicyKind::Connection,
    };
    let file = config.policy_file(name);
    let (wasm, cfg) = policy::read_policy_files(&file, l.policy_config.as_deref())?;
    let p = engine
        .load_bytes(
            &file,
            wasm,
            cfg,
            Some(kind),
            config.policies.limits.clone(),
            directory,
        )
        .await
        .with_context(|| format!("listeners.{listener}.policy"))?;
    info!(policy = %p.name, version = %p.version, compile_ms = p.compile_time.as_millis() as u64,
        listener, "policy loaded");
    Ok(Some(p))
}

/// Loads every policy, binds every listener and starts accepting.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let engine = PolicyEngine::new(&EngineSettings {
        cache_dir: config.policies.cache_dir.clone(),
    })?;
    let upstreams = Arc::new(Upstreams::new(&config));
    let directory: Arc<dyn Directory> = upstreams.clone();
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut addrs = BTreeMap::new();
    for (name, l) in &config.listeners {
        let policy = load_policy(&engine, &config, name, directory.clone()).await?;
        let handler = match l.protocol {
            Protocol::Http => Handler::Http(Arc::new(ArcSwap::from_pointee(HttpState {
                name: name.clone(),
                config: l.clone(),
                policy,
                upstreams: upstreams.clone(),
            }))),
            Protocol::Tcp => Handler::Tcp(Arc::new(ArcSwap::from_pointee(TcpState {
                name: name.clone(),
                config: l.clone(),
                policy,
                upstreams: upstreams.clone(),
            }))),
            Protocol::Udp => bail!("listeners.{name}.protocol: \"udp\" is not supported yet"),
        };
        let socket = listener::bind(l.bind)
            .with_context(|| format!("listeners.{name}.bind: cannot bind {}", l.bind))?;
        let addr = socket.local_addr()?;
        info!(listener = %name, %addr, protocol = ?l.protocol, "listening");
        addrs.insert(name.clone(), addr);
        tasks.spawn(listener::accept_loop(
            name.clone(),
            socket,
            handler,
            l.max_connections,
            stop_rx.clone(),
        ));
    }
    Ok(Running {
        addrs,
        upstreams,
        stop,
        tasks,
    })
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let source = config.source.clone();
    let running = start(config).await?;
    info!(config = %source.display(), "switchyard running");
    wait_for_signal().await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
