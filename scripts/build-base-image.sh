#!/usr/bin/env bash
# Build the lab's Python base image without any container registry: debootstrap a minimal Debian
# with python3 + venv + pip, put this host's CA bundle in it (so pip works behind a TLS-inspecting
# proxy that the host trusts), and `docker import` the root filesystem.
#
#   scripts/build-base-image.sh [--force] [--name NAME] [--mirror URL] [--suite SUITE]
#   docker build --build-arg PYTHON_IMAGE=webmodels-base:bookworm -t webmodels:lab .
#   PYTHON_IMAGE=webmodels-base:bookworm docker-compose up --build
#
# Idempotent: an existing image NAME is kept unless --force. Needs root, debootstrap and a running
# Docker engine. The Debian mirror is taken from this host's apt sources unless --mirror or
# DEBIAN_MIRROR says otherwise. The interpreter in this image is `python3` (there is no `python`).
set -euo pipefail

name=${BASE_IMAGE:-webmodels-base:bookworm}
suite=bookworm
mirror=${DEBIAN_MIRROR:-}
force=0
packages=python3,python3-venv,python3-pip,ca-certificates

log() { printf 'build-base-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
        --force) force=1 ;;
        --name) name=${2:?--name needs a value}; shift ;;
        --mirror) mirror=${2:?--mirror needs a value}; shift ;;
        --suite) suite=${2:?--suite needs a value}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

command -v docker >/dev/null 2>&1 || die "docker is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start one: scripts/dockerd-up.sh)"

if [ "$force" -eq 0 ] && docker image inspect "$name" >/dev/null 2>&1; then
    log "image $name already exists; nothing to do (use --force to rebuild)"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca_bundle" ] || die "this host has no CA bundle at $ca_bundle (apt-get install ca-certificates)"

# The first Debian archive URI in the host's apt sources (deb822 .sources or one-line .list files)
# that is not a security or backports archive.
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' "$f"
    done
}
if [ -z "$mirror" ]; then
    mirror=$(host_mirror | grep -E '/debian/?$' | grep -v -e security -e backports | head -n 1 || true)
    if [ -z "$mirror" ]; then
        echo "build-base-image: error: no Debian mirror found in this host's apt sources; pass --mirror URL" >&2
        exit 2
    fi
fi

rootfs=$(mktemp -d /var/tmp/webmodels-rootfs.XXXXXX)
cleanup() {
    # debootstrap mounts proc/sys inside the target; unmount anything left there before removing it,
    # and never cross into another file system while deleting.
    local m
    for m in $(awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
log "[1/4] debootstrap $suite from $mirror into $rootfs (about a minute)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
        >"$rootfs.log" 2>&1; then
    tail -n 30 "$rootfs.log" >&2 || true
    rm -f "$rootfs.log"
    die "debootstrap failed (mirror $mirror; set --mirror or DEBIAN_MIRROR to use another)"
fi
rm -f "$rootfs.log"

log "[2/4] copying this host's CA bundle into the image"
install -D -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"

log "[3/4] trimming apt caches"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/* || true

log "[4/4] importing the root filesystem as $name"
tar --numeric-owner -C "$rootfs" -c . |
    docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --message "debootstrap --variant=minbase $suite + $packages" \
        - "$name" >/dev/null

log "done in $((SECONDS - start))s: $name ($(docker image inspect --format '{{.Size}}' "$name" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
log "use it with: docker build --build-arg PYTHON_IMAGE=$name ...  or  PYTHON_IMAGE=$name docker-compose up --build"
