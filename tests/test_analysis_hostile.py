"""A hostile metrics API: each row misbehaves at byte level (:class:`tests.hostile.HostileServer`), and the
analysis must end within its budget, never leak the token in any form, and never pass.

The client's budget in every row: 1 s per exchange (request-timeout), one retry 0.05 s later, so an
evaluation is over in about 2 s whatever the server does; each row allows 4 s of wall time.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from deploy import config, promql
from deploy.analysis import Analyzer, StepVerdict, Verdict
from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.errors import DeadlineExceeded
from deploy.runner import Runner
from deploy.settings import AnalysisSettings, HttpSettings
from deploy.sim.local_registry import free_port
from tests.hostile import (
    Behaviour,
    HostileServer,
    drip_body,
    drip_headers,
    echo_auth,
    gzip_bomb,
    hang,
    html_titles,
    huge_body,
    json_answer,
    nested_json,
    respond,
    truncated,
)
from tests.support import log_of

TOKEN = 'pmK7+Vq/Xw9=Lr&<m>"Tz4'  # every encoding changes it: each form is a different string
PATH = "/api/v1/query"
QUERY = 'errors: sum(rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[2m])) < 0.01'
BUDGET = 4.0


def vector_of(value: object) -> dict:
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": {"tenant": "t01"}, "value": [1.8e9, value]}]}}


ROWS: list[tuple[str, Callable[[], Behaviour], str]] = [
    ("hang", hang, "no complete answer within 1 s (2 attempts)"),
    ("drip-headers", lambda: drip_headers(200, json.dumps(vector_of("0")).encode(), interval=0.1),
     "no complete answer within 1 s"),
    ("drip-body", lambda: drip_body(200, json.dumps(vector_of("0")).encode() + b" " * 4096, interval=0.1),
     "no complete answer within 1 s"),
    ("drip-502", lambda: drip_body(502, interval=0.1), "no complete answer within 1 s"),
    ("html-200", lambda: respond(200, "<!doctype html><html><title>Grafana</title><body>login</body></html>",
                                 content_type="text/html"), "a body that is not JSON: HTML page: Grafana"),
    ("html-titles-500", lambda: html_titles(500), "HTTP 500: HTML page (not JSON)"),
    ("html-503-retried", lambda: respond(503, "<html><title>503 Service Unavailable</title></html>",
                                         content_type="text/html"), "HTTP 503: HTML page: 503 Service Unavailable"),
    ("huge-declared", lambda: huge_body(20, prefix=b'{"status": "success", "data": {"result": ['),
     "a body over 8 MiB"),
    ("huge-undeclared", lambda: huge_body(20, content_length=False, prefix=b'{"status": "success", "data": ['),
     "a body over 8 MiB"),
    ("gzip-bomb", gzip_bomb, "a body over 8 MiB"),
    ("nested", nested_json, "not JSON (nested too deeply)"),
    ("truncated", lambda: truncated(200, prefix=b'{"status": "success", "data": {'), "no answer from the API"),
    ("nan", lambda: json_answer(vector_of("NaN")), "value NaN"),
    ("inf", lambda: json_answer(vector_of("+Inf")), "value +Inf"),
    ("status-error", lambda: json_answer({"status": "error", "errorType": "internal", "error": "boom"}),
     'status "error": boom'),
    ("data-a-list", lambda: json_answer({"status": "success", "data": [1, 2]}), "without a data object"),
    ("result-a-string", lambda: json_answer({"status": "success", "data": {"resultType": "vector", "result": "x"}}),
     "the vector's result is not a list"),
    ("value-an-object", lambda: json_answer(vector_of({"v": 1})), "a value that is not a number"),
    ("labels-a-list", lambda: json_answer({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": ["tenant"], "value": [1, "NaN"]}]}}), "labels that are not an object"),
    ("echo-token-401", lambda: echo_auth(401), "HTTP 401: denied, you sent:"),
    ("echo-token-200", lambda: echo_auth(200), 'status null: denied, you sent:'),
]


def analyzer_for(url: str, *, timeout: float = 60.0, request_timeout: float = 1.0) -> Analyzer:
    queries, problems = promql.parse_queries(QUERY)
    assert not problems
    env = {config.env_name("analysis-token"): TOKEN}
    runner = Runner(stream=io.StringIO())
    runner.mask(*config.secrets_in(env))  # as the entrypoint registers it
    ctx = Context(runner, Deadline.starting_now(Clock(), timeout))
    settings = AnalysisSettings(url=url, queries=queries, token=TOKEN, interval=5)
    return Analyzer(settings, HttpSettings(request_timeout=request_timeout, retry_delays=(0.05,)), ctx)


def leaks(text: str, secret: str) -> list[str]:
    """Forms of ``secret`` found in ``text``: raw, URL-quoted, HTML- and JSON-escaped, base64 (also of
    ``Bearer <secret>``), or any 6 characters of one of them."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), html.escape(secret), json.dumps(secret)[1:-1],
             base64.b64encode(secret.encode()).decode().rstrip("="),
             base64.b64encode(f"Bearer {secret}".encode()).decode().rstrip("=")[12:]}
    return [form[i:i + 6] for form in forms for i in range(len(form) - 5) if form[i:i + 6] in text]


