"""Fleet state end to end, the cases around the main paths: when a rollback must never run, the
triggers that do start one, what the snapshot reads (and when), and a rollback tag of its own.

Runner emulation, the simulated CP, tenants and forge, and a real registry where promote runs
(Debian's docker-registry, or the simulator's registry on the CP's port when the test must unplug it).
"""

from __future__ import annotations

import json

import pytest

from deploy.sim.fleet import OLD_SHA, Fault, TenantSpec, builds_for, specs
from deploy.sim.local_registry import RunningRegistry
from deploy.sim.registry import SimRegistry
from deploy.sim.server import Request, Response
from tests.support import (
    NEWER_SHA,
    SHA,
    TAG,
    assert_no_secrets,
    buildinfo,
    deployed,
    forge_for,
    github_context,
    seeded,
    slugs,
)

STABLE_SHA = "5ab1e0c0ffee" + "1" * 28  # what a `stable` tag names: neither latest's build nor the new one
FAST_DEAD = {"cp_tenant_timeout": 60, "cp_settle_seconds": 20}  # a dead tenant's call: 80 sim s, 0.4 s real


def rollback_calls(sim) -> list[dict]:
    return [call for call in sim.deploy_calls() if call["target_tag"] != TAG]


def first_deploy_index(server, sim) -> int:
    """Where the first real (not dry-run) deploy call is in the server's request record."""
    return next(i for i, request in enumerate(server.requests)
                if request.path == sim.redeploy_path and request.method == "POST" and not request.json()["dry_run"])


class Unpluggable:
    """The simulator's registry, until ``down``: then every request under /v2/ has its connection dropped."""

    def __init__(self) -> None:
        self.registry, self.down = SimRegistry(), False

    def handle(self, request: Request) -> Response | None:
        if self.down and request.path.startswith("/v2/"):
            return Response(reset=True)
        return self.registry.handle(request)


# 1. Never roll back


def assert_no_rollback(sim, result) -> None:
    assert rollback_calls(sim) == [], rollback_calls(sim)
    assert result.outputs["rolled-back"] == "[]" and result.report["rollback"] is None
    assert "rolled back" not in result.outputs["reason"] and "rollback" not in result.outputs["reason"]
    assert "### Rollback" not in result.summary


def test_a_promote_whose_source_tag_vanished_after_verify_never_rolls_back(fleet, action, registry, repository):
    """The preflight saw the source; it is gone by promote. The fleet is verified on the new build: it stays."""
    old, new = seeded(registry, repository)

    def delete_source(body):
        if body["target_tag"] == TAG and registry.digest(repository, TAG):
            with registry.api() as api:
                assert api.delete(f"{registry.url}/v2/{repository}/manifests/{new}", timeout=10).status_code == 202

    sim, server = fleet(specs(slugs(4), deploy_seconds=1), builds=builds_for(TAG, SHA), after_deploy=delete_source)
    result = action(server, batch_size="2", verify_url=buildinfo(server), on_failure="rollback",
                    promote_images=registry.image(repository))

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    assert result.outputs["reason"].startswith("promote failed: ") and f"source {TAG} not found" in \
        result.outputs["reason"]
    assert result.outputs["verified"] == "4"
    assert deployed(sim) == slugs(4)
    assert_no_rollback(sim, result)
    assert all(sim.running_sha(slug) == SHA for slug in slugs(4))
    assert registry.digest(repository, "latest") == old


def test_a_promote_to_an_unreachable_registry_after_verify_never_rolls_back(fleet, action, tmp_path):
    unpluggable = Unpluggable()
    sim, server = fleet(specs(slugs(4), deploy_seconds=1), unpluggable, builds=builds_for(TAG, SHA),
                        after_deploy=lambda body: setattr(unpluggable, "down", True))
    registry = RunningRegistry(server.url.removeprefix("http://"), tmp_path)
    registry.seed_index("acme/app", "latest", variant="previous")
    registry.seed_index("acme/app", TAG, variant="new")
    result = action(server, batch_size="2", verify_url=buildinfo(server), on_failure="rollback",
                    promote_images=registry.image("acme/app"))

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    assert result.outputs["reason"].startswith("promote failed: "), result.outputs["reason"]
    assert result.outputs["verified"] == "4" and deployed(sim) == slugs(4)
    assert server.seen("/v2/", "GET")  # the preflight read the source before the fleet moved
    assert_no_rollback(sim, result)
    assert all(sim.running_sha(slug) == SHA for slug in slugs(4))


