"""Fleet state end to end: the snapshot, resuming a failed run, and rolling back what a run shipped.

Runner emulation, the simulated CP and tenants, and Debian's docker-registry for ``latest``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.runner import parse_output_file
from deploy.sim.fleet import OLD_SHA, Fault, TenantSpec, builds_for, specs
from tests.actions_runner import ROOT, container_env
from tests.support import CP_TOKEN, FAST_INPUTS, SHA, TAG, buildinfo, deployed, seeded, slugs


def test_tenants_already_on_the_build_are_not_redeployed_but_verified(fleet, action, registry, repository):
    _old, new = seeded(registry, repository)
    current = {"t02", "t05", "t07", "t10"}
    sim, server = fleet([TenantSpec(slug, deploy_seconds=1, running=SHA if slug in current else None)
                         for slug in slugs(10)])
    result = action(server, batch_size="3", verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 0 and result.outputs["ok"] == "true", result.stdout
    assert deployed(sim) == [slug for slug in slugs(10) if slug not in current]
    assert result.outputs["verified"] == "10" and registry.digest(repository, "latest") == new
    assert json.loads(result.outputs["already-current"]) == sorted(current)
    snapshot = {tenant["slug"]: tenant["sha"] for tenant in result.report["snapshot"]["tenants"]}
    assert snapshot == {slug: (SHA if slug in current else OLD_SHA) for slug in slugs(10)}
    assert f"{OLD_SHA[:12]} → {SHA[:12]}" in result.summary and "already current" in result.summary


@pytest.mark.parametrize("canary", ["t01", ""], ids=["canary", "no-canary"])
def test_a_fleet_already_on_the_build_gets_no_deploy_call_but_the_canary_and_is_still_verified_and_promoted(
        fleet, action, registry, repository, canary):
    _old, new = seeded(registry, repository)
    sim, server = fleet(specs(slugs(10), running=SHA))
    result = action(server, canary=canary, verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 0 and result.outputs["ok"] == "true", result.stdout
    assert [call["only_slugs"] for call in sim.deploy_calls()] == ([["t01"]] if canary else [])
    assert result.outputs["verified"] == "10" and registry.digest(repository, "latest") == new
    assert len(json.loads(result.outputs["already-current"])) == (9 if canary else 10)


def test_re_running_after_two_dead_tenants_were_fixed_deploys_only_those_and_the_never_reached(fleet, action):
    tenants = specs(slugs(10), deploy_seconds=1)
    tenants[3].dead = tenants[4].dead = True  # t04, t05: in batch 2 of 4
    sim, server = fleet(tenants)
    first = action(server, batch_size="3", max_stragglers="0", verify_url=buildinfo(server))
    assert first.code == 1 and "t04" in first.outputs["reason"], first.stdout
    never_reached = first.report["rollout"]["not_started"]
    assert never_reached == ["t07", "t08", "t09", "t10"]

    tenants[3].dead = tenants[4].dead = False  # fixed; the first run's calls are history
    calls_before = len(sim.deploy_calls())
    second = action(server, batch_size="3", max_stragglers="0", verify_url=buildinfo(server))

    assert second.code == 0, second.stdout
    redeployed = [slug for call in sim.deploy_calls()[calls_before:] for slug in call["only_slugs"]]
    assert redeployed == ["t04", "t05", *never_reached]
    assert second.outputs["verified"] == "10"


def test_on_failure_rollback_puts_back_what_the_run_shipped_and_proves_it(fleet, action, registry, repository):
    """A bad build caught at batch 2: the canary and batches 1-2 go back to latest's build."""
    old, _new = seeded(registry, repository)
    tenants = specs(slugs(8), deploy_seconds=1)
    for bad in tenants[3:5]:  # t04, t05: batch 2/4 never really swaps
        bad.stale = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, canary="t01", batch_size="2", verify_url=buildinfo(server), verify_budget="1",
                    on_failure="rollback", promote_images=registry.image(repository))

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    shipped = ["t01", "t02", "t03", "t04", "t05"]
    assert deployed(sim) == shipped and deployed(sim, "latest") == shipped
    assert json.loads(result.outputs["rolled-back"]) == shipped
    assert result.outputs["reason"].endswith("rolled back 5 tenants")
    assert {v["slug"]: v["state"] for v in result.report["rollback"]["verify"]["tenants"]} == dict.fromkeys(
        shipped, "verified")
    assert registry.digest(repository, "latest") == old
    assert "### Rollback: tenants redeployed with `latest`" in result.summary


