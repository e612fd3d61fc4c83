"""`build_config`: defaults ← environment ← flags, and options that do not apply to a model are errors."""

from __future__ import annotations

import pytest

from webmodels.config import MASTER_MODELS, MODELS, ConfigError, build_config, split_bind


def flags(**kw: object) -> dict[str, object]:
    return kw


def test_defaults() -> None:
    cfg = build_config("threadpool", {}, environ={})
    assert (cfg.bind, cfg.threads, cfg.queue, cfg.keepalive, cfg.faults) == ("127.0.0.1:8000", 32, 32, 5.0, False)
    assert cfg.explicit == frozenset()
    pre = build_config("prefork", {}, environ={})
    assert (pre.workers, pre.timeout, pre.keepalive) == (4, 30.0, 0.0)  # prefork closes after each response
    assert build_config("eventloop", {}, environ={}).loop == "uvloop"


def test_environment_variables() -> None:
    env = {"WEBMODELS_BIND": "0.0.0.0:9000", "WEBMODELS_WORKERS": "3", "WEBMODELS_FAULTS": "1",
           "WEBMODELS_TIMEOUT": "2.5", "WEBMODELS_MAX_REQUESTS": "100", "WEBMODELS_GRACEFUL_TIMEOUT": "7"}
    cfg = build_config("prefork", {}, environ=env)
    assert (cfg.bind, cfg.workers, cfg.faults, cfg.timeout, cfg.max_requests, cfg.graceful_timeout) == \
        ("0.0.0.0:9000", 3, True, 2.5, 100, 7.0)
    assert cfg.explicit == {"bind", "workers", "faults", "timeout", "max_requests", "graceful_timeout"}
    assert (cfg.host, cfg.port) == ("0.0.0.0", 9000)


def test_empty_environment_variable_means_unset() -> None:
    assert build_config("prefork", {}, environ={"WEBMODELS_WORKERS": ""}).workers == 4


def test_flags_override_environment() -> None:
    env = {"WEBMODELS_THREADS": "8", "WEBMODELS_BIND": "127.0.0.1:1"}
    cfg = build_config("threadpool", flags(threads="16"), environ=env)
    assert cfg.threads == 16 and cfg.bind == "127.0.0.1:1"
    assert cfg.queue == 16  # the queue follows the effective thread count


def test_unset_flags_are_none_and_do_not_override() -> None:
    cfg = build_config("threadpool", flags(threads=None, faults=None), environ={"WEBMODELS_THREADS": "8"})
    assert cfg.threads == 8 and cfg.faults is False


@pytest.mark.parametrize("model, flag, value, name", [
    ("eventloop", "workers", "8", "--workers"),
    ("threadpool", "workers", "2", "--workers"),
    ("prefork", "threads", "8", "--threads"),
    ("eventloop", "threads", "8", "--threads"),
    ("threadpool", "loop", "asyncio", "--loop"),
    ("prefork", "watchdog", "1", "--watchdog"),
    ("eventloop", "timeout", "5", "--timeout"),
    ("threadpool", "max_requests", "5", "--max-requests"),
])
def test_flag_for_the_wrong_model_is_an_error_naming_it(model: str, flag: str, value: str, name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_config(model, {flag: value}, environ={})
    assert name in str(exc.value) and model in str(exc.value)


def test_env_for_the_wrong_model_is_an_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="WEBMODELS_WORKERS"):
        build_config("eventloop", {}, environ={"WEBMODELS_WORKERS": "4"})


@pytest.mark.parametrize("model, flag, value", [
    ("prefork", "workers", "0"), ("prefork", "workers", "65"), ("prefork", "workers", "two"),
    ("prefork", "workers", "1.5"), ("threadpool", "threads", "-1"), ("prefork", "timeout", "abc"),
    ("prefork", "timeout", "-1"), ("eventloop", "loop", "trio"), ("threadpool", "keepalive", "x"),
    ("threadpool", "header_timeout", "0"), ("threadpool", "bind", "localhost"),
    ("threadpool", "bind", "127.0.0.1:70000"), ("threadpool", "bind", ":8000"),
    ("threadpool", "bind", "127.0.0.1:http"),
])
def test_bad_values(model: str, flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_config(model, {flag: value}, environ={})
    assert str(exc.value)


@pytest.mark.parametrize("raw, value", [("1", True), ("true", True), ("YES", True), ("on", True),
                                        ("0", False), ("false", False), ("no", False), ("off", False)])
def test_boolean_environment_values(raw: str, value: bool) -> None:
    assert build_config("eventloop", {}, environ={"WEBMODELS_FAULTS": raw}).faults is value


def test_bad_boolean_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="WEBMODELS_FAULTS"):
        build_config("eventloop", {}, environ={"WEBMODELS_FAULTS": "maybe"})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="WEBMODELS_WORKERS"):
        build_config("prefork", {}, environ={"WEBMODELS_WORKERS": "many"})


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        build_config("forkbomb", {}, environ={})


