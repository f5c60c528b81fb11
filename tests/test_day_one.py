"""The first day with the action, against the real entrypoint as the runner starts it: runs that
did nothing are never green, a failed run says where things stand, one error per failure, inputs
without effect are named, errors aim at their cause, and one word names one thing.

Each test is a claim the README makes about the log, the summary or the outputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deploy.sim.fleet import OLD_SHA, TenantSpec, builds_for, specs
from tests.actions_runner import ROOT
from tests.support import SHA, TAG, buildinfo, seeded, slugs
from tests.test_cli import cli, fleet_env


def calls(sim) -> list[list[str]]:
    return [call["only_slugs"] for call in sim.deploy_calls()]


def errors(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("::error")]


def plain(markdown: str) -> str:
    """The summary as read: Markdown's backslash escapes undone."""
    return re.sub(r"\\(.)", r"\1", markdown)


def effective(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("effective settings: "))


# -- never green for nothing ------------------------------------------------------------------------


@pytest.mark.parametrize(("stages", "inputs", "named"), [
    ("promote", {}, "promote-images"),
    ("verify", {}, "verify-url"),
    ("verify,promote", {}, "verify-url and promote-images"),
])
def test_stages_that_would_do_nothing_are_exit_2_naming_what_would_give_them_work(fleet, action, stages, inputs,
                                                                                   named):
    sim, server = fleet(specs(slugs(2), deploy_seconds=1))
    result = action(server, stages=stages, **inputs)

    assert (result.code, result.outputs["outcome"]) == (2, "failed"), result.stdout
    assert f"stages is {stages}, which would do nothing" in result.outputs["reason"]
    assert result.outputs["reason"].endswith(f"Set {named}")
    assert calls(sim) == [] and server.seen("/tenants/") == []  # said before any network call


def test_a_promote_only_run_says_promoted_not_deployed(fleet, action, registry, repository):
    _old, new = seeded(registry, repository)
    _sim, server = fleet(specs(slugs(1), deploy_seconds=1))
    result = action(server, stages="promote", promote_images=registry.image(repository))

    assert (result.code, result.outputs["outcome"], result.outputs["ok"]) == (0, "promoted", "true"), result.stdout
    assert result.report["outcome"] == "promoted"
    assert result.summary.startswith(f"## fleet-rollout: ✅ promoted `{TAG}`")
    assert registry.digest(repository, "latest") == new


# -- a failed run says where things stand -----------------------------------------------------------


def test_a_failed_run_says_what_the_fleet_runs_where_latest_is_what_on_failure_did_and_what_next(
        fleet, action, registry, repository):
    seeded(registry, repository)
    tenants = specs(slugs(5), deploy_seconds=1)
    tenants[2].stale = True  # t03, in batch 2: its call lands, /buildinfo keeps the previous build
    _sim, server = fleet(tenants)
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1",
                    promote_images=registry.image(repository))

    assert (result.code, result.outputs["aborted-at"]) == (1, "batch 2/3"), result.stdout
    summary = plain(result.summary)
    after_reason = summary[summary.index("**Reason:**"):]
    stand = after_reason.split("### ")[0]  # what comes right after the reason, before the timeline
    assert "**Where things stand:**" in stand
    assert f"The fleet runs: {SHA[:12]} on 3 tenants, {OLD_SHA[:12]} on 2 tenants." in stand, summary
    assert "latest did not move" in stand
    assert "on-failure: hold: nothing was rolled back" in stand
    assert "Next: fix the cause and re-run this job" in stand and "or set on-failure: rollback" in stand
    assert "The fleet runs: " in result.stdout  # the log says it too (Gitea shows no summary)


