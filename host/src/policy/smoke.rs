//! The load-time smoke call: a policy must instantiate, `init`, and take
//! one sample call without trapping or timing out before it serves.

use std::sync::Arc;

use super::instances::Policy;
use super::{ConnectionInfo, Directory, PolicyError, PolicyKind, RequestView, types};

impl Policy {
    /// The load-time check: instantiate and `init` (an `init` error refuses
    /// the policy), then one call with a sample input, which must not trap
    /// or time out. The instance stays warm for the first real call.
    pub(crate) async fn smoke_test(
        &self,
        directory: Arc<dyn Directory>,
    ) -> Result<(), PolicyError> {
        let warm = self.instantiate(directory.clone()).await?;
        self.checkin(warm);
        let conn = Arc::new(sample_connection());
        let r = match self.kind {
            PolicyKind::Http => self
                .on_request(&mut sample_request(), &conn, None, &open_directory())
                .await
                .map(drop),
            PolicyKind::Connection => self
                .on_connect(&conn, None, &open_directory())
                .await
                .map(drop),
        };
        // Counters describe traffic, not the load check.
        self.stats.reset();
        match r {
            Err(e @ (PolicyError::Trap(_) | PolicyError::Timeout(_) | PolicyError::Memory(_))) => {
                Err(PolicyError::SmokeTest(Box::new(e)))
            }
            _ => Ok(()),
        }
    }
}

fn open_directory() -> Arc<dyn Directory> {
    Arc::new(super::directory::OpenDirectory)
}

fn sample_request() -> Box<RequestView> {
    RequestView::build(
        "GET",
        "/",
        &[
            ("host", "localhost"),
            ("user-agent", "switchyard-smoke-test"),
        ],
    )
    .expect("a valid sample request")
}

fn sample_connection() -> ConnectionInfo {
    // Documentation addresses (RFC 5737), so that a policy keeping state per
    // client (a rate limiter) spends nothing of a real client's on this call.
    ConnectionInfo::new(
        "192.0.2.1:40000".parse().expect("an address"),
        "192.0.2.2:8080".parse().expect("an address"),
        "smoke-test",
        None,
        types::Transport::Tcp,
    )
}
