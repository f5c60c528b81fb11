"""How long verify takes as the fleet grows: rounds under one deadline, not a wait per tenant.

Each simulated fleet is deployed through the simulator's CP; tenant ``i`` of ``n`` then keeps
reporting the old SHA for ``S * i / (n - 1)`` seconds (settle times spread evenly over [0, S]),
like old containers draining. Verify runs with the real clock. For each fleet size it prints the
wall time, the rounds, ``S + interval`` (what concurrent rounds should cost) and the sum of the
settle times (what a poller that waits out each tenant in turn pays).

    python bench/verify_bench.py            # about half a minute on 2 cores
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.controlplane import TenantRow
from deploy.runner import Runner
from deploy.settings import HttpSettings, VerifySettings
from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.server import SimServer
from deploy.verify import VerifyResult, verify_tenants

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
SETTLE = 3.0  # S: the slowest tenant drains for this many real seconds
INTERVAL = 0.5
BUDGET = 30.0
RUNS = ((10, 32), (100, 32), (1000, 32), (1000, 64))


def fleet_specs(size: int) -> list[TenantSpec]:
    width = len(str(size))
    return [
        TenantSpec(f"tenant-{i:0{width}d}", deploy_seconds=0, settle_seconds=SETTLE * i / max(size - 1, 1))
        for i in range(size)
    ]


def deploy(server: SimServer, sim: FleetSim) -> None:
    slugs = [t.slug for t in sim.tenants]
    body = {
        "target_tag": "staging-bench", "confirm": True, "only_slugs": slugs, "dry_run": False,
        "max_stragglers": 0, "batch_size": len(slugs), "soak_seconds": 0,
    }
    headers = {"Authorization": f"Bearer {sim.token}"}
    response = requests.post(server.url + sim.redeploy_path, json=body, headers=headers, timeout=60)
    response.raise_for_status()


def measure(size: int, concurrency: int) -> tuple[VerifyResult, float]:
    sim = FleetSim(tenants=fleet_specs(size), builds={"staging-bench": SHA})
    with SimServer([sim]) as server:
        settings = VerifySettings(
            url_template=f"{server.url}/tenants/{{slug}}/buildinfo", field="git_sha",
            budget=BUDGET, interval=INTERVAL, concurrency=concurrency,
        )
        rows = [TenantRow(t.slug, healthz_ok=True) for t in sim.tenants]
        ctx = Context(Runner(stream=io.StringIO()), Deadline.starting_now(Clock(), 600.0))
        deploy(server, sim)
        began = time.monotonic()
        result = verify_tenants(settings, HttpSettings(request_timeout=10.0, retry_delays=()), SHA, rows, ctx)
        return result, time.monotonic() - began


def main() -> int:
    print(f"settle times spread over [0, {SETTLE:g}] s, interval {INTERVAL:g} s, budget {BUDGET:g} s, real clock")
    header = f"{'tenants':>7} {'conc':>4} {'wall s':>7} {'rounds':>6} {'S+interval':>10} {'sequential Σ':>12}  verified"
    print(header)
    print("-" * len(header))
    ok = True
    for size, concurrency in RUNS:
        result, wall = measure(size, concurrency)
        sequential = sum(t.settle_seconds for t in fleet_specs(size))
        verified = len(result.slugs("verified"))
        ok = ok and result.ok
        print(f"{size:>7} {concurrency:>4} {wall:>7.2f} {result.rounds:>6} {SETTLE + INTERVAL:>10.2f} "
              f"{sequential:>12.1f}  {verified}/{size}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
