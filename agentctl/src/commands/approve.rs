//! `agentctl approve PLAN.json`: an SSH-signed approval by one of the environment's approvers.

use super::context::Context;
use super::context::{environment, read_plan, receipt_key, receipts};
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::approval::{Statement, NAMESPACE};
use controlplane::jobs::approve;
use controlplane::manifest::Environment;
use controlplane::plan::SavedPlan;
use controlplane::store::Store;
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
    controlplane::bounded::read_to_string(path, controlplane::bounded::MAX_APPROVAL_BYTES).map_err(|e| {
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

fn approving(saved: &SavedPlan) -> approve::Approving<'_> {
    approve::Approving { plan_id: saved.plan_id.as_str(), author: &saved.plan.author }
}

/// Verifies and records an approval (store and receipt chain): the receipt and the approver.
pub async fn record(
    ctx: &Context,
    store: &dyn Store,
    env: &Environment,
    saved: &SavedPlan,
    file: &ApprovalFile,
) -> Result<(String, String), Failure> {
    let (key, log, operator) = (receipt_key(ctx)?, receipts(ctx), ctx.operator());
    let to = approve::Record { store, log: &log, key: &key, operator: &operator, now: chrono::Utc::now() };
    approve::record(&to, env, approving(saved), &file.statement, &file.signature).await.map_err(|e| {
        let hint = e.hint(env);
        let code = if matches!(e, approve::ApproveError::Refused(_)) { Code::Refused } else { Code::Failed };
        let f = Failure::new(code, e);
        match hint {
            Some(h) => f.hint(h),
            None => f,
        }
    })
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
                let hint = match &e {
                    controlplane::sshsig::SshSigError::IsPublic { path } => {
                        let private = path.to_string_lossy().strip_suffix(".pub").map(str::to_owned);
                        format!(
                            "give the private key: `agentctl approve {} --key {}` (the `.pub` is what `allowed_signers` lists)",
                            plan.display(),
                            private.as_deref().unwrap_or("~/.ssh/id_ed25519")
                        )
                    }
                    _ => format!("for an encrypted key or an agent: `agentctl approve {} --print-statement > st`, `ssh-keygen -Y sign -f KEY -n {NAMESPACE} st`, then `--statement st --signature st.sig`", plan.display()),
                };
                Failure::new(Code::Invalid, e).hint(hint)
            })?;
            ApprovalFile { statement: String::from_utf8_lossy(&st.to_bytes()).into_owned(), signature }
        }
        How::Signed { statement, signature } => {
            ApprovalFile { statement: read(&statement)?, signature: read(&signature)? }
        }
    };
    let plan_id = saved.plan_id.to_string();
    // Refused before anything is written (an unknown key, another plan).
    approve::verify(env, approving(&saved), &file.statement, &file.signature).map_err(|e| {
        let hint = e.hint(env).unwrap_or_default();
        Failure::new(Code::Refused, e).hint(hint)
    })?;
    let store = ctx.store().await?;
    let (receipt, approver) = record(&ctx, &store, env, &saved, &file).await?;
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
