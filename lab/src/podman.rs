//! Podman on the lab's golden VMs: each VM has its own storage, run directory, locks and
//! events (its own `containers.conf` / `storage.conf` / `registries.conf`, named by the
//! environment its sshd sets), so VMs on one machine never see each other's images or
//! containers. Only lab-only settings live here (PODMAN-NOTES.md): `runc` (this
//! kernel's hybrid cgroups refuse `crun`), explicit ulimits (raising them is not
//! permitted here), the lab registry as plain HTTP. agentctl's own commands carry none.

use super::{io, LabError};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Debian packages a Podman lab needs.
pub const PACKAGES: &[&str] = &["podman", "runc", "uidmap", "fuse-overlayfs", "busybox-static"];
/// The secret every lab VM's Podman holds for the example service.
pub const SECRET_NAME: &str = "API_TOKEN";
/// Its value: a test needle that must never appear in anything agentctl writes.
pub const SECRET_VALUE: &str = "lab-secret-value-7d1e0c5a9b";

/// A VM's Podman configuration directory: `<vm>/podman`.
pub fn config_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join("podman")
}

/// The environment that points Podman at a VM's own configuration.
pub fn env(vm_dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let d = config_dir(vm_dir);
    vec![
        ("CONTAINERS_CONF", d.join("containers.conf")),
        ("CONTAINERS_STORAGE_CONF", d.join("storage.conf")),
        ("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf")),
    ]
}

/// Writes a VM's `containers.conf` and `storage.conf` (the registry's is written once the
/// registry runs: [`write_registries`]).
pub fn configure(vm_dir: &Path) -> Result<(), LabError> {
    let d = config_dir(vm_dir);
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let containers = format!(
        "# Lab-only settings (PODMAN-NOTES.md): real hosts keep Podman's defaults.\n\
         [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\nlog_driver = \"k8s-file\"\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\nvolume_path = \"{d}/volumes\"\nlock_type = \"file\"\n",
        d = d.display()
    );
    let storage = format!(
        "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n",
        d = d.display()
    );
    for (name, text) in [("containers.conf", containers), ("storage.conf", storage)] {
        let p = d.join(name);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    write_registries(vm_dir, &[])
}

/// The VM's `registries.conf`: the lab's registries (`host:port`), plain HTTP.
pub fn write_registries(vm_dir: &Path, registries: &[String]) -> Result<(), LabError> {
    let mut text = String::from("unqualified-search-registries = []\n");
    for r in registries {
        text.push_str(&format!("\n[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"));
    }
    let p = config_dir(vm_dir).join("registries.conf");
    std::fs::write(&p, text).map_err(io(&p))
}

/// `podman ARGS` as the VM's runtime would run it: its configuration, inside its
/// network namespace, with `stdin` given.
pub fn run(vm_dir: &Path, netns: &str, args: &[&str], stdin: Option<&[u8]>) -> std::io::Result<Output> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).args(["--", "podman"]).args(args).envs(env(vm_dir));
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, data)?;
    }
    child.wait_with_output()
}

/// Creates the example service's secret in a VM's Podman.
pub fn create_secret(vm_dir: &Path, netns: &str, name: &str, value: &str) -> Result<(), LabError> {
    let out = run(vm_dir, netns, &["secret", "create", name, "-"], Some(value.as_bytes()))
        .map_err(|e| LabError::Command { command: "podman secret create".into(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: format!("podman secret create {name}"),
            detail: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

/// Removes every container, image and the storage of a VM (nothing outlives the lab).
pub fn reset(vm_dir: &Path) {
    let podman = |args: &[&str]| {
        let _ =
            Command::new("podman").args(args).envs(env(vm_dir)).stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    podman(&["rm", "--all", "--force", "--time", "0"]);
    podman(&["system", "reset", "--force"]);
}

/// Whether Podman (and the lab's other needs) are installed.
pub fn missing() -> Option<&'static str> {
    [("/usr/bin/podman", "podman"), ("/usr/sbin/runc", "runc"), (super::image::BUSYBOX, "busybox-static")]
        .into_iter()
        .find(|(p, _)| !Path::new(p).exists())
        .map(|(_, pkg)| pkg)
}
