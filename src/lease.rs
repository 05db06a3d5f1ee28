//! Who may run a campaign: the lease rules (one runner at a time, takeover of dead holders)
//! and the commands that act on a campaign someone may be running (stop, cancel, delete).
//!
//! The lease itself is a row in the store (holder execution, host, pid, heartbeat). This module
//! decides whether a recorded holder is still alive: a process on this host that no longer exists
//! is dead at once; any other holder is dead after `policy.lease_timeout_secs` without heartbeat.
//! The CLI only prints what these calls return.

use chrono::{DateTime, Utc};

use crate::model::{Campaign, Lease};
use crate::store::Store;

/// This machine's host name, as recorded in leases.
pub fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Whether process `pid` exists on this host.
pub fn process_exists(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// `Some(reason)` when the holder of `lease` is gone and the lease may be taken over.
pub fn holder_gone(
    lease: &Lease,
    timeout_secs: u64,
    host: &str,
    now: DateTime<Utc>,
) -> Option<String> {
    if lease.host == host && !process_exists(lease.pid) {
        return Some(format!(
            "execution {} was abandoned: its process {} on {} no longer exists",
            lease.execution, lease.pid, lease.host
        ));
    }
    let silent = (now - lease.heartbeat_at).num_seconds();
    if silent > timeout_secs as i64 {
        return Some(format!(
            "execution {} was abandoned: no heartbeat from {} pid {} for {silent}s (lease_timeout_secs = {timeout_secs})",
            lease.execution, lease.host, lease.pid
        ));
    }
    None
}

/// Who holds a campaign's run, as seen from this host at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody holds the lease.
    Free,
    /// A run holds it and is alive.
    Live(Lease),
    /// The holder is gone, for the reason given: the lease may be taken over.
    Gone(Lease, String),
}

impl Holder {
    /// The holder of `lease` (`None`: nobody), judged from `host` at `now`.
    pub fn judge(
        lease: Option<&Lease>,
        timeout_secs: u64,
        host: &str,
        now: DateTime<Utc>,
    ) -> Holder {
        match lease {
            None => Holder::Free,
            Some(l) => match holder_gone(l, timeout_secs, host, now) {
                Some(why) => Holder::Gone(l.clone(), why),
                None => Holder::Live(l.clone()),
            },
        }
    }

    /// The holder of campaign `c`'s lease, judged from this host now.
    pub fn of(c: &Campaign, timeout_secs: u64) -> Holder {
        Holder::judge(c.lease.as_ref(), timeout_secs, &this_host(), Utc::now())
    }

    /// The execution of a dead holder, which a takeover, cancel or delete closes.
    pub fn dead_execution(&self) -> Option<i64> {
        match self {
            Holder::Gone(l, _) => Some(l.execution),
            _ => None,
        }
    }

    /// How a new run of campaign `id` takes the lease: the holder it expects to replace
    /// (compare and swap) and why that holder was abandoned. Refused while a live run holds it.
    pub fn takeover(&self, id: i64) -> anyhow::Result<(Option<i64>, String)> {
        match self {
            Holder::Free => Ok((None, String::new())),
            Holder::Gone(l, why) => Ok((Some(l.execution), why.clone())),
            Holder::Live(l) => anyhow::bail!(
                "campaign {id} is already running: execution {} on {} (pid {}), last heartbeat {}; \
                 stop it with `munja campaign stop {id}` or wait for it to finish",
                l.execution,
                l.host,
                l.pid,
                l.heartbeat_at.to_rfc3339()
            ),
        }
    }
}

/// What `campaign stop` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// The live run was asked to stop: it finishes its in-flight requests, commits and exits.
    Requested,
    /// Nobody runs the campaign; its status.
    NotRunning(String),
    /// Its holder is gone: there is no run to stop (`run` resumes it, `cancel` cancels it).
    HolderGone,
}

