"""The simulator's knobs for fleet state, driven over HTTP as the pipeline drives them: tenants that
start on a given build (some already on the target), a CP that deploys ``latest`` as the build that
tag names (a rollback), and a tenant that refuses a tag. Contract: ``docs/simulator.md``."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

from deploy.sim.fleet import OLD_SHA, FleetSim, TenantSpec, builds_for, specs
from deploy.sim.server import SimServer
from tests.support import CP_TOKEN, SHA, TAG, poll

PREVIOUS_SHA = "1" * 40  # the build `latest` names: what the fleet ran before this rollout
REDEPLOY = "/cp/admin/tenants/redeploy-fleet"
WAIT = 10.0  # real seconds a bounded poll may take before the test fails


def call(server: SimServer, body: Any) -> tuple[int, Any]:
    """One CP call with the token (no proxy, no retry): the status and the decoded JSON answer."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=WAIT)
    try:
        connection.request("POST", REDEPLOY, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {CP_TOKEN}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def deploy(server: SimServer, tag: str = TAG, **body: Any) -> dict[str, Any]:
    """A deploy call as the pipeline sends it; the CP's 200 answer."""
    status, answer = call(server, {"target_tag": tag, "confirm": True, **body})
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def reports(server: SimServer, slug: str) -> str:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=WAIT)
    try:
        connection.request("GET", f"/tenants/{slug}/buildinfo")
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, answer
    return str(answer["git_sha"])


def start(tenants: list[TenantSpec], **knobs: Any) -> tuple[FleetSim, SimServer]:
    knobs.setdefault("time_scale", 0.005)
    knobs.setdefault("builds", builds_for(TAG, SHA))
    sim = FleetSim(tenants, token=CP_TOKEN, **knobs)
    return sim, SimServer([sim])


def rows_by_slug(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["slug"]: row for row in answer["results"]}


# -- tenants that start on a given build -----------------------------------------------------------


def test_running_is_what_buildinfo_reports_before_any_deploy_and_old_sha_by_default():
    tenants = [TenantSpec("current", running=SHA), TenantSpec("behind", running=PREVIOUS_SHA), TenantSpec("fresh")]
    sim, server = start(tenants)
    with server:
        assert [reports(server, t.slug) for t in tenants] == [SHA, PREVIOUS_SHA, OLD_SHA]
        assert [sim.running_sha(t.slug) for t in tenants] == [SHA, PREVIOUS_SHA, OLD_SHA]
        assert sim.calls == []  # reading /buildinfo is no CP call
        _, enumerated = call(server, {"target_tag": TAG, "confirm": True, "dry_run": True})
        assert [row["slug"] for row in enumerated["results"]] == ["current", "behind", "fresh"]
        assert [reports(server, t.slug) for t in tenants] == [SHA, PREVIOUS_SHA, OLD_SHA]  # a dry run moves nothing


def test_running_is_read_live_until_the_first_deploy():
    tenant = TenantSpec("t", deploy_seconds=0)
    sim, server = start([tenant])
    with server:
        assert reports(server, "t") == OLD_SHA
        tenant.running = SHA  # an earlier run shipped it
        assert reports(server, "t") == SHA and sim.running_sha("t") == SHA
        deploy(server, "latest")  # from now on the deploys decide
        tenant.running = PREVIOUS_SHA
        assert reports(server, "t") == OLD_SHA


def test_a_deploy_to_a_tenant_already_on_the_build_works_like_any_other():
    sim, server = start([*specs(["on", "off"], deploy_seconds=1, running=SHA), TenantSpec("new", deploy_seconds=1)])
    with server:
        answer = deploy(server, only_slugs=["on", "new"], max_stragglers=0)
        assert answer["ok"] is True
        for row in answer["results"]:
            assert row["phase"] == "done" and row["verified_on_target"] is True and row["healthz_ok"] is True
            assert row["running_image"].endswith(f":{TAG}")
        assert [reports(server, s) for s in ("on", "off", "new")] == [SHA, SHA, SHA]
        assert [body["only_slugs"] for body in sim.deploy_calls()] == [["on", "new"]]  # the CP counts every call


