"""Unknown outcomes settled by the tenants' own word, and a rollback that tells the truth, end to end.

Runner emulation, the simulated CP, tenants and forge, and Debian's docker-registry. After every run
the CP's log, the tenants' final builds, the outputs and the report must agree, and no two deploys
of one tenant may overlap in time (:func:`agree`).
"""

from __future__ import annotations

import json

import pytest

from deploy.registry import REVISION_LABEL
from deploy.sim.fleet import OLD_SHA, Fault, TenantSpec, builds_for, overlapping, specs
from tests.support import NEWER_SHA, SHA, TAG, buildinfo, deployed, forge_for, github_context, slugs


def listed(result, output: str) -> list[str]:
    return json.loads(result.outputs[output])


def agree(sim, result, fleet_slugs: list[str], back_to: str = OLD_SHA) -> None:
    """The CP's log, the tenants' builds, the outputs and the report say the same, and no deploys overlapped."""
    assert overlapping(sim.deploy_log) == [], overlapping(sim.deploy_log)
    shipped, rolled_back = set(listed(result, "shipped")), set(listed(result, "rolled-back"))
    not_started = set(listed(result, "not-started"))
    assert rolled_back <= shipped | set(result.report["rollback"]["tenants"] if result.report["rollback"] else ())
    for slug in fleet_slugs:
        running = sim.running_sha(slug)
        if slug in rolled_back:
            assert running == back_to, (slug, running)
        elif slug in shipped:
            assert running == SHA, (slug, running)
        elif slug in not_started:
            assert slug not in deployed(sim), slug  # no call ever asked the CP for it
    on_sha = {slug for slug in fleet_slugs if sim.running_sha(slug) == SHA}
    assert int(result.outputs["verified"]) <= len(on_sha)
    assert set(listed(result, "stragglers")).isdisjoint(not_started)


# -- 1. inconclusive is not failure --------------------------------------------------------------


def test_a_forge_blip_between_calls_holds_and_never_rolls_back(fleet, action):
    """The kill switch stays false, but its read between calls answers 502 on every try: fail closed, hold."""
    forge = forge_for()
    forge.variables["DEPLOY_FROZEN"] = "false"
    sim, server = fleet(specs(slugs(6), deploy_seconds=1), forge, builds=builds_for(TAG, SHA))

    def blip(body) -> None:
        if len(sim.deploy_calls()) == 1:
            forge.fault("actions/variables/DEPLOY_FROZEN", 502, times=10)

    sim.after_deploy = blip
    result = action(server, github_context(server), batch_size="2", verify_url=buildinfo(server),
                    disabled_variable="DEPLOY_FROZEN", on_failure="rollback")

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    reason = result.outputs["reason"]
    assert reason.startswith("kill switch unreadable, failing closed") and "HTTP 502" in reason
    assert reason.endswith("on-failure: rollback not run: what could not be read is no evidence against the build, "
                           "the fleet holds where it is")
    assert deployed(sim, "latest") == [] and result.report["rollback"] is None
    assert listed(result, "shipped") == ["t01", "t02"] and result.report["rollout"]["stopped"] == "held"
    agree(sim, result, slugs(6))


# -- 2. a 5xx is no answer: the tenants say what the CP did ------------------------------------


def test_a_cp_500_after_the_deploy_landed_counts_the_tenants_that_moved(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=1)
    tenants[5].stale = True  # batch 3/3 is not proven: a rollback follows
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))

    def fail_batch_2(body) -> None:
        if len(sim.deploy_calls()) == 1:
            sim.faults.append(Fault("500-after"))

    sim.after_deploy = fail_batch_2
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", retry_delays="none",
                    on_failure="rollback")

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    batch_2 = result.report["rollout"]["calls"][1]
    assert (batch_2["status"], batch_2["ok"]) == (500, True)  # every tenant read on the build: answered
    assert [(row["slug"], row["verified_on_target"]) for row in batch_2["settled"]] == [("t03", True), ("t04", True)]
    assert listed(result, "shipped") == slugs(6) and listed(result, "rolled-back") == slugs(6)  # t06: the CP's word
    assert sorted(deployed(sim, "latest")) == slugs(6)
    agree(sim, result, slugs(6))


