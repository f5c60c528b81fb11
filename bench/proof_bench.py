"""Progressive proof: how far a bad build gets, and what the proof costs a good one.

The simulator (CP + tenants' ``/buildinfo``) runs in a process of its own; the client runs
``deploy.action.run`` in a fresh process too (interpreter start and imports left out of its
figures). Two measurements:

1. **Blast radius on a bad build**, a matrix. 100 tenants, batch size 10, each deploy call 0.05 s,
   ``max-stragglers`` 0, stages rollout + verify (no promote), ``verify-each-batch`` on, soak 1 s
   with a canary, bake (``batch-soak-seconds``) 1 s, ``verify-interval`` 0.2 s, ``verify-budget``
   1 s. Four bad builds, each as the simulator plays it:

   - *stale*: every CP row says on target, ``/buildinfo`` keeps the old SHA (``bad_builds``);
   - *crash on start*: every row says failed, ``/buildinfo`` keeps the old SHA (``refuses``);
   - *revert after proof*: each tenant reports the build when its call returns, then its old one
     again 0.2 s later (``reverts_after``);
   - *half-swapped*: after its deploy, every other ``/buildinfo`` answer is the old build
     (``alternates``);

   × with and without a canary (the first tenant) × a first run and a re-run on the same fleet
   right after it failed (the re-run finds a canary that may report the build in its snapshot).
   Printed per cell: the tenants the CP was asked to deploy by that run (counted by the simulator),
   the exit code and ``aborted-at``. Target in every cell: the canary alone with a canary, one
   batch (10) without. A contrast row: the stale build with ``verify-each-batch: false``.
   A **bad metrics** row: a build that reports its SHA everywhere but answers 30 % of requests with
   a 500 (``FleetSim.build_health``), with a real Prometheus (Debian's ``prometheus``) scraping the
   tenants and ``analysis-url`` set (soak and bake 6 s, ``analysis-interval`` 1 s, 5 s windows), and
   without analysis for contrast: every proof passes, so only the analysis stops it.
2. **Cost on a healthy fleet.** 1000 tenants, batch size 25, canary on, soak 0, deploys instant
   (``time_scale=0``, settle 0: every tenant reports the SHA when its call returns), ``verify-url``
   set (interval 1 s, budget 600 s). Promote is off (stages rollout + verify): promote would add the
   same fixed cost to both modes, so leaving it out makes the comparison stricter. Wall time and
   client CPU of the whole run, ``verify-each-batch: true`` vs ``false``, median of 3 runs each
   (interleaved), and the relative difference. Target: under 5% more wall time with ``true`` at a
   CP call of 0.25 s. Measured twice: with instant deploys (the run is then almost all
   ``/buildinfo`` reads, and the proof's fixed cost, about 1 ms per call, is a visible share), and
   with a CP that takes 0.25 s per deploy call (still far faster than a real one). Both modes run
   the final check before the run ends.

    python bench/proof_bench.py [--repeat 3] [--tenants 1000] [--batch-size 25] [--call-seconds 0,0.25]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simbench import SHA, TAG, Calls, one_client, run_client, run_clients, serving  # noqa: E402

from deploy.sim import local_prometheus  # noqa: E402
from deploy.sim.fleet import FleetSim, healthy_fleet  # noqa: E402
from deploy.sim.metrics import Health  # noqa: E402
from deploy.sim.server import SimServer  # noqa: E402

TOKEN = "bench-token-5d2f8b"
BAD_BUILDS = ("stale", "crash on start", "revert after proof", "half-swapped")
SOAK = 1.0  # seconds of the canary's soak and of each batch's bake in the blast-radius runs


def serve(tenants: int, bad: str, call_seconds: float,
          url_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A fleet whose every deploy takes 5 sim seconds, scaled to ``call_seconds`` of real time,
    shipping the bad build ``bad`` (one of :data:`BAD_BUILDS`) or, with ``bad`` empty, a good one."""
    specs = healthy_fleet(tenants)
    scale = call_seconds / specs[0].deploy_seconds
    for spec in specs:
        spec.refuses = {TAG} if bad == "crash on start" else set()
        spec.reverts_after = 0.2 / scale if bad == "revert after proof" else None
        spec.alternates = bad == "half-swapped"
    fleet = FleetSim(specs, builds={TAG: SHA}, token=TOKEN, time_scale=scale,
                     bad_builds={TAG} if bad == "stale" else set(),
                     build_health={TAG: Health(error_ratio=0.3)} if bad == "bad metrics" else {})
    with SimServer([Calls(fleet), fleet], record=False) as server:
        url_queue.put(server.url)
        time.sleep(24 * 3600)


