//! `agentctl init [DIR]`.

use crate::failure::{Code, Failure};
use crate::render::Report;
use controlplane::init::{scaffold, InitError};
use std::path::Path;

/// Environment variable whose value encrypts the scaffolded private keys.
pub const PASSWORD_ENV: &str = "AGENTCTL_RECEIPT_KEY_PASSWORD";

pub async fn run(dir: &Path) -> Result<Report, Failure> {
    let password = std::env::var(PASSWORD_ENV).unwrap_or_default();
    if password.is_empty() {
        tracing::warn!("{PASSWORD_ENV} is not set: the private keys are encrypted with an empty password");
    }
    let report = scaffold(dir, password.as_bytes()).await.map_err(|e| match e {
        InitError::Exists(_) => Failure::new(Code::Invalid, e)
            .hint("run `init` in an empty directory, or use the manifest set that is there"),
        other => Failure::new(Code::Failed, other),
    })?;
    let text = format!(
        "initialized `{}`\n  manifests:  {}\n  state:      {}\n  receipts:   {}\n  receipt key: {} (public: {})\n  release key: {} (public: {})\n  ssh key:    {}\nnext: edit the hosts in {}/environments, then run `agentctl --manifests {} check`",
        dir.display(),
        report.manifests.display(),
        report.state_db.display(),
        report.receipts.display(),
        report.receipt_key.display(),
        report.receipt_public_key.display(),
        report.release_key.display(),
        report.release_public_key.display(),
        report.ssh_identity.display(),
        report.manifests.display(),
        report.manifests.display(),
    );
    Ok(Report::new(text, serde_json::to_value(&report)?))
}