/// `campaign stop`: asks the live run of campaign `id` to stop.
pub async fn request_stop(
    store: &dyn Store,
    id: i64,
    timeout_secs: u64,
) -> anyhow::Result<StopRequest> {
    let c = store.campaign(id).await?;
    Ok(match Holder::of(&c, timeout_secs) {
        Holder::Free => StopRequest::NotRunning(c.status),
        Holder::Gone(..) => StopRequest::HolderGone,
        Holder::Live(_) => {
            store.request_stop(id).await?;
            StopRequest::Requested
        }
    })
}

/// What `campaign cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    /// Pending messages that will never be sent.
    pub cancelled: u64,
    /// Messages the gateway may have: the next `campaign run` settles them by lookup.
    pub in_doubt: i64,
}

/// `campaign cancel`: pending messages become `cancelled`; a live run is asked to stop, a dead
/// holder's execution is closed.
pub async fn cancel(store: &dyn Store, id: i64, timeout_secs: u64) -> anyhow::Result<Cancelled> {
    let c = store.campaign(id).await?;
    let dead = Holder::of(&c, timeout_secs).dead_execution();
    let cancelled = store.cancel(id, dead).await?;
    let counts = store.counts(id).await?;
    // A dead holder's `sending` messages may have gone out; a live run still owns its own.
    let in_doubt = counts.in_doubt + if dead.is_some() { counts.sending } else { 0 };
    Ok(Cancelled {
        cancelled,
        in_doubt,
    })
}

/// `campaign delete`: deletes campaign `id` with its messages and logs, refused while a live
/// run holds it.
pub async fn delete(store: &dyn Store, id: i64, timeout_secs: u64) -> anyhow::Result<()> {
    let c = store.campaign(id).await?;
    let expected = match Holder::of(&c, timeout_secs) {
        Holder::Free => None,
        Holder::Gone(l, _) => Some(l.execution),
        Holder::Live(l) => anyhow::bail!(
            "campaign {id} is running (execution {} on {} pid {}); stop it first with `munja campaign stop {id}`",
            l.execution,
            l.host,
            l.pid
        ),
    };
    store.delete_campaign(id, expected).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(host: &str, pid: i64, age_secs: i64) -> Lease {
        Lease {
            execution: 7,
            host: host.into(),
            pid,
            heartbeat_at: Utc::now() - chrono::Duration::seconds(age_secs),
        }
    }

    #[test]
    fn live_local_process_with_fresh_heartbeat_holds() {
        let me = std::process::id() as i64;
        assert_eq!(
            holder_gone(&lease(&this_host(), me, 1), 30, &this_host(), Utc::now()),
            None
        );
    }

    #[test]
    fn dead_local_process_is_gone_at_once() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i64;
        child.wait().expect("wait");
        let why = holder_gone(&lease(&this_host(), pid, 0), 30, &this_host(), Utc::now());
        assert!(why.expect("gone").contains("no longer exists"));
    }

    #[test]
    fn remote_holder_is_gone_only_after_the_timeout() {
        assert_eq!(
            holder_gone(&lease("elsewhere", 1, 10), 30, "here", Utc::now()),
            None
        );
        let why = holder_gone(&lease("elsewhere", 1, 31), 30, "here", Utc::now());
        assert!(why.expect("gone").contains("no heartbeat"));
    }

    #[test]
    fn a_live_holder_refuses_a_takeover_and_a_dead_one_is_replaced() {
        let now = Utc::now();
        let free = Holder::judge(None, 30, "here", now);
        assert_eq!(free.takeover(1).expect("free"), (None, String::new()));
        let live = Holder::judge(Some(&lease("elsewhere", 1, 10)), 30, "here", now);
        assert_eq!(live.dead_execution(), None);
        let refused = live.takeover(1).expect_err("live holder");
        assert!(refused.to_string().contains("already running: execution 7"));
        let gone = Holder::judge(Some(&lease("elsewhere", 1, 40)), 30, "here", now);
        assert_eq!(gone.dead_execution(), Some(7));
        let (expected, why) = gone.takeover(1).expect("gone holder");
        assert_eq!(expected, Some(7));
        assert!(why.contains("no heartbeat"), "{why}");
    }
}
