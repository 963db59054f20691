#!/bin/sh
# agent-runtime: stands in for systemd/podman on a lab golden VM.
#
#   agent-runtime activate SERVICE RELEASE_DIR   start the release: record the digest it runs
#   agent-runtime health SERVICE                 exit 0 when the service is healthy
#   agent-runtime running SERVICE                print the image digest that is running
#   agent-runtime connect SERVICE ADDRESS PORT   a TCP connection as the service's workload user
#                                                (agent-SERVICE), from the VM's network; exit 0 if it connected
#   agent-runtime egress-rules SERVICE           the service's loaded egress rules (`nft -j list table`)
#
# Activation loads the release's egress.nft (default-deny rules for agent-SERVICE) into the
# VM's network namespace, or removes the service's table when the release has none; a
# ruleset that cannot be loaded fails the activation. The VM's namespace is named in
# $AGENT_RUNTIME_DIR/netns (egress labs); without it, the commands run where sshd runs.
#
# Per-host state lives in $AGENT_RUNTIME_DIR (set by the lab's sshd). Tests steer it:
#   $AGENT_RUNTIME_DIR/SERVICE.fail-health   exists: health checks fail (printing its content, if any, on stderr)
#   $AGENT_RUNTIME_DIR/SERVICE.report        exists: `running` prints its content instead
#   $AGENT_RUNTIME_DIR/SERVICE.hang-health   exists: health checks sleep for that many seconds
#   $AGENT_RUNTIME_DIR/SERVICE.hang-activate exists: activation sleeps for that many seconds
#   $AGENT_RUNTIME_DIR/SERVICE.nft-broken    exists: loading egress rules fails (as on a kernel without nf_tables)
#   $AGENT_RUNTIME_DIR/SERVICE.skip-nft      exists: activation does not load the rules (a runtime that forgets)
set -eu
state="${AGENT_RUNTIME_DIR:?AGENT_RUNTIME_DIR is not set}"
cmd="${1:?usage: agent-runtime activate|health|running SERVICE [RELEASE_DIR]}"
service="${2:?missing SERVICE}"
case "$service" in *[!a-z0-9-]*) echo "agent-runtime: bad service name" >&2; exit 2 ;; esac
in_vm() { if [ -s "$state/netns" ]; then ip netns exec "$(cat "$state/netns")" "$@"; else "$@"; fi; }
table() { printf 'agentctl_%s' "$service" | tr - _; }
case "$cmd" in
activate)
    release="${3:?missing RELEASE_DIR}"
    if [ -e "$state/$service.hang-activate" ]; then sleep "$(cat "$state/$service.hang-activate")"; fi
    if [ -e "$state/$service.skip-nft" ]; then
        :
    elif [ -f "$release/egress.nft" ]; then
        if [ -e "$state/$service.nft-broken" ] || ! in_vm nft -f "$release/egress.nft"; then
            echo "agent-runtime: cannot load the egress rules of $service" >&2; exit 1
        fi
    elif in_vm nft list table inet "$(table)" >/dev/null 2>&1; then
        in_vm nft delete table inet "$(table)"
    fi
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
connect)
    addr="${3:?missing ADDRESS}"; port="${4:?missing PORT}"
    in_vm setpriv --reuid="agent-$service" --regid="agent-$service" --clear-groups -- \
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$addr" "$port" 2>/dev/null
    ;;
egress-rules)
    in_vm nft -j list table inet "$(table)" 2>/dev/null || true
    ;;
running)
    if [ -e "$state/$service.report" ]; then cat "$state/$service.report"
    elif [ -e "$state/$service.running" ]; then cat "$state/$service.running"
    fi
    ;;
*)
    echo "agent-runtime: unknown command $cmd" >&2; exit 2 ;;
esac
