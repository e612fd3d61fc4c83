"""The "Servers" tab: poll each loaded server's /_lab/stats once a second and show one row per server.

Runs on the master (or the single local process), never on a worker: workers fire requests, the tab lives
where the web UI is. The poller is a greenlet using geventhttpclient (gevent-friendly; no asyncio inside
Locust), started and stopped with the test; a server that refuses or doesn't answer within the timeout is a
"down" / "no answer" row, not an exception. It also polls once at start-up so the tab isn't empty before
the first run, and keeps the last rows after a run ends.

Locust 2.47's own extension points, read from its source (web.py, webui bundle): the React UI takes
`extended_tabs` / `extended_tables` / `extended_csv_files` from `web_ui.template_args` and reads a tab's rows
only from `extended_stats` ([{"key": tab key, "data": rows}]) in the /stats/requests JSON, which we add
with an `after_request` hook. The UI camel-cases keys, so the displayed row keys are single lowercase words.
The same rows are served at /servers.json and /servers.csv.

Under `webmodels up` a server that is down is often just waiting for its restart: the native supervisor
copies Docker's back-off (100 ms doubling to 1 min, reset after 10 s up) and says so in a JSON state file
(WEBMODELS_SUPERVISOR_STATE, written atomically; see src/webmodels/supervisor.py). The poller reads it with
the stats, so such a row reads "down — restart in 6.4 s (back-off)", and the "Back-off ms" column shows how
much of the downtime was the supervisor's wait rather than the model's own start. Under compose Docker
keeps that to itself, so the row says "down" and the column "—".

A server that does not answer is not necessarily gone (webmodels.actions.silence tells them apart): "hung —
no answer for 12 s (pid 15375 alive)" natively, where the pid is visible; "hung — … its port accepts
connections" in compose, where a TCP connect that succeeds without an HTTP answer is all that is known; "down"
when nothing listens (natively: the pid is gone).

Where each figure comes from (also served as `sources` in /servers.json and shown under the table):
  Faults injected   the lab's event log (webmodels.events): every fault route entered on a server — from
                    Locust's injector, curl, the Exercises tab — and every kill from outside (`webmodels kill`),
                    since the run started; without a log (WEBMODELS_EVENTS unset), Locust's own injections only.
  Collateral, Downtime, of which dead / back-off   the fault accounting (loadtest/accounting.py) of Locust's
                    requests and, natively, the supervisor's record of each restart.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable
from urllib.parse import urlsplit

import gevent
from geventhttpclient import HTTPClient

from webmodels import actions, events

from .charts import Charts

log = logging.getLogger("loadtest.servers_tab")

TAB_KEY = "servers"
# (row key, column title); keys are single words because the UI camel-cases them. Not "name": the UI sorts a
# table by its rows' "name" field, so in the tab's copy of the rows "name" carries our row order instead.
COLUMNS = (
    ("server", "Server"), ("state", "State"), ("pids", "PIDs (master · workers)"), ("threads", "Threads"),
    ("rss", "RSS MB"), ("uss", "USS MB"), ("pss", "PSS MB"), ("restarts", "Respawns / restarts"),
    ("busy", "Busy / loop lag"), ("served", "Served"), ("faults", "Faults injected"),
    ("collateral", "Collateral"), ("downtime", "Downtime ms"), ("dead", "of which dead ms"),
    ("backoff", "of which back-off ms"),
)
MB = 1024 * 1024
EVENTS_KEPT = 10000  # events remembered for the counters (a run injecting more is a very long run)
SOURCES = {
    "faults": "every fault route entered on a server and every kill from outside, whoever started it (Locust, "
              "curl, webmodels kill, the Exercises tab), since the run started: the lab's event log {log}",
    "faults-without-log": "Locust's own injector only: no event log here (WEBMODELS_EVENTS is not set), so faults "
                          "started by hand are not counted",
    "downtime": "users' view, from Locust's requests: the longest stretch in which every request to the server "
                "failed, from the moment the first failed (a hung request: at --request-timeout) to the last; "
                "'dead' is the part of it without a process (from its exit to accepting again, the supervisor's "
                "record; — under compose) and 'back-off' the part of that spent waiting for the restart; the rest "
                "it was alive and did not answer (hung)",
    "state": "hung = its process is alive (natively, by pid) or its port accepts connections, but /_lab/stats gets "
             "no answer; down = nothing listens (natively: its pid is gone)",
}


def _mb(n: Any) -> float | str:
    return round(n / MB, 1) if isinstance(n, (int, float)) else ""


def _lag(lag: Any) -> str:
    return f"{lag:.1f}" if isinstance(lag, (int, float)) else "?"


def busy_text(stats: dict[str, Any]) -> str:
    """Summarise what each model is busy with (workers, threads, loop lag); tolerate missing keys.

    A master model over threads or loops shows each worker: "2 workers: 3/16 · 0/16 threads" or
    "2 workers: lag 0.3 · 5012.0 ms" — one crashed or stuck worker is visible as one, not as an average.
    """
    c = stats.get("counters", {})
    model = stats.get("model")
    engine = stats.get("engine") or {"threadpool": "threads", "eventloop": "loop"}.get(model, "sync")
    per = stats.get("per_worker") or []
    is_master = bool(per and any(w.get("pid") != stats.get("pid") for w in per)) or "workers" in c
    if is_master and engine == "threads" and per:
        size = stats.get("config", {}).get("threads", "?")
        return f"{len(per)} workers: " + " · ".join(f"{w.get('busy_threads', '?')}/{size}" for w in per) + " threads"
    if is_master and engine in ("loop", "gevent") and per:
        return f"{len(per)} workers: lag " + " · ".join(_lag(w.get("loop_lag_ms")) for w in per) + " ms"
    if is_master:
        return f"{c.get('busy_workers', '?')}/{c.get('workers', '?')} workers"
    if engine == "threads":
        text = f"{c.get('busy_threads', '?')}/{c.get('pool_size', '?')} threads"
        return text + (f", {c['queued']} queued" if c.get("queued") else "")
    if engine in ("loop", "gevent"):  # the engines that tick: a loop's lag, a gevent hub's lag
        lag, top = c.get("loop_lag_ms"), c.get("loop_lag_max_ms")
        if isinstance(lag, (int, float)):
            text = ("hub " if engine == "gevent" else "") + f"lag {lag:.1f} ms"
            text += f" (max {top:.1f})" if isinstance(top, (int, float)) else ""
            if engine == "gevent" and "connections" in c:
                text += f", {c['connections']}/{c.get('greenlet_pool_size', '?')} greenlets"
            return text
    return ""


def read_supervisor_state() -> dict[str, Any] | None:
    """The native supervisor's state named by WEBMODELS_SUPERVISOR_STATE (None without one, or a stale one)."""
    path = os.environ.get(actions.STATE_ENV, "")
    return actions.read_state(path) if path else None