# -- 3. at most one deploy in flight per tenant ------------------------------------------------


@pytest.mark.parametrize("retries", ["none", "0.05,0.05"])
def test_a_cp_slower_than_its_worst_case_is_never_sent_an_overlapping_deploy(fleet, action, retries):
    """Each deploy takes 3 s; the CP declared 1.95 s, and rollout-timeout gives up at 2.5 s."""
    sim, server = fleet(specs(slugs(3), deploy_seconds=600), builds=builds_for(TAG, SHA))
    result = action(server, batch_size="3", verify_url=buildinfo(server), rollout_timeout="2.5",
                    retry_delays=retries, on_failure="rollback", timeout="60")

    assert result.code == 0, result.stdout  # the tenants said the call had landed
    assert overlapping(sim.deploy_log) == [] and len(sim.deploy_calls()) == 1
    call = result.report["rollout"]["calls"][0]
    assert call["state"] == "answered" and {row["slug"] for row in call["settled"]} == set(slugs(3))
    agree(sim, result, slugs(3))


def test_a_gateway_504_while_the_cp_goes_on_is_settled_without_a_second_deploy(fleet, action):
    sim, server = fleet(specs(slugs(4), deploy_seconds=200), builds=builds_for(TAG, SHA),
                        faults=[Fault("gateway-504", seconds=0.3)])
    result = action(server, batch_size="4", verify_url=buildinfo(server), on_failure="rollback")

    assert result.code == 0, result.stdout
    assert len(sim.deploy_calls()) == 1 and overlapping(sim.deploy_log) == []
    assert "its tenants say: 4 tenants on the build" in result.stdout
    agree(sim, result, slugs(4))


def test_without_verify_url_a_retry_waits_out_the_call_and_carries_the_same_key(fleet, action):
    sim, server = fleet(specs(slugs(2), deploy_seconds=600), builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url="", rollout_timeout="2.5", retry_delays="0.05", timeout="60")

    assert result.code == 0, result.stdout
    assert overlapping(sim.deploy_log) == [] and len(sim.deploy_calls()) == 1 and len(sim.replays) == 1
    keys = {request.headers["idempotency-key"] for request in server.seen(sim.redeploy_path, "POST")
            if b'"dry_run": false' in request.body}
    assert len(keys) == 1 and next(iter(keys)).startswith('"fleet-rollout:')


def test_an_unknown_call_rolled_back_without_verify_url_waits_until_it_cannot_still_run(fleet, action):
    """A gateway gives up on batch 1 at 0.3 s while the CP goes on (1.5 s): with retry-delays none and no
    verify-url, the rollback must not overtake the forward deploy still landing."""
    sim, server = fleet(specs(slugs(4), deploy_seconds=300), builds=builds_for(TAG, SHA),
                        faults=[Fault("gateway-504", seconds=0.3)])
    result = action(server, batch_size="2", verify_url="", retry_delays="none", on_failure="rollback")

    assert result.code == 1 and "batch 1/2 (t01, t02) outcome unknown" in result.outputs["reason"], result.stdout
    assert "rollback: waiting" in result.stdout
    assert overlapping(sim.deploy_log) == [], overlapping(sim.deploy_log)
    assert [sim.running_sha(slug) for slug in slugs(4)] == [OLD_SHA] * 4  # the forward deploy did not land last
    assert listed(result, "rolled-back") == ["t01", "t02"] and listed(result, "not-started") == ["t03", "t04"]


# -- 4. a rollback goes back to a named build, and is judged by it ------------------------------


B_SHA = NEWER_SHA  # an earlier run's build, left on part of the fleet
B_TAG = f"staging-{B_SHA[:7]}"