def test_a_dry_run_with_on_failure_rollback_reads_only_the_snapshot_and_rolls_nothing_back(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[1].dead = tenants[2].stale = True  # a real run would fail here
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, dry_run="true", batch_size="2", max_stragglers="0", verify_url=buildinfo(server),
                    on_failure="rollback")

    assert result.code == 0 and result.outputs["outcome"] == "planned", result.stdout
    assert [call["dry_run"] for call in sim.calls] == [True]  # the enumeration, nothing else
    assert sorted(r.path for r in server.seen("/tenants/")) == [f"/tenants/{s}/buildinfo" for s in slugs(4)]
    assert [t["slug"] for t in result.report["snapshot"]["tenants"]] == slugs(4)  # one read each: the plan's
    assert "dry run: on-failure: rollback" in result.stdout
    assert_no_rollback(sim, result)


@pytest.mark.parametrize(("calls", "each_batch", "where"), [(1, "true", "before batch 2/3"),
                                                            (3, "false", "before verify")])
def test_a_run_superseded_mid_rollout_skips_and_never_rolls_back(fleet, action, calls, each_batch, where):
    forge = forge_for()
    sim, server = fleet(specs(slugs(6), deploy_seconds=1), forge, builds=builds_for(TAG, SHA))
    forge.change_after_deploys(sim, calls, branches={"main": NEWER_SHA})
    result = action(server, github_context(server), batch_size="2", verify_url=buildinfo(server),
                    verify_each_batch=each_batch, on_failure="rollback")

    assert result.code == 0 and result.outputs["outcome"] == "skipped", result.stdout
    assert f"superseded {where}" in result.outputs["reason"] and NEWER_SHA in result.outputs["reason"]
    assert deployed(sim) == slugs(2 * calls)
    assert_no_rollback(sim, result)
    assert all(sim.running_sha(slug) == SHA for slug in slugs(2 * calls))


# 2. Rollback triggers


def test_an_abort_by_the_live_kill_switch_holds_and_never_rolls_back(fleet, action):
    """A person set the kill switch to make the fleet hold still: on-failure: rollback must not move it."""
    forge = forge_for()
    sim, server = fleet(specs(slugs(6), deploy_seconds=1), forge, builds=builds_for(TAG, SHA))
    forge.change_after_deploys(sim, 2, variables={"DEPLOY_FROZEN": "true"})
    result = action(server, github_context(server), batch_size="2", verify_url=buildinfo(server),
                    disabled_variable="DEPLOY_FROZEN", on_failure="rollback")

    assert result.code == 1 and result.outputs["outcome"] == "aborted", result.stdout
    reason = result.outputs["reason"]
    assert reason.startswith("kill switch: repository variable DEPLOY_FROZEN was set during the rollout")
    assert reason.endswith("on-failure: rollback not run: a person set the kill switch, the fleet holds where it is")
    assert deployed(sim) == slugs(4) and rollback_calls(sim) == []  # batch 3/3 never started, nothing sent back
    assert result.outputs["rolled-back"] == "[]" and result.report["rollback"] is None
    assert json.loads(result.outputs["shipped"]) == slugs(4)
    assert [sim.running_sha(slug) for slug in slugs(6)] == [SHA] * 4 + [OLD_SHA] * 2


def test_too_many_stragglers_roll_back_the_deployed_tenants_but_not_the_dead_ones(fleet, action):
    """t02 dies in batch 1 (within max-stragglers 1), t05 in batch 3: out of tolerance. Their redeploys
    never completed, so they still run what they ran: the rollback leaves them alone."""
    tenants = specs(slugs(6), deploy_seconds=1)
    tenants[1].dead = tenants[4].dead = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), **FAST_DEAD)
    result = action(server, batch_size="2", max_stragglers="1", verify_url=buildinfo(server),
                    on_failure="rollback")

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    reason = result.outputs["reason"]
    assert "2 stragglers exceed max-stragglers 1" in reason and reason.endswith("rolled back 4 tenants")
    assert deployed(sim) == slugs(6)
    assert [call["only_slugs"] for call in rollback_calls(sim)] == [["t01", "t03"], ["t04", "t06"]]
    assert json.loads(result.outputs["rolled-back"]) == ["t01", "t03", "t04", "t06"]
    assert result.outputs["quarantined"] == "[]"
    assert all(sim.running_sha(slug) == OLD_SHA for slug in slugs(6))


