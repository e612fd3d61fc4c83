"""`webmodels bench --quick` for real (servers, Locust, wrk as subprocesses), the soak, and `webmodels report`.

The bench test checks the report's content, not that files exist: every row of the table has figures, prefork's
crash collateral is 0 while the shared-fate models' is not, every Locust run's accounting adds up, the hang,
idle and slow-client lessons hold, and the charts are PNGs matplotlib can decode. Unit tests pin the pieces whose
mistakes no figure would show: the soak's attribution, growth verdicts, progress, port handling, CI rules, a
missing tool (PATH without wrk), and that the bench process never loads Locust.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from webmodels import chaos
from webmodels.bench import SCHEMA
from webmodels.bench import locustrun
from webmodels.bench.locustrun import live
from webmodels.bench.runner import BenchServer, Progress
from webmodels.bench.scenarios import SCENARIOS
from webmodels.bench.scenarios.soak import attribute, growth
from webmodels.bench.kit import MODELS  # the lab's servers: what the bench loads

FIXTURE = Path(__file__).parent / "fixtures" / "bench-results.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS = ("memory space / resource usage", "fault isolation", "hung work", "leaks", "communication",
        "creation overhead", "context switching", "multi-core", "concurrency for I/O", "over-threading",
        "many idle clients", "slow clients", "a call that blocks in C", "reuseport window")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def webmodels(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webmodels.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def check_pngs(directory: Path, names: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    assert names, "no charts were drawn"
    for name in names:
        data = (directory / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        img = mpimg.imread(directory / name)
        assert img.shape[0] > 200 and img.shape[1] > 400, (name, img.shape)


def table(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """The 'table, measured' of report.md: (header cells, {row label: cells after the label})."""
    section = markdown.split("## The table, measured", 1)[1].split("\n## ", 1)[0]
    head: list[str] = []
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == "row":
            head = cells
        else:
            rows[cells[0]] = cells[1:]
    return head, rows


WRK_SKIPPED = "wrk is not installed (apt-get install wrk"


def allowed_skips() -> set[str]:
    """Scenarios this machine may skip: outside CI, the one whose tool is missing (the README asks for Python only)."""
    return set() if IN_CI or shutil.which("wrk") else {"wrk"}


def path_without(tool: str, where: Path) -> str:
    """A PATH with every program of this one but TOOL: a directory of symlinks (the system's binary untouched)."""
    bin_dir = where / f"path-without-{tool}"
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.name != tool and not os.path.lexists(bin_dir / e.name) and os.access(e.path, os.X_OK):
                (bin_dir / e.name).symlink_to(e.path)
    return str(bin_dir)


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    # one-second load steps (--quick's default is 2): this run checks that every row is measured and every
    # lesson shows, within make test's few minutes; the figures worth quoting come from full runs
    proc = webmodels("bench", "--quick", "--duration", "1", "--out", str(out), timeout=600)
    (out / "console.txt").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "accounting:" in proc.stdout and "balanced in every run" in proc.stdout, proc.stdout
    for name in allowed_skips():  # outside CI a missing tool is a skip that says what to install
        assert f"scenario {name} skipped: {WRK_SKIPPED}" in proc.stderr, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_report_has_every_row_with_figures(quick_bench: Path) -> None:
    md = (quick_bench / "report.md").read_text()
    head, rows = table(md)
    assert head[-2:] == ["conditions", "why"], head
    models = head[1:-2]
    assert models == [m for m in ("prefork", "threadpool", "eventloop", "greenthreads", "hybrid-threads",
                                  "hybrid-loop") if m in MODELS], head
    for label in ROWS:
        assert label in rows, f"row {label!r} missing from the table"
        figures = [c for c in rows[label][:len(models)] if c != "–"]
        assert figures and all(any(ch.isdigit() for ch in c) for c in figures), (label, rows[label])
        assert len(rows[label][-1]) > 20, f"row {label!r} has no why"
    for label in ("many idle clients", "slow clients", "communication", "hung work"):  # every model, not some
        assert all(c != "–" and "–%" not in c for c in rows[label][:len(models)]), (label, rows[label])
    assert re.search(r"/metrics scrape at 8 workers [\d.]+ ms \([\d.]+ ms CPU",
                     rows["communication"][models.index("prefork")]), rows["communication"]
    assert "Every request accounted" in md and "balanced in every run" in md
    html = (quick_bench / "report.html").read_text()
    for png in sorted(p.name for p in quick_bench.glob("*.png")):
        assert f'src="{png}"' in html and f"]({png})" in md, png


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_figures_are_the_expected_ones(quick_bench: Path) -> None:
    results = json.loads((quick_bench / "results.json").read_text())
    assert results["machine"]["cores_usable"] >= 1 and results["machine"]["python"]
    assert results["machine"]["versions"]["locust"]
    sc = results["scenarios"]
    assert not [n for n, s in sc.items() if s.get("error")], {n: s.get("error") for n, s in sc.items()}
    skipped = {n for n, s in sc.items() if s.get("skipped")}
    assert skipped <= allowed_skips(), {n: sc[n]["skipped"] for n in skipped}
    assert "accept" not in skipped
    crash = sc["faults"]["summary"]
    assert crash["crash prefork"]["injected"] >= 1
    assert crash["crash prefork"]["collateral"] == 0  # a crash costs only the request that caused it
    assert crash["segfault prefork"]["collateral"] == 0
    assert crash["crash threadpool"]["collateral"] > 0 and crash["crash eventloop"]["collateral"] > 0  # shared fate
    assert crash["crash greenthreads"]["collateral"] > 0  # one process: every greenlet goes with it
    # every Locust run: ok + expected + collateral = sent = Locust's own count, per server
    runs = 0
    for s in sc.values():
        for run in _runs(s):
            # the test lasts its -t however long Locust took to start (gevent's cached clock once cut it short)
            window = run["accounting_run"]["stopped_at"] - run["accounting_run"]["started_at"]
            assert window >= max(1, round(run["duration_s"])) - 0.25, (run["duration_s"], window)
            for model, a in run["accounting_rows"].items():
                assert a["ok"] + a["expected"] + a["collateral"] == a["requests"] == a["locust_requests"], (model, a)
                runs += 1
    assert runs >= 20
    for h in ("hybrid-threads", "hybrid-loop"):
        if h in MODELS:  # a crash costs one worker's in flight, well below a whole pool's (issue 8)
            assert crash[f"crash {h}"]["injected"] >= 1
            assert crash[f"crash {h}"]["collateral"] < crash["crash threadpool"]["collateral"], crash
            assert crash[f"crash {h}"]["downtime_ms_median"] < crash["crash threadpool"]["downtime_ms_median"], crash
    for label, v in sc["accept"]["summary"].items():  # per-worker shares from /_lab/stats per_worker, summing to 1
        assert len(v["shares"]) >= 2 and abs(sum(v["shares"]) - 1) < 0.01, (label, v)
    comm = sc["communication"]["summary"]
    for m in MODELS:  # a fixed count of increments, whatever the machine's load: all of them answered
        for mode in ("unsafe", "locked"):
            e = comm[f"{m} {mode}"]
            assert e["increments_ok"] == comm["clients_per_server"] * comm["increments_per_client"] // 2, (m, e)
    assert comm["threadpool unsafe"]["lost"] > 0 and comm["threadpool locked"]["lost"] == 0
    assert comm["prefork unsafe"]["lost"] == 0 and comm["prefork unsafe"]["processes"] > 1
    # the IPC cost of prefork's /metrics: one scrape by a worker merging all 8 workers' files (issue 10)
    sc8 = comm["scrape_8_workers"]
    assert sc8["workers"] == sc8["workers_served"] == 8 and sc8["n"] >= 20 and sc8["samples"] > 50, sc8
    assert 0 < sc8["cpu_ms_median"] <= sc8["wall_ms_median"] <= sc8["wall_ms_p90"] < 1000, sc8
    hang = sc["hang"]["summary"]
    assert hang["prefork"]["timeout_kills"] >= 1
    assert hang["eventloop"]["ok_per_s_last_second"] == 0  # a hung loop serves nobody till the end of the run
    assert hang["greenthreads"]["ok_per_s_last_second"] == 0  # nor a hung hub (a hang sleeps in C: no patch)
    # every hang pins a pool thread for good; a threads worker with a free thread is not hung, so none is killed
    pool = hang["threadpool"]
    assert pool["injected"] >= 1 and pool["hung_threads"] == min(pool["injected"], pool["threads"]), pool
    if "hybrid-threads" in MODELS:
        ht = hang["hybrid-threads"]
        assert ht["injected"] >= 1 and ht["hung_threads"] == ht["injected"] < ht["threads"] // 2, ht
        assert ht["timeout_kills"] == 0, ht
    mem = sc["memory"]["summary"]
    assert mem["prefork_pss_per_worker_mb"] > 0
    assert any(k.startswith("prefork_rss_over_pss_at_") and v > 1.5 for k, v in mem.items())


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_idle_slow_and_fairness_show_their_lessons(quick_bench: Path) -> None:
    sc = json.loads((quick_bench / "results.json").read_text())["scenarios"]
    idle = sc["idle"]["summary"]
    n = idle["connections"]
    assert n == 200 and idle["rlimit_nofile"]["soft_used"] >= n
    assert idle["eventloop"]["answered"] == n and idle["eventloop"]["probe_success_pct"] == 100.0
    assert idle["greenthreads"]["answered"] == n and idle["greenthreads"]["probe_success_pct"] == 100.0
    # prefork (4 sync workers) answers one connection per worker; the rest wait in the backlog, unanswered
    assert idle["prefork"]["answered"] == 4, idle["prefork"]
    assert idle["prefork"]["stuck"] + idle["prefork"]["not_connected"] == n - 4, idle["prefork"]
    assert idle["threadpool"]["answered"] >= 32  # at least one per thread
    slow = sc["slow"]["summary"]
    assert slow["eventloop"]["plain"]["success_pct"] >= 90, slow["eventloop"]
    assert slow["prefork"]["plain"]["success_pct"] <= 50, slow["prefork"]  # 100 slow heads pin 4 workers
    assert slow["threadpool"]["plain"]["success_pct"] <= 50, slow["threadpool"]  # ... and 32 threads + queue
    for m in MODELS:  # the plain run and both defences, each with figures
        assert set(slow[m]) == {"plain", "--header-timeout 2", "--min-rate 100"}, slow[m]
        assert all(v["sent"] > 0 and v["success_pct"] is not None for v in slow[m].values()), (m, slow[m])
    if "hybrid-loop" in MODELS:  # after the hybrids land: a loop per worker holds idle and slow clients too
        assert idle["hybrid-loop"]["answered"] == n, idle["hybrid-loop"]
        assert slow["hybrid-loop"]["plain"]["success_pct"] >= 90, slow["hybrid-loop"]
    over = sc["overthreading"]["raw"]["rows"]
    for row in over:
        f = row["fairness"]
        assert f["connections"] == sc["overthreading"]["summary"]["users"]
        assert f["min"] <= f["median"] <= f["max"] and f["total"] > 0, f


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_results_json_is_compact(quick_bench: Path) -> None:
    text = (quick_bench / "results.json").read_text()
    assert "\n" not in text.strip() and '": ' not in text and '", "' not in text, "results.json is pretty-printed"
    assert len(text) < 600_000, len(text)  # the 2.3 MB sample was mostly repeated /_lab/stats documents
    results = json.loads(text)
    samples = results["scenarios"]["faults"]["raw"]["runs"]["crash"][0]["samples"]["prefork"]
    assert set(samples) == {"cols", "rows"} and samples["rows"], samples.keys()
    assert "snippet" not in results["scenarios"]["creation"]["raw"]  # thousands of raw timings: summary only


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_wrk_cross_check(quick_bench: Path) -> None:
    wrk = json.loads((quick_bench / "results.json").read_text())["scenarios"]["wrk"]
    if wrk.get("skipped"):  # a missing tool is a skip that says what to install (a failure under CI=true)
        pytest.skip(wrk["skipped"])
    for m in MODELS:
        assert wrk["summary"][m]["rps_median"] > 0, wrk["summary"]


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_console_summary_names_each_models_figure(quick_bench: Path) -> None:
    console = (quick_bench / "console.txt").read_text().splitlines()
    head, rows = table((quick_bench / "report.md").read_text())
    models = head[1:-2]
    for label, cells in rows.items():  # the row's label, then one line per model: its name, then its cell
        at = console.index(f"  {label}")
        for i, (model, cell) in enumerate(zip(models, cells)):
            assert console[at + 1 + i].split() == [f"{model}:", *cell.replace("\\|", "|").split()], console[at:at + 6]


# -- green threads beside the pool and the loop: waits that overlap, and a call in C that stalls the hub -------------
@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-three")
    proc = webmodels("bench", "--quick", "--duration", "1", "--models", "threadpool,eventloop,greenthreads",
                     "--scenarios", "blocked,io,context", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert not [n for n, s in results["scenarios"].items() if s.get("error") or s.get("skipped")], results["scenarios"]
    return {"results": results["scenarios"], "md": (out / "report.md").read_text(), "dir": out}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_call_blocked_in_c_stalls_the_loop_and_every_greenlet_not_the_pool(three_models: dict) -> None:
    b = three_models["results"]["blocked"]["summary"]
    # the pool's other threads answer GET / all through the 2 s block; nothing answers on the loop's one thread or
    # on the hub's: gevent's patches cannot reach a sleep inside C
    assert b["threadpool"]["answered_during"] >= 20 and b["threadpool"]["longest_wait_ms"] < 1000, b["threadpool"]
    for m in ("eventloop", "greenthreads"):
        assert b[m]["answered_during"] == 0 and b[m]["longest_wait_ms"] >= b["block_ms"] / 2, (m, b[m])
        assert b[m]["probes"] > b[m]["probes_failed"], (m, b[m])  # they were answered, after the block
    for m in ("threadpool", "eventloop", "greenthreads"):
        assert b[m]["blocker_outcome"] == "ok" and b[m]["blocker_ms"] >= b["block_ms"], (m, b[m])  # it did block
    head, rows = table(three_models["md"])
    assert head[1:-2] == ["threadpool", "eventloop", "greenthreads"], head
    assert rows["a call that blocks in C"][2].startswith("0 answered during the block"), rows["a call that blocks in C"]
    check_pngs(three_models["dir"], ["blocked.png"])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_greenlets_wait_together_like_tasks_the_pool_only_per_thread(three_models: dict) -> None:
    sc = three_models["results"]
    burst = sc["io"]["summary"]["at_once"]
    n = burst["requests"]
    for m in ("eventloop", "greenthreads"):  # every wait at once: answered within 3 s, not one at a time
        assert burst[m]["answered"] == n, (m, burst[m])
    pool = burst["threadpool"]
    assert 0 < pool["answered"] <= 32 < n and pool["refused"] > 0, pool  # its 32 threads, then the fast 503
    ctx = sc["context"]["summary"]
    # the kernel schedules one thread for the greenlets (and its helpers): far fewer switches than the pool's threads
    assert ctx["greenthreads"]["os_threads"] < ctx["threadpool"]["os_threads"], ctx
    assert ctx["greenthreads"]["voluntary_per_request"] < ctx["threadpool"]["voluntary_per_request"] / 2, ctx


def _runs(s: dict) -> list[dict]:
    raw = s.get("raw") or {}
    out = [raw["run"]] if "run" in raw else []
    for v in (raw.get("runs") or {}).values():
        out += v if isinstance(v, list) else [v] if isinstance(v, dict) and "accounting_rows" in v else []
    return out


@pytest.mark.slow
@pytest.mark.timeout(700)  # the first one to run also runs the bench (the fixture)
def test_quick_bench_charts_are_valid_pngs(quick_bench: Path) -> None:
    names = sorted(p.name for p in quick_bench.glob("*.png"))
    assert {"memory.png", "faults.png", "hang.png", "leak.png", "io.png", "multicore.png", "idle.png",
            "slow.png"} <= set(names)
    check_pngs(quick_bench, names)


# -- the soak -----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_60s_every_failure_attributed_nothing_grows_all_serving(tmp_path: Path) -> None:
    proc = webmodels("bench", "--scenarios", "soak", "--duration", "60", "--seed", "20261125", "--out",
                     str(tmp_path), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "chaos seed 20261125" in proc.stdout
    sc = json.loads((tmp_path / "results.json").read_text())["scenarios"]["soak"]
    s, raw = sc["summary"], sc["raw"]
    assert s["injected"] == s["scheduled"] >= 20, s
    # Locust's injector fired the very schedule the bench drew from the seed (one implementation, webmodels.chaos)
    drawn = list(chaos.seeded(20261125, MODELS, 60))
    assert [(f["model"], f["fault"]) for f in raw["fired"]] == [(x.server, x.kind) for x in drawn]
    # at its time (the models, kinds and order are exact, above): never early; late by what a loaded machine's
    # Locust takes to get round to it (seen: more than 1.5 s beside another test run)
    assert all(-0.5 < f["at_s"] - x.at < 4.0 for f, x in zip(raw["fired"], drawn)), raw["fired"][:3]
    assert s["unattributed_total"] == 0, {m: raw["attribution"][m]["unattributed_examples"] for m in MODELS
                                          if m in raw["attribution"]}
    assert s["all_serving_at_end"], raw["serving_at_end"]
    assert not s["any_growth"], s["growth"]
    assert "bench (supervisor)" in s["growth"] and "prefork master" in s["growth"]
    for m in MODELS:
        a = raw["attribution"][m]
        assert a["injected"] >= 1 and a["requests"] > 100, (m, a)
        assert sum(a["attributed"].values()) == a["failed"], (m, a)
    assert {"crash", "segfault", "hang", "leak", "raise"} <= {f["fault"] for f in raw["fired"]}
    # the accounting agrees: each fault request is an expected request of its server, and every run balances
    acc = raw["run"]["accounting_rows"]
    assert all(acc[m]["expected"] == raw["attribution"][m]["injected"] and acc[m]["balanced"] for m in MODELS), acc
    check_pngs(tmp_path, ["soak.png"])
    # a long step shows its progress as it goes (not a terminal: a line every 10 s): elapsed, faults so far
    steps = [ln for ln in proc.stderr.splitlines() if "soak · 60 s" in ln]
    seen = [(int(m[1]) * 60 + int(m[2]), int(f[1]) if (f := re.search(r"(\d+) faults injected", ln)) else 0)
            for ln in steps if (m := re.search(r" · (\d+)m(\d\d)s of ~", ln))]
    assert len(seen) >= 4 and [t for t, _ in seen] == sorted(t for t, _ in seen) and seen[-1][0] >= 40, steps
    assert [n for _, n in seen] == sorted(n for _, n in seen) and seen[-1][1] >= 10, steps


def test_soak_attribution_counts_exactly() -> None:
    def req(t: float, ok: bool, ms: float = 10.0) -> dict:
        return {"t": t, "server": "eventloop", "name": "eventloop /", "ok": ok,
                "class": "ok" if ok else "collateral", "error": None if ok else "ConnectionRefusedError", "ms": ms}
    # a crash sent at 10.0 takes effect at 10.2 (its request ends); first success sent after it: 10.5
    fired = [{"model": "eventloop", "fault": "crash", "sent": 10.0, "effect": 10.2}]
    records = [req(9.0, True), req(9.95, False, 300.0),  # in flight at the crash: attributed
               req(10.3, False), req(10.4, False),  # refused while down: attributed
               req(10.5, True), req(10.45, False, 100),  # sent before the recovery point: attributed
               req(11.0, False),  # sent after the server was back: no fault explains it
               req(8.0, False), req(10.1, True, 50)]  # before any fault: unattributed; a success before the effect
    a = attribute(records, fired, ["eventloop"])["eventloop"]
    assert a["failed"] == 6 and a["attributed"] == {"crash": 4} and a["unattributed"] == 2, a
    assert fired[0]["recovered_at"] == 10.5 and a["never_recovered"] == 0
    assert sorted(x["t"] for x in a["unattributed_examples"]) == [8.0, 11.0]
    # a hang takes effect when sent; the first success sent at that very moment is its recovery
    hang = [{"model": "eventloop", "fault": "hang", "sent": 20.0, "effect": 20.0}]
    assert attribute([req(19.0, True), req(20.0, True)], hang, ["eventloop"])["eventloop"]["never_recovered"] == 0
    assert hang[0]["recovered_at"] == 20.0


def test_growth_verdicts() -> None:
    flat = [[t, 12, 3, 4, 50.0 + (t % 3) * 0.1] for t in range(40)]
    g = growth(flat, {"fds": 2, "threads": 2, "children": 0, "rss_mib": 10.0})
    assert not any(v["grows"] for v in g.values()), g
    leaking = [[t, 12 + t // 4, 3, 4, 50.0] for t in range(40)]  # one fd every 4 s
    g = growth(leaking, {"fds": 2, "threads": 2, "children": 0, "rss_mib": 10.0})
    assert g["fds"]["grows"] and g["fds"]["slope_per_min"] == pytest.approx(15, rel=0.1), g["fds"]
    assert not g["threads"]["grows"]


# -- ports and CI rules ----------------------------------------------------------------------------------------
def test_bench_server_reads_its_port_from_the_start_up_line() -> None:
    with BenchServer("eventloop", cpus=tuple(sorted(os.sched_getaffinity(0)))) as srv:
        assert srv.port > 0 and srv.bind_retries == 0
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_bench_server_retries_while_its_port_is_in_use() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    srv = BenchServer("eventloop", cpus=tuple(sorted(os.sched_getaffinity(0))), port=port)

    def free_after_a_failed_attempt() -> None:  # not after a fixed time: a busy machine starts Python slowly
        deadline = time.monotonic() + 30
        while srv.bind_retries < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        holder.close()

    freer = threading.Thread(target=free_after_a_failed_attempt)
    freer.start()
    with srv:
        assert srv.port == port and srv.bind_retries >= 1, srv.lines[-5:]
        assert srv.alive()
    freer.join()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:  # a port that stays busy: a clear error at the deadline, not a hang
        with pytest.raises(RuntimeError, match="did not start"):
            BenchServer("eventloop", cpus=tuple(sorted(os.sched_getaffinity(0))),
                        port=busy.getsockname()[1]).start(timeout=2.0)
    finally:
        busy.close()


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skipped_scenario_fails_the_bench_in_ci_only(tmp_path: Path, ci: str) -> None:
    env = {**os.environ, "CI": ci}
    proc = webmodels("bench", "--models", "eventloop", "--scenarios", "overthreading", "--out", str(tmp_path),
                     timeout=120, env=env)
    assert "scenario overthreading skipped: threadpool not among --models" in proc.stderr, proc.stderr
    if ci:
        assert proc.returncode == 1 and "a failure in CI" in proc.stderr, (proc.returncode, proc.stderr)
    else:
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_wrk_the_bench_skips_its_cross_check_saying_what_to_install(tmp_path: Path, ci: str) -> None:
    env = {**os.environ, "CI": ci, "PATH": path_without("wrk", tmp_path)}
    assert shutil.which("wrk", path=env["PATH"]) is None  # everything else is still there
    assert bool(shutil.which("taskset", path=env["PATH"])) == bool(shutil.which("taskset"))
    proc = webmodels("bench", "--models", "eventloop", "--scenarios", "wrk", "--out", str(tmp_path / "out"),
                     timeout=120, env=env)
    assert f"scenario wrk skipped: {WRK_SKIPPED}" in proc.stderr, proc.stderr
    assert proc.returncode == (1 if ci else 0), (proc.returncode, proc.stderr)
    assert "Skipped: wrk is not installed" in (tmp_path / "out" / "report.md").read_text()


def test_the_bench_process_never_loads_locust_or_gevent(tmp_path: Path) -> None:
    # from another directory: the bench finds loadtest/'s plain-Python parts beside the package, not in the cwd
    code = ("import sys, webmodels.bench.main, webmodels.bench.scenarios, webmodels.bench.locustrun as lr; "
            "assert lr.RecoveryWatch and lr.read_timeline; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'locust', 'gevent', 'geventhttpclient'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_progress_shows_a_long_step_as_it_goes_even_without_a_terminal() -> None:
    class Out(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False
    out = Out()
    bar = Progress(10.0, stream=out)
    bar.PLAIN_EVERY_S = 0.2
    done = iter(range(1, 100))
    bar.step("soak · 240 s", 9.0, detail=lambda: f"{next(done)} faults injected")
    bar._draw()  # at once after the step's own line: nothing new to say yet
    deadline = time.monotonic() + 10
    while len(out) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        bar._draw()
    assert len(out) == 3 and all(line.endswith("\n") and "soak · 240 s · 0m0" in line for line in out), out
    assert [re.search(r"(\d+) faults injected", line)[1] for line in out] == ["1", "2", "3"], out
    broken = Progress(10.0, stream=Out())
    broken.step("step", 1.0, detail=lambda: 1 / 0)  # a detail that fails never breaks the run it describes
    assert "step · 0m00s of ~0m01s  ~" in broken.line()


def test_live_progress_reads_requests_and_faults_from_locusts_csv(tmp_path: Path) -> None:
    assert live(tmp_path) == ""  # not written yet
    (tmp_path / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time\n"
        "GET,prefork /,1200,3,1\nPOST,prefork /fault/crash,4,4,2\nPOST,eventloop /_lab/kill,2,0,3\n"
        "GET,eventloop /io,800,0,50\n,Aggregated,2006,7,2\n")
    assert live(tmp_path) == "2 006 requests (7 failed), 6 faults injected"
    (tmp_path / "locust_stats.csv").write_text("Type,Name,Request Count\nGET,prefork /,12")  # mid-rewrite
    assert live(tmp_path) == ""


def test_report_refuses_results_of_another_schema(tmp_path: Path) -> None:
    doc = json.loads(FIXTURE.read_text())
    (tmp_path / "results.json").write_text(json.dumps({**doc, "schema": SCHEMA - 1}))
    proc = webmodels("report", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and f"this version reads schema {SCHEMA}" in proc.stderr, proc.stderr
    assert not (tmp_path / "report.md").exists()


def test_a_one_second_locust_run_lasts_a_second_and_sends_requests(tmp_path: Path) -> None:
    # Locust's start-up takes seconds on a busy machine; the run's test window must still be its -t
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    with BenchServer("eventloop", cpus=cpus) as srv:
        r = locustrun.run(locustrun.LocustRun(targets={"eventloop": srv.url}, users=2, duration=1.0), cpus=cpus,
                          workdir=tmp_path)
    window = r["accounting_run"]["stopped_at"] - r["accounting_run"]["started_at"]
    assert window >= 0.9 and r["stats"]["eventloop /"]["requests"] > 0, (window, r["stats"], r["log_tail"])


def test_the_bench_loads_the_labs_servers_and_refuses_a_model_locust_cannot_load(tmp_path: Path) -> None:
    from webmodels import config
    from webmodels.lab import SERVERS
    assert MODELS == tuple(m for m in config.MODELS if m in SERVERS) and set(MODELS) == set(SERVERS)
    outside = [m for m in config.MODELS if m not in SERVERS]  # e.g. a new engine not yet a lab server
    if outside:
        proc = webmodels("bench", "--models", outside[0], "--scenarios", "wrk", "--out", str(tmp_path), timeout=60)
        assert proc.returncode == 2 and "Locust has a user class for each" in proc.stderr, proc.stderr


def test_hybrids_get_their_locust_class_and_url_variable_by_contract() -> None:
    from webmodels.bench.locustrun import url_env, user_class
    assert user_class("hybrid-threads") == "HybridThreadsUser" and user_class("prefork") == "PreforkUser"
    assert url_env("hybrid-loop") == "WEBMODELS_HYBRID_LOOP_URL" and url_env("eventloop") == "WEBMODELS_EVENTLOOP_URL"


def test_every_scenario_is_registered_once_with_a_why() -> None:
    assert len(SCENARIOS) == 17
    for name, s in SCENARIOS.items():
        assert s.name == name and s.title and len(s.why) > 20 and not s.why.endswith(".")  # the report adds it
        assert callable(s.run) and callable(s.section)
    assert [n for n, s in SCENARIOS.items() if not s.default] == ["soak"]


# -- the report --------------------------------------------------------------------------------------------------
def test_report_rebuilds_the_same_report_from_results_json(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "results.json")
    proc = webmodels("report", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = FIXTURE.parent / "bench-report"
    assert (tmp_path / "report.md").read_text() == (expected / "report.md").read_text()
    assert (tmp_path / "report.html").read_text() == (expected / "report.html").read_text()
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted(re.findall(r"\]\(([\w-]+\.png)\)", (expected / "report.md").read_text()))
    check_pngs(tmp_path, names)
    # and a second rebuild in place is byte-identical (nothing depends on the clock or the host)
    first = {n: (tmp_path / n).read_bytes() for n in ["report.md", "report.html", *names]}
    assert webmodels("report", str(tmp_path), timeout=120).returncode == 0
    assert first == {n: (tmp_path / n).read_bytes() for n in first}


def test_report_without_results_fails_clearly(tmp_path: Path) -> None:
    proc = webmodels("report", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "results.json" in proc.stderr