def test_after_a_rollback_where_things_stand_counts_the_build_the_tenants_went_back_to(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[2].stale = True
    _sim, server = fleet(tenants, builds=builds_for(TAG, SHA))  # latest names OLD_SHA
    result = action(server, batch_size="2", verify_url=buildinfo(server), verify_budget="1", on_failure="rollback")

    assert result.code == 1, result.stdout
    summary = plain(result.summary)
    assert f"The fleet runs: {OLD_SHA[:12]} on 4 tenants." in summary, summary
    assert "on-failure: rollback redeployed latest: 4 tenants back." in summary
    assert "or set on-failure: rollback" not in summary
    assert "### Rollback: tenants redeployed with `latest`" in summary


# -- one error per failure --------------------------------------------------------------------------


def test_a_stale_canary_is_one_stage_error_and_the_final_one(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[0].stale = True
    _sim, server = fleet(tenants)
    result = action(server, canary="t01", verify_url=buildinfo(server), verify_budget="1")

    assert (result.code, result.outputs["aborted-at"]) == (1, "canary"), result.stdout
    found = errors(result.stdout)
    assert len(found) == 2, found
    assert found[0].startswith("::error title=canary t01::") and "t01" in found[0].split("::", 2)[2]
    assert found[1] == f"::error title=fleet-rollout failed::{result.outputs['reason']}"


def said_twice(line: str) -> bool:
    """``batch 2/2 failed: batch 2/2: …``, ``canary t01: canary not proven: …``: a plain line whose
    title and message both open with what they are about."""
    parts = line.split(": ")
    return len(parts) > 2 and parts[2].split(" ")[0] == parts[1].split(" ")[0]


FAILURES = {"stale": {"stale": True}, "refuses": {"refuses": {TAG}}, "dead": {"dead": True}}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_no_line_says_what_it_is_about_twice(fleet, action, tmp_path, kind):
    tenants = specs(slugs(4), deploy_seconds=1)
    for knob, value in FAILURES[kind].items():
        setattr(tenants[2], knob, value)  # t03, in batch 2
    _sim, server = fleet(tenants)
    inputs = {"batch_size": "2", "verify_url": buildinfo(server), "verify_budget": "1", "max_stragglers": "0"}
    in_actions = action(server, **inputs)
    outside = cli(["python", str(ROOT / "entrypoint.py")], fleet_env(server, tmp_path / "workspace", **inputs))

    assert in_actions.code == outside.returncode == 1, in_actions.stdout
    doubled = re.compile(r"(\b[\w/ -]{6,}?): \1\b")  # "batch 2/2 not proven: batch 2/2 not proven: …"
    for line in [*in_actions.stdout.splitlines(), *outside.stdout.splitlines()]:
        assert not doubled.search(line.split("::", 2)[-1]), line
    plain = [line for line in outside.stdout.splitlines() if line.startswith(("error: ", "warning: "))]
    assert plain and not [line for line in plain if said_twice(line)], plain
    warned = [line for line in in_actions.stdout.splitlines() if "Superseded guard off" in line]
    assert len(warned) <= 1, warned  # a gate re-checked before every call says it once


def test_a_dead_tenant_gets_one_warning_and_no_proof_header_says_zero(fleet, action):
    tenants = [*specs(slugs(3), deploy_seconds=1), TenantSpec("gone", dead=True)]
    _sim, server = fleet(tenants)
    result = action(server, batch_size="2", verify_url=buildinfo(server))

    assert result.code == 0, result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning") and "gone" in line]
    assert len(warnings) == 1, warnings
    assert not re.search(r"\b0 tenants must report", result.stdout)
    headers = [line for line in result.stdout.splitlines() if line.startswith("batch ") and "must report" in line]
    assert len(headers) == 2 and "buildinfo" in headers[0], headers  # the whole header once, then briefly
    assert headers[1] == "batch 2/2: proof: 1 tenant must report " + SHA[:12], headers


def test_a_timeout_reason_counts_each_call_once(fleet, action):
    """Each proof waits 3.6 s for a slow-settling tenant: the plan fits (4 × 1.95 s), the proofs do
    not, so a later call is not started. That call is named once, and only the ones after it are
    counted as "later"."""
    tenants = [TenantSpec(slug, deploy_seconds=1, settle_seconds=720) for slug in slugs(4)]
    sim, server = fleet(tenants)
    result = action(server, batch_size="1", timeout="9", verify_url=buildinfo(server))

    assert result.code == 1, result.stdout
    reason = result.outputs["reason"]
    assert reason.startswith("overall timeout: "), reason
    made = len(sim.deploy_calls())
    named = re.findall(r"batch \d+/4 \(t0\d\) not started", reason)
    later = re.search(r"; (\d+) later calls? not started", reason)
    assert len(named) == 1, reason
    assert made + 1 + (int(later.group(1)) if later else 0) == 4, (made, reason)


# -- inputs without effect are named ----------------------------------------------------------------


def test_the_effective_settings_line_names_every_input_that_does_nothing_and_why(fleet, action):
    _sim, server = fleet(specs(slugs(3), deploy_seconds=1))
    result = action(server, stages="rollout", verify_url=buildinfo(server), verify_budget="7",
                    rollback_tag="stable", soak_seconds="5", promote_tag="stable")

    assert result.code == 0, result.stdout
    line = effective(result.stdout)
    assert line.startswith("effective settings: stages rollout; inputs set that have no effect here: ")
    for said in ("soak-seconds (no canary)", "rollback-tag (on-failure is hold)",
                 "verify-budget (stages has no verify)", "promote-tag (promote-images is empty)"):
        assert said in line, line
    assert "promote-images (" not in line and "cp-url" not in line  # empty or needed: not "set without effect"


def test_a_dry_run_names_the_gates_it_does_not_read(fleet, action):
    _sim, server = fleet(specs(slugs(2), deploy_seconds=1))
    result = action(server, dry_run="true", required_checks="ci")

    assert (result.code, result.outputs["outcome"]) == (0, "planned"), result.stdout
    assert "required-checks (a dry run reads no gate)" in effective(result.stdout)


def test_the_effective_settings_line_says_none_when_every_input_counts(fleet, action):
    _sim, server = fleet(specs(slugs(2), deploy_seconds=1))
    result = action(server, canary="t01", soak_seconds="0.1", verify_url=buildinfo(server))

    assert result.code == 0, result.stdout
    assert effective(result.stdout) == "effective settings: stages rollout,verify,promote; inputs set that have " \
                                       "no effect here: none"


def test_the_canary_description_holds_in_every_mode():
    import yaml

    described = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]["canary"]["description"]
    assert "verify-each-batch" in described or "verify-url" in described  # says when its proof applies


# -- errors aimed at the cause ----------------------------------------------------------------------


def test_a_canary_not_in_the_fleet_is_exit_2_with_did_you_mean_and_no_deploy(fleet, action):
    sim, server = fleet(specs(["hongming", "reno-stars", "adk"], deploy_seconds=1))
    result = action(server, canary="hongmnig", verify_url=buildinfo(server))

    assert (result.code, result.outputs["outcome"]) == (2, "failed"), result.stdout
    assert result.outputs["reason"].startswith("configuration error: canary: 'hongmnig' is not one of the 3 tenants")
    assert result.outputs["reason"].endswith("did you mean hongming?")
    assert calls(sim) == [] and server.seen("/tenants/") == []  # before the snapshot's reads


@pytest.mark.parametrize("image", ["ghcr.io/acme/app:latest", "registry.test:5000/acme/app:v1.2"])
def test_a_tag_in_promote_images_is_the_error_not_the_repository(action, image):
    result = action(None, stages="promote", promote_images=image, sha=SHA)

    assert result.code == 2, result.stdout
    tag = image.rpartition(":")[2]
    assert f"remove the tag ':{tag}'" in result.outputs["reason"]
    assert "lowercase" not in result.outputs["reason"]


@pytest.mark.parametrize("image", ["ghcr.io/acme/app@sha256:" + "5e1f" * 16,
                                   "registry.test:5000/acme/app:v1@sha256:" + "f" * 64])
def test_a_digest_in_promote_images_points_to_promote_source_not_credentials(action, image):
    result = action(None, stages="promote", promote_images=image, sha=SHA)

    assert result.code == 2, result.stdout
    reason = result.outputs["reason"]
    digest = image.rpartition("@")[2]
    assert f"remove the digest '@{digest[:19]}…'" in reason and "use promote-source" in reason, reason
    assert "credentials" not in reason and "registry-username" not in reason, reason


def test_a_bad_sha_is_one_error_with_no_knock_on_error(fleet, action, registry, repository):
    _sim, server = fleet(specs(slugs(1), deploy_seconds=1))
    result = action(server, sha="main", promote_images=registry.image(repository), verify_url=buildinfo(server))

    assert result.code == 2, result.stdout
    reason = result.outputs["reason"]
    assert "sha" in reason and "promote-source" not in reason, reason
    said = errors(result.stdout)  # the input's error, then the run's verdict: nothing else
    assert len(said) == 2 and said[0].startswith("::error title=input sha::") and "fleet-rollout failed" in said[1]


def test_outside_actions_advice_is_in_fleet_variables_not_yaml(fleet, tmp_path: Path):
    _sim, server = fleet(specs(slugs(1), deploy_seconds=1))
    env = fleet_env(server, tmp_path / "workspace", stages="rollout,promote", promote_images="",
                    verify_url="", sha=SHA)
    env["FLEET_STAGES"] = "verify"  # would do nothing: no verify-url
    proc = cli(["python", str(ROOT / "entrypoint.py")], env)

    assert proc.returncode == 2, proc.stdout
    error = next(line for line in proc.stdout.splitlines() if line.startswith("error: "))
    assert "FLEET_STAGES" in error and "FLEET_VERIFY_URL" in error, error
    assert "stages: " not in error and "verify-url" not in error, error


# -- one word per thing -----------------------------------------------------------------------------


def test_the_readme_keeps_rollback_for_tenants_and_put_back_for_the_tag():
    readme = (ROOT / "README.md").read_text()
    assert "### Moving `latest` back" in readme
    assert "Rollback to `latest`" not in readme
    timing = readme[readme.index("| `timeout`"):] if "| `timeout`" in readme else ""
    assert timing, "the README explains the timing inputs together in one table"


def test_the_action_yml_keeps_rollback_for_tenants_and_put_back_for_the_tag():
    import yaml

    inputs = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]
    for name in ("stages", "promote-source"):  # both move the tag only: never a rollback of tenants
        described = inputs[name]["description"]
        assert "put-back" in described and "rollback" not in described, (name, described)


