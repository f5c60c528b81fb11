"""The Core acceptance scenarios, end to end: runner emulation → entrypoint → simulated CP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.runner import parse_output_file
from deploy.sim.fleet import Fault, TenantSpec
from tests.actions_runner import ROOT, container_env
from tests.report_schema import load_report
from tests.support import CP_TOKEN, FAST_INPUTS, SHA, TAG, assert_no_secrets, healthy


def test_one_dead_tenant_within_tolerance_is_quarantined_and_the_rest_ship(fleet, action):
    sim, server = fleet([*healthy("a", "b", "c"), TenantSpec("dead", dead=True)])
    result = action(server, batch_size="2", max_stragglers="1", verify_url="")

    assert result.code == 0, result.stdout
    assert result.outputs["ok"] == "true"
    assert result.outputs["outcome"] == "deployed"
    assert json.loads(result.outputs["quarantined"]) == ["dead"]
    assert json.loads(result.outputs["stragglers"]) == ["dead"]
    assert result.outputs["result_count"] == "4"
    assert result.outputs["report"] == "fleet-rollout-report.json"  # usable by later steps on the host
    assert {s for call in sim.deploy_calls() for s in call["only_slugs"]} == {"a", "b", "c", "dead"}
    assert all(sim.running_sha(s) != "0" * 40 for s in "abc")
    assert "::warning title=quarantined dead::" in result.stdout
    assert "| dead |" in result.summary and "quarantined" in result.summary
    assert_no_secrets(result)


def test_the_dead_tenant_outlasts_request_timeout_but_not_rollout_timeout(fleet, action):
    """A dead tenant outlasts a fast read budget: request-timeout alone would have abandoned this call."""
    _sim, server = fleet([*healthy("a"), TenantSpec("dead", dead=True)])
    result = action(server, batch_size="2", verify_url="")

    call = result.report["rollout"]["calls"][0]
    assert call["seconds"] > float(FAST_INPUTS["request-timeout"])
    assert call["status"] == 200 and result.code == 0


def test_two_dead_tenants_over_tolerance_fail_and_name_both(fleet, action):
    _sim, server = fleet([*healthy("a", "b"), TenantSpec("dead1", dead=True), TenantSpec("dead2", dead=True)])
    result = action(server, batch_size="2", max_stragglers="1", verify_url="")

    assert result.code == 1
    assert result.outputs["ok"] == "false"
    assert result.outputs["outcome"] == "failed"
    assert "dead1" in result.outputs["reason"] and "dead2" in result.outputs["reason"]
    assert json.loads(result.outputs["quarantined"]) == []
    assert json.loads(result.outputs["stragglers"]) == ["dead1", "dead2"]
    assert result.report is not None and result.report["outcome"] == "failed"
    assert_no_secrets(result)


def test_dead_tenants_in_different_batches_are_all_named_when_the_cp_halts(fleet, action):
    """Batch 2 goes out with tolerance 0, so the CP itself halts it; the reason still names both."""
    _sim, server = fleet([TenantSpec("dead1", dead=True), *healthy("b"), TenantSpec("dead2", dead=True), *healthy("d")])
    result = action(server, batch_size="2", max_stragglers="1", verify_url="")

    assert result.code == 1
    assert result.outputs["reason"].startswith("2 stragglers exceed max-stragglers 1: dead1, dead2 (batch 2/2")
    assert "max_stragglers=0" in result.outputs["reason"]  # the CP's own words are kept
    assert "not started" not in result.outputs["reason"]  # it was the last batch


def test_stragglers_over_tolerance_stop_later_batches(fleet, action):
    sim, server = fleet([TenantSpec("dead1", dead=True), TenantSpec("dead2", dead=True), *healthy("c", "d")])
    result = action(server, batch_size="2", max_stragglers="1", verify_url="")

    assert result.code == 1
    assert [call["only_slugs"] for call in sim.deploy_calls()] == [["dead1", "dead2"]]
    assert "1 later call not started" in result.outputs["reason"]


def test_a_gateway_502_then_503_html_are_retried_after_the_cps_worst_case_under_one_key(fleet, action):
    """Neither says the CP did nothing: each retry waits until the call cannot still be running."""
    sim, server = fleet(healthy("a", "b"), faults=[Fault("502"), Fault("503-html")])
    result = action(server, batch_size="2", verify_url="")

    assert result.code == 0, result.stdout
    assert "↻ batch 1/1: HTTP 502: upstream connect error (bad gateway); the outcome is unknown (the CP may still " \
           "be deploying): waiting 1.9 s, the CP's worst case, then retrying it under the same Idempotency-Key" \
        in result.stdout
    assert "↻ batch 1/1: HTTP 503: HTML page: 503 Service Temporarily Unavailable; the outcome is unknown" \
        in result.stdout
    assert "↻ batch 1/1: attempt 3/4 for a, b" in result.stdout
    assert len(sim.deploy_calls()) == 1  # faults answer before the CP records a call
    keys = {request.headers["idempotency-key"] for request in server.seen(sim.redeploy_path) if request.body
            and b'"dry_run": false' in request.body}
    assert len(keys) == 1 and result.report["rollout"]["calls"][0]["attempts"] == 3


def test_a_503_in_which_the_cp_says_it_did_not_start_is_retried_at_once(fleet, action):
    sim, server = fleet(healthy("a"), faults=[Fault("503-busy")])
    result = action(server, verify_url="")

    assert result.code == 0, result.stdout
    assert "HTTP 503: busy: another rollout holds the fleet lock; not started; it did not reach the CP; retrying in " \
           "0.05 s" in result.stdout
    assert len(sim.deploy_calls()) == 1


def test_a_call_hanging_past_the_read_budget_is_retried_after_the_worst_case(fleet, action):
    _sim, server = fleet(healthy("a"), faults=[Fault("hang", seconds=5)])
    result = action(server, rollout_timeout="2.5", verify_url="")

    assert result.code == 0, result.stdout
    assert "no complete answer within 2.5 s; the outcome is unknown" in result.stdout
    assert result.outputs["ok"] == "true"


def test_a_dropped_connection_is_retried_after_the_worst_case(fleet, action):
    _sim, server = fleet(healthy("a"), faults=[Fault("reset")])
    result = action(server, verify_url="")

    assert result.code == 0, result.stdout
    assert "the server closed the connection without answering; the outcome is unknown" in result.stdout or \
           "connection reset; the outcome is unknown" in result.stdout, result.stdout


def test_retries_exhausted_report_the_last_status_and_text(fleet, action):
    _sim, server = fleet(healthy("a", "b"), faults=[Fault("502")] * 4)
    result = action(server, verify_url="")

    assert result.code == 1
    assert "HTTP 502: upstream connect error (bad gateway)" in result.outputs["reason"]
    assert "a, b" in result.outputs["reason"]


def test_a_refusal_is_not_retried_and_halts_the_rollout(fleet, action):
    sim, server = fleet(healthy("a", "b", "c"), faults=[Fault("403")])
    result = action(server, batch_size="1", verify_url="")

    assert result.code == 1
    assert "batch 1/3 (a) failed: HTTP 403: forbidden: this token may not redeploy" in result.outputs["reason"]
    assert "attempt 2/" not in result.stdout
    assert sim.deploy_calls() == []  # the faulted call, and no later batch


def test_a_canary_answering_ok_false_stops_before_any_batch(fleet, action):
    sim, server = fleet(healthy("canary", "a", "b"), faults=[Fault("ok-false")])
    result = action(server, canary="canary", verify_url="")

    assert result.code == 1
    assert "canary canary failed" in result.outputs["reason"]
    assert "change freeze" in result.outputs["reason"]
    assert sim.deploy_calls() == []


def test_a_dead_canary_fails_even_when_max_stragglers_would_tolerate_it(fleet, action):
    sim, server = fleet([TenantSpec("canary", dead=True), *healthy("a", "b")])
    result = action(server, canary="canary", max_stragglers="1", verify_url="")

    assert result.code == 1
    assert [c["only_slugs"] for c in sim.deploy_calls()] == [["canary"]]
    assert sim.deploy_calls()[0]["max_stragglers"] == 0


def test_canary_goes_first_alone_then_batches_carry_the_remaining_tolerance(fleet, action):
    sim, server = fleet([*healthy("canary", "a"), TenantSpec("dead", dead=True), *healthy("b")])
    result = action(server, canary="canary", batch_size="2", max_stragglers="1", verify_url="")

    assert result.code == 0, result.stdout
    bodies = sim.deploy_calls()
    assert [b["only_slugs"] for b in bodies] == [["canary"], ["a", "dead"], ["b"]]
    assert [b["max_stragglers"] for b in bodies] == [0, 1, 0]
    for body in bodies:
        assert body["confirm"] is True and body["target_tag"] == TAG and "canary_slug" not in body
        assert body["batch_size"] == len(body["only_slugs"]) and body["soak_seconds"] == 0


def test_a_canary_missing_from_the_fleet_is_an_error_before_any_deploy(fleet, action):
    sim, server = fleet(healthy("a", "b"))
    result = action(server, canary="nope", verify_url="")

    assert result.code == 2  # a configuration error, found right after the enumeration
    assert "canary: 'nope' is not one of the 2 tenants the CP enumerated" in result.outputs["reason"]
    assert sim.deploy_calls() == []


def test_an_enumerated_tenant_that_never_gets_a_row_is_a_straggler(fleet, action):
    _sim, server = fleet([*healthy("a", "b"), TenantSpec("ghost", omit_row=True)])
    result = action(server, batch_size="3", max_stragglers="1", verify_url="")

    assert result.code == 0, result.stdout
    assert json.loads(result.outputs["quarantined"]) == ["ghost"]
    assert result.outputs["result_count"] == "2"


def test_the_kill_switch_skips_with_zero_requests(fleet, action):
    _sim, server = fleet(healthy("a"))
    result = action(server, disabled="TRUE")

    assert result.code == 0
    assert result.outputs["outcome"] == "skipped" and result.outputs["ok"] == "false"
    assert server.requests == []


def test_a_dry_run_plans_with_dry_run_calls_only(fleet, action):
    sim, server = fleet(healthy("a", "b", "c"))
    result = action(server, dry_run="true", batch_size="2")

    assert result.code == 0
    assert result.outputs["outcome"] == "planned" and result.outputs["ok"] == "true"
    assert result.outputs["result_count"] == "3"
    assert sim.calls and all(call["dry_run"] is True for call in sim.calls)
    assert server.seen("/tenants/") == []


def test_the_overall_timeout_stops_cleanly_with_outputs_and_report(fleet, action):
    _sim, server = fleet([TenantSpec("dead", dead=True), *healthy("a")])  # the dead one takes 1.95 s
    # the plan (2 calls of a declared 0.7 s worst case) fits in 1.5 s; the dead tenant's call does not
    result = action(server, batch_size="1", timeout="1.5", cp_tenant_timeout="0.5", cp_settle_seconds="0.2",
                    verify_url="")

    assert result.code == 1
    assert "left of the overall timeout (input `timeout`)" in result.outputs["reason"], result.outputs["reason"]
    assert result.report is not None and result.report["outcome"] == "failed"


def test_retries_never_run_past_the_overall_timeout(fleet, action):
    """Each retry's read timeout is re-capped: without it, attempt 2 would end ~2 s past the deadline."""
    _sim, server = fleet(healthy("a"), faults=[Fault("hang", seconds=10)] * 4)
    result = action(server, timeout="3", rollout_timeout="2.5", retry_delays="0.05,0.05,0.05", verify_url="")

    assert result.code == 1
    assert "left of the overall timeout (input `timeout`)" in result.outputs["reason"], result.outputs["reason"]
    assert result.report["seconds"] < 4.0  # the deadline is 3 s; 5 s without the per-attempt cap


