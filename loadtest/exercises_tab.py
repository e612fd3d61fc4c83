"""The Exercises tab: each README exercise as a guided experiment in Locust's web UI — set up, act, observe, why.

Everything it shows comes from one table, webmodels.exercises (question, table row, setup, actions, figures
with their predictions, why); this module only serves it and keeps what the figures are computed from:

  samples   every lab server's /_lab/stats once a second (the route the Servers tab reads: counters,
            per_worker, processes), by a poller of its own that runs while an exercise is in use (the
            Servers tab polls only the servers of the current run, and only during a run), plus the live
            fault accounting of the run (the Servers tab's source), for the last 10 minutes;
  events    the lab's event log (webmodels.events: every fault and kill, whoever fired it);
  results   the outcome of each action a button ran (webmodels.actions for kill/fault/scale, the same
            code as `webmodels kill` and curl; webmodels.exercise_actions for the exercises' own).
The figures (webmodels.figures) are computed from those on each GET /exercises/observe.json.

Routes (all under Locust's web UI): GET /exercises.json (the table, the Set up forms), POST
/exercises/select (an exercise is set up: the observation starts over), POST /exercises/act, POST
/exercises/reset, GET /exercises/observe.json, GET /exercises/exercises.js. The page's script posts the Set
up form to Locust's own POST /swarm (after POST /stop), as Locust's start form does.

Locust's React UI shows extended tabs only once a run has started (before, it shows its start form); the
script therefore also draws the panel under the start form when the URL asks for ?tab=exercises. In the tab
itself React renders an (empty) extended table, which the script hides and replaces with the panel.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import gevent

from webmodels import actions, events, exercise_actions, exercises
from webmodels.figures import Obs
from webmodels.lab import SERVERS

log = logging.getLogger("loadtest.exercises_tab")

TAB_KEY = "exercises"
SCRIPT = Path(__file__).with_name("exercises.js")
SAMPLE_EVERY_S = 1.0
KEEP_S = 600.0  # samples kept (an exercise rarely lasts longer; the figures look back from its start)
IN_USE_S = 900.0  # the poller stops this long after the tab was last used (nobody is looking)
ACC_KEYS = ("requests", "ok", "collateral", "expected", "downtime_ms", "backoff_ms", "injected")


class ExercisesTab:
    """Serve the exercises, run their actions, keep what their figures are computed from."""

    def __init__(self, environment: Any, accounting: Callable[[], dict[str, dict[str, Any]]],
                 lab: actions.Lab) -> None:
        self.environment = environment
        self.accounting = accounting  # the live fault accounting, per server (the locustfile's)
        self.lab = lab
        self.defaults: dict[str, Any] = {}  # the custom options' start values (the Set up form sends them all)
        self.active = ""  # the exercise set up last
        self.setup = ""  # the name of its Setup pressed last (exercises with several)
        self.since = time.time()  # its observation starts here
        self.samples: deque[dict[str, Any]] = deque()
        self.results: dict[str, dict[str, Any]] = {}  # action key → outcome dict, with its time
        self.reader = events.Reader()
        self.events: deque[dict[str, Any]] = deque(maxlen=5000)
        self.used_at = 0.0
        self.selected_at = 0.0
        self.poller: gevent.Greenlet | None = None
        self.busy = False  # an action or reset is running (one at a time: they confirm what they did)

    # -- what the figures are computed from -------------------------------------------------------------------
    def touch(self) -> None:
        self.used_at = time.monotonic()
        if self.poller is None or self.poller.dead:
            self.poller = gevent.spawn(self._poll_loop)

    def _poll_loop(self) -> None:
        while time.monotonic() - self.used_at < IN_USE_S:
            t0 = time.monotonic()
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the tab must keep sampling whatever one round does
                log.exception("exercises: sampling failed")
            gevent.sleep(max(0.05, SAMPLE_EVERY_S - (time.monotonic() - t0)))

    def sample(self) -> None:
        """Read every lab server's stats (in parallel), the accounting and new events; keep them."""
        jobs = {name: gevent.spawn(actions.stats, self.lab, name, 1.5) for name in SERVERS}
        gevent.joinall(list(jobs.values()), timeout=3)
        now = time.time()
        servers = {}
        for name, job in jobs.items():
            st = job.value if job.successful() else None
            servers[name] = {"state": "up" if st else self._silence(name), "stats": st}
        try:
            acc = {name: {k: row.get(k) for k in ACC_KEYS} for name, row in self.accounting().items()}
        except Exception:  # noqa: BLE001
            acc = {}
        self.samples.append({"t": now, "servers": servers, "acc": acc})
        while self.samples and self.samples[0]["t"] < now - KEEP_S:
            self.samples.popleft()
        self.read_events()

    def _silence(self, name: str) -> str:
        return "no answer" if actions.accepts(self.lab.url(name), 0.3) else "down"

    def read_events(self) -> None:
        path = self.lab.events_path()
        if path != self.reader.path:
            self.reader = events.Reader(path)
        self.events.extend(self.reader.read())

    def start_over(self) -> None:
        """The observation starts now: a new exercise, a new run, or the lab reset."""
        self.since = time.time()
        self.samples.clear()
        self.results.clear()

    def observation(self) -> Obs:
        now = time.time()
        live = {key: {**res, "facts": {**res.get("facts", {}), **(exercise_actions.SLOW.facts(res["server"]) or {})}}
                if res.get("action") == "slow" and res.get("server") else res for key, res in self.results.items()}
        acc = {}
        try:
            acc = self.accounting()
        except Exception:  # noqa: BLE001
            pass
        return Obs({"now": now, "since": self.since, "samples": [s for s in self.samples if s["t"] >= self.since],
                    "acc": acc, "events": [e for e in self.events if e.get("t", 0) >= self.since],
                    "results": live, "where": self.lab.where, "setup": self.setup, "has_events": bool(self.lab.events_path())})

    # -- what the buttons do --------------------------------------------------------------------------------------
    def table(self) -> dict[str, Any]:
        """The exercises as the page shows them, with each Set up's swarm form."""
        out = []
        for e in exercises.EXERCISES:
            out.append({
                "id": e.id, "title": e.title, "question": e.question, "row": e.row, "why": e.why,
                "setups": [{"name": s.name, "text": s.describe(), "by_hand": s.by_hand, "load": bool(s.classes),
                            "form": s.form(self.defaults)} for s in e.setups],
                "actions": [{"key": a.key, "label": a.label, "command": exercises.localize(a.command, self.lab.urls),
                             "note": exercises.localize(a.note, self.lab.urls)} for a in e.actions],
                "figures": [{"key": f.key, "label": f.label, "source": f.source, "predicts": f.predicts}
                            for f in e.figures]})
        return {"exercises": out, "where": self.lab.where, "active": self.active}

    def select(self, ex_id: str, setup: str = "0") -> dict[str, Any]:
        e = exercises.exercise(ex_id)  # KeyError for an unknown one
        i = int(setup) if setup.isdigit() and int(setup) < len(e.setups) else 0
        self.active, self.setup = ex_id, e.setups[i].name
        self.selected_at = time.time()
        self.start_over()
        self.sample()  # the figures' starting point, before any action
        self.touch()
        return {"ok": True, "active": ex_id}

    def on_test_start(self, **_kw: Any) -> None:
        if time.time() - self.selected_at > 5:  # a run started by hand: the accounting starts over, so do the
            self.since = time.time()  # figures (a Set up's run keeps the sample its select took just before)
        # no touch(): the poller samples the servers only while the tab is in use, not for every run

    def act(self, ex_id: str, key: str) -> dict[str, Any]:
        action = exercises.exercise(ex_id).action(key)
        if self.busy:
            return {"ok": False, "message": "another action is still running: wait for its outcome"}
        self.touch()
        self.busy = True
        try:
            outcome = exercise_actions.run(action, self.lab)
        except Exception as exc:  # noqa: BLE001 - a button says what it could not do
            log.exception("exercises: action %s failed", key)
            outcome = actions.Outcome(False, f"{key}: {type(exc).__name__}: {exc}", action.verb, action.server,
                                      self.lab.where)
        finally:
            self.busy = False
        doc = {**outcome.to_dict(), "t": time.time(), "key": key}
        self.results[key] = doc
        self.sample()  # what the action left, before the next one can change it
        return doc

    def reset(self) -> dict[str, Any]:
        runner = self.environment.runner
        if runner is not None and runner.state in ("spawning", "running"):
            runner.stop()  # the reset judges hung work by requests still in flight with no load
        self.busy = True
        try:
            outcome = exercise_actions.reset(self.lab, since=self.since - 1)
        finally:
            self.busy = False
        self.start_over()
        self.sample()
        self.touch()
        return {**outcome.to_dict(), "t": time.time()}

    def observe(self, ex_id: str) -> dict[str, Any]:
        e = exercises.exercise(ex_id)
        self.touch()
        o = self.observation()
        return {"id": e.id, "now": o.now, "since": o.since, "samples": len(o.samples), "where": o.where,
                "setup": self.setup if self.active == e.id else "",
                "states": {name: o.state(name) for name in SERVERS}, "figures": e.observe(o),
                "results": {k: v for k, v in o.results.items() if k in {a.key for a in e.actions}}}

    # -- web UI -----------------------------------------------------------------------------------------------
    def install(self, web_ui: Any) -> None:
        """Add the tab (after the Servers tab), its routes, and its script on Locust's index page."""
        from flask import Response, jsonify, request

        self.defaults = {k: v.get("default_value") for k, v in (web_ui.template_args.get("extra_options") or {}).items()}
        args = web_ui.template_args
        args["extended_tabs"] = [*(args.get("extended_tabs") or []), {"title": "Exercises", "key": TAB_KEY}]
        args["extended_tables"] = [*(args.get("extended_tables") or []), {"key": TAB_KEY, "structure": [
            {"key": "exercise", "title": "Exercise"}, {"key": "row", "title": "Tests the row"}]}]
        self.environment.events.test_start.add_listener(self.on_test_start)
        app = web_ui.app

        def arg(name: str) -> str:
            return (request.get_json(silent=True) or {}).get(name) or request.values.get(name, "")

        def answer(fn: Callable[[], dict[str, Any]]):
            try:
                return jsonify(fn())
            except KeyError as exc:
                return jsonify({"ok": False, "message": str(exc.args[0] if exc.args else exc)}), 400

        @app.route("/exercises.json", endpoint="webmodels_exercises_json")
        @web_ui.auth_required_if_enabled
        def exercises_json():
            return jsonify(self.table())

        @app.route("/exercises/select", methods=["POST"], endpoint="webmodels_exercises_select")
        @web_ui.auth_required_if_enabled
        def exercises_select():
            return answer(lambda: self.select(arg("id"), arg("setup")))

        @app.route("/exercises/act", methods=["POST"], endpoint="webmodels_exercises_act")
        @web_ui.auth_required_if_enabled
        def exercises_act():
            return answer(lambda: self.act(arg("id"), arg("key")))

        @app.route("/exercises/reset", methods=["POST"], endpoint="webmodels_exercises_reset")
        @web_ui.auth_required_if_enabled
        def exercises_reset():
            return answer(self.reset)

        @app.route("/exercises/observe.json", endpoint="webmodels_exercises_observe")
        @web_ui.auth_required_if_enabled
        def exercises_observe():
            return answer(lambda: self.observe(arg("id") or self.active or exercises.EXERCISES[0].id))

        @app.route("/exercises/exercises.js", endpoint="webmodels_exercises_js")
        def exercises_js():
            return Response(SCRIPT.read_text(), mimetype="text/javascript")

        @app.after_request
        def add_script(response):
            if request.path == "/" and response.mimetype == "text/html" and response.status_code == 200:
                html = response.get_data()
                if b"exercises/exercises.js" not in html and b"</body>" in html:
                    response.set_data(html.replace(b"</body>", b'<script src="./exercises/exercises.js"></script>'
                                                  b"</body>", 1))
            return response
