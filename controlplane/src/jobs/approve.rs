//! Recording an approval: the signature verified against the environment's approvers and
//! the statement checked against the plan, then stored and signed into the receipt chain.
//! `apply` verifies every stored approval again (`deploy::Deployer::apply`).

use crate::approval::{Statement, NAMESPACE};
use crate::keys::SigningKey;
use crate::manifest::Environment;
use crate::receipt::{ApprovalRecord, ReceiptBody, ReceiptKind};
use crate::receipt_log::{ReceiptError, ReceiptLog};
use crate::store::{Approval, Store, StoreError};
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    #[error("the approval does not count: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
}

impl ApproveError {
    /// What to do about a refusal.
    pub fn hint(&self, env: &Environment) -> Option<String> {
        match self {
            Self::Refused(why) if why.contains("separation of duties") => {
                Some(format!("another approver of `{}` signs it (`agentctl approve PLAN.json --key KEY`)", env.name))
            }
            Self::Refused(_) => {
                Some(format!("sign with a key listed in `{}`'s approvers, in namespace `{NAMESPACE}`", env.name))
            }
            _ => None,
        }
    }
}

/// The plan an approval is for: its id and who made it.
#[derive(Debug, Clone, Copy)]
pub struct Approving<'a> {
    pub plan_id: &'a str,
    pub author: &'a str,
}

/// The approver's name, when `signature` over `statement` is by one of `env`'s approvers,
/// the statement approves `plan.plan_id`, and the approval can count: an approval by the
/// plan's own author, where the environment does not let authors approve, is refused
/// now rather than ignored at apply.
pub fn verify(
    env: &Environment,
    plan: Approving<'_>,
    statement: &str,
    signature: &str,
) -> Result<String, ApproveError> {
    let who = crate::sshsig::verify(&env.approvers, statement.as_bytes(), signature).map_err(ApproveError::Refused)?;
    let st = Statement::parse(statement.as_bytes()).map_err(ApproveError::Refused)?;
    if st.plan_id != plan.plan_id {
        return Err(ApproveError::Refused(format!("it approves plan `{}`, not `{}`", st.plan_id, plan.plan_id)));
    }
    if !env.author_may_approve && who == plan.author {
        return Err(ApproveError::Refused(format!(
            "`{who}` made this plan, and `{}` needs its approvals from someone other than the plan's author (separation of duties)",
            env.name
        )));
    }
    Ok(who)
}

/// Where a recorded approval goes.
pub struct Record<'a> {
    pub store: &'a dyn Store,
    pub log: &'a ReceiptLog,
    pub key: &'a SigningKey,
    /// Who records it (the operator), for the receipt.
    pub operator: &'a str,
    pub now: DateTime<Utc>,
}

/// Verifies and records an approval; the receipt's file name and the approver.
pub async fn record(
    to: &Record<'_>,
    env: &Environment,
    plan: Approving<'_>,
    statement: &str,
    signature: &str,
) -> Result<(String, String), ApproveError> {
    let approver = verify(env, plan, statement, signature)?;
    let plan_id = plan.plan_id;
    to.store
        .approve(&Approval {
            plan_id: plan_id.into(),
            approver: approver.clone(),
            approved_at: to.now,
            statement: statement.into(),
            signature: signature.into(),
        })
        .await?;
    let st = Statement::parse(statement.as_bytes()).ok();
    let body = ReceiptBody {
        rollout: None,
        kind: ReceiptKind::Approval,
        time: to.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        operator: to.operator.into(),
        plan_id: Some(plan_id.into()),
        environment: st.as_ref().map(|s| s.environment.clone()),
        service: st.as_ref().map(|s| s.service.clone()),
        release: None,
        hosts: vec![],
        approvals: vec![ApprovalRecord {
            approver: approver.clone(),
            at: to.now.to_rfc3339(),
            statement: Some(statement.into()),
            signature: Some(signature.into()),
        }],
        outcome: "recorded".into(),
        detail: None,
    };
    let r = to.log.append(body, to.key, to.store).await?;
    Ok((r.file_name(), approver))
}