def test_a_stale_tenant_keeps_reporting_the_build_it_started_on():
    _sim, server = start([TenantSpec("s", deploy_seconds=0, stale=True, running=PREVIOUS_SHA)])
    with server:
        assert deploy(server)["results"][0]["verified_on_target"] is True  # the CP's word
        assert reports(server, "s") == PREVIOUS_SHA


def test_a_settling_tenant_reports_the_build_it_started_on_until_it_settles():
    _sim, server = start([TenantSpec("t", deploy_seconds=0, settle_seconds=100, running=PREVIOUS_SHA)],
                         time_scale=0.01)
    with server:
        deploy(server)
        seen = poll(lambda: reports(server, "t"), until=SHA)  # 1 s of settle, scaled
        assert seen[0] == PREVIOUS_SHA and set(seen) == {PREVIOUS_SHA, SHA}


def test_reverts_after_on_a_first_deploy_falls_back_to_the_build_it_started_on():
    sim, server = start([TenantSpec("t", deploy_seconds=0, reverts_after=100.0, running=PREVIOUS_SHA)],
                        time_scale=0.01)
    with server:
        deploy(server)
        seen = poll(lambda: reports(server, "t"), until=PREVIOUS_SHA)
        assert seen[0] == SHA and sim.running_sha("t") == PREVIOUS_SHA


def test_mark_deployed_still_puts_a_tenant_on_a_build_at_once():
    sim, server = start([TenantSpec("t", running=PREVIOUS_SHA)])
    with server:
        sim.mark_deployed("t", SHA)
        assert reports(server, "t") == SHA


# -- a CP that honours `latest` --------------------------------------------------------------------


def test_builds_for_names_the_target_and_latest():
    assert builds_for(TAG, SHA) == {TAG: SHA, "latest": OLD_SHA}
    assert builds_for(TAG, SHA, latest=PREVIOUS_SHA) == {TAG: SHA, "latest": PREVIOUS_SHA}


def test_a_rollback_to_latest_puts_tenants_back_on_the_build_latest_names():
    tenants = specs(["a", "b", "c"], deploy_seconds=1, running=PREVIOUS_SHA)
    sim, server = start(tenants, builds=builds_for(TAG, SHA, latest=PREVIOUS_SHA))
    with server:
        deploy(server, only_slugs=["a"])  # the canary
        deploy(server, only_slugs=["b", "c"])  # batch 1
        assert {reports(server, s) for s in "abc"} == {SHA}

        answer = deploy(server, "latest", only_slugs=["a", "b", "c"], max_stragglers=0)  # the rollback
        assert answer["ok"] is True
        for row in answer["results"]:
            assert row["phase"] == "done" and row["verified_on_target"] is True
            assert row["running_image"] == f"{sim.image}:latest"
        assert [reports(server, s) for s in "abc"] == [PREVIOUS_SHA] * 3
        assert [body["target_tag"] for body in sim.deploy_calls()] == [TAG, TAG, "latest"]


def test_latest_on_a_fresh_fleet_names_old_sha_by_default():
    _sim, server = start(specs(["x", "y"], deploy_seconds=0))
    with server:
        deploy(server)
        deploy(server, "latest", only_slugs=["x"])
        assert [reports(server, s) for s in "xy"] == [OLD_SHA, SHA]


def test_deploying_latest_to_a_tenant_that_never_moved_is_a_plain_deploy():
    _sim, server = start([TenantSpec("t", deploy_seconds=0)])
    with server:
        answer = deploy(server, "latest", max_stragglers=0)  # it already runs what latest names
        assert answer["ok"] is True and answer["results"][0]["verified_on_target"] is True
        assert reports(server, "t") == OLD_SHA


def test_latest_is_not_a_known_tag_unless_builds_names_it():
    _sim, server = start([TenantSpec("t", deploy_seconds=0)], builds={TAG: SHA})
    with server:
        status, answer = call(server, {"target_tag": "latest", "confirm": True})
        assert status == 500 and answer == {"ok": False, "error": "image tag 'latest' not found"}


def test_the_fleet_fixture_takes_builds(fleet):
    sim, server = fleet([TenantSpec("t", deploy_seconds=0)], builds=builds_for(TAG, SHA))
    deploy(server)
    deploy(server, "latest")
    assert sim.running_sha("t") == OLD_SHA


