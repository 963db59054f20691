//! The remote steps of an apply, as data: stage, swap, activate, health, unset. Fixed
//! scripts; paths and ids only as positional arguments.

use crate::manifest::{CommandRuntime, Host, Service};
use crate::remote::RemoteCommand;

/// Stages a release from a tar stream on stdin: `root service id content-hash`.
/// Idempotent: an existing directory is kept only when its whole content identity (files,
/// modes, links, extra entries) is the planned one; any other is set aside.
const STAGE: &str = r#"set -eu
root="$1"; service="$2"; id="$3"; want="$4"
rel="$root/$service/releases"
mkdir -p "$rel"
@HASH_DIR@if [ -d "$rel/$id" ] && [ ! -L "$rel/$id" ]; then
  if [ "sha256:$(hash_dir "$rel/$id")" = "$want" ]; then cat > /dev/null; echo "kept"; exit 0; fi
  mv -T "$rel/$id" "$rel/.damaged-$id-$(date +%s)-$$"
fi
tmp=$(mktemp -d "$rel/.staging-$id.XXXXXX")
tar -x -f - -C "$tmp" --no-same-owner --no-same-permissions
# Whatever the umask: directories 0755, files 0644, as the content identity expects.
find "$tmp" -type d -exec chmod 755 {} +
find "$tmp" -type f -exec chmod 644 {} +
got="sha256:$(hash_dir "$tmp")"
[ "$got" = "$want" ] || { rm -rf "$tmp"; echo "staged content hashes to $got, expected $want" >&2; exit 3; }
mv -T "$tmp" "$rel/$id"
echo "staged"
"#;

/// Points `current` at a staged release atomically: a new symlink renamed over the old.
const SWAP: &str = r#"set -eu
root="$1"; service="$2"; id="$3"
d="$root/$service"
[ -d "$d/releases/$id" ] || { echo "release $id is not staged" >&2; exit 3; }
ln -sfn "releases/$id" "$d/.current.$$"
mv -T "$d/.current.$$" "$d/current"
"#;

/// Removes `current` (rolling back a host that had no release before).
const UNSET: &str = r#"set -eu
rm -f "$1/$2/current"
"#;

pub fn stage(host: &Host, service: &Service, id: &str, content_hash: &str) -> RemoteCommand {
    RemoteCommand::script(
        &STAGE.replace("@HASH_DIR@", crate::release::HASH_DIR_SH),
        [host.root.to_string(), service.name.to_string(), id.to_owned(), content_hash.to_owned()],
    )
}

pub fn swap(host: &Host, service: &Service, id: &str) -> RemoteCommand {
    RemoteCommand::script(SWAP, [host.root.to_string(), service.name.to_string(), id.to_owned()])
}

pub fn unset(host: &Host, service: &Service) -> RemoteCommand {
    RemoteCommand::script(UNSET, [host.root.to_string(), service.name.to_string()])
}

/// `activate... <service> <release-dir>`.
pub fn activate(host: &Host, service: &Service, c: &CommandRuntime, id: &str) -> RemoteCommand {
    let dir = format!("{}/{}/releases/{id}", host.root, service.name);
    RemoteCommand::new(&c.activate[0], c.activate[1..].iter().cloned().chain([service.name.to_string(), dir]))
}

