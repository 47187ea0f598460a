//! The process's side: signals (stop, reload) and the open-file limit.

use tracing::{info, warn};

use crate::config::Config;

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

/// Raises the soft limit on open files to the hard limit (systemd's
/// default soft limit is 1,024), and warns when the listeners could need
/// more than that: each client connection may hold an upstream one too.
pub(super) fn raise_fd_limit(config: &Config) {
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
