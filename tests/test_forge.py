"""The forge client: both API shapes, pagination past clamped pages, rate limits, secrets.

Narrow HTTP edge cases use requests-mock; the simulator (real HTTP on loopback) covers what a
user meets, including the session's retries of 5xx, which requests-mock would bypass.
"""

from __future__ import annotations

import io
import socket

import pytest

from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.forge import ForgeClient, ForgeError
from deploy.runner import Runner
from deploy.settings import ForgeSettings, HttpSettings
from tests.support import FORGE_TOKEN, GITEA, GITHUB, REPO, SHA, forge_client, log_of, sim_client


def make_client(kind: str, api_url: str, clock: FakeClock | None = None, delays: tuple[float, ...] = (),
                timeout: float = 3600) -> tuple[ForgeClient, Runner, FakeClock]:
    client, runner, clock, _ = forge_client(kind, api_url, clock, delays, timeout)
    return client, runner, clock


def paged(pages: list[list[dict]], key: str | None = None):
    """A requests-mock callback serving ``pages`` by the `page` parameter (1-based), then empty pages."""

    def respond(request, context):
        page = int(request.qs.get("page", ["1"])[0])
        rows = pages[page - 1] if page <= len(pages) else []
        return {"total_count": sum(map(len, pages)), key: rows} if key else rows

    return respond


def status(context: str, state: str, row_id: int, gitea: bool = False) -> dict:
    return {"id": row_id, "context": context, ("status" if gitea else "state"): state}


# -- pagination and newest-wins -------------------------------------------------------------------


def test_gitea_check_green_only_on_page_two_behind_a_clamped_full_page_is_found(requests_mock):
    noise = [status(f"noise-{i}", "success", 1000 - i, gitea=True) for i in range(50)]
    statuses = requests_mock.get(
        f"{GITEA}/repos/{REPO}/commits/{SHA}/statuses",
        json=paged([noise, [status("ci/build", "success", 3, gitea=True)]]),
    )
    client, _, _ = make_client("gitea", GITEA)

    states = client.check_states(SHA)

    assert states["ci/build"] == ("success",)
    assert [r.qs["page"] for r in statuses.request_history] == [["1"], ["2"], ["3"]]
    assert all(r.qs["limit"] == ["50"] for r in statuses.request_history)


def test_short_page_is_not_the_end_of_the_list(requests_mock):
    requests_mock.get(
        f"{GITHUB}/repos/{REPO}/commits/{SHA}/statuses",
        json=paged([[status("lint", "success", 9)], [status("ci/build", "failure", 4)]]),
    )
    requests_mock.get(f"{GITHUB}/repos/{REPO}/commits/{SHA}/check-runs", json=paged([], "check_runs"))
    client, _, _ = make_client("github", GITHUB)

    assert client.check_states(SHA) == {"lint": ("success",), "ci/build": ("failure",)}


def test_github_asks_for_the_largest_page_size(requests_mock):
    statuses = requests_mock.get(f"{GITHUB}/repos/{REPO}/commits/{SHA}/statuses", json=[])
    runs = requests_mock.get(f"{GITHUB}/repos/{REPO}/commits/{SHA}/check-runs", json=paged([], "check_runs"))
    client, _, _ = make_client("github", GITHUB)

    assert client.check_states(SHA) == {}
    assert statuses.last_request.qs["per_page"] == ["100"] and runs.last_request.qs["per_page"] == ["100"]


def test_duplicate_contexts_newest_id_wins_whatever_the_order(requests_mock):
    rows = [status("ci/build", "failure", 5), status("ci/build", "success", 9), status("ci/build", "pending", 7)]
    requests_mock.get(f"{GITEA}/repos/{REPO}/commits/{SHA}/statuses", json=paged([rows]))
    client, _, _ = make_client("gitea", GITEA)

    assert client.check_states(SHA) == {"ci/build": ("success",)}


