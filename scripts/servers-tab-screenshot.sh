#!/usr/bin/env bash
# Take the README's screenshot of Locust's Servers tab: a native lab on shifted ports, all six servers
# under `io` load with a crash injected every 3 s, photographed by headless Chromium once a single-process
# server is seen waiting out a restart back-off of 3 s or more (or after another 30 s).
#
#   scripts/servers-tab-screenshot.sh [OUT.png]          default docs/servers-tab.png
#
# Environment: OFFSET (port offset, default 30000: ports 38001-38006, 38089), WAIT (seconds of load
# before the shot, default 30), WINDOW (default 1600,760; the charts under the table need 1480,1250),
# CHROMIUM (default: chromium, chromium-browser or google-chrome).
#
#   WINDOW=1480,1250 WAIT=60 scripts/servers-tab-screenshot.sh docs/servers-tab-charts.png
# Needs the .venv (make install). Stops the lab it started, and only that.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${1:-$root/docs/servers-tab.png}
offset=${OFFSET:-30000}
wait_s=${WAIT:-30}
window=${WINDOW:-1600,760}
ui="http://127.0.0.1:$((8089 + offset))"

log() { printf 'servers-tab-screenshot: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
    for b in chromium chromium-browser google-chrome; do
        command -v "$b" >/dev/null 2>&1 && { browser=$b; break; }
    done
fi
[ -n "$browser" ] || die "no chromium found (set CHROMIUM=...)"
[ -x "$root/.venv/bin/webmodels" ] || die "no .venv: run make install first"

"$root/.venv/bin/webmodels" up --port-offset "$offset" >"${TMPDIR:-/tmp}/servers-tab-lab.log" 2>&1 &
lab=$!
trap 'kill -TERM "$lab" 2>/dev/null || true; wait "$lab" 2>/dev/null || true' EXIT

for _ in $(seq 120); do
    curl -sf "$ui/servers.json" >/dev/null 2>&1 && break
    kill -0 "$lab" 2>/dev/null || die "the lab exited; see ${TMPDIR:-/tmp}/servers-tab-lab.log"
    sleep 0.5
done
sleep 3  # every server answering its first poll
curl -sf -X POST "$ui/swarm" -d user_count=36 -d spawn_rate=36 -d host= -d workload=io -d io_ms=200 \
    -d fault=crash -d fault_every=3 >/dev/null || die "could not start the load"
log "load with crashes every 3 s for ${wait_s}s, then until a server waits out a back-off of 3 s or more"
sleep "$wait_s"
for _ in $(seq 120); do  # the shot worth taking: a row reading "down — restart in 6.4 s (back-off)"
    curl -sf "$ui/servers.json" | grep -q 'restart in \([3-9]\|[1-9][0-9]\)\.' && break
    sleep 0.25
done
profile=$(mktemp -d)  # an empty profile: nothing of another browser session, nothing left behind
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --hide-scrollbars \
    --user-data-dir="$profile" --window-size="$window" \
    --virtual-time-budget=4000 --screenshot="$out" "$ui/?tab=servers" >/dev/null 2>&1 ||
    die "$browser could not take the screenshot"
rm -rf "$profile"
curl -sf -X POST "$ui/stop" >/dev/null || true
log "wrote $out — look at it before committing it"