def test_the_max_stragglers_description_holds_in_every_mode():
    """Quarantine is for tenants down already: a tenant that ran a build before and fails on this one
    halts the rollout whatever max-stragglers says, and the tolerance is the run's (a leg's), not the fleet's."""
    import yaml

    described = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]["max-stragglers"]["description"]
    assert "not fatal" not in described and "fleet-wide" not in described, described
    assert "failed on the new build, halts the rollout whatever this says" in described, described
    assert "no tenant reached the target" in described, described


def test_the_schema_names_the_put_back_states():
    schema = json.loads((ROOT / "schema" / "report.schema.json").read_text())
    text = json.dumps(schema)
    assert '"put-back"' in text and '"put-back-failed"' in text and '"rolled-back"' not in text
    assert '"promoted"' in json.dumps(schema["properties"]["outcome"])


# -- the headline does not hide what is left behind -------------------------------------------------


def test_a_green_headline_names_the_quarantined_tenant_and_no_zero_second_verify(fleet, action):
    tenants = [*specs(slugs(3), deploy_seconds=1), TenantSpec("gone", dead=True)]
    _sim, server = fleet(tenants)
    result = action(server, batch_size="3", verify_url=buildinfo(server))

    assert result.code == 0, result.stdout
    headline = result.summary.splitlines()[0]
    assert headline.startswith("## fleet-rollout: ✅ deployed") and "1 quarantined (gone)" in headline, headline
    assert "in 0.0 s" not in result.summary
    assert "proven call by call during the rollout" in result.summary


