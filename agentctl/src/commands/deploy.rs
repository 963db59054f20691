//! `agentctl promote | apply | rollback | approve | unlock`.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::deploy::{self, DeployError, Deployer, Fleet, Sink};
use controlplane::keys::SigningKey;
use controlplane::manifest::Environment;
use controlplane::plan::{Plan, SavedPlan};
use controlplane::receipt::{ReceiptBody, ReceiptKind};
use controlplane::receipt_log::ReceiptLog;
use controlplane::ssh::SshClient;
use controlplane::store::{Approval, SqliteStore, Store};
use std::path::Path;
use std::time::Duration;

/// Progress on stderr.
struct StderrSink;

static SINK: StderrSink = StderrSink;

/// The job, wired to this run's manifests, store and SSH client.
fn deployer<'a>(ctx: &'a Context, store: &'a SqliteStore, ssh: &'a SshClient) -> Result<Deployer<'a>, Failure> {
    Ok(Deployer {
        set: &ctx.set,
        store,
        registry: &ctx.registry,
        keys: ctx.trusted_keys(&[])?,
        ssh,
        operator: ctx.operator(),
        sink: &SINK,
    })
}

impl Sink for StderrSink {
    fn event(&self, line: &str) {
        eprintln!("  · {line}");
    }
}

fn failure(e: DeployError) -> Failure {
    let hint = match &e {
        DeployError::Verify(v) => v.hint(),
        DeployError::Stale { .. } => Some("make a new plan: `agentctl promote ...` shows what is live now".into()),
        DeployError::Locked { holder, .. } => Some(format!(
            "wait for plan {} to finish; if its holder died (pid {} on {}), take the lock over with `agentctl unlock {} --env {} --force`",
            holder.plan_id, holder.holder_pid, holder.holder_host, holder.service, holder.environment
        )),
        DeployError::Gate { after, .. } => Some(format!("promote it to `{after}` first")),
        DeployError::Approvals { plan, .. } => Some(format!("`agentctl approve {plan} --as NAME`")),
        DeployError::UnknownRelease { service, .. } => Some(format!("`agentctl release list {service}` shows the recorded releases")),
        DeployError::Ssh(_) | DeployError::Probe { .. } => Some("nothing was changed".into()),
        _ => None,
    };
    let detail = deploy::stale_detail(&e);
    let code = if e.is_refusal() {
        Code::Refused
    } else if e.is_invalid_input() {
        Code::Invalid
    } else {
        Code::Failed
    };
    let mut f = Failure::new(code, e);
    if detail.contains('\n') || detail.starts_with("host `") {
        f.output = Some(detail);
    }
    f.hint = hint;
    f
}

/// What a dry-run reads: the real store if it exists, else an empty one in memory, so
/// that a dry-run never creates state.
async fn store_for(ctx: &Context, apply: bool) -> Result<SqliteStore, Failure> {
    if apply {
        return ctx.store().await;
    }
    match ctx.read_store().await? {
        Some(s) => Ok(s),
        None => Ok(SqliteStore::in_memory().await?),
    }
}

fn environment<'a>(ctx: &'a Context, name: &str) -> Result<&'a Environment, Failure> {
    ctx.set.environments.iter().find(|e| e.name.as_str() == name).ok_or_else(|| {
        let known: Vec<_> = ctx.set.environments.iter().map(|e| e.name.to_string()).collect();
        Failure::new(Code::Invalid, anyhow::anyhow!("no environment `{name}` in the manifests"))
            .hint(format!("known environments: {}", known.join(", ")))
    })
}

fn ssh_client(ctx: &Context, env: &Environment) -> Result<SshClient, Failure> {
    Ok(SshClient::new(
        &env.hosts,
        &ctx.set.resolve(&ctx.set.ssh.identity),
        Duration::from_secs(ctx.set.ssh.connect_timeout_secs),
    )?
    .with_key_exchange(ctx.set.ssh.key_exchange.as_deref())?)
}

