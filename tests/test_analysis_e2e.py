"""Metric analysis end to end: the real entrypoint, the simulated CP and tenants, and a REAL Prometheus
(Debian's ``prometheus``) scraping the tenants' ``/metrics`` every second.

One Prometheus serves the module; each test gives its fleet slugs of its own and retargets it. A
build's health comes from the simulator (``build_health``: 30 % of requests answered 500 by every
tenant that runs it; ``TenantSpec.health``: on one tenant only). Windows are 5 s (at least 4
scrape intervals); soaks and bakes are long enough for a window to see the new build.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from deploy.sim.fleet import OLD_SHA, TenantSpec, builds_for
from deploy.sim.local_prometheus import RunningPrometheus
from deploy.sim.metrics import Health
from tests.prometheus_fixture import start, tenant_targets
from tests.support import SHA, TAG, buildinfo, seeded

ERRORS = ('errors: sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[5s])) '
          '/ sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}"}[5s])) < 0.05')
ANALYSIS = {"analysis_query": ERRORS, "analysis_interval": "1", "timeout": "120"}


@pytest.fixture(scope="module")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    running = start(tmp_path_factory.mktemp("prometheus"), "http://127.0.0.1:9", [])
    yield running
    running.stop()


def scraped(prometheus: RunningPrometheus, server, slugs: list[str]) -> str:
    """Point Prometheus at these tenants, wait until each was scraped twice; its URL."""
    prometheus.retarget(tenant_targets(server, slugs))
    prometheus.wait_for_scrapes(2)
    return prometheus.url


def fleet_of(prefix: str, count: int, **knobs) -> list[TenantSpec]:
    return [TenantSpec(f"{prefix}{i}", deploy_seconds=1, **knobs) for i in range(1, count + 1)]


def calls(sim) -> list[list[str]]:
    return [call["only_slugs"] for call in sim.deploy_calls() if call["target_tag"] == TAG]


def test_a_good_build_passes_every_step_and_latest_moves(fleet, action, prometheus_server, registry, repository):
    _old, new = seeded(registry, repository)
    tenants = fleet_of("good", 5)
    _sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    url = scraped(prometheus_server, server, [t.slug for t in tenants])
    result = action(server, canary="good1", soak_seconds="2", batch_size="2", batch_soak_seconds="1",
                    verify_url=buildinfo(server), analysis_url=url, promote_images=registry.image(repository),
                    **ANALYSIS)

    assert result.code == 0 and result.outputs["ok"] == "true", result.stdout
    assert registry.digest(repository, "latest") == new
    steps = result.report["analysis"]
    assert [step["step"] for step in steps] == ["canary", "batch 1/2", "batch 2/2", "promote"]
    assert all(step["verdict"] == "pass" for step in steps)
    evaluation = steps[0]["evaluations"][0]
    assert evaluation["name"] == "errors" and evaluation["value"] == 0 and '"^(?:good1)$"' in evaluation["query"]
    assert "### Metric analysis" in result.summary and "analysis canary errors=0 pass" in result.summary
    assert "analysis · canary · errors = 0 on tenant=\"good1\" < 0.05 → pass" in result.stdout


def test_a_build_failing_30_percent_of_requests_stops_at_the_canary(fleet, action, prometheus_server):
    tenants = fleet_of("bad", 6)
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), build_health={TAG: Health(error_ratio=0.3)})
    url = scraped(prometheus_server, server, [t.slug for t in tenants])
    result = action(server, canary="bad1", soak_seconds="6", batch_size="2", verify_url=buildinfo(server),
                    analysis_url=url, on_failure="rollback", **ANALYSIS)

    assert (result.code, result.outputs["outcome"], result.outputs["aborted-at"]) == (1, "failed", "canary")
    reason = result.outputs["reason"]
    assert reason.startswith('canary: metric analysis failed: errors = ') and 'on tenant="bad1", not < 0.05' in reason
    assert calls(sim) == [["bad1"]]  # the build reached the canary alone
    assert json.loads(result.outputs["rolled-back"]) == ["bad1"] and sim.running_sha("bad1") == OLD_SHA
    assert result.report["analysis"][0]["verdict"] == "fail"


def test_a_build_bad_on_one_tenant_of_batch_2_stops_at_batch_2(fleet, action, prometheus_server):
    tenants = fleet_of("one", 6)
    tenants[3].health = {TAG: Health(error_ratio=0.3)}  # one4: in batch 2/3
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    url = scraped(prometheus_server, server, [t.slug for t in tenants])
    result = action(server, batch_size="2", batch_soak_seconds="6", verify_url=buildinfo(server), analysis_url=url,
                    **ANALYSIS)

    assert (result.code, result.outputs["aborted-at"]) == (1, "batch 2/3"), result.stdout
    assert 'on tenant="one4", not < 0.05' in result.outputs["reason"]
    assert calls(sim) == [["one1", "one2"], ["one3", "one4"]]


def test_prometheus_stopped_mid_run_holds_without_a_rollback(fleet, action, tmp_path):
    tenants = fleet_of("gone", 4)
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    prometheus = start(tmp_path / "prometheus", server, [t.slug for t in tenants])
    try:
        prometheus.wait_for_scrapes(2)

        def stop_prometheus(body) -> None:
            prometheus.stop()

        sim.after_deploy = stop_prometheus  # the canary's call lands: then the metrics API is gone
        result = action(server, canary="gone1", soak_seconds="3", verify_url=buildinfo(server),
                        analysis_url=prometheus.url, on_failure="rollback", retry_delays="none", **ANALYSIS)
    finally:
        prometheus.stop()

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    reason = result.outputs["reason"]
    assert reason.startswith("canary: metric analysis inconclusive, holding: ") and "connection refused" in reason
    assert reason.endswith("on-failure: rollback not run: what could not be read is no evidence against the build, "
                           "the fleet holds where it is")
    assert calls(sim) == [["gone1"]] and result.report["rollback"] is None and sim.running_sha("gone1") == SHA


def test_a_query_prometheus_cannot_parse_stops_before_any_deploy(fleet, action, prometheus_server):
    tenants = fleet_of("parse", 3)
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    url = scraped(prometheus_server, server, [t.slug for t in tenants])
    broken = f'{ERRORS}\nbroken: sum(rat(http_requests_total{{tenant=~"{{tenants}}"}}[5s])) < 1'
    result = action(server, verify_url=buildinfo(server), analysis_url=url,
                    **{**ANALYSIS, "analysis_query": broken})

    assert (result.code, result.outputs["outcome"]) == (2, "failed"), result.stdout
    assert "analysis-query" in result.outputs["reason"] and "line 2 (broken)" in result.outputs["reason"]
    assert sim.deploy_calls() == []


def test_report_only_analysis_never_stops_a_bad_build(fleet, action, prometheus_server):
    tenants = fleet_of("dry", 3)
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), build_health={TAG: Health(error_ratio=0.3)})
    url = scraped(prometheus_server, server, [t.slug for t in tenants])
    result = action(server, canary="dry1", soak_seconds="6", verify_url=buildinfo(server), analysis_url=url,
                    analysis_dry_run="true", **ANALYSIS)

    assert result.code == 0, result.stdout
    canary = result.report["analysis"][0]
    assert canary["verdict"] == "pass" and canary["finding"] == "fail" and canary["report_only"] is True
    assert canary["reason"].endswith("(would fail)") and len(calls(sim)) == 2
