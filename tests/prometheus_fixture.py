"""Pytest fixtures for a real Prometheus: Debian's ``prometheus`` scraping simulated tenants on loopback.

The server and its helpers live in :mod:`deploy.sim.local_prometheus`. Without the binary the
tests skip locally but fail under ``CI=true``: CI must not go green by testing nothing
(``.ci/run`` installs ``prometheus``).

In a test::

    sim, server = fleet([TenantSpec("t01"), ...], build_health={BAD_TAG: Health(error_ratio=0.3)})
    prom = prometheus(server, ["t01", ...])   # ready; scrapes each tenant's /metrics every second
    prom.wait_for_scrapes(4)                  # before a rate() over [4s] or more has samples
    ... analysis-url: prom.url ...
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from deploy.sim.local_prometheus import RunningPrometheus, start_prometheus
from deploy.sim.server import SimServer


def prometheus_binary() -> str:
    """The ``prometheus`` binary, or skip (fail under ``CI=true``) when it is not installed."""
    path = shutil.which("prometheus")
    if path:
        return path
    message = ("prometheus is not installed: the metric analysis tests need a real one "
               "(apt-get install --no-install-recommends prometheus)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " — CI must not skip them", pytrace=False)
    pytest.skip(message)


def tenant_targets(server: SimServer | str, slugs: Sequence[str]) -> dict[str, str]:
    """Each tenant's metrics URL on the simulator behind ``server``, keyed by slug (its ``instance``)."""
    base = server if isinstance(server, str) else server.url
    return {slug: f"{base}/tenants/{slug}/metrics" for slug in slugs}


def start(root: Path, server: SimServer | str, slugs: Sequence[str]) -> RunningPrometheus:
    binary = prometheus_binary()
    try:
        return start_prometheus(root, tenant_targets(server, slugs), binary)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[SimServer | str, Sequence[str]], RunningPrometheus]]:
    """``prometheus(server, slugs)`` starts a Prometheus scraping those tenants of ``server`` every
    second, ready to query; every one started is stopped at the end of the test."""
    started: list[RunningPrometheus] = []

    def run(server: SimServer | str, slugs: Sequence[str]) -> RunningPrometheus:
        running = start(tmp_path / f"prometheus-{len(started)}", server, slugs)
        started.append(running)
        return running

    yield run
    for running in started:
        running.stop()
