//! `agentctl keys generate`.

use crate::failure::{Code, Failure};
use crate::render::Report;
use controlplane::keys::{KeyError, SigningKey};
use std::path::Path;

pub fn generate(prefix: &Path) -> Result<Report, Failure> {
    let Ok(password) = std::env::var("COSIGN_PASSWORD") else {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("`COSIGN_PASSWORD` is not set"))
            .hint("set it to the password that encrypts the private key (it may be empty: `COSIGN_PASSWORD= agentctl keys generate ...`)"));
    };
    let key = SigningKey::generate()?;
    let (private, public) = key.write_pair(prefix, password.as_bytes()).map_err(|e| match e {
        KeyError::Exists(_) => {
            Failure::new(Code::Invalid, e).hint("choose another `--out` prefix; keys are never overwritten")
        }
        other => Failure::new(Code::Failed, other),
    })?;
    let id = &key.public().key_id;
    Ok(Report::new(
        format!(
            "wrote private key `{}` (encrypted) and public key `{}`\nkey id: {id}",
            private.display(),
            public.display()
        ),
        serde_json::json!({ "private_key": private, "public_key": public, "key_id": id }),
    ))
}
