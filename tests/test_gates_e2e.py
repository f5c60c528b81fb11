"""Gates end to end: the emulated runner, the simulated CP and a simulated GitHub or Gitea."""

from __future__ import annotations

import pytest

from deploy.sim.fleet import TenantSpec
from tests.support import NEWER_SHA, SHA, assert_no_secrets, buildinfo, forge_for, github_context


def tenants() -> list[TenantSpec]:
    return [TenantSpec("a", deploy_seconds=1), TenantSpec("b", deploy_seconds=1)]


def test_required_checks_on_page_two_and_as_a_check_run_let_the_rollout_proceed(fleet, action):
    forge = forge_for()
    forge.add_status(SHA, "ci/build", "success")  # oldest: a full page of newer noise pushes it to page 2
    for i in range(100):
        forge.add_status(SHA, f"noise/{i}", "pending")
    forge.add_check_run(SHA, "e2e", conclusion="success")
    _sim, server = fleet(tenants(), forge)
    result = action(server, github_context(server), required_checks="ci/build\ne2e", verify_url="")

    assert result.code == 0, result.stdout
    assert result.outputs["outcome"] == "deployed"
    statuses = [r for r in server.seen("/api/v3/repos/acme/platform/commits/") if r.path.endswith("/statuses")]
    assert len(statuses) >= 2  # page 2 was read
    assert_no_secrets(result)


def test_a_failed_required_check_stops_before_any_cp_request(fleet, action):
    forge = forge_for()
    forge.add_status(SHA, "ci/build", "failure")
    sim, server = fleet(tenants(), forge)
    result = action(server, github_context(server), required_checks="ci/build", verify_url="")

    assert result.code == 1
    assert "ci/build" in result.outputs["reason"] and "failure" in result.outputs["reason"]
    assert server.seen(sim.redeploy_path) == []


@pytest.mark.parametrize("kind", ["github", "gitea"])
def test_a_superseded_run_skips_every_side_effect(fleet, action, kind):
    forge = forge_for(kind)
    forge.branches["main"] = NEWER_SHA
    sim, server = fleet(tenants(), forge)
    extra = {"GITEA_ACTIONS": "true"} if kind == "gitea" else None
    result = action(server, github_context(server, kind), extra_env=extra, verify_url="")

    assert result.code == 0
    assert result.outputs["outcome"] == "skipped" and result.outputs["ok"] == "false"
    assert NEWER_SHA in result.outputs["reason"]
    assert sim.deploy_calls() == []


def test_a_newer_head_landing_mid_run_skips_verify(fleet, action):
    """Without per-call proof, the verify stage is the first reader of /buildinfo: skipped, none is read."""
    forge = forge_for()
    _sim, server = fleet(tenants(), forge, after_deploy=lambda body: forge.branches.update(main=NEWER_SHA))
    result = action(server, github_context(server), verify_url=buildinfo(server), verify_each_batch="false")

    assert result.code == 0
    assert result.outputs["outcome"] == "skipped"
    assert "before verify" in result.outputs["reason"] and NEWER_SHA in result.outputs["reason"]
    assert len(server.seen("/tenants/")) == 2  # the snapshot's one read per tenant; verify read none
    assert result.outputs["result_count"] == "2"  # what did happen is still reported


def test_an_unreadable_head_warns_and_deploys(fleet, action):
    forge = forge_for()
    forge.fault("branches/main", 500)
    _sim, server = fleet(tenants(), forge)
    result = action(server, github_context(server), verify_url="", retry_delays="none")

    assert result.code == 0, result.stdout
    assert result.outputs["outcome"] == "deployed"
    assert "::warning" in result.stdout


@pytest.mark.parametrize("kind", ["github", "gitea"])
def test_a_live_kill_switch_variable_skips_with_no_cp_request(fleet, action, kind):
    forge = forge_for(kind)
    forge.variables["DEPLOY_FREEZE"] = "true"
    sim, server = fleet(tenants(), forge)
    extra = {"GITEA_ACTIONS": "true"} if kind == "gitea" else None
    result = action(server, github_context(server, kind), extra_env=extra, disabled_variable="DEPLOY_FREEZE")

    assert result.code == 0
    assert result.outputs["outcome"] == "skipped" and "DEPLOY_FREEZE" in result.outputs["reason"]
    assert server.seen(sim.redeploy_path) == []


def test_an_unreadable_kill_switch_variable_fails_closed(fleet, action):
    forge = forge_for()
    forge.fault("actions/variables/DEPLOY_FREEZE", 403)
    sim, server = fleet(tenants(), forge)
    result = action(server, github_context(server), disabled_variable="DEPLOY_FREEZE")

    assert result.code == 1
    assert "DEPLOY_FREEZE" in result.outputs["reason"]
    assert server.seen(sim.redeploy_path) == []
    assert_no_secrets(result)


def test_an_unset_kill_switch_variable_lets_the_run_proceed(fleet, action):
    sim, server = fleet(tenants(), forge_for())
    result = action(server, github_context(server), disabled_variable="DEPLOY_FREEZE", verify_url="")

    assert result.code == 0, result.stdout
    assert len(sim.deploy_calls()) == 1
