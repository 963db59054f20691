//! `agentctl repair SERVICE --env ENV --host HOST [--apply]`.

use super::context::Context;
use super::context::{environment, receipt_key, receipts};
use super::deploy::{connect, deployer, failure, ssh_client, store_for, verifier};
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::deploy::Receipts;
use controlplane::host_repair::Repair;

pub async fn run(g: &Globals, service: &str, env_name: &str, host: &str, apply: bool) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let store = store_for(&ctx, apply).await?;
    let verifier = verifier(&ctx)?;
    let d = deployer(&ctx, &store, &verifier);
    let ssh = ssh_client(&ctx, env)?;
    let fleet = connect(&ssh, &ctx, env).await?;
    let result = if apply {
        let key = receipt_key(&ctx)?;
        let log = receipts(&ctx);
        d.repair(&fleet, env_name, service, host, &Receipts { log: &log, key: &key }).await
    } else {
        d.plan_repair(&fleet, env_name, service, host).await
    };
    fleet.close().await;
    let repair = result.map_err(failure)?;
    let text = render(&repair, apply);
    let report = Report::new(text, serde_json::to_value(&repair)?);
    match &repair.failure {
        Some(why) => Err(Failure::new(Code::Failed, anyhow::anyhow!("the repair of host `{host}` failed: {why}"))
            .with_output(report.text.clone())
            .with_json(report.json)
            .hint("`agentctl status` shows where the host is; the receipt records what was tried")),
        None => Ok(report),
    }
}

fn render(r: &Repair, applied: bool) -> String {
    let mut out = format!(
        "repair `{}` on host `{}` in `{}`{}: release {} ({})\n  now: {}{}",
        r.service,
        r.host,
        r.environment,
        if applied { "" } else { " (dry run)" },
        r.release_id,
        r.release.short(),
        r.status.label(),
        match r.status.detail() {
            d if d.is_empty() => String::new(),
            d => format!(" ({d})"),
        }
    );
    for c in controlplane::repair::describe(&r.changes) {
        out.push_str(&format!("\n  ~ {c}"));
    }
    match (&r.receipt, &r.outcome) {
        _ if r.in_sync() => out.push_str("\nnothing to repair: the host runs its recorded release unchanged"),
        (Some(receipt), Some(outcome)) => out.push_str(&format!(
            "\nrepair {outcome}: the recorded files were staged again (the changed directory is kept as `releases/.damaged-{}-…`) and the workload restarted; receipt {receipt}",
            r.release_id
        )),
        _ => out.push_str(&format!(
            "\nnothing was changed; `agentctl repair {} --env {} --host {} --apply` stages the recorded release again from the recorded files (the image verified now) and restarts the workload",
            r.service, r.environment, r.host
        )),
    }
    out
}
