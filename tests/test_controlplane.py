"""The CP client's edge cases, pinned with requests-mock: bodies, budgets, shapes, errors."""

from __future__ import annotations

import io
import json
import random
import time

import pytest
import requests

from deploy import config
from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.controlplane import ControlPlaneClient, CPResponseError, parse_answer
from deploy.http import DeadlineTimeout
from deploy.runner import Runner

URL = "https://cp.example.com/cp/admin/tenants/redeploy-fleet"


@pytest.fixture
def client() -> ControlPlaneClient:
    env = {"FLEET_CP_URL": "https://cp.example.com", "FLEET_CP_TOKEN": "tok", "FLEET_SHA": "8ddce85f3b2a"}
    cfg = config.load(env)
    clock = FakeClock()
    return ControlPlaneClient(cfg.cp, cfg.rollout, cfg.http, Context(Runner(io.StringIO()),
                                                                    Deadline.starting_now(clock, 3600)))


def test_enumeration_is_a_dry_run_with_the_fast_budget(client, requests_mock):
    requests_mock.post(URL, json={"ok": True, "results": [{"slug": "a", "ssm_status": "DryRun"}]})
    call = client.enumerate()
    sent = requests_mock.last_request
    assert sent.json() == {"target_tag": "staging-8ddce85", "soak_seconds": 0, "batch_size": 3,
                           "max_stragglers": 1, "dry_run": True, "confirm": True}
    assert sent.headers["Authorization"] == "Bearer tok"
    assert isinstance(sent.timeout, DeadlineTimeout) and sent.timeout.budget == 120.0
    assert sent.timeout.clone().read_timeout == 120.0 and sent.timeout.clone().connect_timeout == 10.0
    assert call.ok and call.rows[0].dry_run and not call.rows[0].on_target


def test_a_scoped_redeploy_gets_the_rollout_budget_and_integer_fields(client, requests_mock):
    requests_mock.post(URL, json={"ok": True, "results": []})
    client.redeploy("batch 1/1", ["a", "b"], max_stragglers=0)
    body = requests_mock.last_request.json()
    assert body["only_slugs"] == ["a", "b"] and body["batch_size"] == 2 and body["max_stragglers"] == 0
    assert body["dry_run"] is False and body["confirm"] is True and "canary_slug" not in body
    assert requests_mock.last_request.timeout.budget == 600.0


def test_every_attempt_gets_a_read_timeout_capped_by_what_is_left_of_the_run():
    clock = FakeClock()
    timeout = DeadlineTimeout(Deadline.starting_now(clock, 100), read=600)
    assert timeout.clone().read_timeout == 100
    clock.sleep(70)  # a first attempt and a backoff later, urllib3 clones it again for the retry
    assert timeout.clone().read_timeout == 30 and timeout.clone().connect_timeout == 10


def test_a_read_timeout_becomes_a_synthetic_504_not_a_crash(client, requests_mock):
    requests_mock.post(URL, exc=requests.exceptions.ReadTimeout("Read timed out. (read timeout=600)"))
    call = client.redeploy("batch 1/1", ["a"], max_stragglers=1)
    assert not call.ok and call.status is None
    # requests-mock bypasses the retrying adapter: one attempt was made, and the text says no more
    assert call.error == "HTTP 504 (synthetic): cp.example.com: no complete answer within 600 s"
    assert call.state == "unknown"


def test_a_non_200_carries_the_cp_error_text(client, requests_mock):
    requests_mock.post(URL, status_code=403, json={"error": "token lacks fleet:deploy"})
    call = client.redeploy("batch 1/1", ["a"], max_stragglers=1)
    assert call.status == 403 and call.error == "HTTP 403: token lacks fleet:deploy"


def test_an_html_error_page_is_summarised_by_its_title(client, requests_mock):
    requests_mock.post(URL, status_code=404, text="<html><title>404 Not Found</title><body>…</body></html>")
    assert client.enumerate().error == "HTTP 404: HTML page: 404 Not Found"


def test_ok_false_without_an_error_still_explains_itself(client, requests_mock):
    requests_mock.post(URL, json={"ok": False, "results": []})
    assert client.redeploy("b", ["a"], 0).error == "the CP answered ok: false without an error message"


