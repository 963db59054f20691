//! `agentctl promote | apply | rollback | approve | unlock`.

use super::context::{environment, read_plan, receipt_key, receipts, Context};
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::deploy::{self, DeployError, Deployer, Interrupt, Receipts, Sink, SystemClock};
use controlplane::lock::Holder;
use controlplane::manifest::Environment;
use controlplane::plan::{Plan, SavedPlan};
use controlplane::receipt::{ReceiptBody, ReceiptKind};
use controlplane::ssh::SshClient;
use controlplane::store::{SqlStore, Store};
use controlplane::verify::Verifier;
use controlplane::vm::Fleet;
use std::path::Path;
use std::time::Duration;

/// Progress on stderr.
struct StderrSink;

static SINK: StderrSink = StderrSink;
static CLOCK: SystemClock = SystemClock;
/// Set by SIGINT/SIGTERM while an apply runs.
static INTERRUPT: Interrupt = Interrupt::new();

impl Sink for StderrSink {
    fn event(&self, line: &str) {
        eprintln!("  · {line}");
    }
}

/// From now on SIGINT and SIGTERM ask the apply to stop at the next safe point (the
/// hosts that are moving finish; no further host starts); a second one aborts at once
/// (the cleanup guard still stops every ssh process).
fn catch_interrupts() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if INTERRUPT.request() == 1 {
                eprintln!(
                    "  · interrupted: the hosts that are moving finish, no further host starts (again to abort now)"
                );
            } else if !INTERRUPT.applying() {
                eprintln!("error: aborted by a second interrupt");
                std::process::exit(130);
            } else {
                // The apply writes its `aborted` receipt and releases the lock (each bounded);
                // should that hang, the process ends anyway.
                INTERRUPT.abort();
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    eprintln!("error: aborted by a second interrupt (the receipt could not be written in time)");
                    std::process::exit(130);
                });
            }
        }
    });
}

/// The job, wired to this run's manifests, store and verifier.
pub(crate) fn deployer<'a>(ctx: &'a Context, store: &'a SqlStore, verifier: &'a Verifier<'a>) -> Deployer<'a> {
    Deployer {
        set: &ctx.set,
        store,
        verifier,
        operator: ctx.operator(),
        sink: &SINK,
        clock: &CLOCK,
        interrupt: &INTERRUPT,
        machine: controlplane::hygiene::machine(),
        pid_exists: controlplane::hygiene::pid_exists,
    }
}

pub(crate) fn verifier(ctx: &Context) -> Result<Verifier<'_>, Failure> {
    Ok(Verifier {
        registry: &ctx.registry,
        keys: ctx.trusted_keys(&[])?,
        builders: ctx.set.trust.builders.clone(),
        keyless: ctx.keyless()?,
    })
}

