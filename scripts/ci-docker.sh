#!/usr/bin/env bash
# Get a Docker engine and the lab's base image for the compose end-to-end test, in CI or by hand.
#
#   scripts/ci-docker.sh run -- CMD [ARGS...]   set up, run CMD with the variables below, tear down
#   scripts/ci-docker.sh setup                  set up and leave the engine running (PID in the pid file)
#   scripts/ci-docker.sh teardown               stop the dockerd that `setup` started (if it started one)
#
# Setup: install docker.io, docker-compose and debootstrap with apt when missing (only when CI=true
# or WEBMODELS_APT_INSTALL=1, as root); start `dockerd --bridge=none --iptables=false` when no engine
# answers (scripts/dockerd-up.sh); build the registry-free base image (scripts/build-base-image.sh).
# Every failure is an error (exit non-zero), never a skip: CI must not pass without an engine.
#
# For CMD, `run` exports:
#   PYTHON_IMAGE=webmodels-base:bookworm            the base image for `--build`
#   COMPOSE_FILE=docker-compose.yml:docker-compose.ci.yml   host networking, all on 127.0.0.1
#   WEBMODELS_COMPOSE="docker compose" or "docker-compose"  whichever works (v2 preferred), unless set
# `setup` prints the same as `export` lines on stdout (eval "$(scripts/ci-docker.sh setup)").
#
# Environment: BASE_IMAGE (default webmodels-base:bookworm), WEBMODELS_DOCKERD_PIDFILE (default
# /tmp/webmodels-ci-dockerd.pid), DOCKERD_LOG, DOCKERD_WAIT (see scripts/dockerd-up.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
pidfile=${WEBMODELS_DOCKERD_PIDFILE:-/tmp/webmodels-ci-dockerd.pid}
base_image=${BASE_IMAGE:-webmodels-base:bookworm}

log() { printf 'ci-docker: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

compose_cmd() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
        echo "docker-compose"
    fi
}

missing_tools() {
    local missing=()
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -n "$(compose_cmd)" ] || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] || printf '%s\n' "${missing[@]}" | sort -u
}

install_tools() {
    local missing
    missing=$(missing_tools)
    [ -z "$missing" ] && return 0
    # shellcheck disable=SC2086
    if [ "${CI:-}" != true ] && [ "${WEBMODELS_APT_INSTALL:-}" != 1 ]; then
        die "missing: $(echo $missing); install with: apt-get install $(echo $missing) (or set WEBMODELS_APT_INSTALL=1)"
    fi
    [ "$(id -u)" -eq 0 ] || die "missing $(echo $missing) and not root, so apt-get cannot install them"
    command -v apt-get >/dev/null 2>&1 || die "missing $(echo $missing) and there is no apt-get here"
    log "installing $(echo $missing) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >&2 || die "apt-get install $(echo $missing) failed"
    missing=$(missing_tools)
    [ -z "$missing" ] || die "still missing after apt-get install: $(echo $missing)"
}

setup() {
    local start=$SECONDS pid
    install_tools
    [ -e "$pidfile" ] && [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null &&
        log "note: $pidfile names a running dockerd ($(cat "$pidfile")) from an earlier setup"
    pid=$("$here/dockerd-up.sh") || die "no Docker engine could be had"
    if [ -n "$pid" ]; then
        echo "$pid" >"$pidfile"
    elif [ ! -s "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        : >"$pidfile"   # an engine we did not start: teardown leaves it alone
    fi
    "$here/build-base-image.sh" --name "$base_image" || die "building the base image $base_image failed"
    log "ready in $((SECONDS - start))s: engine $(docker version --format '{{.Server.Version}}'), compose: ${WEBMODELS_COMPOSE:-$(compose_cmd)}, base image $base_image"
}

teardown() {
    local pid=""
    [ -f "$pidfile" ] && pid=$(cat "$pidfile")
    "$here/dockerd-down.sh" "$pid"
    rm -f "$pidfile"
}

exports() {
    printf 'export PYTHON_IMAGE=%q\n' "$base_image"
    printf 'export COMPOSE_FILE=%q\n' "docker-compose.yml:docker-compose.ci.yml"
    printf 'export WEBMODELS_COMPOSE=%q\n' "${WEBMODELS_COMPOSE:-$(compose_cmd)}"
}

case ${1:-} in
    setup)
        setup
        exports
        ;;
    teardown)
        teardown
        ;;
    run)
        shift
        [ "${1:-}" = -- ] && shift
        [ $# -gt 0 ] || die "usage: $0 run -- CMD [ARGS...]"
        trap teardown EXIT
        setup
        eval "$(exports)"
        cd "$root"
        log "running: $*"
        rc=0
        "$@" || rc=$?
        exit "$rc"
        ;;
    *)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