def test_a_failed_verify_stage_without_per_batch_proof_rolls_back(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[2].stale = True  # t03 never reports the build
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_each_batch="false",
                    verify_budget="1", on_failure="rollback")

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    reason = result.outputs["reason"]
    assert reason.startswith("verify failed: ") and reason.endswith("rolled back 4 tenants")
    assert json.loads(result.outputs["stale"]) == ["t03"]
    assert result.report["rollout"]["proofs"] == []  # the verify stage, not a per-call proof, failed
    assert deployed(sim) == slugs(4) and deployed(sim, "latest") == slugs(4)
    assert json.loads(result.outputs["rolled-back"]) == slugs(4)
    assert {v["slug"]: v["state"] for v in result.report["rollback"]["verify"]["tenants"]} == dict.fromkeys(
        slugs(4), "verified")


@pytest.mark.parametrize("verify", [True, False], ids=["tenants-read", "no-verify-url"])
def test_a_call_that_got_no_readable_answer_is_settled_by_its_tenants_or_rolled_back_without_them(
        fleet, action, verify):
    """Batch 2/3's connection is dropped on every try. With verify-url its tenants say they never moved, so
    they are left alone; without it they may have moved, so they go back too."""
    tenants = specs(slugs(6), deploy_seconds=1)
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))

    def drop_the_next_call(body):  # every try of batch 2/3: the first and its three retries
        if body["target_tag"] == TAG and body["only_slugs"] == ["t01", "t02"]:
            sim.faults.extend([Fault("reset")] * 4)

    sim.after_deploy = drop_the_next_call
    result = action(server, batch_size="2", verify_url=buildinfo(server) if verify else "", on_failure="rollback")

    assert result.code == 1 and result.outputs["outcome"] == "failed", result.stdout
    assert "outcome unknown" in result.outputs["reason"], result.outputs["reason"]
    assert deployed(sim) == ["t01", "t02"]  # the dropped tries were never recorded: t03, t04 did not move
    went_back = slugs(2) if verify else slugs(4)
    assert [slug for call in rollback_calls(sim) for slug in call["only_slugs"]] == went_back
    assert json.loads(result.outputs["rolled-back"]) == went_back and result.outputs["reason"].endswith(
        f"rolled back {len(went_back)} tenants")
    if verify:
        batch_2 = result.report["rollout"]["calls"][1]
        assert [row["slug"] for row in batch_2["settled"]] == ["t03", "t04"]
        assert all(row["verified_on_target"] is False for row in batch_2["settled"])
        assert "its tenants say: 0 tenants on the build (none), 2 still on the build before" in result.stdout


# 3. The snapshot


def test_without_verify_url_there_is_no_snapshot_and_every_tenant_is_deployed(fleet, action):
    tenants = [TenantSpec(slug, deploy_seconds=1, running=SHA if slug in ("t02", "t04") else None)
               for slug in slugs(5)]
    sim, server = fleet(tenants)
    result = action(server, batch_size="2", verify_url="")

    assert result.code == 0, result.stdout
    snapshot_lines = [line for line in result.stdout.splitlines() if "snapshot" in line]
    assert len(snapshot_lines) == 1 and "snapshot: none, verify-url is empty" in snapshot_lines[0], snapshot_lines
    assert deployed(sim) == slugs(5)  # t02, t04 already ran the build: without a snapshot nobody knows
    assert result.outputs["already-current"] == "[]" and result.report["snapshot"] is None
    assert server.seen("/tenants/") == []


def test_without_verify_url_a_rollback_takes_the_cps_word(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[3].dead = True
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), **FAST_DEAD)
    result = action(server, batch_size="2", max_stragglers="0", verify_url="", on_failure="rollback")

    assert result.code == 1, result.stdout
    assert result.outputs["reason"].endswith("rolled back 3 tenants")
    assert deployed(sim, "latest") == ["t01", "t02", "t03"]
    assert json.loads(result.outputs["rolled-back"]) == ["t01", "t02", "t03"]
    assert result.report["rollback"]["verify"] is None and server.seen("/tenants/") == []