@pytest.mark.parametrize(("make", "detail"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_a_hostile_metrics_api_ends_in_time_leaks_nothing_and_never_passes(make, detail):
    with HostileServer(give_up=10) as server:
        server.add(make(), path=PATH)
        analyzer = analyzer_for(server.url)
        started = time.monotonic()
        result = analyzer.evaluate("canary", ["t01", "t.one"])
        took = time.monotonic() - started
        analyzer.close()
    assert took < BUDGET, f"{took:.1f} s"
    assert result.verdict is StepVerdict.HOLD and result.finding is Verdict.INCONCLUSIVE
    (evaluation,) = result.evaluations
    assert evaluation.verdict is Verdict.INCONCLUSIVE and detail in evaluation.detail, evaluation.detail
    visible = log_of(analyzer.ctx.runner) + repr(result)
    assert not leaks(visible, TOKEN)
    assert all(len(line) <= 4096 for line in visible.splitlines())


def test_an_unreachable_api_is_inconclusive_at_once():
    analyzer = analyzer_for(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = analyzer.evaluate("canary", ["t01"])
    assert time.monotonic() - started < BUDGET
    assert result.verdict is StepVerdict.HOLD and "connection refused (2 attempts)" in result.reason


def test_a_transient_503_is_retried_and_then_judged():
    with HostileServer() as server:
        server.add(respond(503, "<html><title>503</title></html>", content_type="text/html"), path=PATH, times=1)
        server.add(json_answer(vector_of("0.001")), path=PATH)
        analyzer = analyzer_for(server.url)
        result = analyzer.evaluate("canary", ["t01"])
    assert result.verdict is StepVerdict.PASS and len(server.seen(PATH)) == 2
    assert "HTTP 503: HTML page: 503; retrying in 0.05 s (attempt 2/2)" in log_of(analyzer.ctx.runner)
    assert all(seen.headers["authorization"] == f"Bearer {TOKEN}" for seen in server.seen(PATH))


def test_the_overall_timeout_cuts_a_hanging_api():
    with HostileServer(give_up=10) as server:
        server.add(hang(), path=PATH)
        analyzer = analyzer_for(server.url, timeout=1.5, request_timeout=30)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            analyzer.watch("canary", ["t01"], 30)
    assert time.monotonic() - started < 1.5 + 1.0


def test_a_hanging_api_at_plan_time_fails_the_run_within_its_budget():
    with HostileServer(give_up=10) as server:
        server.add(hang(), path=PATH)
        analyzer = analyzer_for(server.url)
        started = time.monotonic()
        with pytest.raises(Exception, match="gave no usable answer to errors at plan time") as caught:
            analyzer.validate(["t01"])
    assert time.monotonic() - started < BUDGET
    assert not leaks(str(caught.value), TOKEN)