def test_an_odd_optional_field_keeps_the_row_and_a_non_boolean_proof_proves_nothing():
    body = {"ok": True, "results": [
        {"slug": "a", "verified_on_target": "yes", "healthz_ok": 1, "ssm_exit_code": "0", "error": {"code": 7}},
        {"slug": "b", "verified_on_target": True, "ssm_exit_code": 0, "phase": 3},
    ]}
    a, b = parse_answer(json.dumps(body).encode()).rows
    assert not a.on_target and not a.healthy and a.ssm_exit_code is None
    assert a.error.startswith('{"code": 7}; the CP sent healthz_ok=1, not a boolean: taken as false')
    assert "verified_on_target='yes'" in a.error
    assert b.on_target and b.ssm_exit_code == 0 and b.phase == "3" and b.error == ""


def test_an_older_cps_row_counts_as_verified_and_healthy():
    answer = parse_answer(json.dumps({"ok": True, "results": [{"slug": "a", "phase": "done"}]}).encode())
    assert answer.ok and answer.rows[0].on_target and answer.rows[0].healthy


def test_a_scoped_calls_answer_keeps_only_rows_about_its_own_tenants():
    body = {"ok": True, "results": [{"slug": s, "verified_on_target": True} for s in ("a", "c", "b", "..", "d")]}
    answer = parse_answer(json.dumps(body).encode(), asked=frozenset({"a", "b"}))
    assert [row.slug for row in answer.rows] == ["a", "b"]
    assert answer.ignored == 3 and answer.ignored_names == ('"c"', '".."', '"d"') and answer.rejected == ()


def test_a_row_nested_in_a_kept_row_is_not_a_row_and_takes_nothing_with_it():
    body = {"ok": True, "results": [{"slug": "a", "verified_on_target": True, "error": {"slug": "zz"}}]}
    (row,) = parse_answer(json.dumps(body).encode(), asked=frozenset({"a"})).rows
    assert row.on_target and row.error == ""


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_of_a_tenants_duplicate_rows_the_worst_counts_in_either_order(order):
    rows = [{"slug": "a", "verified_on_target": True, "healthz_ok": True},
            {"slug": "a", "verified_on_target": False, "healthz_ok": True, "error": "rolled over"}]
    body = {"ok": True, "results": [{"slug": "b"}, *(rows[i] for i in order)]}
    answer = parse_answer(json.dumps(body).encode(), asked=frozenset({"a", "b"}))
    assert [row.slug for row in answer.rows] == ["b", "a"]
    assert not answer.rows[1].on_target and answer.rows[1].error == "rolled over"


def test_between_equally_bad_rows_the_first_counts_and_an_error_is_worse():
    body = {"ok": True, "results": [{"slug": "a", "phase": "one"}, {"slug": "a", "phase": "two"},
                                    {"slug": "a", "phase": "three", "error": "warned"}]}
    (row,) = parse_answer(json.dumps(body).encode()).rows
    assert (row.phase, row.error) == ("three", "warned")
    body["results"].pop()
    assert parse_answer(json.dumps(body).encode()).rows[0].phase == "one"


def test_rows_of_one_kind_are_equally_bad_so_a_repeat_can_share_the_first():
    """parse_answer reads a repeated row of a tenant by its kind alone (what its badness depends on)."""
    from deploy.controlplane import _kind, _row, badness

    rng = random.Random(21)
    values = [None, True, False, "yes", 0, 1, "", "x", [], {}, "DryRun", "Success"]
    rows = [{"slug": "a", **{field: rng.choice(values) for field in rng.sample(
        ["verified_on_target", "healthz_ok", "ssm_status", "error", "phase"], rng.randint(0, 5))}}
        for _ in range(3000)]
    seen: dict[tuple, tuple[bool, bool, bool]] = {}
    for raw in rows:
        assert seen.setdefault(_kind("a", raw), badness(_row(0, raw))) == badness(_row(0, raw)), raw
    assert len(seen) > 20