pub fn failure(e: DeployError) -> Failure {
    let hint = match &e {
        DeployError::Verify(v) => v.hint(),
        DeployError::Stale { .. } => Some("make a new plan: `agentctl promote ...` shows what is live now".into()),
        DeployError::NotPaused { .. } => Some(
            "only the plan of a paused rollout resumes (its `paused` receipt names it); `agentctl status` shows a paused rollout, `agentctl promote ...` makes a new plan"
                .into(),
        ),
        DeployError::PlanTampered { .. } => Some(
            "a plan file is a request, not authority: make a new plan with `agentctl promote ... --out PLAN.json`"
                .into(),
        ),
        DeployError::Locked { holder, liveness, .. } => Some(match liveness {
            Holder::Dead(why) => format!(
                "the holder is gone ({why}); take the lock over with `agentctl unlock {} --env {} --force` (writes a receipt)",
                holder.service, holder.environment
            ),
            Holder::Alive => format!("wait for plan {} to finish (pid {} is running)", holder.plan_id, holder.holder_pid),
            Holder::Unknown => match holder.expires_at {
                Some(t) => format!(
                    "wait for plan {} to finish; if `{}` is gone, its lease ends at {} and the next apply takes the lock over (with a receipt)",
                    holder.plan_id,
                    holder.holder_host,
                    t.to_rfc3339()
                ),
                None => format!(
                    "wait for plan {} to finish; if pid {} on `{}` is gone, take the lock over with `agentctl unlock {} --env {} --force`",
                    holder.plan_id, holder.holder_pid, holder.holder_host, holder.service, holder.environment
                ),
            },
        }),
        DeployError::Egress { .. } => Some(
            "egress names are resolved when the plan is made and again at apply: fix the name's DNS, or write the address (`IP:PORT`, `CIDR:PORT`) in `egress`".into(),
        ),
        DeployError::Gate { after, .. } => Some(format!("promote it to `{after}` first")),
        DeployError::Approvals { need, .. } => Some(format!(
            "{need} distinct approver(s) of the environment sign the saved plan: `agentctl approve PLAN.json --key ~/.ssh/id_ed25519`"
        )),
        DeployError::UnknownRelease { service, .. } => {
            Some(format!("`agentctl release list {service}` shows the recorded releases"))
        }
        DeployError::Vm(_) => Some("nothing was changed".into()),
        DeployError::HostNotReady { hint, .. } => Some(format!("{hint}; nothing was changed")),
        DeployError::Interrupted => Some("nothing was changed; the receipt says `interrupted`".into()),
        DeployError::Aborted { .. } => Some(
            "hosts that were moving run their old or their new release: `agentctl status` shows which; the lock is released".into(),
        ),
        DeployError::NotRehearsed { earlier, digest, .. } => Some(format!(
            "prove the way back first: `agentctl rehearse SERVICE --env {earlier} --release {digest} --apply`"
        )),
        DeployError::RehearsalFailed { .. } => Some(
            "the receipt names each host's outcome; `agentctl status` shows where the environment is now".into(),
        ),
        DeployError::NoRollbackTarget { environment, service } => Some(format!(
            "nothing earlier is recorded; name a release with `agentctl rollback {service} --env {environment} --to r-…|sha256:…` (see `agentctl receipts list`)"
        )),
        DeployError::UnknownRollbackRelease { environment, service, .. } => Some(format!(
            "`agentctl receipts list` shows the releases applied to `{environment}`; roll back `--to` one of those (`agentctl rollback {service} --env {environment}` goes one step back)"
        )),
        DeployError::NothingToRollBack { environment, service, .. } => Some(format!(
            "nothing was changed or recorded; go back to another release with `agentctl rollback {service} --env {environment} --to ID` (`agentctl history {service} --env {environment}` lists them)"
        )),
        DeployError::AmbiguousRollbackImage { .. } => {
            Some("each of those release ids is the image with other configuration; `--to` takes the id".into())
        }
        DeployError::Plan(controlplane::plan::PlanError::Unadopted { service, environment, hosts }) => Some(format!(
            "record what runs as the way back: `agentctl adopt {service} --env {environment}` (a dry run; `--apply` records it), which verifies it first; what cannot be verified cannot be adopted — remove its `current` link on {} by hand",
            if hosts.len() == 1 { "that host" } else { "those hosts" }
        )),
        DeployError::WayBackBroken { host, service, environment, changes, .. } => {
            let repair = format!(
                "`agentctl repair {service} --env {environment} --host {host}` shows the changes and, with `--apply`, stages the recorded release again (with a receipt)"
            );
            let forget = format!("`agentctl host forget {host} --env {environment}` (a dry run; `--apply` records it)");
            let listed = !changes.is_empty() && !changes.iter().any(|c| c.starts_with("what changed cannot be listed"));
            Some(if listed {
                format!("the recorded release was changed on the host: {repair}")
            } else {
                format!("if the release was changed by hand: {repair}; if the host was re-imaged or replaced under the same name: {forget}")
            })
        }
        DeployError::NotRepairable { .. } => Some(
            "promote a release to the host (`agentctl promote SERVICE --env ENV --release ID`): it replaces what runs".into(),
        ),
        DeployError::Plan(controlplane::plan::PlanError::RollbackTargetBroken { .. }) => Some(
            "a host re-imaged or replaced under the same name: retire its recorded history with `agentctl host forget HOST --env ENV` (a dry run; `--apply` records it)".into(),
        ),
        DeployError::NotAdoptable { service, environment, .. } => Some(format!(
            "repair each host named by hand (put back what was released, or remove its `current` link), or adopt the others one by one: `agentctl adopt {service} --env {environment} --host HOST --apply`"
        )),
        DeployError::UnknownHost { environment, .. } => {
            Some(format!("the hosts of `{environment}` are listed in `environments/{environment}.toml`"))
        }
        DeployError::AlreadyApplied { receipt, .. } => Some(format!(
            "`agentctl receipts show {receipt}` says how it ended; to change the hosts again make a new plan (`agentctl promote ...` or `agentctl rollback ...`)"
        )),
        DeployError::Expired(_) | DeployError::Replayed(_) => {
            Some("make a new plan (`agentctl promote ... --out PLAN.json`), review it, apply it".into())
        }
        _ => None,
    };
    let details = e.details();
    let code = if matches!(e, DeployError::Aborted { .. }) {
        Code::Aborted
    } else if e.is_refusal() {
        Code::Refused
    } else if e.is_invalid_input() {
        Code::Invalid
    } else {
        Code::Failed
    };
    let mut f = Failure::new(code, e);
    f.details = details;
    f.hint = hint;
    f
}

