"""`webmodels status`, `kill` and `scale` on the command line: the actions layer (webmodels.actions), printed.

The controls themselves — where the lab runs (native pids, a Docker engine, HTTP only), how a kill is done
and confirmed — live in webmodels.actions, shared with Locust's tabs; this module only prints their outcome
and turns it into an exit status (0 done and confirmed, 1 not). Restart counts come from the server itself
when a native supervisor started it (WEBMODELS_RESTARTS), otherwise from `docker inspect` when Docker is
there. A server that does not answer is probed: hung (its process alive, or its port accepting) or down
(gone; the native supervisor's state file says whether a restart is pending: "restart in 6.4 s (back-off)").
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import actions
from .lab import SERVERS


def docker_restarts(model: str) -> int | None:
    """RestartCount of the compose container serving MODEL, if Docker knows one."""
    container = actions.compose_container(model)
    state = actions.inspect_container(container) if container else None
    return state.get("RestartCount") if state else None


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f}"


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
    engine = stats.get("engine") or SERVERS[model].engine
    per = stats.get("per_worker") or []
    if SERVERS[model].master:
        text = f"{c.get('workers', len(per) or '?')} workers"
        if engine == "threads":
            threads = stats.get("config", {}).get("threads")
            pool = f"/{threads * len(per)}" if threads and per else ""
            text += f", {c.get('busy_threads', '?')}{pool} threads busy"
        elif engine in ("loop", "gevent"):
            text += f", lag {c.get('loop_lag_ms') or 0:.0f} ms"
        return text
    if engine == "threads":
        return f"{c.get('busy_threads', '?')}/{c.get('pool_size', '?')} threads busy"
    if engine == "gevent":
        return (f"{c.get('connections', '?')}/{c.get('greenlet_pool_size', '?')} greenlets, "
                f"hub lag {c.get('loop_lag_max_ms', 0):.0f} ms")
    return f"lag {c.get('loop_lag_max_ms', 0):.0f} ms"


def status_rows(offset: int = 0, lab: actions.Lab | None = None) -> list[dict[str, Any]]:
    lab = lab or actions.Lab.here(offset)
    sup = lab.state()
    sup_servers = (sup or {}).get("servers", {})
    rows = []
    for model, server in SERVERS.items():
        port = server.port + offset
        probe = actions.probe(model, lab)
        st = probe.stats
        if st is None:
            rows.append({"model": model, "port": port, "up": False, "state": probe.state, "detail": probe.detail,
                         "pid": probe.pid, "supervisor": pending_restart(sup_servers.get(model),
                                                                         (sup or {}).get("policy", ""))})
            continue
        c, t = st.get("counters", {}), st.get("totals", {})
        procs = st.get("processes", [])
        if server.master:
            restarts = c.get("respawns", 0)  # worker respawns by the master
        else:
            restarts = st.get("restarts")
            if not restarts:
                restarts = docker_restarts(model) if restarts is None else restarts
        rows.append({
            "model": model, "port": port, "up": True, "state": "up", "pids": [p["pid"] for p in procs],
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
            what = "HUNG" if r["state"] == "hung" else "DOWN"
            extra = " — ".join(x for x in (r["supervisor"], r["detail"]) if x)
            print(f"{r['model']:15} {r['port']:>5} {what:4}" + (f" — {extra}" if extra else ""))
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


def _report(outcome: actions.Outcome, as_json: bool) -> int:
    print(json.dumps(outcome.to_dict(), indent=2, ensure_ascii=False) if as_json else outcome.message)
    return outcome.exit_code


def kill(model: str, target: str, pid: int | str | None = None, offset: int = 0, as_json: bool = False) -> int:
    return _report(actions.kill(model, target, pid, lab=actions.Lab.here(offset)), as_json)


def scale(model: str, delta: int, offset: int = 0, as_json: bool = False) -> int:
    return _report(actions.scale(model, delta, lab=actions.Lab.here(offset)), as_json)
