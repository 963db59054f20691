//! `agentctl init [DIR]`.

use crate::failure::{Code, Failure};
use crate::render::Report;
use controlplane::init::{scaffold, InitError, Passwords};
use std::path::Path;

/// Environment variable whose value encrypts the scaffolded receipt key (the scaffolded
/// `controlplane.toml` names it as `receipt_key_password_env`).
pub const PASSWORD_ENV: &str = "AGENTCTL_RECEIPT_KEY_PASSWORD";
/// cosign's variable: it encrypts the scaffolded release-signing key, which `sign`,
/// `attest` and cosign itself decrypt with it.
pub const COSIGN_PASSWORD_ENV: &str = "COSIGN_PASSWORD";

pub async fn run(dir: &Path) -> Result<Report, Failure> {
    let receipt = std::env::var(PASSWORD_ENV).unwrap_or_default();
    let release = std::env::var(COSIGN_PASSWORD_ENV).unwrap_or_default();
    for (var, value) in [(PASSWORD_ENV, &receipt), (COSIGN_PASSWORD_ENV, &release)] {
        if value.is_empty() {
            tracing::warn!("{var} is not set: its key is encrypted with an empty password");
        }
    }
    let passwords = Passwords { receipt: receipt.as_bytes(), release: release.as_bytes() };
    let report = scaffold(dir, passwords).await.map_err(|e| match e {
        InitError::Exists(_) => Failure::new(Code::Invalid, e)
            .hint("run `init` in an empty directory, or use the manifest set that is there"),
        other => Failure::new(Code::Failed, other),
    })?;
    let text = format!(
        "initialized `{}`\n  manifests:  {}\n  state:      {}\n  receipts:   {}\n  receipt key: {} (public: {}; password: ${PASSWORD_ENV})\n  release key: {} (public: {}; password: ${COSIGN_PASSWORD_ENV})\n  ssh key:    {}\nnext: edit the hosts in {}/environments, then run `agentctl --manifests {} check`",
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
