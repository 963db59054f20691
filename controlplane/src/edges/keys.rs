//! Cosign-format key pairs: ECDSA P-256, the private key encrypted as cosign does it
//! (scrypt + NaCl secretbox, PEM `ENCRYPTED SIGSTORE PRIVATE KEY`), the public key as
//! PKIX PEM. Used for release signatures and for receipts.

use sha2::{Digest as _, Sha256};
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::{CosignVerificationKey, SigStoreSigner, SigningScheme};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const SCHEME: SigningScheme = SigningScheme::ECDSA_P256_SHA256_ASN1;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a key pair: {0}")]
    Generate(String),
    #[error("cannot decrypt or parse private key `{}`: {detail}", path.display())]
    Private { path: PathBuf, detail: String },
    #[error("`{}` is a public key; signing needs the private key (the `.key` file of the pair)", path.display())]
    IsPublic { path: PathBuf },
    #[error("cannot parse public key `{name}`: {detail}")]
    Public { name: String, detail: String },
    #[error("refusing to overwrite `{}`", .0.display())]
    Exists(PathBuf),
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A signing key held in memory; it never leaves except encrypted.
pub struct SigningKey {
    signer: SigStoreSigner,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public.key_id)
    }
}

impl SigningKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        let signer = SCHEME.create_signer().map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_signer(signer).map_err(|e| KeyError::Generate(e.to_string()))
    }

    fn from_signer(signer: SigStoreSigner) -> Result<Self, sigstore::errors::SigstoreError> {
        let pem = signer.to_sigstore_keypair()?.public_key_to_pem()?;
        let public = PublicKey::from_pem("generated", &pem)
            .map_err(|e| sigstore::errors::SigstoreError::KeyParseError(e.to_string()))?;
        Ok(Self { signer, public })
    }

    /// Decrypts a cosign-format private key (ours or `cosign generate-key-pair`'s).
    pub fn from_encrypted_pem(path: &Path, pem: &[u8], password: &[u8]) -> Result<Self, KeyError> {
        if is_public_key(pem) {
            return Err(KeyError::IsPublic { path: path.to_path_buf() });
        }
        let err =
            |e: sigstore::errors::SigstoreError| KeyError::Private { path: path.to_path_buf(), detail: e.to_string() };
        let pair = SigStoreKeyPair::from_encrypted_pem(pem, password).map_err(err)?;
        let signer = pair.to_sigstore_signer(&SCHEME).map_err(err)?;
        Self::from_signer(signer).map_err(err)
    }

    /// Reads and decrypts the private key at `path`.
    pub fn load(path: &Path, password: &[u8]) -> Result<Self, KeyError> {
        let pem =
            Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?);
        Self::from_encrypted_pem(path, &pem, password)
    }

    pub fn encrypted_pem(&self, password: &[u8]) -> Result<Zeroizing<String>, KeyError> {
        self.signer
            .to_sigstore_keypair()
            .and_then(|k| k.private_key_to_encrypted_pem(password))
            .map_err(|e| KeyError::Generate(e.to_string()))
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// ECDSA P-256 over SHA-256 of `msg`, ASN.1 DER (what `cosign sign-blob` produces).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.signer.sign(msg).expect("ECDSA signing over a byte string does not fail")
    }

    /// Writes `PREFIX.key` (encrypted, mode 0600) and `PREFIX.pub`; refuses to overwrite.
    pub fn write_pair(&self, prefix: &Path, password: &[u8]) -> Result<(PathBuf, PathBuf), KeyError> {
        let key = with_suffix(prefix, "key");
        let public = with_suffix(prefix, "pub");
        for p in [&key, &public] {
            if p.exists() {
                return Err(KeyError::Exists(p.clone()));
            }
        }
        write_new(&key, self.encrypted_pem(password)?.as_bytes(), 0o600)?;
        write_new(&public, self.public.pem.as_bytes(), 0o644)?;
        Ok((key, public))
    }
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Creates `path` (never overwriting) with `mode`, writes and syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let werr = |source| KeyError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            werr(e)
        }
    })?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(werr)
}