def test_effective_lists_only_what_applies() -> None:
    for model in MODELS:
        cfg = build_config(model, {}, environ={})
        eff = cfg.effective()
        assert ("workers" in eff) == ("engine" in eff) == (model in MASTER_MODELS)
        assert ("threads" in eff) == (cfg.engine == "threads")
        assert ("loop" in eff) == (cfg.engine == "loop")
        assert ("watchdog" in eff) == (model == "eventloop")
        assert {"bind", "graceful_timeout", "keepalive", "faults"} <= set(eff)
        assert "restarts" not in eff  # set by the supervisor, not a server setting


# -- engines and the hybrid names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model, engine, workers, threads, keepalive", [
    ("threadpool", "threads", None, 32, 5.0), ("eventloop", "loop", None, None, 5.0),
    ("prefork", "sync", 4, None, 0.0), ("hybrid-threads", "threads", 2, 16, 5.0), ("hybrid-loop", "loop", 2, None, 5.0),
])
def test_each_name_runs_its_engine_with_its_defaults(model: str, engine: str, workers: int | None,
                                                     threads: int | None, keepalive: float) -> None:
    cfg = build_config(model, {}, environ={})
    assert cfg.engine == engine and cfg.keepalive == keepalive
    if workers is not None:
        assert cfg.workers == workers
    if threads is not None:
        assert cfg.threads == threads and cfg.queue == threads


@pytest.mark.parametrize("engine, keepalive", [("sync", 0.0), ("threads", 5.0), ("loop", 5.0)])
def test_prefork_engine_flag_and_its_keepalive_default(engine: str, keepalive: float) -> None:
    cfg = build_config("prefork", flags(engine=engine), environ={})
    assert cfg.engine == engine and cfg.keepalive == keepalive
    assert build_config("prefork", {}, environ={"WEBMODELS_ENGINE": engine}).engine == engine


def test_hybrid_flags_still_override_their_defaults() -> None:
    cfg = build_config("hybrid-threads", flags(workers="3", threads="4", timeout="2", max_requests="100"), environ={})
    assert (cfg.workers, cfg.threads, cfg.queue, cfg.timeout, cfg.max_requests) == (3, 4, 4, 2.0, 100)
    assert build_config("hybrid-loop", flags(loop="asyncio", reuseport=True), environ={}).reuseport is True


@pytest.mark.parametrize("model, flag_name, value, says", [
    ("prefork", "threads", "8", "--threads does not apply to the prefork model with --engine sync (it applies "
                                "to threadpool, hybrid-threads, or prefork with --engine threads)"),
    ("hybrid-loop", "queue", "8", "it applies to threadpool, greenthreads, hybrid-threads, or prefork with --engine threads|gevent"),
    ("prefork", "loop", "asyncio", "it applies to eventloop, hybrid-loop, or prefork with --engine loop"),
    ("hybrid-threads", "loop", "asyncio", "--loop does not apply to the hybrid-threads model (engine threads)"),
    ("hybrid-loop", "watchdog", "1", "--watchdog does not apply to the hybrid-loop model (engine loop) (it "
                                     "applies to eventloop)"),
    ("hybrid-threads", "engine", "loop", "its engine is threads"),
    ("threadpool", "engine", "loop", "--engine does not apply to the threadpool model"),
    ("eventloop", "reuseport", True, "it applies to prefork, hybrid-threads, hybrid-loop"),
])
def test_a_flag_that_does_not_apply_says_where_it_does(model: str, flag_name: str, value: object,
                                                       says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_config(model, {flag_name: value}, environ={})
    assert says in str(exc.value)


def test_engine_choice_is_checked() -> None:
    with pytest.raises(ConfigError, match="sync, threads, loop"):
        build_config("prefork", flags(engine="fibers"), environ={})


def test_restarts_come_from_the_supervisors_environment_variable() -> None:
    assert build_config("threadpool", {}, environ={"WEBMODELS_RESTARTS": "3"}).restarts == 3
    assert build_config("hybrid-loop", {}, environ={}).restarts is None


@pytest.mark.parametrize("bind, host, port", [("127.0.0.1:0", "127.0.0.1", 0), ("[::1]:8080", "::1", 8080),
                                              ("0.0.0.0:65535", "0.0.0.0", 65535)])
def test_split_bind(bind: str, host: str, port: int) -> None:
    assert split_bind(bind) == (host, port)


def test_cli_rejects_a_flag_for_the_wrong_model_before_binding() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path
    # the CLI of the tree under test (not whatever is installed), and no __pycache__ written into src/ by it
    root = Path(__file__).resolve().parent.parent
    pycs = lambda: set((root / "src").rglob("*.pyc"))  # noqa: E731
    before = pycs()
    proc = subprocess.run([sys.executable, "-B", "-m", "webmodels.cli", "serve", "eventloop", "--workers", "2",
                           "--bind", "127.0.0.1:0"], capture_output=True, text=True, timeout=30, cwd=root,
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
                               "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])})
    assert pycs() == before
    assert proc.returncode == 2  # exitcodes.EXIT_CONFIG
    assert "--workers" in proc.stderr and "eventloop" in proc.stderr
    assert "listening" not in proc.stderr + proc.stdout