def pending_restart(state: dict[str, Any] | None, name: str, now: float) -> str:
    """What the supervisor is doing about a server that is down, e.g. "restart in 6.4 s (back-off)"."""
    entry = (state or {}).get("servers", {}).get(name)
    if not entry:
        return ""
    if entry.get("state") == "waiting" and (entry.get("restart_at") or 0) > now:
        return f"restart in {entry['restart_at'] - now:.1f} s ({state.get('policy', 'back-off')})"
    if entry.get("state") in ("waiting", "starting") and entry.get("restarts"):
        return "restarting"  # due (the file is up to a poll old) or started, not accepting yet
    if entry.get("state") == "stopped":
        return "not restarted"
    return ""


class ServersPanel:
    """Poll the servers, remember the last answer of each, and render rows for the tab, JSON and CSV."""

    def __init__(self, targets: Callable[[], dict[str, str]],
                 accounting: Callable[[], dict[str, dict[str, Any]]], order: tuple[str, ...] = (),
                 interval: float = 1.0, timeout: float = 1.5, lab: actions.Lab | None = None) -> None:
        self.targets = targets  # server name → base URL (only the servers of the current run)
        self.accounting = accounting  # server name → live accounting summary
        self.order = order  # row order: the servers' own order, unknown names last
        self.interval = interval
        self.timeout = timeout
        self.last: dict[str, dict[str, Any]] = {}  # server → {"url", "state", "stats", "at", "down_since"}
        self.restarts: dict[str, int] = {}  # pid changes seen by the poller (a supervisor restarted it)
        # how this process reaches the lab: native under `webmodels up` (pids, the supervisor's state), else HTTP
        self.lab = lab or actions.Lab(urls={})
        self.supervisor_state: dict[str, Any] | None = None
        self.log = events.Reader()  # the lab's event log, followed (its path may appear with the supervisor)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.new_events: list[dict[str, Any]] = []  # read in the last poll round (the charts' markers)
        self.run_from = time.time()  # faults are counted from here: the run's start
        self.greenlet: gevent.Greenlet | None = None
        self.charts = Charts()  # live charts under the table, fed by this poller (loadtest/charts.py)

    # -- polling ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.stop()
        self.restarts.clear()
        self.run_from = time.time()
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self.greenlet is not None:
            gevent.killall([self.greenlet], block=False)
            self.greenlet = None

    def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            self.poll_once()
            gevent.sleep(max(0.05, self.interval - (time.monotonic() - t0)))

    def poll_once(self) -> None:
        targets = self.targets()
        for name in [n for n in self.last if n not in targets]:
            del self.last[name]
        try:
            self.supervisor_state = self.lab.state()
        except Exception:  # noqa: BLE001 - the tab works without it
            log.exception("reading the supervisor state failed")
            self.supervisor_state = None
        jobs = [gevent.spawn(self._poll, name, url) for name, url in targets.items()]
        gevent.joinall(jobs, timeout=self.timeout + 2)
        self.read_events()
        self.charts.record(self)

    def read_events(self) -> None:
        """Take in what the event log gained since the last round."""
        path = self.lab.events_path()
        if path != self.log.path:
            self.log, self.events = events.Reader(path), deque(maxlen=EVENTS_KEPT)
        self.new_events = self.log.read()
        self.events.extend(self.new_events)

    def faults(self, name: str) -> tuple[int, dict[str, int]] | None:
        """Faults NAME took since the run started, and by whom ({"curl": 1, "Locust": 3}); None without a log."""
        if not self.log.path:
            return None
        by: dict[str, int] = {}
        for e in self.events:
            if e.get("server") == name and e.get("fault") and e["t"] >= self.run_from:
                who = events.who(str(e.get("by", "")))
                by[who] = by.get(who, 0) + 1
        return sum(by.values()), by

    def sources(self) -> dict[str, str]:
        """Where each figure of the tab comes from, in words."""
        path = self.log.path
        return {"faults": SOURCES["faults"].format(log=path) if path else SOURCES["faults-without-log"],
                "downtime": SOURCES["downtime"], "state": SOURCES["state"]}

    def _poll(self, name: str, url: str) -> None:
        prev = self.last.get(name, {})
        now = time.time()
        try:
            client = HTTPClient.from_url(url, connection_timeout=self.timeout, network_timeout=self.timeout,
                                         concurrency=1)
            try:
                resp = client.get("/_lab/stats")
                body = resp.read()
            finally:
                client.close()
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}")
            stats = json.loads(body)
            # A restart shows as a new start time (in a container the pid is often the same every time).
            old = prev.get("stats") or prev.get("last_stats") or {}
            if old.get("started_at") and stats.get("started_at") and stats["started_at"] != old["started_at"]:
                self.restarts[name] = self.restarts.get(name, 0) + 1
            self.last[name] = {"url": url, "state": "up", "stats": stats, "at": now, "down_since": None}
        except Exception as exc:  # noqa: BLE001 - a dead server is a row, not an exception
            # no answer is not "gone": ask what is known (its pid natively, a TCP connect anywhere)
            probe = actions.silence(name, self.lab, self.timeout, url)
            self.last[name] = {"url": url, "state": probe.state, "probe": probe, "stats": None,
                               "at": now, "error": f"{type(exc).__name__}: {exc}",
                               "down_since": prev.get("down_since") or now,
                               "last_stats": prev.get("stats") or prev.get("last_stats")}

    # -- rows ------------------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        acc = {}
        try:
            acc = self.accounting()
        except Exception:  # noqa: BLE001 - never break /stats/requests because of the tab
            log.exception("accounting summary failed")
        rank = {name: i for i, name in enumerate(self.order)}
        names = sorted(self.last, key=lambda n: (rank.get(n, len(rank)), n))
        return [self._row(name, self.last[name], acc.get(name, {})) for name in names]

    def _state(self, name: str, entry: dict[str, Any]) -> tuple[str, str]:
        """The State and PIDs cells of a server that does not answer."""
        now = time.time()
        silent = f"{now - entry['down_since']:.0f}s"
        probe: actions.Probe | None = entry.get("probe")
        gone = entry.get("last_stats") or {}
        pid = (probe.pid if probe else None) or gone.get("pid")
        if entry["state"] == "hung":
            if probe is not None and probe.alive:
                return f"hung — no answer for {silent} (pid {pid} alive)", f"{pid} (alive, not answering)"
            return (f"hung — no answer for {silent}; its port accepts connections, nobody answers",
                    f"{pid} (last seen)" if pid else "")
        if probe is not None and probe.alive and probe.accepts is False:
            return f"starting — pid {pid} alive, not listening yet", f"{pid} (starting)"
        pending = pending_restart(self.supervisor_state, name, now)
        where = f"nothing listens on :{urlsplit(entry['url']).port}"
        state = f"down — {pending}" if pending else f"down {silent} — {where}"
        if probe is not None and probe.alive is False and pid:
            return state, f"({pid} gone)"
        return state, f"({pid} last seen)" if pid else ""

    def _row(self, name: str, entry: dict[str, Any], acc: dict[str, Any]) -> dict[str, Any]:
        stats = entry.get("stats") or {}
        procs = stats.get("processes", [])
        totals = stats.get("totals", {})
        counters = stats.get("counters", {})
        workers = [p["pid"] for p in procs if p.get("role") == "worker"]
        master = stats.get("pid")
        state = entry["state"]
        if workers:
            pids = f"{master} · {' '.join(map(str, workers))}"
        else:
            pids = str(master) if master else ""
        if not stats:
            state, pids = self._state(name, entry)
        dash = "" if stats else "—"
        if workers or "respawns" in counters:  # a master model: prefork, hybrid-threads, hybrid-loop
            restarts = counters.get("respawns")  # worker respawns by the master
        elif stats.get("restarts") is not None:
            restarts = stats["restarts"]  # counted by the native supervisor (`webmodels up`)
        else:
            restarts = self.restarts.get(name, 0)  # restarts this poller saw (Docker's policy)
        logged = self.faults(name)
        if logged is None:  # no event log: Locust's own injections are all that is known
            logged = acc.get("injected", 0), {"Locust": acc.get("injected", 0)}
        faults, faults_by = logged
        return {
            # displayed (single-word keys)
            "server": name, "state": state, "pids": pids,
            "threads": totals.get("threads", sum(p.get("threads", 0) for p in procs)) if stats else dash,
            "rss": _mb(totals.get("rss")) or dash, "uss": _mb(totals.get("uss")) or dash,
            "pss": _mb(totals.get("pss")) or dash, "restarts": restarts if restarts is not None else dash,
            "busy": busy_text(stats) if stats else dash, "served": counters.get("requests", dash),
            "faults": faults, "collateral": acc.get("collateral", 0),
            "downtime": round(acc.get("downtime_ms") or 0.0),
            "dead": "—" if acc.get("dead_ms") is None else round(acc["dead_ms"]),
            "backoff": "—" if acc.get("backoff_ms") is None else round(acc["backoff_ms"]),
            # machine-readable extras for /servers.json
            "name": name, "url": entry["url"], "up": entry["state"] == "up", "hung": entry["state"] == "hung",
            "model": stats.get("model"), "pid": master,
            "pid_list": [p["pid"] for p in procs], "pss_bytes": totals.get("pss"), "rss_bytes": totals.get("rss"),
            "uss_bytes": totals.get("uss"), "counters": counters, "polled_at": entry["at"],
            "faults_by": faults_by, "faults_from": "event log" if self.log.path else "Locust's injector",
            "error": entry.get("error"),
        }

    def csv_text(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow([title for _, title in COLUMNS])
        for row in self.rows():
            w.writerow([row.get(key, "") for key, _ in COLUMNS])
        return out.getvalue()

    # -- web UI ----------------------------------------------------------------------------------------------
    def install(self, web_ui) -> None:
        """Add the tab, its table and CSV link to the UI, /servers.json and /servers.csv to its app."""
        from flask import Response, jsonify, request

        web_ui.template_args["extended_tabs"] = [{"title": "Servers", "key": TAB_KEY}]
        web_ui.template_args["extended_tables"] = [
            {"key": TAB_KEY, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}]
        web_ui.template_args["extended_csv_files"] = [{"href": "./servers.csv", "title": "Download servers CSV"}]
        app = web_ui.app
        self.charts.install(web_ui)

        @app.after_request
        def add_servers_to_stats(response):  # the tab reads only /stats/requests' extended_stats
            if request.path.endswith("/stats/requests") and response.status_code == 200 and response.is_json:
                data = json.loads(response.get_data())
                rows = [{**row, "name": i} for i, row in enumerate(self.rows())]  # "name" = sort order
                data["extended_stats"] = [{"key": TAB_KEY, "data": rows}]
                response.set_data(json.dumps(data))
            return response

        @app.route("/servers.json", endpoint="webmodels_servers_json")
        @web_ui.auth_required_if_enabled
        def servers_json():
            return jsonify({"servers": self.rows(), "at": time.time(), "sources": self.sources()})

        @app.route("/servers.csv", endpoint="webmodels_servers_csv")
        @web_ui.auth_required_if_enabled
        def servers_csv():
            return Response(self.csv_text(), mimetype="text/csv", headers={
                "Content-Disposition": f"attachment;filename=servers_{int(time.time())}.csv"})
