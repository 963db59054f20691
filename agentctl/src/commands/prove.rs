//! `agentctl prove ENV` (readiness) and `agentctl prove egress SERVICE --env ENV`.

use super::context::Context;
use super::context::{environment, receipt_key, receipts};
use super::deploy::{connect, failure, ssh_client};
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::egress_proof;
use controlplane::names::ServiceName;

pub async fn egress(g: &Globals, service_name: &str, env_name: &str) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let service = ServiceName::new(service_name)
        .ok()
        .and_then(|n| ctx.set.service(&n))
        .ok_or_else(|| Failure::new(Code::Invalid, anyhow::anyhow!("no service `{service_name}` in the manifests")))?;
    if !service.connects_as_workload() {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("service `{service_name}` names no `egress_connect` command"))
            .hint("add `egress_connect = [\"agent-runtime\", \"connect\"]` (called as `… SERVICE ADDRESS PORT`) to its manifest"));
    }
    let expectations = egress_proof::expectations(env, service).await.map_err(failure)?;
    let ssh = ssh_client(&ctx, env)?;
    let fleet = connect(&ssh, &ctx, env).await?;
    let proofs = egress_proof::prove(&fleet, env, service, &expectations).await;
    fleet.close().await;

    let key = receipt_key(&ctx)?;
    let store = ctx.store().await?;
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = egress_proof::receipt_body(env, service, &ctx.operator(), time, &proofs);
    let receipt = receipts(&ctx).append(body, &key, &store).await?;

    let mut rows = Vec::new();
    for p in &proofs {
        for t in &p.tried {
            let e = &t.expectation;
            rows.push(vec![
                p.host.clone(),
                format!("{}:{}", e.addr, e.port),
                e.why.clone(),
                if e.allowed { "connects" } else { "refused" }.to_owned(),
                if t.connected { "connected" } else { "refused" }.to_owned(),
                if t.held() { "ok" } else { "FAIL" }.to_owned(),
            ]);
        }
        if let Some(err) = &p.error {
            rows.push(vec![p.host.clone(), "-".into(), "-".into(), "-".into(), err.to_string(), "FAIL".into()]);
        }
    }
    let held = proofs.iter().all(egress_proof::HostProof::held);
    let table = crate::render::table(&["HOST", "DESTINATION", "WHY", "EXPECTED", "RESULT", ""], rows);
    let text = format!(
        "egress of `{service_name}` in `{env_name}` as `{}`\n{table}\nreceipt {}",
        controlplane::egress::workload_user(service_name),
        receipt.file_name()
    );
    let json = serde_json::json!({ "held": held, "hosts": proofs, "receipt": receipt.file_name() });
    if held {
        Ok(Report::new(format!("{text}\nok: every expectation held on {} host(s)", proofs.len()), json))
    } else {
        let failed: Vec<String> =
            proofs.iter().filter(|p| !p.held()).map(|p| format!("{}: {}", p.host, p.failures().join("; "))).collect();
        let out = if g.json { serde_json::to_string_pretty(&json)? } else { text };
        Err(Failure::new(
            Code::Failed,
            anyhow::anyhow!("the egress proof failed on {} host(s): {}", failed.len(), failed.join(" | ")),
        )
        .with_output(out)
        .hint("`agentctl status` shows whether the loaded rules still match the release's; the runtime reloads them when the release is activated again (roll back and promote it)"))
    }
}

/// `prove ENV [--workflows DIR]`: every control, re-derived; the `readiness` receipt.
pub async fn readiness(
    g: &Globals,
    env_name: &str,
    workflows: Option<&std::path::Path>,
    receipt_keys: &[std::path::PathBuf],
) -> Result<Report, Failure> {
    use controlplane::readiness::{self, Outcome, Readiness};
    let ctx = Context::load(g)?;
    let env = environment(&ctx, env_name)?;
    let store = ctx.store().await?;
    let verifier = super::deploy::verifier(&ctx)?;
    let ssh = ssh_client(&ctx, env)?;
    let fleet = controlplane::vm::Fleet::connect(&ssh, &env.hosts, ctx.set.ssh.concurrency).await;
    let receipt_public = super::receipts::load_keys(receipt_keys, Some(&ctx))?;
    let log = receipts(&ctx);
    let controls = Readiness {
        set: &ctx.set,
        env,
        store: &store,
        verifier: &verifier,
        fleet: fleet.as_ref().map_err(|e| e.to_string()),
        receipts: &log,
        receipt_keys: &receipt_public,
        workflows,
    }
    .check()
    .await;
    if let Ok(f) = fleet {
        f.close().await;
    }
    let key = receipt_key(&ctx)?;
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let receipt = log.append(readiness::receipt_body(env, &ctx.operator(), time, &controls), &key, &store).await?;

    let rows: Vec<Vec<String>> = controls
        .iter()
        .map(|c| {
            vec![
                c.control.to_owned(),
                c.subject.clone(),
                c.outcome.as_str().to_owned(),
                c.evidence.to_string(),
                c.fix.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let table = crate::render::table(&["CONTROL", "SUBJECT", "RESULT", "EVIDENCE", "FIX"], rows);
    let ready = readiness::ready(&controls);
    let json = serde_json::json!({ "ready": ready, "environment": env_name, "controls": controls, "receipt": receipt.file_name() });
    let text = format!("readiness of `{env_name}`\n{table}\nreceipt {}", receipt.file_name());
    if ready {
        let held = controls.iter().filter(|c| c.outcome == Outcome::Holds).count();
        Ok(Report::new(format!("{text}\nok: `{env_name}` is ready ({held} control(s) hold)"), json))
    } else {
        let failed: Vec<String> = controls
            .iter()
            .filter(|c| c.outcome == Outcome::Fails)
            .map(|c| format!("{} ({})", c.control, c.subject))
            .collect();
        let out = if g.json { serde_json::to_string_pretty(&json)? } else { text };
        Err(Failure::new(
            Code::Refused,
            anyhow::anyhow!("`{env_name}` is not ready: {} control(s) fail: {}", failed.len(), failed.join(", ")),
        )
        .with_output(out)
        .hint("each failing row names its fix; the readiness receipt records this check"))
    }
}
