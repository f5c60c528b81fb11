"""Tenant metrics for the simulator: what a real Prometheus scrapes at ``/tenants/{slug}/metrics``.

Each tenant serves the Prometheus text format (0.0.4): ``http_requests_total{tenant,code}``
counters (``code`` ``200`` and ``500``, both always present) and a latency histogram
``http_request_duration_seconds_bucket{tenant,le}`` with ``_sum`` and ``_count``. The traffic
behind them is generated, not served: every read advances the tenant's counters by the *real*
seconds since its previous read × its request rate (requests per real second, not scaled by
``time_scale``: Prometheus' ``rate()`` divides by real time), split by how the build the tenant
runs at that moment serves (:class:`Health`). No threads, no randomness: the same reads give the
same numbers, and the counters are exact fractions (floats, which the text format allows), so a
build with 30 % errors reads 0.3 in any window, not 14/49.

Traffic between two reads is counted for the build running at the second read: a build change
is seen within one scrape interval. The counters start at zero on a tenant's first read.

Knobs (``docs/simulator.md`` § Tenant metrics): ``FleetSim.request_rate`` and
``TenantSpec.request_rate`` (0: a tenant without traffic), ``FleetSim.build_health`` (target tag →
:class:`Health` on every tenant running that build) and ``TenantSpec.health`` (the same for one
tenant; it wins).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # the client libraries' defaults
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Health:
    """How a build serves: the share of its requests answered 500, and how long every request takes."""

    error_ratio: float = 0.0
    latency: float = 0.02  # seconds; every request lands in the first bucket at or above it

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_ratio <= 1.0 or not math.isfinite(self.latency) or self.latency < 0:
            raise ValueError(f"not a health: {self}")


HEALTHY = Health()


def health_for(sha: str, builds: Mapping[str, str], tenant: Mapping[str, Health],
               fleet: Mapping[str, Health]) -> Health:
    """How ``sha`` serves on one tenant: its own knob for a tag naming ``sha``, else the fleet's,
    else :data:`HEALTHY`. Knobs are keyed by target tag (as ``bad_builds``), looked up through ``builds``."""
    for knobs in (tenant, fleet):
        for tag, health in knobs.items():
            if builds.get(tag) == sha:
                return health
    return HEALTHY


@dataclass
class _Counters:
    last: float  # time.monotonic() of the previous read
    ok: float = 0.0
    errors: float = 0.0
    seconds: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))  # cumulative, as exposed

    def advance(self, now: float, rate: float, health: Health) -> None:
        requests = max(now - self.last, 0.0) * rate
        self.last = now
        self.errors += requests * health.error_ratio
        self.ok += requests * (1.0 - health.error_ratio)
        self.seconds += requests * health.latency
        for i, bound in enumerate(BUCKETS):
            if health.latency <= bound:
                self.buckets[i] += requests


@dataclass
class Traffic:
    """Every tenant's counters; thread-safe (the simulator answers each request on its own thread)."""

    _counters: dict[str, _Counters] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def exposition(self, slug: str, now: float, rate: float, health: Health) -> str:
        """Advance ``slug``'s counters to ``now`` and write them in the text format."""
        with self._lock:
            counters = self._counters.setdefault(slug, _Counters(now))
            counters.advance(now, rate, health)
            ok, errors, seconds = counters.ok, counters.errors, counters.seconds
            total = counters.ok + counters.errors
            buckets = [min(count, total) for count in counters.buckets]
        tenant = f'tenant="{_label(slug)}"'
        lines = [
            "# HELP http_requests_total Requests served, by status code.",
            "# TYPE http_requests_total counter",
            f'http_requests_total{{{tenant},code="200"}} {ok!r}',
            f'http_requests_total{{{tenant},code="500"}} {errors!r}',
            "# HELP http_request_duration_seconds How long requests took.",
            "# TYPE http_request_duration_seconds histogram",
        ]
        lines += [f'http_request_duration_seconds_bucket{{{tenant},le="{bound:g}"}} {count!r}'
                  for bound, count in zip(BUCKETS, buckets, strict=True)]
        lines += [f'http_request_duration_seconds_bucket{{{tenant},le="+Inf"}} {total!r}',
                  f"http_request_duration_seconds_sum{{{tenant}}} {seconds!r}",
                  f"http_request_duration_seconds_count{{{tenant}}} {total!r}"]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A label value in the text format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
