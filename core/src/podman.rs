//! The built-in Podman runtime as data: the fixed scripts agentctl runs on a golden VM
//! (argv only: every value is a positional argument, nothing from input is ever part of
//! a shell line), the container options derived from a service's `[runtime]`, and the
//! strict parser of what the host reports as running. docs/RUNTIME.md tells the story.
//!
//! One container per release, `agentctl-<service>-<release-id>`, labelled with the
//! service, release, plan and image. The order of a host's move is **start first**: the
//! new container starts (egress rules loaded before it), must pass its health check,
//! and only then is `current` swapped (`rename(2)`) and the old container stopped. A crash
//! at any point leaves `current` on the old release with the old container running (at
//! most a stray new container beside it), or on the new release with the new container
//! running and healthy (at most a stray old one beside it).

use crate::manifest::{HealthProbe, Host, PodmanRuntime, Service};
use crate::remote::RemoteCommand;
use std::fmt;

/// The container of release `id` of `service`.
pub fn container_name(service: &str, id: &str) -> String {
    format!("agentctl-{service}-{id}")
}

/// Shell functions every script shares. `image_of DIR` sets `img` from the release's
/// own `release.json` (staged by agentctl and content-checked): its `platform_image` (an
/// image index's manifest for the service's platform) when it names one, else its
/// `image`; a pinned `repository@sha256:<64 hex>` made of safe characters, or the script
/// ends.
/// `load_egress DIR` loads the release's `egress.nft` (replacing the service's table
/// atomically) or removes the service's table when the release has none.
const COMMON: &str = r#"
image_of() {
  img=$(sed -n 's/.*"platform_image":"\([^"]*\)".*/\1/p' "$1/release.json" | head -n 1)
  [ -n "$img" ] || img=$(sed -n 's/.*"image":"\([^"]*\)".*/\1/p' "$1/release.json" | head -n 1)
  h=${img##*@sha256:}
  case "$img" in
    -*|*[!A-Za-z0-9._:/@-]*|'') echo "release $(basename "$1") names no usable image" >&2; exit 3 ;;
    *@sha256:*) ;;
    *) echo "release $(basename "$1") names an image that is not pinned by digest" >&2; exit 3 ;;
  esac
  case "$h" in *[!0-9a-f]*) echo "release $(basename "$1"): malformed digest" >&2; exit 3 ;; esac
  [ "${#h}" -eq 64 ] || { echo "release $(basename "$1"): malformed digest" >&2; exit 3; }
}
load_egress() {
  table="agentctl_$(printf %s "$service" | tr - _)"
  if [ -f "$1/egress.nft" ]; then
    nft -f "$1/egress.nft" || { echo "cannot load the egress rules of $service (nft -f)" >&2; exit 1; }
  elif command -v nft >/dev/null 2>&1 && nft list table inet "$table" >/dev/null 2>&1; then
    nft delete table inet "$table"
  fi
}
need_podman() {
  command -v podman >/dev/null 2>&1 || { echo "podman is not installed on this host (apt-get install podman)" >&2; exit 3; }
}
"#;

/// Pulls the staged release's image by digest, at a promotion's staging: `root service id
/// authfile|-`. Podman checks the digest of what it pulls, and a digest already in local
/// storage costs no download: the pull comes first (one Podman call for a new image), and
/// local storage is the fallback only when the pull fails. (A rollback stages nothing: its
/// release and image are already on the host, and its start never pulls while they are.)
const PULL: &str = r#"set -eu
root="$1"; service="$2"; id="$3"; auth="$4"
@COMMON@
need_podman
image_of "$root/$service/releases/$id"
if [ "$auth" != - ]; then
  [ -r "$auth" ] || { echo "the registry auth file $auth does not exist on this host" >&2; exit 3; }
  set -- --authfile "$auth"
else
  set --
fi
if out=$(podman pull --quiet "$@" "$img" 2>&1 >/dev/null); then echo "pulled"; exit 0; fi
if podman image exists "$img"; then echo "present (the pull failed: $(printf %s "$out" | tail -n 1))"; exit 0; fi
echo "pull of $img failed: $(printf %s "$out" | tail -n 3)" >&2; exit 4
"#;

