"""Unknown outcomes at scale: a CP that loses 5% of its answers, and what the run says afterwards.

A 1,000-tenant fleet in batches of 25 behind a simulated CP (in a process of its own) that deploys
every call but drops the connection instead of answering for a share of them
(``FleetSim.answer_loss``, seeded: every run loses the same calls). The client (a process of its
own) runs rollout + verify with a ``verify-url``: a lost answer is waited out (the CP's worst case,
scaled to 0.25 s here) and settled by reading its tenants. Printed, per setting:

- deploy calls the CP took, and those it answered from an ``Idempotency-Key`` (replays);
- overlapping deploys of one tenant (the simulator's deploy log): must be 0;
- tenants whose final build differs from what the outputs say (``shipped`` on ``sha``,
  ``rolled-back`` on the previous build, ``not-started`` untouched): must be 0;
- the exit code, ``verified`` and the client's wall time.

Settings: ``retry-delays`` 0.05,0.1 (a lost answer's tenants are read, then the rest retried), and
``none`` (no retry: the tenants' word settles the call), each with ``on-failure: hold`` and with a
stale tenant in the last batch and ``on-failure: rollback``.

    python bench/unknown_bench.py [--tenants 1000] [--loss 0.05]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simbench import SHA, TAG, Calls, run_client  # noqa: E402

from deploy.sim.fleet import OLD_SHA, FleetSim, builds_for, healthy_fleet, overlapping  # noqa: E402
from deploy.sim.server import Request, Response, SimServer  # noqa: E402

TOKEN = "bench-token-3e8a1d"
CALL_SECONDS = 0.05


class Truth:
    """Serves what the simulator knows at /_bench/truth: deploys, replays, overlaps, every tenant's build."""

    def __init__(self, fleet: FleetSim) -> None:
        self.fleet = fleet

    def handle(self, request: Request) -> Response | None:
        if request.path != "/_bench/truth":
            return None
        fleet = self.fleet
        return Response.json({"deploys": len(fleet.deploy_calls()), "replays": len(fleet.replays),
                              "overlaps": len(overlapping(fleet.deploy_log)),
                              "builds": {tenant.slug: fleet.running_sha(tenant.slug) for tenant in fleet.tenants}})


def serve(tenants: int, loss: float, stale_last: bool, url_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    specs = healthy_fleet(tenants)
    if stale_last:
        specs[-1].stale = True
    fleet = FleetSim(specs, builds=builds_for(TAG, SHA), token=TOKEN, answer_loss=loss,
                     time_scale=CALL_SECONDS / specs[0].deploy_seconds)
    with SimServer([Calls(fleet), Truth(fleet), fleet], record=False) as server:
        url_queue.put(server.url)
        time.sleep(24 * 3600)


def client_env(url: str, workdir: Path, *, retries: str, on_failure: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA, "FLEET_STAGES": "rollout,verify",
        "FLEET_BATCH_SIZE": "25", "FLEET_MAX_STRAGGLERS": "0", "FLEET_SOAK_SECONDS": "0",
        "FLEET_CP_TENANT_TIMEOUT": "0.2", "FLEET_CP_SETTLE_SECONDS": "0.05", "FLEET_ROLLOUT_TIMEOUT": "1",
        "FLEET_REQUEST_TIMEOUT": "1", "FLEET_RETRY_DELAYS": retries, "FLEET_ON_FAILURE": on_failure,
        "FLEET_VERIFY_URL": f"{url}/tenants/{{slug}}/buildinfo", "FLEET_VERIFY_INTERVAL": "0.2",
        "FLEET_VERIFY_BUDGET": "1", "FLEET_TIMEOUT": "3600",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
    }


def mismatches(outputs: dict[str, str], builds: dict[str, str]) -> list[str]:
    """Tenants whose build is not the one the outputs put them on."""
    def listed(name: str) -> set[str]:
        return set(json.loads(outputs.get(name) or "[]"))

    shipped, back, untouched = listed("shipped"), listed("rolled-back"), listed("not-started")
    wrong = []
    for slug, running in builds.items():
        if slug in back:
            expected = OLD_SHA
        elif slug in shipped:
            expected = SHA
        elif slug in untouched:
            expected = OLD_SHA
        else:
            continue  # a straggler: the outputs claim nothing about its build
        if running != expected:
            wrong.append(slug)
    return wrong


def run_once(tenants: int, loss: float, retries: str, stale_last: bool) -> dict[str, Any]:
    on_failure = "rollback" if stale_last else "hold"
    return run_client(serve, (tenants, loss, stale_last),
                      lambda url, workdir: client_env(url, workdir, retries=retries, on_failure=on_failure),
                      {"truth": "/_bench/truth"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--loss", type=float, default=0.05)
    args = parser.parse_args()
    print(f"{args.tenants} tenants, batches of 25, the CP loses {args.loss:.0%} of its deploy answers "
          f"(deployed, then the connection drops); each call {CALL_SECONDS:g} s; worst case 0.25 s")
    header = (f"{'retry-delays':>12} {'on-failure':>10} {'exit':>4} {'deploy calls':>12} {'replays':>7} "
              f"{'answers lost':>12} {'overlaps':>8} {'wrong builds':>12} {'verified':>8} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    for stale_last in (False, True):
        for retries in ("0.05,0.1", "none"):
            f = run_once(args.tenants, args.loss, retries, stale_last)
            truth = f["truth"]
            lost = sum(1 for call in f["report"].get("rollout", {}).get("calls", []) if call["settled"])
            wrong = mismatches(f["outputs"], truth["builds"])
            print(f"{retries:>12} {'rollback' if stale_last else 'hold':>10} {f['code']:>4} {truth['deploys']:>12} "
                  f"{truth['replays']:>7} {lost:>12} {truth['overlaps']:>8} {len(wrong):>12} "
                  f"{f['outputs'].get('verified', '?'):>8} {f['wall']:>7.2f}")
            if wrong:
                print(f"  wrong: {wrong[:10]}")


if __name__ == "__main__":
    main()
