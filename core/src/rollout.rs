//! The apply state machine: pure decisions over a plan, with no I/O and no clock.
//!
//! The job (`controlplane::deploy`) asks this module what to do next and reports what
//! happened; it never decides on its own. Per host: swap → activate → health, and on a
//! failure back to the rollback target (swap back → re-activate, or unset when there was
//! nothing before). Per rollout: the next batch starts only when every host of the last
//! one is healthy (or, with a failure budget, while the budget lasts), no interruption was
//! asked for and the plan's pause point is not reached ([`after_batch`]). An interruption never stops a host
//! between its steps: the host's sequence runs to its end (forward, or back on failure),
//! so every host is on its old or its new release.

use serde::Serialize;

/// One remote step on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", content = "release", rename_all = "kebab-case")]
pub enum Step {
    /// Point `current` at the new release.
    Swap(String),
    /// Activate the new release.
    Activate(String),
    /// Health-check the service.
    Health,
    /// Point `current` back at the rollback target.
    SwapBack(String),
    /// Activate the rollback target again.
    Reactivate(String),
    /// Remove `current` (the host had nothing before).
    Unset,
    /// Start-first runtimes (Podman): start the new release's workload beside what runs.
    Start(String),
    /// Start-first: health-check the new release's workload (before `current` moves).
    Check(String),
    /// Start-first: remove the new release's workload after a failure.
    Discard(String),
    /// Start-first: make sure the release `current` points at runs (after a failure).
    Restore,
}

impl Step {
    /// What the step is, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Swap(_) => "swap",
            Self::Activate(_) => "activation",
            Self::Health => "health check",
            Self::SwapBack(_) => "swap back",
            Self::Reactivate(_) => "re-activation",
            Self::Unset => "unset",
            Self::Start(_) => "start",
            Self::Check(_) => "health check",
            Self::Discard(_) => "discard",
            Self::Restore => "restore",
        }
    }

    /// A step of the way forward (a failure turns back), not of the way back.
    pub fn is_forward(&self) -> bool {
        matches!(self, Self::Swap(_) | Self::Activate(_) | Self::Health | Self::Start(_) | Self::Check(_))
    }

    /// The step after which the workload is known healthy (where the egress proof runs).
    pub fn is_health(&self) -> bool {
        matches!(self, Self::Health | Self::Check(_))
    }
}

/// How one host's move ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "end", rename_all = "kebab-case")]
pub enum HostEnd {
    /// The new release is live and healthy.
    Changed,
    /// A forward step failed and the host is back on its rollback target.
    RolledBack { reason: String },
    /// A forward step failed and so did the way back: the host needs a person.
    Failed { reason: String, back: String },
}

impl HostEnd {
    /// The word receipts and reports use.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::RolledBack { .. } => "rolled-back",
            Self::Failed { .. } => "failed",
        }
    }
}

/// One host's way through its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMove {
    release: String,
    target: Option<String>,
    reason: Option<String>,
    order: Order,
}

/// In which order a host moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// swap → activate → health; back: swap back → re-activate (or unset). The command
    /// runtime's activation reads `current`.
    SwapFirst,
    /// start → check → swap; back: discard → restore. `current` moves only once the new
    /// workload is healthy, so the way back never needs the recorded target: whatever
    /// `current` still points at is started again (the Podman runtime).
    StartFirst,
}

/// What to do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Run(Step),
    Done(HostEnd),
}

impl HostMove {
    /// A host moving to `release`, going back to `target` (what was live) if it fails.
    pub fn new(release: &str, target: Option<&str>) -> Self {
        Self { release: release.to_owned(), target: target.map(str::to_owned), reason: None, order: Order::SwapFirst }
    }

    /// A start-first move (see [`Order::StartFirst`]).
    pub fn start_first(release: &str) -> Self {
        Self { release: release.to_owned(), target: None, reason: None, order: Order::StartFirst }
    }

    pub fn first(&self) -> Step {
        match self.order {
            Order::SwapFirst => Step::Swap(self.release.clone()),
            Order::StartFirst => Step::Start(self.release.clone()),
        }
    }

    /// Decides what follows `step`, given how it went (`Err` carries why it failed).
    pub fn after(&mut self, step: &Step, result: Result<(), String>) -> Next {
        match result {
            Ok(()) => self.after_success(step).unwrap_or_else(|| {
                self.failed(format!("unexpected step {} in a {:?} move", step.describe(), self.order))
            }),
            Err(reason) if step.is_forward() => {
                self.reason = Some(format!("{} failed: {reason}", step.describe()));
                Next::Run(self.way_back())
            }
            Err(back) => self.failed(format!("{} failed: {back}", step.describe())),
        }
    }