def test_a_batch_that_the_cp_could_not_answer_in_time_is_not_started(fleet, action):
    """The plan fits (2 calls × 1.95 s in 4 s), but the first call overruns the CP's declared worst case."""
    sim, server = fleet([TenantSpec("slow", deploy_seconds=500), *healthy("b")])  # 500 sim s: 2.5 s
    result = action(server, batch_size="1", timeout="4", verify_url="")  # worst case per call: 1.95 s

    assert result.code == 1
    assert "less than the CP's worst case" in result.outputs["reason"]
    assert [call["only_slugs"] for call in sim.deploy_calls()] == [["slow"]]


def test_secrets_are_masked_in_actions_and_appear_only_in_the_mask_command(fleet, action):
    _sim, server = fleet(healthy("a"), faults=[Fault("502")])
    result = action(server, verify_url="")

    assert f"::add-mask::{CP_TOKEN}" in result.stdout
    assert_no_secrets(result, "ghs_jobtoken_0123456789")



@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_cancelled_job_still_writes_outputs_and_the_report(fleet, tmp_path, signum):
    """The runner interrupts a cancelled step: what happened so far must survive."""
    sim, server = fleet([*healthy("a"), TenantSpec("dead", dead=True)])
    with_ = {**FAST_INPUTS, "cp-url": server.url, "cp-token": CP_TOKEN, "verify-url": "", "batch-size": "1"}
    env = container_env(with_, {"sha": SHA}, tmp_path)
    proc = subprocess.Popen([sys.executable, "entrypoint.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    for _ in range(400):  # until the dead tenant's batch is in flight (bounded: 20 s)
        if any(r.json().get("only_slugs") == ["dead"] for r in server.seen(sim.redeploy_path)):
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, _ = proc.communicate(timeout=30)

    assert proc.returncode == 1, stdout
    outputs = parse_output_file(Path(env["GITHUB_OUTPUT"]).read_text())
    assert outputs["outcome"] == "failed" and f"cancelled by signal {signum.name}" in outputs["reason"]
    assert outputs["result_count"] == "1"  # batch 1 (tenant a) finished before the signal
    report = load_report((Path(env["GITHUB_WORKSPACE"]) / env["FLEET_REPORT_PATH"]).read_text())
    assert [call["label"] for call in report["rollout"]["calls"]] == ["batch 1/2", "batch 2/2"]
