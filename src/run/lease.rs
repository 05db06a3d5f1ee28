//! Who may run a campaign: the lease rules (who holds a run, takeover of dead holders, which
//! workers may join it) and the commands that act on a campaign someone may be running (stop,
//! cancel, delete).
//!
//! The lease itself is a row in the store (holder execution, host, pid, process identity,
//! heartbeat). This module decides whether a recorded process is still alive:
//! - a process recorded on this host, this kernel (boot id) and this pid namespace is dead at
//!   once when no process with its pid and start time exists: a reused pid or a container
//!   that shares the host name cannot fool it;
//! - any other holder is dead after `policy.lease_timeout_secs` without heartbeat.
//!
//! With several workers (PostgreSQL) the execution is judged by the timeout alone, since one
//! dead process does not mean the others are; dead workers are rescued one by one.
//! The CLI only prints what these calls return.

use chrono::{DateTime, Utc};

pub use crate::domain::model::Process;
use crate::domain::model::{Campaign, Enlist, Lease};
use crate::store::Store;

/// Environment variable replacing this machine's host name in leases and worker rows: for
/// tests and diagnostics that make a process look like a worker on another host (so that only
/// the heartbeat timeout, never the dead-process shortcut, can tell it is gone). Unset or empty:
/// the real host name.
pub const HOSTNAME_ENV: &str = "MUNJA_HOSTNAME";

/// This machine's host name, as recorded in leases (or [`HOSTNAME_ENV`] when set).
pub fn this_host() -> String {
    match std::env::var(HOSTNAME_ENV) {
        Ok(name) if !name.is_empty() => name,
        _ => gethostname::gethostname().to_string_lossy().into_owned(),
    }
}

/// The kernel's boot id and this process's pid namespace: two processes that share them see
/// the same pids.
fn pid_space() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = procfs::sys::kernel::random::boot_id().ok()?;
    let ns = std::fs::metadata("/proc/self/ns/pid").ok()?.ino();
    Some(format!("{}/{ns}", boot.trim()))
}

/// The start time of process `pid` (clock ticks after boot), as this pid namespace sees it.
fn start_time(pid: i64) -> Option<u64> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    Some(
        procfs::process::Process::new(pid)
            .ok()?
            .stat()
            .ok()?
            .starttime,
    )
}

impl Process {
    /// This process.
    pub fn me() -> Process {
        let pid = i64::from(std::process::id());
        let identity = pid_space()
            .zip(start_time(pid))
            .map(|(s, t)| format!("{s}/{t}"));
        Process {
            host: this_host(),
            pid,
            identity,
        }
    }

    /// Whether the recorded process `(host, pid, identity)` is known to be gone, seen from
    /// this process: only when it ran on this host, kernel and pid namespace and no process
    /// with its pid and start time exists. Anything else is unknown (`false`): the heartbeat
    /// timeout decides.
    pub fn is_gone(host: &str, pid: i64, identity: Option<&str>) -> bool {
        let (Some(identity), Some(space)) = (identity, pid_space()) else {
            return false;
        };
        let Some((recorded_space, started)) = identity.rsplit_once('/') else {
            return false;
        };
        if host != this_host() || recorded_space != space {
            return false;
        }
        start_time(pid).is_none_or(|t| t.to_string() != started)
    }
}