    /// The step after one that succeeded, in this move's order.
    fn after_success(&self, step: &Step) -> Option<Next> {
        let release = || self.release.clone();
        let rolled_back = || Next::Done(HostEnd::RolledBack { reason: self.reason.clone().unwrap_or_default() });
        Some(match (self.order, step) {
            (Order::SwapFirst, Step::Swap(_)) => Next::Run(Step::Activate(release())),
            (Order::SwapFirst, Step::Activate(_)) => Next::Run(Step::Health),
            (Order::SwapFirst, Step::Health) | (Order::StartFirst, Step::Swap(_)) => Next::Done(HostEnd::Changed),
            (Order::SwapFirst, Step::SwapBack(t)) => Next::Run(Step::Reactivate(t.clone())),
            (Order::SwapFirst, Step::Reactivate(_) | Step::Unset) | (Order::StartFirst, Step::Restore) => rolled_back(),
            (Order::StartFirst, Step::Start(_)) => Next::Run(Step::Check(release())),
            (Order::StartFirst, Step::Check(_)) => Next::Run(Step::Swap(release())),
            (Order::StartFirst, Step::Discard(_)) => Next::Run(Step::Restore),
            _ => return None,
        })
    }

    /// The first step back after a forward step failed.
    fn way_back(&self) -> Step {
        match (self.order, &self.target) {
            (Order::SwapFirst, Some(t)) => Step::SwapBack(t.clone()),
            (Order::SwapFirst, None) => Step::Unset,
            (Order::StartFirst, _) => Step::Discard(self.release.clone()),
        }
    }

    /// The way back failed too: the host needs a person.
    fn failed(&self, back: String) -> Next {
        Next::Done(HostEnd::Failed { reason: self.reason.clone().unwrap_or_default(), back })
    }
}

/// The plan's canary policy, as [`after_batch`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Hosts that may fail before the rollout halts; `None`: the first failure stops it.
    pub max_failures: Option<usize>,
    /// Pause after this batch (1: the canary).
    pub pause_after: Option<usize>,
}

/// What the rollout does once a batch has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterBatch {
    /// The next batch starts.
    Next,
    /// The apply stops here, the lock released, until `agentctl resume`.
    Pause,
    /// A failure (without a budget) or an interruption: no further host starts.
    Stop,
    /// The failure budget is spent: no further host starts, and the hosts that moved go
    /// back unless the plan keeps them.
    Halt,
}

/// Decides after batch `number` (1-based, of `total`) ended with `ends`, given the hosts
/// that failed before it (`failed_before`) and whether an interruption was asked for.
pub fn after_batch(
    policy: Policy,
    number: usize,
    total: usize,
    ends: &[HostEnd],
    failed_before: usize,
    interrupted: bool,
) -> AfterBatch {
    let failed = failed_before + ends.iter().filter(|e| **e != HostEnd::Changed).count();
    // A host whose way back failed too needs a person, whatever the budget: nothing more
    // starts, and nothing is returned around it.
    if ends.iter().any(|e| matches!(e, HostEnd::Failed { .. })) {
        return AfterBatch::Stop;
    }
    match policy.max_failures {
        Some(budget) if failed > budget => return AfterBatch::Halt,
        None if failed > failed_before => return AfterBatch::Stop,
        _ => {}
    }
    if interrupted {
        AfterBatch::Stop
    } else if policy.pause_after == Some(number) && number < total {
        AfterBatch::Pause
    } else {
        AfterBatch::Next
    }
}

/// How a whole apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Stopped early on SIGINT/SIGTERM: every host is on its old or its new release.
    Interrupted,
    /// Stopped at the plan's pause point, lock released, until `agentctl resume`.
    Paused,
    /// The failure budget was spent: no further host started.
    Halted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Paused => "paused",
            Self::Halted => "halted",
        }
    }
}

