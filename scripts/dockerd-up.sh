#!/usr/bin/env bash
# Start a Docker engine for the lab if none answers, and print the PID of the dockerd this script
# started (nothing when an engine was already running, so the caller knows there is nothing to stop).
#
#   pid=$(scripts/dockerd-up.sh) && trap 'scripts/dockerd-down.sh "$pid"' EXIT
#
# The engine runs with --bridge=none --iptables=false: no docker0 bridge and no NAT rules, which is
# what CI sandboxes (and hosts without bridge/netfilter support) allow. Containers then use
# `network_mode: host` (docker-compose.ci.yml), so every port stays on 127.0.0.1 of this machine.
#
# Environment: DOCKERD_LOG (default /tmp/webmodels-dockerd.log), DOCKERD_WAIT seconds (default 60),
# DOCKERD_ARGS extra arguments for dockerd.
set -euo pipefail

log() { printf 'dockerd-up: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null 2>&1 || die "the docker client is not installed (apt-get install docker.io)"

if docker info >/dev/null 2>&1; then
    log "a Docker engine is already running; leaving it alone"
    exit 0
fi

command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed (apt-get install docker.io)"
[ "$(id -u)" -eq 0 ] || die "no Docker engine answers and starting dockerd needs root"

logfile=${DOCKERD_LOG:-/tmp/webmodels-dockerd.log}
wait_s=${DOCKERD_WAIT:-60}

# A stale pid file from a dockerd that died would make the new one refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi

log "starting dockerd --bridge=none --iptables=false (log: $logfile)"
# setsid: the engine must outlive this script and not receive the caller's terminal signals.
# shellcheck disable=SC2086
setsid dockerd --bridge=none --iptables=false ${DOCKERD_ARGS:-} >"$logfile" 2>&1 </dev/null &
pid=$!

deadline=$((SECONDS + wait_s))
until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        log "dockerd exited during startup; last lines of $logfile:"
        tail -n 20 "$logfile" >&2 || true
        die "could not start a Docker engine"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "dockerd did not answer within ${wait_s}s; last lines of $logfile:"
        tail -n 20 "$logfile" >&2 || true
        kill -TERM "$pid" 2>/dev/null || true
        die "could not start a Docker engine"
    fi
    sleep 0.5
done

log "dockerd is up (pid $pid, server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
echo "$pid"
