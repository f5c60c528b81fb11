"""A real Prometheus on loopback: Debian's ``prometheus`` scraping the simulator's tenants.

Metric analysis is tested against the server users run, not a mock: its PromQL parser (what
``bad_data`` looks like), its ``rate()`` over real scrapes, its answers for no data and NaN.
Like :mod:`deploy.sim.local_registry`, it is a separate process on its own free loopback port,
with its own directory for the config, the TSDB and its log.

One scrape job, ``fleet``, every :data:`SCRAPE_INTERVAL` seconds; one target per tenant, each with
its own ``__metrics_path__`` (``/tenants/{slug}/metrics``) and ``instance`` label (the slug: targets
sharing a host would otherwise write the same ``up`` series). The config is written as JSON, which
is YAML too, so the simulator needs no YAML library. A ``rate()`` needs at least two samples in its
window: size windows to at least 4 scrape intervals, and wait for scrapes with
:meth:`RunningPrometheus.wait_for_scrapes` rather than sleeping.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from deploy.sim.local_registry import free_port

STARTUP_SECONDS = 15.0
SCRAPE_INTERVAL = 1.0
JOB = "fleet"


@dataclass
class RunningPrometheus:
    """A started ``prometheus``: its URL, what it scrapes, and helpers to wait for and read samples."""

    url: str
    root: Path
    targets: dict[str, str]  # instance (a tenant's slug) → its metrics URL
    process: subprocess.Popen[bytes] = field(repr=False)
    ready_seconds: float = 0.0  # from the process start to /-/ready answering 200

    def query(self, expr: str) -> Any:
        """``data`` of an instant query (outside the code under test: a plain GET)."""
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]

    def scrapes(self) -> dict[str, int]:
        """Scrapes so far per target (samples of its ``up`` series); a target not scraped yet is absent."""
        data = self.query(f'count_over_time(up{{job="{JOB}"}}[1h])')
        return {series["metric"].get("instance", ""): int(float(series["value"][1])) for series in data["result"]}

    def wait_for_scrapes(self, count: int, timeout: float = 30.0) -> float:
        """Wait until every target has been scraped ``count`` more times than now; the seconds it took."""
        started = time.monotonic()
        before = self.scrapes()
        wanted = {name: before.get(name, 0) + count for name in self.targets}
        while True:
            now = self.scrapes()
            if all(now.get(name, 0) >= n for name, n in wanted.items()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"prometheus scraped {now} in {timeout:g} s, wanted {wanted}")
            time.sleep(0.1)

    def retarget(self, targets: Mapping[str, str]) -> None:
        """Scrape these targets instead (the config is rewritten and reloaded)."""
        self.targets = dict(targets)
        write_config(self.root / "prometheus.json", self.targets)
        requests.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(path: Path, targets: Mapping[str, str]) -> None:
    """One job scraping each ``instance → metrics URL`` every :data:`SCRAPE_INTERVAL` seconds."""
    static = []
    for instance, url in targets.items():
        parts = urlsplit(url)
        static.append({"targets": [parts.netloc], "labels": {"__metrics_path__": parts.path, "instance": instance,
                                                              "__scheme__": parts.scheme}})
    interval = f"{SCRAPE_INTERVAL:g}s"
    config = {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
              "scrape_configs": [{"job_name": JOB, "static_configs": static}]}
    path.write_text(json.dumps(config, indent=2))


def start_prometheus(root: Path, targets: Mapping[str, str], binary: str = "prometheus",
                     attempts: int = 3) -> RunningPrometheus:
    """Start ``prometheus`` in ``root`` scraping ``targets`` and wait until ``/-/ready`` answers 200.

    A free port can be taken between choosing it and the server binding it: then it is tried
    again on another port, up to ``attempts`` times.
    """
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.json"
    write_config(config, targets)
    log_path = root / "prometheus.log"
    for _ in range(attempts):
        port = free_port()
        started = time.monotonic()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        running = RunningPrometheus(f"http://127.0.0.1:{port}", root, dict(targets), process)
        while time.monotonic() - started < STARTUP_SECONDS and process.poll() is None:
            try:
                if requests.get(f"{running.url}/-/ready", timeout=1).status_code == 200:
                    running.ready_seconds = time.monotonic() - started
                    return running
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        running.stop()
        if "address already in use" not in log_path.read_text(errors="replace"):
            break
    raise RuntimeError(f"prometheus did not start: {log_path.read_text(errors='replace')[-2000:]}")
