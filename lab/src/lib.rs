//! A lab of real parts on loopback: Debian's `docker-registry` and N golden VMs, each a
//! real `sshd` with its own host key, runtime root and runtime shim. Tests hold a
//! [`Lab`] and everything stops when it is dropped (also when the test panics);
//! `cargo xtask lab up` keeps one running for an operator.

pub mod cosign;
mod image;
pub mod network;
pub mod podman;
pub mod postgres;
pub mod sigstore;

/// zizmor, the workflow auditor `check --ci` is compared with (`cargo xtask setup`
/// installs it from PyPI into this venv).
pub const ZIZMOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/zizmor/bin/zizmor");
/// The zizmor release the comparison was made with.
pub const ZIZMOR_VERSION: &str = "1.32.0";

pub use image::{build_app, build_image, Behaviour, TestImage, BUSYBOX};

use controlplane::image::{PinnedImage, Repository};
use controlplane::manifest::RegistrySettings;
use controlplane::registry::Registry;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";
pub const REGISTRY: &str = "/usr/bin/docker-registry";
/// The login golden VMs are reached as when the lab runs as root: a minimal `/bin/sh`
/// account, so no shell rc file is read per command.
pub const LAB_USER: &str = "agentlab";
/// Debian packages the lab needs.
pub const PACKAGES: &[&str] = &["openssh-server", "openssh-client", "docker-registry"];
const RUNTIME_SHIM: &str = include_str!("agent-runtime.sh");

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{0}` is not installed; install the Debian packages {packages}", packages = PACKAGES.join(" "))]
    Missing(&'static str),
    #[error("the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/initdb); install the Debian package `postgresql` (`cargo xtask setup` as root)")]
    MissingPostgres,
    #[error("lab I/O on `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what} did not start within {secs} s; its log: {log}")]
    Start { what: String, secs: u64, log: String },
    #[error(transparent)]
    Init(#[from] controlplane::init::InitError),
    #[error(transparent)]
    Registry(#[from] controlplane::registry::RegistryError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io { path: path.to_path_buf(), source }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Golden VMs in all.
    pub hosts: usize,
    /// How many of them form `staging`; the rest are `prod`.
    pub staging: usize,
    pub registry: bool,
    /// Keep the lab in this directory (for `lab up`); `None`: a temporary directory.
    pub dir: Option<PathBuf>,
    /// Give each golden VM its own network namespace (a veth on a lab bridge) with
    /// nftables, a workload user per service, and log in as root (the runtime loads the
    /// VM's egress rules and runs the workload's connections): see [`network`].
    pub egress: bool,
    /// Golden VMs that run Podman (as root, each with its own storage), each in its own
    /// network namespace on a lab bridge with its sshd inside it (the workload's network
    /// is the VM's), and the example service on the Podman runtime. Without it, the
    /// service uses the command runtime and the `agent-runtime` shim.
    pub podman: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self { hosts: 3, staging: 1, registry: true, dir: None, egress: false, podman: false }
    }
}

impl LabConfig {
    /// The default lab on Podman.
    pub fn podman() -> Self {
        Self { podman: true, ..Self::default() }
    }
}

/// One golden VM.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct VmInfo {
    /// The VM's network namespace and address on the lab bridge (egress labs).
    #[serde(default)]
    pub netns: Option<network::Attachment>,
    pub name: String,
    pub environment: String,
    pub port: u16,
    pub pid: u32,
    /// `ssh-ed25519 AAAA...`, as pinned in the manifests.
    pub host_key: String,
    /// The host's directory: sshd config, keys, `root/` and `runtime/`.
    pub dir: PathBuf,
    /// The VM runs Podman, its sshd inside its namespace (reached at its bridge address).
    #[serde(default)]
    pub podman: bool,
}

impl VmInfo {
    /// The runtime root the manifests name.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// The runtime shim's state.
    pub fn runtime(&self) -> PathBuf {
        self.dir.join("runtime")
    }

