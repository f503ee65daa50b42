//! Whether Redis answers, as far as this store knows, so that writes fail at once while it
//! does not instead of each waiting for the command timeout.
//!
//! The link goes down on the first sign: a connection error reported by the client (its error
//! events), a client that is not connected, or a command that failed for want of a connection
//! (refused, closed, timed out). While it is down, writes answer
//! [`StoreError::Unavailable`] at once, saying since when and why; reads (following, loading)
//! keep trying on their own. A watchdog pings Redis, with the configured back-off, until it
//! answers, and brings the link up again; so does the client's reconnection event.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use greyrouter_store::StoreError;
use tokio::sync::Notify;

/// The state of the connection to Redis.
#[derive(Debug, Default)]
pub(crate) struct Link {
    outage: Mutex<Option<Outage>>,
    /// Wakes the watchdog when the link goes down.
    down: Notify,
}

#[derive(Debug, Clone)]
struct Outage {
    since: SystemTime,
    started: Instant,
    reason: String,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the link down (keeping the first reason and time of an ongoing outage).
    pub(crate) fn set_down(&self, reason: &str) {
        let mut outage = self.lock();
        if outage.is_none() {
            tracing::warn!(
                reason,
                "redis unreachable: changes fail at once until it answers"
            );
            *outage = Some(Outage {
                since: SystemTime::now(),
                started: Instant::now(),
                reason: reason.to_owned(),
            });
            self.down.notify_one();
        }
    }

    /// Marks the link up.
    pub(crate) fn set_up(&self) {
        if self.lock().take().is_some() {
            tracing::info!("redis answers again: changes are accepted");
        }
    }

    /// Whether the link is down.
    pub(crate) fn is_down(&self) -> bool {
        self.lock().is_some()
    }

    /// Waits until the link is down.
    pub(crate) async fn wait_down(&self) {
        loop {
            let notified = self.down.notified();
            if self.is_down() {
                return;
            }
            notified.await;
        }
    }

    /// Answers `Unavailable`, saying since when and why, while the link is down.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match &*self.lock() {
            None => Ok(()),
            Some(outage) => Err(StoreError::Unavailable(format!(
                "redis is unreachable since {} ({} ago: {}); reconnecting",
                utc_time_of_day(outage.since),
                seconds(outage.started.elapsed()),
                outage.reason
            ))),
        }
    }
}

/// Whether a failed command says the connection is down (rather than that Redis refused the
/// command): the link then goes down.
pub(crate) fn is_connection_error(err: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Sentinel
    ) {
        return true;
    }
    // A master demoted to a replica, a server still loading its data, a cluster without quorum.
    let details = err.details();
    [
        "READONLY",
        "LOADING",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
    ]
    .iter()
    .any(|prefix| details.starts_with(prefix))
}

/// Formats a time as `HH:MM:SS UTC`.
fn utc_time_of_day(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Formats a duration as seconds with one decimal.
fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_link_refuses_with_since_when_and_why() {
        let link = Link::default();
        assert!(link.check().is_ok());
        link.set_down("connection refused");
        link.set_down("a later reason is not kept");
        let err = link.check().expect_err("down");
        let text = err.to_string();
        assert!(
            text.starts_with("store unavailable: redis is unreachable since "),
            "{text}"
        );
        assert!(text.contains("UTC"), "{text}");
        assert!(
            text.ends_with("ago: connection refused); reconnecting"),
            "{text}"
        );
        link.set_up();
        assert!(link.check().is_ok());
    }

    #[test]
    fn times_are_readable() {
        let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 12 * 3600 + 61);
        assert_eq!(utc_time_of_day(noon), "12:01:01 UTC");
        assert_eq!(seconds(Duration::from_millis(1300)), "1.3 s");
    }
}
