//! `agentctl adopt` and `agentctl host forget`.

use super::context::Context;
use super::context::{environment, receipt_key, receipts};
use super::deploy::{connect, deployer, failure, ssh_client, store_for, verifier};
use crate::failure::Failure;
use crate::render::Report;
use crate::Globals;
use controlplane::adoption::{Adoption, Forget, HostFinding};
use controlplane::deploy::Receipts;

pub async fn adopt(
    g: &Globals,
    service: &str,
    env_name: &str,
    host: Option<&str>,
    apply: bool,
) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let store = store_for(&ctx, apply).await?;
    let verifier = verifier(&ctx)?;
    let d = deployer(&ctx, &store, &verifier);
    let ssh = ssh_client(&ctx, env)?;
    let fleet = connect(&ssh, &ctx, env).await?;
    let adoption = if apply {
        let key = receipt_key(&ctx)?;
        let log = receipts(&ctx);
        d.adopt(&fleet, env_name, service, host, &Receipts { log: &log, key: &key }).await.map_err(failure)?
    } else {
        let (adoption, _) = d.adoption(&fleet, env_name, service, host).await.map_err(failure)?;
        adoption
    };
    let text = render_adoption(&adoption, apply);
    let report = Report::new(text, serde_json::to_value(&adoption)?);
    // The dry run shows every host, and says (exit 4) that applying would be refused.
    if let Some(refusal) = adoption.refusal().filter(|_| !apply) {
        return Err(failure(refusal).with_output(report.text));
    }
    Ok(report)
}

fn render_adoption(a: &Adoption, applied: bool) -> String {
    let mut out = format!("adopt `{}` in `{}`{}:", a.service, a.environment, if applied { "" } else { " (dry run)" });
    for h in &a.hosts {
        let line = match &h.finding {
            HostFinding::Adopt { release_id, image, source_commit, signer_key_id } => format!(
                "{} {release_id}: {image}, commit {source_commit}, signed by {signer_key_id}",
                if applied { "adopted" } else { "+ adopt" }
            ),
            HostFinding::Recorded { release_id } => format!("  already recorded: {release_id}"),
            HostFinding::Nothing => "  nothing runs".into(),
            HostFinding::Refused { reason } => format!("! cannot adopt: {reason}"),
        };
        out.push_str(&format!("\n  {:<12} {line}", h.host));
    }
    let n = a.hosts.iter().filter(|h| matches!(h.finding, HostFinding::Adopt { .. })).count();
    match (&a.receipt, applied, n) {
        (Some(r), _, _) => out.push_str(&format!("\nrecorded as each host's release and way back; receipt {r}")),
        (None, _, 0) => out.push_str("\nnothing to adopt"),
        (None, false, _) => out.push_str(&format!(
            "\nnothing was recorded; `agentctl adopt {} --env {} --apply` records it",
            a.service, a.environment
        )),
        (None, true, _) => {}
    }
    out
}

pub async fn forget(g: &Globals, host: &str, env_name: &str, apply: bool) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    environment(&ctx, env_name)?;
    let store = store_for(&ctx, apply).await?;
    let verifier = verifier(&ctx)?;
    let d = deployer(&ctx, &store, &verifier);
    let forget = if apply {
        let key = receipt_key(&ctx)?;
        let log = receipts(&ctx);
        d.forget(env_name, host, &Receipts { log: &log, key: &key }).await.map_err(failure)?
    } else {
        d.forgetting(env_name, host).await.map_err(failure)?
    };
    Ok(Report::new(render_forget(&forget, apply), serde_json::to_value(&forget)?))
}

fn render_forget(f: &Forget, applied: bool) -> String {
    let mut out =
        format!("forget host `{}` in `{}`{}:", f.host, f.environment, if applied { "" } else { " (dry run)" });
    if f.services.is_empty() {
        out.push_str("\n  nothing is recorded for it");
        return out;
    }
    for s in &f.services {
        out.push_str(&format!("\n  {:<12} recorded history, oldest first: {}", s.service, s.history.join(" -> ")));
        if let Some(r) = &s.receipt {
            out.push_str(&format!("; retired (receipt {r})"));
        }
    }
    if !applied {
        out.push_str(&format!(
            "\nnothing was retired; `agentctl host forget {} --env {} --apply` retires it (the next promotion treats the host as new)",
            f.host, f.environment
        ));
    }
    out
}
