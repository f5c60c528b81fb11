"""Progressive proof (verify-each-batch): how far a bad build gets, and what the proof costs a good one.

The simulator (CP + tenants' ``/buildinfo``) runs in a process of its own, fresh for every run; the
client runs ``deploy.main.run`` in a fresh process too (interpreter start and imports left out of
its figures). Two measurements:

1. **Blast radius on a bad build.** 100 tenants, batch size 10, ``FleetSim(bad_builds={TAG})``:
   every CP row says the tenant is on target, ``/buildinfo`` keeps the old SHA. ``verify-url``
   set, ``verify-budget`` 1 s, ``verify-interval`` 0.2 s, soak 0, stages rollout + verify (no
   promote). Runs with and without a canary (the first tenant), with ``verify-each-batch: true``
   and, for contrast, ``false``. Printed per run: the deploy calls the CP took and the tenants
   they redeployed (counted by the simulator: the slugs of ``fleet.deploy_calls()``, served at
   ``/_bench/calls``), the client's own count (its ``shipped`` output), the exit code,
   ``aborted-at`` and the wall time.
   Targets (``true``): the canary alone with a canary, one batch (10) without.
2. **Cost on a healthy fleet.** 1000 tenants, batch size 25, canary on, soak 0, deploys instant
   (``time_scale=0``, settle 0: every tenant reports the SHA when its call returns), ``verify-url``
   set (interval 1 s, budget 600 s). Promote is off (stages rollout + verify): promote would add the
   same fixed cost to both modes, so leaving it out makes the comparison stricter. Wall time and
   client CPU of the whole run, ``verify-each-batch: true`` vs ``false``, median of 3 runs each
   (interleaved), and the relative difference. Target: under 5% more wall time with ``true``.
   Measured twice: with instant deploys (the run is then almost all ``/buildinfo`` reads, and the
   proof's fixed cost, about 1 ms per call, is a visible share), and with a CP that takes 0.25 s
   per deploy call (still far faster than a real one).

    python bench/proof_bench.py [--repeat 3] [--tenants 1000] [--batch-size 25] [--call-seconds 0,0.25]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simbench import SHA, TAG, Calls, run_client  # noqa: E402

from deploy.sim.fleet import FleetSim, healthy_fleet  # noqa: E402
from deploy.sim.server import SimServer  # noqa: E402

TOKEN = "bench-token-5d2f8b"


def serve(tenants: int, bad: bool, call_seconds: float,
          url_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    specs = healthy_fleet(tenants)  # every deploy takes 5 sim seconds: scaled to call_seconds of real time
    fleet = FleetSim(specs, builds={TAG: SHA}, token=TOKEN, time_scale=call_seconds / specs[0].deploy_seconds,
                     bad_builds={TAG} if bad else set())
    with SimServer([Calls(fleet), fleet], record=False) as server:
        url_queue.put(server.url)
        time.sleep(24 * 3600)


def client_env(url: str, workdir: Path, *, tenants: int, batch_size: int, canary: bool, each_batch: bool,
               budget: float, interval: float) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA, "FLEET_STAGES": "rollout,verify",
        "FLEET_SOAK_SECONDS": "0", "FLEET_BATCH_SIZE": str(batch_size), "FLEET_MAX_STRAGGLERS": "0",
        "FLEET_VERIFY_URL": f"{url}/tenants/{{slug}}/buildinfo", "FLEET_VERIFY_INTERVAL": f"{interval:g}",
        "FLEET_VERIFY_BUDGET": f"{budget:g}", "FLEET_VERIFY_EACH_BATCH": "true" if each_batch else "false",
        "FLEET_TIMEOUT": "7200",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
    }
    if canary:
        env["FLEET_CANARY"] = f"tenant-{1:0{len(str(tenants))}d}"
    return env


def run_once(*, tenants: int, bad: bool, call_seconds: float = 0.0, **knobs: Any) -> dict[str, Any]:
    """One client run against a fresh simulator: its figures, outputs and the CP's deploy calls."""
    return run_client(serve, (tenants, bad, call_seconds),
                      lambda url, workdir: client_env(url, workdir, tenants=tenants, **knobs),
                      {"calls": "/_bench/calls"})


def blast_radius(tenants: int, batch_size: int) -> None:
    print(f"1. blast radius on a bad build: {tenants} tenants, batch size {batch_size}, CP rows all on target, "
          f"/buildinfo keeps the old SHA; verify-budget 1 s, interval 0.2 s, soak 0, no promote")
    header = (f"{'verify-each-batch':>17} {'canary':>6} {'deploy calls':>12} {'tenants redeployed':>18} "
              f"{'shipped output':>14} {'exit':>4} {'aborted-at':>10} {'wall s':>7}  target")
    print(header)
    print("-" * len(header))
    reasons = []
    for each_batch in (True, False):
        for canary in (True, False):
            f = run_once(tenants=tenants, bad=True, batch_size=batch_size, canary=canary, each_batch=each_batch,
                         budget=1.0, interval=0.2)
            redeployed = sum(len(slugs) for slugs in f["calls"])
            if each_batch:
                want = 1 if canary else batch_size
                target = f"{want} ({'met' if redeployed <= want and f['code'] != 0 else 'MISSED'})"
            else:
                target = "- (contrast: whole fleet)"
            aborted_at = f["outputs"].get("aborted-at", "") or "-"
            shipped = len(json.loads(f["outputs"].get("shipped") or "[]"))
            print(f"{str(each_batch).lower():>17} {'yes' if canary else 'no':>6} {len(f['calls']):>12} "
                  f"{redeployed:>18} {shipped:>14} {f['code']:>4} {aborted_at:>10} {f['wall']:>7.2f}  {target}")
            reasons.append((each_batch, canary, f["report"].get("reason", "")))
    for each_batch, canary, reason in reasons:
        cut = reason if len(reason) <= 200 else reason[:197] + "..."
        print(f"  reason (each-batch {str(each_batch).lower()}, {'canary' if canary else 'no canary'}): {cut}")


