"""What the simulator benches share: the build they ship, and one client run against a fresh simulator.

The simulator and the client each run in a process of their own, so that the client's CPU and
wall time are its own (interpreter start and imports left out). Imported by the bench scripts
beside it (``python bench/<name>.py`` puts this folder on the path).
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.runner import parse_output_file  # noqa: E402
from deploy.sim.fleet import FleetSim  # noqa: E402
from deploy.sim.server import Request, Response  # noqa: E402

SHA = "8ddce85f3b2a4c6d9e0f1a2b3c4d5e6f708192a3"
TAG = f"staging-{SHA[:7]}"

# Runs in the client's own process: its CPU and wall for deploy.action.run, as one JSON line.
CLIENT = """
import io, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from deploy.action import run
cpu, wall = time.process_time(), time.perf_counter()
code = run(dict(os.environ), stream=io.StringIO())
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
print(json.dumps({"code": code, "cpu": cpu, "wall": wall}))
"""


class Calls:
    """Serves the simulator's deploy calls at /_bench/calls: one list of slugs per call."""

    def __init__(self, fleet: FleetSim) -> None:
        self.fleet = fleet

    def handle(self, request: Request) -> Response | None:
        if request.path != "/_bench/calls":
            return None
        every = [tenant.slug for tenant in self.fleet.tenants]
        return Response.json([body.get("only_slugs") or every for body in self.fleet.deploy_calls()])


def expect_exit(figures: dict[str, Any], expected: int, what: str) -> dict[str, Any]:
    """``figures`` of a client run that exited ``expected``; otherwise the bench stops, saying why.

    A run that exits otherwise measured something else: a configuration error (exit 2) deploys
    nothing, so its row of zeros would read as a result — as a canary slug the simulated fleet
    does not have once made a bench print figures of nothing.
    """
    if figures["code"] != expected:
        reason = figures["outputs"].get("reason") or figures["report"].get("reason") or "no reason given"
        raise SystemExit(f"{what}: the client exited {figures['code']}, expected {expected}: {reason}")
    return figures


def run_client(serve: Callable[..., None], serve_args: tuple[Any, ...], env_for: Callable[[str, Path], dict[str, str]],
               bench_paths: Mapping[str, str]) -> dict[str, Any]:
    """Start ``serve(*serve_args, url_queue)`` in a process, run the client against the URL it puts
    in the queue (``env_for(url, workdir)``), and return the client's figures (``code``, ``cpu``,
    ``wall``, ``process_wall``), its ``outputs`` and ``report``, and the JSON of each of
    ``bench_paths`` (name → the simulator's path) read afterwards."""
    return run_clients(serve, serve_args, [env_for], bench_paths)[0]


def run_clients(serve: Callable[..., None], serve_args: tuple[Any, ...],
                envs: Sequence[Callable[[str, Path], dict[str, str]]], bench_paths: Mapping[str, str],
                ) -> list[dict[str, Any]]:
    """:func:`run_client` for several client runs, one after the other, against one simulator (a
    re-run finds the fleet as the run before left it); the figures of each, ``bench_paths`` read
    after each."""
    with serving(serve, serve_args) as url:
        return [one_client(url, env_for, bench_paths) for env_for in envs]


@contextmanager
def serving(serve: Callable[..., None], serve_args: tuple[Any, ...]) -> Iterator[str]:
    """``serve(*serve_args, url_queue)`` in a process of its own while the block runs; yields its URL."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    sim = multiprocessing.Process(target=serve, args=(*serve_args, queue), daemon=True)
    sim.start()
    try:
        yield queue.get(timeout=60)
    finally:
        sim.terminate()
        sim.join()


def one_client(url: str, env_for: Callable[[str, Path], dict[str, str]],
                bench_paths: Mapping[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CLIENT, str(ROOT)], capture_output=True, text=True,
                              env=env_for(url, workdir), check=False)
        process_wall = time.perf_counter() - began
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise SystemExit(f"client crashed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        figures = json.loads(lines[-1])
        figures["process_wall"] = process_wall
        output = workdir / "output"
        figures["outputs"] = parse_output_file(output.read_text()) if output.exists() else {}
        report_path = workdir / "fleet-rollout-report.json"
        figures["report"] = json.loads(report_path.read_text()) if report_path.exists() else {}
    for name, path in bench_paths.items():
        figures[name] = requests.get(f"{url}{path}", timeout=10).json()
    return figures
