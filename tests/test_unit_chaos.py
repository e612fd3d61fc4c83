"""The one fault table (webmodels.faults) and the chaos schedule (webmodels.chaos), and who reads them.

The handler's fault routes, Locust's `--fault` choices and the soak all come from one table; a kind's name is the
same everywhere. The schedule is pure: the same seed and servers give the same shots, whatever order the servers
were listed in, and a kind only hits a server it applies to.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from webmodels import app, chaos, faults
from webmodels.config import MASTER_MODELS, MODELS

ROOT = Path(__file__).resolve().parent.parent


def test_every_kind_has_a_route_the_handler_serves_with_its_methods() -> None:
    for f in faults.FAULTS:
        methods, handler = app.FAULT_ROUTES[f.path]
        assert methods == f.methods and handler is app.FAULT_HANDLERS[f.kind], f
    assert set(app.FAULT_HANDLERS) == set(faults.KINDS)


def test_a_request_target_names_its_kind_back() -> None:
    for kind in faults.KINDS:
        assert faults.kind_of(faults.request(kind, hang_s=2, leak_mb=4)) == kind
    assert faults.request("hang", hang_s=2) == "/fault/hang?s=2"
    assert faults.request("leak", leak_mb=4) == "/fault/leak?mb=4"
    assert faults.kind_of("/_lab/kill?pid=7&target=process") == "kill-process"
    assert faults.kind_of("/_lab/kill") == "kill-worker"  # the handler's default target (tests/test_unit_app.py)
    assert faults.kind_of("/fault/crash") == "crash" and faults.kind_of("/io?ms=5") is None
    assert faults.kind_of("/_lab/scale") is None  # behind --faults too, but a control, not a fault
    assert {f.kind for f in faults.FAULTS if f.ends_process} == {"crash", "segfault", "kill-worker", "kill-process"}


def test_locust_offers_every_kind_and_chaos_by_the_table_names() -> None:
    # Locust runs as a subprocess (never imported into a test process); argparse lists the choices it refuses
    out = subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "loadtest" / "locustfile.py"),
                          "--headless", "-t", "1s", "--fault", "no-such-fault"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode != 0 and "argument --fault: invalid choice" in out.stderr, out.stderr[-2000:]
    choices = re.findall(r"'([\w-]+)'", out.stderr.split("choose from", 1)[1])
    assert choices == ["none", *faults.KINDS, "chaos"], choices


def test_a_periodic_schedule_fires_each_applicable_server_every_period() -> None:
    shots = [s for _, s in zip(range(9), chaos.periodic(MODELS, "kill-worker", 1.5))]
    assert {s.server for s in shots} == set(MASTER_MODELS)  # no worker to kill in a single-process model
    assert [s.at for s in shots] == [1.5] * 3 + [3.0] * 3 + [4.5] * 3
    assert [s.server for s in shots[:3]] == [m for m in MODELS if m in MASTER_MODELS]
    crash = [s for _, s in zip(range(10), chaos.periodic(MODELS, "crash", 2))]
    assert {s.server for s in crash} == set(MODELS) and all(s.kind == "crash" for s in crash)
    assert list(chaos.periodic(MODELS, "crash", 0)) == []
    assert list(chaos.periodic(("eventloop",), "kill-worker", 1)) == []
    # a timed run: no shot in its last period (it could not even arrive before the end)
    assert [s.at for s in chaos.periodic(("prefork",), "crash", 1.2, until=4.0)] == [1.2, 2.4]
    assert [s.at for s in chaos.periodic(("prefork",), "crash", 5, until=20)] == [5, 10, 15]


def test_a_seeded_schedule_is_its_seed_whatever_the_order_of_servers() -> None:
    a = list(chaos.seeded(7, MODELS, 60))
    assert a == list(chaos.seeded(7, tuple(reversed(MODELS)), 60)) != list(chaos.seeded(8, MODELS, 60))
    assert 14 <= len(a) <= 56 and a[0].at == chaos.START_S and all(s.at < 60 - chaos.SETTLE_S for s in a)
    assert all(1.0 <= b.at - x.at <= 3.0 for x, b in zip(a, a[1:]))
    n = len(MODELS)  # dealt in rounds: each server once per round, so none is spared for long
    assert all(sorted(s.server for s in a[i:i + n]) == sorted(MODELS) for i in range(0, len(a) - n + 1, n)), a
    assert [s.server for s in a[:n]] != [s.server for s in a[n:2 * n]]  # a shuffled order, not a fixed one
    for s in a:  # one kill per server: a worker where there are workers, else the whole server
        assert s.kind in chaos.chaos_kinds(s.server), s
    assert {s.kind for s in a} >= {"crash", "segfault", "hang", "leak", "raise"}
    assert chaos.chaos_kinds("prefork") == ("crash", "segfault", "hang", "leak", "raise", "kill-worker")
    assert chaos.chaos_kinds("eventloop") == ("crash", "segfault", "hang", "leak", "raise", "kill-process")
    endless = chaos.seeded(7, MODELS)  # no end (Locust's UI without a run time): the same shots, then more
    assert [next(endless) for _ in a] == a and next(endless).at >= 60 - chaos.SETTLE_S
