"""`webmodels status` and `webmodels kill`: talk to the lab's servers over HTTP, native or compose alike.

Both only use the published ports (127.0.0.1:8001-8003), so they work the same whether the lab was
started by `webmodels up` or by `docker compose up`. Restart counts come from the server itself when a
native supervisor started it (WEBMODELS_RESTARTS), otherwise from `docker inspect` when Docker is there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import httpx

from .lab import LAB_PORTS, server_url


def fetch_stats(model: str, host: str = "127.0.0.1", timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{server_url(model, host)}/_lab/stats", timeout=timeout)
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


def status_rows(host: str = "127.0.0.1") -> list[dict[str, Any]]:
    rows = []
    for model, port in LAB_PORTS.items():
        st = fetch_stats(model, host)
        if st is None:
            rows.append({"model": model, "port": port, "up": False})
            continue
        c, t = st.get("counters", {}), st.get("totals", {})
        procs = st.get("processes", [])
        if model == "prefork":
            size = f"{c.get('workers', '?')} workers"
            restarts = c.get("respawns", 0)
        elif model == "threadpool":
            size = f"{c.get('busy_threads', '?')}/{c.get('pool_size', '?')} threads busy"
            restarts = st.get("restarts")
        else:
            size = f"lag {c.get('loop_lag_max_ms', 0):.0f} ms"
            restarts = st.get("restarts")
        if model != "prefork" and not restarts:
            restarts = docker_restarts(model) if restarts is None else restarts
        rows.append({
            "model": model, "port": port, "up": True, "pids": [p["pid"] for p in procs],
            "size": size, "rss": t.get("rss", 0), "uss": t.get("uss", 0), "pss": t.get("pss", 0),
            "restarts": restarts, "uptime_s": st.get("uptime_s"), "requests": c.get("requests"),
        })
    return rows


def print_status(as_json: bool = False) -> int:
    rows = status_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0 if all(r["up"] for r in rows) else 1
    head = f"{'model':11} {'port':>5} {'up':4} {'pids':24} {'workers/threads':22} {'RSS MiB':>8} " \
           f"{'USS MiB':>8} {'PSS MiB':>8} {'restarts':>8} {'uptime s':>9} {'requests':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r["up"]:
            print(f"{r['model']:11} {r['port']:>5} {'DOWN':4}")
            continue
        pids = ",".join(map(str, r["pids"]))
        pids = pids if len(pids) <= 24 else pids[:21] + "..."
        restarts = "-" if r["restarts"] is None else str(r["restarts"])
        print(f"{r['model']:11} {r['port']:>5} {'up':4} {pids:24} {r['size']:22} {_mib(r['rss']):>8} "
              f"{_mib(r['uss']):>8} {_mib(r['pss']):>8} {restarts:>8} {r['uptime_s'] or 0:>9.1f} "
              f"{r['requests'] or 0:>9}")
    print("\nRSS counts shared copy-on-write pages once per process (it overstates prefork); "
          "PSS splits them fairly.")
    return 0 if all(r["up"] for r in rows) else 1


def kill(model: str, target: str, pid: int | None = None) -> int:
    url = f"{server_url(model)}/_lab/kill?target={target}" + (f"&pid={pid}" if pid else "")
    try:
        r = httpx.post(url, timeout=5)
    except httpx.HTTPError as exc:
        # the process target may die before its reply is read; confirm by asking again
        if target == "process" and fetch_stats(model) is None:
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


def scale(model: str, delta: int) -> int:
    try:
        r = httpx.post(f"{server_url(model)}/_lab/scale?delta={delta}", timeout=10)
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
