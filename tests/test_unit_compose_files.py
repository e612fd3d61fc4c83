"""The compose files, read without a Docker engine: every lab server has its service in each, and the settings
that cannot be tested end to end here (a bridge network's per-container sysctls) are where they must be."""

from __future__ import annotations

import re
from pathlib import Path

from webmodels.lab import SERVERS

ROOT = Path(__file__).resolve().parent.parent


def services(name: str) -> dict[str, str]:
    """Each service of compose file NAME and the text of its block (the files' own two-space layout)."""
    text = (ROOT / name).read_text()
    body = text.split("\nservices:\n", 1)[1]
    blocks = re.split(r"^  (?=[a-z][\w-]*:\s*$)", body, flags=re.M)
    return {b.split(":", 1)[0]: b for b in blocks if re.match(r"[a-z][\w-]*:\s*\n", b)}


def test_every_lab_server_has_its_service_in_each_compose_file() -> None:
    main, override, ci = (services(f) for f in ("docker-compose.yml", "docker-compose.override.yml",
                                                "docker-compose.ci.yml"))
    for name, s in SERVERS.items():
        assert f"env_file: {s.env_file}" in main[name] and f"0.0.0.0:{s.port}" in main[name], name
        assert f'"127.0.0.1:{s.port}:{s.port}"' in override[name], name
        assert f"127.0.0.1:{s.port}" in ci[name], name


def test_master_models_migrate_a_closing_listeners_queue_on_a_bridge_network_only() -> None:
    # Per network namespace: each bridge-network container sets its own; under CI's host network a container may
    # not (it would be the host's setting), so the CI file must not ask for it.
    override, ci = services("docker-compose.override.yml"), services("docker-compose.ci.yml")
    for name, s in SERVERS.items():
        has = re.search(r'net\.ipv4\.tcp_migrate_req: "1"', override[name]) is not None
        assert has == s.master, name
        assert "sysctls" not in ci.get(name, ""), name
