//! Which world and package version a compiled policy implements, with
//! the optional hooks its component exports: how it is found at compile
//! time ([`Pre::new`]), instantiated, and initialised.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::PolicyKind;
use super::bindings::hooks::exports::switchyard::policy::{body_hook, log_hook, response_hook};
use super::bindings::{connection, http, v0_2};
use super::host_api::HostState;

/// A compiled policy ready to instantiate, by world and package version;
/// for 0.3, with the optional hooks its component exports.
pub(crate) enum Pre {
    Http {
        pre: http::HttpPolicyPre<HostState>,
        body: Option<body_hook::GuestIndices>,
        response: Option<response_hook::GuestIndices>,
        log: Option<log_hook::GuestIndices>,
    },
    Connection(connection::ConnectionPolicyPre<HostState>),
    HttpV0_2(v0_2::http::HttpPolicyPre<HostState>),
    ConnectionV0_2(v0_2::connection::ConnectionPolicyPre<HostState>),
}

pub(super) enum Bindings {
    Http {
        b: http::HttpPolicy,
        body: Option<body_hook::Guest>,
        response: Option<response_hook::Guest>,
        log: Option<log_hook::Guest>,
    },
    Connection(connection::ConnectionPolicy),
    HttpV0_2(v0_2::http::HttpPolicy),
    ConnectionV0_2(v0_2::connection::ConnectionPolicy),
}

impl Pre {
    /// The world `kind` of package 0.3, or of 0.2 when `v0_2`, over
    /// `instance_pre`; an error when the component does not implement it.
    pub(super) fn new(
        kind: PolicyKind,
        v0_2: bool,
        instance_pre: InstancePre<HostState>,
    ) -> wasmtime::Result<Pre> {
        Ok(match (kind, v0_2) {
            (PolicyKind::Http, false) => {
                // An optional hook is there when the component exports its
                // interface with the right type.
                let body = body_hook::GuestIndices::new(&instance_pre).ok();
                let response = response_hook::GuestIndices::new(&instance_pre).ok();
                let log = log_hook::GuestIndices::new(&instance_pre).ok();
                Pre::Http {
                    pre: http::HttpPolicyPre::new(instance_pre)?,
                    body,
                    response,
                    log,
                }
            }
            (PolicyKind::Connection, false) => {
                Pre::Connection(connection::ConnectionPolicyPre::new(instance_pre)?)
            }
            (PolicyKind::Http, true) => {
                Pre::HttpV0_2(v0_2::http::HttpPolicyPre::new(instance_pre)?)
            }
            (PolicyKind::Connection, true) => {
                Pre::ConnectionV0_2(v0_2::connection::ConnectionPolicyPre::new(instance_pre)?)
            }
        })
    }

    pub(super) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::Http {
                pre,
                body,
                response,
                log,
            } => {
                let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
                let b = http::HttpPolicy::new(&mut *store, &instance)?;
                let body = match body {
                    Some(ix) => Some(ix.load(&mut *store, &instance)?),
                    None => None,
                };
                let response = match response {
                    Some(ix) => Some(ix.load(&mut *store, &instance)?),
                    None => None,
                };
                let log = match log {
                    Some(ix) => Some(ix.load(&mut *store, &instance)?),
                    None => None,
                };
                Bindings::Http {
                    b,
                    body,
                    response,
                    log,
                }
            }
            Pre::Connection(p) => Bindings::Connection(p.instantiate_async(store).await?),
            Pre::HttpV0_2(p) => Bindings::HttpV0_2(p.instantiate_async(store).await?),
            Pre::ConnectionV0_2(p) => Bindings::ConnectionV0_2(p.instantiate_async(store).await?),
        })
    }

    /// Whether the policy exports the log hook.
    pub(super) fn has_log_hook(&self) -> bool {
        matches!(self, Pre::Http { log: Some(_), .. })
    }

    /// Whether the policy exports the body hook.
    pub(super) fn has_body_hook(&self) -> bool {
        matches!(self, Pre::Http { body: Some(_), .. })
    }

    /// Whether a forward decision may ask for the response hook.
    pub(super) fn has_response_hook(&self) -> bool {
        matches!(
            self,
            Pre::Http {
                response: Some(_),
                ..
            } | Pre::HttpV0_2(_)
        )
    }
}

impl Bindings {
    pub(super) async fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::Http { b, .. } => b.call_init(store, config).await,
            Bindings::Connection(b) => b.call_init(store, config).await,
            Bindings::HttpV0_2(b) => b.call_init(store, config).await,
            Bindings::ConnectionV0_2(b) => b.call_init(store, config).await,
        }
    }
}