/// Starts the container of a release: `root service id|- overlap stop-timeout plan
/// authfile|- retain OPTIONS...`, where `-` means the release `current` points at (the
/// way back after a failed start). In OPTIONS, `@USER@` becomes the workload user's
/// `uid:gid`, an argument starting with `@REL@` has it replaced by the release directory,
/// and `@IMAGE@` becomes the pinned image. Egress rules are loaded before the container
/// exists. From one listing of the service's containers: with `overlap` 0 the others
/// stop first; the stopped ones beyond the `retain` most recently started (this release
/// counted) are removed with their images, never the container `current` names (the way
/// back) nor this release's image. Pruning never fails the step.
const START: &str = r#"set -eu
root="$1"; service="$2"; id="$3"; overlap="$4"; stopt="$5"; plan="$6"; auth="$7"; retain="$8"; shift 8
@COMMON@
need_podman
d="$root/$service"
if [ "$id" = - ]; then
  if [ ! -L "$d/current" ]; then load_egress /nonexistent; echo "no current release"; exit 0; fi
  id=$(readlink "$d/current"); id=${id#releases/}
fi
case "$id" in r-*) ;; *) echo "current does not name a release" >&2; exit 3 ;; esac
case "$id" in *[!a-z0-9-]*) echo "current does not name a release" >&2; exit 3 ;; esac
rel="$d/releases/$id"
[ -d "$rel" ] || { echo "release $id is not staged on this host" >&2; exit 3; }
image_of "$rel"
name="agentctl-$service-$id"
user="agent-$service"
uid=$(id -u "$user" 2>/dev/null) && gid=$(id -g "$user" 2>/dev/null) || {
  echo "the workload user $user does not exist on this host (useradd --system --no-create-home --shell /usr/sbin/nologin $user)" >&2; exit 3; }
[ "$uid" != 0 ] && [ "$gid" != 0 ] || { echo "the workload user $user is root or in group root" >&2; exit 3; }
load_egress "$rel"
live=""
if [ -L "$d/current" ]; then live=$(readlink "$d/current"); live="agentctl-$service-${live#releases/}"; fi
# Podman 4's `.State` is words ("Up 3 seconds ago", "Exited (0) …"): it comes last, and the
# image label carries a prefix so that an empty one shifts no field. A listing that fails
# fails the step: "no containers" would start the new one beside the old.
raw=$(podman ps -a --filter "label=agentctl.service=$service" --format '{{.StartedAt}} {{.Names}} img={{index .Labels "agentctl.image"}} {{.State}}') || {
  echo "cannot list the containers of $service (podman ps)" >&2; exit 1; }
list=$(printf '%s\n' "$raw" | sort -rn)
stale=""; images=""; n=1
while read -r started c image state; do
  [ -n "$c" ] && [ "$c" != "$name" ] || continue
  image=${image#img=}
  n=$((n + 1))
  case "$state" in
    Up*|[Rr]unning*) [ "$overlap" = 0 ] || continue; podman stop -t "$stopt" "$c" >/dev/null ;;
  esac
  [ "$n" -gt "$retain" ] && [ "$c" != "$live" ] || continue
  stale="$stale $c"
  # A label is only believed as a pinned image of safe characters, and never this release's.
  case "$image" in -*|*[!A-Za-z0-9._:/@-]*|"$img") ;; *@sha256:*) images="$images $image" ;; esac
done <<LIST
$list
LIST
if [ -n "$stale" ]; then
  podman rm -f -- $stale >/dev/null 2>&1 || echo "could not remove every old container of $service:$stale" >&2
  # An image another container still uses stays.
  [ -z "$images" ] || podman rmi -- $images >/dev/null 2>&1 || true
fi
opts=1
for a do
  shift
  if [ "$opts" = 1 ]; then
    case "$a" in
      @USER@) a="$uid:$gid" ;;
      @IMAGE@) a="$img"; opts=0 ;;
      @REL@*) a="$rel${a#@REL@}" ;;
    esac
  fi
  set -- "$@" "$a"
done
run() {
  podman run --detach --name "$name" --label "agentctl.service=$service" --label "agentctl.release=$id" \
    --label "agentctl.plan=$plan" --label "agentctl.image=$img" --pull never "$@" 2>&1 >/dev/null
}
# The usual case in one Podman call: a new container from the image staging pulled.
if out=$(run "$@"); then
  :
