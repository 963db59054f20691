#!/bin/sh
# agent-runtime: stands in for systemd/podman on a lab golden VM.
#
#   agent-runtime activate SERVICE RELEASE_DIR   start the release: record the digest it runs
#   agent-runtime health SERVICE                 exit 0 when the service is healthy
#   agent-runtime running SERVICE                print the image digest that is running
#
# Per-host state lives in $AGENT_RUNTIME_DIR (set by the lab's sshd). Tests steer it:
#   $AGENT_RUNTIME_DIR/SERVICE.fail-health   exists: health checks fail (printing its content, if any, on stderr)
#   $AGENT_RUNTIME_DIR/SERVICE.report        exists: `running` prints its content instead
#   $AGENT_RUNTIME_DIR/SERVICE.hang-health   exists: health checks sleep for that many seconds
#   $AGENT_RUNTIME_DIR/SERVICE.hang-activate exists: activation sleeps for that many seconds
set -eu
state="${AGENT_RUNTIME_DIR:?AGENT_RUNTIME_DIR is not set}"
cmd="${1:?usage: agent-runtime activate|health|running SERVICE [RELEASE_DIR]}"
service="${2:?missing SERVICE}"
case "$service" in *[!a-z0-9-]*) echo "agent-runtime: bad service name" >&2; exit 2 ;; esac
case "$cmd" in
activate)
    release="${3:?missing RELEASE_DIR}"
    if [ -e "$state/$service.hang-activate" ]; then sleep "$(cat "$state/$service.hang-activate")"; fi
    digest=$(grep -o '"digest":"sha256:[0-9a-f]*"' "$release/release.json" | head -n 1 | cut -d '"' -f 4)
    [ -n "$digest" ] || { echo "agent-runtime: no digest in $release/release.json" >&2; exit 1; }
    printf '%s\n' "$digest" > "$state/$service.running.tmp"
    mv "$state/$service.running.tmp" "$state/$service.running"
    printf '%s activate %s %s\n' "$(date +%s)" "$digest" "$release" >> "$state/$service.log"
    ;;
health)
    if [ -e "$state/$service.hang-health" ]; then sleep "$(cat "$state/$service.hang-health")"; fi
    if [ -e "$state/$service.fail-health" ]; then
        if [ -s "$state/$service.fail-health" ]; then cat "$state/$service.fail-health" >&2
        else echo "agent-runtime: $service is unhealthy" >&2; fi
        exit 1
    fi
    [ -e "$state/$service.running" ] || { echo "agent-runtime: $service is not running" >&2; exit 1; }
    ;;
running)
    if [ -e "$state/$service.report" ]; then cat "$state/$service.report"
    elif [ -e "$state/$service.running" ]; then cat "$state/$service.running"
    fi
    ;;
*)
    echo "agent-runtime: unknown command $cmd" >&2; exit 2 ;;
esac
