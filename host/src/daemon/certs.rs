//! The daemon's TLS terminators: kept where a listener's settings did not
//! change (their files re-read), made anew where they did; re-read when
//! a certificate file changes, the last good ones serving when it is
//! broken.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::Daemon;
use crate::config::Config;

impl Daemon {
    /// Re-reads every listener's certificates; returns how many were
    /// refused (the last loaded pair keeps serving).
    pub(super) fn reload_certs(&self) -> u64 {
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

    pub(super) fn watch_cert_files(&mut self) {
        if let Some(w) = &mut self.watches {
            w.watch_files(self.terminators.values().flat_map(|t| t.files()));
        }
    }
}

/// The TLS terminators of `config`'s listeners: kept where the settings
/// did not change (re-reading their files), new where they did.
pub(super) fn terminators_for(
    config: &Config,
    existing: &BTreeMap<String, Arc<crate::tls::Terminator>>,
) -> Result<BTreeMap<String, Arc<crate::tls::Terminator>>, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, l) in &config.listeners {
        let crate::config::ProtocolSettings::Http(http) = &l.settings else {
            continue;
        };
        let Some(tls) = &http.tls else {
            continue;
        };
        let made = match existing.get(name) {
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
