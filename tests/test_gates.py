"""The gates: required checks wait and fail closed, the superseded guard fails open, the kill switch is live."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from deploy.context import Context
from deploy.errors import DeadlineExceeded, DeployFailed
from deploy.gates import ChecksResult, live_kill_switch, newer_head, wait_for_required_checks
from deploy.runner import Runner
from deploy.settings import GateSettings
from tests.support import FORGE_TOKEN, GITEA, GITHUB, NEWER_SHA, REPO, SHA, log_of, sim_client
from tests.support import forge_client as make

STATUSES = f"{GITHUB}/repos/{REPO}/commits/{SHA}/statuses"
CHECK_RUNS = f"{GITHUB}/repos/{REPO}/commits/{SHA}/check-runs"

GATES = GateSettings(
    required_checks=("ci/build",),
    checks_timeout=60,
    checks_interval=15,
    skip_if_superseded=True,
    branch="main",
    disabled_variable="DEPLOY_FROZEN",
)


def github_checks(requests_mock, statuses, runs=()) -> None:
    """Serve fixed statuses and check runs (one page each, then an empty page)."""

    def page_of(rows, key=None):
        def respond(request, context):
            chunk = list(rows) if request.qs.get("page") == ["1"] else []
            return {"total_count": len(rows), key: chunk} if key else chunk
        return respond

    requests_mock.get(STATUSES, json=page_of(statuses))
    requests_mock.get(CHECK_RUNS, json=page_of(runs, "check_runs"))


# -- required checks ------------------------------------------------------------------------------


def test_pending_check_is_waited_for_until_ci_turns_it_green(requests_mock):
    client, runner, clock, deadline = make()
    finished_at = clock.now() + 30

    def statuses(request, context):
        if request.qs["page"] != ["1"]:
            return []
        return [{"id": 1, "context": "ci/build", "state": "success" if clock.now() >= finished_at else "pending"}]

    requests_mock.get(STATUSES, json=statuses)
    requests_mock.get(CHECK_RUNS, json={"total_count": 0, "check_runs": []})

    result = wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))

    assert result == ChecksResult(states=(("ci/build", "success"),), seconds=30)
    assert clock.slept == [15, 15]
    log = log_of(runner)
    assert log.count("ci/build: pending") == 1  # three polls, one line per change
    assert log.count("ci/build: success") == 1


@pytest.mark.parametrize("state", ["failure", "error"])
def test_failed_status_fails_at_once_naming_check_and_state(requests_mock, state):
    github_checks(requests_mock, [{"id": 1, "context": "ci/build", "state": state}])
    client, runner, clock, deadline = make()

    with pytest.raises(DeployFailed, match=f"required check not green on {SHA[:12]}: ci/build: {state}"):
        wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))
    assert clock.slept == []


@pytest.mark.parametrize(
    "conclusion", ["failure", "cancelled", "skipped", "timed_out", "action_required", "neutral", "stale"]
)
def test_failed_check_run_fails_at_once(requests_mock, conclusion):
    github_checks(requests_mock, [], [{"id": 3, "name": "ci/build", "status": "completed", "conclusion": conclusion}])
    client, runner, clock, deadline = make()

    with pytest.raises(DeployFailed, match=f"ci/build: {conclusion}"):
        wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))
    assert clock.slept == []


def test_gitea_warning_status_fails_at_once(requests_mock):
    requests_mock.get(
        f"{GITEA}/repos/{REPO}/commits/{SHA}/statuses",
        [{"json": [{"id": 2, "context": "ci/build", "status": "warning"}]}, {"json": []}],
    )
    client, runner, clock, deadline = make("gitea", GITEA)

    with pytest.raises(DeployFailed, match="ci/build: warning"):
        wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))
    assert clock.slept == []


def test_timeout_lists_the_last_state_of_each_check(requests_mock):
    github_checks(requests_mock, [{"id": 1, "context": "ci/build", "state": "pending"},
                                  {"id": 2, "context": "lint", "state": "success"}])
    gates = replace(GATES, required_checks=("ci/build", "e2e", "lint"))
    client, runner, clock, deadline = make()

    with pytest.raises(DeployFailed) as caught:
        wait_for_required_checks(gates, SHA, client, Context(runner, deadline))

    assert "after 60 s (input `checks-timeout`): ci/build: pending, e2e: missing, lint: success" in str(caught.value)
    assert sum(clock.slept) == 60
    assert len(requests_mock.request_history) == 5 * 3  # polls at 0, 15, 30, 45, 60: statuses 2 pages, check runs 1
    assert log_of(runner).count("e2e: missing") == 1


def test_name_that_is_both_status_and_check_run_needs_both_green(requests_mock):
    github_checks(
        requests_mock,
        [{"id": 1, "context": "ci/build", "state": "success"}],
        [{"id": 2, "name": "ci/build", "status": "in_progress", "conclusion": None}],
    )
    client, runner, _clock, deadline = make()

    with pytest.raises(DeployFailed, match="ci/build: in_progress"):
        wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))


def test_green_status_does_not_hide_a_failed_check_run_of_the_same_name(requests_mock):
    github_checks(
        requests_mock,
        [{"id": 1, "context": "ci/build", "state": "success"}],
        [{"id": 2, "name": "ci/build", "status": "completed", "conclusion": "failure"}],
    )
    client, runner, clock, deadline = make()

    with pytest.raises(DeployFailed, match="ci/build: failure"):
        wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))
    assert clock.slept == []


def test_no_required_checks_asks_nothing(requests_mock):
    client, runner, _clock, deadline = make()

    result = wait_for_required_checks(replace(GATES, required_checks=()), SHA, client, Context(runner, deadline))

    assert result == ChecksResult(states=(), seconds=0.0)
    assert requests_mock.request_history == []


def test_overall_deadline_stops_the_wait_before_checks_timeout(requests_mock):
    github_checks(requests_mock, [{"id": 1, "context": "ci/build", "state": "pending"}])
    client, runner, clock, deadline = make(timeout=40)

    with pytest.raises(DeadlineExceeded, match="waiting for required checks"):
        wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))
    assert clock.slept == [15, 15]


# -- superseded -----------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [SHA, SHA.upper(), SHA[:7]])
def test_branch_still_at_sha_is_not_superseded(requests_mock, head):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", json={"commit": {"sha": head}})
    client, runner, _, _ = make()

    assert newer_head(GATES, SHA, client, runner) == ""
    assert "this run is the newest" in log_of(runner)


@pytest.mark.parametrize(("kind", "api", "commit"), [
    ("github", GITHUB, {"sha": NEWER_SHA}),
    ("gitea", GITEA, {"id": NEWER_SHA}),
])
def test_branch_moved_on_means_superseded_with_the_newer_head(requests_mock, kind, api, commit):
    requests_mock.get(f"{api}/repos/{REPO}/branches/main", json={"name": "main", "commit": commit})
    client, runner, _, _ = make(kind, api)

    assert newer_head(GATES, SHA, client, runner) == NEWER_SHA
    assert f"moved on to {NEWER_SHA[:12]}" in log_of(runner)


@pytest.mark.parametrize("status_code", [404, 500, 403])
def test_unreadable_head_warns_and_is_not_superseded(requests_mock, status_code):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", status_code=status_code, json={"message": "nope"})
    client, runner, _, _ = make()

    assert newer_head(GATES, SHA, client, runner) is None
    assert "warning: Superseded guard off: reading the head of branch 'main'" in log_of(runner)
    assert f"HTTP {status_code}" in log_of(runner)


def test_without_token_the_guard_is_off_with_a_warning():
    runner = Runner(stream=io.StringIO(), in_actions=True)

    assert newer_head(GATES, SHA, None, runner) is None
    assert "::warning title=Superseded guard off::no github-token" in log_of(runner)


def test_without_branch_the_guard_is_off_with_a_warning(requests_mock):
    client, runner, _, _ = make()

    assert newer_head(replace(GATES, branch=""), SHA, client, runner) is None
    assert "no branch to compare with" in log_of(runner)
    assert requests_mock.request_history == []


def test_guard_switched_off_reads_nothing(requests_mock):
    client, runner, _, _ = make()

    assert newer_head(replace(GATES, skip_if_superseded=False), SHA, client, runner) == ""
    assert requests_mock.request_history == [] and log_of(runner) == ""


def test_head_too_short_to_compare_warns_and_is_not_superseded(requests_mock):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", json={"commit": {"sha": SHA[:6]}})
    client, runner, _, _ = make()

    assert newer_head(GATES, SHA, client, runner) is None
    assert "is not a commit SHA; deploying without the guard" in log_of(runner)


# -- live kill switch -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "skip"), [("true", True), ("Disabled", True), ("1", True),
                                             ("false", False), ("", False), ("enabled", False)])
def test_kill_switch_variable_is_parsed_like_the_input(requests_mock, value, skip):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/actions/variables/DEPLOY_FROZEN", json={"value": value})
    client, runner, _, _ = make()

    assert live_kill_switch(GATES, client, runner) is skip
    assert ("skip" if skip else "proceed") in log_of(runner)


def test_kill_switch_variable_not_set_proceeds(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/actions/variables/DEPLOY_FROZEN", status_code=404)
    client, runner, _, _ = make("gitea", GITEA)

    assert live_kill_switch(GATES, client, runner) is False
    assert "not set" in log_of(runner)


def test_kill_switch_typo_is_an_error(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/actions/variables/DEPLOY_FROZEN", json={"data": "frozen"})
    client, runner, _, _ = make("gitea", GITEA)

    with pytest.raises(DeployFailed, match="DEPLOY_FROZEN = 'frozen': expected one of"):
        live_kill_switch(GATES, client, runner)


def test_unreadable_kill_switch_fails_closed_with_a_permission_hint(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/actions/variables/DEPLOY_FROZEN", status_code=403,
                      json={"message": "token does not have at least one of required scope(s)"})
    client, runner, _, _ = make("gitea", GITEA)

    with pytest.raises(DeployFailed, match=r"failing closed.*HTTP 403.*repo-owner rights") as caught:
        live_kill_switch(GATES, client, runner)
    assert isinstance(caught.value, DeployFailed)  # main.run maps it to exit 1


def test_no_kill_switch_variable_reads_nothing(requests_mock):
    client, runner, _, _ = make()

    assert live_kill_switch(replace(GATES, disabled_variable=""), client, runner) is False
    assert requests_mock.request_history == []


def test_kill_switch_without_client_fails_closed():
    with pytest.raises(DeployFailed, match="needs github-token"):
        live_kill_switch(GATES, None, Runner(stream=io.StringIO()))


# -- the three gates against the simulator, both forges ------------------------------------------


def test_sim_required_check_behind_a_page_of_noise_is_waited_for(forge_sim):
    forge, server = forge_sim
    for i in range(60):
        forge.add_status(SHA, f"noise-{i}", "success")
    forge.add_status(SHA, "ci/build", "pending")
    for i in range(60, 120):
        forge.add_status(SHA, f"noise-{i}", "success")
    client, runner, clock, deadline = sim_client(forge, server)

    original_sleep = clock.sleep

    def sleep_then_ci_reports(seconds: float) -> None:
        original_sleep(seconds)
        forge.add_status(SHA, "ci/build", "success")

    clock.sleep = sleep_then_ci_reports  # type: ignore[method-assign]

    result = wait_for_required_checks(GATES, SHA, client, Context(runner, deadline))

    assert result.states == (("ci/build", "success"),) and result.seconds == 15
    assert "ci/build: pending" in log_of(runner) and "ci/build: success" in log_of(runner)


def test_sim_superseded_and_kill_switch(forge_sim):
    forge, server = forge_sim
    forge.branches["main"] = NEWER_SHA
    forge.variables["DEPLOY_FROZEN"] = "yes"
    client, runner, _, _ = sim_client(forge, server)

    assert newer_head(GATES, SHA, client, runner) == NEWER_SHA
    assert live_kill_switch(GATES, client, runner) is True
    forge.branches["main"] = SHA
    forge.variables["DEPLOY_FROZEN"] = "no"
    assert newer_head(GATES, SHA, client, runner) == ""
    assert live_kill_switch(GATES, client, runner) is False


def test_sim_kill_switch_5xx_after_retries_fails_closed(forge_sim):
    forge, server = forge_sim
    forge.fault("actions/variables/DEPLOY_FROZEN", 500 if forge.kind == "gitea" else 503)
    client, runner, clock, _ = sim_client(forge, server, delays=(2, 4))

    with pytest.raises(DeployFailed, match="kill switch unreadable, failing closed") as caught:
        live_kill_switch(GATES, client, runner)
    assert FORGE_TOKEN not in str(caught.value) and FORGE_TOKEN not in log_of(runner)
    if forge.kind == "github":  # 503 is transient: retried on the schedule first
        assert clock.slept == [2, 4]


def test_sim_unreadable_head_is_not_superseded(forge_sim):
    forge, server = forge_sim
    forge.fault("branches/main", 503)
    client, runner, _, _ = sim_client(forge, server, delays=(1,))

    assert newer_head(GATES, SHA, client, runner) is None
    assert "deploying without the guard" in log_of(runner)
    assert FORGE_TOKEN not in log_of(runner)


def test_once_warned_an_unreadable_head_is_logged_not_warned_again(requests_mock):
    """The guard is asked before every deploy call: one annotation says it is off, not one per call."""
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", status_code=500, json={"message": "nope"})
    client, _, _, _ = make()
    runner = Runner(stream=io.StringIO(), in_actions=True)

    assert newer_head(GATES, SHA, client, runner, quiet=True) is None
    assert "deploying without the guard" in log_of(runner) and "::warning" not in log_of(runner)