    /// Where the control plane reaches the VM's sshd.
    pub fn address(&self) -> std::net::IpAddr {
        match (&self.netns, self.podman) {
            (Some(a), true) => std::net::IpAddr::V4(a.address),
            _ => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }

    /// `podman ARGS` on this VM (its storage, its namespace), as the runtime runs it.
    pub fn podman(&self, args: &[&str]) -> std::process::Output {
        let netns = self.netns.as_ref().map(|a| a.netns.as_str()).expect("a Podman VM has a namespace");
        podman::run(&self.dir, netns, args, None).expect("podman runs")
    }
}

/// What `lab up` records so `lab down` and `lab status` can find everything.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabInfo {
    /// The lab bridge the VMs' namespaces hang on (egress labs).
    #[serde(default)]
    pub network: Option<network::Bridge>,
    pub dir: PathBuf,
    pub user: String,
    pub registry: Option<RegistryInfo>,
    pub hosts: Vec<VmInfo>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct RegistryInfo {
    /// Where it listens: loopback, or the lab bridge's address in a Podman lab (so the
    /// VMs reach it from their namespaces).
    #[serde(default = "loopback")]
    pub address: std::net::Ipv4Addr,
    pub port: u16,
    pub pid: u32,
}

fn loopback() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::LOCALHOST
}