fn receipt_key(ctx: &Context) -> Result<SigningKey, Failure> {
    let password =
        ctx.set.settings.receipt_key_password_env.as_ref().and_then(|v| std::env::var(v).ok()).unwrap_or_default();
    let path = ctx.set.resolve(&ctx.set.settings.receipt_key);
    SigningKey::load(&path, password.as_bytes()).map_err(|e| {
        Failure::new(Code::Invalid, e).hint(format!(
            "the receipt key's password comes from `{}`",
            ctx.set.settings.receipt_key_password_env.as_deref().unwrap_or("(no variable configured: empty password)")
        ))
    })
}

fn receipts(ctx: &Context) -> ReceiptLog {
    ReceiptLog::new(ctx.set.resolve(&ctx.set.settings.receipts_dir))
}

fn plan_report(plan: &Plan, extra: &str) -> Report {
    let id = plan.id();
    Report::new(format!("{}{extra}", plan.render()), serde_json::json!({ "plan_id": id, "plan": plan }))
}

fn save(plan: &Plan, out: &Path) -> Result<(), Failure> {
    let saved = SavedPlan { plan_id: plan.id(), plan: plan.clone() };
    std::fs::write(out, serde_json::to_vec_pretty(&saved)?).map_err(|e| {
        Failure::new(Code::Failed, anyhow::Error::new(e).context(format!("cannot write `{}`", out.display())))
    })
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
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let store = store_for(&ctx, apply).await?;
    let ssh = ssh_client(&ctx, env)?;
    let deployer = deployer(&ctx, &store, &ssh)?;
    let fleet = Fleet::connect(&ssh, &env.hosts, ctx.set.ssh.concurrency).await.map_err(|e| failure(e.into()))?;
    let planned = match target {
        Target::Promote { release } => deployer.plan_promotion(&fleet, env_name, service, release).await,
        Target::Rollback { to } => deployer.plan_rollback(&fleet, env_name, service, to).await,
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            fleet.close().await;
            if apply && e.is_refusal() {
                let receipt = deployer
                    .record_refusal(env_name, service, &e, &receipts(&ctx), &receipt_key(&ctx)?)
                    .await
                    .map_err(failure)?;
                eprintln!("  · refusal recorded in receipt {receipt}");
            }
            return Err(failure(e));
        }
    };
    if let Some(out) = out {
        save(&plan, out)?;
    }
    if !apply {
        fleet.close().await;
        let hint = if plan.is_noop() {
            "\n\nnothing to do."
        } else {
            "\n\ndry-run: nothing was changed. Apply with `--apply`, or save with `--out PLAN.json`."
        };
        return Ok(plan_report(&plan, hint));
    }
    eprintln!("{}", plan.render());
    let result = apply_plan(&ctx, &deployer, &fleet, &plan).await;
    fleet.close().await;
    result
}

async fn apply_plan(ctx: &Context, deployer: &Deployer<'_>, fleet: &Fleet, plan: &Plan) -> Result<Report, Failure> {
    let key = receipt_key(ctx)?;
    let log = receipts(ctx);
    let report = deployer.apply(fleet, plan, &log, &key).await.map_err(failure)?;
    let mut text = format!("plan {}: {}\n", report.plan_id, if report.succeeded { "applied" } else { "FAILED" });
    for h in &report.hosts {
        text.push_str(&format!(
            "  {:<12} {:<12} {} -> {}{}\n",
            h.host,
            h.outcome,
            h.before.as_deref().unwrap_or("(nothing)"),
            h.after.as_deref().unwrap_or("(nothing)"),
            h.detail.as_deref().map(|d| format!("  ({d})")).unwrap_or_default()
        ));
    }
    text.push_str(&format!("receipt {}", report.receipt));
    let json = serde_json::to_value(&report)?;
    if report.succeeded {
        Ok(Report::new(text, json))
    } else {
        let failure = report.failure.clone().unwrap_or_default();
        Err(Failure::new(
            Code::Failed,
            anyhow::anyhow!("rollout of `{}` to `{}` failed: {failure}", plan.service, plan.environment),
        )
        .with_output(text)
        .hint(format!("the hosts above say which release each is on; receipt `{}`", report.receipt)))
    }
}