elif label=$(podman container inspect --format '{{index .Config.Labels "agentctl.release"}}' "$name" 2>/dev/null); then
  # It exists: a rollback or a restore of a kept container (or one that never started).
  [ "$label" = "$id" ] || { echo "a container named $name exists that agentctl did not create; remove it (podman rm $name)" >&2; exit 3; }
  out=$(podman start "$name" 2>&1 >/dev/null) || { echo "the container could not start: $(printf %s "$out" | tail -n 2)" >&2; exit 1; }
elif ! podman image exists "$img"; then
  # A rollback whose image was pruned by hand: pulled again (the registry must answer).
  if [ "$auth" != - ]; then a="--authfile=$auth"; else a="--quiet"; fi
  out=$(podman pull --quiet "$a" "$img" 2>&1 >/dev/null) || { echo "pull of $img failed: $(printf %s "$out" | tail -n 3)" >&2; exit 4; }
  out=$(run "$@") || { echo "the container could not start: $(printf %s "$out" | tail -n 2)" >&2; exit 1; }
else
  echo "the container could not start: $(printf %s "$out" | tail -n 2)" >&2; exit 1
fi
echo "started $name"
"#;

/// Waits until the container of release `id` is healthy: `root service id start-period
/// interval retries timeout http|tcp|exec port path ARGV...`. Ends at once when the
/// container stops (with its last log lines); HTTP and TCP checks connect to
/// `127.0.0.1:port` from the host (bash's `/dev/tcp`), `exec` runs ARGV in the container.
const CHECK: &str = r#"set -u
@COMMON@
root="$1"; service="$2"; id="$3"; period="$4"; interval="$5"; retries="$6"; to="$7"; kind="$8"; port="$9"; path="${10}"; shift 10
name="agentctl-$service-$id"
# Read back what the container runs: the release's pinned image, or the host fails.
readback() {
  image_of "$root/$service/releases/$id"
  runs=$(podman container inspect --format '{{.ImageDigest}}' "$name" 2>/dev/null | tr -dc 'a-z0-9:' | cut -c 1-80)
  # Podman may name an image pulled by its index and by its platform manifest by either.
  index=$(sed -n 's/.*"image":"[^"@]*@\(sha256:[0-9a-f]*\)".*/\1/p' "$root/$service/releases/$id/release.json" | head -n 1)
  case "$runs" in "${img##*@}"|"${index:-none}") ;;
    *) echo "the container runs image ${runs:-(none)}, not the release's ${img##*@}" >&2; exit 1 ;; esac
}
start=$(date +%s); fails=0; why=""; pause=0.1
attempt() {
  case "$kind" in
    http) why=$(timeout "$to" bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 2
printf "GET %s HTTP/1.0\r\nHost: localhost\r\nUser-Agent: agentctl\r\nConnection: close\r\n\r\n" "$1" >&3
IFS= read -r line <&3 || exit 2
code=$(printf %s "$line" | cut -c 1-12 | tr -dc "A-Z0-9/. ")
case "$code" in "HTTP/1."[01]" "[23]*) exit 0 ;; esac
echo "GET $1 answered: $code"; exit 1' "$port" "$path" 2>&1) ;;
    tcp) why=$(timeout "$to" bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>&1) ;;
    exec) timeout "$to" podman exec "$name" "$@" >/dev/null 2>&1; rc=$?
          why="the check exited with status $rc"; return "$rc" ;;
  esac
}
while :; do
  # The check first; Podman is asked (a whole process each time) only when it fails.
  if attempt; then readback; echo "healthy"; exit 0; fi
  state=$(podman container inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$name" 2>/dev/null) || {
    echo "the container $name does not exist" >&2; exit 1; }
  case "$state" in
    running*) ;;
    *) echo "the container stopped (${state%% *}, exit status ${state##* }); its output stays on the host: podman logs $name" >&2; exit 1 ;;
  esac
  [ -n "$why" ] || why="no answer within ${to} s"
  if [ $(( $(date +%s) - start )) -ge "$period" ]; then
    fails=$((fails + 1))
    if [ "$fails" -ge "$retries" ]; then echo "unhealthy after $fails attempts ($kind): $why" >&2; exit 1; fi
  fi
  # A workload that is nearly up is seen at once: 0.1 s, doubling up to the interval.
  sleep "$pause"
  pause=$(awk -v p="$pause" -v m="$interval" 'BEGIN { p *= 2; print (p > m ? m : p) }')
done
"#;