impl RegistryInfo {
    pub fn host(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

/// A running lab. Dropping it stops every process and removes its directory
/// (unless it was started with a fixed `dir` and then [`Lab::detach`]ed).
#[derive(Debug)]
pub struct Lab {
    pub info: LabInfo,
    children: Vec<Child>,
    tmp: Option<tempfile::TempDir>,
    keep: bool,
}

impl Lab {
    /// Starts a registry and golden VMs, scaffolds a project (manifests, state, keys,
    /// receipts) in the lab directory and points the manifests at the lab.
    pub async fn start(cfg: LabConfig) -> Result<Lab, LabError> {
        for bin in [SSHD, "/usr/bin/ssh-keygen"].into_iter().chain(cfg.registry.then_some(REGISTRY)) {
            if !Path::new(bin).exists() {
                return Err(LabError::Missing(bin));
            }
        }
        let (tmp, dir) = match &cfg.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new().prefix("agentlab-").tempdir().map_err(io(Path::new("/tmp")))?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if (cfg.egress || cfg.podman) && !is_root() {
            return Err(LabError::Command {
                command: if cfg.podman { "a Podman lab" } else { "an egress lab" }.into(),
                detail: "network namespaces, nftables and rootful Podman need root".into(),
            });
        }
        if cfg.podman {
            if let Some(pkg) = podman::missing() {
                return Err(LabError::Command {
                    command: "a Podman lab".into(),
                    detail: format!(
                        "`{pkg}` is not installed; install the Debian packages {}",
                        podman::PACKAGES.join(" ")
                    ),
                });
            }
        }
        let user = if cfg.egress || cfg.podman { "root".to_owned() } else { lab_user()? };
        let mut lab = Lab {
            info: LabInfo { network: None, dir: dir.clone(), user: user.clone(), registry: None, hosts: Vec::new() },
            children: Vec::new(),
            tmp,
            keep: false,
        };
        // World-traversable, so the lab user can reach its runtime root under it.
        set_mode(&dir, 0o755)?;
        controlplane::init::scaffold(&dir, controlplane::init::Passwords::default()).await?;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).map_err(io(&bin))?;
        write_mode(&bin.join("agent-runtime"), RUNTIME_SHIM.as_bytes(), 0o755)?;
        let client_pub = std::fs::read_to_string(dir.join("state/ssh/id_ed25519.pub")).map_err(io(&dir))?;
        if is_root() {
            std::fs::create_dir_all("/run/sshd").map_err(io(Path::new("/run/sshd")))?;
        }

        if cfg.egress || cfg.podman {
            lab.info.network = Some(network::Bridge::create()?);
            network::workload_user("api")?;
        }
        for i in 0..cfg.hosts {
            let (name, env) = if i < cfg.staging {
                (format!("stage-{}", i + 1), "staging")
            } else {
                (format!("prod-{}", i + 1 - cfg.staging), "prod")
            };
            // A Podman VM's namespace comes first: its sshd runs inside it.
            let attachment = match (&lab.info.network, cfg.podman) {
                (Some(bridge), true) => Some(bridge.attach(i)?),
                _ => None,
            };
            let (mut vm, child) = start_vm(&dir, &name, env, &user, &client_pub, attachment)?;
            lab.children.push(child);
            if let (Some(bridge), false) = (&lab.info.network, cfg.podman) {
                let a = bridge.attach(i)?;
                std::fs::write(vm.runtime().join("netns"), &a.netns).map_err(io(&vm.runtime()))?;
                vm.netns = Some(a);
            }
            lab.info.hosts.push(vm);
        }
        let registry_address = match (&lab.info.network, cfg.podman) {
            (Some(b), true) => b.gateway,
            _ => std::net::Ipv4Addr::LOCALHOST,
        };
        if cfg.registry {
            let (reg, child) = start_registry(&dir, registry_address)?;
            lab.children.push(child);
            lab.info.registry = Some(reg);
        }
        // Wait for every listener (the processes start in parallel). A port picked by
        // binding port 0 and releasing it can be taken by another process before our
        // server binds it: a server that exits instead of listening is started again on a
        // new port, a few times at most.
        for i in 0..lab.info.hosts.len() {
            let what = format!("golden VM `{}`", lab.info.hosts[i].name);
            let address = lab.info.hosts[i].address();
            for attempt in 0.. {
                if wait_listening(&what, address, lab.info.hosts[i].port, &mut lab.children[i], &dir)? {
                    break;
                }
                if attempt == 4 {
                    return Err(start_error(&what, &dir));
                }
                let netns = lab.info.hosts[i].netns.clone().filter(|_| cfg.podman);
                let (port, child) = spawn_sshd(&dir, &lab.info.hosts[i].dir.clone(), &user, netns.as_ref())?;
                lab.info.hosts[i].port = port;
                lab.info.hosts[i].pid = child.id();
                lab.children[i] = child;
            }
        }
        if let Some(mut reg) = lab.info.registry.clone() {
            let i = lab.children.len() - 1;
            for attempt in 0.. {
                if wait_listening("registry", reg.address.into(), reg.port, &mut lab.children[i], &dir)? {
                    break;
                }
                if attempt == 4 {
                    return Err(start_error("registry", &dir));
                }
                let (r, child) = start_registry(&dir, registry_address)?;
                reg = r;
                lab.children[i] = child;
            }
            lab.info.registry = Some(reg);
        }
        for vm in lab.info.hosts.iter().filter(|h| h.podman) {
            let registries: Vec<String> = lab.info.registry.iter().map(RegistryInfo::host).collect();
            podman::write_registries(&vm.dir, &registries)?;
            let netns = vm.netns.as_ref().map(|a| a.netns.as_str()).unwrap_or_default();
            podman::create_secret(&vm.dir, netns, podman::SECRET_NAME, podman::SECRET_VALUE)?;
        }
        lab.write_manifests()?;
        lab.write_info()?;
        Ok(lab)
    }

    pub fn dir(&self) -> &Path {
        &self.info.dir
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir().join("manifests")
    }

    pub fn registry_host(&self) -> String {
        self.info.registry.as_ref().map(RegistryInfo::host).unwrap_or_default()
    }

    /// The release-signing key `init` made (password: empty).
    pub fn release_key(&self) -> PathBuf {
        self.dir().join("state/release.key")
    }

    pub fn host(&self, name: &str) -> &VmInfo {
        self.info.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no lab host `{name}`"))
    }

    /// A registry client that knows the lab registry is plain HTTP.
    pub fn registry_client(&self) -> Registry {
        Registry::new(&[RegistrySettings {
            host: self.registry_host(),
            insecure: true,
            username_env: None,
            password_env: None,
        }])
    }

    /// Builds an image whose single layer holds `content` and pushes it as `path:tag`.
    pub async fn push_image(&self, path: &str, tag: &str, content: &str) -> Result<PinnedImage, LabError> {
        let repo =
            Repository::new(&format!("{}/{path}", self.registry_host())).expect("lab repository names are valid");
        let img = build_image(content);
        let digest = self.registry_client().push_artifact(&repo, Some(tag), &img.artifact).await?;
        Ok(PinnedImage { repository: repo, digest })
    }

    /// Builds an image of several layers ([`image::build_layers`]) and pushes it as `path:tag`.
    pub async fn push_layers(
        &self,
        path: &str,
        tag: &str,
        layers: &[Vec<(&str, &[u8])>],
        gzip: bool,
    ) -> Result<PinnedImage, LabError> {
        let repo =
            Repository::new(&format!("{}/{path}", self.registry_host())).expect("lab repository names are valid");
        let img = image::build_layers(layers, gzip);
        let digest = self.registry_client().push_artifact(&repo, Some(tag), &img.artifact).await?;
        Ok(PinnedImage { repository: repo, digest })
    }

    /// Builds a runnable app image ([`build_app`]) and pushes it as `demo/api:TAG`.
    pub async fn push_app(
        &self,
        tag: &str,
        version: &str,
        behaviour: &Behaviour,
        first_connect: Option<&str>,
    ) -> Result<PinnedImage, LabError> {
        let repo =
            Repository::new(&format!("{}/demo/api", self.registry_host())).expect("lab repository names are valid");
        let img = build_app(version, behaviour, first_connect).map_err(io(Path::new(image::BUSYBOX)))?;
        let digest = self.registry_client().push_artifact(&repo, Some(tag), &img.artifact).await?;
        Ok(PinnedImage { repository: repo, digest })
    }

    /// Pushes an OCI image index under `tag` naming `platforms` (`(image, "os/arch")`, each
    /// already pushed to the same repository), as `docker buildx` pushes by default.
    pub async fn push_index(&self, tag: &str, platforms: &[(&PinnedImage, &str)]) -> Result<PinnedImage, LabError> {
        let reg = self.registry_client();
        let mut entries = Vec::new();
        let mut repo = None;
        for (img, platform) in platforms {
            let (m, _) =
                reg.manifest(&img.repository, img.digest.as_str()).await?.expect("the platform image was pushed");
            let (os, arch) = platform.split_once('/').expect("os/arch");
            entries.push(serde_json::json!({
                "mediaType": controlplane::registry::OCI_MANIFEST,
                "digest": img.digest.as_str(),
                "size": m.len(),
                "platform": { "os": os, "architecture": arch },
            }));
            repo = Some(img.repository.clone());
        }
        let repo = repo.expect("at least one platform");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": controlplane::registry::OCI_INDEX,
            "manifests": entries,
        });
        let digest = reg.push_manifest(&repo, Some(tag), serde_json::to_vec(&index).expect("JSON")).await?;
        Ok(PinnedImage { repository: repo, digest })
    }

    /// Gives host `name` one more host key of `kind` (`ecdsa` or `rsa`, as real hosts have
    /// several), or replaces the one it has of that kind with a new key; returns its pin
    /// (`ecdsa-sha2-nistp256 AAAA…`). sshd re-reads its configuration (SIGHUP) for the
    /// connections that follow.
    pub fn host_key(&self, name: &str, kind: &str) -> Result<String, LabError> {
        let vm = self.host(name);
        let key = vm.dir.join(format!("ssh_host_{kind}_key"));
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        let bits: &[&str] = if kind == "rsa" { &["-b", "2048"] } else { &[] };
        run(Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-C", "", "-f"]).arg(&key).args(bits))?;
        let cfg = vm.dir.join("sshd_config");
        let text = std::fs::read_to_string(&cfg).map_err(io(&cfg))?;
        let line = format!("HostKey {}\n", key.display());
        if !text.contains(&line) {
            std::fs::write(&cfg, format!("{line}{text}")).map_err(io(&cfg))?;
        }
        self.reload_sshd(vm)?;
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).map_err(io(&key))?;
        Ok(pubkey.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    }

    /// Host `name`'s sshd goes back to OpenSSH's default connection limits
    /// (`MaxStartups 10:30:100`, `MaxSessions 10`), as on a real host.
    pub fn sshd_defaults(&self, name: &str) -> Result<(), LabError> {
        let vm = self.host(name);
        let cfg = vm.dir.join("sshd_config");
        let text = std::fs::read_to_string(&cfg).map_err(io(&cfg))?;
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("MaxSessions ") && !l.starts_with("MaxStartups "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&cfg, kept).map_err(io(&cfg))?;
        self.reload_sshd(vm)
    }

    /// Host `name` has no Podman, as a host where it was never installed: its sshd's
    /// `PATH` (the only one its commands get) has a directory holding every program of
    /// `/usr/bin` but `podman` in place of `/usr/bin` (`/bin` is `/usr/bin` on Debian 12).
    /// What already runs keeps running. [`Lab::with_podman`] undoes it.
    pub fn without_podman(&self, name: &str) -> Result<(), LabError> {
        let vm = self.host(name);
        let bin = vm.dir.join("usr-bin-without-podman");
        if !bin.exists() {
            std::fs::create_dir_all(&bin).map_err(io(&bin))?;
            let usr_bin = Path::new("/usr/bin");
            for entry in std::fs::read_dir(usr_bin).map_err(io(usr_bin))?.flatten() {
                let program = entry.file_name();
                if program != "podman" {
                    std::os::unix::fs::symlink(entry.path(), bin.join(&program)).map_err(io(&bin))?;
                }
            }
        }
        self.set_path(vm, ":/usr/bin:/bin:", &format!(":{}:", bin.display()))
    }

    /// Marks Podman host `name` so that the containers it creates from now on get
    /// [`image::FAIL_MARKER`] in their environment (a lab app then exits at start: a
    /// release that fails on some hosts only); `false` removes the mark. Containers that
    /// exist keep the environment they were created with (the way back still runs).
    pub fn mark_failing(&self, name: &str, fail: bool) -> Result<(), LabError> {
        let conf = podman::config_dir(&self.host(name).dir).join("containers.conf");
        let text = std::fs::read_to_string(&conf).map_err(io(&conf))?;
        let line = format!("env = [\"{}=1\"]\n", image::FAIL_MARKER);
        let text = text.replace(&line, "");
        let text = if fail { text.replacen("[containers]\n", &format!("[containers]\n{line}"), 1) } else { text };
        std::fs::write(&conf, text).map_err(io(&conf))
    }

    /// Host `name` has Podman again (after [`Lab::without_podman`]).
    pub fn with_podman(&self, name: &str) -> Result<(), LabError> {
        let vm = self.host(name);
        let bin = vm.dir.join("usr-bin-without-podman");
        self.set_path(vm, &format!(":{}:", bin.display()), ":/usr/bin:/bin:")
    }

    /// Replaces `from` with `to` in the `PATH` host `vm`'s sshd gives its sessions.
    fn set_path(&self, vm: &VmInfo, from: &str, to: &str) -> Result<(), LabError> {
        let cfg = vm.dir.join("sshd_config");
        let text = std::fs::read_to_string(&cfg).map_err(io(&cfg))?;
        let edited: String = text
            .lines()
            .map(|l| if l.starts_with("SetEnv ") { l.replacen(from, to, 1) } else { l.to_owned() })
            .map(|l| format!("{l}\n"))
            .collect();
        if edited == text {
            return Err(LabError::Command { command: "sshd_config PATH".into(), detail: format!("no `{from}` in it") });
        }
        std::fs::write(&cfg, edited).map_err(io(&cfg))?;
        self.reload_sshd(vm)
    }

    /// Host `name` stops offering its host key of `kind` (its line leaves sshd's configuration).
    pub fn drop_host_key(&self, name: &str, kind: &str) -> Result<(), LabError> {
        let vm = self.host(name);
        let key = vm.dir.join(format!("ssh_host_{kind}_key"));
        let cfg = vm.dir.join("sshd_config");
        let text = std::fs::read_to_string(&cfg).map_err(io(&cfg))?;
        std::fs::write(&cfg, text.replace(&format!("HostKey {}\n", key.display()), "")).map_err(io(&cfg))?;
        self.reload_sshd(vm)
    }

    /// SIGHUP: sshd re-executes itself with its configuration read again; waits until it
    /// listens again.
    fn reload_sshd(&self, vm: &VmInfo) -> Result<(), LabError> {
        run(Command::new("kill").args(["-HUP", &vm.pid.to_string()]))?;
        std::thread::sleep(Duration::from_millis(200));
        let since = Instant::now();
        while !listening_on(vm.address(), vm.port) {
            if since.elapsed() > START_LIMIT {
                return Err(start_error("sshd after a reload", self.dir()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops a host's sshd (to make it unreachable).
    pub fn stop_host(&mut self, name: &str) {
        let pid = self.host(name).pid;
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a second registry, beside the lab's and like it (plain HTTP, reachable from
    /// every VM, listed in each Podman VM's `registries.conf`), that answers only requests
    /// carrying `user` and `password` (distribution's `htpasswd` auth; a bcrypt entry of
    /// the lowest cost, as it is checked on every request).
    /// Returns its `host:port`; it stops with the lab.
    pub fn start_private_registry(&mut self, user: &str, password: &str) -> Result<String, LabError> {
        let address = match self.info.registry.as_ref() {
            Some(r) => r.address,
            None => std::net::Ipv4Addr::LOCALHOST,
        };
        let dir = self.dir().join("registry-private");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let hash = bcrypt::hash(password, 4)
            .map_err(|e| LabError::Command { command: "bcrypt".into(), detail: e.to_string() })?;
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).map_err(io(&htpasswd))?;
        let lab_dir = self.dir().to_path_buf();
        let (mut reg, mut child) = start_registry_in(&dir, address, Some(&htpasswd))?;
        for attempt in 0.. {
            if wait_listening("private registry", reg.address.into(), reg.port, &mut child, &lab_dir)? {
                break;
            }
            if attempt == 4 {
                return Err(start_error("private registry", &lab_dir));
            }
            (reg, child) = start_registry_in(&dir, address, Some(&htpasswd))?;
        }
        self.children.push(child);
        let host = reg.host();
        let mut registries: Vec<String> = self.info.registry.iter().map(RegistryInfo::host).collect();
        registries.push(host.clone());
        for vm in self.info.hosts.iter().filter(|h| h.podman) {
            podman::write_registries(&vm.dir, &registries)?;
        }
        Ok(host)
    }

    /// Stops the registry (to test outages).
    pub fn stop_registry(&mut self) {
        if let Some(pid) = self.info.registry.as_ref().map(|r| r.pid) {
            if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Leaves the processes and the directory in place (for `lab up`).
    pub fn detach(mut self) -> LabInfo {
        self.keep = true;
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        self.children.clear();
        std::mem::replace(
            &mut self.info,
            LabInfo { network: None, dir: PathBuf::new(), user: String::new(), registry: None, hosts: Vec::new() },
        )
    }

    fn write_info(&self) -> Result<(), LabError> {
        let path = self.dir().join("lab.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.info).expect("JSON")).map_err(io(&path))
    }

    /// Points the scaffolded manifests at this lab: registry, hosts, runtime shim.
    fn write_manifests(&self) -> Result<(), LabError> {
        let m = self.manifests();
        if self.info.registry.is_some() {
            self.point_at_registry(&m)?;
        }
        self.choose_runtime(&m)?;
        self.write_environments(&m)
    }

    fn point_at_registry(&self, m: &Path) -> Result<(), LabError> {
        let cp = m.join("controlplane.toml");
        let text = std::fs::read_to_string(&cp).map_err(io(&cp))?;
        let text = text.replace("host = \"127.0.0.1:5000\"", &format!("host = \"{}\"", self.registry_host()));
        std::fs::write(&cp, text).map_err(io(&cp))?;

        let svc = m.join("services/api.toml");
        let text = std::fs::read_to_string(&svc).map_err(io(&svc))?;
        let text = text
            .replace("image = \"127.0.0.1:5000/demo/api\"", &format!("image = \"{}/demo/api\"", self.registry_host()));
        std::fs::write(&svc, text).map_err(io(&svc))
    }

    /// The example service on the command runtime (the `agent-runtime` shim) unless the
    /// VMs run Podman.
    fn choose_runtime(&self, m: &Path) -> Result<(), LabError> {
        if self.info.hosts.iter().any(|h| h.podman) {
            return Ok(());
        }
        let svc = m.join("services/api.toml");
        let text = std::fs::read_to_string(&svc).map_err(io(&svc))?;
        let text = controlplane::manifest::example::with_command_runtime(&text);
        std::fs::write(&svc, text).map_err(io(&svc))
    }

    fn write_environments(&self, m: &Path) -> Result<(), LabError> {
        for env in ["staging", "prod"] {
            let mut out = String::from("# Written by the lab: golden VMs on loopback.\n");
            if env == "prod" {
                out.push_str("after = \"staging\"\napprovals = 0\n");
            } else {
                out.push_str("approvals = 0\n");
            }
            out.push_str("\n[rollout]\nbatch = 1\nhealth_timeout_secs = 10\n");
            for h in self.info.hosts.iter().filter(|h| h.environment == env) {
                out.push_str(&format!(
                    "\n[[host]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nuser = \"{}\"\nhost_key = \"{}\"\nroot = \"{}\"\n",
                    h.name,
                    h.address(),
                    h.port,
                    self.info.user,
                    h.host_key,
                    h.root().display()
                ));
            }
            let path = m.join(format!("environments/{env}.toml"));
            if out.contains("[[host]]") {
                std::fs::write(&path, out).map_err(io(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for h in self.info.hosts.iter().filter(|h| h.podman) {
            podman::reset(&h.dir);
        }
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        if let Some(bridge) = &self.info.network {
            for a in self.info.hosts.iter().filter_map(|h| h.netns.as_ref()) {
                a.remove();
            }
            bridge.remove();
        }
        if self.tmp.is_none() && !self.info.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.info.dir);
        }
    }
}

/// Stops a lab that `lab up` left running and removes its directory.
pub fn down(dir: &Path) -> Result<LabInfo, LabError> {
    let path = dir.join("lab.json");
    let info: LabInfo = serde_json::from_slice(&std::fs::read(&path).map_err(io(&path))?)
        .map_err(|e| LabError::Command { command: format!("read {}", path.display()), detail: e.to_string() })?;
    for h in info.hosts.iter().filter(|h| h.podman) {
        podman::reset(&h.dir);
    }
    let pids: Vec<u32> = info.hosts.iter().map(|h| h.pid).chain(info.registry.iter().map(|r| r.pid)).collect();
    for pid in &pids {
        let _ = Command::new("kill").arg(pid.to_string()).stderr(Stdio::null()).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(bridge) = &info.network {
        for a in info.hosts.iter().filter_map(|h| h.netns.as_ref()) {
            a.remove();
        }
        bridge.remove();
    }
    std::fs::remove_dir_all(dir).map_err(io(dir))?;
    Ok(info)
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// Whether something listens on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    listening_on(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

/// Whether something listens on `address:port`.
pub fn listening_on(address: std::net::IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(address, port), Duration::from_millis(200)).is_ok()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The account golden VMs are logged in to: a dedicated `/bin/sh` user when root.
fn lab_user() -> Result<String, LabError> {
    if !is_root() {
        let out = Command::new("id")
            .arg("-un")
            .output()
            .map_err(|e| LabError::Command { command: "id -un".into(), detail: e.to_string() })?;
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let exists = Command::new("id")
        .arg(LAB_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", LAB_USER])
            .output()
            .map_err(|e| LabError::Command { command: "useradd".into(), detail: e.to_string() })?;
        // Exit 9: created concurrently by a parallel test; exit 10: /etc/passwd was locked
        // by that creation, so check again below.
        let raced = Command::new("id")
            .arg(LAB_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !out.status.success() && !raced {
            return Err(LabError::Command {
                command: "useradd".into(),
                detail: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
    }
    // `*`: no password can match, but the account is not locked (sshd refuses locked ones).
    // Parallel test processes may race on /etc/passwd's lock: retry a few times.
    let locked = || {
        Command::new("getent")
            .args(["shadow", LAB_USER])
            .output()
            .is_ok_and(|o| o.stdout.split(|b| *b == b':').nth(1).is_some_and(|p| p.starts_with(b"!")))
    };
    for attempt in 1.. {
        if !locked() {
            break;
        }
        match run(Command::new("usermod").args(["--password", "*", LAB_USER])) {
            Err(e) if attempt >= 20 => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Ok(LAB_USER.to_owned())
}

fn free_port() -> Result<u16, LabError> {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

fn free_port_on(address: std::net::Ipv4Addr) -> Result<u16, LabError> {
    let l = TcpListener::bind((address, 0)).map_err(io(Path::new("127.0.0.1:0")))?;
    Ok(l.local_addr().map_err(io(Path::new("127.0.0.1:0")))?.port())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LabError> {
    std::fs::write(path, bytes).map_err(io(path))?;
    set_mode(path, mode)
}

fn run(cmd: &mut Command) -> Result<(), LabError> {
    let out = cmd.output().map_err(|e| LabError::Command { command: format!("{cmd:?}"), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command { command: format!("{cmd:?}"), detail: String::from_utf8_lossy(&out.stderr).into() })
    }
}

fn start_vm(
    lab: &Path,
    name: &str,
    env: &str,
    user: &str,
    client_pub: &str,
    netns: Option<network::Attachment>,
) -> Result<(VmInfo, Child), LabError> {
    let dir = lab.join("hosts").join(name);
    for d in [dir.join("root"), dir.join("runtime")] {
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    set_mode(&dir.join("root"), 0o755)?;
    set_mode(&dir, 0o755)?;
    set_mode(&lab.join("hosts"), 0o755)?;
    if is_root() {
        run(Command::new("chown").arg(format!("{user}:")).arg(dir.join("root")).arg(dir.join("runtime")))?;
    }
    let key = dir.join("ssh_host_ed25519_key");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"]).arg(&key))?;
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).map_err(io(&key))?;
    let host_key = pubkey.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    write_mode(&dir.join("authorized_keys"), client_pub.as_bytes(), 0o644)?;
    let podman = netns.is_some();
    if podman {
        podman::configure(&dir)?;
    }
    let (port, child) = spawn_sshd(lab, &dir, user, netns.as_ref())?;
    let vm = VmInfo { netns, name: name.into(), environment: env.into(), port, pid: child.id(), host_key, dir, podman };
    Ok((vm, child))
}

/// Starts sshd for the VM in `dir` on a free port, or on port 22 inside the VM's
/// namespace (a Podman VM: its sshd and its workloads share the VM's network).
fn spawn_sshd(
    lab: &Path,
    dir: &Path,
    user: &str,
    netns: Option<&network::Attachment>,
) -> Result<(u16, Child), LabError> {
    let (port, listen) = match netns {
        Some(a) => (22, a.address.to_string()),
        None => (free_port()?, "127.0.0.1".to_owned()),
    };
    let key = dir.join("ssh_host_ed25519_key");
    // The VM's own (empty) home: a fresh host's login shell reads no start-up files of
    // the machine the lab runs on (a developer's ~/.bashrc would run on every command).
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(io(&home))?;
    let podman_env: String = if netns.is_some() {
        podman::env(dir).iter().map(|(k, v)| format!(" {k}={}", v.display())).collect()
    } else {
        String::new()
    };
    let config = format!(
        "Port {port}\nListenAddress {listen}\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {auth}\n\
         StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nUsePAM no\nX11Forwarding no\nPrintMotd no\nPrintLastLog no\nAllowUsers {user}\n\
         MaxSessions 200\nMaxStartups 500:30:1000\nLogLevel ERROR\n\
         SetEnv AGENT_RUNTIME_DIR={runtime} HOME={home} PATH={bin}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin{podman_env}\n",
        key = key.display(),
        home = home.display(),
        pid = dir.join("sshd.pid").display(),
        auth = dir.join("authorized_keys").display(),
        runtime = dir.join("runtime").display(),
        bin = lab.join("bin").display(),
    );
    let cfg = dir.join("sshd_config");
    std::fs::write(&cfg, config).map_err(io(&cfg))?;
    let log = std::fs::File::create(dir.join("sshd.log")).map_err(io(dir))?;
    // `-r`: no re-exec per connection, so measurements reflect the control plane more
    // than sshd's own start-up (the lab is loopback-only and short-lived).
    let mut cmd = match netns {
        // `nsenter --net` enters the namespace alone (`ip netns exec` would also remount
        // /sys, hiding the cgroup hierarchy Podman needs).
        Some(a) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", a.netns)).arg("--").arg(SSHD);
            c
        }
        None => Command::new(SSHD),
    };
    let child = cmd
        .arg("-D")
        .arg("-e")
        .arg("-r")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| LabError::Command { command: SSHD.into(), detail: e.to_string() })?;
    Ok((port, child))
}

fn start_registry(lab: &Path, address: std::net::Ipv4Addr) -> Result<(RegistryInfo, Child), LabError> {
    start_registry_in(&lab.join("registry"), address, None)
}

/// A CNCF distribution registry storing under `dir`, listening on `address`; with
/// `htpasswd`, it answers only requests with those credentials (its `htpasswd` auth).
fn start_registry_in(
    dir: &Path,
    address: std::net::Ipv4Addr,
    htpasswd: Option<&Path>,
) -> Result<(RegistryInfo, Child), LabError> {
    std::fs::create_dir_all(dir.join("storage")).map_err(io(dir))?;
    let port = free_port_on(address)?;
    let auth = htpasswd
        .map(|p| format!("auth:\n  htpasswd:\n    realm: lab\n    path: {}\n", p.display()))
        .unwrap_or_default();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}:{port}\n{auth}",
        dir.join("storage").display()
    );
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, config).map_err(io(&cfg))?;
    let log = std::fs::File::create(dir.join("registry.log")).map_err(io(dir))?;
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| LabError::Command { command: REGISTRY.into(), detail: e.to_string() })?;
    Ok((RegistryInfo { address, port, pid: child.id() }, child))
}

/// Waits until `port` listens (`true`) or `child` exits (`false`, e.g. the port was
/// taken); an error after 20 s.
fn wait_listening(
    what: &str,
    address: std::net::IpAddr,
    port: u16,
    child: &mut Child,
    lab: &Path,
) -> Result<bool, LabError> {
    let since = Instant::now();
    while since.elapsed() < START_LIMIT {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(false);
        }
        if listening_on(address, port) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(start_error(what, lab))
}

const START_LIMIT: Duration = Duration::from_secs(20);

fn start_error(what: &str, lab: &Path) -> LabError {
    let log = std::fs::read_dir(lab.join("hosts"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("sshd.log")).ok())
        .chain(std::fs::read_to_string(lab.join("registry/registry.log")).ok())
        .collect::<Vec<_>>()
        .join("\n");
    LabError::Start { what: what.into(), secs: START_LIMIT.as_secs(), log }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that could not bind its port (taken by another process since we picked
    /// it) exits; the lab sees that and starts it again instead of talking to the thief.
    #[test]
    fn a_server_that_exits_instead_of_listening_is_noticed() {
        let thief = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = thief.local_addr().unwrap().port();
        drop(thief);
        let mut child = Command::new("sh").arg("-c").arg("exit 1").spawn().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(!wait_listening("test", std::net::Ipv4Addr::LOCALHOST.into(), port, &mut child, dir.path()).unwrap());
    }
}
