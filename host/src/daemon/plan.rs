//! One plan for `switchyard check`, start-up and every reload, so `check`
//! refuses exactly what `run` refuses (bind-time errors aside: `check`
//! binds no socket and opens no access log file).
//!
//! [`Plan::build`] reads and checks everything a configuration needs:
//! pools rebuilt and their names resolved, each new policy read,
//! compiled, fitted into the engine's pool and smoke-called, each TLS
//! terminator made, and which listeners are kept, closed or bound. It
//! changes nothing that serves traffic. `Daemon::commit` then binds what
//! is new (a bind failure still refuses the whole plan), swaps pools,
//! policies and terminators, closes what is gone and publishes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::certs::terminators_for;
use super::policies::{Loader, PolicyKey};
use crate::config::{Config, Protocol};
use crate::policy::Policy;
use crate::tls::Terminator;
use crate::upstream::Upstreams;
use crate::upstream::dns::Dns;

/// A listener as it is bound: a new configuration keeps its socket when
/// both are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bound {
    pub protocol: Protocol,
    pub bind: SocketAddr,
}

impl Bound {
    /// How a configured listener wants to be bound.
    pub(super) fn of(l: &crate::config::ListenerConfig) -> Bound {
        Bound {
            protocol: l.protocol(),
            bind: l.bind,
        }
    }
}

/// Which listeners a configuration keeps (same name, address and
/// protocol), closes and binds, by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ListenerDiff {
    pub keep: Vec<String>,
    pub close: Vec<String>,
    pub bind: Vec<String>,
}

/// The listener changes from `running` to `new`.
pub(super) fn diff(running: &BTreeMap<String, Bound>, new: &Config) -> ListenerDiff {
    let mut d = ListenerDiff::default();
    for (name, l) in &new.listeners {
        if running.get(name) == Some(&Bound::of(l)) {
            d.keep.push(name.clone());
        } else {
            d.bind.push(name.clone());
        }
    }
    for name in running.keys() {
        if !d.keep.contains(name) {
            d.close.push(name.clone());
        }
    }
    d
}

/// What the daemon runs now, which a plan reuses where nothing changed.
pub(super) struct Current {
    /// Loads policies; knows the ones loaded now.
    pub loader: Loader,
    pub upstreams: Option<Arc<Upstreams>>,
    /// The resolver and its last answers (none before the first plan).
    pub dns: Option<Arc<Dns>>,
    pub terminators: BTreeMap<String, Arc<Terminator>>,
    pub listeners: BTreeMap<String, Bound>,
}

/// A configuration, checked and ready to commit.
pub struct Plan {
    pub(super) config: Config,
    pub(super) upstreams: Arc<Upstreams>,
    pub(super) dns: Arc<Dns>,
    /// Policies loaded for this configuration that were not loaded yet.
    pub(super) fresh: BTreeMap<PolicyKey, Arc<Policy>>,
    pub(super) terminators: BTreeMap<String, Arc<Terminator>>,
    pub(super) listeners: ListenerDiff,
}

impl Plan {
    /// Everything `config` needs, or every problem found: pools and
    /// their names, TLS terminators, and (when the pools are usable) each
    /// policy. A problem with a key of the file names the file. Reads
    /// files, compiles, resolves names and calls policies, but changes
    /// nothing that serves traffic; the one exception is a TLS terminator
    /// whose settings did not change, which re-reads its files as a
    /// certificate reload would.
    pub(super) async fn build(config: Config, current: Current) -> Result<Plan, Vec<String>> {
        let file = config.source.display().to_string();
        let in_file = |p: Vec<String>| p.into_iter().map(|p| format!("{file}: {p}"));
        let mut problems = Vec::new();
        // The resolver carries over (with its answers) unless `[dns]`
        // changed; names are looked up before the pools are made of them.
        let dns = match current.dns.as_ref().filter(|d| d.config == config.dns) {
            Some(d) => Some(d.clone()),
            None => Dns::new(&config.dns, current.loader.metrics.dns.clone())
                .map(Arc::new)
                .map_err(|e| problems.push(format!("{file}: {e}")))
                .ok(),
        };
        let upstreams = match &dns {
            Some(dns) => {
                let unresolved = dns.resolve_config(&config).await;
                problems.extend(in_file(unresolved));
                match Upstreams::rebuild(current.upstreams.as_deref(), &config, Some(dns)) {
                    Ok(u) => Some(Arc::new(u)),
                    Err(p) => {
                        problems.extend(in_file(p));
                        None
                    }
                }
            }
            None => None,
        };
        // Policies are smoke-called with the pools as their directory.
        let pools_usable = problems.is_empty();
        let terminators = terminators_for(&config, &current.terminators)
            .map_err(|p| problems.extend(in_file(p)))
            .ok();
        let fresh = match (&upstreams, pools_usable) {
            (Some(u), true) => {
                let loader = Loader {
                    directory: u.clone(),
                    ..current.loader
                };
                loader
                    .load_missing(&config)
                    .await
                    .map_err(|p| problems.extend(p))
                    .ok()
            }
            _ => None,
        };
        let (Some(upstreams), Some(dns), Some(terminators), Some(fresh)) =
            (upstreams, dns, terminators, fresh)
        else {
            return Err(problems);
        };
        let listeners = diff(&current.listeners, &config);
        Ok(Plan {
            config,
            upstreams,
            dns,
            fresh,
            terminators,
            listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listeners: &[(&str, &str, &str)]) -> Config {
        let mut toml = String::from("[pools.web]\nbackends = [\"127.0.0.1:9\"]\n");
        for (name, protocol, bind) in listeners {
            toml.push_str(&format!(
                "[listeners.{name}]\nprotocol = \"{protocol}\"\nbind = \"{bind}\"\npool = \"web\"\n"
            ));
        }
        Config::parse(std::path::Path::new("test.toml"), &toml).unwrap()
    }

    fn running(c: &Config) -> BTreeMap<String, Bound> {
        c.listeners
            .iter()
            .map(|(n, l)| (n.clone(), Bound::of(l)))
            .collect()
    }

    #[test]
    fn start_up_binds_every_listener() {
        let new = config(&[("a", "http", "127.0.0.1:1"), ("b", "tcp", "127.0.0.1:2")]);
        let d = diff(&BTreeMap::new(), &new);
        assert_eq!(d.bind, ["a", "b"]);
        assert!(d.keep.is_empty() && d.close.is_empty());
    }

    #[test]
    fn an_unchanged_listener_keeps_its_socket() {
        let old = config(&[("a", "http", "127.0.0.1:1")]);
        let d = diff(&running(&old), &old);
        assert_eq!(d.keep, ["a"]);
        assert!(d.bind.is_empty() && d.close.is_empty());
    }

    #[test]
    fn a_moved_or_retyped_listener_is_bound_again_and_a_removed_one_closed() {
        let old = config(&[
            ("moved", "http", "127.0.0.1:1"),
            ("retyped", "tcp", "127.0.0.1:2"),
            ("gone", "http", "127.0.0.1:3"),
            ("kept", "udp", "127.0.0.1:4"),
        ]);
        let new = config(&[
            ("moved", "http", "127.0.0.1:5"),
            ("retyped", "http", "127.0.0.1:2"),
            ("kept", "udp", "127.0.0.1:4"),
            ("added", "tcp", "127.0.0.1:6"),
        ]);
        let d = diff(&running(&old), &new);
        assert_eq!(d.keep, ["kept"]);
        assert_eq!(d.bind, ["added", "moved", "retyped"]);
        assert_eq!(d.close, ["gone", "moved", "retyped"]);
    }
}