def client_env(url: str, workdir: Path, *, tenants: int, batch_size: int, canary: bool, each_batch: bool,
               budget: float, interval: float, soak: float = 0.0) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA, "FLEET_STAGES": "rollout,verify",
        "FLEET_SOAK_SECONDS": f"{soak:g}", "FLEET_BATCH_SOAK_SECONDS": f"{soak:g}",
        "FLEET_BATCH_SIZE": str(batch_size), "FLEET_MAX_STRAGGLERS": "0",
        "FLEET_VERIFY_URL": f"{url}/tenants/{{slug}}/buildinfo", "FLEET_VERIFY_INTERVAL": f"{interval:g}",
        "FLEET_VERIFY_BUDGET": f"{budget:g}", "FLEET_VERIFY_EACH_BATCH": "true" if each_batch else "false",
        "FLEET_TIMEOUT": "7200",
        # the simulated CP answers within 0.25 s: its declared worst case, which the plan is checked against
        "FLEET_CP_TENANT_TIMEOUT": "0.3", "FLEET_CP_SETTLE_SECONDS": "0.1", "FLEET_ROLLOUT_TIMEOUT": "2",
        "FLEET_REQUEST_TIMEOUT": "2",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
    }
    if canary:
        env["FLEET_CANARY"] = healthy_fleet(tenants)[0].slug  # the simulator's own name, padded as it pads
    return env


def run_once(*, tenants: int, bad: str, call_seconds: float = 0.0, **knobs: Any) -> dict[str, Any]:
    """One client run against a fresh simulator: its figures, outputs and the CP's deploy calls."""
    return run_client(serve, (tenants, bad, call_seconds),
                      lambda url, workdir: client_env(url, workdir, tenants=tenants, **knobs),
                      {"calls": "/_bench/calls"})


def run_twice(*, tenants: int, bad: str, call_seconds: float, **knobs: Any) -> list[dict[str, Any]]:
    """A run and its re-run on the same fleet; each with ``hit``: the tenants its own calls asked for."""
    env = lambda url, workdir: client_env(url, workdir, tenants=tenants, **knobs)  # noqa: E731
    runs = run_clients(serve, (tenants, bad, call_seconds), [env, env], {"calls": "/_bench/calls"})
    before = 0
    for figures in runs:
        figures["hit"] = sum(len(slugs) for slugs in figures["calls"][before:])
        before = len(figures["calls"])
    return runs