/// Points `current` at release `id` atomically; with `overlap` 1 the service's other
/// containers then stop (with `overlap` 0 the start step stopped them):
/// `root service id stop-timeout overlap`. Only the swap can fail the step; what follows
/// it is reported on stderr and never undoes it.
const SWAP: &str = r#"set -eu
root="$1"; service="$2"; id="$3"; stopt="$4"; overlap="$5"
d="$root/$service"
[ -d "$d/releases/$id" ] || { echo "release $id is not staged" >&2; exit 3; }
ln -sfn "releases/$id" "$d/.current.$$"
mv -T "$d/.current.$$" "$d/current"
[ "$overlap" = 1 ] || exit 0
set +e
name="agentctl-$service-$id"
for c in $(podman ps --filter "label=agentctl.service=$service" --format '{{.Names}}'); do
  [ "$c" = "$name" ] || podman stop -t "$stopt" "$c" >/dev/null || echo "could not stop $c" >&2
done
exit 0
"#;

/// Stops and removes the container of release `id` (a start that failed), unless
/// `current` already names it (a swap that renamed and then failed): `root service id
/// stop-timeout`.
const DISCARD: &str = r#"set -eu
root="$1"; service="$2"; id="$3"; stopt="$4"
name="agentctl-$service-$id"
if [ "$(readlink "$root/$service/current" 2>/dev/null)" = "releases/$id" ]; then
  echo "\`current\` already names $id (the swap happened): its container is live and is not discarded" >&2; exit 3
fi
if podman container exists "$name"; then podman rm -f -t "$stopt" "$name" >/dev/null; fi
echo "discarded $name"
"#;

/// What runs, for the probe's `running` line: `root secrets-csv service`. One line of
/// `key=value` words (see [`Report`]).
const RUNNING: &str = r#"root="$1"; secrets="$2"; service="$3"
command -v podman >/dev/null 2>&1 || { echo "podman=none"; exit 0; }
id=""
if [ -L "$root/$service/current" ]; then id=$(readlink "$root/$service/current"); id=${id#releases/}; fi
case "$id" in r-*) ;; *) id="" ;; esac
case "$id" in *[!a-z0-9-]*) id="" ;; esac
missing=""
if [ -n "$secrets" ]; then
  have=$(podman secret ls --format '{{.Name}}' 2>/dev/null)
  for s in $(printf %s "$secrets" | tr , ' '); do
    printf '%s\n' "$have" | grep -qx -- "$s" || missing="$missing,$s"
  done
fi
printf 'podman=1'
[ -z "$missing" ] || printf ' missing-secrets=%s' "${missing#,}"
others=""; n=0
for c in $(podman ps --filter "label=agentctl.service=$service" --format '{{.Names}}' 2>/dev/null); do
  [ "$c" != "agentctl-$service-$id" ] || continue
  n=$((n + 1)); [ "$n" -le 8 ] && others="$others,$c"
done
[ -z "$others" ] || printf ' others=%s' "${others#,}"
if [ -n "$id" ]; then
  if c=$(podman container inspect --format ' container={{.State.Status}} digest={{.ImageDigest}} restarts={{.RestartCount}} release={{index .Config.Labels "agentctl.release"}} id={{.Id}}' "agentctl-$service-$id" 2>/dev/null); then
    printf %s "$c" | tr -d '\n'
  else
    printf ' container=absent'
  fi
fi
echo
"#;

/// The workload's egress connection test, from the container's network (the host's,
/// where the rules are) as the workload user: `service address port`. Exit 0 when the
/// connection was made.
const CONNECT: &str = r#"service="$1"; addr="$2"; port="$3"
user="agent-$service"
exec setpriv --reuid="$user" --regid="$user" --clear-groups -- timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$addr" "$port" 2>/dev/null
"#;

/// The service's loaded egress table as `nft -j` lists it (nothing when none): `service`.
const RULES: &str = r#"service="$1"
nft -j list table inet "agentctl_$(printf %s "$service" | tr - _)" 2>/dev/null || true
"#;

fn script(body: &str) -> String {
    body.replace("@COMMON@", COMMON)
}

