"""Proof that holds until ``latest`` moves, end to end: no tenant on the old build, no step skipped,
no promote of an image nobody proved.

Runner emulation, the simulated CP and tenants, and Debian's docker-registry for ``latest``. Each
test asserts that the exit code, the outputs, the report, the CP's calls and the registry agree.
"""

from __future__ import annotations

import json

import pytest
import requests

from deploy.registry import REVISION_LABEL
from deploy.sim.fleet import OLD_SHA, TenantSpec, specs
from tests.support import SHA, TAG, buildinfo, poll, seeded, slugs


def calls(sim) -> list[list[str]]:
    return [call["only_slugs"] for call in sim.deploy_calls()]


def listed(result, output: str) -> list[str]:
    return json.loads(result.outputs[output])


def reported(server, slug: str) -> str:
    """What the tenant's /buildinfo says now ('' while it drops the connection)."""
    try:
        return requests.get(f"{server.url}/tenants/{slug}/buildinfo", timeout=5).json()["git_sha"]
    except requests.ConnectionError:
        return ""


# -- 1. a proof is not final: the final check before promote ---------------------------------


@pytest.mark.parametrize("each_batch", ["true", "false"])
def test_a_tenant_that_reverts_after_its_proof_fails_the_run_and_latest_stays(fleet, action, registry, repository,
                                                                             each_batch):
    old, _new = seeded(registry, repository)
    reverting = TenantSpec("t1", deploy_seconds=40, reverts_after=100)  # 0.5 s after its call, the old build again
    sim, server = fleet([reverting, *specs(["t2", "t3", "t4", "t5"], deploy_seconds=40)])
    result = action(server, batch_size="1", verify_url=buildinfo(server), verify_each_batch=each_batch,
                    verify_budget="2", promote_images=registry.image(repository))

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    assert calls(sim) == [["t1"], ["t2"], ["t3"], ["t4"], ["t5"]]
    assert registry.digest(repository, "latest") == old and result.outputs["promoted-digest"] == ""
    assert listed(result, "stale") == ["t1"] and result.outputs["verified"] == "4"
    assert sim.running_sha("t1") == OLD_SHA
    verdict = {tenant["slug"]: tenant for tenant in result.report["verify"]["tenants"]}["t1"]
    assert verdict["state"] == "stale" and verdict["running"] == OLD_SHA
    if each_batch == "true":  # proven after its call, then caught by the final check
        assert result.outputs["reason"].startswith("final check before promote: t1 is stale (reverted after its proof")
        assert "final check" in [span["name"] for span in result.report["timeline"]]
    else:  # the verify stage itself reads it on the old build
        assert result.outputs["reason"].startswith("verify failed: stale t1")


@pytest.mark.parametrize("each_batch", ["true", "false"])
def test_a_half_swapped_tenant_is_caught_by_the_final_check(fleet, action, registry, repository, each_batch):
    old, _new = seeded(registry, repository)
    sim, server = fleet([*specs(["t1", "t2"], deploy_seconds=10), TenantSpec("t3", deploy_seconds=10, alternates=True)])
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_each_batch=each_batch,
                    promote_images=registry.image(repository))

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    assert result.outputs["reason"].startswith("final check before promote: t3 is stale (reverted after its proof")
    assert listed(result, "stale") == ["t3"] and result.outputs["verified"] == "2"
    assert registry.digest(repository, "latest") == old
    assert len(calls(sim)) == 2  # the whole fleet was called: only the final check saw the other half


