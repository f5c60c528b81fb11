"""``fleet-rollout demo`` (``python -m deploy demo``): the README's "Why it exists", replayed on the simulator.

A five-tenant fleet with one dead box. The CP's worst case for a batch holding it is its
per-tenant timeout plus health settle (390 sim seconds); the demo runs the real pipeline and prints
the log it prints on a laptop or in GitLab (plain ``== Rollout ==`` groups), the outputs as
``name=value`` lines, then a short text summary: the dead tenant is quarantined, the others are
verified, ``latest`` moves to the build's multi-arch index and ``ok=true``. The Markdown job summary
is written only where the caller's ``GITHUB_STEP_SUMMARY`` says; ``--report PATH`` keeps the JSON report.

The outputs are the run's, with ``report`` saying where the report really is: ``PATH`` when kept,
empty when it went with the simulator (the run itself wrote it in a temporary workspace). Run as a
step of a job, the demo appends them to that job's ``GITHUB_OUTPUT`` too, as the action would: the
step asked for the demo, so its outputs are the demo's, and a workflow trying the tool can read
``steps.<id>.outputs.ok`` like the real action's. They are printed either way.

It runs the pipeline through :func:`deploy.action.run`, what the container runs; the command line
(:mod:`deploy.main`) dispatches here and is never imported from here.

``--bad-build`` replays the same fleet with a bad build: the CP's rows say every tenant is on
target, but ``/buildinfo`` keeps the previous build (``FleetSim.bad_builds``). The canary's proof
fails, so the rollout stops after the canary: one deploy call, ``ok=false``, exit 1, ``latest`` not moved.

``--bad-metrics`` ships a build that starts, reports its SHA and then answers 30 % of requests with
a 500 (``FleetSim.build_health``): every proof passes, and only metric analysis can tell. A real
Prometheus (Debian's ``prometheus``, started on loopback for the demo) scrapes the tenants' metrics;
the canary's analysis during its soak fails, so the rollout stops after the canary (exit 1,
``latest`` not moved). Without the ``prometheus`` binary it says so and exits 2.

The registry is Debian's ``docker-registry`` when it is installed, otherwise the simulator's own.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from deploy.action import run
from deploy.report import text_summary
from deploy.runner import format_output, parse_output_file
from deploy.sim import local_prometheus, local_registry
from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.metrics import Health
from deploy.sim.registry import SimRegistry
from deploy.sim.server import SimServer

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"
TAG = f"staging-{SHA[:7]}"
SCALE = 0.01  # 1 sim second = 10 ms
REPOSITORY = "acme/platform-tenant"
TOKEN = "sim-Q7vXk2mZ9pLw"  # no 6 characters of it occur in the log, so redaction hides nothing else


def demo_fleet(bad_build: bool = False, bad_metrics: bool = False) -> FleetSim:
    """The five tenants; with ``bad_build`` the build never really swaps (the CP says it did); with
    ``bad_metrics`` it swaps, and fails 30 % of its requests."""
    tenants = [
        TenantSpec("hongming", deploy_seconds=40, settle_seconds=60),
        TenantSpec("reno-stars", deploy_seconds=55, settle_seconds=120),
        TenantSpec("molecule-adk-demo", deploy_seconds=35, settle_seconds=30),
        TenantSpec("philbrew-erton", dead=True),
        TenantSpec("acme-prod", deploy_seconds=50, settle_seconds=90),
    ]
    return FleetSim(tenants, builds={TAG: SHA}, time_scale=SCALE, token=TOKEN, bad_builds={TAG} if bad_build else set(),
                    build_health={TAG: Health(error_ratio=0.3)} if bad_metrics else {})


ANALYSIS_QUERY = ('errors: sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[5s])) / '
                  'sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}"}[5s])) < 0.05')


@contextmanager
def demo_prometheus(workdir: Path, server: SimServer, fleet: FleetSim) -> Iterator[str]:
    """A real Prometheus scraping the demo's tenants every second, its first samples in; yields its URL."""
    targets = {tenant.slug: f"{server.url}/tenants/{tenant.slug}/metrics" for tenant in fleet.tenants}
    prometheus = local_prometheus.start_prometheus(workdir / "prometheus", targets)
    try:
        print(f"# metrics: Debian's prometheus at {prometheus.url}, scraping the tenants every second", flush=True)
        prometheus.wait_for_scrapes(2)
        yield prometheus.url
    finally:
        prometheus.stop()


