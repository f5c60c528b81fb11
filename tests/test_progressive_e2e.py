"""Progressive proof end to end: the canary and every batch prove the build before the next call.

Runner emulation, the simulated CP, tenants and forge, and Debian's docker-registry for ``latest``.
"""

from __future__ import annotations

import json

import pytest

from deploy.sim.fleet import OLD_SHA, TenantSpec, specs
from deploy.sim.forge import ForgeSim
from tests.support import JOB_TOKEN, NEWER_SHA, SHA, TAG, buildinfo, seeded, slugs


def deployed(sim) -> list[list[str]]:
    return [call["only_slugs"] for call in sim.deploy_calls()]


@pytest.mark.parametrize("canary", ["t01", ""], ids=["canary", "no-canary"])
def test_a_bad_build_stops_at_the_first_call_and_latest_stays(fleet, action, registry, repository, canary):
    """The CP says every tenant is on target; /buildinfo keeps the old SHA."""
    old, _new = seeded(registry, repository)
    sim, server = fleet(specs(slugs(20), deploy_seconds=1), bad_builds={TAG})
    result = action(server, canary=canary, batch_size="5", verify_url=buildinfo(server), verify_budget="1",
                    promote_images=registry.image(repository))

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    assert deployed(sim) == ([["t01"]] if canary else [["t01", "t02", "t03", "t04", "t05"]])
    assert registry.digest(repository, "latest") == old and result.outputs["promoted-digest"] == ""
    first = "canary" if canary else "batch 1/4"
    assert result.outputs["aborted-at"] == first
    said = f"t01 is stale (still runs {OLD_SHA[:12]}" if canary else "stale t01, t02, t03, t04, t05;"
    assert result.outputs["reason"].startswith(f"{first} not proven: {said}")
    assert json.loads(result.outputs["shipped"]) == deployed(sim)[0]
    assert json.loads(result.outputs["stale"]) == deployed(sim)[0]
    not_started = result.report["rollout"]["not_started"]
    assert len(not_started) == 20 - len(deployed(sim)[0]) and "t20" in not_started


def test_a_healthy_fleet_is_proven_batch_by_batch_and_latest_moves(fleet, action, registry, repository):
    _old, new = seeded(registry, repository)
    _sim, server = fleet(specs(slugs(40), deploy_seconds=1, settle_seconds=1))
    result = action(server, canary="t01", batch_size="10", verify_url=buildinfo(server),
                    promote_images=registry.image(repository))

    assert result.code == 0 and result.outputs["ok"] == "true", result.stdout
    assert result.outputs["verified"] == "40" and registry.digest(repository, "latest") == new
    assert json.loads(result.outputs["shipped"]) == slugs(40) and result.outputs["aborted-at"] == ""
    calls = {slug: call["label"] for call in result.report["rollout"]["calls"] for slug in call["slugs"]}
    tenants = result.report["verify"]["tenants"]
    assert {tenant["slug"]: tenant["call"] for tenant in tenants} == calls  # each proven in its own call
    assert all(tenant["proven_at"] is not None for tenant in tenants)
    proofs = [proof["label"] for proof in result.report["rollout"]["proofs"]]
    assert proofs == ["proof canary", *(f"proof batch {n}/4" for n in range(1, 5))]  # soak 0: nothing to watch
    assert result.report["verify"]["rounds"] == 0  # the verify stage had nothing left to read
    assert "proof batch 4/4" in result.summary  # its own bar on the timeline


def test_a_canary_that_flaps_back_during_the_soak_stops_before_any_batch(fleet, action):
    flapping = TenantSpec("t01", deploy_seconds=1, reverts_after=100)
    sim, server = fleet([flapping, *specs(slugs(6)[1:], deploy_seconds=1)])
    result = action(server, canary="t01", soak_seconds="2", batch_size="5", verify_url=buildinfo(server),
                    verify_interval="0.1")

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    assert deployed(sim) == [["t01"]]
    assert "canary t01 went back to 000000000000" in result.outputs["reason"]
    assert result.outputs["aborted-at"] == "canary"


def forge_with_head() -> ForgeSim:
    forge = ForgeSim("github", repository="acme/platform", token=JOB_TOKEN)
    forge.branches["main"] = SHA
    return forge


def github(server) -> dict[str, str]:
    return {"api_url": f"{server.url}/api/v3", "repository": "acme/platform"}


@pytest.mark.parametrize("change, outcome, code", [
    ({"variables": {"DEPLOY_FROZEN": "true"}}, "aborted", 1),
    ({"branches": {"main": NEWER_SHA}}, "skipped", 0),
], ids=["kill-switch", "superseded"])
def test_a_kill_switch_or_a_newer_commit_after_batch_2_stops_before_batch_3(fleet, action, registry, repository,
                                                                            change, outcome, code):
    old, _new = seeded(registry, repository)
    forge = forge_with_head()
    sim, server = fleet(specs(slugs(10), deploy_seconds=1), forge)
    forge.change_after_deploys(sim, 2, **change)
    result = action(server, github(server), batch_size="2", verify_url=buildinfo(server),
                    disabled_variable="DEPLOY_FROZEN", promote_images=registry.image(repository))

    assert (result.code, result.outputs["outcome"], result.outputs["ok"]) == (code, outcome, "false"), result.stdout
    assert deployed(sim) == [["t01", "t02"], ["t03", "t04"]]  # batches 3-5 never reached the CP
    assert registry.digest(repository, "latest") == old
    assert result.outputs["aborted-at"] == "batch 3/5"
    assert json.loads(result.outputs["shipped"]) == ["t01", "t02", "t03", "t04"]
    reason = result.outputs["reason"]
    assert ("DEPLOY_FROZEN" if outcome == "aborted" else NEWER_SHA) in reason
    assert "4 tenants shipped (t01, t02, t03, t04), 6 not (t05, t06, t07, t08, t09, t10)" in reason


def test_verify_each_batch_false_keeps_one_verify_stage_after_the_rollout(fleet, action, registry, repository):
    old, _new = seeded(registry, repository)
    sim, server = fleet(specs(slugs(20), deploy_seconds=1), bad_builds={TAG})
    result = action(server, canary="t01", batch_size="5", verify_url=buildinfo(server), verify_budget="1",
                    verify_each_batch="false", promote_images=registry.image(repository))

    assert result.code == 1 and result.outputs["outcome"] == "failed"
    assert len(deployed(sim)) == 5  # the whole fleet moved before anything was proven
    assert json.loads(result.outputs["stale"]) == slugs(20) and result.outputs["aborted-at"] == ""
    assert result.report["rollout"]["proofs"] == [] and registry.digest(repository, "latest") == old
    assert result.outputs["reason"].startswith("verify failed: stale t01, ")
