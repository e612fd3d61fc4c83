#!/usr/bin/env bash
# Stop the dockerd that scripts/dockerd-up.sh started: `scripts/dockerd-down.sh PID`.
# An empty PID (the engine was already running) is a no-op, so callers can pass the output through.
# Only a process that is a dockerd is signalled; SIGTERM first (dockerd stops its containers and the
# containerd it spawned), SIGKILL after DOCKERD_STOP_WAIT seconds (default 30).
set -euo pipefail

log() { printf 'dockerd-down: %s\n' "$*" >&2; }

pid=${1:-}
if [ -z "$pid" ]; then
    log "no dockerd was started by us; nothing to stop"
    exit 0
fi
case $pid in *[!0-9]*) log "error: not a PID: $pid"; exit 2 ;; esac

if ! kill -0 "$pid" 2>/dev/null; then
    log "dockerd $pid is not running"
    exit 0
fi
comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
if [ "$comm" != dockerd ]; then
    log "error: process $pid is '$comm', not dockerd; not touching it"
    exit 1
fi

log "stopping dockerd $pid"
kill -TERM "$pid"
wait_s=${DOCKERD_STOP_WAIT:-30}
deadline=$((SECONDS + wait_s))
while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "dockerd $pid still running after ${wait_s}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        break
    fi
    sleep 0.2
done
log "dockerd $pid stopped"