def blast_radius(tenants: int, batch_size: int) -> None:
    print(f"1. blast radius on a bad build: {tenants} tenants, batch size {batch_size}, deploy calls 0.05 s, "
          f"max-stragglers 0; verify-each-batch on, soak and bake {SOAK:g} s, verify-interval 0.2 s, "
          f"verify-budget 1 s, no promote")
    header = (f"{'bad build':>18} {'canary':>6} {'run':>6} {'tenants hit':>11} {'exit':>4} {'aborted-at':>11} "
              f"{'wall s':>7}  target")
    print(header)
    print("-" * len(header))
    reasons, missed = [], 0
    for bad in BAD_BUILDS:
        for canary in (True, False):
            runs = run_twice(tenants=tenants, bad=bad, call_seconds=0.05, batch_size=batch_size, canary=canary,
                             each_batch=True, budget=1.0, interval=0.2, soak=SOAK)
            want = 1 if canary else batch_size
            for name, f in zip(("first", "re-run"), runs, strict=True):
                met = f["hit"] <= want and f["code"] != 0
                missed += not met
                aborted_at = f["outputs"].get("aborted-at", "") or "-"
                print(f"{bad:>18} {'yes' if canary else 'no':>6} {name:>6} {f['hit']:>11} {f['code']:>4} "
                      f"{aborted_at:>11} {f['wall']:>7.2f}  {want} ({'met' if met else 'MISSED'})")
                reasons.append((bad, canary, name, f["report"].get("reason", "")))
    contrast = run_once(tenants=tenants, bad="stale", call_seconds=0.05, batch_size=batch_size, canary=True,
                        each_batch=False, budget=1.0, interval=0.2)
    hit = sum(len(slugs) for slugs in contrast["calls"])
    print(f"{'stale, no proof':>18} {'yes':>6} {'first':>6} {hit:>11} {contrast['code']:>4} {'-':>11} "
          f"{contrast['wall']:>7.2f}  - (contrast: verify-each-batch false)")
    missed += bad_metrics(tenants, batch_size)
    print(f"cells that missed the target: {missed} of {len(reasons)}")
    for bad, canary, name, reason in reasons:
        cut = reason if len(reason) <= 160 else reason[:157] + "..."
        print(f"  {bad}, {'canary' if canary else 'no canary'}, {name}: {cut}")


ERRORS = ('errors: sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[5s])) / '
          'sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}"}[5s])) < 0.05')


def bad_metrics(tenants: int, batch_size: int) -> int:
    """The bad-metrics rows (see the module doc); how many missed the target (with analysis only)."""
    missed = 0
    for canary in (True, False):
        for analysis in (True, False):
            with serving(serve, (tenants, "bad metrics", 0.05)) as url, tempfile.TemporaryDirectory() as root:
                names = [spec.slug for spec in healthy_fleet(tenants)]
                targets = {slug: f"{url}/tenants/{slug}/metrics" for slug in names}
                prometheus = local_prometheus.start_prometheus(Path(root), targets)
                try:
                    prometheus.wait_for_scrapes(2)
                    extra = {"FLEET_ANALYSIS_URL": prometheus.url, "FLEET_ANALYSIS_QUERY": ERRORS,
                             "FLEET_ANALYSIS_INTERVAL": "1"} if analysis else {}

                    def env(url: str, workdir: Path, extra: dict[str, str] = extra, canary: bool = canary
                            ) -> dict[str, str]:
                        return {**client_env(url, workdir, tenants=tenants, batch_size=batch_size, canary=canary,
                                             each_batch=True, budget=1.0, interval=0.2, soak=6.0), **extra}

                    f = one_client(url, env, {"calls": "/_bench/calls"})
                finally:
                    prometheus.stop()
            hit = sum(len(slugs) for slugs in f["calls"])
            want = 1 if canary else batch_size
            met = f["code"] != 0 and hit <= want
            missed += analysis and not met
            target = f"{want} ({'met' if met else 'MISSED'})" if analysis else "- (contrast: no analysis)"
            aborted_at = f["outputs"].get("aborted-at", "") or "-"
            label = "bad metrics" if analysis else "bad metrics, off"
            print(f"{label:>18} {'yes' if canary else 'no':>6} {'first':>6} {hit:>11} {f['code']:>4} "
                  f"{aborted_at:>11} {f['wall']:>7.2f}  {target}")
    return missed


def healthy_cost(tenants: int, batch_size: int, repeat: int, call_seconds: float) -> None:
    print()
    calls = f"each deploy call takes {call_seconds:g} s" if call_seconds else "deploys instant"
    print(f"2. cost on a healthy fleet: {tenants} tenants, batch size {batch_size}, canary on, soak 0, {calls}, "
          f"every tenant reports the SHA when its call returns; verify interval 1 s, budget 600 s; "
          f"stages rollout,verify (promote off); median of {repeat} runs each, interleaved")
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for _ in range(repeat):
        for each_batch in (True, False):
            f = run_once(tenants=tenants, bad="", call_seconds=call_seconds, batch_size=batch_size, canary=True,
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