def healthy_cost(tenants: int, batch_size: int, repeat: int, call_seconds: float) -> None:
    print()
    calls = f"each deploy call takes {call_seconds:g} s" if call_seconds else "deploys instant"
    print(f"2. cost on a healthy fleet: {tenants} tenants, batch size {batch_size}, canary on, soak 0, {calls}, "
          f"every tenant reports the SHA when its call returns; verify interval 1 s, budget 600 s; "
          f"stages rollout,verify (promote off); median of {repeat} runs each, interleaved")
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for _ in range(repeat):
        for each_batch in (True, False):
            f = run_once(tenants=tenants, bad=False, call_seconds=call_seconds, batch_size=batch_size, canary=True,
                         each_batch=each_batch, budget=600.0, interval=1.0)
            if f["code"] != 0:
                raise SystemExit(f"healthy run failed (each-batch {each_batch}): {f['report'].get('reason')}")
            runs[each_batch].append(f)
    header = (f"{'verify-each-batch':>17} {'deploy calls':>12} {'verified':>8} {'wall s (runs)':>24} "
              f"{'median wall s':>13} {'median CPU s':>12}")
    print(header)
    print("-" * len(header))
    medians = {}
    for each_batch in (True, False):
        group = runs[each_batch]
        wall = statistics.median(f["wall"] for f in group)
        cpu = statistics.median(f["cpu"] for f in group)
        medians[each_batch] = (wall, cpu)
        walls = ", ".join(f"{f['wall']:.2f}" for f in group)
        verified = group[0]["outputs"].get("verified", "?")
        print(f"{str(each_batch).lower():>17} {len(group[0]['calls']):>12} {verified:>8} "
              f"{walls:>24} {wall:>13.2f} {cpu:>12.2f}")
    print("where the wall time goes (medians, from each run's report; ms):")
    print(f"{'verify-each-batch':>17} {'deploy calls':>12} {'proofs':>7} {'verify stage':>12} {'rest':>6}  "
          f"{'proof / call':>12}")
    for each_batch in (True, False):
        parts = [breakdown(f) for f in runs[each_batch]]
        calls, proofs, verify, rest = (statistics.median(p[i] for p in parts) * 1000 for i in range(4))
        per_proof = f"{proofs / len(runs[each_batch][0]['calls']):.1f}" if each_batch else "-"
        print(f"{str(each_batch).lower():>17} {calls:>12.1f} {proofs:>7.1f} {verify:>12.1f} {rest:>6.1f}  "
              f"{per_proof:>12}")
    (wall_on, cpu_on), (wall_off, cpu_off) = medians[True], medians[False]
    wall_delta = (wall_on / wall_off - 1) * 100
    print(f"wall time, true vs false: {wall_delta:+.1f}% ({wall_on - wall_off:+.2f} s)   "
          f"(target under +5%: {'met' if wall_delta < 5 else 'MISSED'})")
    print(f"client CPU, true vs false: {(cpu_on / cpu_off - 1) * 100:+.1f}% ({cpu_on - cpu_off:+.2f} s)")


def breakdown(f: dict[str, Any]) -> tuple[float, float, float, float]:
    """Seconds in the deploy calls, in the per-call proofs, in the verify stage, and the rest of the run."""
    rollout, verify = f["report"].get("rollout") or {}, f["report"].get("verify") or {}
    calls = sum(call["seconds"] for call in rollout.get("calls", []))
    proofs = sum(span["seconds"] for span in rollout.get("proofs") or [] if span["label"].startswith("proof"))
    stage = verify.get("seconds", 0.0)
    return calls, proofs, stage, f["wall"] - calls - proofs - stage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000, help="fleet size of the healthy-fleet cost run")
    parser.add_argument("--batch-size", type=int, default=25, help="batch size of the healthy-fleet cost run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("blast", "cost"), default=None)
    parser.add_argument("--call-seconds", default="0,0.25",
                        help="how long the CP takes per deploy call in the cost runs (a real CP takes minutes)")
    args = parser.parse_args()
    if args.only != "cost":
        blast_radius(100, 10)
    if args.only != "blast":
        for call_seconds in (float(value) for value in args.call_seconds.split(",")):
            healthy_cost(args.tenants, args.batch_size, args.repeat, call_seconds)


if __name__ == "__main__":
    main()
