//! The one place that turns `wit/` into Rust: one `bindgen!` per world,
//! sharing every type and host interface. Everything else in the host uses
//! these plain generated types or the validated ones in `decision.rs`.

/// The `http-policy` world; also defines the shared types and host imports.
pub mod http {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "switchyard:policy/http-policy",
        exports: { default: async },
        // A key-value call over the store's limits traps the guest; so
        // does reading a connection when none is lent.
        imports: {
            "switchyard:policy/kv": trappable,
            "switchyard:policy/types": trappable,
        },
        with: {
            "switchyard:policy/types.request-head": crate::policy::view::RequestHandle,
            "switchyard:policy/types.response-head": crate::policy::view::ResponseHandle,
            "switchyard:policy/types.connection": crate::policy::view::ConnectionHandle,
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
        },
    });
}

pub use http::switchyard::policy::types;
pub use http::switchyard::policy::{backends, clock, kv, log, random};
