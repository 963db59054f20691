//! The SSH edge: one multiplexed session per host (openssh with native-mux: a command is a
//! new channel on the master's control socket, not a new `ssh` process), host keys pinned
//! from the manifests, output bounded. The only module that imports openssh.

use crate::manifest::Host;
use crate::remote::RemoteCommand;
use crate::untrusted::HostText;
use async_trait::async_trait;
use openssh::{KnownHosts, SessionBuilder, Stdio};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("host `{host}` refused the connection")]
    Refused { host: String },
    #[error("host `{host}` did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("SECURITY: host `{host}` presented a host key that does not match the pinned key; not connecting")]
    HostKeyMismatch { host: String },
    #[error("host `{host}` offers no host key of the pinned key's type (we asked for {pinned}; it offers {offered}); not connecting. A host that lost its pinned key type may be an impostor: confirm its keys out of band (its console) before pinning another")]
    HostKeyAlgorithm { host: String, pinned: String, offered: HostText },
    #[error("host `{host}` is pinned by an RSA host key, which the watch's SSH client cannot check in this build (OpenSSH, for plans, applies and `status`, can); pin its ed25519 or ECDSA key (`ssh-keyscan -t ed25519,ecdsa HOST`)")]
    UnsupportedHostKey { host: String },
    #[error("host `{host}` rejected our SSH key for user `{user}`")]
    AuthFailed { host: String, user: String },
    #[error("cannot connect to host `{host}`: {detail}")]
    Connect { host: String, detail: HostText },
    #[error("command on host `{host}` failed to run: {detail}")]
    Run { host: String, detail: HostText },
    #[error("host `{host}` sent more than {limit} bytes of output")]
    OutputTooLarge { host: String, limit: usize },
    #[error("cannot use the SSH identity `{}` (`ssh.identity`: an unencrypted OpenSSH private key, as `ssh-keygen -N ''` writes): {detail}", path.display())]
    Identity { path: PathBuf, detail: String },
    #[error("cannot prepare SSH client files in `{}`", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SshError {
    /// Whether this may be someone else answering for the host: another key of the pinned
    /// type, or no key of that type at all (an impostor without the key offers another).
    pub fn is_security(&self) -> bool {
        matches!(self, Self::HostKeyMismatch { .. } | Self::HostKeyAlgorithm { .. })
    }

    /// Classifies what `ssh` printed when a connection failed.
    pub fn from_ssh_message(host: &Host, message: &str, timeout_secs: u64) -> Self {
        let host_name = host.name.to_string();
        let m = message.to_ascii_lowercase();
        if m.contains("no matching host key type") {
            // A failed negotiation, not another key: OpenSSH names the host's offer.
            let offer = message.split("Their offer:").nth(1).map(str::trim).unwrap_or("nothing it names");
            Self::HostKeyAlgorithm {
                host: host_name,
                pinned: host.host_key.algorithm.clone(),
                offered: HostText::new(offer.lines().next().unwrap_or("")),
            }
        } else if m.contains("host key verification failed") || m.contains("remote host identification has changed") {
            Self::HostKeyMismatch { host: host_name }
        } else if m.contains("connection refused") {
            Self::Refused { host: host_name }
        } else if m.contains("timed out") || m.contains("timeout") {
            Self::Timeout { host: host_name, secs: timeout_secs }
        } else if m.contains("permission denied") {
            Self::AuthFailed { host: host_name, user: host.user.to_string() }
        } else {
            Self::Connect { host: host_name, detail: HostText::new(message.trim().lines().last().unwrap_or("")) }
        }
    }
}

/// What a remote command produced, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// `None` when the remote process was killed by a signal.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Running commands on one host: what `apply` and `probe` need from SSH.
#[async_trait]
pub trait Remote: Send + Sync {
    fn host(&self) -> &Host;
    /// Runs `cmd` with `stdin`, keeping at most `limit` bytes of stdout, within `timeout`.
    async fn run(
        &self,
        cmd: &RemoteCommand,
        stdin: Option<&[u8]>,
        limit: usize,
        timeout: Duration,
    ) -> Result<CommandOutput, SshError>;
    /// Ends the connection.
    async fn close(self: Box<Self>);
}

