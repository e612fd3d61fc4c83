"""webmodels.launch on small stand-in processes (python -c): readiness, bounded output, stop by group."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

from webmodels import launch

from .support import wait_for


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# A stand-in for a server: ignores SIGTERM if asked, says it listens (as listen.log_startup does), waits.
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1:] == ["fork"] and os.fork() == 0:  # a worker that outlives its master's clean exit
    time.sleep(60)
    os._exit(0)
if sys.argv[1:] == ["fork"]:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the master itself leaves at SIGTERM
print("webmodels stub pid=%d listening on http://127.0.0.1:4321 config={}" % os.getpid(), flush=True)
time.sleep(60)
"""


def test_the_start_up_line_gives_the_address() -> None:
    proc = launch.Process(py(STUBBORN) + ["plain"])
    try:
        assert proc.wait_listening(20), proc.log
        assert (proc.address, proc.host, proc.port) == ("127.0.0.1:4321", "127.0.0.1", 4321)
    finally:
        proc.stop(0.2)


def test_a_failed_start_is_noticed_when_its_output_ends_not_at_the_deadline() -> None:
    t0 = time.monotonic()
    proc = launch.Process(py("print('port 1 on 127.0.0.1 is already in use'); raise SystemExit(2)"))
    assert not proc.wait_listening(20)
    assert time.monotonic() - t0 < 5  # not the 20 s deadline
    assert proc.wait(5) == 2 and launch.addr_in_use(proc.log), proc.log


def test_output_keeps_the_latest_lines_only() -> None:
    proc = launch.Process(py("for i in range(100): print(i)"), max_lines=10)
    assert not proc.wait_listening(20)  # returns at the end of the output: every line has been read
    assert proc.lines == [str(i) for i in range(90, 100)]


def test_stop_sweeps_the_group_a_master_left_behind() -> None:
    proc = launch.Process(py(STUBBORN) + ["fork"])
    assert proc.wait_listening(20), proc.log
    worker = next(iter(psutil.Process(proc.pid).children()))
    assert proc.stop(5) == -signal.SIGTERM  # the master left in time, by itself...
    # ...and the worker that ignored SIGTERM went with the group's SIGKILL (a zombie until init reaps it)
    wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, timeout=5,
             what="the worker gone")


def test_stop_all_gives_every_process_one_deadline_together() -> None:
    procs = [launch.Process(py(STUBBORN) + ["plain"]) for _ in range(3)]
    for p in procs:
        assert p.wait_listening(20), p.log
        assert os.getpgid(p.pid) == p.pid  # each leads its own group
    t0 = time.monotonic()
    late = launch.stop_all(procs, timeout=0.5)  # all three ignore SIGTERM
    assert time.monotonic() - t0 < 1.4, "one 0.5 s deadline for the three, not three in a row"
    assert late == procs and all(p.returncode == -signal.SIGKILL for p in procs)
