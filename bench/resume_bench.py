"""Resume (``skip-current``): re-run time after a failed 1000-tenant rollout where 990 tenants shipped.

Not a test: it prints a table. The simulator (CP + tenants' ``/buildinfo``) runs in a process of its
own, fresh for every run, set up in the state a failed first run leaves: 1000 tenants, 990 of them
already reporting the target SHA (``TenantSpec(running=SHA)``), and 10 that do not, spread through
the fleet (every 100th tenant: dead during the first run, now fixed, so healthy here). The client,
the re-run, runs ``deploy.action.run`` in a fresh process (interpreter start and imports left out of
its figures) with batch size 25, canary off, max-stragglers 0, soak 0, ``verify-url`` set
(``verify-each-batch: true``, the default; interval 1 s, budget 600 s), stages rollout + verify
(promote off: it would add the same fixed cost to both modes), once with ``skip-current: true``
and once with ``false``.

Printed per mode: the deploy calls the CP took and the tenants they redeployed (counted by the
simulator, served at ``/_bench/calls``), the ``/buildinfo`` GETs (counted by a component in front
of the fleet, at ``/_bench/buildinfo``: those before the first deploy call are the snapshot round,
the later ones the per-batch proofs and the verify stage), the snapshot's own time (from the report),
the wall time of ``deploy.action.run`` (median of ``--repeat`` runs, interleaved), the exit code and
the ``already-current`` output's length (items and bytes). Two row sets: deploys instant
(``time_scale=0``), and every deploy call taking 0.25 s (a tenant's 5 sim-second
``deploy_seconds`` scaled to 0.25 s; a real CP call takes minutes, so the saving is in calls).

Target (``true``): only the missing tenants reach the CP, 10 tenants in 1 call (batch 25), against
40 calls / 1000 tenants with ``false``; the snapshot costs one concurrent round (1000 reads, one
per tenant) in both modes.

    python bench/resume_bench.py [--repeat 3] [--tenants 1000] [--missing 10] [--batch-size 25]
                                 [--call-seconds 0,0.25]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simbench import SHA, TAG, Calls, run_client  # noqa: E402

from deploy.sim.fleet import FleetSim, healthy_fleet  # noqa: E402
from deploy.sim.server import Request, Response, SimServer  # noqa: E402

TOKEN = "bench-token-3a9c4e"


class BuildinfoCount:
    """Counts ``/tenants/.../buildinfo`` GETs before the fleet answers them (never answers them
    itself): those that arrive before the CP took its first deploy call (the snapshot round), and
    all of them. Serves the counts at /_bench/buildinfo."""

    def __init__(self, fleet: FleetSim) -> None:
        self.fleet = fleet
        self.lock = threading.Lock()
        self.before_first_call = 0
        self.total = 0

    def handle(self, request: Request) -> Response | None:
        if request.path == "/_bench/buildinfo":
            with self.lock:
                return Response.json({"before_first_call": self.before_first_call, "total": self.total})
        if request.method == "GET" and request.path.startswith("/tenants/") and request.path.endswith("/buildinfo"):
            early = not self.fleet.deploy_calls()
            with self.lock:
                self.total += 1
                self.before_first_call += early
        return None


def missing_slugs(tenants: int, missing: int) -> list[str]:
    """The tenants the first run did not ship, spread evenly through the fleet (the last of each stretch)."""
    slugs = [spec.slug for spec in healthy_fleet(tenants)]
    step = tenants // missing
    return [slugs[(i + 1) * step - 1] for i in range(missing)]


def serve(tenants: int, missing: int, call_seconds: float,
          url_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    specs = healthy_fleet(tenants)  # every deploy takes 5 sim seconds: scaled to call_seconds of real time
    left_out = set(missing_slugs(tenants, missing))
    for spec in specs:
        if spec.slug not in left_out:
            spec.running = SHA  # shipped by the failed first run
    fleet = FleetSim(specs, builds={TAG: SHA}, token=TOKEN, time_scale=call_seconds / specs[0].deploy_seconds)
    with SimServer([Calls(fleet), BuildinfoCount(fleet), fleet], record=False) as server:
        url_queue.put(server.url)
        time.sleep(24 * 3600)


def client_env(url: str, workdir: Path, *, batch_size: int, skip_current: bool) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA, "FLEET_STAGES": "rollout,verify",
        "FLEET_SOAK_SECONDS": "0", "FLEET_BATCH_SIZE": str(batch_size), "FLEET_MAX_STRAGGLERS": "0",
        "FLEET_CANARY": "",
        "FLEET_VERIFY_URL": f"{url}/tenants/{{slug}}/buildinfo", "FLEET_VERIFY_INTERVAL": "1",
        "FLEET_VERIFY_BUDGET": "600", "FLEET_VERIFY_EACH_BATCH": "true",
        "FLEET_SKIP_CURRENT": "true" if skip_current else "false", "FLEET_ON_FAILURE": "hold",
        "FLEET_TIMEOUT": "7200",
        # the simulated CP answers within 0.25 s: its declared worst case, which the plan is checked against
        "FLEET_CP_TENANT_TIMEOUT": "0.3", "FLEET_CP_SETTLE_SECONDS": "0.1", "FLEET_ROLLOUT_TIMEOUT": "2",
        "FLEET_REQUEST_TIMEOUT": "2",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
    }


def run_once(*, tenants: int, missing: int, call_seconds: float, batch_size: int,
             skip_current: bool) -> dict[str, Any]:
    """One re-run against a fresh simulator: its figures, outputs, report, the CP's calls and the reads."""
    return run_client(serve, (tenants, missing, call_seconds),
                      lambda url, workdir: client_env(url, workdir, batch_size=batch_size,
                                                      skip_current=skip_current),
                      {"calls": "/_bench/calls", "reads": "/_bench/buildinfo"})


