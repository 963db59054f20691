//! `[runtime]` of a service: the command runtime (argv commands at the top level, as
//! before `[runtime]` existed) or the built-in Podman runtime with its sandbox defaults.

use super::{remote_path, At, Validator};
use crate::manifest::model::*;
use crate::manifest::raw::{self, S};

/// Podman defaults (docs/RUNTIME.md).
pub const DEFAULT_MEMORY: &str = "512m";
pub const DEFAULT_CPUS: &str = "1";
pub const DEFAULT_PIDS: i64 = 256;
pub const DEFAULT_MOUNT: &str = "/etc/agent";
pub const DEFAULT_RETAIN: i64 = 3;
pub const DEFAULT_STOP_TIMEOUT_SECS: i64 = 10;

/// Capabilities a service may add back (the kernel's names without `CAP_`). Podman runs
/// rootful without a user namespace, so an added capability is the host's: none that
/// leads back to uid 0 (`SETUID`, `SETGID`, `SETPCAP`, `SETFCAP`), past file permissions
/// (`DAC_OVERRIDE`), to devices (`MKNOD`) or around the egress rules on the host's
/// network (`NET_RAW`, `NET_ADMIN`) is on the list.
const CAPABILITIES: &[&str] = &["NET_BIND_SERVICE", "KILL", "CHOWN", "FOWNER"];