/// `health... <service>`.
pub fn health(service: &Service, c: &CommandRuntime) -> RemoteCommand {
    RemoteCommand::new(&c.health[0], c.health[1..].iter().cloned().chain([service.name.to_string()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::tests_support::example;

    /// `current` moves by one `rename(2)` of a complete new link over the old one — never
    /// removed, never absent, for both runtimes' swap (a `rm current; ln -s …` swap fails
    /// here). What the scripts do to the file system is read by strace, not assumed.
    #[test]
    fn the_swap_is_one_rename_over_current_and_never_an_unlink() {
        let strace = std::path::Path::new("/usr/bin/strace");
        assert!(strace.exists(), "strace is needed (apt-get install strace; `cargo xtask setup` installs it)");
        let (set, mut host) = example();
        let (podman_set, _) = crate::release::tests_support::example_podman();
        let svc = set.services.values().next().unwrap();
        let psvc = podman_set.services.values().next().unwrap();
        for runtime in ["command", "podman"] {
            let dir = tempfile::tempdir().unwrap();
            host.root = crate::manifest::RemotePath(dir.path().display().to_string());
            let api = dir.path().join("api");
            for r in ["r-000000000000000a", "r-000000000000000b"] {
                std::fs::create_dir_all(api.join("releases").join(r)).unwrap();
            }
            std::os::unix::fs::symlink("releases/r-000000000000000a", api.join("current")).unwrap();
            let cmd = match runtime {
                "command" => swap(&host, svc, "r-000000000000000b"),
                _ => crate::podman::swap(&host, psvc, psvc.podman().unwrap(), "r-000000000000000b"),
            };
            let log = dir.path().join("strace.log");
            let out = std::process::Command::new(strace)
                .args(["-f", "-qq", "-e", "trace=unlink,unlinkat,rename,renameat,renameat2,rmdir", "-o"])
                .arg(&log)
                .arg(&cmd.program)
                .args(&cmd.args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{runtime}: {}", String::from_utf8_lossy(&out.stderr));
            let trace = std::fs::read_to_string(&log).unwrap();
            let current = format!("\"{}\"", api.join("current").display());
            let touching: Vec<&str> = trace.lines().filter(|l| l.contains(&current)).collect();
            assert!(!touching.iter().any(|l| l.contains("unlink") || l.contains("rmdir")), "{runtime}: {touching:#?}");
            let renamed: Vec<&&str> =
                touching.iter().filter(|l| l.contains("rename") && l.trim_end().ends_with("= 0")).collect();
            assert_eq!(renamed.len(), 1, "{runtime}: exactly one rename onto `current`: {touching:#?}");
            let (from, to) = (renamed[0].find(".current."), renamed[0].find(&current));
            assert!(from.is_some() && to > from, "{runtime}: a new link renamed onto `current`: {}", renamed[0]);
            assert_eq!(
                std::fs::read_link(api.join("current")).unwrap().display().to_string(),
                "releases/r-000000000000000b"
            );
        }
    }

    #[test]
    fn commands_are_data_with_arguments_apart() {
        let (set, host) = example();
        let svc = set.services.values().next().unwrap();
        let c = svc.commands().unwrap();
        let a = activate(&host, svc, c, "r-0123456789abcdef");
        assert_eq!(a.program, "agent-runtime");
        assert_eq!(a.args, ["activate", "api", "/srv/agents/api/releases/r-0123456789abcdef"]);
        let s = swap(&host, svc, "r-0123456789abcdef");
        assert_eq!(s.args[3..], ["/srv/agents", "api", "r-0123456789abcdef"]);
        assert_eq!(health(svc, c).args, ["health", "api"]);
    }

    #[test]
    fn stage_and_swap_work_on_a_real_tree() {
        let (set, mut host) = example();
        let svc = set.services.values().next().unwrap();
        let dir = tempfile::tempdir().unwrap();
        host.root = crate::manifest::RemotePath(dir.path().display().to_string());
        let files = std::collections::BTreeMap::from([
            ("release.json".to_owned(), b"{}".to_vec()),
            ("a b/it's.txt".to_owned(), b"x".to_vec()),
        ]);
        let hash = crate::release::content_hash(&files);
        let tar =
            crate::tarball::tar(&files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect::<Vec<_>>()).unwrap();
        let run = |cmd: RemoteCommand, stdin: &[u8]| {
            use std::io::Write as _;
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd.shell_line())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            child.wait_with_output().unwrap()
        };
        let out = run(stage(&host, svc, "r-0123456789abcdef", &hash), &tar);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            std::fs::read(dir.path().join("api/releases/r-0123456789abcdef/a b/it's.txt")).unwrap(),
            b"x",
            "names with spaces and quotes arrive literally"
        );
        let again = run(stage(&host, svc, "r-0123456789abcdef", &hash), &tar);
        assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "kept");
        let bad = run(stage(&host, svc, "r-1111111111111111", "sha256:0000"), &tar);
        assert!(!bad.status.success(), "a stream that does not hash as planned is refused");
        assert!(run(swap(&host, svc, "r-0123456789abcdef"), b"").status.success());
        assert_eq!(
            std::fs::read_link(dir.path().join("api/current")).unwrap(),
            std::path::Path::new("releases/r-0123456789abcdef")
        );
        assert!(
            !run(swap(&host, svc, "r-2222222222222222"), b"").status.success(),
            "cannot point at an unstaged release"
        );
    }
}
