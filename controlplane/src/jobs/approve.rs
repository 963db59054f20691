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
        matches!(self, Self::Refused(_))
            .then(|| format!("sign with a key listed in `{}`'s approvers, in namespace `{NAMESPACE}`", env.name))
    }
}

/// The approver's name, when `signature` over `statement` is by one of `env`'s approvers
/// and the statement approves `plan_id`.
pub fn verify(env: &Environment, plan_id: &str, statement: &str, signature: &str) -> Result<String, ApproveError> {
    let who = crate::sshsig::verify(&env.approvers, statement.as_bytes(), signature).map_err(ApproveError::Refused)?;
    let st = Statement::parse(statement.as_bytes()).map_err(ApproveError::Refused)?;
    if st.plan_id != plan_id {
        return Err(ApproveError::Refused(format!("it approves plan `{}`, not `{plan_id}`", st.plan_id)));
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
    plan_id: &str,
    statement: &str,
    signature: &str,
) -> Result<(String, String), ApproveError> {
    let approver = verify(env, plan_id, statement, signature)?;
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
