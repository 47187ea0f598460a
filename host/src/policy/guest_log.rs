//! Guest log lines as tracing events with the target `policy::<name>`.
//!
//! `tracing`'s macros need a target known at compile time; a policy's name is
//! only known when it loads. So each (policy, level) pair gets one callsite
//! built at run time and registered with the dispatcher, exactly as the
//! macros do for static callsites. Callsites are leaked on purpose: there is
//! one per policy name and level, a set that grows only when an operator adds
//! policies, and the dispatcher keeps references to them forever anyway.
//! `RUST_LOG=policy::rate-limit=debug` then filters one policy's lines.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tracing::callsite::{Callsite, Identifier};
use tracing::field::{FieldSet, Value};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};

use super::bindings::log::Level as GuestLevel;

struct GuestCallsite {
    meta: OnceLock<Metadata<'static>>,
    /// Lines of this policy at this level per second.
    limit: crate::logging::RateLimit,
}

impl Callsite for GuestCallsite {
    fn set_interest(&self, _interest: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("callsite metadata is set before registration")
    }
}

fn level(l: GuestLevel) -> Level {
    match l {
        GuestLevel::Trace => Level::TRACE,
        GuestLevel::Debug => Level::DEBUG,
        GuestLevel::Info => Level::INFO,
        GuestLevel::Warn => Level::WARN,
        GuestLevel::Error => Level::ERROR,
    }
}

fn callsite(policy: &str, level: Level) -> &'static GuestCallsite {
    static SITES: OnceLock<Mutex<HashMap<(String, Level), &'static GuestCallsite>>> =
        OnceLock::new();
    let mut sites = SITES
        .get_or_init(Default::default)
        .lock()
        .expect("log callsites");
    if let Some(cs) = sites.get(&(policy.to_owned(), level)) {
        return cs;
    }
    let target: &'static str = Box::leak(format!("policy::{policy}").into_boxed_str());
    let cs: &'static GuestCallsite = Box::leak(Box::new(GuestCallsite {
        meta: OnceLock::new(),
        limit: crate::logging::RateLimit::new(),
    }));
    let meta = Metadata::new(
        "guest log",
        target,
        level,
        None,
        None,
        None,
        FieldSet::new(&["message"], Identifier(cs)),
        Kind::EVENT,
    );
    let _ = cs.meta.set(meta);
    tracing::callsite::register(cs);
    sites.insert((policy.to_owned(), level), cs);
    cs
}

/// Emits one guest log line, if any subscriber wants it: capped at 4 KiB,
/// control characters escaped, and at most `logging::PER_SECOND` lines a
/// second per policy and level (the next line let through says how many
/// were suppressed).
pub(crate) fn emit(policy: &str, guest_level: GuestLevel, message: &str) {
    let site = callsite(policy, level(guest_level));
    let meta = site.metadata();
    tracing::dispatcher::get_default(|dispatch| {
        if !dispatch.enabled(meta) {
            return;
        }
        let Some(suppressed) = site.limit.admit() else {
            return;
        };
        let fields = meta.fields();
        let Some(field) = fields.field("message") else {
            return;
        };
        let mut line = crate::logging::guest_line(message);
        if suppressed > 0 {
            line = format!("({suppressed} earlier lines suppressed) {line}");
        }
        let values = [(&field, Some(&line.as_str() as &dyn Value))];
        dispatch.event(&Event::new(meta, &fields.value_set(&values)));
    });
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_lines_go_to_the_policy_target_and_obey_filters() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("policy::shown=info"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            emit("shown", GuestLevel::Info, "hello from the guest");
            emit("shown", GuestLevel::Debug, "too detailed");
            emit("hidden", GuestLevel::Error, "filtered out");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("policy::shown"), "{text}");
        assert!(text.contains("hello from the guest"), "{text}");
        assert!(!text.contains("too detailed"), "{text}");
        assert!(!text.contains("filtered out"), "{text}");
    }
}