def test_a_healthy_fleet_is_read_once_more_right_before_promote(fleet, action, registry, repository):
    _old, new = seeded(registry, repository)
    _sim, server = fleet(specs(slugs(6), deploy_seconds=5))
    result = action(server, batch_size="3", verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 0 and result.outputs["verified"] == "6", result.stdout
    assert registry.digest(repository, "latest") == new
    reads = [request.path for request in server.seen("/tenants/")]
    # the snapshot, each batch's proof, the final check: three reads a tenant, no more
    assert all(reads.count(f"/tenants/{slug}/buildinfo") == 3 for slug in slugs(6)), reads
    assert "final check: 6/6 on target" in result.stdout


# -- 2. a re-run starts again from the canary -------------------------------------------------


def test_a_re_run_after_a_failed_soak_deploys_and_soaks_the_canary_again(fleet, action):
    canary = TenantSpec("t01", deploy_seconds=5, silent_after=40, silent_for=100)  # silent during the soak, a while
    sim, server = fleet([canary, *specs(slugs(7)[1:], deploy_seconds=5)])
    inputs = dict(canary="t01", soak_seconds="1.5", batch_size="3", verify_url=buildinfo(server))
    first = action(server, **inputs)
    assert first.code == 1 and first.outputs["aborted-at"] == "canary", first.stdout
    assert "canary t01 stopped answering" in first.outputs["reason"] and calls(sim) == [["t01"]]

    poll(lambda: reported(server, "t01"), SHA)
    second = action(server, **inputs)  # its snapshot sees the canary on the build

    assert (second.code, second.outputs["aborted-at"]) == (1, "canary"), second.stdout
    assert calls(sim) == [["t01"], ["t01"]]  # deployed again, soaked again, and no batch went out
    assert "canary t01 stopped answering" in second.outputs["reason"]
    assert "already reports the build; redeployed anyway" in second.stdout
    assert second.report["snapshot"]["tenants"][0]["sha"] == SHA and listed(second, "already-current") == []


def test_a_re_run_after_an_unhealthy_canary_deploys_the_canary_again_not_batch_1(fleet, action):
    canary = TenantSpec("t01", deploy_seconds=5, unhealthy=True)  # /buildinfo reports the build, healthz fails
    sim, server = fleet([canary, *specs(slugs(7)[1:], deploy_seconds=5)])
    first = action(server, canary="t01", batch_size="3", verify_url=buildinfo(server))
    second = action(server, canary="t01", batch_size="3", verify_url=buildinfo(server))

    for result in (first, second):
        assert (result.code, result.outputs["aborted-at"]) == (1, "canary"), result.stdout
        assert listed(result, "unhealthy") == ["t01"], result.outputs
    assert second.report["snapshot"]["tenants"][0] == {"slug": "t01", "sha": SHA, "problem": ""}
    assert calls(sim) == [["t01"], ["t01"]]
    assert "Canary | t01 already reported sha and was deployed again" in second.summary


# -- 3. a call that fails on the new build halts ----------------------------------------------


@pytest.mark.parametrize("verify", [True, False], ids=["snapshot", "no-verify-url"])
def test_a_build_that_crashes_on_start_everywhere_gets_no_second_batch(fleet, action, verify):
    sim, server = fleet(specs(slugs(6), deploy_seconds=5, refuses={TAG}))
    inputs = {"verify_url": buildinfo(server)} if verify else {"stages": "rollout"}
    result = action(server, batch_size="2", max_stragglers="3", **inputs)

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    assert calls(sim) == [["t01", "t02"]]
    assert result.outputs["aborted-at"] == "batch 1/3" and listed(result, "quarantined") == []
    reason = result.outputs["reason"]
    if verify:  # they answered before the run: the build, not the boxes, is at fault
        assert reason.startswith(f"batch 1/3: t01 failed on the new build, ran {OLD_SHA[:12]} before: redeploy with")
    else:
        assert reason.startswith("batch 1/3: no tenant reached the target (t01: redeploy with image tag")


def test_a_tenant_healthy_before_that_fails_on_the_new_build_is_not_quarantined(fleet, action, registry, repository):
    old, _new = seeded(registry, repository)
    tenants = specs(slugs(6), deploy_seconds=5)
    tenants[3].refuses = {TAG}  # t04 ran fine before; the new build does not start on it
    _sim, server = fleet(tenants)
    result = action(server, batch_size="3", max_stragglers="1", verify_url=buildinfo(server),
                    promote_images=registry.image(repository))

    assert (result.code, result.outputs["ok"]) == (1, "false"), result.stdout
    assert result.outputs["reason"].startswith(f"batch 2/2: t04 failed on the new build, ran {OLD_SHA[:12]} before")
    assert listed(result, "quarantined") == [] and listed(result, "stragglers") == ["t04"]
    assert registry.digest(repository, "latest") == old


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_the_seeds_dead_tenant_unreadable_before_is_still_quarantined(fleet, action, registry, repository,
                                                                      batch_size):
    _old, new = seeded(registry, repository)
    tenants = specs(slugs(6), deploy_seconds=5)
    tenants[2].dead = True  # t03: dead before the run, alone in its call with batch-size 1
    _sim, server = fleet(tenants)
    result = action(server, batch_size=batch_size, verify_url=buildinfo(server),
                    promote_images=registry.image(repository))

    assert (result.code, result.outputs["ok"]) == (0, "true"), result.stdout
    assert listed(result, "quarantined") == ["t03"] and result.outputs["verified"] == "5"
    assert registry.digest(repository, "latest") == new


# -- 4. latest moves to the image the fleet was proven on --------------------------------------


def test_a_target_tag_re_pushed_during_the_rollout_is_not_promoted(fleet, action, registry, repository):
    old, new = seeded(registry, repository)
    sim, server = fleet(specs(slugs(4), deploy_seconds=5))
    pushed: list[str] = []

    def re_push(body) -> None:
        if not pushed:
            pushed.append(registry.seed_index(repository, TAG, variant="pushed-over").digest)

    sim.after_deploy = re_push
    result = action(server, batch_size="2", verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    reason = result.outputs["reason"]
    assert reason.startswith("promote failed: ") and f"{TAG} moved during the run: it was {new}" in reason
    assert f"is {pushed[0]} now" in reason
    assert registry.digest(repository, "latest") == old and result.outputs["verified"] == "4"


def test_the_preflighted_digest_is_what_latest_moves_to(fleet, action, registry, repository):
    _old, new = seeded(registry, repository)
    _sim, server = fleet(specs(slugs(3), deploy_seconds=5))
    result = action(server, verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == 0, result.stdout
    assert f"promote preflight: {registry.image(repository)}:{TAG} is {new}" in result.stdout
    assert result.outputs["promoted-digest"] == new == registry.digest(repository, "latest")
    assert "no org.opencontainers.image.revision label" in result.stdout  # said once, not per image


def test_a_target_tag_naming_another_commit_is_a_configuration_error(fleet, action):
    sim, server = fleet(specs(slugs(3), running=SHA))
    result = action(server, target_tag="staging-0000000", verify_url=buildinfo(server))

    assert (result.code, result.outputs["outcome"]) == (2, "failed"), result.stdout
    assert "target-tag: 'staging-0000000' names commit 0000000, not sha 8ddce85f3b2a" in result.outputs["reason"]
    assert server.seen() == [] and sim.calls == []


@pytest.mark.parametrize("label, code", [(SHA, 0), (SHA[:12], 0), ("1" * 40, 1), (SHA + "-dirty", 1)])
def test_an_image_whose_revision_label_names_another_commit_stops_before_any_deploy(fleet, action, registry,
                                                                                   repository, label, code):
    registry.seed_index(repository, "latest", variant="previous")
    new = registry.seed_index(repository, TAG, variant="labelled", labels={REVISION_LABEL: label})
    sim, server = fleet(specs(slugs(3), deploy_seconds=5))
    result = action(server, verify_url=buildinfo(server), promote_images=registry.image(repository))

    assert result.code == code, result.stdout
    if code:
        assert calls(sim) == [] and registry.digest(repository, "latest") != new.digest
        assert result.outputs["reason"].startswith("promote preflight, before any deploy: ")
        assert f"(its {REVISION_LABEL} label), not sha {SHA[:12]}" in result.outputs["reason"]
    else:
        assert f"built from {label[:12]}" in result.stdout and registry.digest(repository, "latest") == new.digest


def test_a_rebuild_of_the_same_commit_says_how_many_were_skipped_and_how_to_ship_it(fleet, action):
    sim, server = fleet(specs(slugs(5), running=SHA))
    result = action(server, target_tag="rebuild-2", verify_url=buildinfo(server))

    assert result.code == 0 and calls(sim) == [], result.stdout
    assert "5 tenants already report the build's commit, not redeployed (to ship a rebuild of the same commit, set " \
           "skip-current: false)" in result.stdout
    assert "| Already current | 5 not redeployed" in result.summary and "skip-current\\: false" in result.summary


# -- 5. only a commit SHA names the build -------------------------------------------------------


def test_a_dirty_build_is_not_the_build(fleet, action):
    dirty = SHA + "-dirty"
    sim, server = fleet([TenantSpec("t1", running=dirty, deploy_seconds=5), *specs(["t2"], deploy_seconds=5)],
                        builds={TAG: dirty})
    result = action(server, verify_url=buildinfo(server), verify_budget="0.5")

    assert result.code == 1, result.stdout
    assert calls(sim) == [["t1", "t2"]]  # t1's "<sha>-dirty" is not current: it is deployed
    assert listed(result, "already-current") == [] and listed(result, "stale") == ["t1", "t2"]


# -- 6. the dry run is the plan -----------------------------------------------------------------


def test_the_dry_run_plans_exactly_the_calls_the_run_makes(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=5)
    for index in (0, 2, 3):  # the canary t01, and t03, t04, already run the build
        tenants[index].running = SHA
    sim, server = fleet(tenants)
    inputs = dict(canary="t01", batch_size="2", verify_url=buildinfo(server), on_failure="rollback",
                  timeout="120")
    plan = action(server, dry_run="true", **inputs)
    assert plan.code == 0 and calls(sim) == [], plan.stdout
    run = action(server, **inputs)

    assert run.code == 0, run.stdout
    assert plan.report["rollout"]["planned_batches"] == calls(sim) == [["t01"], ["t02", "t05"], ["t06"]]
    assert listed(plan, "already-current") == listed(run, "already-current") == ["t03", "t04"]
    assert "  1. canary: t01" in plan.stdout and "  3. batch 2/2: t06" in plan.stdout
    assert "dry run: on-failure: rollback — a run that fails after a deploy call redeploys latest" in plan.stdout


# -- 7. proof off is said -------------------------------------------------------------------------


def test_a_verify_url_without_the_verify_stage_warns_that_nothing_is_proven(fleet, action, registry, repository):
    seeded(registry, repository)
    _sim, server = fleet(specs(slugs(3), deploy_seconds=5))
    result = action(server, stages="rollout,promote", verify_url=buildinfo(server),
                    promote_images=registry.image(repository))

    assert result.code == 0, result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning title=proof off")]
    assert len(warnings) == 1 and "latest moves on the CP's word" in warnings[0]
    assert result.report["rollout"]["proofs"] == [] and "| Verify | not verified" in result.summary


# -- bake time per batch ---------------------------------------------------------------------------


def test_a_batch_that_goes_back_during_its_bake_halts_before_the_next_call(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=5)
    tenants[1].reverts_after = 60  # t02: proven when its call returns, back on the old build 0.3 s later
    sim, server = fleet(tenants)
    result = action(server, batch_size="2", batch_soak_seconds="1.5", verify_url=buildinfo(server))

    assert (result.code, result.outputs["aborted-at"]) == (1, "batch 1/3"), result.stdout
    assert calls(sim) == [["t01", "t02"]]
    assert result.outputs["reason"].startswith(f"batch 1/3: t02 went back to {OLD_SHA[:12]}, not {SHA[:12]}")
    assert "into its bake" in result.outputs["reason"] and listed(result, "stale") == ["t02"]
    bakes = [span for span in result.report["rollout"]["proofs"] if span["label"].startswith("bake")]
    assert [(span["label"], span["ok"]) for span in bakes] == [("bake batch 1/3", False)]


def test_a_healthy_fleet_bakes_after_every_batch(fleet, action):
    _sim, server = fleet(specs(slugs(4), deploy_seconds=5))
    result = action(server, batch_size="2", batch_soak_seconds="0.3", verify_url=buildinfo(server))

    assert result.code == 0 and result.outputs["verified"] == "4", result.stdout
    bakes = [span for span in result.report["rollout"]["proofs"] if span["label"].startswith("bake")]
    assert [span["label"] for span in bakes] == ["bake batch 1/2", "bake batch 2/2"]
    assert all(span["ok"] and span["seconds"] >= 0.3 for span in bakes)
    assert "bake batch 1/2" in result.summary  # on the timeline


# -- the snapshot is a preflight -----------------------------------------------------------------


def test_a_mistyped_verify_field_stops_before_the_first_deploy_call(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=5)
    tenants[3].dead = True  # unreadable: it does not count either way
    sim, server = fleet(tenants)
    result = action(server, canary="t01", verify_url=buildinfo(server), verify_field="gitsha")

    assert (result.code, result.outputs["outcome"]) == (2, "failed"), result.stdout
    assert calls(sim) == []
    reason = result.outputs["reason"]
    assert "verify-field is 'gitsha', which no tenant's answer holds: 3 tenants answered 200 without it" in reason
    assert "they hold git_sha, service, slug" in reason


def test_the_snapshot_counts_unreadable_tenants_by_reason(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=5)
    tenants[1].dead = tenants[2].dead = True
    tenants[3].flapping = True  # its first read is a 503
    _sim, server = fleet(tenants)
    result = action(server, verify_url=buildinfo(server), max_stragglers="2")

    assert result.code == 0, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("snapshot: "))
    assert "3 on another build, 3 unreadable (2 " in line and line.endswith("; 1 HTTP 503)"), line  # reset or closed


# -- latest never names an image built from another commit, whatever the stages ---------------------


def test_verify_then_promote_refuses_an_image_built_from_another_commit(fleet, action, registry, repository):
    old = registry.seed_index(repository, "latest", variant="previous").digest
    registry.seed_index(repository, TAG, variant="labelled", labels={REVISION_LABEL: "1" * 40})
    sim, server = fleet(specs(slugs(3), running=SHA))
    result = action(server, stages="verify,promote", verify_url=buildinfo(server),
                    promote_images=registry.image(repository))

    assert result.code == 1 and 'was built from "111111111111' in result.outputs["reason"], result.stdout
    assert registry.digest(repository, "latest") == old and sim.deploy_calls() == []


@pytest.mark.parametrize("target_tag", ["staging-ABCDEF0", "staging-" + "AB" * 32])
def test_a_target_tag_whose_suffix_names_another_commit_in_any_case_is_exit_2(fleet, action, target_tag):
    sim, server = fleet(specs(slugs(3), running=SHA))
    result = action(server, target_tag=target_tag, verify_url=buildinfo(server))

    assert result.code == 2 and "target-tag" in result.outputs["reason"], result.stdout
    assert sim.deploy_calls() == []