def test_on_gitea_the_log_repeats_the_summary_facts(fleet, action):
    _sim, server = fleet(specs(slugs(3), deploy_seconds=1))
    result = action(server, batch_size="2", verify_url=buildinfo(server), extra_env={"GITEA_ACTIONS": "true"})

    assert result.code == 0, result.stdout
    for slug in slugs(3):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"tenant {slug}: "))
        assert "→" in line and "shipped in batch" in line and "proven at" in line, line


# -- the outcome says what was done, and a failure without a rollout says where things stand --------


def test_a_verify_only_drill_that_passes_says_verified_not_deployed(fleet, action):
    sim, server = fleet([TenantSpec("a"), TenantSpec("b")])
    for slug in ("a", "b"):
        sim.mark_deployed(slug, SHA)
    result = action(server, stages="verify", verify_url=buildinfo(server))

    assert (result.code, result.outputs["outcome"], result.outputs["ok"]) == (0, "verified", "true"), result.stdout
    assert result.summary.startswith(f"## fleet-rollout: ✅ verified `{TAG}`")
    assert sim.deploy_calls() == []


def test_a_failed_verify_only_drill_says_nothing_was_deployed_and_what_verify_read(fleet, action):
    sim, server = fleet([TenantSpec("a"), TenantSpec("b", stale=True)])
    sim.mark_deployed("a", SHA)
    result = action(server, stages="verify", verify_url=buildinfo(server), verify_budget="0.5")

    assert result.code == 1, result.stdout
    stand = plain(result.summary)
    assert f"Nothing was deployed; verify read: {SHA[:12]} on 1 tenant, {OLD_SHA[:12]} on 1 tenant." in stand
    assert "latest did not move" in stand and "on-failure" not in stand.split("**Where things stand:**")[1][:400]
    assert f"Next: the tenants verify names do not run {SHA[:12]}: redeploy them" in stand