def snapshot_seconds(f: dict[str, Any]) -> float | None:
    snapshot = f["report"].get("snapshot")
    return snapshot.get("seconds") if isinstance(snapshot, dict) else None


def row_set(tenants: int, missing: int, batch_size: int, repeat: int, call_seconds: float) -> None:
    calls = f"each deploy call takes {call_seconds:g} s" if call_seconds else "deploys instant (time_scale=0)"
    print(f"re-run: {tenants} tenants, {tenants - missing} already on the SHA, {missing} missing "
          f"(every {tenants // missing}th); batch size {batch_size}, canary off, {calls}; verify-url set "
          f"(verify-each-batch true, interval 1 s); stages rollout,verify; median of {repeat} runs, interleaved")
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for _ in range(repeat):
        for skip_current in (True, False):
            runs[skip_current].append(run_once(tenants=tenants, missing=missing, call_seconds=call_seconds,
                                               batch_size=batch_size, skip_current=skip_current))
    header = (f"{'skip-current':>12} {'deploy calls':>12} {'redeployed':>10} {'snapshot GETs':>13} "
              f"{'later GETs':>10} {'all GETs':>8} {'snapshot s':>10} {'wall s (runs)':>20} {'median wall s':>13} "
              f"{'exit':>4} {'already-current':>20}  target")
    print(header)
    print("-" * len(header))
    want_missing = set(missing_slugs(tenants, missing))
    medians = {}
    for skip_current in (True, False):
        group = runs[skip_current]
        f = group[0]
        redeployed = [slug for call in f["calls"] for slug in call]
        wall = statistics.median(g["wall"] for g in group)
        medians[skip_current] = wall
        walls = ", ".join(f"{g['wall']:.2f}" for g in group)
        snap = statistics.median(s for g in group if (s := snapshot_seconds(g)) is not None) \
            if any(snapshot_seconds(g) is not None for g in group) else None
        current = f["outputs"].get("already-current", "")
        try:
            items = len(json.loads(current or "[]"))
        except ValueError:
            items = -1
        codes = sorted({g["code"] for g in group})
        stable = all(len(g["calls"]) == len(f["calls"]) for g in group)
        if skip_current:
            want_calls = -(-missing // batch_size)
            met = (len(f["calls"]) == want_calls and set(redeployed) == want_missing
                   and len(redeployed) == missing and f["reads"]["before_first_call"] == tenants)
            verdict = "met" if met else "MISSED"
            target = f"{want_calls} call(s) of the {missing} missing, {tenants} snapshot reads ({verdict})"
        else:
            target = "- (contrast: whole fleet)"
        print(f"{str(skip_current).lower():>12} {len(f['calls']):>12} {len(redeployed):>10} "
              f"{f['reads']['before_first_call']:>13} {f['reads']['total'] - f['reads']['before_first_call']:>10} "
              f"{f['reads']['total']:>8} "
              f"{'-' if snap is None else f'{snap:.3f}':>10} {walls:>20} {wall:>13.2f} "
              f"{'/'.join(map(str, codes)):>4} {f'{items} items, {len(current)} B':>20}  {target}"
              + ("" if stable else "  (call counts differ between runs)"))
    saved = medians[False] - medians[True]
    print(f"wall time, true vs false: {medians[True]:.2f} s vs {medians[False]:.2f} s "
          f"({saved:.2f} s saved, {medians[True] / medians[False] * 100:.0f}% of the full re-run)")
    for skip_current in (True, False):
        reason = runs[skip_current][0]["report"].get("reason", "")
        if reason:
            print(f"  reason (skip-current {str(skip_current).lower()}): {reason[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--missing", type=int, default=10, help="tenants the failed first run did not ship")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--call-seconds", default="0,0.25",
                        help="how long the CP takes per deploy call (a real CP takes minutes)")
    args = parser.parse_args()
    for number, call_seconds in enumerate(float(value) for value in args.call_seconds.split(",")):
        if number:
            print()
        row_set(args.tenants, args.missing, args.batch_size, args.repeat, call_seconds)


if __name__ == "__main__":
    main()