def test_duplicates_without_ids_are_ordered_by_timestamp(requests_mock):
    rows = [
        {"context": "ci/build", "state": "success", "updated_at": "2024-05-01T10:00:00Z"},
        {"context": "ci/build", "state": "failure", "updated_at": "2024-05-01T12:00:00+02:00"},  # 10:00Z, a tie
        {"context": "ci/build", "state": "error", "updated_at": "2024-05-01T11:30:00Z"},
    ]
    requests_mock.get(f"{GITEA}/repos/{REPO}/commits/{SHA}/statuses", json=paged([rows]))
    client, _, _ = make_client("gitea", GITEA)

    assert client.check_states(SHA) == {"ci/build": ("error",)}


def test_github_name_reported_as_status_and_check_run_keeps_both_states(requests_mock):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/commits/{SHA}/statuses", json=paged([[status("build", "success", 1)]]))
    runs = [
        {"id": 20, "name": "build", "status": "in_progress", "conclusion": None},
        {"id": 11, "name": "build", "status": "completed", "conclusion": "failure"},
        {"id": 12, "name": "test", "status": "completed", "conclusion": "timed_out"},
    ]
    requests_mock.get(f"{GITHUB}/repos/{REPO}/commits/{SHA}/check-runs", json=paged([runs], "check_runs"))
    client, _, _ = make_client("github", GITHUB)

    assert client.check_states(SHA) == {"build": ("success", "in_progress"), "test": ("timed_out",)}


def test_gitea_has_no_check_runs_endpoint_to_ask(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/commits/{SHA}/statuses", json=[])
    client, _, _ = make_client("gitea", GITEA)

    client.check_states(SHA)

    assert all("check-runs" not in r.path for r in requests_mock.request_history)


def test_server_that_ignores_the_page_parameter_is_given_up_on(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/commits/{SHA}/statuses", json=[status("ci", "pending", 1)])
    client, _, _ = make_client("gitea", GITEA)

    with pytest.raises(ForgeError, match="after 100 pages"):
        client.check_states(SHA)


# -- rate limits ----------------------------------------------------------------------------------


def test_retry_after_rate_limit_is_waited_out_and_logged(requests_mock):
    requests_mock.get(
        f"{GITHUB}/repos/{REPO}/branches/main",
        [{"status_code": 429, "headers": {"Retry-After": "30"}, "json": {"message": "secondary rate limit"}},
         {"json": {"commit": {"sha": SHA}}}],
    )
    client, runner, clock = make_client("github", GITHUB)

    assert client.branch_head("main") == SHA
    assert clock.slept == [31.0]  # Retry-After plus a second's margin for clock skew
    assert "rate limit reached while reading the head of branch 'main': waiting 31 s, until" in log_of(runner)


def test_rate_limit_reset_epoch_is_waited_until_on_the_wall_clock(requests_mock):
    clock = FakeClock()
    reset = int(clock.wall()) + 120
    requests_mock.get(
        f"{GITHUB}/repos/{REPO}/actions/variables/FREEZE",
        [{"status_code": 403, "headers": {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
          "json": {"message": "API rate limit exceeded"}},
         {"json": {"name": "FREEZE", "value": "false"}}],
    )
    client, runner, _ = make_client("github", GITHUB, clock)

    assert client.variable("FREEZE") == "false"
    assert clock.slept == [121.0]
    assert "waiting 121 s, until" in log_of(runner)


def test_rate_limit_longer_than_the_checks_budget_fails_at_once_naming_it(requests_mock):
    clock = FakeClock()
    requests_mock.get(
        f"{GITHUB}/repos/{REPO}/commits/{SHA}/statuses",
        status_code=403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(clock.wall()) + 900)},
    )
    client, _, _ = make_client("github", GITHUB, clock)

    with pytest.raises(ForgeError, match=r"rate limit lifts in 901 s .*left of the budget \(input `checks-timeout`\)"):
        client.check_states(SHA, budget=Deadline.starting_now(clock, 300))
    assert clock.slept == []


def test_rate_limit_longer_than_the_overall_deadline_names_timeout(requests_mock):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", status_code=429, headers={"Retry-After": "7200"})
    client, _, clock = make_client("github", GITHUB, timeout=600)

    with pytest.raises(ForgeError, match=r"input `timeout`"):
        client.branch_head("main")
    assert clock.slept == []


def test_plain_403_is_a_permission_error_not_a_rate_limit(requests_mock):
    requests_mock.get(
        f"{GITHUB}/repos/{REPO}/actions/variables/FREEZE",
        status_code=403, headers={"X-RateLimit-Remaining": "4999"},
        json={"message": "Resource not accessible by integration"},
    )
    client, _, clock = make_client("github", GITHUB)

    with pytest.raises(ForgeError, match="HTTP 403: Resource not accessible by integration") as caught:
        client.variable("FREEZE")
    assert caught.value.status == 403 and clock.slept == []


# -- branch heads and variables -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "api", "commit"), [
    ("github", GITHUB, {"sha": SHA.upper(), "url": "x"}),
    ("gitea", GITEA, {"id": SHA.upper(), "message": "m"}),
])
def test_branch_head_is_read_where_each_forge_puts_it(requests_mock, kind, api, commit):
    requests_mock.get(f"{api}/repos/{REPO}/branches/release/2.x", json={"name": "release/2.x", "commit": commit})
    client, _, _ = make_client(kind, api)

    assert client.branch_head("release/2.x") == SHA


