"""Metric analysis against a REAL Prometheus (Debian's ``prometheus``) scraping simulated tenants every second.

One fleet and one Prometheus serve the module: tenants on a good build, on a build that answers
30 % of requests with 500 and slowly (fleet-wide knob), on a good build that is bad on one tenant
only (tenant knob), and one without traffic. Windows are 5 s: at least 4 scrape intervals, so
``rate()`` always has samples; the module waits for the scrapes (polling Prometheus), never sleeps.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from deploy import promql
from deploy.analysis import Analyzer, StepVerdict, Verdict
from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.errors import ConfigErrors
from deploy.runner import Runner
from deploy.settings import AnalysisSettings, HttpSettings
from deploy.sim.fleet import FleetSim, TenantSpec
from deploy.sim.local_prometheus import RunningPrometheus
from deploy.sim.metrics import Health
from deploy.sim.server import SimServer
from tests.actions_runner import ROOT
from tests.prometheus_fixture import start
from tests.support import log_of

GOOD, BAD = "a" * 40, "b" * 40
GOOD_TAG, BAD_TAG = "staging-aaaaaaa", "staging-bbbbbbb"
ERRORS = ('errors: sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[5s])) '
          '/ sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}"}[5s])) < 0.05')
P99 = ('p99: histogram_quantile(0.99, sum by (tenant, le) '
       '(rate(http_request_duration_seconds_bucket{tenant=~"{tenants}"}[5s]))) < 0.5')
TOKEN = "prom-token-b7e1c4d9"

# slug → (build it runs, knobs)
TENANTS = {
    "t01": (GOOD, {}),
    "t02": (GOOD, {}),
    "t-one.x": (GOOD, {}),  # a '.' in a slug: unescaped, its regex would match the bad "t-one-x" too
    "t-one-x": (BAD, {}),
    "b_01": (BAD, {}),
    "b_02": (BAD, {}),
    "one-bad": (GOOD, {"health": {GOOD_TAG: Health(error_ratio=0.3)}}),  # the good build, bad here only
    "quiet": (GOOD, {"request_rate": 0.0}),
    "turns-bad": (GOOD, {}),  # moved to the bad build by the watch test
}


@dataclass
class Scene:
    sim: FleetSim
    server: SimServer
    prometheus: RunningPrometheus
    first_scrapes: float  # seconds from ready to 4 scrapes of every tenant


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    sim = FleetSim([TenantSpec(slug, **knobs) for slug, (_, knobs) in TENANTS.items()],
                   builds={GOOD_TAG: GOOD, BAD_TAG: BAD},
                   build_health={BAD_TAG: Health(error_ratio=0.3, latency=0.8)})
    for slug, (build, _) in TENANTS.items():
        sim.mark_deployed(slug, build)
    with SimServer([sim]) as server:
        prometheus = start(tmp_path_factory.mktemp("prometheus"), server, list(TENANTS))
        try:
            waited = prometheus.wait_for_scrapes(4)
            yield Scene(sim, server, prometheus, waited)
        finally:
            prometheus.stop()


def analyzer(url: str, lines: str = f"{ERRORS}\n{P99}", **knobs) -> Analyzer:
    queries, problems = promql.parse_queries(lines)
    assert not problems
    runner = Runner(stream=io.StringIO())
    runner.mask(TOKEN)
    settings = AnalysisSettings(url=url, queries=queries, token=TOKEN, interval=1.0, **knobs)
    return Analyzer(settings, HttpSettings(request_timeout=5, retry_delays=(0.1,)),
                    Context(runner, Deadline.starting_now(Clock(), 120)))


def test_a_good_build_passes_on_exactly_the_tenants_asked_for(scene):
    with analyzer(scene.prometheus.url) as checks:
        checks.validate(list(TENANTS))
        result = checks.evaluate("canary", ["t01", "t02", "t-one.x"])
    assert result.verdict is StepVerdict.PASS, result.reason
    errors, p99 = result.evaluations
    assert errors.series_count == 3 and errors.value == 0  # t-one-x (30 % errors) is not among them
    assert p99.verdict is Verdict.PASS and 0.01 < p99.value <= 0.025  # 20 ms requests: the 25 ms bucket
    assert '\\\\.' in errors.query and "t-one\\\\.x" in errors.query  # the query as sent, escaped


def test_a_build_with_30_percent_errors_fails_naming_each_tenant_series(scene):
    with analyzer(scene.prometheus.url) as checks:
        result = checks.evaluate("canary", ["b_01", "b_02"])
    assert result.verdict is StepVerdict.FAIL and result.query == "errors"
    errors, p99 = result.evaluations
    assert errors.value == pytest.approx(0.3) and errors.series_count == 2
    assert sorted(errors.failing) == ['tenant="b_01"', 'tenant="b_02"']
    assert result.reason.startswith(f'errors = {errors.value:g} on tenant="b_0') and ", not < 0.05" in result.reason
    assert p99.verdict is Verdict.FAIL and 0.5 < p99.value <= 1.0  # 0.8 s requests: the 1 s bucket


def test_a_build_bad_on_one_tenant_fails_only_for_that_tenant(scene):
    with analyzer(scene.prometheus.url, ERRORS) as checks:
        result = checks.evaluate("batch 2/3", ["t01", "one-bad", "t02"])
    (errors,) = result.evaluations
    assert result.verdict is StepVerdict.FAIL and errors.failing == ('tenant="one-bad"',)
    assert errors.failing_count == 1 and errors.series_count == 3
    assert 'errors = 0.3 on tenant="one-bad", not < 0.05 (1 of 3 series fail)' in result.reason


def test_a_tenant_without_traffic_is_inconclusive_and_holds(scene):
    with analyzer(scene.prometheus.url) as checks:
        quiet = checks.evaluate("canary", ["quiet"])
        unknown = checks.evaluate("canary", ["nobody"])
    assert quiet.verdict is StepVerdict.HOLD and quiet.finding is Verdict.INCONCLUSIVE
    assert 'value NaN (0/0: no traffic in the window?) on tenant="quiet"' in quiet.reason
    assert unknown.verdict is StepVerdict.HOLD and "no data: the query returned no series" in unknown.reason


def test_report_only_records_the_failure_and_passes_the_step(scene):
    with analyzer(scene.prometheus.url, dry_run=True) as checks:
        result = checks.evaluate("canary", ["b_01"])
    assert result.verdict is StepVerdict.PASS and result.finding is Verdict.FAIL
    assert result.reason.startswith('report only: errors = ') and result.reason.endswith("(would fail)")


def test_a_query_prometheus_cannot_parse_is_a_configuration_error_naming_the_line(scene):
    broken = f'{ERRORS}\nbroken: sum(rat(http_requests_total{{tenant=~"{{tenants}}"}}[5s])) < 1'  # no such function
    with analyzer(scene.prometheus.url, broken) as checks, pytest.raises(ConfigErrors) as caught:
        checks.validate(["t01"])
    (error,) = caught.value.errors
    assert error.input_name == "analysis-query"
    assert error.message.startswith("line 2 (broken): the API at http://127.0.0.1:")
    assert 'parse error: unknown function with name "rat"' in error.message and checks.evaluations == []


def test_a_watch_sees_a_tenant_turn_bad_and_stops_the_step(scene):
    with analyzer(scene.prometheus.url, ERRORS) as checks:
        steady = checks.watch("canary", ["turns-bad"], 2)
        scene.sim.mark_deployed("turns-bad", BAD)
        scene.prometheus.wait_for_scrapes(2)
        result = checks.watch("bake", ["turns-bad"], 20)
    assert steady.verdict is StepVerdict.PASS and len(steady.evaluations) == 2
    assert result.verdict is StepVerdict.FAIL and result.evaluations[-1].series == 'tenant="turns-bad"'
    assert result.evaluations[-1].at - result.evaluations[0].at < 15  # stopped early, not at the end of the bake
    lines = log_of(checks.ctx.runner).splitlines()
    assert sum(line.startswith("analysis · bake · errors") for line in lines) == len(result.evaluations)


def test_a_stopped_prometheus_is_inconclusive_never_a_pass(tmp_path, scene):
    own = start(tmp_path / "prometheus", scene.server, ["t01"])
    with analyzer(own.url) as checks:
        checks.validate(["t01"])  # up: the query is accepted
        own.stop()
        result = checks.evaluate("promote", ["t01"])
    assert result.verdict is StepVerdict.HOLD and result.finding is Verdict.INCONCLUSIVE
    assert "connection refused" in result.reason


def test_the_prometheus_fixture_is_quick_to_start(scene):
    assert scene.prometheus.ready_seconds < 5
    assert scene.first_scrapes < 20  # Prometheus 2.42 starts scraping ~5 s after start, then every second


def readme_queries() -> str:
    """``analysis-query`` of the README's copy-paste step, as a workflow would pass it."""
    block = (ROOT / "README.md").read_text().split("<!-- analysis-queries:start -->")[1]
    step = yaml.safe_load(block.split("```yaml")[1].split("```")[0])[0]
    return step["with"]["analysis-query"]


def test_the_readmes_query_set_runs_on_prometheus_and_tells_good_from_bad(scene):
    with analyzer(scene.prometheus.url, readme_queries()) as checks:
        checks.validate(list(TENANTS))
        good = checks.evaluate("canary", ["t01", "t02"])
        bad = checks.evaluate("batch 1/2", ["t01", "b_01"])
        quiet = checks.evaluate("batch 2/2", ["t02", "quiet"])
    assert [e.name for e in good.evaluations] == ["errors", "p99", "traffic"]
    assert good.verdict is StepVerdict.PASS, good.reason
    assert bad.verdict is StepVerdict.FAIL and bad.query == "errors"
    assert bad.evaluations[0].value == pytest.approx(0.3)
    assert 'on tenant="b_01", not < 0.01 (1 of 2 series fail)' in bad.reason
    assert [e.verdict for e in bad.evaluations] == [Verdict.FAIL, Verdict.FAIL, Verdict.PASS]
    assert quiet.verdict is StepVerdict.FAIL and quiet.query == "traffic"
    assert quiet.reason.startswith('traffic = 0 on tenant="quiet", not >= 20')