/// The outcome from how each changing host ended (`None`: never started).
pub fn outcome(hosts: &[Option<HostEnd>], interrupted: bool) -> Outcome {
    let all_changed = hosts.iter().all(|h| *h == Some(HostEnd::Changed));
    if all_changed {
        Outcome::Succeeded
    } else if interrupted {
        Outcome::Interrupted
    } else {
        Outcome::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one host's machine with the results `fail` gives per step; returns the
    /// steps taken and the end.
    fn run(target: Option<&str>, fail: impl Fn(&Step) -> Option<&'static str>) -> (Vec<&'static str>, HostEnd) {
        walk(HostMove::new("r-new", target), fail)
    }

    fn walk(mut m: HostMove, fail: impl Fn(&Step) -> Option<&'static str>) -> (Vec<&'static str>, HostEnd) {
        let mut step = m.first();
        let mut steps = Vec::new();
        loop {
            steps.push(step.describe());
            let result = fail(&step).map_or(Ok(()), |e| Err(e.to_owned()));
            match m.after(&step, result) {
                Next::Run(s) => step = s,
                Next::Done(end) => return (steps, end),
            }
            assert!(steps.len() < 10, "the machine terminates");
        }
    }

    #[test]
    fn a_healthy_host_goes_forward() {
        let (steps, end) = run(Some("r-old"), |_| None);
        assert_eq!(steps, ["swap", "activation", "health check"]);
        assert_eq!(end, HostEnd::Changed);
    }

    #[test]
    fn every_forward_failure_goes_back_to_the_target() {
        for failing in ["swap", "activation", "health check"] {
            let (steps, end) = run(Some("r-old"), |s| (s.describe() == failing).then_some("exit 1"));
            let forward = steps.iter().position(|s| *s == failing).unwrap() + 1;
            assert_eq!(steps[forward..], ["swap back", "re-activation"], "{failing}");
            assert_eq!(end, HostEnd::RolledBack { reason: format!("{failing} failed: exit 1") });
        }
    }

    #[test]
    fn a_host_with_nothing_before_is_unset() {
        let (steps, end) = run(None, |s| (*s == Step::Health).then_some("exit 7"));
        assert_eq!(steps, ["swap", "activation", "health check", "unset"]);
        assert_eq!(end.outcome(), "rolled-back");
    }

    #[test]
    fn a_broken_way_back_is_a_failure_naming_both() {
        let (_, end) = run(Some("r-old"), |s| matches!(s, Step::Health | Step::Reactivate(_)).then_some("boom"));
        assert_eq!(
            end,
            HostEnd::Failed { reason: "health check failed: boom".into(), back: "re-activation failed: boom".into() }
        );
    }

    fn run_start_first(fail: impl Fn(&Step) -> Option<&'static str>) -> (Vec<&'static str>, HostEnd) {
        walk(HostMove::start_first("r-new"), fail)
    }

    /// Start-first: `current` (the swap) moves last, after the health check; every
    /// failure before it discards the new workload and restores what `current` names.
    #[test]
    fn start_first_swaps_only_after_the_health_check() {
        let (steps, end) = run_start_first(|_| None);
        assert_eq!(steps, ["start", "health check", "swap"]);
        assert_eq!(end, HostEnd::Changed);
        for failing in ["start", "health check", "swap"] {
            let (steps, end) = run_start_first(|s| (s.describe() == failing).then_some("boom"));
            let at = steps.iter().position(|s| *s == failing).unwrap();
            assert_eq!(steps[at + 1..], ["discard", "restore"], "after a failed {failing}");
            assert!(!steps[at + 1..].contains(&"swap"), "the way back never moves `current`");
            assert!(matches!(end, HostEnd::RolledBack { ref reason } if reason.contains("boom")), "{end:?}");
        }
        let (_, end) = run_start_first(|s| match s {
            Step::Check(_) => Some("unhealthy"),
            Step::Restore => Some("old container gone"),
            _ => None,
        });
        assert!(matches!(end, HostEnd::Failed { ref back, .. } if back.contains("old container gone")), "{end:?}");
    }

    #[test]
    fn a_failure_budget_halts_only_once_spent_and_a_pause_waits_at_its_batch() {
        let ok = [HostEnd::Changed];
        let bad = [HostEnd::RolledBack { reason: "x".into() }];
        let budget = Policy { max_failures: Some(1), pause_after: None };
        assert_eq!(
            after_batch(budget, 1, 4, &bad, 0, false),
            AfterBatch::Next,
            "one failure is within a budget of one"
        );
        assert_eq!(after_batch(budget, 2, 4, &ok, 1, false), AfterBatch::Next);
        assert_eq!(after_batch(budget, 3, 4, &bad, 1, false), AfterBatch::Halt, "the second spends it");
        assert_eq!(after_batch(budget, 1, 4, &[bad[0].clone(), bad[0].clone()], 0, false), AfterBatch::Halt);
        assert_eq!(after_batch(Policy::default(), 1, 4, &bad, 0, false), AfterBatch::Stop, "no budget: stop");
        assert_eq!(after_batch(Policy::default(), 2, 4, &ok, 0, true), AfterBatch::Stop);
        assert_eq!(
            after_batch(Policy { max_failures: Some(0), pause_after: None }, 1, 2, &bad, 0, false),
            AfterBatch::Halt
        );
        for at in 1..4 {
            let pause = Policy { max_failures: None, pause_after: Some(at) };
            for n in 1..=4 {
                let want = if n == at { AfterBatch::Pause } else { AfterBatch::Next };
                assert_eq!(after_batch(pause, n, 4, &ok, 0, false), want, "pause after {at}, batch {n}");
            }
            assert_eq!(after_batch(pause, at, 4, &bad, 0, false), AfterBatch::Stop, "a failure is not a pause");
            assert_eq!(after_batch(pause, at, 4, &ok, 0, true), AfterBatch::Stop, "an interruption is not a pause");
        }
        assert_eq!(
            after_batch(Policy { max_failures: None, pause_after: Some(2) }, 2, 2, &ok, 0, false),
            AfterBatch::Next
        );
    }

    #[test]
    fn outcomes() {
        let changed = Some(HostEnd::Changed);
        let back = Some(HostEnd::RolledBack { reason: "x".into() });
        assert_eq!(outcome(&[changed.clone(), changed.clone()], false), Outcome::Succeeded);
        assert_eq!(outcome(&[changed.clone(), changed.clone()], true), Outcome::Succeeded, "nothing was left undone");
        assert_eq!(outcome(&[changed.clone(), None], true), Outcome::Interrupted);
        assert_eq!(outcome(&[changed.clone(), back.clone()], false), Outcome::Failed);
        assert_eq!(outcome(&[back, None], true), Outcome::Interrupted);
        assert_eq!(outcome(&[changed, None], false), Outcome::Failed);
    }
}