fn auth(p: &PodmanRuntime) -> String {
    p.auth_file.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// Pulls release `id`'s image on `host` (after staging).
pub fn pull(host: &Host, service: &Service, p: &PodmanRuntime, id: &str) -> RemoteCommand {
    RemoteCommand::script(&script(PULL), [host.root.to_string(), service.name.to_string(), id.to_owned(), auth(p)])
}

/// `podman create` options for `service` (placeholders resolved on the host): the
/// sandbox defaults, limits, secrets by name, the release mounted read-only.
pub fn create_options(service: &Service, p: &PodmanRuntime) -> Vec<String> {
    let mut o: Vec<String> = vec![
        "--user".into(),
        "@USER@".into(),
        "--network".into(),
        "host".into(),
        "--cap-drop".into(),
        "all".into(),
        "--security-opt".into(),
        "no-new-privileges".into(),
        "--memory".into(),
        p.memory.clone(),
        "--cpus".into(),
        p.cpus.clone(),
        "--pids-limit".into(),
        p.pids.to_string(),
        "--stop-timeout".into(),
        p.stop_timeout_secs.to_string(),
        "--volume".into(),
        format!("@REL@:{}:ro", p.mount),
    ];
    if !p.writable_root {
        o.push("--read-only".into());
    }
    for c in &p.capabilities {
        o.extend(["--cap-add".into(), c.clone()]);
    }
    if let Some(f) = &p.env_file {
        o.extend(["--env-file".into(), format!("@REL@/{f}")]);
    }
    for s in &service.secrets {
        o.extend(["--secret".into(), format!("{s},type=env,target={s}")]);
    }
    for v in &p.volumes {
        o.extend(["--volume".into(), format!("agentctl.{}.{}:{}", service.name, v.name, v.target)]);
    }
    o.push("@IMAGE@".into());
    o.extend(p.command.iter().cloned());
    o
}

/// Starts release `id`'s container (`None`: the release `current` points at).
pub fn start(host: &Host, service: &Service, p: &PodmanRuntime, id: Option<&str>, plan: &str) -> RemoteCommand {
    let mut args = vec![
        host.root.to_string(),
        service.name.to_string(),
        id.unwrap_or("-").to_owned(),
        if p.overlap { "1" } else { "0" }.to_owned(),
        p.stop_timeout_secs.to_string(),
        if plan.is_empty() { "-".to_owned() } else { plan.to_owned() },
        auth(p),
        p.retain.to_string(),
    ];
    args.extend(create_options(service, p));
    RemoteCommand::script(&script(START), args)
}

/// Waits for release `id`'s container to be healthy.
pub fn check(host: &Host, service: &Service, p: &PodmanRuntime, id: &str) -> RemoteCommand {
    let h = &p.health;
    let (kind, port, path, argv): (&str, u16, &str, &[String]) = match &h.probe {
        HealthProbe::Http { port, path } => ("http", *port, path, &[]),
        HealthProbe::Tcp { port } => ("tcp", *port, "-", &[]),
        HealthProbe::Exec(argv) => ("exec", 0, "-", argv),
    };
    let mut args = vec![
        host.root.to_string(),
        service.name.to_string(),
        id.to_owned(),
        h.start_period_secs.to_string(),
        h.interval_secs.to_string(),
        h.retries.to_string(),
        h.timeout_secs.to_string(),
        kind.to_owned(),
        port.to_string(),
        path.to_owned(),
    ];
    args.extend(argv.iter().cloned());
    RemoteCommand::script(&script(CHECK), args)
}

/// Swaps `current` to release `id` (and stops the others, with `overlap`).
pub fn swap(host: &Host, service: &Service, p: &PodmanRuntime, id: &str) -> RemoteCommand {
    RemoteCommand::script(
        SWAP,
        [
            host.root.to_string(),
            service.name.to_string(),
            id.to_owned(),
            p.stop_timeout_secs.to_string(),
            if p.overlap { "1" } else { "0" }.to_owned(),
        ],
    )
}

/// Removes the container of release `id`.
pub fn discard(host: &Host, service: &Service, p: &PodmanRuntime, id: &str) -> RemoteCommand {
    RemoteCommand::script(
        DISCARD,
        [host.root.to_string(), service.name.to_string(), id.to_owned(), p.stop_timeout_secs.to_string()],
    )
}

/// The probe's `running` argv (the probe appends the service name).
pub fn running_argv(host: &Host, service: &Service) -> Vec<String> {
    let secrets: Vec<&str> = service.secrets.iter().map(|s| s.as_str()).collect();
    vec!["sh".into(), "-c".into(), RUNNING.into(), "agentctl-running".into(), host.root.to_string(), secrets.join(",")]
}

/// A TCP connection attempt to `addr:port` as the workload.
pub fn connect(service: &Service, addr: std::net::IpAddr, port: u16) -> RemoteCommand {
    RemoteCommand::script(CONNECT, [service.name.to_string(), addr.to_string(), port.to_string()])
}

/// The service's loaded egress rules (`nft -j`), as the egress probe's `live` argv.
pub fn rules_argv() -> Vec<String> {
    vec!["sh".into(), "-c".into(), RULES.into(), "agentctl-rules".into()]
}

/// What a host reports about the container of `current` (the probe's `running` line).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Podman is installed.
    pub podman: bool,
    /// Secrets the service names that the host's Podman does not have.
    pub missing_secrets: Vec<String>,
    /// Other running containers under the service's names.
    pub others: Vec<String>,
    /// The container of `current`, when `current` names a release.
    pub container: Option<ContainerState>,
}