/// `Some(reason)` when the holder of `lease` is gone and the lease may be taken over. With
/// `several_workers`, only the heartbeat timeout says so: the recorded process is one worker
/// of many.
pub fn holder_gone(
    lease: &Lease,
    timeout_secs: u64,
    now: DateTime<Utc>,
    several_workers: bool,
) -> Option<String> {
    if !several_workers && Process::is_gone(&lease.host, lease.pid, lease.process.as_deref()) {
        return Some(format!(
            "execution {} was abandoned: its process {} on {} no longer exists",
            lease.execution, lease.pid, lease.host
        ));
    }
    // Milliseconds: a lease silent for 5.9 s of a 5 s timeout is gone, not "5 s" and live.
    let silent_ms = (now - lease.heartbeat_at).num_milliseconds();
    if silent_ms > timeout_secs as i64 * 1000 {
        return Some(format!(
            "execution {} was abandoned: no heartbeat from {} pid {} for {:.1}s (lease_timeout_secs = {timeout_secs})",
            lease.execution,
            lease.host,
            lease.pid,
            silent_ms as f64 / 1000.0
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
        now: DateTime<Utc>,
        several_workers: bool,
    ) -> Holder {
        match lease {
            None => Holder::Free,
            Some(l) => match holder_gone(l, timeout_secs, now, several_workers) {
                Some(why) => Holder::Gone(l.clone(), why),
                None => Holder::Live(l.clone()),
            },
        }
    }

    /// The holder of campaign `c`'s lease on `store`, judged from this process now. With
    /// several workers, an execution whose STARTED workers all ran on this host and are all
    /// known gone (see [`Process::is_gone`]) is gone at once, as a lone dead holder is.
    pub async fn of(c: &Campaign, timeout_secs: u64, store: &dyn Store) -> anyhow::Result<Holder> {
        let several = store.several_workers();
        let holder = Holder::judge(c.lease.as_ref(), timeout_secs, Utc::now(), several);
        let Holder::Live(l) = &holder else {
            return Ok(holder);
        };
        if !several {
            return Ok(holder);
        }
        let live: Vec<_> = store
            .workers(c.id)
            .await?
            .into_iter()
            .filter(|w| w.execution_id == l.execution && w.status == "STARTED")
            .collect();
        if !live.is_empty()
            && live
                .iter()
                .all(|w| Process::is_gone(&w.host, w.pid, w.process.as_deref()))
        {
            let pids: Vec<String> = live.iter().map(|w| w.pid.to_string()).collect();
            let why = format!(
                "execution {} was abandoned: the processes of all its workers ({}) on {} no longer exist",
                l.execution,
                pids.join(", "),
                l.host
            );
            return Ok(Holder::Gone(l.clone(), why));
        }
        Ok(holder)
    }

    /// The execution of a dead holder, which a takeover, cancel or delete closes.
    pub fn dead_execution(&self) -> Option<i64> {
        match self {
            Holder::Gone(l, _) => Some(l.execution),
            _ => None,
        }
    }

    /// How a new worker of campaign `id` enlists: a new execution replacing the holder it
    /// expects (compare and swap; a dead holder is abandoned, with the reason), or, while a
    /// live run holds it, joining that run where the store allows `several_workers`. On a
    /// store with one worker per campaign, a live run refuses the newcomer.
    pub fn enlist(&self, id: i64, several_workers: bool) -> anyhow::Result<Enlist> {
        match self {
            Holder::Free => Ok(Enlist::New {
                expected: None,
                abandon_message: String::new(),
                judged_workers: Vec::new(),
            }),
            Holder::Gone(l, why) => Ok(Enlist::New {
                expected: Some(l.execution),
                abandon_message: why.clone(),
                judged_workers: Vec::new(),
            }),
            Holder::Live(l) if several_workers => Ok(Enlist::Join {
                execution: l.execution,
            }),
            Holder::Live(l) => anyhow::bail!(
                "campaign {id} is already running: execution {} on {} (pid {}), last heartbeat {}; \
                 stop it with `munja campaign stop {id}` or wait for it to finish (a SQLite \
                 database runs one worker per campaign; on PostgreSQL several `campaign run` \
                 processes share one campaign)",
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
    Ok(match Holder::of(&c, timeout_secs, store).await? {
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
    let dead = Holder::of(&c, timeout_secs, store).await?.dead_execution();
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
    let expected = match Holder::of(&c, timeout_secs, store).await? {
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

    fn lease(process: &Process, age_secs: i64) -> Lease {
        Lease {
            execution: 7,
            host: process.host.clone(),
            pid: process.pid,
            process: process.identity.clone(),
            heartbeat_at: Utc::now() - chrono::Duration::seconds(age_secs),
        }
    }

    fn elsewhere() -> Process {
        Process {
            host: "elsewhere".into(),
            pid: 1,
            identity: None,
        }
    }

    #[test]
    fn live_local_process_with_fresh_heartbeat_holds() {
        assert_eq!(
            holder_gone(&lease(&Process::me(), 1), 30, Utc::now(), false),
            None
        );
    }

    /// A child that has exited: its pid exists no more (or belongs to another process).
    fn dead_child() -> Process {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let pid = i64::from(child.id());
        let mut p = Process::me();
        let ticks = start_time(pid).expect("child start time");
        let space = pid_space().expect("pid space");
        p.pid = pid;
        p.identity = Some(format!("{space}/{ticks}"));
        child.kill().expect("kill");
        child.wait().expect("wait");
        p
    }

    #[test]
    fn dead_local_process_is_gone_at_once() {
        let why = holder_gone(&lease(&dead_child(), 0), 30, Utc::now(), false);
        assert!(why.expect("gone").contains("no longer exists"));
    }

    #[test]
    fn a_reused_pid_or_another_pid_namespace_is_not_mistaken() {
        // The pid is alive (this process) but started at another time: the holder is gone.
        let mut reused = Process::me();
        let space = pid_space().expect("pid space");
        reused.identity = Some(format!("{space}/1"));
        assert!(Process::is_gone(
            &reused.host,
            reused.pid,
            reused.identity.as_deref()
        ));
        // A dead pid recorded in another pid namespace (a container sharing the host name) or
        // without an identity: unknown here, so only the timeout can tell.
        let mut other_ns = dead_child();
        other_ns.identity = Some("other-boot/4026531836/12345".into());
        assert!(!Process::is_gone(
            &other_ns.host,
            other_ns.pid,
            other_ns.identity.as_deref()
        ));
        let unknown = dead_child();
        assert!(!Process::is_gone(&unknown.host, unknown.pid, None));
    }

    #[test]
    fn remote_holder_is_gone_only_after_the_timeout() {
        assert_eq!(
            holder_gone(&lease(&elsewhere(), 10), 30, Utc::now(), false),
            None
        );
        let why = holder_gone(&lease(&elsewhere(), 31), 30, Utc::now(), false);
        assert!(why.expect("gone").contains("no heartbeat"));
    }

    #[test]
    fn with_several_workers_a_dead_process_is_judged_by_the_timeout_only() {
        let dead = dead_child();
        assert_eq!(holder_gone(&lease(&dead, 1), 30, Utc::now(), true), None);
        assert!(holder_gone(&lease(&dead, 31), 30, Utc::now(), true).is_some());
    }

    #[test]
    fn a_live_holder_refuses_a_newcomer_or_lets_it_join_and_a_dead_one_is_replaced() {
        let now = Utc::now();
        let free = Holder::judge(None, 30, now, false);
        assert_eq!(
            free.enlist(1, false).expect("free"),
            Enlist::New {
                expected: None,
                abandon_message: String::new(),
                judged_workers: Vec::new(),
            }
        );
        let live = Holder::judge(Some(&lease(&elsewhere(), 10)), 30, now, false);
        assert_eq!(live.dead_execution(), None);
        let refused = live.enlist(1, false).expect_err("live holder");
        assert!(refused.to_string().contains("already running: execution 7"));
        assert_eq!(
            live.enlist(1, true).expect("join"),
            Enlist::Join { execution: 7 }
        );
        let gone = Holder::judge(Some(&lease(&elsewhere(), 40)), 30, now, false);
        assert_eq!(gone.dead_execution(), Some(7));
        match gone.enlist(1, false).expect("gone holder") {
            Enlist::New {
                expected,
                abandon_message,
                ..
            } => {
                assert_eq!(expected, Some(7));
                assert!(
                    abandon_message.contains("no heartbeat"),
                    "{abandon_message}"
                );
            }
            other => panic!("expected a new execution, got {other:?}"),
        }
    }
}
