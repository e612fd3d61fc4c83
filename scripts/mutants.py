#!/usr/bin/env python3
"""Plant named one-line bugs (scripts/mutants.toml) one at a time in a copy of the tree; each must be caught.

    python scripts/mutants.py              # every mutant: baseline, then mutate → run its tests → restore
    python scripts/mutants.py --check      # only check that every `original` still matches exactly once
    python scripts/mutants.py -k pdeath    # the mutants whose name contains "pdeath"

The copy holds every tracked and untracked-but-not-ignored file of the working tree (uncommitted edits
included), so the tree you work in is never modified. Tests run with the copy first on PYTHONPATH (it
shadows the editable install, also in the servers the tests start) and without writing bytecode (a
stale .pyc of the unmutated file can never be picked up). First the selected tests must pass unmutated
(a baseline); then, per mutant, its tests run with -x and the first failing test is named.

Exit status: 0 when every mutant is killed; 1 when one survives, a snippet no longer matches (exactly once),
the baseline fails, or a run errors.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "scripts" / "mutants.toml"
TIMEOUT_S = 900
STOP_WAIT_S = 30  # a stopped run's pytest gets this long to tear its fixtures down


@dataclass
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    tests: list[str]


def load(path: Path = TABLE) -> list[Mutant]:
    with path.open("rb") as f:
        return [Mutant(**m) for m in tomllib.load(f)["mutant"]]


def check(mutants: list[Mutant], root: Path) -> list[str]:
    """Return a problem line for every mutant whose original does not occur exactly once in its file."""
    problems = []
    for m in mutants:
        path = root / m.file
        if not path.exists():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.original)
        if n != 1:
            problems.append(f"{m.name}: {m.original!r} occurs {n} times in {m.file} (must be exactly once)")
    return problems


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        target = dest / os.fsdecode(name)
        if src.is_symlink():  # e.g. src/webmodels/servers → ../../servers: the copy must resolve in the copy
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(src))
        elif src.is_file():  # (a file deleted in the work tree is still listed by --cached)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def pytest(copy: Path, selection: list[str]) -> tuple[int, str]:
    """Run pytest on SELECTION in the copy, in a process group of its own: a timeout, or this script being
    stopped (SIGTERM, Ctrl-C), takes the whole group with it — no test server is left running."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS",)}
    env.update(PYTHONPATH=os.pathsep.join([str(copy / "src"), str(copy)]), PYTHONDONTWRITEBYTECODE="1")
    argv = [sys.executable, "-B", "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *selection]
    proc = subprocess.Popen(argv, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return -1, f"timed out after {TIMEOUT_S}s\n{proc.communicate()[0] or ''}"
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, out


def _kill_group(proc: subprocess.Popen) -> None:
    """Interrupt pytest as Ctrl-C does (its fixtures then stop the servers they started: those run in sessions
    of their own), then SIGKILL whatever of its group is left."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=STOP_WAIT_S)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started (its leader's pid), nothing else
    except ProcessLookupError:
        pass


def failed_tests(output: str) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)


def selection(m: Mutant) -> list[str]:
    out: list[str] = []
    for t in m.tests:
        out += t.split(" ", 1) if t.startswith("-k ") else [t]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--check", action="store_true", help="only check that every snippet still matches")
    ap.add_argument("-k", dest="only", default="", help="only the mutants whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the copy of the tree (its path is printed)")
    args = ap.parse_args()
    mutants = [m for m in load() if args.only.lower() in m.name.lower()]
    if not mutants:  # (an empty selection would make the baseline the whole suite)
        print(f"mutants: no mutant's name contains {args.only!r} (-k is a plain substring)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a stop runs the cleanups below
    problems = check(mutants, ROOT)
    for p in problems:
        print(f"mutants: snippet mismatch: {p}", file=sys.stderr)
    if args.check or problems:
        if not problems:
            print(f"mutants: all {len(mutants)} snippets match exactly once")
        return 1 if problems else 0

    copy = Path(tempfile.mkdtemp(prefix="webmodels-mutants-"))
    try:
        copy_tree(copy)
        every = sorted({t for m in mutants for t in selection(m)})
        print(f"mutants: copy of the tree in {copy}; baseline: {' '.join(every)}", flush=True)
        code, out = pytest(copy, every)
        if code != 0:
            print(out[-5000:])
            print("mutants: the baseline fails: fix the tests before judging mutants", file=sys.stderr)
            return 1
        rows = []
        for m in mutants:
            path = copy / m.file
            pristine = path.read_text()
            path.write_text(pristine.replace(m.original, m.replacement, 1))
            t0 = time.monotonic()
            try:
                code, out = pytest(copy, selection(m))
            finally:
                path.write_text(pristine)
            culprits = failed_tests(out)
            if code == 1 and culprits:
                verdict, by = "killed", culprits[0]
            elif code == 0:
                verdict, by = "SURVIVED", "-"
            else:
                verdict, by = "ERROR", f"pytest exit {code}: {out.strip().splitlines()[-1] if out.strip() else ''}"
            rows.append((m.name, verdict, by, time.monotonic() - t0))
            print(f"  {verdict:<8} {m.name}  ({by}, {rows[-1][3]:.0f}s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(copy, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'mutant':<{width}}  {'result':<8}  killed by")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 40}")
    for name, verdict, by, _ in rows:
        print(f"{name:<{width}}  {verdict:<8}  {by}")
    alive = [r for r in rows if r[1] != "killed"]
    print(f"\nmutants: {len(rows) - len(alive)} of {len(rows)} killed")
    return 1 if alive else 0


if __name__ == "__main__":
    sys.exit(main())