def test_branch_head_in_the_other_forges_shape_is_an_error(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/branches/main", json={"commit": {"sha": SHA}})
    client, _, _ = make_client("gitea", GITEA)

    with pytest.raises(ForgeError, match=r"without commit\.id"):
        client.branch_head("main")


@pytest.mark.parametrize(("kind", "api", "body"), [
    ("github", GITHUB, {"name": "FREEZE", "value": "yes"}),
    ("gitea", GITEA, {"name": "FREEZE", "data": "yes", "owner_id": 0, "repo_id": 1}),
])
def test_variable_value_is_read_where_each_forge_puts_it(requests_mock, kind, api, body):
    requests_mock.get(f"{api}/repos/{REPO}/actions/variables/FREEZE", json=body)
    client, _, _ = make_client(kind, api)

    assert client.variable("FREEZE") == "yes"


def test_variable_not_set_is_none(requests_mock):
    requests_mock.get(f"{GITEA}/repos/{REPO}/actions/variables/FREEZE", status_code=404, json={"message": "not found"})
    client, _, _ = make_client("gitea", GITEA)

    assert client.variable("FREEZE") is None


def test_non_json_answer_is_a_forge_error(requests_mock):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", text="<html><title>Sign in</title></html>")
    client, _, _ = make_client("github", GITHUB)

    with pytest.raises(ForgeError, match="not JSON"):
        client.branch_head("main")


def test_missing_repository_fails_before_any_request(requests_mock):
    forge = ForgeSettings(kind="github", api_url=GITHUB, repository="", token=FORGE_TOKEN)
    ctx = Context(Runner(stream=io.StringIO()), Deadline.starting_now(FakeClock(), 60))
    client = ForgeClient(forge, HttpSettings(request_timeout=5, retry_delays=()), ctx)

    with pytest.raises(ForgeError, match="no repository"):
        client.branch_head("main")
    assert requests_mock.request_history == []


# -- the token ------------------------------------------------------------------------------------


def test_token_goes_only_in_the_authorization_header(requests_mock):
    requests_mock.get(f"{GITHUB}/repos/{REPO}/branches/main", json={"commit": {"sha": SHA}})
    client, _, _ = make_client("github", GITHUB)

    client.branch_head("main")

    request = requests_mock.last_request
    assert request.headers["Authorization"] == f"token {FORGE_TOKEN}"
    assert FORGE_TOKEN not in request.url


def test_token_echoed_by_the_server_never_reaches_logs_or_errors(requests_mock):
    requests_mock.get(
        f"{GITHUB}/repos/{REPO}/branches/main",
        [{"status_code": 429, "headers": {"Retry-After": "1"}},
         {"status_code": 401, "json": {"message": f"Bad credentials: token {FORGE_TOKEN}"}}],
    )
    client, runner, _ = make_client("github", GITHUB)

    with pytest.raises(ForgeError) as caught:
        client.branch_head("main")
    assert "Bad credentials: token ***" in str(caught.value)
    assert FORGE_TOKEN not in str(caught.value) and FORGE_TOKEN not in caught.value.text
    assert FORGE_TOKEN not in log_of(runner)


# -- against the simulator (real HTTP) ------------------------------------------------------------


def test_sim_serves_every_page_of_a_long_status_list(forge_sim):
    forge, server = forge_sim
    forge.add_status(SHA, "ci/build", "pending")
    forge.add_status(SHA, "ci/build", "success")
    for i in range(120):
        forge.add_status(SHA, f"noise-{i}", "success")
    client, _, _, _ = sim_client(forge, server)

    states = client.check_states(SHA)

    assert states["ci/build"] == ("success",) and len(states) == 121
    pages = server.seen(f"{forge.prefix}/repos/{REPO}/commits/{SHA}/statuses")
    assert len(pages) == (3 if forge.kind == "gitea" else 2) + 1  # full pages, then the empty one


@pytest.mark.parametrize("forge_sim", ["github"], indirect=True)
def test_sim_check_runs_and_statuses_share_a_name_on_github(forge_sim):
    forge, server = forge_sim
    forge.add_status(SHA, "build", "success")
    forge.add_check_run(SHA, "build", status="queued")
    client, _, _, _ = sim_client(forge, server)
    assert client.check_states(SHA) == {"build": ("success", "queued")}


def test_sim_branch_head_and_variables(forge_sim):
    forge, server = forge_sim
    forge.branches["main"] = SHA
    forge.variables["DEPLOY_FROZEN"] = "on"
    client, _, _, _ = sim_client(forge, server)

    assert client.branch_head("main") == SHA
    assert client.variable("deploy_frozen") == "on"
    assert client.variable("OTHER") is None
    with pytest.raises(ForgeError, match="HTTP 404"):
        client.branch_head("gone")


def test_sim_5xx_is_retried_on_the_schedule_then_fails(forge_sim):
    forge, server = forge_sim
    forge.fault("actions/variables/DEPLOY_FROZEN", 503)
    client, runner, clock, _ = sim_client(forge, server, delays=(5, 10))

    with pytest.raises(ForgeError, match="HTTP 503: injected fault 503") as caught:
        client.variable("DEPLOY_FROZEN")
    assert caught.value.status == 503
    assert len(server.seen(f"{forge.prefix}/repos/{REPO}/actions/variables")) == 3
    assert clock.slept == [5, 10]
    assert "attempt 2/3" in log_of(runner) and "attempt 3/3" in log_of(runner)


def test_sim_transient_fault_heals_within_the_retries(forge_sim):
    forge, server = forge_sim
    forge.branches["main"] = SHA
    forge.fault("branches/main", 502, times=1)
    client, _, clock, _ = sim_client(forge, server, delays=(5,))

    assert client.branch_head("main") == SHA
    assert clock.slept == [5]


def test_sim_rate_limit_once_is_waited_out(forge_sim):
    forge, server = forge_sim
    forge.branches["main"] = SHA
    forge.rate_limit_once(reset_in=45)
    client, runner, clock, _ = sim_client(forge, server)

    assert client.branch_head("main") == SHA
    assert 45 <= clock.slept[0] <= 47
    assert "rate limit reached" in log_of(runner)


def test_sim_rejects_a_wrong_token_without_echoing_it(forge_sim):
    forge, server = forge_sim
    forge.token = "another-token"
    client, runner, _, _ = sim_client(forge, server)

    with pytest.raises(ForgeError, match="HTTP 401: Bad credentials") as caught:
        client.branch_head("main")
    assert FORGE_TOKEN not in str(caught.value) and FORGE_TOKEN not in log_of(runner)


def test_unreachable_forge_is_a_forge_error_after_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client, runner, clock = make_client("gitea", f"http://127.0.0.1:{port}/api/v1", delays=(1, 2))

    with pytest.raises(ForgeError, match="unreachable") as caught:
        client.variable("FREEZE")
    assert caught.value.status is None
    assert clock.slept == [1, 2]
    assert FORGE_TOKEN not in str(caught.value) and FORGE_TOKEN not in log_of(runner)
