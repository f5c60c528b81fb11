"""The simulator's knobs for progressive proof, driven over HTTP as the pipeline drives them: a bad
build (the CP's rows say on target, ``/buildinfo`` keeps the previous build, or reports the new
one only after a delay), a tenant that flaps back to its previous build, and a forge whose kill
switch or branch head changes after the Nth deploy call. Contract: ``docs/simulator.md``."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from deploy.sim.fleet import OLD_SHA, Fault, FleetSim, TenantSpec
from deploy.sim.forge import ForgeSim
from deploy.sim.server import SimServer
from tests.support import CP_TOKEN, NEWER_SHA, SHA, TAG, poll

PREVIOUS_SHA = "1" * 40  # the build the fleet ran before this one
PREVIOUS_TAG = f"staging-{PREVIOUS_SHA[:7]}"
BUILDS = {TAG: SHA, PREVIOUS_TAG: PREVIOUS_SHA}
REDEPLOY = "/cp/admin/tenants/redeploy-fleet"
WAIT = 10.0  # real seconds a bounded poll may take before the test fails


def call(server: SimServer, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         ) -> tuple[int, Any]:
    """One request to the simulator (no proxy, no retry): the status and the decoded JSON answer."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=WAIT)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def deploy(server: SimServer, tag: str = TAG, **body: Any) -> dict[str, Any]:
    """A deploy call with the CP token, as the pipeline sends it; the CP's 200 answer."""
    status, answer = call(server, "POST", REDEPLOY, {"target_tag": tag, "confirm": True, **body},
                          {"Authorization": f"Bearer {CP_TOKEN}"})
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def reports(server: SimServer, slug: str) -> str:
    status, answer = call(server, "GET", f"/tenants/{slug}/buildinfo")
    assert status == 200, answer
    return str(answer["git_sha"])


def start(tenants: list[TenantSpec], *more: Any, **knobs: Any) -> tuple[FleetSim, SimServer]:
    knobs.setdefault("time_scale", 0.005)
    sim = FleetSim(tenants, builds=dict(BUILDS), token=CP_TOKEN, **knobs)
    return sim, SimServer([sim, *more])


def assert_on_target_rows(answer: dict[str, Any], slugs: list[str], tag: str = TAG) -> None:
    """The CP's word: every row done, healthy, verified on target, running the tag."""
    assert answer["ok"] is True
    assert [row["slug"] for row in answer["results"]] == slugs
    for row in answer["results"]:
        assert row["phase"] == "done" and row["healthz_ok"] is True and row["verified_on_target"] is True
        assert row["running_image"].endswith(f":{tag}")


# -- a bad build -----------------------------------------------------------------------------------


def test_a_bad_build_is_on_target_in_every_row_but_buildinfo_keeps_the_previous_build():
    sim, server = start([TenantSpec("a", deploy_seconds=1), TenantSpec("b", deploy_seconds=1)], bad_builds={TAG})
    with server:
        assert_on_target_rows(deploy(server, PREVIOUS_TAG), ["a", "b"], PREVIOUS_TAG)  # a good build first
        assert [reports(server, s) for s in "ab"] == [PREVIOUS_SHA, PREVIOUS_SHA]

        answer = deploy(server, only_slugs=["a"], max_stragglers=0)  # the canary of the bad build
        assert_on_target_rows(answer, ["a"])
        assert [reports(server, "a") for _ in range(5)] == [PREVIOUS_SHA] * 5
        assert_on_target_rows(deploy(server, only_slugs=["b"]), ["b"])
        assert [reports(server, s) for s in "ab"] == [PREVIOUS_SHA, PREVIOUS_SHA]
        assert sim.running_sha("a") == sim.running_sha("b") == PREVIOUS_SHA
        assert len(sim.deploy_calls()) == 3  # the CP took every call

        sim.bad_builds.clear()  # the knob is read per call: the same tag, fixed, swaps
        deploy(server, only_slugs=["a"])
        assert reports(server, "a") == SHA and reports(server, "b") == PREVIOUS_SHA


def test_a_bad_build_on_a_fresh_fleet_keeps_reporting_the_old_sha():
    _sim, server = start([TenantSpec(s, deploy_seconds=0) for s in ("x", "y", "z")], bad_builds={TAG})
    with server:
        assert_on_target_rows(deploy(server, canary_slug="y"), ["y", "x", "z"])
        assert {reports(server, s) for s in ("x", "y", "z")} == {OLD_SHA}


def test_a_build_that_reports_only_after_a_delay_is_settle_seconds_with_rows_on_target():
    _sim, server = start([TenantSpec("slow-start", deploy_seconds=0, settle_seconds=100)], time_scale=0.01)
    with server:
        assert_on_target_rows(deploy(server), ["slow-start"])
        seen = poll(lambda: reports(server, "slow-start"), until=SHA)  # 1 s of settle, scaled
        assert seen[0] == OLD_SHA and set(seen) == {OLD_SHA, SHA}
        assert reports(server, "slow-start") == SHA  # and it stays


# -- a tenant that flaps back ----------------------------------------------------------------------


def test_reverts_after_reports_the_build_then_falls_back_to_the_previous_one_for_good():
    canary, steady = TenantSpec("canary", deploy_seconds=0), TenantSpec("steady", deploy_seconds=0)
    sim, server = start([canary, steady], time_scale=0.01)
    with server:
        deploy(server, PREVIOUS_TAG)  # the build the canary will fall back to
        canary.reverts_after = 100.0  # 1 s after the next call's wait ends

        answer = deploy(server, canary_slug="canary")
        assert_on_target_rows(answer, ["canary", "steady"])  # the CP never hears of the revert
        seen = poll(lambda: reports(server, "canary"), until=PREVIOUS_SHA)
        assert seen[0] == SHA and set(seen) == {SHA, PREVIOUS_SHA}  # reported the build, then flapped back
        assert [reports(server, "canary") for _ in range(5)] == [PREVIOUS_SHA] * 5
        assert sim.running_sha("canary") == PREVIOUS_SHA
        assert reports(server, "steady") == SHA  # only the tenant with the knob reverts


