//! The one place that turns `wit/` into Rust: one `bindgen!` per world,
//! sharing every type and host interface. Everything else in the host uses
//! these plain generated types or the validated ones in `decision.rs`.
//!
//! The host implements two versions of the package: `wit/` (0.3, current)
//! and `wit/v0.2/` (frozen), so policies built against 0.2 keep loading
//! (`v0_2.rs` maps their imports onto 0.3's).

/// The `http-policy` world; also defines the shared types and host imports.
pub mod http {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "switchyard:policy/http-policy",
        exports: { default: async },
        // Reading a connection when none is lent traps the guest; a call
        // to another service suspends it.
        imports: {
            "switchyard:policy/types": trappable,
            "switchyard:policy/http-client.http-call": async,
            // A remote store (Redis) suspends the guest too.
            "switchyard:policy/kv": async,
        },
        with: {
            "switchyard:policy/types.request-head": crate::policy::view::RequestHandle,
            "switchyard:policy/types.response-head": crate::policy::view::ResponseHandle,
            "switchyard:policy/types.connection": crate::policy::view::ConnectionHandle,
        },
    });
}

/// The optional `body-hook`, `response-hook` and `log-hook` exports,
/// found per component (`exports::switchyard::policy::*::GuestIndices::new`).
pub mod hooks {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "switchyard:policy/http-policy-with-every-hook",
        exports: { default: async },
        with: {
            "switchyard:policy/types": super::http::switchyard::policy::types,
            "switchyard:policy/log": super::http::switchyard::policy::log,
            "switchyard:policy/clock": super::http::switchyard::policy::clock,
            "switchyard:policy/random": super::http::switchyard::policy::random,
            "switchyard:policy/kv": super::http::switchyard::policy::kv,
            "switchyard:policy/backends": super::http::switchyard::policy::backends,
            "switchyard:policy/metrics": super::http::switchyard::policy::metrics,
            "switchyard:policy/http-client": super::http::switchyard::policy::http_client,
        },
    });
}

/// The `connection-policy` world, reusing the types and imports of [`http`].
pub mod connection {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "switchyard:policy/connection-policy",
        exports: { default: async },
        with: {
            "switchyard:policy/types": super::http::switchyard::policy::types,
            "switchyard:policy/log": super::http::switchyard::policy::log,
            "switchyard:policy/clock": super::http::switchyard::policy::clock,
            "switchyard:policy/random": super::http::switchyard::policy::random,
            "switchyard:policy/kv": super::http::switchyard::policy::kv,
            "switchyard:policy/backends": super::http::switchyard::policy::backends,
            "switchyard:policy/metrics": super::http::switchyard::policy::metrics,
            "switchyard:policy/http-client": super::http::switchyard::policy::http_client,
        },
    });
}

/// `switchyard:policy@0.2.0` (`wit/v0.2/`), frozen: its worlds, with the
/// same resource types as 0.3.
pub mod v0_2 {
    pub mod http {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2",
            world: "switchyard:policy/http-policy",
            exports: { default: async },
            // 0.2's key-value calls over the store's limits trap the guest.
            imports: {
                "switchyard:policy/kv": async | trappable,
                "switchyard:policy/types": trappable,
            },
            with: {
                "switchyard:policy/types.request-head": crate::policy::view::RequestHandle,
                "switchyard:policy/types.response-head": crate::policy::view::ResponseHandle,
                "switchyard:policy/types.connection": crate::policy::view::ConnectionHandle,
            },
        });
    }

    pub mod connection {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2",
            world: "switchyard:policy/connection-policy",
            exports: { default: async },
            with: {
                "switchyard:policy/types": super::http::switchyard::policy::types,
                "switchyard:policy/log": super::http::switchyard::policy::log,
                "switchyard:policy/clock": super::http::switchyard::policy::clock,
                "switchyard:policy/random": super::http::switchyard::policy::random,
                "switchyard:policy/kv": super::http::switchyard::policy::kv,
                "switchyard:policy/backends": super::http::switchyard::policy::backends,
            },
        });
    }

    pub use http::switchyard::policy::{backends, clock, kv, log, random, types};
}

pub use http::switchyard::policy::types;
pub use http::switchyard::policy::{backends, clock, http_client, kv, log, metrics, random};
