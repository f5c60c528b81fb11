"""Fleet state end to end: the snapshot, resuming a failed run, and rolling back what a run shipped.

Runner emulation, the simulated CP and tenants, and Debian's docker-registry for ``latest``.
"""

from __future__ import annotations

import json

from deploy.sim.fleet import OLD_SHA, TenantSpec, builds_for, specs
from tests.support import SHA, TAG, buildinfo


def slugs(count: int) -> list[str]:
    return [f"t{i:02d}" for i in range(1, count + 1)]


def seeded(registry, repository):
    """The previous build under latest, the new one under the target tag: (latest's digest, new digest)."""
    old = registry.seed_index(repository, "latest", variant="previous")
    new = registry.seed_index(repository, TAG, variant="new")
    return old.digest, new.digest


def deployed(sim, tag: str = TAG) -> list[str]:
    return [slug for call in sim.deploy_calls() if call["target_tag"] == tag for slug in call["only_slugs"]]


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


def test_a_fleet_already_on_the_build_gets_no_deploy_call_and_is_still_verified_and_promoted(
        fleet, action, registry, repository):
    _old, new = seeded(registry, repository)
    sim, server = fleet(specs(slugs(10), running=SHA))
    result = action(server, canary="t01", verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 0 and result.outputs["ok"] == "true", result.stdout
    assert sim.deploy_calls() == []
    assert result.outputs["verified"] == "10" and registry.digest(repository, "latest") == new
    assert len(json.loads(result.outputs["already-current"])) == 10


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
    assert "### Rollback to `latest`" in result.summary


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