def test_a_rollback_in_a_fleet_left_mixed_is_judged_by_the_build_rollback_tag_names(fleet, action, registry,
                                                                                     repository):
    registry.seed_index(repository, "latest", variant="a", labels={REVISION_LABEL: OLD_SHA})
    registry.seed_index(repository, TAG, variant="c", labels={REVISION_LABEL: SHA})
    tenants = specs(slugs(6), deploy_seconds=1)
    for tenant in tenants[:2]:
        tenant.running = B_SHA  # run B shipped batch 1, then was superseded
    tenants[3].stale = True  # run C's batch 2 is not proven
    sim, server = fleet(tenants, builds={**builds_for(TAG, SHA), B_TAG: B_SHA})
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback",
                    promote_images=registry.image(repository))

    assert result.code == 1, result.stdout
    assert result.outputs["reason"].endswith("rolled back 4 tenants"), result.outputs["reason"]
    assert result.report["rollback"]["build"] == OLD_SHA and result.report["rollback"]["not_rolled_back"] == []
    assert [sim.running_sha(slug) for slug in slugs(6)] == [OLD_SHA] * 6  # all on A, latest's build
    assert f"rollback-tag check: {registry.image(repository)}:latest is sha256:" in result.stdout
    agree(sim, result, slugs(6))


# -- 5. rollback-tag is checked before the fleet moves -----------------------------------------


def test_a_rollback_tag_the_registry_lacks_stops_the_run_before_any_deploy(fleet, action, registry, repository):
    registry.seed_index(repository, "latest", variant="a")
    registry.seed_index(repository, TAG, variant="c")
    sim, server = fleet(specs(slugs(3), deploy_seconds=1), builds=builds_for(TAG, SHA))
    result = action(server, verify_url=buildinfo(server), on_failure="rollback", rollback_tag="lastest",
                    promote_images=registry.image(repository))

    assert (result.code, result.outputs["outcome"]) == (1, "failed"), result.stdout
    assert result.outputs["reason"].startswith("rollback-tag check, before any deploy: ")
    assert "has no tag 'lastest'" in result.outputs["reason"] and sim.deploy_calls() == []


def test_without_promote_images_the_rollback_tag_cannot_be_checked_and_the_log_says_so(fleet, action):
    _sim, server = fleet(specs(slugs(2), deploy_seconds=1), builds=builds_for(TAG, SHA))
    result = action(server, verify_url=buildinfo(server), on_failure="rollback")

    assert result.code == 0, result.stdout
    assert "rollback-tag latest: not checked (promote-images is empty" in result.stdout


def test_tenants_that_never_swapped_are_not_listed_to_roll_back_by_hand(fleet, action):
    """Batch 2's tenants refuse the build (they stay on A); its rollback call fails too: they are back anyway."""
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[2].refuses = {TAG, "latest"}
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), on_failure="rollback", max_stragglers="0")

    assert result.code == 1, result.stdout
    assert result.report["rollback"]["not_rolled_back"] == [], result.outputs["reason"]
    agree(sim, result, slugs(4))


# -- 6. time that adds up -----------------------------------------------------------------------


def test_a_proof_cut_by_the_room_kept_for_a_rollback_is_unproven_not_stale(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=300)  # batches 1 and 2: 1.5 s each
    for tenant in tenants[4:]:
        tenant.deploy_seconds, tenant.settle_seconds = 20, 1000  # batch 3: reports the build only after 5 s
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    # timeout 14 keeps 6.95 s for a rollback: batch 3 starts about 3.1 s in, with under 4 s for its proof of 5
    result = action(server, batch_size="2", verify_url=buildinfo(server), on_failure="rollback", timeout="14")

    assert result.code == 1, result.stdout
    reason = result.outputs["reason"]
    assert "is unproven (cut by the overall timeout" in reason and "stale" not in reason.split(";")[0], reason
    assert listed(result, "stale") == []
    agree(sim, result, slugs(6))


# -- 7. outputs that say what is true at the end ------------------------------------------------


def test_after_a_rollback_verified_counts_only_the_tenants_still_on_the_build(fleet, action):
    tenants = specs(slugs(6), deploy_seconds=1)
    tenants[4].stale = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    assert result.code == 1, result.stdout
    assert listed(result, "rolled-back") == slugs(6)[:6] or listed(result, "rolled-back") == slugs(6)[:5]
    assert result.outputs["verified"] == "0"  # every proven tenant went back
    assert "since rolled back" in result.summary
    agree(sim, result, slugs(6))


