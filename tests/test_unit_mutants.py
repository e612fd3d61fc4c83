"""The mutation table (scripts/mutants.toml) cannot rot silently: every snippet still matches the code it mutates,
and every test it names still exists (a renamed or moved test would leave a mutant judged by nothing)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def mutants() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("mutants", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_every_mutant_of_the_table_still_matches_the_code_exactly_once() -> None:
    m = mutants()
    table = m.load()
    assert len(table) >= 8
    assert m.check(table, ROOT) == [], "edit scripts/mutants.toml: the code it mutates has changed"


def test_every_test_a_mutant_names_exists() -> None:
    m = mutants()
    table = m.load()
    selections = [t for mutant in table for t in mutant.tests]
    assert not [t for t in selections if not t.startswith(("tests/", "-k "))], selections
    node_ids = sorted({t for t in selections if t.startswith("tests/")})
    # pytest's own collection, as `make mutants` runs them: a node id that names nothing is an error (exit 4)
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *node_ids], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    collected = {line.split("[")[0] for line in res.stdout.splitlines() if "::" in line}
    named = {t.split("[")[0] for t in node_ids if "::" in t}
    assert named <= collected, named - collected
