"""Waves end to end: a growth list's calls as planned, the plan's time checked before anything moves,
and every other feature per call (proof, rollback, timeline), against the simulator."""

from __future__ import annotations

import json
import re

from deploy.sim.fleet import OLD_SHA, builds_for, specs
from tests.support import SHA, TAG, buildinfo, slugs


def sizes(sim, tag: str = TAG) -> list[int]:
    return [len(call["only_slugs"]) for call in sim.deploy_calls() if call["target_tag"] == tag]


def test_a_growth_list_over_40_tenants_makes_exactly_the_planned_calls(fleet, action):
    sim, server = fleet(specs(slugs(40), deploy_seconds=1))
    result = action(server, canary="t01", batch_size="1,5,10%,25%", verify_url=buildinfo(server), timeout="60")

    assert result.code == 0 and result.outputs["verified"] == "40", result.stdout
    assert sizes(sim) == [1, 1, 5, 4, 10, 10, 9]  # canary, then 1, 5, 10% of 40, 25% of 40 until done
    assert [len(call) for call in result.report["rollout"]["planned_batches"]] == sizes(sim)
    assert "plan: 7 deploy calls (canary 1, then 1, 5, 4, 10 × 2, 9 tenants), at worst 13.65 s" in result.stdout
    assert [call["label"] for call in result.report["rollout"]["calls"]][-1] == "batch 6/6"
    assert "batch 4/6 (10)" in result.summary  # one bar per call, with its size


def test_a_dry_run_prints_the_same_plan(fleet, action):
    sim, server = fleet(specs(slugs(40), deploy_seconds=1))
    result = action(server, canary="t01", batch_size="1,5,10%,25%", dry_run="true", verify_url=buildinfo(server))

    assert result.code == 0 and sim.deploy_calls() == [], result.stdout
    assert "plan: 7 deploy calls (canary 1, then 1, 5, 4, 10 × 2, 9 tenants)" in result.stdout
    assert [len(call) for call in result.report["rollout"]["planned_batches"]] == [1, 1, 5, 4, 10, 10, 9]


def test_percentages_in_a_fleet_of_one_make_one_call(fleet, action):
    sim, server = fleet(specs(["solo"], deploy_seconds=1))
    result = action(server, batch_size="10%,50%", verify_url=buildinfo(server))

    assert result.code == 0, result.stdout
    assert sizes(sim) == [1] and result.outputs["verified"] == "1"


def test_max_batch_size_caps_every_call(fleet, action):
    sim, server = fleet(specs(slugs(12), deploy_seconds=1))
    result = action(server, batch_size="1,50%", max_batch_size="4", verify_url=buildinfo(server), timeout="60")

    assert result.code == 0, result.stdout
    assert sizes(sim) == [1, 4, 4, 3]


def test_a_plan_that_cannot_finish_inside_timeout_is_refused_before_any_deploy(fleet, action):
    sim, server = fleet(specs(slugs(30), deploy_seconds=1))
    # 1 + 29 tenants in calls of 2: 16 calls × 1.95 s = 31.2 s, in a timeout of 20 s
    result = action(server, canary="t01", batch_size="2", verify_url=buildinfo(server), timeout="20")

    assert (result.code, result.outputs["outcome"]) == (2, "failed"), result.stdout
    assert sim.deploy_calls() == []
    reason = result.outputs["reason"]
    assert "batch-size cannot finish inside timeout — its plan of 16 calls takes up to 31.2 s" in reason, reason
    assert "batch-size: 2,12% fits (9 calls at most)" in reason, reason


def test_a_rollback_after_wave_3_takes_the_largest_call_or_max_batch_size(fleet, action):
    tenants = specs(slugs(20), deploy_seconds=1)
    tenants[9].stale = True  # t10: in wave 3 (tenants 7..14 with 1,5,40%)
    sim, server = fleet(tenants, builds=builds_for(TAG, SHA))
    result = action(server, batch_size="1,5,40%", verify_url=buildinfo(server), verify_budget="1",
                    on_failure="rollback", timeout="60")

    assert (result.code, result.outputs["aborted-at"]) == (1, "batch 3/4"), result.stdout
    assert sizes(sim) == [1, 5, 8]
    assert sizes(sim, "latest") == [8, 6]  # 40% of 20: the largest call
    assert json.loads(result.outputs["rolled-back"]) == slugs(14)
    assert all(sim.running_sha(slug) == OLD_SHA for slug in slugs(20))


def test_the_timeout_the_refusal_suggests_holds_the_plan_and_the_reads_before_it(fleet, action):
    """The reads before the plan (here a slow snapshot, about 1 s) count: the suggested timeout
    holds them again, so following the advice is enough."""
    tenants = specs(slugs(10), deploy_seconds=1)
    for tenant in tenants:
        tenant.slow_buildinfo = 160  # 0.8 s per read, all read at once
    sim, server = fleet(tenants)
    refused = action(server, batch_size="1", max_batch_size="2", verify_url=buildinfo(server), verify_interval="1.5",
                     timeout="7")

    assert refused.code == 2 and sim.deploy_calls() == [], refused.stdout
    suggested = re.search(r"raise timeout to at least (\d+) s for this plan", refused.outputs["reason"])
    assert suggested and refused.outputs["reason"].count("raise timeout") == 1, refused.outputs["reason"]
    assert re.search(r"are left after \d+ s spent before it", refused.outputs["reason"])

    followed = action(server, batch_size="1", max_batch_size="2", verify_url=buildinfo(server), verify_interval="1.5",
                      timeout=suggested.group(1))
    assert followed.code == 0, followed.stdout