/// The container of `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// No container of that name.
    Absent,
    Present {
        /// Podman's state word: `running`, `exited`, `created`, `paused`, ….
        status: String,
        /// The image's manifest digest.
        digest: String,
        restarts: u64,
        /// The `agentctl.release` label (empty: not created by agentctl).
        release: String,
        /// Podman's container id (64 hex; empty when not reported): a container
        /// recreated under the same name has another.
        id: String,
    },
}

/// At most this many names are kept of a list in a report.
const MAX_NAMES: usize = 16;

impl Report {
    /// Parses the `running` line strictly: known keys, bounded values of safe characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "podman=none" {
            return Ok(Self::default());
        }
        let mut words = text.split(' ');
        if words.next() != Some("podman=1") {
            return Err("the runtime's report does not start with `podman=1`".into());
        }
        let mut r = Report { podman: true, ..Self::default() };
        let (mut status, mut digest, mut restarts, mut release, mut id) = (None, None, None, None, None);
        let list = |v: &str| -> Result<Vec<String>, String> {
            let names: Vec<String> = v.split(',').take(MAX_NAMES).map(str::to_owned).collect();
            if names.iter().all(|n| safe(n, 128)) {
                Ok(names)
            } else {
                Err("a name in the runtime's report has unexpected characters".into())
            }
        };
        for w in words.filter(|w| !w.is_empty()) {
            let (k, v) = w.split_once('=').ok_or_else(|| "the runtime's report has a word without `=`".to_owned())?;
            match k {
                "missing-secrets" => r.missing_secrets = list(v)?,
                "others" => r.others = list(v)?,
                "container" if v == "absent" => r.container = Some(ContainerState::Absent),
                "container" if safe(v, 32) => status = Some(v.to_owned()),
                "digest" if v.is_empty() || crate::image::Digest::new(v).is_ok() => digest = Some(v.to_owned()),
                "restarts" => restarts = Some(v.parse::<u64>().map_err(|_| "`restarts` is not a number".to_owned())?),
                "release" if v.is_empty() || safe(v, 64) => release = Some(v.to_owned()),
                "id" if v.is_empty() || (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())) => {
                    id = Some(v.to_owned())
                }
                _ => {
                    return Err(format!(
                        "unexpected `{}` in the runtime's report",
                        k.chars().take(32).collect::<String>()
                    ))
                }
            }
        }
        if let Some(status) = status {
            r.container = Some(ContainerState::Present {
                status,
                digest: digest.unwrap_or_default(),
                restarts: restarts.unwrap_or(0),
                release: release.unwrap_or_default(),
                id: id.unwrap_or_default(),
            });
        }
        Ok(r)
    }
}