def test_reverts_after_counts_from_each_deploy_and_falls_back_to_old_sha_on_a_first_deploy():
    tenant = TenantSpec("t", deploy_seconds=0, reverts_after=100.0)
    _sim, server = start([tenant], time_scale=0.01)
    with server:
        deploy(server)
        poll(lambda: reports(server, "t"), until=OLD_SHA)  # nothing ran before: the old SHA
        deploy(server)  # a redeploy starts over: the build again, then the fall back
        seen = poll(lambda: reports(server, "t"), until=OLD_SHA)
        assert seen[0] == SHA


def test_reverts_after_wins_over_a_settle_still_running():
    tenant = TenantSpec("t", deploy_seconds=0)
    _sim, server = start([tenant], time_scale=0.01)
    with server:
        deploy(server, PREVIOUS_TAG)
        assert reports(server, "t") == PREVIOUS_SHA
        tenant.settle_seconds, tenant.reverts_after = 1000.0, 100.0
        deploy(server)  # never settles, then reverts: to the previous build, not to OLD_SHA
        assert poll(lambda: reports(server, "t"), until=PREVIOUS_SHA)[0] == OLD_SHA


# -- a forge that changes after N deploy calls -----------------------------------------------------


def forge_reads(server: SimServer, forge: ForgeSim) -> tuple[str, str]:
    """(the kill-switch variable's value, the head of main) as the forge answers them now."""
    base = f"{forge.prefix}/repos/{forge.repository}"
    status, variable = call(server, "GET", f"{base}/actions/variables/FLEET_DISABLED")
    assert status == 200, variable
    status, branch = call(server, "GET", f"{base}/branches/main")
    assert status == 200, branch
    value = variable["value"] if forge.kind == "github" else variable["data"]
    head = branch["commit"]["sha"] if forge.kind == "github" else branch["commit"]["id"]
    return value, head


@pytest.mark.parametrize("kind", ["github", "gitea"])
def test_change_after_deploys_changes_the_forge_exactly_after_the_nth_deploy_call(kind):
    forge = ForgeSim(kind=kind)
    forge.variables, forge.branches = {"FLEET_DISABLED": "false"}, {"main": SHA, "other": SHA}
    hooked: list[dict[str, Any]] = []
    sim, server = start([TenantSpec(s, deploy_seconds=0) for s in "abcdef"], forge,
                        after_deploy=hooked.append, faults=[Fault("502")])
    forge.change_after_deploys(sim, 2, variables={"fleet_disabled": "true"}, branches={"main": NEWER_SHA})
    with server:
        before = ("false", SHA)
        call(server, "POST", REDEPLOY, {"target_tag": TAG, "confirm": True, "dry_run": True},
             {"Authorization": f"Bearer {CP_TOKEN}"})  # enumeration is no deploy call
        assert forge_reads(server, forge) == before
        status, _ = call(server, "POST", REDEPLOY, {"target_tag": TAG, "confirm": True, "only_slugs": ["a"]},
                         {"Authorization": f"Bearer {CP_TOKEN}"})
        assert status == 502 and forge_reads(server, forge) == before  # a faulted call deployed nothing
        status, _ = call(server, "POST", REDEPLOY, {"target_tag": "no-such-tag", "confirm": True},
                         {"Authorization": f"Bearer {CP_TOKEN}"})
        assert status == 500 and forge_reads(server, forge) == before  # nor did an unknown tag

        deploy(server, only_slugs=["a"])  # the canary: deploy call 1
        assert forge_reads(server, forge) == before
        deploy(server, only_slugs=["b", "c"])  # batch 1: deploy call 2, the change lands before its answer
        assert forge.variables == {"fleet_disabled": "true"}  # the same variable, whatever its case
        assert forge_reads(server, forge) == ("true", NEWER_SHA)
        assert forge.branches["other"] == SHA  # merged, not replaced

        forge.variables, forge.branches["main"] = {"FLEET_DISABLED": "false"}, SHA  # put back by hand
        deploy(server, only_slugs=["d", "e"])  # call 3: the change is made once
        assert forge_reads(server, forge) == before
    assert [body.get("only_slugs") for body in hooked] == [["a"], ["b", "c"], ["d", "e"]]  # the hook still ran


def test_change_after_deploys_sets_a_variable_the_forge_did_not_have_and_counts_from_installation():
    forge = ForgeSim(kind="gitea")
    forge.branches = {"main": SHA}
    sim, server = start([TenantSpec("a", deploy_seconds=0)], forge)
    with server:
        deploy(server)  # before the knob: not counted
        forge.change_after_deploys(sim, 1, variables={"FLEET_DISABLED": "yes"})
        base = f"{forge.prefix}/repos/{forge.repository}/actions/variables/FLEET_DISABLED"
        assert call(server, "GET", base)[0] == 404
        deploy(server)
        assert call(server, "GET", base) == (200, {"owner_id": 0, "repo_id": 1, "name": "FLEET_DISABLED",
                                                   "data": "yes"})
        assert forge.branches == {"main": SHA}


def test_change_after_deploys_needs_at_least_one_call():
    sim = FleetSim([TenantSpec("a")], builds=dict(BUILDS))
    with pytest.raises(ValueError, match="at least 1"):
        ForgeSim().change_after_deploys(sim, 0, variables={"FLEET_DISABLED": "true"})
    assert sim.after_deploy is None
