"""Waves: a 10,000-tenant fleet with a fixed batch-size against a growth list.

The simulator (CP + tenants) runs in a process of its own, every deploy call taking 0.2 s of real
time (a real CP takes minutes: what matters is the number of calls); the client (a process of its
own) runs rollout + verify with per-call proof (``verify-each-batch``, a ``verify-url``), a
canary and no soak. Printed per ``batch-size``:

- **healthy**: deploy calls, their sizes, the client's wall time and CPU, ``verified``, and the
  plan's worst case in real time at 390 s a call (``cp-tenant-timeout + cp-settle-seconds``
  defaults) — the number a job's time limit is compared with;
- **bad build** (``FleetSim.bad_builds``: every CP row says on target, ``/buildinfo`` keeps the old
  SHA), with and without a canary: the tenants the CP was asked to deploy before the run stopped.

Targets: at most 12 calls for 10,000 tenants, and a bad build reaching no more tenants than with
fixed batches of 25. A client run that exits other than planned (0 healthy, 1 on the bad build)
stops the bench, exit 1, with its reason: its row would measure nothing.

    python bench/wave_bench.py [--tenants 10000] [--sizes "25;1,10,1%,10%,25%"]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simbench import SHA, TAG, Calls, expect_exit, run_client  # noqa: E402

from deploy.sim.fleet import FleetSim, healthy_fleet  # noqa: E402
from deploy.sim.server import SimServer  # noqa: E402
from deploy.waves import call_sizes, compressed, parse_batch_sizes  # noqa: E402

TOKEN = "bench-token-9b4c2e"
CALL_SECONDS = 0.2
REAL_WORST = 390.0  # the defaults: cp-tenant-timeout 300 + cp-settle-seconds 90


def serve(tenants: int, bad: bool, url_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    specs = healthy_fleet(tenants)
    fleet = FleetSim(specs, builds={TAG: SHA}, token=TOKEN, time_scale=CALL_SECONDS / specs[0].deploy_seconds,
                     bad_builds={TAG} if bad else set())
    with SimServer([Calls(fleet), fleet], record=False) as server:
        url_queue.put(server.url)
        time.sleep(24 * 3600)


def client_env(url: str, workdir: Path, *, tenants: int, batch_size: str, canary: bool) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA, "FLEET_STAGES": "rollout,verify",
        "FLEET_BATCH_SIZE": batch_size, "FLEET_MAX_STRAGGLERS": "0", "FLEET_SOAK_SECONDS": "0",
        "FLEET_CP_TENANT_TIMEOUT": "0.3", "FLEET_CP_SETTLE_SECONDS": "0.1", "FLEET_ROLLOUT_TIMEOUT": "2",
        "FLEET_REQUEST_TIMEOUT": "2", "FLEET_VERIFY_URL": f"{url}/tenants/{{slug}}/buildinfo",
        "FLEET_VERIFY_INTERVAL": "1", "FLEET_VERIFY_BUDGET": "60", "FLEET_TIMEOUT": "7200",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
    }
    if canary:
        # The simulator's own first slug: healthy_fleet pads the number to the fleet size's digits
        # (tenant-001 in 200 tenants), and a canary it lacks is exit 2 before any deploy.
        env["FLEET_CANARY"] = healthy_fleet(tenants)[0].slug
    return env


def run_once(tenants: int, batch_size: str, bad: bool, canary: bool) -> dict[str, Any]:
    """One client run against a fresh simulator; the bench stops unless it exits as planned: 0 on
    the healthy fleet, 1 on the bad build (the proof halts the rollout)."""
    figures = run_client(serve, (tenants, bad),
                         lambda url, workdir: client_env(url, workdir, tenants=tenants, batch_size=batch_size,
                                                         canary=canary),
                         {"calls": "/_bench/calls"})
    what = f"batch-size {batch_size}, {'bad build' if bad else 'healthy'}, canary {'on' if canary else 'off'}"
    return expect_exit(figures, 1 if bad else 0, what)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--sizes", default="25;1,10,1%,10%,25%", help="batch-size values, separated by ';'")
    args = parser.parse_args()
    print(f"{args.tenants} tenants, canary on, deploy calls of {CALL_SECONDS:g} s, per-call proof, soak 0; "
          f"worst case at {REAL_WORST:g} s a call (the CP defaults)")
    header = (f"{'batch-size':>20} {'calls':>5} {'wall s':>7} {'CPU s':>6} {'verified':>8} {'worst case h':>12}  "
              f"call sizes after the canary")
    print(header)
    print("-" * len(header))
    for batch_size in args.sizes.split(";"):
        f = run_once(args.tenants, batch_size, bad=False, canary=True)
        planned = call_sizes(parse_batch_sizes(batch_size, 10_000), args.tenants, args.tenants - 1)
        calls = len(f["calls"])
        print(f"{batch_size:>20} {calls:>5} {f['wall']:>7.1f} {f['cpu']:>6.2f} {f['outputs'].get('verified', '?'):>8} "
              f"{calls * REAL_WORST / 3600:>12.1f}  {compressed(planned)}"
              f"{'' if calls <= 12 else '  (over 12 calls)'}")
    print()
    print("a build that is bad from the start (CP rows on target, /buildinfo keeps the old SHA):")
    header = f"{'batch-size':>20} {'canary':>6} {'tenants hit':>11} {'exit':>4} {'aborted-at':>11}"
    print(header)
    print("-" * len(header))
    for batch_size in args.sizes.split(";"):
        for canary in (True, False):
            f = run_once(args.tenants, batch_size, bad=True, canary=canary)
            hit = sum(len(slugs) for slugs in f["calls"])
            print(f"{batch_size:>20} {'yes' if canary else 'no':>6} {hit:>11} {f['code']:>4} "
                  f"{f['outputs'].get('aborted-at', '') or '-':>11}")


if __name__ == "__main__":
    main()
