//! `agentctl approve PLAN.json`: an SSH-signed approval by one of the environment's approvers.

use super::context::Context;
use super::deploy::{environment, read_plan, receipt_key, receipts};
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::approval::{Statement, NAMESPACE};
use controlplane::manifest::Environment;
use controlplane::plan::SavedPlan;
use controlplane::receipt::{ApprovalRecord, ReceiptBody, ReceiptKind};
use controlplane::store::{Approval, Store};
use std::path::{Path, PathBuf};

/// How the statement gets signed.
pub enum How {
    /// With this OpenSSH private key file.
    Key(PathBuf),
    /// Not here: print the statement to sign.
    PrintStatement,
    /// Elsewhere, already: record this statement and signature.
    Signed { statement: PathBuf, signature: PathBuf },
}

/// An approval as a file travels between control planes.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalFile {
    pub statement: String,
    pub signature: String,
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::new(Code::Invalid, anyhow::Error::new(e).context(format!("cannot read `{}`", path.display())))
    })
}

/// The statement an approval of `saved` signs now.
fn statement(env: &Environment, saved: &SavedPlan) -> Statement {
    let p = &saved.plan;
    let digest = &p.release.facts.digest;
    Statement::approving(
        saved.plan_id.as_str(),
        &p.environment,
        &p.service,
        digest,
        chrono::Utc::now(),
        env.approval_valid_secs,
    )
}

/// Verifies an approval against `env`'s approvers and `plan_id`: the approver's name.
pub fn verify(env: &Environment, plan_id: &str, statement: &str, signature: &str) -> Result<String, Failure> {
    let refused = |why: String| {
        Failure::new(Code::Refused, anyhow::anyhow!("the approval does not count: {why}"))
            .hint(format!("sign with a key listed in `{}`'s approvers, in namespace `{NAMESPACE}`", env.name))
    };
    let who = controlplane::sshsig::verify(&env.approvers, statement.as_bytes(), signature).map_err(refused)?;
    let st = Statement::parse(statement.as_bytes()).map_err(refused)?;
    if st.plan_id != plan_id {
        return Err(refused(format!("it approves plan `{}`, not `{plan_id}`", st.plan_id)));
    }
    Ok(who)
}

/// Records a verified approval in the store and the receipt chain.
pub async fn record(
    ctx: &Context,
    store: &dyn Store,
    plan_id: &str,
    approver: &str,
    file: &ApprovalFile,
) -> Result<String, Failure> {
    let now = chrono::Utc::now();
    store
        .approve(&Approval {
            plan_id: plan_id.into(),
            approver: approver.into(),
            approved_at: now,
            statement: file.statement.clone(),
            signature: file.signature.clone(),
        })
        .await?;
    let st = Statement::parse(file.statement.as_bytes()).ok();
    let body = ReceiptBody {
        kind: ReceiptKind::Approval,
        time: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        operator: ctx.operator(),
        plan_id: Some(plan_id.into()),
        environment: st.as_ref().map(|s| s.environment.clone()),
        service: st.as_ref().map(|s| s.service.clone()),
        release: None,
        hosts: vec![],
        approvals: vec![ApprovalRecord {
            approver: approver.into(),
            at: now.to_rfc3339(),
            statement: Some(file.statement.clone()),
            signature: Some(file.signature.clone()),
        }],
        outcome: "recorded".into(),
        detail: None,
    };
    let r = receipts(ctx).append(body, &receipt_key(ctx)?, Some(store)).await?;
    Ok(r.file_name())
}

pub async fn run(g: &Globals, plan: &Path, how: How, out: Option<&Path>) -> Result<Report, Failure> {
    let saved = read_plan(plan)?;
    let ctx = Context::load(g)?;
    let env = environment(&ctx, &saved.plan.environment)?;
    let file = match how {
        How::PrintStatement => {
            let st = statement(env, &saved);
            let text = String::from_utf8_lossy(&st.to_bytes()).into_owned();
            return Ok(Report::new(text.trim_end().to_owned(), serde_json::to_value(&st)?));
        }
        How::Key(key) => {
            let st = statement(env, &saved);
            let signature = controlplane::sshsig::sign(&key, &st).map_err(|e| {
                let hint = format!("for an encrypted key or an agent: `agentctl approve {} --print-statement > st`, `ssh-keygen -Y sign -f KEY -n {NAMESPACE} st`, then `--statement st --signature st.sig`", plan.display());
                Failure::new(Code::Invalid, e).hint(hint)
            })?;
            ApprovalFile { statement: String::from_utf8_lossy(&st.to_bytes()).into_owned(), signature }
        }
        How::Signed { statement, signature } => {
            ApprovalFile { statement: read(&statement)?, signature: read(&signature)? }
        }
    };
    let plan_id = saved.plan_id.to_string();
    let approver = verify(env, &plan_id, &file.statement, &file.signature)?;
    let store = ctx.store().await?;
    let receipt = record(&ctx, &store, &plan_id, &approver, &file).await?;
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_vec_pretty(&file)?).map_err(|e| {
            Failure::new(Code::Failed, anyhow::Error::new(e).context(format!("cannot write `{}`", out.display())))
        })?;
    }
    Ok(Report::new(
        format!("approved plan {plan_id} as `{approver}` (SSH signature verified); receipt {receipt}"),
        serde_json::json!({ "plan_id": plan_id, "approver": approver, "receipt": receipt }),
    ))
}
