//! Who may run a campaign: the lease rules (one runner at a time, takeover of dead holders).
//!
//! The lease itself is a row in the store (holder execution, host, pid, heartbeat). This module
//! decides whether a recorded holder is still alive: a process on this host that no longer exists
//! is dead at once; any other holder is dead after `policy.lease_timeout_secs` without heartbeat.

use chrono::{DateTime, Utc};

use crate::store::Lease;

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
}