fn safe(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The command that fixes what [`Report::ready`] found.
pub fn readiness_hint(reason: &str, service: &str) -> String {
    if reason.starts_with("podman is not installed") {
        "install Podman on the host (Debian: `apt-get install podman`; docs/RUNTIME.md lists what a host needs)".into()
    } else if !reason.contains("has no secret") {
        "the host's answer is not one agentctl's probe gives: check what runs the probe there (docs/RUNTIME.md)".into()
    } else {
        let names = reason.rsplit("secret ").next().unwrap_or("NAME");
        format!(
            "create each on the host, reading the value from a file or stdin: `podman secret create {} -` (agentctl never handles the value; `{service}` receives it as an environment variable)",
            names.split(", ").next().unwrap_or("NAME")
        )
    }
}

/// What is wrong with the workload of release `id`, if anything, given the recorded
/// image digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    NoPodman,
    /// No container for the live release.
    Absent,
    /// The container exists but does not run.
    Stopped(String),
    /// Restarted since it started.
    CrashLooping(u64),
    /// Not created by agentctl for this release (its labels say otherwise).
    Foreign(String),
    /// Other containers run under the service's names.
    Strays(Vec<String>),
    /// Runs another image.
    Digest(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPodman => write!(f, "podman is not installed on the host"),
            Self::Absent => write!(f, "the release's container does not exist (removed by hand?)"),
            Self::Stopped(s) => write!(f, "the release's container is {s}, not running"),
            Self::CrashLooping(n) => write!(f, "the release's container restarted {n} times"),
            Self::Foreign(why) => {
                write!(f, "the container under the release's name was not started by agentctl: {why}")
            }
            Self::Strays(names) => write!(f, "other containers run under the service's names: {}", names.join(", ")),
            Self::Digest(d) => write!(f, "the container runs image {d}"),
        }
    }
}

impl Report {
    /// Whether the host can run the service at all: Podman installed, every secret the
    /// service names present. `Err` names what is missing.
    pub fn ready(&self) -> Result<(), String> {
        if !self.podman {
            return Err("podman is not installed".into());
        }
        if !self.missing_secrets.is_empty() {
            return Err(format!("the host's Podman has no secret {}", self.missing_secrets.join(", ")));
        }
        Ok(())
    }