def test_a_run_halted_at_the_canary_lists_the_others_as_not_started_not_stragglers(fleet, action):
    canary = TenantSpec("t01", deploy_seconds=1, unhealthy=True)
    sim, server = fleet([canary, *specs(slugs(5)[1:], deploy_seconds=1)])
    result = action(server, canary="t01", verify_url=buildinfo(server))

    assert (result.code, result.outputs["aborted-at"]) == (1, "canary"), result.stdout
    assert listed(result, "unhealthy") == ["t01"] and listed(result, "stragglers") == []
    assert listed(result, "not-started") == slugs(5)[1:]
    row = next(line for line in result.summary.splitlines() if line.startswith("| t01 "))
    assert "unhealthy" in row and "healthz" in row
    agree(sim, result, slugs(5))


# -- one key per call: a re-scoped retry never deploys a tenant twice at once ------------------------


@pytest.mark.parametrize("already_on_sha", ["skip-current off", "snapshot unreadable"])
def test_a_rescoped_retry_carries_the_calls_key_so_a_slow_cp_replays(fleet, action, already_on_sha):
    """The gateway gives up at 0.3 s while the CP goes on for 3 s, past its declared worst case
    (1.95 s). After the worst case t01 reports sha (it ran it already), t02 the old build: the retry
    goes to t02 alone, under the call's key, and the CP replays instead of deploying t02 again."""
    tenants = specs(slugs(2), deploy_seconds=600)
    tenants[0].running = SHA
    inputs = {"skip_current": "false"} if already_on_sha == "skip-current off" else {}
    tenants[0].flapping = already_on_sha == "snapshot unreadable"  # its snapshot read fails: deployed anyway
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), faults=[Fault("gateway-504", seconds=0.3)])
    result = action(server, batch_size="2", verify_url=buildinfo(server), retry_delays="0.05", timeout="60", **inputs)

    assert overlapping(sim.deploy_log) == [], overlapping(sim.deploy_log)
    assert [body["only_slugs"] for body in sim.replays] == [["t02"]]
    assert result.code == 0 and sim.running_sha("t02") == SHA, result.stdout


@pytest.mark.parametrize("verify_url", [False, True])
def test_a_refused_retry_after_a_landed_unknown_attempt_still_rolls_back(fleet, action, verify_url):
    """Attempt 1: a gateway 504 while the CP goes on and lands t01, t02; the retry is refused (403).
    The refusal says nothing about attempt 1: the tenants settle it, and a rollback sends back what
    may have moved."""
    sim, server = fleet(specs(slugs(4), deploy_seconds=100), builds=builds_for(TAG, SHA),
                        faults=[Fault("gateway-504", seconds=0.1), Fault("403")])
    result = action(server, batch_size="2", verify_url=buildinfo(server) if verify_url else "", retry_delays="0.05",
                    on_failure="rollback")

    assert result.code == 1, result.stdout
    assert [sim.running_sha(slug) for slug in slugs(4)] == [OLD_SHA] * 4
    assert sorted(listed(result, "rolled-back")) == ["t01", "t02"], result.outputs
    assert overlapping(sim.deploy_log) == []


def test_verified_counts_no_tenant_a_rollback_moved_off_sha(fleet, action):
    """A fleet left mixed by an earlier run (t01, t02 on its build), no revision label to judge by:
    every tenant ends on the previous build, so none counts as verified, proven or not back."""
    tenants = specs(slugs(6), deploy_seconds=1)
    for tenant in tenants[:2]:
        tenant.running = NEWER_SHA
    tenants[3].stale = True
    sim, server = fleet(tenants, builds={**builds_for(TAG, SHA), f"staging-{NEWER_SHA[:7]}": NEWER_SHA})
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    assert result.code == 1, result.stdout
    on_sha = [slug for slug in slugs(6) if sim.running_sha(slug) == SHA]
    assert int(result.outputs["verified"]) == len(on_sha), (on_sha, result.outputs)