@contextmanager
def demo_registry(workdir: Path, server: SimServer, sim_registry: SimRegistry) -> Iterator[str]:
    """A registry host holding an old ``latest`` and the new build; yields ``host:port``."""
    if shutil.which("docker-registry"):
        process, registry = local_registry.start_registry(workdir / "registry")
        kind = "Debian's docker-registry"
    else:
        process, registry = None, local_registry.RunningRegistry(server.url.removeprefix("http://"), workdir)
        kind = "the simulator's registry (install docker-registry to use the real one)"
    try:
        registry.seed_index(REPOSITORY, "latest", variant="previous-build")
        registry.seed_index(REPOSITORY, TAG, variant=SHA[:7])
        print(f"# registry: {kind} at {registry.host}; {REPOSITORY}:latest is the previous build", flush=True)
        yield registry.host
    finally:
        if process is not None:
            local_registry.stop_registry(process)


def demo_env(sim_url: str, workdir: Path, token: str, registry_host: str, bad_build: bool = False) -> dict[str, str]:
    """The inputs a workflow would pass, in sim time: CP worst case 300 + 90 sim s = 3.9 s.

    A bad build never reports the SHA, so the canary's proof waits out its whole ``verify-budget``:
    3 s (300 sim s) there, which is still well above the slowest good settle (120 sim s)."""
    env = {
        "GITHUB_WORKSPACE": str(workdir),  # the JSON report is written here
        "FLEET_CP_URL": sim_url,
        "FLEET_CP_TOKEN": token,
        "FLEET_SHA": SHA,
        "FLEET_CANARY": "hongming",
        "FLEET_SOAK_SECONDS": "0.5",
        "FLEET_BATCH_SIZE": "2",
        "FLEET_MAX_STRAGGLERS": "1",
        "FLEET_REQUEST_TIMEOUT": "1.2",  # a 120 s fast budget, scaled: too short for the dead tenant
        "FLEET_ROLLOUT_TIMEOUT": "6",  # above the CP's worst case, scaled
        "FLEET_CP_TENANT_TIMEOUT": "3",
        "FLEET_CP_SETTLE_SECONDS": "0.9",
        "FLEET_RETRY_DELAYS": "0.2,0.4",
        "FLEET_VERIFY_URL": f"{sim_url}/tenants/{{slug}}/buildinfo",
        "FLEET_VERIFY_BUDGET": "10",
        "FLEET_VERIFY_INTERVAL": "0.3",
        "FLEET_PROMOTE_IMAGES": f"{registry_host}/{REPOSITORY}",
        "FLEET_TIMEOUT": "120",
    }
    if bad_build:
        env["FLEET_VERIFY_BUDGET"] = "3"
    return env


def caller_env() -> dict[str, str]:
    """The caller's environment without what would point the demo elsewhere: their own FLEET_* and
    INPUT_* configuration, and, inside a job, the job's outputs file (the demo writes the outputs
    there itself, once it knows where the report is: see :func:`publish_outputs`) and
    workflow-command log format. ``GITHUB_STEP_SUMMARY`` stays: set, it receives the Markdown summary."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("FLEET_", "INPUT_")) and name not in ("GITHUB_OUTPUT", "GITHUB_ACTIONS")}


def keep_report(written: Path, report: str | None) -> str:
    """Copy the run's report to ``report``; returns where it is kept ('' when not asked, or on failure)."""
    if not report:
        return ""
    try:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, report)
    except OSError as exc:
        print(f"fleet-rollout demo: could not keep the JSON report at {report}: {exc}", file=sys.stderr)
        return ""
    return report


