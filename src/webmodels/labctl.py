"""`webmodels status`, `kill` and `scale`: talk to the lab's servers over HTTP, native or compose alike.

They only use the published ports (127.0.0.1:8001-8005), so they work the same whether the lab was
started by `webmodels up` or by `docker compose up`. Restart counts come from the server itself when a
native supervisor started it (WEBMODELS_RESTARTS), otherwise from `docker inspect` when Docker is there.
A server that is down is looked up in the native supervisor's state file, which says whether a restart is
pending and when ("restart in 6.4 s (back-off)").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .lab import LAB_PORTS, MASTER_MODELS, server_url, supervisor_state_path


def fetch_stats(model: str, host: str = "127.0.0.1", timeout: float = 2.0, offset: int = 0) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{server_url(model, host, offset)}/_lab/stats", timeout=timeout)
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError):
        return None


def docker_restarts(model: str) -> int | None:
    """RestartCount of the compose container serving MODEL, if Docker knows one."""
    if not shutil.which("docker"):
        return None
    try:
        ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.service={model}"],
                             capture_output=True, text=True, timeout=5).stdout.split()
        if not ids:
            return None
        out = subprocess.run(["docker", "inspect", "-f", "{{.RestartCount}}", ids[0]],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        return int(out) if out.isdigit() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f}"


def read_supervisor_state(path: Path) -> dict[str, Any] | None:
    """The native supervisor's state file, or None if there is none or its supervisor is gone (stale)."""
    try:
        doc = json.loads(path.read_text())
        os.kill(int(doc["supervisor_pid"]), 0)
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pending_restart(entry: dict[str, Any] | None, policy: str, now: float | None = None) -> str:
    """Say what the supervisor is doing about a server that is down: "restart in 6.4 s (back-off)"."""
    if not entry:
        return ""
    now = time.time() if now is None else now
    if entry.get("state") == "waiting" and (entry.get("restart_at") or 0) > now:
        return f"restart in {entry['restart_at'] - now:.1f} s ({policy})"
    if entry.get("state") in ("waiting", "starting"):
        return "restarting"
    if entry.get("state") == "stopped":
        return f"not restarted ({entry.get('last_exit') or 'exited'})"
    return ""


def size_text(model: str, stats: dict[str, Any]) -> str:
    """Workers, threads or loop lag, whichever the model has (master models per worker)."""
    c = stats.get("counters", {})
    engine = stats.get("engine") or {"threadpool": "threads", "eventloop": "loop"}.get(model, "sync")
    per = stats.get("per_worker") or []
    if model in MASTER_MODELS:
        text = f"{c.get('workers', len(per) or '?')} workers"
        if engine == "threads":
            threads = stats.get("config", {}).get("threads")
            pool = f"/{threads * len(per)}" if threads and per else ""
            text += f", {c.get('busy_threads', '?')}{pool} threads busy"
        elif engine == "loop":
            text += f", lag {c.get('loop_lag_ms') or 0:.0f} ms"
        return text
    if engine == "threads":
        return f"{c.get('busy_threads', '?')}/{c.get('pool_size', '?')} threads busy"
    return f"lag {c.get('loop_lag_max_ms', 0):.0f} ms"


def status_rows(host: str = "127.0.0.1", offset: int = 0) -> list[dict[str, Any]]:
    sup = read_supervisor_state(supervisor_state_path(offset))
    sup_servers = (sup or {}).get("servers", {})
    rows = []
    for model, port in LAB_PORTS.items():
        st = fetch_stats(model, host, offset=offset)
        if st is None:
            rows.append({"model": model, "port": port + offset, "up": False,
                         "supervisor": pending_restart(sup_servers.get(model), (sup or {}).get("policy", ""))})
            continue
        c, t = st.get("counters", {}), st.get("totals", {})
        procs = st.get("processes", [])
        if model in MASTER_MODELS:
            restarts = c.get("respawns", 0)  # worker respawns by the master
        else:
            restarts = st.get("restarts")
            if not restarts:
                restarts = docker_restarts(model) if restarts is None else restarts
        rows.append({
            "model": model, "port": port + offset, "up": True, "pids": [p["pid"] for p in procs],
            "size": size_text(model, st), "rss": t.get("rss", 0), "uss": t.get("uss", 0), "pss": t.get("pss", 0),
            "restarts": restarts, "uptime_s": st.get("uptime_s"), "requests": c.get("requests"),
        })
    return rows


def print_status(as_json: bool = False, offset: int = 0) -> int:
    rows = status_rows(offset=offset)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0 if all(r["up"] for r in rows) else 1
    head = f"{'model':15} {'port':>5} {'up':4} {'pids':24} {'workers/threads':30} {'RSS MiB':>8} " \
           f"{'USS MiB':>8} {'PSS MiB':>8} {'restarts':>8} {'uptime s':>9} {'requests':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r["up"]:
            print(f"{r['model']:15} {r['port']:>5} {'DOWN':4}" + (f" — {r['supervisor']}" if r["supervisor"] else ""))
            continue
        pids = ",".join(map(str, r["pids"]))
        pids = pids if len(pids) <= 24 else pids[:21] + "..."
        restarts = "-" if r["restarts"] is None else str(r["restarts"])
        print(f"{r['model']:15} {r['port']:>5} {'up':4} {pids:24} {r['size']:30} {_mib(r['rss']):>8} "
              f"{_mib(r['uss']):>8} {_mib(r['pss']):>8} {restarts:>8} {r['uptime_s'] or 0:>9.1f} "
              f"{r['requests'] or 0:>9}")
    print("\nRSS counts shared copy-on-write pages once per process (it overstates the master models); "
          "PSS splits them fairly.\nrestarts: worker respawns by the master (prefork, hybrids), process "
          "restarts by the supervisor or Docker (the others).")
    return 0 if all(r["up"] for r in rows) else 1


def kill(model: str, target: str, pid: int | None = None, offset: int = 0) -> int:
    url = f"{server_url(model, offset=offset)}/_lab/kill?target={target}" + (f"&pid={pid}" if pid else "")
    try:
        r = httpx.post(url, timeout=5)
    except httpx.HTTPError as exc:
        # the process target may die before its reply is read; confirm by asking again
        if target == "process" and fetch_stats(model, offset=offset) is None:
            print(f"{model}: killed (the server is down now)")
            return 0
        print(f"{model}: cannot reach {url}: {exc}")
        return 1
    if r.status_code == 404:
        print(f"{model}: faults are disabled on this server (start it with --faults / WEBMODELS_FAULTS=1)")
        return 1
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
    if r.status_code >= 400:
        print(f"{model}: {body.get('error') if isinstance(body, dict) else body}")
        return 1
    print(f"{model}: killed {body['killed']} pid {body['pid']}")
    return 0


def scale(model: str, delta: int, offset: int = 0) -> int:
    try:
        r = httpx.post(f"{server_url(model, offset=offset)}/_lab/scale?delta={delta}", timeout=10)
    except httpx.HTTPError as exc:
        print(f"{model}: cannot reach the server: {exc}")
        return 1
    if r.status_code == 404:
        print(f"{model}: lab controls are disabled on this server (start it with --faults / WEBMODELS_FAULTS=1)")
        return 1
    body = r.json()
    if r.status_code >= 400:
        print(f"{model}: {body.get('error')}")
        return 1
    print(f"{model}: workers → {body['target_workers']}")
    return 0
