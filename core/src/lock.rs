//! Is the holder of an (environment, service) lock still alive? A pure decision from
//! the lock record, where this process runs, and whether a pid exists here.

use crate::records::LockRecord;

/// The machine this control plane runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub hostname: String,
    /// `/proc/sys/kernel/random/boot_id`; empty when unknown.
    pub boot_id: String,
}

/// What can be said about a lock holder from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// On this machine and boot, and its pid exists.
    Alive,
    /// Provably gone: the reason says why.
    Dead(String),
    /// On another machine: only its operator can tell.
    Unknown,
}

/// Decides whether `lock`'s holder is alive; `pid_exists` asks this machine.
pub fn holder(lock: &LockRecord, here: &Machine, pid_exists: impl Fn(i64) -> bool) -> Holder {
    if lock.holder_host != here.hostname {
        return Holder::Unknown;
    }
    if !lock.holder_boot.is_empty() && !here.boot_id.is_empty() && lock.holder_boot != here.boot_id {
        return Holder::Dead(format!("the machine `{}` rebooted since the lock was taken", here.hostname));
    }
    if !pid_exists(lock.holder_pid) {
        return Holder::Dead(format!("no process {} runs on `{}`", lock.holder_pid, here.hostname));
    }
    Holder::Alive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(host: &str, boot: &str, pid: i64) -> LockRecord {
        LockRecord {
            environment: "prod".into(),
            service: "api".into(),
            holder_user: "alice".into(),
            holder_host: host.into(),
            holder_pid: pid,
            holder_boot: boot.into(),
            plan_id: "sha256:p".into(),
            since: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: None,
        }
    }

    #[test]
    fn a_holder_is_dead_only_when_this_machine_can_prove_it() {
        let here = Machine { hostname: "ops-1".into(), boot_id: "b1".into() };
        let alive = |pid| pid == 42;
        assert_eq!(holder(&lock("ops-1", "b1", 42), &here, alive), Holder::Alive);
        assert!(
            matches!(holder(&lock("ops-1", "b1", 43), &here, alive), Holder::Dead(r) if r.contains("no process 43"))
        );
        assert!(matches!(holder(&lock("ops-1", "b0", 42), &here, alive), Holder::Dead(r) if r.contains("rebooted")));
        assert_eq!(holder(&lock("ops-2", "b1", 43), &here, alive), Holder::Unknown);
        // A lock written before boot ids were recorded: the pid decides.
        assert_eq!(holder(&lock("ops-1", "", 42), &here, alive), Holder::Alive);
    }
}
