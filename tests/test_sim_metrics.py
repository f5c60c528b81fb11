"""The simulator's tenant metrics: counters driven by elapsed time × rate, split by how the running build
serves (``FleetSim.build_health``, ``TenantSpec.health``). Contract: ``docs/simulator.md`` § Tenant metrics."""

from __future__ import annotations

import re

import pytest
import requests

from deploy.sim.fleet import TenantSpec
from deploy.sim.metrics import BUCKETS, CONTENT_TYPE, HEALTHY, Health, Traffic, health_for
from tests.support import SHA, TAG

BAD_SHA, BAD_TAG = "b" * 40, "staging-bbbbbbb"
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value, the tenant label left out."""
    found = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = ",".join(part for part in match.group(2).split(",") if not part.startswith("tenant="))
            found[f"{match.group(1)}{{{labels}}}"] = float(match.group(3))
    return found


def test_counters_advance_by_elapsed_time_times_rate_split_by_the_builds_health():
    traffic = Traffic()
    first = samples(traffic.exposition("t01", 100.0, 10.0, Health(error_ratio=0.3, latency=0.8)))
    assert first['http_requests_total{code="200"}'] == 0 and first["http_request_duration_seconds_count{}"] == 0
    later = samples(traffic.exposition("t01", 110.0, 10.0, Health(error_ratio=0.3, latency=0.8)))
    assert later['http_requests_total{code="200"}'] == pytest.approx(70)
    assert later['http_requests_total{code="500"}'] == pytest.approx(30)
    assert later['http_request_duration_seconds_bucket{le="0.5"}'] == 0
    assert later['http_request_duration_seconds_bucket{le="1"}'] == 100
    assert later['http_request_duration_seconds_bucket{le="+Inf"}'] == 100
    assert later["http_request_duration_seconds_sum{}"] == pytest.approx(80.0)
    assert later["http_request_duration_seconds_count{}"] == 100


def test_traffic_since_the_last_read_counts_for_the_build_running_now():
    traffic = Traffic()
    traffic.exposition("t01", 0.0, 10.0, HEALTHY)
    traffic.exposition("t01", 5.0, 10.0, HEALTHY)
    after = samples(traffic.exposition("t01", 10.0, 10.0, Health(error_ratio=1.0)))
    assert after['http_requests_total{code="200"}'] == pytest.approx(50)
    assert after['http_requests_total{code="500"}'] == pytest.approx(50)


def test_counters_never_go_down_and_a_zero_rate_is_no_traffic():
    traffic = Traffic()
    values = [samples(traffic.exposition("q", t, 0.0, HEALTHY)) for t in (0.0, 10.0, 5.0)]
    assert all(v['http_requests_total{code="200"}'] == 0 for v in values)
    traffic.exposition("t", 10.0, 3.0, HEALTHY)
    back_in_time = samples(traffic.exposition("t", 5.0, 3.0, HEALTHY))
    assert back_in_time['http_requests_total{code="200"}'] == 0


def test_every_bucket_at_or_above_the_latency_counts_the_request():
    traffic = Traffic()
    traffic.exposition("t", 0.0, 1.0, Health(latency=0.05))
    found = samples(traffic.exposition("t", 4.0, 1.0, Health(latency=0.05)))
    buckets = [found[f'http_request_duration_seconds_bucket{{le="{bound:g}"}}'] for bound in BUCKETS]
    assert buckets == [0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4]


def test_a_tenants_own_knob_wins_over_the_fleets_and_knobs_follow_the_tag_to_its_build():
    builds = {TAG: SHA, BAD_TAG: BAD_SHA, "latest": "0" * 40}
    fleet = {BAD_TAG: Health(error_ratio=0.3)}
    own = {BAD_TAG: Health(error_ratio=0.9), TAG: Health(latency=2.0)}
    assert health_for(BAD_SHA, builds, {}, fleet) == Health(error_ratio=0.3)
    assert health_for(BAD_SHA, builds, own, fleet) == Health(error_ratio=0.9)
    assert health_for(SHA, builds, own, fleet) == Health(latency=2.0)
    assert health_for("0" * 40, builds, own, fleet) is HEALTHY


@pytest.mark.parametrize("knobs", [{"error_ratio": 1.5}, {"error_ratio": -0.1}, {"latency": float("nan")}])
def test_a_health_that_cannot_be_is_refused(knobs):
    with pytest.raises(ValueError, match="not a health"):
        Health(**knobs)


def error_share(url: str) -> float:
    """The share of 5xx among the requests counted between two reads of ``url``."""
    reads = [samples(requests.get(url, timeout=5).text) for _ in range(2)]
    ok, errors = (reads[1][f'http_requests_total{{code="{code}"}}'] - reads[0][f'http_requests_total{{code="{code}"}}']
                  for code in (200, 500))
    return errors / (ok + errors)


def test_each_tenant_serves_its_metrics_for_the_build_it_runs(fleet):
    # A rate so high that any elapsed time is millions of requests: the share of errors is exact.
    sim, server = fleet([TenantSpec("a"), TenantSpec("b", health={TAG: Health(error_ratio=0.5)}),
                         TenantSpec("c", stale=True), TenantSpec("d", dead=True)],
                        builds={TAG: SHA, BAD_TAG: BAD_SHA}, build_health={BAD_TAG: Health(error_ratio=0.3)},
                        request_rate=1e12)
    url = f"{server.url}/tenants/{{}}/metrics"
    answer = requests.get(url.format("a"), timeout=5)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == CONTENT_TYPE
    assert 'http_requests_total{tenant="a",code="500"} 0.0' in answer.text
    assert error_share(url.format("a")) == 0  # the initial build: healthy
    for slug in ("a", "b", "c"):
        sim.mark_deployed(slug, BAD_SHA)
    assert error_share(url.format("a")) == pytest.approx(0.3)  # the fleet-wide knob
    assert error_share(url.format("c")) == 0  # stale: the bad build never really runs there
    sim.mark_deployed("b", SHA)
    assert error_share(url.format("b")) == pytest.approx(0.5)  # good everywhere, bad on b
    with pytest.raises(requests.ConnectionError):
        requests.get(url.format("d"), timeout=5)  # dead: Prometheus sees it down
    assert requests.get(url.format("nobody"), timeout=5).status_code == 404


def test_a_tenant_without_traffic_serves_zero_counters(fleet):
    _sim, server = fleet([TenantSpec("quiet", request_rate=0.0)])
    url = f"{server.url}/tenants/quiet/metrics"
    requests.get(url, timeout=5)
    found = samples(requests.get(url, timeout=5).text)
    assert found['http_requests_total{code="200"}'] == 0 and found["http_request_duration_seconds_count{}"] == 0