def test_on_failure_hold_makes_no_rollback_call(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=1)
    tenants[2].stale = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1")

    assert result.code == 1
    assert deployed(sim, "latest") == [] and result.outputs["rolled-back"] == "[]"
    assert result.report["rollback"] is None


def test_a_tenant_that_refuses_the_rollback_is_named(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[3].stale = True
    tenants[0].refuses = {"latest"}
    _sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    assert result.code == 1
    assert json.loads(result.outputs["rolled-back"]) == ["t02", "t03", "t04"]
    assert "rollback failed: " in result.outputs["reason"] and "t01" in result.outputs["reason"].split("rollback")[-1]


def test_skip_current_false_redeploys_every_tenant(fleet, action):
    sim, server = fleet(specs(slugs(6), deploy_seconds=1, running=SHA))
    result = action(server, batch_size="3", verify_url=buildinfo(server), skip_current="false")

    assert result.code == 0, result.stdout
    assert deployed(sim) == slugs(6) and result.outputs["already-current"] == "[]"


# -- what a rollback may and may not touch (each found by a review probe) ---------------------


def test_with_skip_current_off_a_rollback_leaves_tenants_that_ran_the_build_before(fleet, action):
    """They were on `sha` before the run: going back to latest would take them off the build they ran."""
    tenants = specs(slugs(6), deploy_seconds=1)
    tenants[0].running = tenants[1].running = SHA
    tenants[4].stale = True  # batch 3/3 is not proven
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1",
                    on_failure="rollback", skip_current="false")

    assert deployed(sim) == slugs(6)[:6] and result.code == 1
    assert deployed(sim, "latest") == ["t03", "t04", "t05", "t06"]
    assert result.outputs["reason"].endswith("rolled back 4 tenants"), result.outputs["reason"]
    assert sim.running_sha("t01") == SHA


def test_tenants_of_a_call_the_cp_refused_are_not_rolled_back(fleet, action):
    """A 403 with the CP's own error: it deployed nothing, so nothing goes back (and no rollback runs)."""
    sim, server = fleet(specs(slugs(4), deploy_seconds=1), builds=builds_for(TAG, SHA), faults=[Fault("403")])
    result = action(server, canary="t01", batch_size="2", verify_url=buildinfo(server), on_failure="rollback")

    assert result.code == 1 and "canary t01 failed: HTTP 403" in result.outputs["reason"], result.outputs["reason"]
    assert deployed(sim, "latest") == [] and result.report["rollback"] is None
    assert result.report["rollout"]["calls"][0]["attempts"] == 1  # a refusal is not retried


def test_a_rollback_call_with_no_time_to_retry_keeps_the_failure_and_the_record(fleet, action):
    """The rollback's calls get a 502 and no retry fits in the overall deadline: the run still says why
    it failed, what the rollback did, and which tenants to put back by hand (t03 never moved: it is back)."""
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[2].stale = True  # batch 2/2 is not proven

    def refuse_the_rollback(body) -> None:
        if body.get("target_tag") == TAG and "t03" in body.get("only_slugs", []):
            sim.faults.extend([Fault("502")] * 3)

    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), after_deploy=refuse_the_rollback)
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback",
                    retry_delays="30", cp_tenant_timeout="0.1", cp_settle_seconds="0.05", timeout="8")

    reason = result.outputs["reason"]
    assert result.code == 1 and reason.startswith("batch 2/2 not proven"), reason
    assert "rollback failed: 2 rollback calls went wrong, the first: rollback 1/2 outcome unknown: HTTP 502" in reason
    assert reason.endswith("3 tenants not back on the build they ran before (roll back by hand): t01, t02, t04")
    rollback = result.report["rollback"]
    assert rollback["rolled_back"] == ["t03"] and rollback["not_rolled_back"] == ["t01", "t02", "t04"]
    assert [(call["state"], call["attempts"]) for call in rollback["calls"]] == [("unknown", 1)] * 2
    assert "### Rollback: tenants redeployed with `latest`" in result.summary


def test_a_rollout_stopped_by_the_timeout_still_has_room_to_roll_back(fleet, action):
    """With on-failure: rollback the rollout and its proofs stop one call's worst case and
    verify-budget before `timeout`: that room is the rollback's."""
    # 0.5 s a call and 2 s a proof: the plan (5 × 1.95 s + 4.95 s kept) fits in 15 s, the proofs push it out
    sim, server = fleet(specs(slugs(10), deploy_seconds=100, settle_seconds=400), builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="3", on_failure="rollback",
                    timeout="15")

    reason = result.outputs["reason"]
    assert ("s left before the 4.95 s kept for a rollback, less than the CP's worst case" in reason
            or "is unproven (cut by the overall timeout" in reason), reason  # between calls, or in a proof
    shipped = deployed(sim)
    assert 0 < len(shipped) < 10, reason
    assert deployed(sim, "latest") == shipped and reason.endswith(f"rolled back {len(shipped)} tenants"), reason


