"""A real lab for the exercise tests: `webmodels up` on a free block of ports, driven as an attendee drives it.

The Locust web UI's own routes (POST /stop, POST /swarm with the form the Set up button sends), the
Exercises tab's routes (select, act, reset, observe) and the shell commands the README prints (ports shifted
to this lab, `webmodels` from this venv) — nothing else. Figures are read from /exercises/observe.json, the
JSON the tab draws; the tests also check the raw numbers the README promises.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from webmodels import exercises
from webmodels.lab import LAB_PORTS, LOCUST_PORT

from .lab import Lab
from .processes import wait_for

VENV_BIN = str(Path(sys.executable).parent)


class ExerciseLab:
    """The lab, its Locust UI, and the moves of an exercise."""

    def __init__(self) -> None:
        self.lab = Lab()
        self.ui = self.lab.url(LOCUST_PORT)
        self.http = httpx.Client(base_url=self.ui, timeout=90)
        self.urls = {name: self.lab.url(port) for name, port in LAB_PORTS.items()}
        try:
            wait_for(lambda: self.http.get("/exercises.json").status_code == 200, 60, 0.2, "the Exercises tab")
            for name, url in self.urls.items():
                wait_for(lambda: httpx.get(url + "/_lab/stats", timeout=3).status_code == 200, 60, 0.2, f"{name} up")
        except AssertionError as exc:  # say why: the lab's own log (a server that never came up says so there)
            self.lab.stop()
            raise AssertionError(f"{exc}\n--- the lab's log (last 4000 characters) ---\n{self.lab.log[-4000:]}") from None

    def stop(self) -> None:
        self.http.close()
        self.lab.stop()

    # -- the tab and Locust -----------------------------------------------------------------------------------------
    def post(self, path: str, **data: str) -> dict[str, Any]:
        r = self.http.post(path, data=data)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.json()

    def reset(self) -> dict[str, Any]:
        """What the Reset button does: stop Locust's run, then the tab's reset."""
        self.http.post("/stop")
        out = self.post("/exercises/reset")
        assert out["ok"], out
        return out

    def setup(self, ex_id: str, i: int = 0) -> None:
        """What the Set up button does: select, stop, then Locust's own POST /swarm with the exercise's form."""
        setup = exercises.exercise(ex_id).setups[i]
        self.post("/exercises/select", id=ex_id, setup=str(i))
        self.http.post("/stop")
        if not setup.classes:
            return
        shown = next(e for e in self.http.get("/exercises.json").json()["exercises"] if e["id"] == ex_id)
        form = shown["setups"][i]["form"]
        assert ("user_count", str(setup.users)) in [tuple(f) for f in form], form  # the table's parameters
        r = self.http.post("/swarm", content=urlencode([tuple(f) for f in form]),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.json()["success"], r.text
        self.setup_settled(ex_id, i)

    def setup_settled(self, ex_id: str, i: int = 0) -> None:
        """Wait until every loaded server answers users, and the tab has sampled them under load."""
        classes = exercises.exercise(ex_id).setups[i].classes
        wait_for(lambda: all((self.http.get("/accounting.json").json()["servers"].get(name) or {}).get("ok", 0) >= 10
                             for name in classes), 60, 0.25, f"load on {', '.join(classes)}")
        time.sleep(2.5)

    def act(self, ex_id: str, key: str) -> dict[str, Any]:
        """What an Act button does."""
        out = self.post("/exercises/act", id=ex_id, key=key)
        assert out["ok"], out
        return out

    def shell(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a README command in bash as an attendee would, against this lab (its ports, this venv's webmodels)."""
        if shutil.which("curl") is None and "curl " in command:
            pytest.skip("the README's commands use curl: apt-get install curl")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        cmd = exercises.localize(command, self.urls).replace(".venv/bin/python", sys.executable)
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=exercises.project_root())

    def observe(self, ex_id: str) -> dict[str, Any]:
        return self.http.get("/exercises/observe.json", params={"id": ex_id}).json()

    def figures(self, ex_id: str, keys: tuple[str, ...] = (), timeout: float = 45) -> dict[str, dict[str, Any]]:
        """Poll the tab until none of the figures KEYS (default: all) is still waiting; {key: figure}."""
        def settled() -> dict[str, dict[str, Any]] | None:
            figs = {f["key"]: f for f in self.observe(ex_id)["figures"]}
            want = keys or tuple(figs)
            return figs if all(figs[k]["verdict"] != "waiting" for k in want) else None
        try:
            return wait_for(settled, timeout, 0.5, f"exercise {ex_id}'s figures")  # type: ignore[return-value]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.observe(ex_id)}") from None

    def figure_until(self, ex_id: str, key: str, check, timeout: float = 30) -> dict[str, Any]:
        """Poll until figure KEY's value satisfies CHECK (a later sample); the figure."""
        def met() -> dict[str, Any] | None:
            fig = next(f for f in self.observe(ex_id)["figures"] if f["key"] == key)
            return fig if fig["value"] is not None and check(fig["value"]) else None
        return wait_for(met, timeout, 0.3, f"{ex_id}: {key}")  # type: ignore[return-value]


def as_predicted(figs: dict[str, dict[str, Any]], *keys: str) -> None:
    """Every figure KEYS (default: all but context) shows the ✓ of the tab: what happened is what it predicts."""
    for f in figs.values():  # what the attendee sees beside what the README promises (pytest -s shows it)
        print(f"figure {f['key']}: {f['verdict']}: {f['text']} | predicted: {f['predicted']}")
    for key in keys or [k for k, f in figs.items() if f["verdict"] != "info"]:
        f = figs[key]
        assert f["verdict"] == "ok", f"{key}: {f['verdict']}: {f['text']} (predicted {f['predicted']}; {f['reason']})"
