"""Client-side cost of a 1000-tenant rollout, against the simulator in another process.

Prints: the client's own CPU time for plan + rollout + report (target < 0.5 s), per-call client
overhead (target < 50 ms), and entrypoint cold start to first request (target < 0.2 s). The CP
answers at once (deploy time 0), so what is measured is the client, not the fleet.

    python bench/rollout_bench.py [--tenants 1000] [--batch-size 25]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.sim.fleet import FleetSim, healthy_fleet  # noqa: E402
from deploy.sim.server import Request, Response, SimServer  # noqa: E402

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"
TOKEN = "bench-token"


class Stamps:
    """Records when each request arrived, served at /_bench/stamps."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def handle(self, request: Request) -> Response | None:
        if request.path == "/_bench/stamps":
            return Response.json(self.times)
        self.times.append(time.time())
        return None


def serve(tenants: int, port_queue: multiprocessing.Queue) -> None:
    fleet = FleetSim(healthy_fleet(tenants), builds={f"staging-{SHA[:7]}": SHA}, token=TOKEN, time_scale=0.0)
    with SimServer([Stamps(), fleet]) as server:
        port_queue.put(server.url)
        time.sleep(3600)


def env_for(url: str, workdir: Path, batch_size: int) -> dict[str, str]:
    return {
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA, "FLEET_STAGES": "rollout",
        "FLEET_BATCH_SIZE": str(batch_size), "FLEET_MAX_STRAGGLERS": "0", "FLEET_SOAK_SECONDS": "0",
        # the simulated CP answers at once: its declared worst case, which the plan is checked against
        "FLEET_CP_TENANT_TIMEOUT": "0.3", "FLEET_CP_SETTLE_SECONDS": "0.1", "FLEET_ROLLOUT_TIMEOUT": "2",
        "FLEET_REQUEST_TIMEOUT": "2",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "out"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary"),
    }


def stamps(url: str) -> list[float]:
    return requests.get(f"{url}/_bench/stamps", timeout=5).json()


def in_process_run(url: str, workdir: Path, batch_size: int) -> tuple[float, float, int]:
    from deploy.action import run

    cpu, wall = time.process_time(), time.perf_counter()
    code = run(env_for(url, workdir, batch_size), stream=io.StringIO())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert code == 0, f"rollout failed with exit {code}"
    calls = len(json.loads((workdir / "fleet-rollout-report.json").read_text())["rollout"]["calls"]) + 1
    return cpu, wall, calls


def cold_start(url: str, workdir: Path, batch_size: int) -> float:
    before = len(stamps(url))
    env = {**os.environ, **env_for(url, workdir, batch_size)}
    started = time.time()
    subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env, capture_output=True, check=True)
    return stamps(url)[before] - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    queue: multiprocessing.Queue = multiprocessing.Queue()
    sim = multiprocessing.Process(target=serve, args=(args.tenants, queue), daemon=True)
    sim.start()
    url = queue.get(timeout=10)
    try:
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(in_process_run(url, Path(tmp), args.batch_size))
        starts = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                starts.append(cold_start(url, Path(tmp), args.batch_size))
    finally:
        sim.terminate()

    cpu = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    calls = runs[0][2]
    print(f"fleet: {args.tenants} tenants, batch size {args.batch_size}, {calls} CP calls per run; "
          f"median of {args.repeat} runs (the first includes imports)")
    print(f"client CPU time, plan + rollout + report: {cpu * 1000:7.1f} ms   (target < 500 ms)")
    print(f"client wall time, same:                   {wall * 1000:7.1f} ms")
    print(f"per-call client overhead (wall / calls):  {wall / calls * 1000:7.2f} ms   (target < 50 ms)")
    print(f"per-call client CPU (cpu / calls):        {cpu / calls * 1000:7.2f} ms")
    print(f"cold start to first request:              {statistics.median(starts) * 1000:7.1f} ms   "
          f"(target < 200 ms; min {min(starts) * 1000:.1f}, max {max(starts) * 1000:.1f})")


if __name__ == "__main__":
    main()