def test_a_failed_promote_only_run_says_nothing_was_deployed_and_where_latest_is(fleet, action, registry,
                                                                                 repository):
    seeded(registry, repository)
    _sim, server = fleet(specs(slugs(1), deploy_seconds=1))
    result = action(server, stages="promote", promote_images=registry.image(repository), promote_source="nope-tag")

    assert result.code == 1, result.stdout
    stand = plain(result.summary).split("**Where things stand:**")[1]
    assert "Nothing was deployed: no deploy call was made." in stand
    assert "latest" in stand and "Next: " in stand


def test_where_things_stand_counts_only_tenants_still_on_the_build(fleet, action):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[0].stale = True  # the canary's call lands, its /buildinfo keeps the previous build
    _sim, server = fleet(tenants)
    result = action(server, canary="t01", verify_url=buildinfo(server), verify_budget="1")

    assert (result.code, result.outputs["aborted-at"]) == (1, "canary"), result.stdout
    stand = plain(result.summary)
    assert f"The fleet runs: {OLD_SHA[:12]} on 4 tenants." in stand
    assert "no tenant this run deployed is left on the build" in stand and "back by hand" not in stand


def test_outside_actions_where_things_stand_speaks_fleet_variables(fleet, tmp_path: Path):
    tenants = specs(slugs(4), deploy_seconds=1)
    tenants[2].stale = True
    _sim, server = fleet(tenants)
    env = fleet_env(server, tmp_path / "workspace", batch_size="2", verify_url=buildinfo(server), verify_budget="1")
    proc = cli(["python", str(ROOT / "entrypoint.py")], env)

    assert proc.returncode == 1, proc.stdout
    assert "or set FLEET_ON_FAILURE=rollback" in proc.stdout
    assert "on-failure: hold" not in proc.stdout and "FLEET_ON_FAILURE=hold" in proc.stdout


@pytest.mark.parametrize("stages", ["rollout", "rollout,promote"])
def test_a_rollout_without_the_verify_stage_says_nothing_is_proven(fleet, action, stages):
    _sim, server = fleet(specs(slugs(2), deploy_seconds=1))
    result = action(server, stages=stages, verify_url="")

    assert result.code == 0, result.stdout
    warned = [line for line in result.stdout.splitlines() if line.startswith("::warning title=proof off::")]
    assert len(warned) == 1 and "stages has no verify and verify-url is empty" in warned[0]
    assert "| Verify | not verified: stages has no verify |" in plain(result.summary)


@pytest.mark.parametrize(("stages", "advice"), [("rollout,verify,promote", "stages: rollout,promote"),
                                                ("verify,promote", "stages: promote")])
def test_promote_without_proof_is_refused_with_advice_that_keeps_what_was_asked(action, stages, advice):
    result = action(None, cp_url="https://cp.example.com", cp_token="t0ken-for-the-test", stages=stages,
                    promote_images="ghcr.io/acme/app", verify_url="")

    assert result.code == 2, result.stdout
    assert f"Set verify-url, or say {advice} to promote unverified on purpose" in result.outputs["reason"]
