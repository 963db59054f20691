//! The egress lab's network: a bridge in this machine's namespace, one network namespace
//! per golden VM hanging on it by a veth pair, and test servers on the bridge's address.
//! A VM's *workload* lives in its namespace (its own nftables, its own interfaces); its
//! sshd, the management plane, stays on loopback, and the runtime shim reaches the
//! namespace with `ip netns exec`. All traffic stays on this machine: the bridge has no
//! uplink and no route leads anywhere else.

use super::{io, run, LabError};
use serde::{Deserialize, Serialize};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The lab bridge: its interface, and `10.A.B.1/24` on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    /// Short random id shared by the lab's interface and namespace names.
    pub id: String,
}

/// A VM's namespace and its address on the bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    pub netns: String,
    pub address: Ipv4Addr,
    veth: String,
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(args))
}

impl Bridge {
    /// A bridge on a fresh `10.A.B.0/24` (picked at random, another if taken).
    pub fn create() -> Result<Self, LabError> {
        let mut last = None;
        for _ in 0..8 {
            let r: [u8; 4] = rand_bytes()?;
            let id = hex::encode(&r[..3]);
            let gateway = Ipv4Addr::new(10, 100 + r[3] % 100, r[0], 1);
            let name = format!("alb{id}");
            match ip(&["link", "add", &name, "type", "bridge"])
                .and_then(|()| ip(&["addr", "add", &format!("{gateway}/24"), "dev", &name]))
                .and_then(|()| ip(&["link", "set", &name, "up"]))
            {
                Ok(()) => return Ok(Self { name, gateway, id }),
                Err(e) => {
                    let _ = ip(&["link", "del", &name]);
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| LabError::Command { command: "ip link add".into(), detail: "no free bridge".into() }))
    }

    /// Namespace `al<id>-<i>` with `eth0` at `10.A.B.(10+i)` on the bridge.
    pub fn attach(&self, i: usize) -> Result<Attachment, LabError> {
        let netns = format!("al{}-{i}", self.id);
        let veth = format!("alv{}{i}", self.id);
        let octets = self.gateway.octets();
        let address = Ipv4Addr::new(octets[0], octets[1], octets[2], 10 + u8::try_from(i).unwrap_or(200));
        let a = Attachment { netns: netns.clone(), address, veth: veth.clone() };
        let setup = || -> Result<(), LabError> {
            ip(&["netns", "add", &netns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", &format!("{veth}p")])?;
            ip(&["link", "set", &format!("{veth}p"), "netns", &netns])?;
            ip(&["link", "set", &veth, "master", &self.name])?;
            ip(&["link", "set", &veth, "up"])?;
            let inside = |args: &[&str]| {
                let mut full = vec!["netns", "exec", &netns, "ip"];
                full.extend_from_slice(args);
                ip(&full)
            };
            inside(&["link", "set", &format!("{veth}p"), "name", "eth0"])?;
            inside(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            inside(&["link", "set", "eth0", "up"])?;
            inside(&["link", "set", "lo", "up"])
        };
        setup().inspect_err(|_| a.remove())?;
        Ok(a)
    }

    pub fn remove(&self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

impl Attachment {
    pub fn remove(&self) {
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.veth]);
    }

    /// Runs `program args` inside the namespace (as root), returning its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ip").args(["netns", "exec", &self.netns, program]).args(args).output()
    }
}

fn rand_bytes<const N: usize>() -> Result<[u8; N], LabError> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io(Path::new("/dev/urandom")))?;
    Ok(b)
}

/// Creates the workload user of `service` (`agent-<service>`) if it does not exist.
pub fn workload_user(service: &str) -> Result<(), LabError> {
    let user = format!("agent-{service}");
    let exists = |u: &str| Command::new("id").arg(u).output().is_ok_and(|o| o.status.success());
    if exists(&user) {
        return Ok(());
    }
    let out = Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", &user])
        .output()
        .map_err(|e| LabError::Command { command: "useradd".into(), detail: e.to_string() })?;
    // A parallel test may have created it meanwhile.
    if !out.status.success() && !exists(&user) {
        return Err(LabError::Command {
            command: format!("useradd {user}"),
            detail: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(())
}

/// A TCP server on the bridge that accepts, says `hello`, and counts connections: an
/// allowed or denied destination for the workloads in the VMs' namespaces.
pub struct Server {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Server {
    pub fn start(bridge: &Bridge) -> Result<Self, LabError> {
        let listener =
            TcpListener::bind(SocketAddr::new(IpAddr::V4(bridge.gateway), 0)).map_err(io(Path::new("test server")))?;
        let addr = listener.local_addr().map_err(io(Path::new("test server")))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(b"hello\n");
            }
        });
        Ok(Self { addr, accepted })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// `IP:PORT`, as manifests write a destination.
    pub fn destination(&self) -> String {
        self.addr.to_string()
    }
}
