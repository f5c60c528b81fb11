"""Metric analysis against a hostile API, through the real entrypoint (tests/test_hostile.py's world):
no answer passes a step, hangs the run past ``timeout`` or shows a credential; report only never
stops a run; the evaluations of a step cut short (its proof halted, the timeout, SIGTERM) are in
the report; a credential that cannot be sent is a configuration error, never a traceback."""
from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile import Behaviour, drip_body, echo_auth, hang, huge_body, json_answer, redirect, respond
from tests.test_hostile import (
    TENANTS,
    Live,
    World,
    assert_common,
    assert_no_secret_forms,
    open_world,
    run_entrypoint,
    wait_until,
)


@pytest.fixture
def world(fleet) -> Iterator[World]:
    with open_world(fleet) as opened:
        yield opened


TOKEN = 'anK7+Vq/Xw9=Lr&<m>"Tz4'
PATH = "/api/v1/query"
QUERY = 'errors: sum by (tenant) (rate(http_requests_total{tenant=~"{tenants}",code=~"5.."}[5s])) < 0.05'


def vec(value: Any, labels: dict | None = None, kind: str = "vector") -> dict:
    return {"status": "success", "data": {"resultType": kind, "result": [
        {"metric": labels if labels is not None else {"tenant": "a"}, "value": [1.8e9, value]}]}}


GOOD = vec("0")


def deploys(world: World) -> list[list[str]]:
    return [c["only_slugs"] for c in world.sim.deploy_calls()]


def run(world: World, tmp_path: Path, runtime, extra: dict | None = None, validate=True):
    if validate:
        world.hostile.add(json_answer(GOOD), method="POST", path=PATH, times=1)
    world.hostile.add(runtime if isinstance(runtime, Behaviour) else runtime(world), method="POST", path=PATH)
    inputs = {"canary": "a", "analysis-url": world.hostile.url, "analysis-query": QUERY,
              "analysis-token": TOKEN, "analysis-interval": "1", "timeout": "8", **(extra or {})}
    result = run_entrypoint(world, tmp_path / "run", inputs, kill_after=20)
    assert_common(result, 8.0, 13.0)
    assert_no_secret_forms(result, TOKEN)
    return result


RAW_BAD_UTF8 = b'{"status":"error","errorType":"execution","error":"bad \xff\xfe\xc3 bytes"}'
LONE = "\ud800"

# One row per kind of answer: slow, huge, deep, not a number, the wrong shape, another origin, the
# token echoed, text nobody can write. None may pass the canary's step.
HOSTILE_ANSWERS = {
    "hang": hang(),
    "drip-body": drip_body(200, json.dumps(GOOD).encode() + b" " * 4096, interval=0.1),
    "html": respond(200, "<html><title>Grafana</title></html>", content_type="text/html"),
    "huge": huge_body(20, prefix=b'{"status": "success", "data": {"result": ['),
    "nested-900": respond(200, b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"tenant":'
                          + b"[" * 900 + b"]" * 900 + b'},"value":[1,"NaN"]}]}}'),
    "nan": json_answer(vec("NaN")),
    "1e999": json_answer(vec("1e999")),
    "matrix": json_answer({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"tenant": "a"}, "values": [[1, "0"]]}]}}),
    "empty": json_answer({"status": "success", "data": {"resultType": "vector", "result": []}}),
    "redirect-other": lambda w: redirect(f"{w.other.url}/internal", 307),
    "echo-401": echo_auth(401),
    "bad-utf8-error": respond(422, RAW_BAD_UTF8),
    "lone-in-labels": json_answer(vec("NaN", {"tenant": f"a{LONE}\udc80", f"k{LONE}": "v\x00\u202e::error::x\n"})),
    "token-in-labels": json_answer(vec("NaN", {"tenant": TOKEN, TOKEN: "x"})),
    "token-value": json_answer(vec(TOKEN)),
}


@pytest.mark.parametrize("name", list(HOSTILE_ANSWERS))
def test_no_answer_of_a_hostile_api_passes_a_step(name, world, tmp_path):
    result = run(world, tmp_path, HOSTILE_ANSWERS[name])
    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.tail()
    assert deploys(world) == [["a"]], deploys(world)
    assert world.other.seen() == []
    assert result.report["analysis"], result.tail()
    assert result.report["analysis"][-1]["verdict"] != "pass"


BAD = vec("0.31")


def listed(result, name: str) -> list[str]:
    return json.loads(result.outputs.get(name) or "[]")


def reported(result) -> int:
    return sum(len(step["evaluations"]) for step in result.report["analysis"] or [])


def test_a_failed_canary_analysis_rolls_back_and_names_query_value_and_threshold(world, tmp_path):
    world.sim.builds["latest"] = "0" * 40
    result = run(world, tmp_path, json_answer(BAD), {"on-failure": "rollback"})
    assert (result.code, result.outputs["aborted-at"]) == (1, "canary"), result.tail()
    assert 'errors = 0.31 on tenant="a", not < 0.05' in result.outputs["reason"]
    assert listed(result, "rolled-back") == ["a"], result.outputs


def test_inconclusive_under_fail_rolls_back(world, tmp_path):
    world.sim.builds["latest"] = "0" * 40
    result = run(world, tmp_path, json_answer(vec("NaN")), {"on-failure": "rollback", "analysis-inconclusive": "fail"})
    assert (result.code, result.outputs["aborted-at"]) == (1, "canary"), result.tail()
    assert listed(result, "rolled-back") == ["a"], result.outputs


