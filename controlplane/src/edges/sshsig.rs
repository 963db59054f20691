//! SSH signatures (`sshsig`, as `ssh-keygen -Y sign` makes them) over approval
//! statements, with the `ssh-key` crate: signing with an operator's key file, and
//! verifying against an environment's `allowed_signers`.

use crate::approval::{AllowedSigner, Statement, NAMESPACE};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SshSigError {
    #[error("cannot read the SSH key `{}`", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("the SSH key `{}` is encrypted", path.display())]
    Encrypted { path: std::path::PathBuf },
    #[error("`{}` is a public key; signing needs the private key", path.display())]
    IsPublic { path: std::path::PathBuf },
    #[error("cannot sign with `{}`", path.display())]
    Sign {
        path: std::path::PathBuf,
        #[source]
        source: ssh_key::Error,
    },
}

/// Signs `statement` with the private key at `path` (OpenSSH format, unencrypted); the
/// PEM `-----BEGIN SSH SIGNATURE-----` text.
pub fn sign(path: &Path, statement: &Statement) -> Result<String, SshSigError> {
    if std::fs::read(path).is_ok_and(|b| crate::keys::is_public_key(&b)) {
        return Err(SshSigError::IsPublic { path: path.to_owned() });
    }
    let key =
        PrivateKey::read_openssh_file(path).map_err(|source| SshSigError::Read { path: path.to_owned(), source })?;
    if key.is_encrypted() {
        return Err(SshSigError::Encrypted { path: path.to_owned() });
    }
    let sig = key
        .sign(NAMESPACE, HashAlg::Sha512, &statement.to_bytes())
        .map_err(|source| SshSigError::Sign { path: path.to_owned(), source })?;
    sig.to_pem(LineEnding::LF).map_err(|source| SshSigError::Sign { path: path.to_owned(), source })
}

/// Verifies `signature` over `statement` against `signers`; the approver's name, or why
/// the signature does not count.
pub fn verify(signers: &[AllowedSigner], statement: &[u8], signature: &str) -> Result<String, String> {
    let sig = SshSig::from_pem(signature.trim()).map_err(|e| format!("not an SSH signature: {e}"))?;
    if sig.namespace() != NAMESPACE {
        return Err(format!("signed for namespace `{}`, not `{NAMESPACE}`", sig.namespace()));
    }
    let signer_key = PublicKey::from(sig.public_key().clone());
    for s in signers {
        let Ok(listed) = PublicKey::from_openssh(&s.key) else { continue };
        if listed.key_data() != sig.public_key() {
            continue;
        }
        if s.namespaces.as_ref().is_some_and(|n| !n.iter().any(|x| x == NAMESPACE)) {
            return Err(format!("`{}` may not sign approvals (namespaces)", s.principals[0]));
        }
        return match listed.verify(NAMESPACE, statement, &sig) {
            Ok(()) => Ok(s.principals[0].clone()),
            Err(_) => Err(format!("the signature by `{}` does not verify (statement edited?)", s.principals[0])),
        };
    }
    Err(format!(
        "signed by key {}, which is not one of the environment's approvers",
        signer_key.fingerprint(HashAlg::Sha256)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::parse_allowed_signers;

    fn key(dir: &Path, who: &str) -> (std::path::PathBuf, String) {
        let path = dir.join(who);
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", who, "-f"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        (path, public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    }

    fn statement() -> Statement {
        Statement::approving("sha256:p", "prod", "api", "sha256:d", chrono::Utc::now(), 3600)
    }

    #[test]
    fn a_signature_counts_only_for_a_listed_key_allowed_this_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let (carol, carol_pub) = key(dir.path(), "carol");
        let st = statement();
        let sig = sign(&carol, &st).unwrap();
        let bytes = st.to_bytes();
        let listed = parse_allowed_signers(&format!("carol {carol_pub}")).unwrap();
        assert_eq!(verify(&listed, &bytes, &sig), Ok("carol".to_owned()));
        // The key may sign for other namespaces only (e.g. git commits).
        let git_only = parse_allowed_signers(&format!("carol namespaces=\"git\" {carol_pub}")).unwrap();
        assert!(verify(&git_only, &bytes, &sig).unwrap_err().contains("may not sign approvals"));
        // An edited statement no longer verifies.
        let mut edited = st.clone();
        edited.plan_id = "sha256:other".into();
        assert!(verify(&listed, &edited.to_bytes(), &sig).unwrap_err().contains("does not verify"));
        // Another key is not an approver.
        let (_, dave_pub) = key(dir.path(), "dave");
        let dave = parse_allowed_signers(&format!("dave {dave_pub}")).unwrap();
        assert!(verify(&dave, &bytes, &sig).unwrap_err().contains("not one of the environment's approvers"));
    }

    /// `approve --key bob.pub`: named as a public key, not an OpenSSH parse error.
    #[test]
    fn a_public_key_given_to_sign_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (bob, _) = key(dir.path(), "bob");
        let public = bob.with_extension("pub");
        let err = sign(&public, &statement()).unwrap_err();
        assert!(matches!(err, SshSigError::IsPublic { .. }), "{err:?}");
        assert!(err.to_string().contains("is a public key"), "{err}");
    }
}