def test_an_answer_repeating_one_tenants_row_keeps_one_row_the_worst():
    rows = b",".join(b'{"slug": "a", "phase": "p%d"}' % i for i in range(200_000))
    body = b'{"ok": true, "results": [{"slug": "b"}, ' + rows + b', {"slug": "a", "verified_on_target": false}]}'
    answer = parse_answer(body, asked=frozenset({"a", "b"}))
    assert [(row.slug, row.phase, row.on_target) for row in answer.rows] == [("b", "", True), ("a", "", False)]


def test_a_scoped_call_logs_its_ignored_rows_once_and_records_their_count(client, requests_mock):
    rows = [{"slug": s, "verified_on_target": True} for s in ("a", *(f"x{i}" for i in range(40)))]
    requests_mock.post(URL, json={"ok": True, "results": rows})
    call = client.redeploy("batch 1/9", ["a"], max_stragglers=0)
    assert call.ok and [row.slug for row in call.rows] == ["a"] and call.ignored == 40
    lines = [line for line in client.ctx.runner.stream.getvalue().splitlines() if "outside the call" in line]
    assert lines == ['batch 1/9: ignored 40 rows about tenants outside the call ("x0", "x1", "x2", "x3", "x4", …): '
                     "a call's answer is about its own tenants"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"[]", "not an object: list"),
        (b'"ok"', "not an object: str"),
        (b"{}", "no boolean 'ok'"),
        (b'{"ok": "yes"}', "no boolean 'ok'"),
        (b'{"ok": true, "results": {}}', "'results' is not a list: dict"),
        (b'{"ok": true, "results": ["a"]}', "results[0] is not an object"),
        (b'{"ok": true, "results": [{"phase": "done"}]}', "results[0] has no string 'slug'"),
        (b'{"ok": true, "results": [{"slug": 7}]}', "results[0] has no string 'slug'"),
        (b'{"ok": true, "results": [{"slug": ""}]}', "results[0] has no string 'slug'"),
    ],
)
def test_a_malformed_answer_is_a_clear_error(body, words):
    with pytest.raises(CPResponseError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_answer(body)


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "str", "list", "dict", "row"] if depth < 3 else ["null", "bool", "int", "str"]
    kind = rng.choice(kinds)
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ["ok", "results", "error", "slug", "x"]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == "row":
        fields = ["slug", "phase", "healthz_ok", "verified_on_target", "ssm_exit_code", "error"]
        return {f: _random_json(rng, 3) for f in rng.sample(fields, rng.randint(0, len(fields)))}
    return {"null": None, "bool": rng.random() < 0.5, "int": rng.randint(-2, 2), "str": rng.choice(["", "a"])}[kind]


def test_answers_of_any_shape_parse_or_fail_clearly_never_with_a_traceback():
    rng = random.Random(20261126)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(3000):
        doc = _random_json(rng)
        if rng.random() < 0.5:
            doc = {"ok": rng.random() < 0.7, "results": doc if rng.random() < 0.3 else [_random_json(rng, 2)]}
        try:
            parse_answer(json.dumps(doc).encode())
            outcomes["parsed"] += 1
        except CPResponseError as exc:
            assert str(exc).startswith("the CP")
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 20 and outcomes["refused"] > 1000  # both paths really exercised


def test_a_long_call_says_every_heartbeat_that_it_is_still_waiting(client, requests_mock):
    """A 10-minute call must not look hung: a line per heartbeat, with the read budget it runs under."""
    client.heartbeat_seconds = 0.02
    stream = client.ctx.runner.stream
    beats = []

    def slow_answer(request, context):
        for _ in range(500):  # until the heartbeat has spoken twice (at most 5 s)
            beats[:] = [line for line in stream.getvalue().splitlines() if "waiting for the CP" in line]
            if len(beats) >= 2:
                break
            time.sleep(0.01)
        return {"ok": True, "results": [{"slug": "a", "verified_on_target": True}]}

    requests_mock.post(URL, json=slow_answer)
    call = client.redeploy("batch 3/12", ["a"], max_stragglers=1)
    assert call.ok and len(beats) >= 2
    assert beats[0].startswith("batch 3/12: waiting for the CP, ") and beats[0].endswith(" s of 600 s read budget")