def test_a_tenant_unreadable_in_the_snapshot_is_deployed(fleet, action):
    """t02 already runs the build, but its first /buildinfo read (the snapshot's) answers 503: deployed.
    t03 runs it too and answers: skipped."""
    tenants = [TenantSpec(slug, deploy_seconds=1, running=SHA if slug in ("t02", "t03") else None)
               for slug in slugs(4)]
    tenants[1].flapping = True
    sim, server = fleet(tenants)
    result = action(server, batch_size="2", verify_url=buildinfo(server))

    assert result.code == 0, result.stdout
    assert deployed(sim) == ["t01", "t02", "t04"]
    assert json.loads(result.outputs["already-current"]) == ["t03"]
    before = {tenant["slug"]: tenant for tenant in result.report["snapshot"]["tenants"]}
    assert before["t02"]["sha"] == "" and "503" in before["t02"]["problem"]
    assert before["t03"]["sha"] == SHA
    assert result.outputs["verified"] == "4"


def test_the_snapshot_reads_each_tenant_once_between_enumeration_and_the_first_deploy_call(fleet, action):
    sim, server = fleet(specs(slugs(7), deploy_seconds=1))
    result = action(server, canary="t03", batch_size="3", verify_url=buildinfo(server), verify_concurrency="2")

    assert result.code == 0, result.stdout
    requests = list(server.requests)
    enumeration = next(i for i, r in enumerate(requests) if r.path == sim.redeploy_path and r.json()["dry_run"])
    first_deploy = first_deploy_index(server, sim)
    reads = [(i, r) for i, r in enumerate(requests[:first_deploy]) if r.path.startswith("/tenants/")]
    assert sorted(r.path for _, r in reads) == [f"/tenants/{slug}/buildinfo" for slug in slugs(7)]
    assert {r.method for _, r in reads} == {"GET"}
    assert all(i > enumeration for i, _ in reads)
    assert requests[first_deploy].json()["only_slugs"] == ["t03"]  # the canary: the snapshot came first


def test_a_secret_in_the_verify_url_query_never_shows(fleet, action):
    secret = "vq7Zx9Kp2WmB4nRt8YcLdH"  # shares no piece with the other test tokens, so only its own mask hides it
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[0].dead = True  # unreadable in the snapshot (dropped connection), quarantined
    tenants[1].flapping = True  # unreadable in the snapshot (503 page)
    tenants[3].stale = True  # batch 2/2 not proven: a rollback, and its proof, read the URL again
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA), **FAST_DEAD)
    result = action(server, batch_size="2", verify_url=f"{buildinfo(server)}?token={secret}", verify_budget="1",
                    on_failure="rollback", max_stragglers="1")

    assert result.code == 1 and [call["only_slugs"] for call in rollback_calls(sim)] == [["t02", "t03"], ["t04"]], \
        result.stdout
    assert len(result.report["snapshot"]["tenants"]) == 4
    reads = server.seen("/tenants/")
    assert reads and all(r.query["token"] == [secret] for r in reads)  # the secret was really in use
    assert_no_secrets(result, secret)


# 4. A rollback tag of its own


@pytest.mark.parametrize("inputs", [{"rollback_tag": "stable"}, {"promote_tag": "stable"}],
                         ids=["rollback-tag", "promote-tag"])
def test_a_rollback_deploys_the_rollback_tag_and_proves_its_build(fleet, action, inputs):
    tenants = specs(slugs(4), deploy_seconds=1, running=STABLE_SHA)
    tenants[3].stale = True  # batch 2/2 not proven
    sim, server = fleet(tenants, builds={**builds_for(TAG, SHA), "stable": STABLE_SHA})
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1",
                    on_failure="rollback", **inputs)

    assert result.code == 1, result.stdout
    assert result.outputs["reason"].endswith("rolled back 4 tenants")
    assert deployed(sim, "latest") == []
    assert [call["target_tag"] for call in rollback_calls(sim)] == ["stable", "stable"]
    assert deployed(sim, "stable") == slugs(4)
    assert all(sim.running_sha(slug) == STABLE_SHA for slug in slugs(4))
    assert {v["slug"]: v["state"] for v in result.report["rollback"]["verify"]["tenants"]} == dict.fromkeys(
        slugs(4), "verified")
    assert "### Rollback: tenants redeployed with `stable`" in result.summary