impl Validator<'_> {
    pub(super) fn runtime(&mut self, at: &At<'_>, f: &raw::ServiceFile, templates: &[Template]) -> Option<Runtime> {
        let kind = f.runtime.as_ref().map_or("command", |r| r.get_ref().kind.get_ref().as_str());
        match kind {
            "command" => self.command_runtime(at, f),
            "podman" => {
                let r = f.runtime.as_ref().expect("kind podman comes from a [runtime] table");
                for (field, v) in [("activate", &f.activate), ("health", &f.health), ("probe", &f.probe)] {
                    if let Some(v) = v {
                        self.err(at, v, field, format!("`{field}` is a command-runtime field; `[runtime] kind = \"podman\"` runs the workload itself"), Some("remove it, or set `kind = \"command\"`"));
                    }
                }
                for (field, v) in [("egress_connect", &f.egress_connect), ("egress_rules", &f.egress_rules)] {
                    if let Some(v) = v {
                        self.err(at, v, field, format!("`{field}` is a command-runtime field; the Podman runtime connects and lists rules itself"), Some("remove it"));
                    }
                }
                self.podman_runtime(at, r.get_ref(), templates).map(Runtime::Podman)
            }
            other => {
                let r = f.runtime.as_ref().expect("a kind other than the default comes from a table");
                self.err(
                    at,
                    &r.get_ref().kind,
                    "runtime.kind",
                    format!("unknown runtime `{}`", other.escape_debug()),
                    Some("write `kind = \"podman\"` (agentctl runs the container) or `kind = \"command\"` (your own runtime's commands)"),
                );
                None
            }
        }
    }

    fn command_runtime(&mut self, at: &At<'_>, f: &raw::ServiceFile) -> Option<Runtime> {
        if let Some(r) = &f.runtime {
            let r = r.get_ref();
            if r.health.is_some() || r.auth_file.is_some() || r.memory.is_some() || r.command.is_some() {
                self.err(
                    at,
                    &r.kind,
                    "runtime",
                    "Podman settings under `kind = \"command\"`".into(),
                    Some("set `kind = \"podman\"`, or remove them"),
                );
            }
        }
        let mut argv = |field: &'static str, v: &Option<S<Vec<S<String>>>>| match v {
            Some(v) => self.argv(at, v, field),
            None => {
                self.err(at, &f.image, field, format!("the command runtime needs `{field}`"), Some("name the host's runtime command, e.g. `activate = [\"agent-runtime\", \"activate\"]`, or use `[runtime] kind = \"podman\"`"));
                None
            }
        };
        let activate = argv("activate", &f.activate);
        let health = argv("health", &f.health);
        let probe = argv("probe", &f.probe);
        let egress_connect = f.egress_connect.as_ref().and_then(|v| self.argv(at, v, "egress_connect"));
        let egress_list = f.egress_rules.as_ref().and_then(|v| self.argv(at, v, "egress_rules"));
        Some(Runtime::Command(CommandRuntime {
            activate: activate?,
            health: health?,
            probe: probe?,
            egress_connect,
            egress_list,
        }))
    }

    fn podman_runtime(&mut self, at: &At<'_>, r: &raw::Runtime, templates: &[Template]) -> Option<PodmanRuntime> {
        let before = self.diags.len();
        let auth_file = r.auth_file.as_ref().and_then(|v| {
            let p = remote_path(v.get_ref());
            if p.is_none() {
                self.err(at, v, "runtime.auth_file", format!("`{}` is not an absolute path on the host", v.get_ref().escape_debug()), Some("name the host's auth file, e.g. `/etc/agentctl/auth.json` (`podman login --authfile`); never a credential"));
            }
            p
        });
        let env_file = r.env_file.as_ref().map(|v| {
            if !templates.iter().any(|t| &t.target == v.get_ref()) {
                self.err(
                    at,
                    v,
                    "runtime.env_file",
                    format!("no template renders `{}`", v.get_ref().escape_debug()),
                    Some("name the `target` of one of the service's `[[template]]`s"),
                );
            }
            v.get_ref().clone()
        });
        let mount = match &r.mount {
            Some(v) if remote_path(v.get_ref()).is_some() => v.get_ref().clone(),
            Some(v) => {
                self.err(
                    at,
                    v,
                    "runtime.mount",
                    format!("`{}` is not an absolute path", v.get_ref().escape_debug()),
                    Some("e.g. `/etc/agent`"),
                );
                String::new()
            }
            None => DEFAULT_MOUNT.to_owned(),
        };
        let command = match &r.command {
            Some(v) if v.get_ref().is_empty() => Vec::new(),
            Some(v) => self.argv(at, v, "runtime.command").unwrap_or_default(),
            None => Vec::new(),
        };
        let memory = match &r.memory {
            Some(v) if memory_ok(v.get_ref()) => v.get_ref().to_ascii_lowercase(),
            Some(v) => {
                self.err(
                    at,
                    v,
                    "runtime.memory",
                    format!("`{}` is not a memory size", v.get_ref().escape_debug()),
                    Some("bytes with an optional k, m or g suffix, at least 6m, e.g. `256m`"),
                );
                String::new()
            }
            None => DEFAULT_MEMORY.to_owned(),
        };
        let cpus = match &r.cpus {
            Some(v) if v.get_ref().is_finite() && *v.get_ref() > 0.0 && *v.get_ref() <= 1024.0 => {
                format!("{}", v.get_ref())
            }
            Some(v) => {
                self.err(
                    at,
                    v,
                    "runtime.cpus",
                    format!("{} is not a number of CPUs", v.get_ref()),
                    Some("a positive decimal, e.g. `0.5`"),
                );
                String::new()
            }
            None => DEFAULT_CPUS.to_owned(),
        };
        let pids = self.ranged(at, r.pids.as_ref(), "runtime.pids", 8, 1 << 20, DEFAULT_PIDS);
        let mut volumes: Vec<Volume> = Vec::new();
        for (i, v) in r.volumes.iter().enumerate() {
            match v.get_ref().split_once(':') {
                Some((name, target))
                    if !name.is_empty()
                        && name.len() <= 64
                        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && remote_path(target).is_some()
                        && !volumes.iter().any(|x| x.name == name) =>
                {
                    volumes.push(Volume { name: name.to_owned(), target: target.to_owned() })
                }
                _ => self.err(at, v, &format!("runtime.volumes[{i}]"), format!("`{}` is not a volume", v.get_ref().escape_debug()), Some("write `name:/path/in/container` with a lower-case name (each name once); host paths are never mounted")),
            }
        }
        let mut capabilities = Vec::new();
        for (i, c) in r.capabilities.iter().enumerate() {
            let upper = c.get_ref().to_ascii_uppercase();
            let name = upper.trim_start_matches("CAP_").to_owned();
            if CAPABILITIES.contains(&name.as_str()) {
                capabilities.push(name);
            } else {
                self.err(
                    at,
                    c,
                    &format!("runtime.capabilities[{i}]"),
                    format!("`{}` is not a capability a workload may add", c.get_ref().escape_debug()),
                    Some("one of NET_BIND_SERVICE, KILL, CHOWN, FOWNER: a capability that leads back to root or around the egress rules is never added"),
                );
            }
        }
        let overlap = r.overlap.as_ref().is_none_or(|v| *v.get_ref());
        let stop_timeout_secs = self.ranged(
            at,
            r.stop_timeout_secs.as_ref(),
            "runtime.stop_timeout_secs",
            0,
            60,
            DEFAULT_STOP_TIMEOUT_SECS,
        );
        let retain = self.ranged(at, r.retain.as_ref(), "runtime.retain", 1, 20, DEFAULT_RETAIN);
        let health = match &r.health {
            Some(h) => self.health(at, h, overlap, r.overlap.as_ref()),
            None => {
                self.err(at, &r.kind, "runtime.health", "the Podman runtime needs `[runtime.health]`".into(), Some("e.g. `http = \"/healthz\"` and `port = 8080`, `tcp = true` and `port`, or `exec = [\"/bin/check\"]`"));
                None
            }
        };
        if self.diags.len() != before {
            return None;
        }
        Some(PodmanRuntime {
            auth_file,
            env_file,
            mount,
            command,
            memory,
            cpus,
            pids: u32::try_from(pids).unwrap_or(u32::MAX),
            volumes,
            writable_root: r.writable_root.as_ref().is_some_and(|v| *v.get_ref()),
            capabilities,
            overlap,
            stop_timeout_secs: u64::try_from(stop_timeout_secs).unwrap_or(0),
            retain: u32::try_from(retain).unwrap_or(1),
            health: health?,
        })
    }

    fn health(
        &mut self,
        at: &At<'_>,
        h: &S<raw::Health>,
        overlap: bool,
        overlap_at: Option<&S<bool>>,
    ) -> Option<HealthCheck> {
        let t = h.get_ref();
        let port = t.port.as_ref().map(|p| self.ranged(at, Some(p), "runtime.health.port", 1, 65535, 1));
        let kinds = usize::from(t.http.is_some()) + usize::from(t.tcp.is_some()) + usize::from(t.exec.is_some());
        if kinds != 1 {
            self.err(
                at,
                h,
                "runtime.health",
                "name exactly one of `http`, `tcp` and `exec`".into(),
                Some("e.g. `http = \"/healthz\"` with `port = 8080`"),
            );
            return None;
        }
        let port_u16 = |p: Option<i64>| p.and_then(|p| u16::try_from(p).ok());
        let probe = if let Some(path) = &t.http {
            let ok = path.get_ref().starts_with('/')
                && path.get_ref().len() <= 512
                && path.get_ref().bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                self.err(
                    at,
                    path,
                    "runtime.health.http",
                    format!("`{}` is not a request path", path.get_ref().escape_debug()),
                    Some("an absolute path without spaces, e.g. `/healthz`"),
                );
                return None;
            }
            let Some(port) = port_u16(port) else {
                self.err(
                    at,
                    path,
                    "runtime.health.port",
                    "an HTTP check needs `port`".into(),
                    Some("the port the workload listens on, e.g. `port = 8080`"),
                );
                return None;
            };
            HealthProbe::Http { port, path: path.get_ref().clone() }
        } else if let Some(tcp) = &t.tcp {
            let Some(port) = port_u16(port).filter(|_| *tcp.get_ref()) else {
                self.err(at, tcp, "runtime.health.port", "a TCP check needs `tcp = true` and `port`".into(), None);
                return None;
            };
            HealthProbe::Tcp { port }
        } else {
            let exec = t.exec.as_ref().expect("one kind is set");
            HealthProbe::Exec(self.argv(at, exec, "runtime.health.exec")?)
        };
        if overlap && !matches!(probe, HealthProbe::Exec(_)) {
            let hint = Some("the old and the new container share the host's network, so a port check could reach the old one: set `overlap = false` under `[runtime]` (the old container stops first), or check with `exec`");
            match overlap_at {
                Some(o) => {
                    self.err(at, o, "runtime.overlap", "a port health check needs `overlap = false`".into(), hint)
                }
                None => self.err(at, h, "runtime.overlap", "a port health check needs `overlap = false`".into(), hint),
            }
            return None;
        }
        let start_period_secs =
            self.ranged(at, t.start_period_secs.as_ref(), "runtime.health.start_period_secs", 0, 3600, 0);
        let interval_secs = self.ranged(at, t.interval_secs.as_ref(), "runtime.health.interval_secs", 1, 600, 1);
        let retries = self.ranged(at, t.retries.as_ref(), "runtime.health.retries", 1, 1000, 3);
        let timeout_secs = self.ranged(at, t.timeout_secs.as_ref(), "runtime.health.timeout_secs", 1, 600, 2);
        Some(HealthCheck {
            probe,
            start_period_secs: start_period_secs.unsigned_abs(),
            interval_secs: interval_secs.unsigned_abs(),
            retries: u32::try_from(retries).unwrap_or(3),
            timeout_secs: timeout_secs.unsigned_abs(),
        })
    }
}

/// `256m`, `1g`, `1048576`: at least 6 MiB, as Podman requires.
fn memory_ok(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    !digits.is_empty()
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n.saturating_mul(mult) >= 6 << 20)
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_sizes() {
        for ok in ["256m", "1g", "6291456", "8192K"] {
            assert!(super::memory_ok(ok), "{ok}");
        }
        for bad in ["", "m", "5m", "1.5g", "-1m", "1t", "99999999999999m"] {
            assert!(!super::memory_ok(bad), "{bad}");
        }
    }
}
