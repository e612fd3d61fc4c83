"""Live charts under the Servers tab's table: the last 5 minutes, one line per server, faults and restarts marked.

No second poller: the tab's own poller (servers_tab.ServersPanel) calls `record` after each round, and the
points come from what it already has — the rows it built from each server's /_lab/stats (PSS, busy
threads or workers, loop lag, restarts) and the live fault accounting (ok / failed requests, injected
faults) — plus Locust's own response times for the p99 (its StatsEntry.response_times, summed over the
server's request names and differenced over the last few rounds).

Markers: every fault and kill from the lab's event log (webmodels.events: whoever started it, at the time
it was recorded, with who did it), else — no log — one per increase of Locust's own injection count; a
restart when the row's restart count rises; "down" or "hung" when a server stops answering. charts.js draws
them as marks on the time axis, merged with a count when they are close, never over the data.

The browser side is charts.js, a small SVG renderer of our own (no charting library, nothing from a CDN:
workshop rooms run offline). Locust's React UI has no hook for drawing under an extended table, so a
script tag is added to its index page; the script finds the Servers table and keeps a chart panel right
after it, fetching ./servers/series.json every 2 s while the tab is open.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from webmodels import events
from webmodels.lab import SERVERS

WINDOW_S = 300.0
MB = 1024 * 1024
P99_ROUNDS = 3  # the p99 is taken over the requests of the last few rounds (Locust's workers report every 3 s)
SCRIPT = Path(__file__).with_name("charts.js")
METRICS = (  # (key, title, unit)
    ("ok", "OK requests/s", "/s"), ("failed", "Failures/s", "/s"), ("p99", "p99 latency", "ms"),
    ("pss", "PSS (process tree)", "MB"), ("busy", "Busy threads / workers", ""), ("lag", "Event-loop lag", "ms"),
)


def _merge(entries: list[Any]) -> tuple[dict[int, int], int]:
    times: dict[int, int] = {}
    n = 0
    for e in entries:
        for rt, count in e.response_times.items():
            times[rt] = times.get(rt, 0) + count
        n += e.num_requests
    return times, n


def p99_between(old: tuple[dict[int, int], int], new: tuple[dict[int, int], int]) -> float | None:
    """The 99th percentile (nearest rank) of the requests counted between two snapshots of response-time counts.

    Locust's response_times map a rounded duration in ms to a count, so the difference of two snapshots is
    the distribution of the requests in between. No `import locust` here: tests import this module, and
    Locust monkey-patches the interpreter it is imported into.
    """
    diff = sorted((rt, c - old[0].get(rt, 0)) for rt, c in new[0].items() if c > old[0].get(rt, 0))
    n = sum(c for _, c in diff)
    if not n:
        return None
    rank, seen = math.ceil(0.99 * n), 0
    for rt, c in diff:
        seen += c
        if seen >= rank:
            return float(rt)
    return float(diff[-1][0])


class Charts:
    """Five minutes of points per server, and the markers (faults injected, restarts)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.points: dict[str, deque[list[Any]]] = {}
        self.markers: deque[dict[str, Any]] = deque()
        self.prev: dict[str, dict[str, Any]] = {}
        self.times: dict[str, deque[tuple[dict[int, int], int]]] = {}
        self.environment: Any = None
        self.order: list[str] = []
        self.sources: dict[str, str] = {}  # where each figure comes from, shown under the table

    def record(self, panel: Any, now: float | None = None) -> None:
        """After a poll round: one point per server, and a marker for each new fault or restart."""
        now = time.time() if now is None else now
        try:
            rows = panel.rows()
        except Exception:  # noqa: BLE001 - the charts never break the tab
            return
        self.order = [r["name"] for r in rows]
        self.sources = panel.sources() if hasattr(panel, "sources") else {}
        stats = getattr(self.environment, "stats", None)
        logged = bool(getattr(getattr(panel, "log", None), "path", ""))
        for e in getattr(panel, "new_events", None) or []:  # the event log's faults, at their own time
            if e.get("fault"):
                self.markers.append({"t": e["t"], "server": e["server"], "kind": "fault", "fault": e.get("kind"),
                                     "by": events.who(str(e.get("by", "")))})
        for row in rows:
            name = row["name"]
            prev = self.prev.get(name)
            counters = row.get("counters") or {}
            point: dict[str, Any] = {"t": round(now, 3), "up": row.get("up")}
            acc = self._accounting(panel, name)
            ok, failed = acc.get("ok", 0), acc.get("expected", 0) + acc.get("collateral", 0)
            if prev and now > prev["t"] and ok >= prev["ok"] and failed >= prev["failed"]:
                point["ok"] = round((ok - prev["ok"]) / (now - prev["t"]), 2)
                point["failed"] = round((failed - prev["failed"]) / (now - prev["t"]), 2)
            point["p99"] = self._p99(stats, name)
            if row.get("up"):
                point["pss"] = round(row["pss_bytes"] / MB, 1) if row.get("pss_bytes") else None
                busy = counters.get("busy_threads", counters.get("busy_workers"))
                point["busy"] = busy
                lag = counters.get("loop_lag_ms")
                point["lag"] = lag if lag is not None else (0 if busy is not None else None)
            injected = acc.get("injected", 0)
            restarts = row.get("restarts") if isinstance(row.get("restarts"), int) else 0
            if prev:
                if not logged:  # no event log: Locust's own injections are all that is known
                    for _ in range(max(0, injected - prev["injected"])):
                        self.markers.append({"t": now, "server": name, "kind": "fault", "by": "Locust"})
                if restarts > prev["restarts"]:
                    self.markers.append({"t": now, "server": name, "kind": "restart",
                                         "n": restarts - prev["restarts"]})
                if prev["up"] and not row.get("up"):
                    self.markers.append({"t": now, "server": name, "kind": "hung" if row.get("hung") else "down"})
            self.prev[name] = {"t": now, "ok": ok, "failed": failed, "injected": injected, "restarts": restarts,
                               "up": bool(row.get("up"))}
            self.points.setdefault(name, deque()).append([point.get(k) for k in ("t", "up", *[m[0] for m in METRICS])])
        self._trim(now)

    def _accounting(self, panel: Any, name: str) -> dict[str, Any]:
        try:
            return panel.accounting().get(name, {}) or {}
        except Exception:  # noqa: BLE001
            return {}

    def _p99(self, stats: Any, name: str) -> float | None:
        if stats is None:
            return None
        entries = [e for (n, _m), e in list(stats.entries.items()) if n.startswith(f"{name} ")]
        snap = _merge(entries)
        hist = self.times.setdefault(name, deque(maxlen=P99_ROUNDS + 1))
        if hist and snap[1] < hist[-1][1]:
            hist.clear()  # Locust's stats were reset (a new run)
        hist.append(snap)
        return p99_between(hist[0], hist[-1]) if len(hist) > 1 else None

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        for pts in self.points.values():
            while pts and pts[0][0] < start:
                pts.popleft()
        if self.markers and min(m["t"] for m in self.markers) < start:  # log events are not in order
            self.markers = deque(m for m in self.markers if m["t"] >= start)

    def document(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        self._trim(now)
        markers = sorted(self.markers, key=lambda m: m["t"])  # log events arrive late by up to a poll
        return {"now": now, "window": self.window_s, "servers": self.order,
                "colors": {name: s.color for name, s in SERVERS.items()},
                "columns": ["t", "up", *[m[0] for m in METRICS]],
                "metrics": [{"key": k, "title": t, "unit": u} for k, t, u in METRICS],
                "points": {name: list(pts) for name, pts in self.points.items()},
                "markers": markers, "sources": self.sources}

    # -- web UI ----------------------------------------------------------------------------------------------
    def install(self, web_ui: Any) -> None:
        """Serve charts.js and series.json, and put the script on Locust's index page."""
        from flask import Response, jsonify, request

        self.environment = web_ui.environment
        app = web_ui.app

        @app.route("/servers/series.json", endpoint="webmodels_servers_series")
        @web_ui.auth_required_if_enabled
        def series_json():
            return jsonify(self.document())

        @app.route("/servers/charts.js", endpoint="webmodels_servers_charts_js")
        def charts_js():
            return Response(SCRIPT.read_text(), mimetype="text/javascript")

        @app.after_request
        def add_script(response):
            if request.path == "/" and response.mimetype == "text/html" and response.status_code == 200:
                html = response.get_data()
                if b"servers/charts.js" not in html and b"</body>" in html:
                    response.set_data(html.replace(b"</body>", b'<script src="./servers/charts.js"></script></body>', 1))
            return response