    /// Compares the report with the release `id` recorded with image `digest`.
    pub fn findings(&self, id: &str, digest: &str) -> Vec<Finding> {
        if !self.podman {
            return vec![Finding::NoPodman];
        }
        let mut out = Vec::new();
        match &self.container {
            None | Some(ContainerState::Absent) => out.push(Finding::Absent),
            Some(ContainerState::Present { status, digest: live, restarts, release, .. }) => {
                if release != id {
                    out.push(Finding::Foreign(if release.is_empty() {
                        "it has no agentctl labels".to_owned()
                    } else {
                        format!("it is labelled release `{release}`")
                    }));
                }
                if live != digest {
                    out.push(Finding::Digest(if live.is_empty() { "unknown".into() } else { live.clone() }));
                }
                if status != "running" {
                    out.push(Finding::Stopped(status.clone()));
                } else if *restarts > 0 {
                    out.push(Finding::CrashLooping(*restarts));
                }
            }
        }
        if !self.others.is_empty() {
            out.push(Finding::Strays(self.others.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn reports_parse_strictly() {
        let r = Report::parse(&format!(
            "podman=1 missing-secrets=A,B others=api container=running digest={D} restarts=2 release=r-0123456789abcdef"
        ))
        .unwrap();
        assert_eq!(r.missing_secrets, ["A", "B"]);
        assert_eq!(r.others, ["api"]);
        assert_eq!(
            r.findings("r-0123456789abcdef", D),
            [Finding::CrashLooping(2), Finding::Strays(vec!["api".into()])]
        );
        assert_eq!(Report::parse("podman=none").unwrap().findings("r-x", D), [Finding::NoPodman]);
        assert_eq!(Report::parse("podman=1 container=absent").unwrap().findings("r-x", D), [Finding::Absent]);
        for bad in [
            "",
            "docker=1",
            "podman=1 container=$(x)",
            "podman=1 digest=sha256:zz",
            "podman=1 what=1",
            "podman=1 restarts=-1",
        ] {
            assert!(Report::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hand_made_container_is_foreign_and_another_image_is_named() {
        let r = Report::parse("podman=1 container=exited digest= restarts=0 release=").unwrap();
        let f = r.findings("r-1", D);
        assert!(matches!(&f[0], Finding::Foreign(_)), "{f:?}");
        assert_eq!(f[1], Finding::Digest("unknown".into()));
        assert_eq!(f[2], Finding::Stopped("exited".into()));
    }

    /// The container options carry every sandbox default, and a relaxation only where the
    /// manifest names it; secrets go by name, the release mount is read-only.
    #[test]
    fn create_options_are_the_sandbox() {
        let (set, host) = crate::release::tests_support::example_podman();
        let svc = set.services.values().next().unwrap();
        let p = svc.podman().unwrap();
        let o = create_options(svc, p);
        let pair = |a: &str, b: &str| o.windows(2).any(|w| w[0] == a && w[1] == b);
        assert!(pair("--user", "@USER@") && pair("--cap-drop", "all") && pair("--security-opt", "no-new-privileges"));
        assert!(pair("--memory", "256m") && pair("--cpus", "0.5") && pair("--pids-limit", "128"));
        assert!(pair("--network", "host") && pair("--volume", "@REL@:/etc/agent:ro"));
        assert!(pair("--secret", "API_TOKEN,type=env,target=API_TOKEN") && pair("--env-file", "@REL@/config/api.env"));
        assert!(o.contains(&"--read-only".to_owned()) && !o.contains(&"--cap-add".to_owned()));
        assert_eq!(o.iter().filter(|a| a.starts_with("@REL@")).count(), 2, "no other host path is mounted");
        let relaxed = PodmanRuntime { writable_root: true, capabilities: vec!["NET_BIND_SERVICE".into()], ..p.clone() };
        let o = create_options(svc, &relaxed);
        assert!(!o.contains(&"--read-only".to_owned()));
        assert!(o.windows(2).any(|w| w[0] == "--cap-add" && w[1] == "NET_BIND_SERVICE"));
        let start = start(&host, svc, p, Some("r-0123456789abcdef"), "sha256:plan");
        assert_eq!(start.program, "sh", "a fixed script; the values are positional arguments");
        assert_eq!(start.args[3..11], ["/srv/agents", "api", "r-0123456789abcdef", "0", "10", "sha256:plan", "-", "3"]);
    }

    /// The scripts are valid POSIX shell (`sh -n`), with the shared functions in.
    #[test]
    fn scripts_parse() {
        for s in [
            script(PULL),
            script(START),
            CHECK.into(),
            SWAP.into(),
            DISCARD.into(),
            RUNNING.into(),
            CONNECT.into(),
            RULES.into(),
        ] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&s).output().unwrap();
            assert!(out.status.success(), "{}\n{s}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// A discard never removes the container `current` already names (a swap that renamed
    /// and then lost its answer): it refuses before asking Podman anything.
    #[test]
    fn discard_refuses_the_live_release() {
        let (set, mut host) = crate::release::tests_support::example_podman();
        let svc = set.services.values().next().unwrap();
        let dir = tempfile::tempdir().unwrap();
        host.root = crate::manifest::RemotePath(dir.path().display().to_string());
        std::fs::create_dir_all(dir.path().join("api/releases/r-0123456789abcdef")).unwrap();
        std::os::unix::fs::symlink("releases/r-0123456789abcdef", dir.path().join("api/current")).unwrap();
        let cmd = discard(&host, svc, svc.podman().unwrap(), "r-0123456789abcdef");
        let out = std::process::Command::new(&cmd.program).args(&cmd.args).output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("is live and is not discarded"));
    }

    /// `image_of` believes only a pinned, well-formed image from `release.json`.
    #[test]
    fn image_of_refuses_what_is_not_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let run = |json: &str| {
            std::fs::write(dir.path().join("release.json"), json).unwrap();
            let s = format!("{COMMON}\nimage_of \"$1\"; printf %s \"$img\"");
            std::process::Command::new("sh").arg("-c").arg(s).arg("sh").arg(dir.path()).output().unwrap()
        };
        let ok = run(&format!(r#"{{"digest":"{D}","image":"127.0.0.1:5000/demo/api@{D}"}}"#));
        assert!(ok.status.success());
        assert_eq!(String::from_utf8_lossy(&ok.stdout), format!("127.0.0.1:5000/demo/api@{D}"));
        for bad in [
            r#"{"image":"127.0.0.1:5000/demo/api:latest"}"#.to_owned(),
            format!(r#"{{"image":"-x@{D}"}}"#),
            format!(r#"{{"image":"a b@{D}"}}"#),
            r#"{"image":"r@sha256:abc"}"#.to_owned(),
            "{}".to_owned(),
            format!(r#"{{"image":"r/x@{D}","platform_image":"r/x:latest"}}"#),
        ] {
            assert!(!run(&bad).status.success(), "{bad}");
        }
        // An image index's release runs its platform manifest (release.json is canonical:
        // `image` comes before `platform_image`).
        let p = "sha256:".to_owned() + &"b".repeat(64);
        let index = run(&format!(r#"{{"digest":"{D}","image":"r/x@{D}","platform_image":"r/x@{p}"}}"#));
        assert_eq!(String::from_utf8_lossy(&index.stdout), format!("r/x@{p}"));
    }
}
