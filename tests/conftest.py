"""Fixtures shared by the end-to-end tests: a simulated fleet and the emulated runner."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.server import Component, SimServer
from tests.actions_runner import JOB_TOKEN, ActionResult, run_action

pytest_plugins = ["tests.registry_fixture"]

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"
TAG = f"staging-{SHA[:7]}"
CP_TOKEN = "cp-secret-token-5a1c9e"
SCALE = 0.005  # sim seconds → real seconds: the CP's 390 s worst case takes 1.95 s

# Inputs in sim time: the dead tenant's 1.95 s is above request-timeout, within rollout-timeout.
FAST_INPUTS = {
    "request-timeout": "1",
    "rollout-timeout": "4",
    "cp-tenant-timeout": "1.5",
    "cp-settle-seconds": "0.45",
    "retry-delays": "0.05,0.1,0.2",
    "soak-seconds": "0",
    "verify-interval": "0.1",
    "verify-budget": "5",
    "timeout": "60",
}


@pytest.fixture
def fleet() -> Iterator[Callable[..., tuple[FleetSim, SimServer]]]:
    """``fleet([TenantSpec, ...], *more_components, **knobs)`` starts a simulated CP with those tenants.

    More components (a :class:`~deploy.sim.forge.ForgeSim`) share the port; without a forge the
    superseded guard reads a 404 and carries on, as it does when a head is unreadable.
    """
    servers: list[SimServer] = []

    def start(tenants: list[TenantSpec], *more: Component, **knobs: Any) -> tuple[FleetSim, SimServer]:
        knobs.setdefault("time_scale", SCALE)
        knobs.setdefault("token", CP_TOKEN)
        sim = FleetSim(tenants, builds={TAG: SHA}, **knobs)
        server = SimServer([sim, *more]).start()
        servers.append(server)
        return sim, server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def action(tmp_path: Path) -> Callable[..., ActionResult]:
    """``action(server, **inputs)`` runs entrypoint.py as the runner would, against ``server``."""
    runs = iter(range(1000))

    def run(server: SimServer | None, github: dict[str, str] | None = None, extra_env: dict[str, str] | None = None,
            **inputs: str) -> ActionResult:
        with_ = dict(FAST_INPUTS)
        github = dict(github or {})
        if server is not None:
            with_.update({"cp-url": server.url, "cp-token": CP_TOKEN})
            github.setdefault("api_url", f"{server.url}/api/v3")  # never the real GitHub from a test
        with_.update({k.replace("_", "-"): v for k, v in inputs.items()})
        workdir = tmp_path / f"run{next(runs)}"
        workdir.mkdir()
        return run_action(with_, workdir, github, extra_env)

    return run


def assert_no_secrets(result: ActionResult, *secrets: str) -> None:
    """Secrets appear nowhere a person could see: the log, stderr, outputs, summary, report."""
    visible = "\n".join([result.visible_log(), result.stderr, result.files_text])
    for secret in (CP_TOKEN, JOB_TOKEN, *secrets):
        assert secret not in visible
