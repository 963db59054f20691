//! A held connection: an in-process SSH client (russh) for the watch, which keeps one
//! connection per host open for hours. OpenSSH's control master costs a process (about
//! 1.4 MiB) per host; a held session here is a task and a few buffers. Same contract as
//! the multiplexed edge ([`crate::ssh`]): the host key is pinned from the manifests (an
//! exact match of the key, nothing learned), our identity only, output bounded.
//!
//! `status` and `apply` keep OpenSSH (`ssh` and its master): the watch's fresh-connection
//! check goes through OpenSSH too, so a host that only this client could reach is still
//! reported.

use crate::manifest::Host;
use crate::remote::RemoteCommand;
use crate::ssh::{CommandOutput, Remote, SshError};
use crate::untrusted::HostText;
use async_trait::async_trait;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What stderr is kept to, as on the multiplexed edge.
const STDERR_LIMIT: usize = 64 * 1024;

/// The client side shared by every held connection of a run.
#[derive(Debug)]
pub struct HeldClient {
    identity: Arc<PrivateKey>,
    /// The algorithms for every host; the host key algorithm is each host's pinned key's.
    preferred: russh::Preferred,
    connect_timeout: Duration,
}

/// The host key algorithms that present `key`: its own, and for RSA the SHA-2 signature
/// algorithms (`rsa-sha2-512`, `rsa-sha2-256`; never SHA-1 `ssh-rsa`).
fn host_key_algorithms(key: &PublicKey) -> Vec<russh::keys::Algorithm> {
    use russh::keys::{Algorithm, HashAlg};
    let a = key.algorithm();
    if a.clone().is_rsa() {
        vec![Algorithm::Rsa { hash: Some(HashAlg::Sha512) }, Algorithm::Rsa { hash: Some(HashAlg::Sha256) }]
    } else {
        vec![a]
    }
}

impl HeldClient {
    /// Reads the identity and settles the algorithms. `key_exchange` restricts key exchange
    /// as `ssh.key_exchange` does for OpenSSH; names this client does not implement are
    /// skipped, and a list with none it implements is refused.
    pub fn new(identity: &Path, key_exchange: Option<&[String]>, connect_timeout: Duration) -> Result<Self, SshError> {
        let identity = russh::keys::load_secret_key(identity, None)
            .map_err(|e| SshError::Identity { path: identity.to_path_buf(), detail: e.to_string() })?;
        let mut preferred = russh::Preferred::default();
        if let Some(names) = key_exchange.filter(|n| !n.is_empty()) {
            let mut kex: Vec<russh::kex::Name> =
                names.iter().filter_map(|n| russh::kex::Name::try_from(n.as_str()).ok()).collect();
            if kex.is_empty() {
                return Err(SshError::Connect {
                    host: "(every host)".into(),
                    detail: HostText::new(&format!(
                        "none of ssh.key_exchange ({}) is implemented by the watch's SSH client; add curve25519-sha256 or mlkem768x25519-sha256",
                        names.join(", ")
                    )),
                });
            }
            // The protocol extensions ride in the same list; keep them.
            kex.extend([russh::kex::EXTENSION_SUPPORT_AS_CLIENT, russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT]);
            preferred.kex = kex.into();
        }
        Ok(Self { identity: Arc::new(identity), preferred, connect_timeout })
    }

    /// The client configuration for a host whose pinned key is `pinned`: only its
    /// algorithms are offered, so a host with several host keys presents the pinned one.
    fn config(&self, pinned: &PublicKey) -> Arc<client::Config> {
        let mut preferred = self.preferred.clone();
        preferred.key = host_key_algorithms(pinned).into();
        Arc::new(client::Config {
            preferred,
            // A held connection that stops answering is noticed by the probes' own
            // timeouts; keepalives make a silent peer an error sooner.
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            inactivity_timeout: None,
            ..Default::default()
        })
    }