/// A trusted public key, with the id receipts and releases refer to it by.
#[derive(Clone)]
pub struct PublicKey {
    /// The uncompressed P-256 point, for verification through aws-lc (the same library
    /// rustls uses here): several times faster than the pure-Rust path, which matters
    /// when an auditor checks a chain of ten thousand receipts.
    point: Vec<u8>,
    pem: String,
    /// `sha256:` of the DER (SubjectPublicKeyInfo) encoding.
    pub key_id: String,
    /// Where it came from, for messages.
    pub name: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {})", self.name, self.key_id)
    }
}

impl PublicKey {
    pub fn from_pem(name: &str, pem: &str) -> Result<Self, KeyError> {
        let err = |detail: String| KeyError::Public { name: name.to_owned(), detail };
        // sigstore validates that this is a P-256 public key in PKIX form.
        CosignVerificationKey::from_pem(pem.as_bytes(), &SCHEME).map_err(|e| err(e.to_string()))?;
        let der = pem_body(pem).ok_or_else(|| err("no PEM body".into()))?;
        // A P-256 SubjectPublicKeyInfo ends with the 65-byte uncompressed point.
        let point = der
            .get(der.len().saturating_sub(65)..)
            .filter(|p| der.len() == 91 && p[0] == 4)
            .ok_or_else(|| err("not an uncompressed P-256 key".into()))?
            .to_vec();
        let key_id = format!("sha256:{}", hex::encode(Sha256::digest(&der)));
        Ok(Self { point, pem: pem.to_owned(), key_id, name: name.to_owned() })
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem =
            std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        Self::from_pem(&path.display().to_string(), &pem)
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// True when `signature` (ASN.1 DER) is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point).verify(msg, signature).is_ok()
    }
}

/// True when `bytes` hold a public key rather than a private one: a PEM `PUBLIC KEY`
/// block, or an OpenSSH public key line (`ssh-ed25519 AAAA…`, `ecdsa-sha2-…`,
/// `sk-…`). What an operator hands over by mistake where a private key belongs.
pub fn is_public_key(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let first = text.trim_start();
    first.starts_with("-----BEGIN PUBLIC KEY-----")
        || ["ssh-", "ecdsa-sha2-", "sk-"].iter().any(|p| first.starts_with(p))
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()
}

impl crate::receipt::SignatureCheck for PublicKey {
    fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        PublicKey::verify(self, msg, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigstore::crypto::Signature;

    #[test]
    fn generate_encrypt_load_sign_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (priv_path, pub_path) = key.write_pair(&dir.path().join("k"), b"pw").unwrap();
        let pem = std::fs::read_to_string(&priv_path).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"), "{pem}");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&priv_path).unwrap().permissions().mode() & 0o777, 0o600);

        let loaded = SigningKey::load(&priv_path, b"pw").unwrap();
        assert!(SigningKey::load(&priv_path, b"wrong").is_err());
        let public = PublicKey::load(&pub_path).unwrap();
        assert_eq!(public.key_id, key.public().key_id);

        let sig = loaded.sign(b"hello");
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellO", &sig));
        let other = SigningKey::generate().unwrap();
        assert!(!other.public().verify(b"hello", &sig));

        // The fast path agrees with sigstore's own verification.
        let sigstore_key = CosignVerificationKey::from_pem(public.pem().as_bytes(), &SCHEME).unwrap();
        assert!(sigstore_key.verify_signature(Signature::Raw(&sig), b"hello").is_ok());
        assert!(sigstore_key.verify_signature(Signature::Raw(&sig), b"hellO").is_err());

        assert!(matches!(key.write_pair(&dir.path().join("k"), b"pw"), Err(KeyError::Exists(_))));
    }

    /// `sign --key cosign.pub`: named as a public key, not a PEM decryption error.
    #[test]
    fn a_public_key_given_as_the_private_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = SigningKey::generate().unwrap().write_pair(&dir.path().join("k"), b"").unwrap();
        let err = SigningKey::load(&public, b"").unwrap_err();
        assert!(matches!(err, KeyError::IsPublic { .. }), "{err:?}");
        assert!(err.to_string().contains("is a public key"), "{err}");
        assert!(!is_public_key(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        assert!(is_public_key(b"ssh-ed25519 AAAAC3Nza bob@example"));
    }
}
