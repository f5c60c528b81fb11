"""The fixtures the tests share: a simulated fleet, a simulated forge, a scripted tenant and the emulated runner.

Only fixtures live here; constants and plain helpers are in :mod:`tests.support`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.clock import FakeClock
from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.forge import ForgeSim
from deploy.sim.server import Component, SimServer
from tests.actions_runner import ActionResult, run_action
from tests.support import CP_TOKEN, FORGE_TOKEN, SCALE, SHA, TAG, step_inputs
from tests.tenant_stub import TenantStub

pytest_plugins = ["tests.registry_fixture", "tests.prometheus_fixture"]


@pytest.fixture
def fleet() -> Iterator[Callable[..., tuple[FleetSim, SimServer]]]:
    """``fleet([TenantSpec, ...], *more_components, **knobs)`` starts a simulated CP with those tenants
    (``builds`` defaults to ``{TAG: SHA}``).

    More components (a :class:`~deploy.sim.forge.ForgeSim`) share the port; without a forge the
    superseded guard reads a 404 and carries on, as it does when a head is unreadable.
    """
    servers: list[SimServer] = []

    def start(tenants: list[TenantSpec], *more: Component, **knobs: Any) -> tuple[FleetSim, SimServer]:
        knobs.setdefault("time_scale", SCALE)
        knobs.setdefault("token", CP_TOKEN)
        knobs.setdefault("builds", {TAG: SHA})  # a rollback's CP: builds=builds_for(TAG, SHA) (latest → OLD_SHA)
        sim = FleetSim(tenants, **knobs)
        server = SimServer([sim, *more]).start()
        servers.append(server)
        return sim, server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=["github", "gitea"])
def forge_sim(request: pytest.FixtureRequest) -> Iterator[tuple[ForgeSim, SimServer]]:
    """A simulated GitHub, then Gitea, alone on a server, on a fake clock; :func:`tests.support.sim_client`
    makes its client. ``@pytest.mark.parametrize("forge_sim", ["github"], indirect=True)`` picks one."""
    forge = ForgeSim(kind=request.param, token=FORGE_TOKEN, clock=FakeClock())
    with SimServer([forge]) as server:
        yield forge, server


@pytest.fixture
def action(tmp_path: Path) -> Callable[..., ActionResult]:
    """``action(server, **inputs)`` runs entrypoint.py as the runner would, against ``server``."""
    runs = iter(range(1000))

    def run(server: SimServer | None, github: dict[str, str] | None = None, extra_env: dict[str, str] | None = None,
            **inputs: str) -> ActionResult:
        with_ = step_inputs(server, **inputs)
        github = dict(github or {})
        if server is not None:
            github.setdefault("api_url", f"{server.url}/api/v3")  # never the real GitHub from a test
        workdir = tmp_path / f"run{next(runs)}"
        workdir.mkdir()
        return run_action(with_, workdir, github, extra_env)

    return run


@pytest.fixture
def tenant_stub() -> Iterator[TenantStub]:
    """A scripted tenant on loopback (:mod:`tests.tenant_stub`): real HTTP where requests-mock can't reach."""
    with TenantStub() as stub:
        yield stub


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own proxy settings only: urllib lets a lower-case name win over the upper-case one."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
