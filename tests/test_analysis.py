"""The analysis client and its judgement, pinned with requests-mock: what is sent, how an answer is
judged, how a step decides (failure limit, report only, inconclusive), on a fake clock.

The same client against a real Prometheus is ``test_analysis_prometheus.py``; against servers that
misbehave on purpose, ``test_analysis_hostile.py``.
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs

import pytest
import requests

from deploy import promql
from deploy.analysis import QUERY_KEPT, Analyzer, StepVerdict, Verdict
from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.errors import ConfigErrors, DeadlineExceeded, DeployFailed
from deploy.runner import Runner
from deploy.settings import AnalysisSettings, HttpSettings, Inconclusive
from tests.support import log_of

URL = "https://prometheus.example.com/api/prom"
QUERY_URL = f"{URL}/api/v1/query"
TOKEN = "prom-token-5f2c9e1a"
ERRORS = ('errors: sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[2m])) '
          '/ sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}"}[2m])) < 0.01')
P99 = 'p99: histogram_quantile(0.99, sum by (le) (rate(x_bucket{tenant=~"{tenants}"}[2m]))) <= 0.5'


def make(lines: str = ERRORS, *, interval: float = 10.0, timeout: float = 3600.0, **knobs) -> Analyzer:
    queries, problems = promql.parse_queries(lines)
    assert not problems, problems
    knobs.setdefault("token", TOKEN)
    settings = AnalysisSettings(url=URL, queries=queries, interval=interval, **knobs)
    runner = Runner(stream=io.StringIO())
    runner.mask(TOKEN)
    ctx = Context(runner, Deadline.starting_now(FakeClock(), timeout))
    return Analyzer(settings, HttpSettings(request_timeout=5, retry_delays=()), ctx)


def log(analyzer: Analyzer) -> str:
    return log_of(analyzer.ctx.runner)


def vector(*series: tuple[dict, object]) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [1_800_000_000.5, value]} for labels, value in series]}}


def scalar(value: object) -> dict:
    return {"status": "success", "data": {"resultType": "scalar", "result": [1_800_000_000.5, value]}}


PASSING = vector(({"tenant": "t01"}, "0.001"))
FAILING = vector(({"tenant": "t01"}, "0.31"))
EMPTY = vector()


def answers(requests_mock, *docs: dict) -> None:
    requests_mock.post(QUERY_URL, [{"json": doc} for doc in docs])


def sent(requests_mock) -> list[dict[str, list[str]]]:
    return [parse_qs(request.text) for request in requests_mock.request_history]


# -- what is sent ---------------------------------------------------------------------------


def test_a_query_is_posted_as_a_form_with_the_tenants_resolved_and_the_bearer_token(requests_mock):
    answers(requests_mock, PASSING)
    make().evaluate("canary", ["t01", "t.one"])
    request = requests_mock.last_request
    assert request.method == "POST" and request.url == QUERY_URL
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    form = parse_qs(request.text)
    assert form["query"] == ['sum by (tenant) (rate(http_requests_total{tenant=~"^(?:t01|t\\\\.one)$",code=~"5.."}'
                             '[2m])) / sum by (tenant) (rate(http_requests_total{tenant=~"^(?:t01|t\\\\.one)$"}[2m]))']
    assert form["timeout"] == ["5"] and "time" not in form  # the API's own now: no clock skew between us


def test_basic_credentials_go_in_a_basic_header(requests_mock):
    answers(requests_mock, PASSING)
    make(token="", username="123456", password="api-key-abcdef").evaluate("canary", ["t01"])
    assert requests_mock.last_request.headers["Authorization"] == "Basic MTIzNDU2OmFwaS1rZXktYWJjZGVm"


def test_validate_asks_at_the_runs_wall_clock_time(requests_mock):
    answers(requests_mock, EMPTY)
    analyzer = make()
    analyzer.validate(["t01"])
    form = parse_qs(requests_mock.last_request.text)
    assert float(form["time"][0]) == pytest.approx(analyzer.ctx.clock.wall())
    assert analyzer.evaluations == []  # plan time is no evaluation


def test_a_query_for_a_large_fleet_is_sent_whole_and_kept_short(requests_mock):
    answers(requests_mock, PASSING)
    tenants = [f"tenant-{i:05d}.eu" for i in range(10_000)]
    analyzer = make()
    analyzer.evaluate("promote", tenants)
    query = parse_qs(requests_mock.last_request.text)["query"][0]
    assert len(query) > 200_000 and "tenant-09999\\\\.eu" in query
    kept = analyzer.evaluations[0].query
    assert kept.startswith(query[:QUERY_KEPT]) and len(kept) < QUERY_KEPT + 60 and "more characters)" in kept


def test_no_tenants_is_a_caller_error_not_a_query_of_every_series(requests_mock):
    with pytest.raises(ValueError, match="no tenants"):
        make().evaluate("canary", [])
    assert not requests_mock.called


# -- how an answer is judged ----------------------------------------------------------------


def test_a_vector_fails_if_any_series_fails_and_is_named_by_the_worst(requests_mock):
    answers(requests_mock, vector(({"tenant": "t01"}, "0.31"), ({"tenant": "t02"}, "0.001"),
                                  ({"tenant": "t03"}, "0.5")))
    result = make().evaluate("batch 2/5", ["t01", "t02", "t03"])
    assert result.verdict is StepVerdict.FAIL and result.finding is Verdict.FAIL and result.query == "errors"
    assert result.reason == 'errors = 0.5 on tenant="t03", not < 0.01 (2 of 3 series fail)'
    (evaluation,) = result.evaluations
    assert evaluation.failing == ('tenant="t03"', 'tenant="t01"') and evaluation.series_count == 3
    assert (evaluation.value, evaluation.threshold, evaluation.op) == (0.5, 0.01, "<")


def test_a_passing_vector_is_shown_by_the_series_nearest_to_failing(requests_mock):
    answers(requests_mock, vector(({"tenant": "t01"}, "0.001"), ({"tenant": "t02"}, "0.009"),
                                  ({"tenant": "t03"}, "0")))
    result = make().evaluate("canary", ["t01", "t02", "t03"])
    assert result.verdict is StepVerdict.PASS and result.reason == "errors passed 1 evaluation"
    assert result.evaluations[0].summary == 'errors = 0.009 on tenant="t02" (worst of 3 series) < 0.01'


@pytest.mark.parametrize(("doc", "verdict", "summary"), [
    (scalar("0.2"), Verdict.FAIL, "errors = 0.2, not < 0.01"),
    (scalar("0.002"), Verdict.PASS, "errors = 0.002 < 0.01"),
    (vector(({}, "0.2")), Verdict.FAIL, "errors = 0.2, not < 0.01"),  # sum(): one series without labels
    (scalar(0.2), Verdict.FAIL, "errors = 0.2, not < 0.01"),  # a compatible API that sends numbers
])
def test_a_scalar_or_a_series_without_labels_is_judged_by_its_value(requests_mock, doc, verdict, summary):
    answers(requests_mock, doc)
    evaluation = make().evaluate("canary", ["t01"]).evaluations[0]
    assert (evaluation.verdict, evaluation.summary) == (verdict, summary)


@pytest.mark.parametrize(("line", "value", "verdict"), [
    ("q: x > 5", "5", Verdict.FAIL), ("q: x >= 5", "5", Verdict.PASS), ("q: x <= 5", "5.0001", Verdict.FAIL),
    ("q: x == 1", "1", Verdict.PASS), ("q: x != 1", "1", Verdict.FAIL), ("q: x > -1", "-0.5", Verdict.PASS),
])
def test_every_comparison_is_applied_as_written(requests_mock, line, value, verdict):
    answers(requests_mock, scalar(value))
    assert make(line).evaluate("canary", ["t01"]).evaluations[0].verdict is verdict


INCONCLUSIVE = [
    ("empty", {"json": EMPTY}, "no data: the query returned no series"),
    ("nan", {"json": vector(({"tenant": "t01"}, "NaN"))}, 'value NaN (0/0: no traffic in the window?) on tenant="t01"'),
    ("inf", {"json": vector(({"tenant": "t01"}, "+Inf"))}, "value +Inf"),
    ("minus-inf", {"json": scalar("-Inf")}, "the scalar has value -Inf"),
    ("text", {"json": vector(({"tenant": "t01"}, "abc"))}, "a value that is not a number: \"abc\""),
    ("bool", {"json": vector(({"tenant": "t01"}, True))}, "a value that is not a number: true"),
    ("long-number", {"json": scalar("1" * 5000)}, "not a number"),
    ("no-sample", {"json": {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}},
     "a sample that is not [time, value]"),
    ("matrix", {"json": {"status": "success", "data": {"resultType": "matrix", "result": []}}},
     "range vector (matrix)"),
    ("string", {"json": {"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}}, "a string"),
    ("unknown-type", {"json": {"status": "success", "data": {"resultType": ["x"], "result": []}}},
     'result of type ["x"]'),
    ("result-not-list", {"json": {"status": "success", "data": {"resultType": "vector", "result": {}}}},
     "the vector's result is not a list"),
    ("no-data", {"json": {"status": "success"}}, "success without a data object"),
    ("not-object", {"json": [1, 2]}, "JSON that is not an object"),
    ("status-error", {"json": {"status": "error", "errorType": "execution", "error": "many-to-many matching"}},
     'the API answered status "error": many-to-many matching'),
    ("422", {"status_code": 422, "json": {"status": "error", "errorType": "execution", "error": "query timed out"}},
     "the API answered HTTP 422: query timed out"),
    ("401", {"status_code": 401, "text": "Unauthorized"}, "HTTP 401: Unauthorized"),
    ("redirect", {"status_code": 302, "headers": {"Location": "https://elsewhere.example/api/v1/query"}},
     "HTTP 302: a redirect to another origin, not followed"),
    ("html", {"text": "<html><head><title>Grafana</title></head></html>"}, "HTML page: Grafana"),
    ("nested", {"text": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
    ("connection", {"exc": requests.ConnectionError("refused")}, "no answer from the API"),
]


@pytest.mark.parametrize(("answer", "detail"), [row[1:] for row in INCONCLUSIVE], ids=[row[0] for row in INCONCLUSIVE])
def test_what_cannot_be_judged_is_inconclusive_and_holds_never_passes(requests_mock, answer, detail):
    requests_mock.post(QUERY_URL, **answer)
    result = make().evaluate("canary", ["t01"])
    assert result.verdict is StepVerdict.HOLD and result.finding is Verdict.INCONCLUSIVE
    (evaluation,) = result.evaluations
    assert evaluation.verdict is Verdict.INCONCLUSIVE and evaluation.value is None
    assert detail in evaluation.detail
    assert result.reason.startswith("errors is inconclusive: ")
    assert result.reason.endswith("(analysis-inconclusive: hold)")


def test_inconclusive_fails_the_step_when_analysis_inconclusive_says_fail(requests_mock):
    answers(requests_mock, EMPTY)
    result = make(inconclusive=Inconclusive.FAIL).evaluate("canary", ["t01"])
    assert result.verdict is StepVerdict.FAIL and result.finding is Verdict.INCONCLUSIVE
    assert result.reason.endswith("(analysis-inconclusive: fail)")


def test_a_failing_series_outweighs_a_series_without_a_value(requests_mock):
    answers(requests_mock, vector(({"tenant": "quiet"}, "NaN"), ({"tenant": "t01"}, "0.3")))
    result = make().evaluate("canary", ["quiet", "t01"])
    assert result.finding is Verdict.FAIL and 'on tenant="t01"' in result.reason


def test_one_series_without_a_value_makes_a_passing_vector_inconclusive(requests_mock):
    answers(requests_mock, vector(({"tenant": "t01"}, "0.001"), ({"tenant": "quiet"}, "NaN")))
    evaluation = make().evaluate("canary", ["quiet", "t01"]).evaluations[0]
    assert evaluation.verdict is Verdict.INCONCLUSIVE
    assert evaluation.detail == 'value NaN (0/0: no traffic in the window?) on tenant="quiet" (1 of 2 series without ' \
                                'a usable value)'


def test_labels_a_server_chose_are_bounded_on_one_line(requests_mock):
    labels = {f"l{i}": "v\n" * 500 for i in range(20)} | {"tenant": {"nested": [1]}}
    answers(requests_mock, vector((labels, "1")))
    evaluation = make().evaluate("canary", ["t01"]).evaluations[0]
    assert len(evaluation.series) <= 200 and "\n" not in evaluation.series and evaluation.verdict is Verdict.FAIL


# -- how a step decides ---------------------------------------------------------------------


def test_a_watch_evaluates_every_interval_from_one_interval_in_to_the_end(requests_mock):
    answers(requests_mock, *[PASSING] * 6)
    analyzer = make(interval=10)
    result = analyzer.watch("canary", ["t01"], 55)
    assert [e.at for e in result.evaluations] == [10, 20, 30, 40, 50, 55]
    assert result.verdict is StepVerdict.PASS and result.reason == "errors passed 6 evaluations over 55 s"
    assert result.at == 55


def test_a_watch_shorter_than_the_interval_evaluates_once_at_its_end(requests_mock):
    answers(requests_mock, PASSING)
    result = make(interval=30).watch("batch 1/3", ["t01"], 12)
    assert [e.at for e in result.evaluations] == [12]


def test_a_failure_ends_the_watch_at_once(requests_mock):
    answers(requests_mock, PASSING, FAILING, PASSING)
    result = make(interval=10).watch("canary", ["t01"], 60)
    assert result.verdict is StepVerdict.FAIL and [e.at for e in result.evaluations] == [10, 20]
    assert requests_mock.call_count == 2


def test_the_failure_limit_counts_consecutive_failed_evaluations_of_a_query(requests_mock):
    answers(requests_mock, FAILING, FAILING, PASSING, FAILING, FAILING, FAILING)
    result = make(interval=10, failure_limit=3).watch("canary", ["t01"], 60)
    assert result.verdict is StepVerdict.FAIL and result.evaluations[-1].at == 60
    assert result.reason == 'errors = 0.31 on tenant="t01", not < 0.01 (3 evaluations in a row)'


def test_failures_below_the_limit_that_end_before_the_watch_does_pass(requests_mock):
    answers(requests_mock, FAILING, FAILING, PASSING, PASSING)
    result = make(interval=10, failure_limit=3).watch("canary", ["t01"], 40)
    assert result.verdict is StepVerdict.PASS and len(result.evaluations) == 4


def test_a_failure_streak_open_at_the_end_is_settled_by_evaluating_again(requests_mock):
    answers(requests_mock, PASSING, FAILING, FAILING, FAILING, PASSING)
    analyzer = make(interval=10, failure_limit=3)
    result = analyzer.watch("canary", ["t01"], 20)  # ends on a failure: evaluated again until the streak decides
    assert result.verdict is StepVerdict.FAIL and [e.at for e in result.evaluations] == [10, 20, 30, 40]
    answers(requests_mock, FAILING, PASSING)
    result = analyzer.watch("batch 1/2", ["t02"], 0)  # a one-shot check: a failure is re-checked, then cleared
    assert result.verdict is StepVerdict.PASS and len(result.evaluations) == 2


def test_an_inconclusive_evaluation_neither_counts_nor_clears_a_failure_streak(requests_mock):
    answers(requests_mock, FAILING, EMPTY, FAILING)
    result = make(interval=10, failure_limit=2).watch("canary", ["t01"], 30)
    assert result.verdict is StepVerdict.FAIL and "(2 evaluations in a row)" in result.reason


def test_consecutive_inconclusive_evaluations_decide_by_the_limit_too(requests_mock):
    answers(requests_mock, EMPTY, PASSING, EMPTY, EMPTY)
    result = make(interval=10, failure_limit=2).watch("canary", ["t01"], 60)
    assert result.verdict is StepVerdict.HOLD and [e.at for e in result.evaluations] == [10, 20, 30, 40]


def test_a_failure_in_any_query_decides_and_a_failure_beats_an_inconclusive(requests_mock):
    answers(requests_mock, EMPTY, scalar("0.9"))  # errors: no data; p99: fails — both in one round
    result = make(f"{ERRORS}\n{P99}").evaluate("canary", ["t01"])
    assert result.verdict is StepVerdict.FAIL and result.query == "p99"
    assert result.reason == "p99 = 0.9, not <= 0.5"


def test_report_only_evaluates_the_whole_watch_and_never_stops_the_step(requests_mock):
    answers(requests_mock, PASSING, FAILING, FAILING, PASSING)
    analyzer = make(interval=10, dry_run=True)
    result = analyzer.watch("canary", ["t01"], 40)
    assert result.verdict is StepVerdict.PASS and result.finding is Verdict.FAIL and result.report_only
    assert len(result.evaluations) == 4 and requests_mock.call_count == 4
    assert result.reason == 'report only: errors = 0.31 on tenant="t01", not < 0.01 (would fail)'
    answers(requests_mock, EMPTY)
    held = analyzer.evaluate("promote", ["t01"])
    assert held.verdict is StepVerdict.PASS and held.reason.endswith("(would hold)")
    answers(requests_mock, PASSING)
    assert analyzer.evaluate("promote", ["t01"]).reason == "report only: errors passed 1 evaluation"


def test_every_evaluation_is_kept_across_steps_and_each_step_has_its_own(requests_mock):
    answers(requests_mock, PASSING, PASSING, PASSING)
    analyzer = make(f"{ERRORS}\n{P99}")
    first = analyzer.evaluate("canary", ["t01"])
    second = analyzer.evaluate("batch 1/1", ["t02"])
    assert [e.name for e in first.evaluations] == ["errors", "p99"] and len(second.evaluations) == 2
    assert [e.step for e in analyzer.evaluations] == ["canary", "canary", "batch 1/1", "batch 1/1"]
    assert "t02" in second.evaluations[0].query and "t02" not in first.evaluations[0].query


def test_a_watch_past_the_overall_timeout_is_the_runs_timeout(requests_mock):
    answers(requests_mock, PASSING)
    with pytest.raises(DeadlineExceeded, match="analysing canary"):
        make(interval=10, timeout=25).watch("canary", ["t01"], 60)


def test_a_step_logs_its_start_each_evaluation_and_its_verdict_never_the_token(requests_mock):
    requests_mock.post(QUERY_URL, status_code=403, json={"status": "error", "error": f"bad token {TOKEN} sent"})
    analyzer = make(f"{ERRORS}\n{P99}")
    analyzer.evaluate("canary", ["t01"])
    lines = log(analyzer).splitlines()
    assert lines[0] == "analysis · canary: 2 queries over 1 tenant(s), once" and len(lines) == 4
    assert lines[1].startswith("analysis · canary · errors is inconclusive: the API answered HTTP 403")
    assert lines[2].startswith("analysis · canary · p99 is inconclusive: the API answered HTTP 403")
    assert lines[3].startswith("analysis · canary: hold — errors is inconclusive")
    assert TOKEN not in log(analyzer) and TOKEN[:8] not in log(analyzer)
    assert all(TOKEN not in e.detail for e in analyzer.evaluations)


# -- plan time --------------------------------------------------------------------------------


def test_validate_names_every_query_the_api_cannot_parse(requests_mock):
    bad = {"status_code": 400, "json": {"status": "error", "errorType": "bad_data",
                                        "error": 'invalid parameter "query": 1:15: parse error: unclosed left paren'}}
    matrix = {"json": {"status": "success", "data": {"resultType": "matrix", "result": []}}}
    requests_mock.post(QUERY_URL, [bad, matrix])
    with pytest.raises(ConfigErrors) as caught:
        make(f"{ERRORS}\nrange: x{{tenant=~\"{{tenants}}\"}}[5m] < 1").validate(["t01"])
    first, second = caught.value.errors
    assert first.input_name == second.input_name == "analysis-query"
    assert first.message.startswith("line 1 (errors): the API at https://prometheus.example.com/api/prom cannot run it")
    assert "parse error: unclosed left paren" in first.message
    assert second.message.startswith("line 2 (range): returns a range vector (matrix)")


@pytest.mark.parametrize(("answer", "words"), [
    ({"status_code": 401, "text": "invalid token"}, "check analysis-token"),
    ({"exc": requests.ConnectionError("refused")}, "no answer from the API"),
    ({"status_code": 503, "text": "<html><title>503 Service Unavailable</title></html>"}, "HTTP 503"),
    ({"text": "<html><title>Grafana</title></html>"}, "HTML page: Grafana"),
])
def test_validate_fails_the_run_when_the_api_gives_no_usable_answer(requests_mock, answer, words):
    requests_mock.post(QUERY_URL, **answer)
    with pytest.raises(DeployFailed) as caught:
        make().validate(["t01"])
    assert not isinstance(caught.value, ConfigErrors)
    assert words in str(caught.value) and "nothing was deployed" in str(caught.value)


def test_validate_accepts_an_empty_answer(requests_mock):
    answers(requests_mock, EMPTY, scalar("NaN"))
    analyzer = make(f"{ERRORS}\n{P99}")
    analyzer.validate(["t01"])  # no traffic yet is not a configuration error
    assert "2 queries accepted" in log(analyzer)


# -- a step never passes on a failed last word -------------------------------------------------------

QUERY_A = 'a: sum(x{tenant=~"{tenants}"}) < 0.01'
QUERY_B = 'b: sum(y{tenant=~"{tenants}"}) < 0.01'
UNDECIDED = vector(({"tenant": "t01"}, "NaN"))


def test_a_streak_opened_by_another_query_while_settling_is_settled_too(requests_mock):
    answers(requests_mock, FAILING, PASSING, PASSING, FAILING, PASSING, PASSING)  # a fails; then b fails; both pass
    result = make(f"{QUERY_A}\n{QUERY_B}", failure_limit=2).evaluate("promote", ["t01"])

    assert result.verdict is StepVerdict.PASS
    assert [e.verdict for e in result.evaluations[-2:]] == [Verdict.PASS, Verdict.PASS]
    assert result.reason == ("a, b: 6 evaluations (4 pass, 2 fail), no streak reached the limit and the last "
                             "passed")


def test_a_streak_still_open_after_settling_is_inconclusive_never_a_pass(requests_mock):
    # limit 4: a failure, then inconclusive and failed answers that never make 4 in a row nor pass
    answers(requests_mock, FAILING, *([UNDECIDED] * 3 + [FAILING]) * 2, PASSING)
    result = make(QUERY_A, failure_limit=4).evaluate("promote", ["t01"])

    assert result.evaluations[-1].verdict is Verdict.FAIL and len(result.evaluations) == 9
    assert (result.verdict, result.finding) == (StepVerdict.HOLD, Verdict.INCONCLUSIVE)
    assert result.reason.startswith("a = 0.31 on tenant=\"t01\", not < 0.01 (still not passing after 8 more")


def test_report_only_goes_on_when_the_api_cannot_be_read_at_plan_time(requests_mock):
    requests_mock.post(QUERY_URL, status_code=503, text="down")
    analyzer = make(QUERY_A, dry_run=True)
    analyzer.validate(["t01"])  # no DeployFailed: a gate being tried out never stops a run

    said = analyzer.ctx.runner.stream.getvalue()
    assert "warning: metric analysis: " in said and "report only (analysis-dry-run), so the rollout goes on" in said
    assert "analysis: 0 of 1 queries checked by " in said


def test_report_only_still_refuses_a_query_the_api_cannot_parse(requests_mock):
    requests_mock.post(QUERY_URL, status_code=400, json={"status": "error", "errorType": "bad_data",
                                                         "error": "parse error at char 3"})
    with pytest.raises(ConfigErrors, match="line 1"):
        make(QUERY_A, dry_run=True).validate(["t01"])


def test_a_watch_cut_short_keeps_its_evaluations(requests_mock):
    answers(requests_mock, PASSING, PASSING)
    watch = make(QUERY_A, interval=1.0).start("canary", ["t01"], 5.0)
    watch.analyzer.ctx.clock.sleep(1.0)
    watch.tick()
    result = watch.cut("the canary's proof halted the step")

    assert (result.verdict, result.finding, len(result.evaluations)) == (StepVerdict.CUT, Verdict.INCONCLUSIVE, 1)
    assert result.reason == "cut short after 1 evaluation: the canary's proof halted the step"
