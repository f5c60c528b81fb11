"""How the client's cost grows with the fleet: the whole pipeline at 1,000, 10,000 and 50,000 tenants.

Each size runs plan, canary, batches of 25, verify, promote and report against the simulator (CP,
tenants and registry, in a process of its own; deploys are instant and every tenant reports the
build at once), with the client in a fresh process too, so that its figures are its own:

- client CPU: user + system time of ``deploy.action.run`` (the interpreter start and imports are
  the same at every size, and are left out), and the same per tenant;
- wall: the same run, end to end;
- peak RSS: the client process's high-water mark (imports included);
- the job summary's size, and the longest line of ``GITHUB_OUTPUT``.

Targets: CPU per tenant flat (50k / 1k at most 1.3) and under 0.7 ms per tenant at 10k; peak RSS
under 250 MB at 50k; summary under 1 MiB and every output line under 64 KiB at every size.

    python bench/scale_bench.py [--sizes 1000,10000,50000] [--batch-size 25]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.sim.fleet import FleetSim, healthy_fleet  # noqa: E402
from deploy.sim.registry import SimRegistry  # noqa: E402
from deploy.sim.server import SimServer  # noqa: E402

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"
TAG = f"staging-{SHA[:7]}"
TOKEN = "bench-token-7c1e9a"
REPOSITORY = "acme/tenant"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()

# Runs in the client's own process: CPU and RSS measured there, written as one JSON line.
CLIENT = """
import io, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from deploy.action import run
import os
cpu, wall = time.process_time(), time.perf_counter()
code = run(dict(os.environ), stream=io.StringIO())
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
print(json.dumps({"code": code, "cpu": cpu, "wall": wall,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def serve(tenants: int, port_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    fleet = FleetSim(healthy_fleet(tenants), builds={TAG: SHA}, token=TOKEN, time_scale=0.0)
    registry = SimRegistry()
    registry.seed(REPOSITORY, TAG, MANIFEST, "application/vnd.oci.image.manifest.v1+json")
    with SimServer([fleet, registry], record=False) as server:
        port_queue.put(server.url)
        time.sleep(24 * 3600)


def client_env(url: str, workdir: Path, tenants: int, batch_size: int) -> dict[str, str]:
    host = url.removeprefix("http://")
    return {
        "PATH": os.environ.get("PATH", ""),
        "FLEET_CP_URL": url, "FLEET_CP_TOKEN": TOKEN, "FLEET_SHA": SHA,
        "FLEET_CANARY": healthy_fleet(tenants)[0].slug, "FLEET_SOAK_SECONDS": "0",  # the simulator's own name
        "FLEET_BATCH_SIZE": str(batch_size), "FLEET_MAX_STRAGGLERS": "0",
        "FLEET_VERIFY_URL": f"{url}/tenants/{{slug}}/buildinfo", "FLEET_VERIFY_INTERVAL": "1",
        "FLEET_VERIFY_BUDGET": "600", "FLEET_TIMEOUT": "7200",
        # the simulated CP answers within 0.25 s: its declared worst case, which the plan is checked against
        "FLEET_CP_TENANT_TIMEOUT": "0.3", "FLEET_CP_SETTLE_SECONDS": "0.1", "FLEET_ROLLOUT_TIMEOUT": "2",
        "FLEET_REQUEST_TIMEOUT": "2",
        "FLEET_PROMOTE_IMAGES": f"{host}/{REPOSITORY}",
        "GITHUB_WORKSPACE": str(workdir), "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary.md"),
    }


def measure(tenants: int, batch_size: int) -> dict[str, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    sim = multiprocessing.Process(target=serve, args=(tenants, queue), daemon=True)
    sim.start()
    try:
        url = queue.get(timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            proc = subprocess.run([sys.executable, "-c", CLIENT, str(ROOT)], capture_output=True, text=True,
                                  env=client_env(url, workdir, tenants, batch_size), check=False)
            if proc.returncode != 0 or not proc.stdout.strip():
                raise SystemExit(f"client failed at {tenants} tenants:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            if figures["code"] != 0:
                report = json.loads((workdir / "fleet-rollout-report.json").read_text())
                raise SystemExit(f"the run failed at {tenants} tenants: {report['reason']}")
            output = (workdir / "output").read_bytes()
            figures["summary_bytes"] = (workdir / "summary.md").stat().st_size
            figures["longest_output_line"] = max(len(line) for line in output.splitlines())
            return figures
    finally:
        sim.terminate()
        sim.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    print(f"whole pipeline (plan, canary, batches of {args.batch_size}, verify, promote, report); "
          "simulator in another process")
    header = (f"{'tenants':>8} {'CPU s':>7} {'CPU ms/tenant':>13} {'wall s':>7} {'peak RSS MB':>11} "
              f"{'summary KiB':>11} {'longest output line':>19}")
    print(header)
    print("-" * len(header))
    per_tenant = {}
    for size in sizes:
        f = measure(size, args.batch_size)
        per_tenant[size] = f["cpu"] / size * 1000
        print(f"{size:>8} {f['cpu']:>7.2f} {per_tenant[size]:>13.3f} {f['wall']:>7.1f} {f['rss_kib'] / 1024:>11.1f} "
              f"{f['summary_bytes'] / 1024:>11.1f} {f['longest_output_line']:>19}")
    if len(sizes) > 1:
        ratio = per_tenant[sizes[-1]] / per_tenant[sizes[0]]
        print(f"CPU per tenant, {sizes[-1]} vs {sizes[0]}: x{ratio:.2f} (target at most 1.3)")


if __name__ == "__main__":
    main()