def test_coverage_counts_the_tenants_already_on_the_build(fleet, action):
    _sim, server = fleet([TenantSpec(slug, deploy_seconds=1, running=SHA if slug <= "t04" else None)
                          for slug in slugs(10)])
    result = action(server, batch_size="3", verify_url=buildinfo(server))

    assert "coverage: 10/10 tenants on target (4 already current), 0 stragglers" in result.stdout, result.stdout


def test_after_a_rollback_the_summary_shows_where_each_tenant_went(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[3].stale = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    row = next(line for line in result.summary.splitlines() if line.startswith("| t01 "))
    assert sim.running_sha("t01") == OLD_SHA
    assert f"{OLD_SHA[:12]} → {OLD_SHA[:12]} \\(rolled back\\)" in row, row  # Markdown-escaped


def test_a_rollback_proves_tenants_of_many_previous_builds_in_one_stage(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    for number, tenant in enumerate(tenants, start=1):
        tenant.running = str(number) * 40
    tenants[3].stale = True
    _sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="4", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    stages = [line for line in result.stdout.splitlines() if "rollback verify: " in line and "must report" in line]
    assert stages == ["rollback verify: 4 tenants must report git_sha = the SHA it ran before at "
                      f"{buildinfo(server)}; polling up to 32 at a time every 0.1 s for up to 1 s"], stages


def test_the_snapshot_is_one_round_of_request_timeout_and_the_unread_are_deployed(fleet, action):
    """Hanging /buildinfo on every tenant, two readers: the round ends after one request-timeout,
    not twenty tenants over two workers times it, and every tenant is deployed all the same."""
    sim, server = fleet(specs(slugs(20), deploy_seconds=1, slow_buildinfo=600))  # 3 s: past request-timeout
    result = action(server, batch_size="10", verify_url=buildinfo(server), verify_concurrency="2",
                    stages="rollout")  # no proof: a slow /buildinfo would fail it

    problems = [tenant["problem"] for tenant in result.report["snapshot"]["tenants"]]
    assert problems.count("no answer within 1 s") <= 2, problems
    assert problems.count("not read within the round's 1 s") >= 18, problems
    assert deployed(sim) == slugs(20)


def test_a_tenant_rolled_back_on_the_cps_word_shows_the_tag_not_the_build_it_left(fleet, action):
    """t01's snapshot read failed (a 503), so nothing proves where it went: the summary says so."""
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[0].flapping = True  # the snapshot's read (the first) is a 503
    tenants[3].stale = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    row = next(line for line in result.summary.splitlines() if line.startswith("| t01 "))
    assert sim.running_sha("t01") == OLD_SHA and "t01" in json.loads(result.outputs["rolled-back"])
    assert "unreadable → latest \\(rolled back, CP's word\\)" in row, row
    assert "1 on the CP's word: their snapshot had no SHA" in result.summary


def test_a_cancel_while_the_rollback_proves_its_tenants_keeps_what_it_did(fleet, tmp_path):
    """SIGTERM during the rollback's verify: the calls already made (tenants moved back) stay in
    the report and the outputs, and the failure still leads the reason."""
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[0].running = "1" * 40  # latest is not the build t01 ran: its proof polls until cancelled
    tenants[3].dead = True  # batch 2/2 has a straggler over max-stragglers 0: a rollback of t01-t03
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    with_ = {**FAST_INPUTS, "cp-url": server.url, "cp-token": CP_TOKEN, "verify-url": buildinfo(server),
             "batch-size": "2", "max-stragglers": "0", "verify-budget": "20", "on-failure": "rollback"}
    env = container_env(with_, {"sha": SHA}, tmp_path)
    proc = subprocess.Popen([sys.executable, "entrypoint.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("rollback verify: 3 tenants must report"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=30)

    outputs = parse_output_file(Path(env["GITHUB_OUTPUT"]).read_text())
    report = json.loads((Path(env["GITHUB_WORKSPACE"]) / "fleet-rollout-report.json").read_text())
    assert outputs["reason"].startswith("1 straggler exceeds max-stragglers 0: t04"), outputs["reason"]
    assert "rollback verify cut short: cancelled by signal SIGTERM" in outputs["reason"], outputs["reason"]
    assert [call["label"] for call in report["rollback"]["calls"]] == ["rollback 1/2", "rollback 2/2"]
    assert sim.running_sha("t02") == OLD_SHA