/// What a dry-run reads: the real store if it exists, else an empty one in memory, so
/// that a dry-run never creates state.
pub(crate) async fn store_for(ctx: &Context, apply: bool) -> Result<SqlStore, Failure> {
    if apply {
        return ctx.store().await;
    }
    match ctx.read_store().await? {
        Some(s) => Ok(s),
        None => Ok(SqlStore::in_memory().await?),
    }
}

/// One SSH session to every host of `env` (all or none). The sessions live as long as `ssh`.
pub async fn connect(ssh: &SshClient, ctx: &Context, env: &Environment) -> Result<Fleet, Failure> {
    Fleet::connect(ssh, &env.hosts, ctx.set.ssh.concurrency).await.map_err(|e| failure(DeployError::Vm(e.into())))
}

pub fn ssh_client(ctx: &Context, env: &Environment) -> Result<SshClient, Failure> {
    Ok(SshClient::new(
        &env.hosts,
        &ctx.set.resolve(&ctx.set.ssh.identity),
        Duration::from_secs(ctx.set.ssh.connect_timeout_secs),
    )?
    .with_key_exchange(ctx.set.ssh.key_exchange.as_deref())?)
}

fn plan_report(plan: &Plan, extra: &str) -> Report {
    let id = plan.id();
    Report::new(
        format!("{}{extra}", crate::render::plan::render(plan)),
        serde_json::json!({ "plan_id": id, "plan": plan }),
    )
}

fn save(plan: &Plan, out: &Path) -> Result<(), Failure> {
    let saved = SavedPlan { plan_id: plan.id(), plan: plan.clone() };
    std::fs::write(out, serde_json::to_vec_pretty(&saved)?).map_err(|e| {
        Failure::new(Code::Failed, anyhow::Error::new(e).context(format!("cannot write `{}`", out.display())))
    })
}

/// What a saved plan is for: where it is, and the exact commands that take it further
/// (approvals first, where the environment needs them).
fn saved_next(plan: &Plan, env: &Environment, path: &Path) -> String {
    let p = crate::render::quote(&path.display().to_string());
    let mut text = format!("\n\nplan {} saved to {p}; nothing was changed.\nnext:", plan.id());
    if env.approvals > 0 {
        text.push_str(&format!(
            "\n  {} approver(s) of `{}` sign it: agentctl approve {p} --key ~/.ssh/id_ed25519",
            env.approvals, env.name
        ));
    }
    text.push_str(&format!("\n  apply it: agentctl apply {p}"));
    text
}