# -- a tenant that refuses the rollback ------------------------------------------------------------


def test_a_tenant_that_refuses_latest_fails_its_row_and_keeps_the_new_build():
    tenants = [TenantSpec("a", deploy_seconds=1), TenantSpec("stuck", deploy_seconds=1, refuses={"latest"}),
               TenantSpec("c", deploy_seconds=1)]
    sim, server = start(tenants)
    with server:
        forward = deploy(server, only_slugs=["a", "stuck", "c"], max_stragglers=0)
        assert forward["ok"] is True  # TAG is not refused
        assert {reports(server, s) for s in ("a", "stuck", "c")} == {SHA}

        answer = deploy(server, "latest", only_slugs=["a", "stuck", "c"], max_stragglers=0)
        rows = rows_by_slug(answer)
        assert answer["ok"] is False
        assert answer["error"] == "halted: 1 tenant(s) failed (stuck), max_stragglers=0"
        assert rows["stuck"]["phase"] == "failed" and rows["stuck"]["verified_on_target"] is False
        assert rows["stuck"]["ssm_status"] == "Failed" and rows["stuck"]["ssm_exit_code"] == 1
        assert rows["stuck"]["healthz_ok"] is True and rows["stuck"]["running_image"] == ""
        assert "'latest'" in rows["stuck"]["error"]
        assert rows["a"]["verified_on_target"] is True and rows["c"]["verified_on_target"] is True
        # a halted call has still deployed the others
        assert [reports(server, s) for s in ("a", "stuck", "c")] == [OLD_SHA, SHA, OLD_SHA]
        assert sim.running_sha("stuck") == SHA

        answer = deploy(server, "latest", only_slugs=["stuck"], max_stragglers=1)  # within tolerance
        assert answer["ok"] is True and answer["results"][0]["verified_on_target"] is False
        assert reports(server, "stuck") == SHA


def test_a_refusal_takes_the_tenants_deploy_seconds_not_the_dead_worst_case():
    _sim, server = start([TenantSpec("stuck", deploy_seconds=1, refuses={TAG})], time_scale=0.01)
    with server:
        began = time.monotonic()
        answer = deploy(server, max_stragglers=1)
        assert time.monotonic() - began < 390 * 0.01  # a dead tenant's call would take 3.9 s
        assert answer["results"][0]["phase"] == "failed"
        assert reports(server, "stuck") == OLD_SHA  # /buildinfo unchanged, not dropped


def test_refuses_is_read_per_call():
    tenant = TenantSpec("t", deploy_seconds=0)
    _sim, server = start([tenant], time_scale=0.01)
    with server:
        deploy(server)
        assert reports(server, "t") == SHA
        tenant.refuses.add("latest")  # set while the server runs
        assert deploy(server, "latest", max_stragglers=1)["results"][0]["verified_on_target"] is False
        assert reports(server, "t") == SHA
        tenant.refuses.clear()
        assert deploy(server, "latest")["results"][0]["verified_on_target"] is True
        assert reports(server, "t") == OLD_SHA


def test_a_dead_tenant_stays_dead_whatever_it_refuses_and_legacy_rows_keep_the_refusal():
    tenants = [TenantSpec("dead", dead=True, refuses={TAG}), TenantSpec("old-cp", deploy_seconds=0, legacy_row=True,
                                                                       refuses={TAG})]
    _sim, server = start(tenants, cp_tenant_timeout=10, cp_settle_seconds=0)
    with server:
        rows = rows_by_slug(deploy(server, max_stragglers=2))
        assert rows["dead"]["ssm_status"] == "TimedOut"
        assert rows["old-cp"]["verified_on_target"] is False and rows["old-cp"]["phase"] == "failed"


def test_a_dry_run_lists_a_refusing_tenant_like_any_other():
    _sim, server = start([TenantSpec("stuck", refuses={TAG})])
    with server:
        status, answer = call(server, {"target_tag": TAG, "confirm": True, "dry_run": True})
        assert status == 200 and answer["results"] == [
            {"slug": "stuck", "phase": "planned", "ssm_status": "DryRun", "ssm_exit_code": None}]
