"""Constants and plain helpers the tests share; the fixtures are in ``conftest.py``.

A plain module, imported as ``tests.support``: pytest loads ``conftest.py`` itself, and importing
it as a module as well would run it twice.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.forge import ForgeClient
from deploy.runner import Runner
from deploy.settings import ForgeSettings, HttpSettings
from deploy.sim.fleet import TenantSpec
from deploy.sim.forge import ForgeSim

if TYPE_CHECKING:
    from deploy.sim.server import SimServer
    from tests.actions_runner import ActionResult

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"  # the commit every test deploys
NEWER_SHA = "f" * 40  # where the branch moved on to: a newer run supersedes this one
TAG = f"staging-{SHA[:7]}"
CP_TOKEN = "cp-secret-token-5a1c9e"
JOB_TOKEN = "ghs_jobtoken_0123456789"  # the emulated github.token
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

# The forge client's unit tests: a repository on a GitHub or Gitea API that requests-mock or a
# :class:`~deploy.sim.forge.ForgeSim` answers for.
FORGE_TOKEN = "ghs_s3cr3t-forge-token"
REPO = "acme/app"
GITHUB = "https://api.github.test"
GITEA = "https://gitea.test/api/v1"


def healthy(*slugs: str) -> list[TenantSpec]:
    return [TenantSpec(slug, deploy_seconds=20) for slug in slugs]


def buildinfo(server: SimServer) -> str:
    """The ``verify-url`` of the simulated tenants behind ``server``."""
    return f"{server.url}/tenants/{{slug}}/buildinfo"


def step_inputs(server: SimServer | None, **inputs: str) -> dict[str, str]:
    """The step's ``with:``: :data:`FAST_INPUTS`, the CP behind ``server``, then ``inputs`` (``a_b`` is ``a-b``)."""
    with_ = dict(FAST_INPUTS)
    if server is not None:
        with_.update({"cp-url": server.url, "cp-token": CP_TOKEN})
    with_.update({k.replace("_", "-"): v for k, v in inputs.items()})
    return with_


def assert_no_secrets(result: ActionResult, *secrets: str) -> None:
    """Secrets appear nowhere a person could see: the log, stderr, outputs, summary, report."""
    visible = "\n".join([result.visible_log(), result.stderr, result.files_text])
    for secret in (CP_TOKEN, JOB_TOKEN, *secrets):
        assert secret not in visible


def forge_client(kind: str = "github", api_url: str = GITHUB, clock: FakeClock | None = None,
                 delays: tuple[float, ...] = (), timeout: float = 3600,
                 ) -> tuple[ForgeClient, Runner, FakeClock, Deadline]:
    """A client of :data:`REPO` with :data:`FORGE_TOKEN` on a fake clock, its runner logging to a string."""
    clock = clock or FakeClock()
    runner = Runner(stream=io.StringIO())
    deadline = Deadline.starting_now(clock, timeout)
    forge = ForgeSettings(kind=kind, api_url=api_url, repository=REPO, token=FORGE_TOKEN)
    client = ForgeClient(forge, HttpSettings(request_timeout=5, retry_delays=delays), Context(runner, deadline))
    return client, runner, clock, deadline


def sim_client(forge: ForgeSim, server: SimServer, delays: tuple[float, ...] = (),
               ) -> tuple[ForgeClient, Runner, FakeClock, Deadline]:
    """:func:`forge_client` for the simulated ``forge`` behind ``server`` (the ``forge_sim`` fixture), on its clock."""
    return forge_client(forge.kind, server.url + forge.prefix, forge.clock, delays)  # type: ignore[arg-type]


def log_of(runner: Runner) -> str:
    return runner.stream.getvalue()  # type: ignore[attr-defined]


def slugs(count: int) -> list[str]:
    """``t01`` … a fleet of ``count`` tenants named in order."""
    return [f"t{i:02d}" for i in range(1, count + 1)]


def seeded(registry: Any, repository: str) -> tuple[str, str]:
    """The previous build under latest, the new one under the target tag: (latest's digest, new digest)."""
    old = registry.seed_index(repository, "latest", variant="previous")
    new = registry.seed_index(repository, TAG, variant="new")
    return old.digest, new.digest


def deployed(sim: Any, tag: str = TAG) -> list[str]:
    """Every tenant the simulated CP was asked to deploy ``tag`` on, call after call."""
    return [slug for call in sim.deploy_calls() if call["target_tag"] == tag for slug in call["only_slugs"]]


def poll(read: Callable[[], str], until: str, wait: float = 10.0) -> list[str]:
    """Read until the answer is ``until`` (for at most ``wait`` real seconds); every answer read, in order."""
    seen, deadline = [read()], time.monotonic() + wait
    while seen[-1] != until and time.monotonic() < deadline:
        time.sleep(0.02)
        seen.append(read())
    assert seen[-1] == until, f"never reported {until}: {seen[-5:]}"
    return seen


def forge_for(kind: str = "github") -> ForgeSim:
    """acme/platform on a simulated forge, main at :data:`SHA`."""
    forge = ForgeSim(kind, repository="acme/platform", token=JOB_TOKEN)
    forge.branches["main"] = SHA
    return forge


def github_context(server: SimServer, kind: str = "github") -> dict[str, str]:
    return {"api_url": f"{server.url}{'/api/v1' if kind == 'gitea' else '/api/v3'}", "repository": "acme/platform"}
