"""The analysis-* inputs: parsed once, every bad one named (exit 2), secrets masked and never echoed."""

from __future__ import annotations

import base64
import io

import pytest

from deploy import config
from deploy.runner import Runner
from deploy.settings import AnalysisSettings, Comparison, Config
from deploy.sim.fleet import TenantSpec
from tests.support import CP_TOKEN, assert_no_secrets

BASE = {"FLEET_CP_URL": "https://cp.example.com", "FLEET_CP_TOKEN": "t0k", "FLEET_SHA": "8ddce85f3b2a"}
QUERIES = """
# error rate, then p99 latency
errors: sum(rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[2m])) / sum(rate(http_requests_total{tenant=~"{tenants}"}[2m])) < 0.01
p99: histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{tenant=~"{tenants}"}[2m]))) <= 0.5
"""  # noqa: E501 - a query line as a user writes it
ANALYSIS = {"FLEET_ANALYSIS_URL": "https://prometheus.example.com/api/prom", "FLEET_ANALYSIS_QUERY": QUERIES}


def load(**overrides: str) -> Config:
    return config.load({**BASE, **ANALYSIS, **{config.env_name(k.replace("_", "-")): v for k, v in overrides.items()}})


def errors_for(**overrides: str) -> dict[str, str]:
    env = {**BASE, **ANALYSIS}
    for name, value in overrides.items():
        key = config.env_name(name.replace("_", "-"))
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    with pytest.raises(config.ConfigErrors) as caught:
        config.load(env)
    errors: dict[str, str] = {}
    for error in caught.value.errors:
        errors[error.input_name] = errors.get(error.input_name, "") + str(error)
    return errors


def test_analysis_is_off_by_default_and_a_config_built_without_it_has_it_off():
    cfg = config.load(BASE)
    assert cfg.analysis == AnalysisSettings() and not cfg.analysis.enabled
    fields = {name: getattr(cfg, name) for name in Config.__dataclass_fields__ if name != "analysis"}
    assert Config(**fields).analysis == AnalysisSettings()  # code that builds a Config by hand keeps working


def test_the_analysis_inputs_parse():
    analysis = load(analysis_interval="15", analysis_failure_limit="3", analysis_inconclusive="FAIL",
                    analysis_dry_run="yes", analysis_token="prom-token-123456").analysis
    assert analysis.enabled and analysis.query_url == "https://prometheus.example.com/api/prom/api/v1/query"
    assert [(q.name, q.op, q.threshold, q.line) for q in analysis.queries] == [
        ("errors", Comparison.LT, 0.01, 3), ("p99", Comparison.LE, 0.5, 4)]
    assert (analysis.interval, analysis.failure_limit, analysis.inconclusive, analysis.dry_run) == (15, 3, "fail", True)
    assert analysis.token == "prom-token-123456" and "prom-token" not in repr(analysis)


def test_the_defaults_hold_on_inconclusive_and_fail_on_the_first_failure():
    analysis = load().analysis
    assert (analysis.interval, analysis.failure_limit) == (30, 1)
    assert (analysis.inconclusive, analysis.dry_run) == ("hold", False)


@pytest.mark.parametrize(
    ("overrides", "input_name", "words"),
    [
        ({"analysis_url": "http://prometheus.example.com"}, "analysis-url", "https://"),
        ({"analysis_url": "prometheus:9090"}, "analysis-url", "http(s) URL"),
        ({"analysis_url": "https://bot:pw-Secret-99@prom.example.com"}, "analysis-url", "analysis-token"),
        ({"analysis_url": "https://prom.example.com/?org=abcdefgh"}, "analysis-url", "without a query"),
        ({"analysis_url": None}, "analysis-url", "required when analysis-query is set"),
        ({"analysis_query": ""}, "analysis-query", "required when analysis-url is set"),
        ({"analysis_query": "errors: sum(rate(x[1m]))"}, "analysis-query", "line 1"),
        ({"analysis_query": "ok: x < 1\nerrors: x < nope"}, "analysis-query", "line 2 ('errors: x < nope')"),
        ({"analysis_interval": "0"}, "analysis-interval", "greater than 0"),
        ({"analysis_interval": "3601"}, "analysis-interval", "at most 3600 seconds"),
        ({"analysis_failure_limit": "0"}, "analysis-failure-limit", "at least 1"),
        ({"analysis_failure_limit": "101"}, "analysis-failure-limit", "at most 100"),
        ({"analysis_inconclusive": "pass"}, "analysis-inconclusive", "expected hold or fail"),
        ({"analysis_dry_run": "maybe"}, "analysis-dry-run", "true or false"),
        ({"analysis_username": "bot"}, "analysis-password", "go together"),
        ({"analysis_password": "pw-Secret-99"}, "analysis-username", "go together"),
        ({"analysis_token": "tok-123456789", "analysis_username": "bot", "analysis_password": "pw-Secret-99"},
         "analysis-token", "cannot be combined"),
        ({"analysis_token": "t\u00f6k\u20ac-with-euro"}, "analysis-token", "printable text on one line"),
    ],
)
def test_each_bad_analysis_input_is_named(overrides, input_name, words):
    errors = errors_for(**overrides)
    assert input_name in errors, errors
    assert words in errors[input_name]
    assert "pw-Secret-99" not in str(errors) and "euro" not in str(errors)


def test_every_bad_query_line_is_reported_at_once():
    errors = errors_for(analysis_query="a: x < 1\nb: y\n\nc: z < w\na: q > 2")
    message = errors["analysis-query"]
    assert "line 2" in message and "line 4" in message and "line 5: the name 'a' is already used on line 1" in message


def test_a_loopback_analysis_url_may_be_http_and_insecure_is_opt_in():
    assert load(analysis_url="http://127.0.0.1:9090").analysis.url == "http://127.0.0.1:9090"
    assert load(analysis_url="http://prom.lan:9090", allow_insecure_http="true").analysis.url.startswith("http://")


def test_analysis_secrets_are_masked_in_every_form():
    env = {**BASE, "FLEET_ANALYSIS_TOKEN": "glc_prom-token-abcdef", "FLEET_ANALYSIS_USERNAME": "123456",
           "FLEET_ANALYSIS_PASSWORD": "pässwörd-api-key"}
    found = config.secrets_in(env)
    assert {"glc_prom-token-abcdef", "pässwörd-api-key"} <= set(found)
    assert base64.b64encode("123456:pässwörd-api-key".encode()).decode() in found
    assert base64.b64encode("123456:pässwörd-api-key".encode("latin-1")).decode() in found
    runner = Runner(stream=io.StringIO())
    runner.mask(*found)
    assert "glc_prom-token-abcdef" not in runner.redact("Authorization: Bearer glc_prom-token-abcdef")
    warned = config.short_secret_warnings({"FLEET_ANALYSIS_PASSWORD": "abc", "FLEET_ANALYSIS_TOKEN": "xy"})
    assert warned[0].startswith("analysis-token is only 2") and warned[0].endswith("use a longer token")
    assert warned[1].startswith("analysis-password is only 3") and warned[1].endswith("use a longer password")


def test_a_bad_analysis_input_exits_2_before_any_request(fleet, action):
    _sim, server = fleet([TenantSpec("a")])
    result = action(server, analysis_url=server.url, analysis_query="errors: x{tenant=\"{tenants}\"} < 1",
                    analysis_token="prom-secret-token-77")
    assert result.code == 2 and server.requests == []
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert any("title=input analysis-query::" in line and "match it with =~" in line for line in errors), errors
    assert_no_secrets(result, CP_TOKEN, "prom-secret-token-77")