# -- report only never stops a run ------------------------------------------------------------------


@pytest.mark.parametrize(("validate", "runtime"), [
    (True, json_answer(BAD)),  # every step fails
    (True, hang()),  # the API goes silent during the rollout
    (False, respond(503, "down", content_type="text/plain")),  # down from the plan on
], ids=["failing", "silent", "down-at-plan"])
def test_report_only_never_stops_the_run(world, tmp_path, validate, runtime):
    result = run(world, tmp_path, runtime, {"analysis-dry-run": "true"}, validate=validate)
    assert (result.code, result.outputs["outcome"]) == (0, "deployed"), (result.outputs.get("reason"), result.tail())
    assert sorted(slug for call in deploys(world) for slug in call) == list(TENANTS)


# -- a step cut short keeps its evaluations ---------------------------------------------------------


def test_evaluations_made_before_a_proof_halt_are_reported(world, tmp_path):
    world.hostile.add(json_answer({"git_sha": "0" * 40}), method="GET", path="/tenants/a/buildinfo", skip=6)
    result = run(world, tmp_path, json_answer(GOOD), {"verify-url": "$buildinfo", "soak-seconds": "3",
                                                      "analysis-interval": "0.3", "verify-interval": "0.2"})
    sent = len(world.hostile.seen(PATH, "POST")) - 1  # minus the plan-time validation
    assert (result.code, result.outputs["aborted-at"]) == (1, "canary") and sent >= 1, result.tail()
    assert reported(result) == sent, f"{sent} evaluations made during the soak, {reported(result)} in the report"
    assert result.report["analysis"][-1]["verdict"] == "cut"


def test_evaluations_made_before_the_timeout_are_reported(world, tmp_path):
    result = run(world, tmp_path, hang(), {"soak-seconds": "3", "analysis-interval": "1.5", "request-timeout": "1.5",
                                          "timeout": "8", "batch-size": "100%", "analysis-failure-limit": "4"})
    logged = [line for line in result.stdout.splitlines() if line.startswith("analysis · canary · ")]
    assert result.code == 1 and logged, result.tail()
    assert reported(result) == len(logged), f"{len(logged)} evaluations logged, {reported(result)} in the report"


def test_sigterm_during_a_soak_analysis_keeps_its_evaluations(world, tmp_path):
    world.hostile.add(json_answer(GOOD), method="POST", path=PATH)
    inputs = {"canary": "a", "analysis-url": world.hostile.url, "analysis-query": QUERY, "analysis-token": TOKEN,
              "analysis-interval": "0.3", "soak-seconds": "20", "timeout": "40"}
    live = Live(world, tmp_path / "run", inputs)
    try:
        assert wait_until(lambda: len(world.hostile.seen(PATH, "POST")) >= 4, 15), "\n".join(live.lines)
        live.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            live.proc.wait(timeout=5)
    finally:
        live.kill()
    result = live.result()
    logged = [line for line in result.stdout.splitlines() if line.startswith("analysis · canary · ")]
    assert logged and reported(result) == len(logged), f"{len(logged)} logged, {reported(result)} in the report"


# -- credentials ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "named"), [
    ({"analysis-url": "$hostile", "analysis-query": QUERY, "analysis-username": "reader",
      "analysis-password": "pw-\udcff-secret99"}, "analysis-password"),
    ({"analysis-url": "$hostile", "analysis-query": QUERY, "analysis-username": "re:ader",
      "analysis-password": "pw-secret99"}, "analysis-username"),
    ({"stages": "promote", "promote-images": "$image", "registry-password": "pw-\udcff-secret99"},
     "registry-password"),
], ids=["analysis-password-not-utf8", "analysis-username-colon", "registry-password-not-utf8"])
def test_a_credential_that_cannot_be_sent_is_a_configuration_error(world, tmp_path, inputs, named):
    inputs = {key: value.replace("$hostile", world.hostile.url) for key, value in inputs.items()}
    result = run_entrypoint(world, tmp_path / "run", {"canary": "a", "timeout": "8", **inputs}, kill_after=20)
    assert "Traceback" not in result.stdout + result.stderr, result.tail(60)
    assert result.code == 2 and named in result.outputs["reason"], (result.code, result.outputs.get("reason"))
    shown = [line for line in result.stdout.splitlines() if not line.startswith("::add-mask::")]
    assert "pw-" not in result.files_text + "\n".join(shown)
    assert world.sim.deploy_calls() == []


@pytest.mark.parametrize("status", [401, 200, 500])
def test_basic_credentials_echoed_are_never_shown(world, tmp_path, status):
    user, password = "prom-reader", 'pbK7+Vq/Xw9=Lr&<m>"Tz4é'
    world.hostile.add(json_answer(GOOD), method="POST", path=PATH, times=1)
    world.hostile.add(echo_auth(status), method="POST", path=PATH)
    inputs = {"canary": "a", "analysis-url": world.hostile.url, "analysis-query": QUERY,
              "analysis-username": user, "analysis-password": password, "analysis-interval": "1", "timeout": "8"}
    result = run_entrypoint(world, tmp_path / "run", inputs, kill_after=20)
    assert_common(result, 8.0, 13.0)
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert_no_secret_forms(result, password, pair)
    assert (result.code, deploys(world)) == (1, [["a"]]), result.tail()
