//! systemd's readiness protocol (`Type=notify`, sd_notify(3)), through the
//! `sd-notify` crate: `READY=1` once every listener is bound and every
//! policy has loaded, `RELOADING=1` then `READY=1` around a configuration
//! reload, `STOPPING=1` when the drain starts, and `STATUS=` lines with
//! what runs. Without `NOTIFY_SOCKET` (not under systemd, or in tests that
//! run the daemon in their own process) each call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Start-up is done: listeners accept, policies serve.
pub(super) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A configuration reload begins.
pub(super) fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ]);
}

/// The drain begins: no new connections.
pub(super) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// The `STATUS=` line: what runs now.
pub(super) async fn status(control: &super::Control) -> String {
    let d = control.state.lock().await;
    format!(
        "serving: {} listeners, {} pools, {} policies; {} configurations refused",
        d.listeners.len(),
        d.upstreams.pools().count(),
        d.policies.len(),
        control
            .configs_refused
            .load(std::sync::atomic::Ordering::Relaxed),
    )
}