/// `apply PLAN.json`.
pub async fn apply_saved(g: &Globals, path: &Path) -> Result<Report, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(Code::Invalid, anyhow::Error::new(e).context(format!("cannot read plan `{}`", path.display())))
    })?;
    let plan = deploy::load_saved(&text).map_err(failure)?;
    let ctx = Context::load(g)?;
    let env = environment(&ctx, &plan.environment)?;
    let store = ctx.store().await?;
    let ssh = ssh_client(&ctx, env)?;
    let deployer = deployer(&ctx, &store, &ssh)?;
    let fleet = Fleet::connect(&ssh, &env.hosts, ctx.set.ssh.concurrency).await.map_err(|e| failure(e.into()))?;
    let result = apply_plan(&ctx, &deployer, &fleet, &plan).await;
    fleet.close().await;
    result
}

/// `approve PLAN_ID --as NAME`.
pub async fn approve(g: &Globals, plan_id: &str, approver: &str) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    if !plan_id.starts_with("sha256:") || plan_id.len() != 71 {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("`{plan_id}` is not a plan id"))
            .hint("copy the `sha256:...` id that `agentctl promote` prints"));
    }
    let store = ctx.store().await?;
    let now = chrono::Utc::now();
    store.approve(&Approval { plan_id: plan_id.into(), approver: approver.into(), approved_at: now }).await?;
    let body = ReceiptBody {
        kind: ReceiptKind::Approval,
        time: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        operator: approver.into(),
        plan_id: Some(plan_id.into()),
        environment: None,
        service: None,
        release: None,
        hosts: vec![],
        approvals: vec![controlplane::receipt::ApprovalRecord { approver: approver.into(), at: now.to_rfc3339() }],
        outcome: "recorded".into(),
        detail: None,
    };
    let r = receipts(&ctx).append(body, &receipt_key(&ctx)?, Some(&store)).await?;
    Ok(Report::new(
        format!("approved plan {plan_id} as `{approver}`; receipt {}", r.file_name()),
        serde_json::json!({ "plan_id": plan_id, "approver": approver, "receipt": r.file_name() }),
    ))
}

/// `unlock SERVICE --env ENV [--force]`.
pub async fn unlock(g: &Globals, service: &str, env_name: &str, force: bool) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    environment(&ctx, env_name)?;
    let Some(store) = ctx.existing_store().await? else {
        return Ok(Report::new(
            format!("`{service}` in `{env_name}` is not locked"),
            serde_json::json!({ "locked": false }),
        ));
    };
    let Some(holder) = store.lock_holder(env_name, service).await? else {
        return Ok(Report::new(
            format!("`{service}` in `{env_name}` is not locked"),
            serde_json::json!({ "locked": false }),
        ));
    };
    let who = format!(
        "{} on {} (pid {}, plan {}, since {})",
        holder.holder_user,
        holder.holder_host,
        holder.holder_pid,
        holder.plan_id,
        holder.since.to_rfc3339()
    );
    if !force {
        return Err(Failure::new(Code::Refused, anyhow::anyhow!("`{service}` in `{env_name}` is locked by {who}"))
            .hint(format!("if that process is gone, take the lock over with `agentctl unlock {service} --env {env_name} --force` (writes a receipt)")));
    }
    let key = receipt_key(&ctx)?;
    store.force_unlock(env_name, service).await?;
    let body = ReceiptBody {
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
        detail: Some(format!("lock taken over from {who}")),
    };
    let r = receipts(&ctx).append(body, &key, Some(&store as &dyn Store)).await?;
    Ok(Report::new(
        format!("took over the lock of `{service}` in `{env_name}` from {who}; receipt {}", r.file_name()),
        serde_json::json!({ "released": holder, "receipt": r.file_name() }),
    ))
}