/// OpenSSH's `HostKeyAlgorithms` for a pinned key of type `algorithm`: RSA keys sign with
/// SHA-2 (`rsa-sha2-512`, `rsa-sha2-256`), never SHA-1.
pub fn host_key_algorithms(algorithm: &str) -> String {
    match algorithm {
        "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256".to_owned(),
        other => other.to_owned(),
    }
}

/// The file name of `host`'s client configuration: by what is connected to (address, port,
/// user) and the pinned key's type — host names repeat across environments.
fn host_config_name(host: &Host) -> String {
    use sha2::Digest as _;
    let key = format!("{} {} {} {}", host.address, host.port, host.user, host.host_key.algorithm);
    format!("config.{}", &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..16])
}

/// The `known_hosts` line that pins `host`'s key.
pub fn known_hosts_line(host: &Host) -> String {
    let name = if host.port == 22 { host.address.clone() } else { format!("[{}]:{}", host.address, host.port) };
    format!("{name} {}", host.host_key)
}

/// Client-side files: a known_hosts with exactly the pinned keys, the identity.
#[derive(Debug)]
pub struct SshClient {
    dir: tempfile::TempDir,
    identity: PathBuf,
    connect_timeout: Duration,
}

impl SshClient {
    pub fn new<'a>(
        hosts: impl IntoIterator<Item = &'a Host>,
        identity: &Path,
        connect_timeout: Duration,
    ) -> Result<Self, SshError> {
        let tmp = std::env::temp_dir();
        let local = |source| SshError::Local { path: tmp.clone(), source };
        let dir = tempfile::Builder::new().prefix("agentctl-ssh-").tempdir().map_err(local)?;
        let hosts: Vec<&Host> = hosts.into_iter().collect();
        let lines: Vec<String> = hosts.iter().map(|h| known_hosts_line(h)).collect();
        std::fs::write(dir.path().join("known_hosts"), lines.join("\n") + "\n").map_err(local)?;
        std::fs::write(dir.path().join("config"), "").map_err(local)?;
        // Each host is asked for its pinned key's type only: a host with several host keys
        // presents the pinned one, and one without that type fails the negotiation (named
        // as such), never as another key.
        for h in &hosts {
            let text = format!(
                "HostKeyAlgorithms {}\nInclude {}\n",
                host_key_algorithms(&h.host_key.algorithm),
                dir.path().join("config").display()
            );
            std::fs::write(dir.path().join(host_config_name(h)), text).map_err(local)?;
        }
        Ok(Self { dir, identity: identity.to_path_buf(), connect_timeout })
    }

    /// The client configuration for `host` (its host key algorithms, then the shared file).
    fn config_for(&self, host: &Host) -> PathBuf {
        let own = self.dir.path().join(host_config_name(host));
        if own.exists() {
            own
        } else {
            self.dir.path().join("config")
        }
    }

    /// Restricts key exchange to `algorithms` (written into the client config that both
    /// the multiplexed sessions and the probes use). `None`/empty keeps OpenSSH's defaults.
    pub fn with_key_exchange(self, algorithms: Option<&[String]>) -> Result<Self, SshError> {
        let config = self.dir.path().join("config");
        let text = match algorithms {
            Some(a) if !a.is_empty() => format!("KexAlgorithms {}\n", a.join(",")),
            _ => String::new(),
        };
        std::fs::write(&config, text).map_err(|source| SshError::Local { path: config, source })?;
        Ok(self)
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `ssh` options for a fresh, non-multiplexed connection (used by probes).
    pub fn ssh_args(&self, host: &Host) -> Vec<String> {
        let secs = self.connect_timeout.as_secs().max(1);
        let o = |s: String| ["-o".to_owned(), s];
        let mut args = vec!["-F".to_owned(), self.config_for(host).display().to_string(), "-T".to_owned()];
        for opt in [
            "BatchMode=yes".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "ControlMaster=no".to_owned(),
            "ControlPath=none".to_owned(),
            format!("ConnectTimeout={secs}"),
            // INFO: OpenSSH reports a failed negotiation ("Unable to negotiate … Their
            // offer: …") at this level; ERROR would leave the failure without a reason.
            "LogLevel=INFO".to_owned(),
        ] {
            args.extend(o(opt));
        }
        args.extend(["-i".to_owned(), self.identity.display().to_string(), "-p".to_owned(), host.port.to_string()]);
        args.extend(["-l".to_owned(), host.user.to_string(), host.address.clone()]);
        args
    }

    /// Opens the one session used for every command to `host` in this run.
    #[tracing::instrument(skip_all, fields(host = %host.name))]
    pub async fn connect(&self, host: &Host) -> Result<SshSession, SshError> {
        let mut b = SessionBuilder::default();
        b.user(host.user.to_string())
            .port(host.port)
            .keyfile(&self.identity)
            .known_hosts_check(KnownHosts::Strict)
            .user_known_hosts_file(self.known_hosts())
            .config_file(self.config_for(host))
            .connect_timeout(self.connect_timeout)
            .control_directory(self.dir.path());
        let secs = self.connect_timeout.as_secs();
        let started = std::time::Instant::now();
        let session = tokio::time::timeout(self.connect_timeout + Duration::from_secs(5), b.connect_mux(&host.address))
            .await
            .map_err(|_| SshError::Timeout { host: host.name.to_string(), secs })?
            .map_err(|e| SshError::from_ssh_message(host, &error_chain(&e), secs))?;
        tracing::info!(address = %host.address, port = host.port, ms = started.elapsed().as_millis() as u64, "ssh connected (host key verified)");
        Ok(SshSession { host: host.clone(), session })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An open, multiplexed connection to one host.
#[derive(Debug)]
pub struct SshSession {
    host: Host,
    session: openssh::Session,
}

impl SshSession {
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

#[async_trait]
impl Remote for SshSession {
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
        let mut command = self.session.command(cmd.program.as_str());
        for a in &cmd.args {
            command.arg(a);
        }
        command
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let work = async {
            let mut child = command.spawn().await.map_err(|e| run_err(error_chain(&e)))?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin().take()) {
                pipe.write_all(data).await.map_err(|e| run_err(e.to_string()))?;
                pipe.shutdown().await.map_err(|e| run_err(e.to_string()))?;
            }
            let mut out = child.stdout().take().expect("stdout is piped");
            let mut err = child.stderr().take().expect("stderr is piped");
            let (stdout, stderr) = tokio::join!(read_bounded(&mut out, limit), read_bounded(&mut err, 64 * 1024));
            let stdout = stdout.map_err(|e| run_err(e.to_string()))?;
            let stderr = stderr.map_err(|e| run_err(e.to_string()))?;
            let status = child.wait().await.map_err(|e| run_err(error_chain(&e)))?;
            Ok::<_, SshError>((status, stdout, stderr))
        };
        let (status, stdout, stderr) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| SshError::Timeout { host: host.clone(), secs: timeout.as_secs() })??;
        let Some(stdout) = stdout else { return Err(SshError::OutputTooLarge { host, limit }) };
        let stderr = String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned();
        Ok(CommandOutput { status: status.code(), stdout, stderr })
    }

    async fn close(self: Box<Self>) {
        SshSession::close(*self).await;
    }
}

/// Reads at most `limit` bytes; `None` if there was more.
pub async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    (&mut *r).take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        // Drain the rest so the remote process is not blocked on a full pipe.
        tokio::io::copy(r, &mut tokio::io::sink()).await?;
        return Ok(None);
    }
    Ok(Some(buf))
}