    /// Opens and authenticates a held connection to `host`.
    #[tracing::instrument(skip_all, fields(host = %host.name))]
    pub async fn hold(&self, host: &Host) -> Result<HeldSession, SshError> {
        let name = host.name.to_string();
        let connect_err = |detail: String| SshError::Connect { host: name.clone(), detail: HostText::new(&detail) };
        let expected = PublicKey::from_openssh(&host.host_key.to_string())
            .map_err(|e| connect_err(format!("the pinned host key cannot be read: {e}")))?;
        if expected.algorithm().is_rsa() {
            // russh checks a host's RSA signature only with its `rsa` feature, whose
            // dependency does not build in this release line (russh#628): say so.
            return Err(SshError::UnsupportedHostKey { host: name.clone() });
        }
        let config = self.config(&expected);
        let mismatch = Arc::new(AtomicBool::new(false));
        let pinned = Pinned { expected, mismatch: mismatch.clone() };
        let secs = self.connect_timeout.as_secs();
        let work = async {
            let addr = (host.address.as_str(), host.port);
            let mut handle = match client::connect(config, addr, pinned).await {
                Ok(h) => h,
                Err(_) if mismatch.load(Ordering::SeqCst) => {
                    return Err(SshError::HostKeyMismatch { host: name.clone() })
                }
                Err(russh::Error::NoCommonAlgo { kind: russh::AlgorithmKind::Key, ours, theirs }) => {
                    return Err(SshError::HostKeyAlgorithm {
                        host: name.clone(),
                        pinned: ours.join(", "),
                        offered: HostText::new(&theirs.join(", ")),
                    })
                }
                Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(SshError::Refused { host: name.clone() })
                }
                Err(e) => return Err(connect_err(e.to_string())),
            };
            let hash = handle.best_supported_rsa_hash().await.map_err(|e| connect_err(e.to_string()))?.flatten();
            let key = PrivateKeyWithHashAlg::new(self.identity.clone(), hash);
            let auth = handle.authenticate_publickey(host.user.to_string(), key).await;
            match auth {
                Ok(r) if r.success() => Ok(handle),
                Ok(_) => Err(SshError::AuthFailed { host: name.clone(), user: host.user.to_string() }),
                Err(e) => Err(connect_err(e.to_string())),
            }
        };
        let handle = tokio::time::timeout(self.connect_timeout, work)
            .await
            .map_err(|_| SshError::Timeout { host: name.clone(), secs })??;
        Ok(HeldSession { host: host.clone(), handle })
    }
}

/// Accepts exactly the pinned key.
struct Pinned {
    expected: PublicKey,
    mismatch: Arc<AtomicBool>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, offered: &PublicKey) -> Result<bool, Self::Error> {
        let same = offered.key_data() == self.expected.key_data();
        if !same {
            self.mismatch.store(true, Ordering::SeqCst);
        }
        Ok(same)
    }
}

/// One open connection to one host; each command is a channel on it.
pub struct HeldSession {
    host: Host,
    handle: Handle<Pinned>,
}

impl std::fmt::Debug for HeldSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSession").field("host", &self.host.name).finish_non_exhaustive()
    }
}

impl HeldSession {
    /// Whether the connection has ended (the peer went away or a keepalive failed).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

#[async_trait]
impl Remote for HeldSession {
    fn host(&self) -> &Host {
        &self.host
    }

    async fn run(
        &self,
        cmd: &RemoteCommand,
        stdin: Option<&[u8]>,
        limit: usize,
        timeout: Duration,
    ) -> Result<CommandOutput, SshError> {
        let host = self.host.name.to_string();
        let run_err = |detail: String| SshError::Run { host: host.clone(), detail: HostText::new(&detail) };
        let work = async {
            let mut channel = self.handle.channel_open_session().await.map_err(|e| run_err(e.to_string()))?;
            channel.exec(true, cmd.shell_line()).await.map_err(|e| run_err(e.to_string()))?;
            if let Some(data) = stdin {
                channel.data(data).await.map_err(|e| run_err(e.to_string()))?;
            }
            channel.eof().await.map_err(|e| run_err(e.to_string()))?;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let (mut status, mut signalled, mut closed) = (None, false, false);
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        if stdout.len() + data.len() > limit {
                            return Err(SshError::OutputTooLarge { host: host.clone(), limit });
                        }
                        stdout.extend_from_slice(&data);
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        let room = STDERR_LIMIT.saturating_sub(stderr.len());
                        stderr.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status as i32),
                    ChannelMsg::ExitSignal { .. } => signalled = true,
                    ChannelMsg::Close => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
            if status.is_none() && !signalled && !closed {
                return Err(run_err("the connection ended before the command finished".into()));
            }
            Ok((status, stdout, stderr))
        };
        let (status, stdout, stderr) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| SshError::Timeout { host: host.clone(), secs: timeout.as_secs() })??;
        Ok(CommandOutput { status, stdout, stderr: String::from_utf8_lossy(&stderr).into_owned() })
    }

    async fn close(self: Box<Self>) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }
}
