//! The task that keeps DNS-named backends current.

use std::time::Duration;

use super::{Change, Control, on_change};

/// Looks up backends given by DNS name again when they are due (their
/// TTL, bounded by `resolve_interval_ms`), and when a set changed,
/// rebuilds the pools through the reload path (`Change::Resolved`): the
/// same plan and commit as a configuration reload, with minimal
/// disruption. A failed lookup keeps the last good set (`dns.rs`). Ends
/// when the daemon is gone.
pub(super) async fn re_resolve(control: std::sync::Weak<Control>) {
    loop {
        let dns = match control.upgrade() {
            Some(c) => c.state.lock().await.dns.clone(),
            None => return,
        };
        let due = dns.as_ref().and_then(|d| d.next_due());
        let wait = due.map_or(Duration::from_secs(1), |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        tokio::time::sleep(wait).await;
        let Some(dns) = dns else { continue };
        if dns.refresh_due().await {
            let Some(c) = control.upgrade() else { return };
            on_change(&c, Change::Resolved).await;
        }
    }
}