def publish_outputs(outputs: dict[str, str], job_output: str | None) -> bool:
    """Print the outputs as ``name=value`` lines, and append them to the caller's ``GITHUB_OUTPUT``
    when it is set; ``False`` when that file could not be written (said on stderr)."""
    for name, value in outputs.items():
        print(f"{name}={value}")
    if not job_output:
        return True
    try:
        with open(job_output, "a", encoding="utf-8") as out:
            out.write("".join(format_output(name, value) for name, value in outputs.items()))
    except OSError as exc:
        print(f"fleet-rollout demo: could not write the outputs to GITHUB_OUTPUT ({job_output}): {exc}",
              file=sys.stderr)
        return False
    print(f"# the outputs are also written to GITHUB_OUTPUT ({job_output})")
    return True


def main(report: str | None = None, bad_build: bool = False, bad_metrics: bool = False) -> int:
    """Run the demo; ``report``: where to keep the JSON report (it is otherwise deleted with the sim);
    ``bad_build``: ship a build that never really swaps, which the canary's proof stops;
    ``bad_metrics``: one that fails 30 % of requests, which the canary's metric analysis stops.
    Exit code: the run's; 1 as well when the report or the outputs could not be written where asked."""
    if bad_metrics and not shutil.which("prometheus"):
        print("fleet-rollout demo: --bad-metrics needs a real Prometheus: install Debian's prometheus "
              "(apt-get install --no-install-recommends prometheus)", file=sys.stderr)
        return 2
    fleet, sim_registry = demo_fleet(bad_build, bad_metrics), SimRegistry()
    with ExitStack() as stack:
        server = stack.enter_context(SimServer([fleet, sim_registry]))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-demo-")))
        print(f"# simulator: {server.url} — {len(fleet.tenants)} tenants, philbrew-erton is dead", flush=True)
        if bad_build:
            print(f"# the build is bad: the CP will say {TAG} is on target, but /buildinfo keeps the previous "
                  "build, so the canary's proof stops the rollout", flush=True)
        if bad_metrics:
            print(f"# the build is bad: it reports {SHA[:12]} everywhere, then answers 30% of requests with a 500; "
                  "only metric analysis can tell, during the canary's soak", flush=True)
        registry_host = stack.enter_context(demo_registry(workdir, server, sim_registry))
        outputs_file = workdir / "outputs"  # the run's own GITHUB_OUTPUT: read back, then published
        env = {**caller_env(), **demo_env(server.url, workdir, fleet.token, registry_host, bad_build),
               "GITHUB_OUTPUT": str(outputs_file)}
        if bad_metrics:  # a rate() needs a few scrapes in its window: a soak of 6 s, evaluated every second
            analysis_url = stack.enter_context(demo_prometheus(workdir, server, fleet))
            env.update(FLEET_ANALYSIS_URL=analysis_url, FLEET_ANALYSIS_QUERY=ANALYSIS_QUERY,
                       FLEET_ANALYSIS_INTERVAL="1", FLEET_SOAK_SECONDS="6")
        print(flush=True)
        code = run(env)
        written = workdir / "fleet-rollout-report.json"
        kept = keep_report(written, report)
        outputs = parse_output_file(outputs_file.read_text(encoding="utf-8") if outputs_file.exists() else "")
        outputs["report"] = kept
        published = publish_outputs(outputs, os.environ.get("GITHUB_OUTPUT"))
        print(f"\n# summary (exit code {code})\n")
        print(text_summary(json.loads(written.read_text(encoding="utf-8"))), flush=True)
        if kept:
            print(f"# the JSON report is kept at {kept}")
        elif not report:
            print("# the JSON report goes with the simulator; keep it with: fleet-rollout demo --report PATH")
    return code or (0 if published and kept == (report or "") else 1)


if __name__ == "__main__":
    sys.exit(main())
