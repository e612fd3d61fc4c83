"""Locust for the lab: load the five servers side by side, inject faults, and account for every request.

  locust -f loadtest/locustfile.py --class-picker                       # web UI on :8089
  locust -f loadtest/locustfile.py --headless -u 30 -r 30 -t 20s --fault crash --fault-every 5
  locust -f loadtest/locustfile.py --headless --processes 2 -u 60 -r 60 -t 20s PreforkUser

One FastHttpUser class per lab server, made from the lab's one table (webmodels.lab.SERVERS: ThreadpoolUser,
PreforkUser, EventloopUser, HybridThreadsUser, HybridLoopUser), each with its own host from
WEBMODELS_<MODEL>_URL, dashes as underscores (WEBMODELS_HYBRID_LOOP_URL; defaults: the lab's ports on
127.0.0.1). Request names carry the server ("prefork /io")
and so does each request's context (User.context), which is how the `request` listener here files every
request under its server: ok / expected (the injected fault) / collateral — see accounting.py.

Who runs what, in every mode (local, --processes N, --master + --worker):
  every process      counts its own requests into an outbox and sends it once a second and at test stop
                     with runner.send_message("webmodels_tally") (a local runner delivers that to itself);
                     --timeline DIR writes its own JSONL file;
  master / local     adds the outboxes up, injects the faults (chaos.py: exactly one injector per server,
                     reported through the `request` event, so fault requests are counted too), polls the
                     servers for the Servers tab (servers_tab.py), and at test stop prints the per-server
                     table and writes --accounting-json after the last worker's final outbox arrived;
                     under `webmodels up` it also reads the supervisor's state file
                     (WEBMODELS_SUPERVISOR_STATE) for pending restarts and the back-off column.
Locust's Host field overrides every class's host and the override used to stick to later runs; at each test
start every class gets back its own host unless a host was typed (or given with --host).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # import loadtest.* however Locust is started

import gevent  # noqa: E402
from locust import FastHttpUser, constant, events, task  # noqa: E402
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner  # noqa: E402

from loadtest import workloads  # noqa: E402
from loadtest.accounting import OK, RecoveryWatch, Tally, format_table, injection_key, write_json  # noqa: E402
from loadtest.chaos import FAULTS, Injector  # noqa: E402
from loadtest.exercises_tab import ExercisesTab  # noqa: E402
from loadtest.servers_tab import ServersPanel  # noqa: E402
from loadtest.timeline import Timeline  # noqa: E402
from webmodels import actions  # noqa: E402
from webmodels.faults import FAULTS as FAULT_TABLE  # noqa: E402
from webmodels.lab import SERVERS as LAB_SERVERS  # noqa: E402

log = logging.getLogger("loadtest")

SERVERS = tuple(LAB_SERVERS)
DEFAULT_URLS = {name: f"http://127.0.0.1:{s.port}" for name, s in LAB_SERVERS.items()}
FAIL_BACKOFF_S = 0.1  # a user whose request failed pauses, so a dead server isn't hammered at full CPU
FLUSH_EVERY_S = 1.0
FINAL_WAIT_S = 15.0  # how long the master waits at most for the workers' final outboxes before writing the table
# (it stops waiting as soon as every worker has reported; a loaded machine can take several seconds)


def own_host(server: str) -> str:
    return os.environ.get(LAB_SERVERS[server].url_env, DEFAULT_URLS[server]).rstrip("/")


def count_what_the_server_dropped() -> None:
    """Stop FastHttpUser's client from silently re-sending a GET whose connection closed unanswered.

    geventhttpclient re-sends an idempotent request when its connection closes before any answer (RFC 9110
    allows it; browsers do it once on a reused connection). When a master model loses a worker, the requests
    in flight on that worker would be re-sent, answered by another worker and counted as ok: the crash's
    collateral would vanish from the accounting (measured here: 0 collateral for hybrid-threads over 12
    crashes while it dropped a few requests each time). The lab is about what the server drops, so it turns
    the re-send off; a request lost with its worker is collateral, as it is for a thread pool.
    """
    import geventhttpclient.client as ghc
    if hasattr(ghc, "_may_retry_after_send_error"):
        ghc._may_retry_after_send_error = lambda method: False
    else:  # an older geventhttpclient re-sends unconditionally
        log.warning("geventhttpclient %s re-sends requests whose connection closed: a crashed worker's "
                    "collateral may be under-counted", getattr(ghc, "__version__", "?"))


count_what_the_server_dropped()


@functools.lru_cache(maxsize=64)
def _calls(workload: str, io_ms: int, cpu_ms: int, kb: int) -> list[workloads.Call]:
    return workloads.calls(workload, io_ms, cpu_ms, kb)


# -- users -------------------------------------------------------------------------------------------------------
class LabUser(FastHttpUser):
    abstract = True
    server = ""
    wait_time = constant(0)
    connection_timeout = 5.0
    network_timeout = 10.0  # --request-timeout sets it at test start

    def context(self) -> dict[str, Any]:
        return {"server": self.server}

    @task
    def work(self) -> None:
        o = self.environment.parsed_options
        call = workloads.pick(_calls(o.workload, o.io_ms, o.cpu_ms, o.kb))
        resp = self.client.get(call.path, name=f"{self.server} {call.name}")
        if not resp.status_code or resp.status_code >= 400:
            gevent.sleep(FAIL_BACKOFF_S)


def _user_class(server: str) -> type[LabUser]:
    """The user class of one lab server, named as the table says (PreforkUser), defined in this module."""
    return type(LAB_SERVERS[server].user_class, (LabUser,), {"server": server, "host": own_host(server),
                                                             "__module__": __name__})


# Module-level names, as Locust finds user classes (and as `locust … PreforkUser` names them).
USER_CLASSES = tuple(_user_class(name) for name in SERVERS)
globals().update({cls.__name__: cls for cls in USER_CLASSES})


# -- options -----------------------------------------------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--workload", choices=workloads.WORKLOADS, default="hello",
                        help="What each user requests: hello (/), io (/io?ms=), cpu (/cpu?ms=), bytes (/bytes?kb=), "
                             "mixed, counter (the race). Hosts: each server keeps its own host unless you type "
                             "one in Host (then every server class uses it; clear it to go back).")
    parser.add_argument("--io-ms", type=int, default=50, help="Milliseconds each /io request waits")
    parser.add_argument("--cpu-ms", type=int, default=10, help="Milliseconds of CPU each /cpu request burns")
    parser.add_argument("--kb", type=int, default=16, help="KiB per /bytes response")
    parser.add_argument("--fault", choices=FAULTS, default="none",
                        help="Fault the injector fires at every loaded server it applies to, every --fault-every "
                             "s (servers need --faults): " + "; ".join(f"{f.kind}: {f.what}" for f in FAULT_TABLE)
                             + "; chaos: a random one every 1-3 s, each server in turn, drawn from --chaos-seed")
    parser.add_argument("--chaos-seed", type=int, default=1,
                        help="--fault chaos: the seed of its schedule (the same seed, the same faults)")
    parser.add_argument("--fault-every", type=float, default=5.0, help="Seconds between injected faults, per server")
    parser.add_argument("--hang-s", type=int, default=5, help="Seconds a 'hang' fault blocks")
    parser.add_argument("--leak-mb", type=int, default=16, help="MiB a 'leak' fault keeps")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="Seconds before a user request without an answer counts as failed")
    parser.add_argument("--timeline", default="", help="Directory for per-request JSONL, one file per process")
    parser.add_argument("--accounting-json", default="accounting.json",
                        help="Where the master/local process writes the per-server accounting at test stop")


# -- per-process state -------------------------------------------------------------------------------------------
class Lab:
    """Everything this Locust process keeps for the accounting, the injector and the tab."""

    def __init__(self) -> None:
        self.environment = None
        self.outbox = Tally()  # this process's requests since its last report
        self.watch = RecoveryWatch()
        self.timeline = Timeline()
        self.flusher: gevent.Greenlet | None = None
        # master / local only
        self.total = Tally()
        self.finals: set[str] = set()
        self.injector: Injector | None = None
        self.panel: ServersPanel | None = None
        self.started_at = self.stopped_at = 0.0
        self.pending_final: gevent.Greenlet | None = None
        self.finalized = True
        self.last_document: dict[str, Any] | None = None

    @property
    def runner(self):
        return self.environment.runner

    @property
    def is_worker(self) -> bool:
        return isinstance(self.runner, WorkerRunner)

    @property
    def is_master(self) -> bool:
        return isinstance(self.runner, MasterRunner)

    def role(self) -> str:
        if self.is_worker:
            return f"worker{getattr(self.runner, 'worker_index', '')}"
        return "master" if self.is_master else "local"

    def targets(self) -> dict[str, str]:
        """Map each loaded server (the classes picked for this run) to its URL."""
        env = self.environment
        classes = env.user_classes or USER_CLASSES
        return {c.server: (env.host or own_host(c.server)).rstrip("/") for c in classes if issubclass(c, LabUser)}

    # -- counting (every process) --
    def flush(self, final: bool = False) -> None:
        if not self.outbox and not final:
            return
        data = {"tally": self.outbox.to_dict(), "final": final}
        self.outbox = Tally()
        if self.is_master:  # the master's own requests (the injector's) never leave it
            self.total.merge(Tally.from_dict(data["tally"]))
        else:  # a worker → the master; a local runner → its own handler below
            self.runner.send_message("webmodels_tally", data)

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_EVERY_S)
            self.flush()

    # -- master / local --
    def on_tally(self, environment, msg, **_kw) -> None:
        self.total.merge(Tally.from_dict(msg.data["tally"]))
        if msg.data.get("final"):
            self.finals.add(msg.node_id)

    def on_injected(self, server: str, fault: str, t: float) -> None:
        self.total.add_injection(server, fault, t)
        if self.is_master:
            self.runner.send_message("webmodels_injected", {"server": server, "t": t})
        else:
            self._note_injection(server, t)

    def _note_injection(self, server: str, t: float) -> None:
        first = self.watch.on_injected(server, t)
        if first is not None:
            self.outbox.add_recovery(server, injection_key(t), first)

    def on_injected_msg(self, environment, msg, **_kw) -> None:  # on workers
        self._note_injection(msg.data["server"], msg.data["t"])

    def summary(self, run_to: float | None = None) -> dict[str, dict[str, Any]]:
        """The per-server accounting, with the back-off split when a native supervisor runs the servers."""
        return self.total.summary(SERVERS, supervisor_restarts(), self.started_at or None,
                                  run_to or self.stopped_at or time.time())

    def live_summary(self) -> dict[str, dict[str, Any]]:
        return self.summary()

    def wait_and_finalize(self, expected: set[str]) -> None:
        deadline = time.monotonic() + FINAL_WAIT_S
        while not expected <= self.finals and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if not expected <= self.finals:
            log.warning("accounting: no final report from %d worker(s); the table may be short",
                        len(expected - self.finals))
        self.finalize()

    def finalize(self) -> None:
        if self.finalized:
            return
        self.finalized = True
        o = self.environment.parsed_options
        summary = self.summary(self.stopped_at or time.time())
        server_view = {r["name"]: {k: r[k] for k in ("up", "hung", "state", "model", "pid", "pid_list", "restarts",
                                                       "served", "rss_bytes", "uss_bytes", "pss_bytes", "faults",
                                                       "faults_by", "faults_from", "error")}
                       for r in (self.panel.rows() if self.panel else [])}
        for name, s in summary.items():
            s["server_view"] = server_view.get(name)
        self.last_document = {
            "run": {"started_at": self.started_at, "stopped_at": self.stopped_at, "role": self.role(),
                    "workers": len(self.finals - {"local"}), "workload": o.workload, "fault": o.fault,
                    "fault_every": o.fault_every, "user_classes": sorted(c.__name__ for c in
                                                                          self.environment.user_classes)},
            "servers": summary,
        }
        table = format_table(summary)
        print(f"\nFault accounting (per server; faults = injected fault requests, expected)\n{table}\n", flush=True)
        if o.accounting_json:
            try:
                if d := os.path.dirname(o.accounting_json):
                    os.makedirs(d, exist_ok=True)
                write_json(o.accounting_json, self.last_document)
                log.info("accounting written to %s", o.accounting_json)
            except OSError as exc:
                log.error("could not write %s: %s", o.accounting_json, exc)


def supervisor_restarts() -> dict[str, list[dict]] | None:
    """Each server's restarts as recorded by `webmodels up`'s supervisor (None when no supervisor runs them)."""
    state = lab.panel.supervisor_state if lab.panel is not None else None
    if state is None:
        return None
    return {name: entry.get("history", []) for name, entry in state.get("servers", {}).items()}


lab = Lab()


# -- wiring ------------------------------------------------------------------------------------------------------
@events.init.add_listener
def _init(environment, runner=None, web_ui=None, **_kw) -> None:
    lab.environment = environment
    if runner is None:
        return
    if isinstance(runner, WorkerRunner):
        runner.register_message("webmodels_injected", lab.on_injected_msg)
        # the master's quit path asks us to stop our users (and so send our final outbox) before its "quit"
        runner.register_message("webmodels_stop", lambda *_a, **_kw: gevent.spawn(runner.stop))
        return
    runner.register_message("webmodels_tally", lab.on_tally)
    lab.injector = Injector(environment, lab.on_injected)
    # natively under `webmodels up` (WEBMODELS_SUPERVISOR_STATE): pids; otherwise HTTP only (no Docker from here)
    lab.panel = ServersPanel(lab.targets, lab.live_summary, order=SERVERS,
                             lab=actions.Lab.here(docker=False, default_state=False))
    if web_ui is not None:
        lab.panel.install(web_ui)
        ExercisesTab(environment, lab.live_summary, lab.panel.lab).install(web_ui)  # after the Servers tab

        @web_ui.app.route("/accounting.json", endpoint="webmodels_accounting_json")
        @web_ui.auth_required_if_enabled
        def accounting_json():
            from flask import jsonify
            return jsonify(lab.last_document if lab.finalized and lab.last_document else
                           {"run": {"live": True}, "servers": lab.live_summary()})
    gevent.spawn(lab.panel.poll_once)  # so the tab has rows before the first run
    # Locust arms --run-time right after this event, from the hub's cached clock, which stands still while a
    # slow start imports (seen in compose: `-t 6s` ended 40 ms after the users were spawned). Read it anew.
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _test_start(environment, **_kw) -> None:
    o = environment.parsed_options
    for cls in USER_CLASSES:  # undo a Host override left by an earlier run, unless one is set now
        cls.host = (environment.host or own_host(cls.server)).rstrip("/")
        cls.network_timeout = o.request_timeout
    lab.outbox, lab.watch = Tally(), RecoveryWatch()
    lab.timeline.open(o.timeline, lab.role())
    if lab.flusher is not None:
        lab.flusher.kill(block=False)
    lab.flusher = gevent.spawn(lab._flush_loop)
    if lab.is_worker:
        return
    if lab.pending_final is not None:
        lab.pending_final.kill(block=False)
    lab.total, lab.finals, lab.finalized = Tally(), set(), False
    lab.started_at, lab.stopped_at = time.time(), 0.0
    lab.panel.start()
    targets = lab.targets()
    lab.injector.start(targets, o.fault, o.fault_every, seed=o.chaos_seed, until=o.run_time or None,
                       hang_s=o.hang_s, leak_mb=o.leak_mb,
                       timeout=o.request_timeout)
    # --run-time is armed after this event from the hub's cached clock, which stood still through this listener
    # (a loaded machine: 0.34 s — a `-t 1s` run's window was 0.66 s from started_at): read it anew, as at init
    gevent.get_hub().loop.update_now()


@events.request.add_listener
def _request(request_type, name, response_time, response_length, exception=None, context=None, start_time=None,
             response=None, **_kw) -> None:
    server = (context or {}).get("server")
    if not server:
        return
    fault = bool(context.get("fault"))
    start = start_time if start_time is not None else time.time() - response_time / 1000
    end = start + response_time / 1000
    error = None
    if exception is not None:
        status = getattr(response, "status_code", 0) or 0
        error = f"HTTP {status}" if status >= 400 else type(exception).__name__
    kind = lab.outbox.record(server, exception is None, fault, end, error)
    if kind == OK:
        for key, first in lab.watch.on_success(server, start):
            lab.outbox.add_recovery(server, key, first)
    lab.timeline.write(start, server, name, exception is None, kind, error, response_time, context.get("fault"))


@events.test_stop.add_listener
def _test_stop(environment, **_kw) -> None:
    if lab.flusher is not None:
        lab.flusher.kill(block=False)
        lab.flusher = None
    if not lab.is_worker:
        # it waits for its loop and every shot to end: a fault request answered meanwhile would otherwise report
        # itself after the final flush below, counted by Locust and lost to the table (seen: 714 vs Locust's 715)
        lab.injector.stop()
    lab.flush(final=True)  # users are stopped: nothing more will be counted in this process
    lab.timeline.close()
    if lab.is_worker:
        return
    lab.stopped_at = time.time()
    lab.panel.stop()
    lab.panel.poll_once()  # the servers' state at the end, for the JSON
    if lab.is_master:
        expected = {c.id for c in lab.runner.clients.all}
        running = [c.id for c in lab.runner.clients.all if c.state in (STATE_RUNNING, STATE_SPAWNING)]
        if running:
            # Locust's quit path (the run time is over): it stops the master first, then sends its workers "quit"
            # and listens only 0.5 s more — a loaded machine's workers reported later and both final outboxes
            # were lost (CI: "workers": 0). Stop them now and wait for their finals while we still listen.
            for client_id in running:
                lab.runner.send_message("webmodels_stop", None, client_id)
            lab.wait_and_finalize(expected)
        else:  # the workers have stopped (Stop in the web UI): their finals are in or on the way
            lab.pending_final = gevent.spawn(lab.wait_and_finalize, expected)
    else:
        lab.finalize()


@events.quitting.add_listener
def _quitting(environment, **_kw) -> None:
    if lab.environment is not None and lab.runner is not None and not lab.is_worker and not lab.finalized:
        if lab.runner.state in (STATE_SPAWNING, STATE_RUNNING):
            lab.runner.stop()  # SIGTERM / Ctrl-C mid-run: stop first, so the table counts every request
        if lab.pending_final is not None and not lab.pending_final.dead:
            lab.pending_final.join(timeout=FINAL_WAIT_S)
        lab.finalize()
    lab.timeline.close()
