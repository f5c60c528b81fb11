"""Verify and promote end to end: runner emulation, simulated fleet, Debian's docker-registry."""

from __future__ import annotations

import json

import pytest

from deploy.sim.fleet import OLD_SHA, TenantSpec
from tests.support import SHA, TAG, assert_no_secrets, buildinfo


def seed(registry, repository):
    """A previous build under latest and the new build (multi-arch) under the target tag."""
    old = registry.seed_index(repository, "latest", variant="previous")
    new = registry.seed_index(repository, TAG, variant="new")
    return old, new


def test_end_to_end_dead_quarantined_rest_verified_latest_promoted(fleet, action, registry, repository):
    old, new = seed(registry, repository)
    tenants = [TenantSpec(s, deploy_seconds=20, settle_seconds=200) for s in ("hongming", "reno-stars", "adk")]
    _sim, server = fleet([*tenants, TenantSpec("philbrew-erton", dead=True)])
    result = action(server, batch_size="2", verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 0, result.stdout
    assert result.outputs["ok"] == "true"
    assert json.loads(result.outputs["quarantined"]) == ["philbrew-erton"]
    assert result.outputs["verified"] == "3"
    assert registry.digest(repository, "latest") == new.digest
    assert result.outputs["promoted-digest"] == new.digest
    assert result.outputs["previous-digest"] == old.digest
    assert len(server.seen("/tenants/philbrew-erton/")) == 1  # the snapshot's read; quarantined: never polled
    assert "verify: " in result.stdout and " on target, " in result.stdout  # a progress line per round
    assert new.digest in result.summary and old.digest in result.summary
    assert_no_secrets(result)


@pytest.mark.parametrize("each_batch", ["true", "false"])
def test_tenants_reporting_the_old_sha_while_draining_are_polled_until_they_settle(fleet, action, each_batch):
    _sim, server = fleet([TenantSpec(s, deploy_seconds=1, settle_seconds=300) for s in "abc"])
    result = action(server, verify_url=buildinfo(server), verify_interval="0.2", verify_budget="10",
                    verify_each_batch=each_batch)

    assert result.code == 0, result.stdout
    assert result.outputs["verified"] == "3"
    if each_batch == "true":  # proven by the batch's own proof; the verify stage had nothing left to read
        assert result.report["verify"]["rounds"] == 0
        assert [p["label"] for p in result.report["rollout"]["proofs"]] == ["proof batch 1/1"]
        assert {t["call"] for t in result.report["verify"]["tenants"]} == {"batch 1/1"}
    else:
        assert result.report["verify"]["rounds"] >= 2


def test_a_stale_tenant_that_the_cp_calls_verified_fails_and_latest_stays(fleet, action, registry, repository):
    old, _ = seed(registry, repository)
    liar = TenantSpec("liar", deploy_seconds=1, stale=True, legacy_row=True)
    _sim, server = fleet([TenantSpec("a", deploy_seconds=1), liar])
    result = action(server, verify_url=buildinfo(server), verify_budget="1", promote_images=registry.image(repository))

    assert result.code == 1
    assert result.outputs["outcome"] == "failed"
    assert json.loads(result.outputs["stale"]) == ["liar"]
    assert OLD_SHA[:12] in result.summary  # says what it runs
    assert [line for line in result.stdout.splitlines() if line.startswith("::error") and "liar is stale" in line]
    assert registry.digest(repository, "latest") == old.digest
    assert result.outputs["promoted-digest"] == ""


def test_an_unhealthy_row_is_never_polled_and_fails_the_run(fleet, action):
    _sim, server = fleet([TenantSpec("a", deploy_seconds=1), TenantSpec("sick", deploy_seconds=1, unhealthy=True)])
    result = action(server, verify_url=buildinfo(server))

    assert result.code == 1
    assert json.loads(result.outputs["unhealthy"]) == ["sick"]
    assert len(server.seen("/tenants/sick/")) == 1  # the snapshot's read; unhealthy: never polled


def test_forty_tenants_settling_concurrently_take_a_few_rounds_not_forty(fleet, action):
    _sim, server = fleet([TenantSpec(f"t{i:02d}", deploy_seconds=1, settle_seconds=200) for i in range(40)])
    result = action(server, batch_size="40", verify_url=buildinfo(server), verify_interval="0.5",
                    verify_budget="20")

    assert result.code == 0, result.stdout
    assert result.outputs["verified"] == "40"
    assert result.report["verify"]["rounds"] <= 6  # 1 s of settle at 0.5 s a round; one-by-one would be 40+


def test_a_kill_switch_or_a_dry_run_leaves_latest_alone(fleet, action, registry, repository):
    old, _ = seed(registry, repository)
    sim, server = fleet([TenantSpec("a", deploy_seconds=1)])
    for inputs in ({"disabled": "on"}, {"dry_run": "true"}):
        result = action(server, verify_url=buildinfo(server), promote_images=registry.image(repository), **inputs)
        assert result.code == 0 and result.outputs["outcome"] in ("skipped", "planned")
        assert registry.digest(repository, "latest") == old.digest
    assert sim.deploy_calls() == []


def test_htpasswd_registry_promotes_with_the_right_password(fleet, action, secured_registry, repository):
    _old, new = seed(secured_registry, repository)
    _sim, server = fleet([TenantSpec("a", deploy_seconds=1)])
    result = action(server, verify_url=buildinfo(server), promote_images=secured_registry.image(repository),
                    registry_username=secured_registry.username, registry_password=secured_registry.password)

    assert result.code == 0, result.stdout
    assert secured_registry.digest(repository, "latest") == new.digest
    assert_no_secrets(result, secured_registry.password)


def test_a_wrong_registry_password_fails_clearly_and_leaves_latest(fleet, action, secured_registry, repository):
    old, _ = seed(secured_registry, repository)
    sim, server = fleet([TenantSpec("a", deploy_seconds=1)])
    wrong = "wrong-password-7c1d"
    result = action(server, verify_url=buildinfo(server), promote_images=secured_registry.image(repository),
                    registry_username=secured_registry.username, registry_password=wrong)

    assert result.code == 1
    assert secured_registry.host in result.outputs["reason"]
    assert "401" in result.outputs["reason"]
    assert "before any deploy" in result.outputs["reason"]
    assert sim.deploy_calls() == []  # found by the preflight, before the fleet moved
    assert secured_registry.digest(repository, "latest") == old.digest
    assert_no_secrets(result, wrong)


def test_a_source_tag_missing_from_the_registry_stops_before_any_deploy(fleet, action, registry, repository):
    registry.seed_index(repository, "latest", variant="previous")
    sim, server = fleet([TenantSpec("a", deploy_seconds=1)])
    result = action(server, verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 1
    assert f"has no {TAG}" in result.outputs["reason"]
    assert sim.deploy_calls() == []


def test_rollback_with_stages_promote_puts_back_the_previous_digest(action, registry, repository):
    old, new = seed(registry, repository)
    registry.push_manifest(repository, "latest", new.body, new.media_type)  # a bad release went out
    result = action(None, stages="promote", promote_images=registry.image(repository), promote_source=old.digest)

    assert result.code == 0, result.stdout
    assert registry.digest(repository, "latest") == old.digest
    assert result.outputs["previous-digest"] == new.digest


def test_a_verify_only_drill_polls_every_tenant_and_deploys_nothing(fleet, action):
    sim, server = fleet([TenantSpec("a"), TenantSpec("b", stale=True)])
    sim.mark_deployed("a", SHA)
    result = action(server, stages="verify", verify_url=buildinfo(server), verify_budget="0.5")

    assert result.code == 1
    assert sim.deploy_calls() == [] and sim.calls and all(c["dry_run"] for c in sim.calls)
    assert result.outputs["verified"] == "1" and json.loads(result.outputs["stale"]) == ["b"]
    assert result.outputs["result_count"] == "0"


def test_rollout_and_promote_without_verify_is_allowed_when_said_explicitly(fleet, action, registry, repository):
    _, new = seed(registry, repository)
    _sim, server = fleet([TenantSpec("a", deploy_seconds=1)])
    result = action(server, stages="rollout,promote", promote_images=registry.image(repository))

    assert result.code == 0, result.stdout
    assert registry.digest(repository, "latest") == new.digest
    assert server.seen("/tenants/") == []