pub enum Target<'a> {
    Promote { release: &'a str },
    Rollback { to: Option<&'a str> },
}

/// `promote` and `rollback`: plan, print, and with `--apply` apply.
pub async fn plan_and_maybe_apply(
    g: &Globals,
    service: &str,
    env_name: &str,
    target: Target<'_>,
    apply: bool,
    out: Option<&Path>,
) -> Result<Report, Failure> {
    if apply {
        catch_interrupts();
    }
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let store = store_for(&ctx, apply).await?;
    let verifier = verifier(&ctx)?;
    let deployer = deployer(&ctx, &store, &verifier);
    let ssh = ssh_client(&ctx, env)?;
    let fleet = connect(&ssh, &ctx, env).await?;
    let planned = match target {
        Target::Promote { release } => deployer.promotion(&fleet, env_name, service, release).await,
        Target::Rollback { to } => deployer.rollback(&fleet, env_name, service, to).await,
    };
    let derived = match planned {
        Ok(p) => p,
        Err(e) => {
            fleet.close().await;
            if apply && e.is_refusal() {
                let key = receipt_key(&ctx)?;
                let log = receipts(&ctx);
                let receipt = deployer
                    .record_refusal(env_name, service, &e, &Receipts { log: &log, key: &key })
                    .await
                    .map_err(failure)?;
                eprintln!("  · refusal recorded in receipt {receipt}");
            }
            return Err(failure(e));
        }
    };
    let plan = derived.plan();
    // A plan that pauses is resumed from its file: without one the pause could not end
    // but by a rollback.
    if let (true, Some(after), None) = (apply, plan.pause_after, out) {
        fleet.close().await;
        return Err(Failure::new(
            Code::Invalid,
            anyhow::anyhow!(
                "this rollout pauses after batch {after}, and `agentctl resume` continues it from the plan file"
            ),
        )
        .hint("save the plan as it is applied: add `--out PLAN.json` (then `agentctl resume PLAN.json`)"));
    }
    if let Some(out) = out {
        save(plan, out)?;
    }
    if !apply {
        fleet.close().await;
        let hint = match out {
            _ if plan.is_noop() => "\n\nnothing to do.".to_owned(),
            Some(path) => saved_next(plan, env, path),
            None => {
                "\n\ndry-run: nothing was changed. Apply with `--apply`, or save with `--out PLAN.json`.".to_owned()
            }
        };
        let mut report = plan_report(plan, &hint);
        if let (Some(path), Some(doc)) = (out, report.json.as_object_mut()) {
            doc.insert("saved_to".into(), serde_json::json!(path.display().to_string()));
        }
        return Ok(report);
    }
    eprintln!("{}", crate::render::plan::render(plan));
    let key = receipt_key(&ctx)?;
    let log = receipts(&ctx);
    let result = deployer.apply_derived(&fleet, &derived, &Receipts { log: &log, key: &key }).await;
    fleet.close().await;
    apply_result(result)
}

fn apply_result(result: Result<deploy::ApplyReport, DeployError>) -> Result<Report, Failure> {
    let report = result.map_err(failure)?;
    let text = crate::render::apply::render(&report);
    let json = serde_json::to_value(&report)?;
    // A pause is where the plan asked to stop: not a failure (exit 0), with what comes next.
    if report.succeeded() || report.outcome == controlplane::rollout::Outcome::Paused {
        return Ok(Report::new(text, json));
    }
    let why = report.failure.clone().unwrap_or_default();
    let code = if report.outcome == controlplane::rollout::Outcome::Halted { Code::Halted } else { Code::Failed };
    Err(Failure::new(
        code,
        anyhow::anyhow!("rollout of plan {} ended {}: {why}", report.plan_id, report.outcome.as_str()),
    )
    .with_output(text)
    .with_json(json)
    .hint(format!("the hosts above say which release each is on; receipt `{}`", report.receipt)))
}

/// `rehearse SERVICE --env ENV --release REF [--apply]`.
pub async fn rehearse(
    g: &Globals,
    service: &str,
    env_name: &str,
    release: &str,
    apply: bool,
) -> Result<Report, Failure> {
    if apply {
        catch_interrupts();
    }
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let store = store_for(&ctx, apply).await?;
    let verifier = verifier(&ctx)?;
    let deployer = deployer(&ctx, &store, &verifier);
    let ssh = ssh_client(&ctx, env)?;
    let fleet = connect(&ssh, &ctx, env).await?;
    if !apply {
        let planned = deployer.plan_promotion(&fleet, env_name, service, release).await;
        fleet.close().await;
        let plan = planned.map_err(failure)?;
        return Ok(plan_report(
            &plan,
            "\n\nrehearsal (dry-run): with `--apply` this plan is applied, the hosts are rolled back one release, and the plan is applied again, each with its receipt.",
        ));
    }
    let key = receipt_key(&ctx)?;
    let log = receipts(&ctx);
    let result = deployer.rehearse(&fleet, env_name, service, release, &Receipts { log: &log, key: &key }).await;
    fleet.close().await;
    let r = result.map_err(failure)?;
    Ok(Report::new(format!("rehearsal succeeded: {}; receipt {}", r.detail, r.receipt), serde_json::to_value(&r)?))
}

/// `apply PLAN.json [--approval FILE]...`.
pub async fn apply_saved(g: &Globals, path: &Path, approvals: &[std::path::PathBuf]) -> Result<Report, Failure> {
    run_saved(g, path, approvals, false).await
}

/// `resume PLAN.json`: continues a paused rollout.
pub async fn resume(g: &Globals, path: &Path) -> Result<Report, Failure> {
    run_saved(g, path, &[], true).await
}

/// A saved plan applied (`resume`: continued from its pause), with the approval files given.
async fn run_saved(
    g: &Globals,
    path: &Path,
    approvals: &[std::path::PathBuf],
    resume: bool,
) -> Result<Report, Failure> {
    catch_interrupts();
    let saved = read_plan(path)?;
    let ctx = Context::load(g)?;
    let env = environment(&ctx, &saved.plan.environment)?;
    let store = ctx.store().await?;
    // Approvals made on another machine travel as files: verified and recorded first.
    for file in approvals {
        let text =
            controlplane::bounded::read_to_string(file, controlplane::bounded::MAX_APPROVAL_BYTES).map_err(|e| {
                Failure::new(Code::Invalid, anyhow::Error::new(e).context(format!("cannot read `{}`", file.display())))
            })?;
        let a: super::approve::ApprovalFile = serde_json::from_str(&text).map_err(|e| {
            Failure::new(Code::Invalid, anyhow::anyhow!("`{}` is not an approval file: {e}", file.display()))
                .hint("approval files are what `agentctl approve ... --out FILE` writes")
        })?;
        super::approve::record(&ctx, &store, env, &saved, &a).await?;
    }
    let verifier = verifier(&ctx)?;
    let deployer = deployer(&ctx, &store, &verifier);
    let key = receipt_key(&ctx)?;
    let log = receipts(&ctx);
    let ssh = ssh_client(&ctx, env)?;
    let fleet = connect(&ssh, &ctx, env).await?;
    let receipts = Receipts { log: &log, key: &key };
    let result = match resume {
        false => deployer.apply_saved(&fleet, &saved, &receipts).await,
        true => deployer.resume_saved(&fleet, &saved, &receipts).await,
    };
    fleet.close().await;
    apply_result(result)
}

/// `unlock SERVICE --env ENV [--force]`.
pub async fn unlock(g: &Globals, service: &str, env_name: &str, force: bool) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    environment(&ctx, env_name)?;
    let not_locked = || {
        Ok(Report::new(format!("`{service}` in `{env_name}` is not locked"), serde_json::json!({ "locked": false })))
    };
    let Some(store) = ctx.existing_store().await? else { return not_locked() };
    let Some(holder) = store.lock_holder(env_name, service).await? else { return not_locked() };
    let who = format!(
        "{} on {} (pid {}, plan {}, since {})",
        holder.holder_user,
        holder.holder_host,
        holder.holder_pid,
        holder.plan_id,
        holder.since.to_rfc3339()
    );
    let liveness =
        controlplane::lock::holder(&holder, &controlplane::hygiene::machine(), controlplane::hygiene::pid_exists);
    if !force {
        let take_over = format!("`agentctl unlock {service} --env {env_name} --force` (writes a receipt)");
        let hint = match &liveness {
            Holder::Dead(why) => format!("the holder is gone ({why}): take the lock over with {take_over}"),
            Holder::Alive => format!("the holder is still running; if it hangs, stop it first, then {take_over}"),
            Holder::Unknown => {
                format!("the holder runs on another machine; if it is gone, take the lock over with {take_over}")
            }
        };
        // Showing a lock is not a failure: exit 0, with what to do next.
        return Ok(Report::new(
            format!("`{service}` in `{env_name}` is locked by {who}\nnext: {hint}"),
            serde_json::json!({ "locked": true, "holder": holder, "hint": hint }),
        ));
    }
    let key = receipt_key(&ctx)?;
    store.force_unlock(env_name, service).await?;
    let state = match &liveness {
        Holder::Dead(why) => format!("holder gone: {why}"),
        Holder::Alive => "holder still running".into(),
        Holder::Unknown => "holder on another machine".into(),
    };
    let body = ReceiptBody {
        rollout: None,
        kind: ReceiptKind::LockOverride,
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        operator: ctx.operator(),
        plan_id: Some(holder.plan_id.clone()),
        environment: Some(env_name.into()),
        service: Some(service.into()),
        release: None,
        hosts: vec![],
        approvals: vec![],
        outcome: "recorded".into(),
        detail: Some(format!("lock taken over from {who} ({state})")),
    };
    let r = receipts(&ctx).append(body, &key, &store as &dyn Store).await?;
    Ok(Report::new(
        format!("took over the lock of `{service}` in `{env_name}` from {who}; receipt {}", r.file_name()),
        serde_json::json!({ "released": holder, "receipt": r.file_name() }),
    ))
}
