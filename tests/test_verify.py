"""Verify: every tenant that shipped must itself report the build, polled in concurrent rounds.

Edge cases of one answer (match rule, field path, malformed or oversized bodies, redirects,
quoting, resets and timeouts) run against a scripted real server on loopback
(:mod:`tests.tenant_stub`) with a FakeClock, so rounds and waits are exact: the reader talks to
urllib3's connection pool directly, where requests-mock cannot see, so these tests only speak
HTTP. What users meet — tenants draining the old container, stale, dead, flapping, a whole fleet
settling — runs against the simulator's real /buildinfo endpoints.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import requests

from deploy import http
from deploy.buildinfo import BODY_LIMIT, Answer, BuildinfoClient, buildinfo_session, buildinfo_url, read_field
from deploy.clock import Clock, Deadline, FakeClock
from deploy.context import Context
from deploy.controlplane import TenantRow
from deploy.domain import sha_matches
from deploy.report import as_json
from deploy.runner import Runner
from deploy.settings import HttpSettings, VerifySettings
from deploy.sim.fleet import OLD_SHA, FleetSim, TenantSpec
from deploy.sim.server import SimServer
from deploy.verify import verify_tenants
from tests.support import SHA, buildinfo
from tests.tenant_stub import ANY, Seen, TenantStub, closed_port

PATH = "/{slug}/buildinfo"  # each tenant's /buildinfo on the stub: ``tenant_stub.url(PATH)`` is the verify-url
SETTINGS = VerifySettings(url_template="", field="git_sha", budget=60.0, interval=10.0, concurrency=4)
HTTP = HttpSettings(request_timeout=5.0, retry_delays=())


def path(slug: str) -> str:
    return buildinfo_url(PATH, slug)


def url(stub: TenantStub, slug: str) -> str:
    return stub.url(path(slug))


def on(stub: TenantStub, **changes: Any) -> VerifySettings:
    """:data:`SETTINGS` polling the tenants scripted on ``stub``, with ``changes``."""
    return replace(SETTINGS, url_template=stub.url(PATH), **changes)


@pytest.fixture
def read_budgets(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The budget each /buildinfo read gives the HTTP layer, in order (requests-mock showed it as the
    request's timeout)."""
    budgets: list[float] = []
    request = http.Client.request

    def spy(self: http.Client, method: str, url: str, **kwargs: Any) -> http.Reply:
        budgets.append(kwargs["budget"])
        return request(self, method, url, **kwargs)

    monkeypatch.setattr(http.Client, "request", spy)
    return budgets


def stalled_reads_give_up_after(monkeypatch: pytest.MonkeyPatch, stalled_url: str | set[str], seconds: float) -> None:
    """A read of ``stalled_url`` (or of any of a set) really times out after ``seconds`` of wall time,
    whatever its budget: the reader still words the timeout with the budget it gave, without
    waiting it out in every round."""
    request = http.Client.request
    stalled = {stalled_url} if isinstance(stalled_url, str) else stalled_url

    def shortened(self: http.Client, method: str, url: str, **kwargs: Any) -> http.Reply:
        if url in stalled:
            kwargs["budget"] = min(kwargs["budget"], seconds)
        return request(self, method, url, **kwargs)

    monkeypatch.setattr(http.Client, "request", shortened)


def rows(*slugs: str, healthz_ok: bool | None = True) -> list[TenantRow]:
    return [TenantRow(slug, phase="done", ssm_status="Success", healthz_ok=healthz_ok) for slug in slugs]


class Run:
    """One verify call with a FakeClock: waits are instant and recorded."""

    def __init__(self, settings: VerifySettings = SETTINGS, overall: float = 3600.0,
                 http_settings: HttpSettings = HTTP) -> None:
        self.settings, self.http_settings = settings, http_settings
        self.clock = FakeClock()
        self.deadline = Deadline.starting_now(self.clock, overall)
        self.log = io.StringIO()
        self.runner = Runner(stream=self.log, in_actions=True)

    def __call__(self, tenant_rows: list[TenantRow], sha: str = SHA, **kw: object):
        return verify_tenants(self.settings, self.http_settings, sha, tenant_rows, Context(self.runner, self.deadline),
                              **kw)

    @property
    def output(self) -> str:
        return self.log.getvalue()


# -- the match rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        (SHA, True),
        (SHA.upper(), True),
        (f"  {SHA}\n", True),
        (SHA[:7], True),
        (SHA[:12].upper(), True),
        (SHA + "-dirty", False),  # a working tree with changes: another build
        (SHA[:12] + "+local", False),
        (f" {SHA} ", True),  # whitespace around it is not part of it
        ("g" + SHA[1:], False),  # not hex
        (SHA[:6], False),  # too short to prove anything
        (OLD_SHA, False),
        (SHA[:7] + ("1" if SHA[7] == "0" else "0"), False),  # seven right, the eighth wrong
        ("", False),
    ],
)
def test_sha_matches_hex_equal_or_a_prefix_of_seven_or_more_in_any_case(reported: str, expected: bool) -> None:
    assert sha_matches(reported, SHA) is expected


def test_a_short_configured_sha_proves_a_full_reported_one() -> None:
    assert sha_matches(SHA, SHA[:7].upper())
    assert not sha_matches(SHA, SHA[:6])


# -- one answer, scripted on a real server on loopback ---------------------------------------


def test_tenant_reporting_a_short_prefix_in_upper_case_is_verified(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": SHA[:9].upper()})
    result = Run(on(tenant_stub))(rows("t1"))
    assert result.ok and result.slugs("verified") == ("t1",)
    assert result.verdicts[0].running == SHA[:9].upper()
    assert result.rounds == 1


def test_a_six_character_prefix_is_not_proof_and_ends_stale(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": SHA[:6]})
    result = Run(on(tenant_stub))(rows("t1"))
    assert not result.ok
    assert result.slugs("stale") == ("t1",)
    assert result.verdicts[0].running == SHA[:6]


def test_dotted_field_path_reads_a_nested_sha(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": OLD_SHA, "build": {"commit": {"sha": SHA}}})
    result = Run(on(tenant_stub, field="build.commit.sha"))(rows("t1"))
    assert result.slugs("verified") == ("t1",)


def test_dotted_field_path_through_a_non_object_is_a_missing_field(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"build": "v1.2.3"})
    result = Run(on(tenant_stub, field="build.commit.sha"))(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)
    assert "without the field 'build.commit.sha'" in result.verdicts[0].detail


def test_non_json_answer_is_no_answer_yet_and_polled_every_round(tenant_stub) -> None:
    tenant_stub.get(path("t1"), text="<html><title>Welcome to nginx!</title></html>")
    run = Run(on(tenant_stub))
    result = run(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)
    assert "not JSON" in result.verdicts[0].detail
    assert result.rounds == 6  # ticks at 0, 10, ..., 50 of a 60 s budget
    assert tenant_stub.call_count == 6
    assert run.clock.slept == [10.0] * 5


def test_missing_field_is_no_answer_yet(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"version": "1.4.2"})
    result = Run(on(tenant_stub))(rows("t1"))
    verdict = result.verdicts[0]
    assert (verdict.state, verdict.running) == ("unreachable", "")
    assert "without the field 'git_sha'" in verdict.detail


def test_a_non_string_field_is_no_answer_yet(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": 3786850})
    result = Run(on(tenant_stub))(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)
    assert "is not a SHA" in result.verdicts[0].detail


def test_oversized_body_is_not_read_and_not_trusted(tenant_stub) -> None:
    padded = json.dumps({"git_sha": SHA, "padding": "x" * BODY_LIMIT}).encode()
    tenant_stub.get(path("t1"), content=padded, close_delimited=True)  # no Content-Length: the cap must stop the read
    result = Run(on(tenant_stub))(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)
    assert "over 64 KiB" in result.verdicts[0].detail


def test_oversized_declared_length_is_not_trusted(tenant_stub) -> None:
    body = json.dumps({"git_sha": SHA}).encode()
    tenant_stub.get(path("t1"), content=body, headers={"Content-Length": str(BODY_LIMIT + 1)})
    result = Run(on(tenant_stub))(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)


def test_5xx_then_the_new_sha_is_verified_in_the_next_round(tenant_stub) -> None:
    tenant_stub.get(path("t1"), [{"status_code": 503, "text": "upstream connect error"},
                                 {"json": {"git_sha": SHA}}])
    run = Run(on(tenant_stub))
    result = run(rows("t1"))
    assert result.ok
    assert result.rounds == 2
    assert run.clock.slept == [10.0]
    assert result.verdicts[0].seconds == pytest.approx(10.0)


def test_old_sha_while_draining_then_new_sha_is_verified(tenant_stub) -> None:
    tenant_stub.get(path("t1"), [{"json": {"git_sha": OLD_SHA}}] * 3 + [{"json": {"git_sha": SHA}}])
    result = Run(on(tenant_stub))(rows("t1"))
    assert result.slugs("verified") == ("t1",)
    assert result.rounds == 4


def test_tenant_still_on_the_old_sha_at_the_deadline_is_stale_naming_what_it_runs(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": SHA})
    tenant_stub.get(path("t2"), json={"git_sha": OLD_SHA})
    run = Run(on(tenant_stub))
    result = run(rows("t1", "t2"))
    assert not result.ok
    assert result.slugs("verified") == ("t1",)
    assert result.slugs("stale") == ("t2",)
    stale = result.verdicts[1]
    assert stale.running == OLD_SHA
    assert OLD_SHA[:12] in stale.detail and SHA[:12] in stale.detail
    assert f"::error title=verify t2::verify: t2 is stale: still runs {OLD_SHA}" in run.output
    assert "::error title=verify t1" not in run.output


def test_stale_wins_over_unreachable_once_a_tenant_reported_a_sha(tenant_stub) -> None:
    tenant_stub.get(path("t1"), [{"json": {"git_sha": OLD_SHA}}, {"status_code": 502}])
    result = Run(on(tenant_stub))(rows("t1"))
    verdict = result.verdicts[0]
    assert (verdict.state, verdict.running) == ("stale", OLD_SHA)
    assert "last poll: HTTP 502" in verdict.detail


def test_redirect_loop_is_bounded_and_reported(tenant_stub) -> None:
    tenant_stub.get(path("t1"), status_code=302, headers={"Location": url(tenant_stub, "t1")})
    result = Run(on(tenant_stub, budget=10.0))(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)
    assert "more than 3 redirects" in result.verdicts[0].detail
    assert tenant_stub.call_count == 4  # one round: the request and three redirects


@pytest.mark.parametrize("credentials", ["", "reader:pw-8c1d@"])  # the lean GET; requests' path (userinfo)
@pytest.mark.parametrize(("location", "followed"), [
    ("/t1/v2/buildinfo", True),
    ("/t1", True),
    ("/t2/buildinfo", False),  # another tenant on the same host: its answer must not prove t1
    ("/t1/../t2/buildinfo", False),
    ("/t1/%2e%2e/t2/buildinfo", False),  # dot segments a server decodes
    ("/t1%2F..%2Ft2/buildinfo", False),
    ("/buildinfo", False),
    ("/t10/buildinfo", False),  # a prefix of the text is not the tenant's segment
])
def test_a_redirect_is_followed_only_on_the_tenants_own_path(tenant_stub, location, followed, credentials) -> None:
    """SECURITY.md § Redirects: same origin is not enough where tenants share a host (issue 21 [9])."""
    tenant_stub.get("/t1/buildinfo", status_code=302, headers={"Location": location})
    tenant_stub.get(ANY, json={"git_sha": SHA})  # wherever it lands, the build is reported
    template = tenant_stub.url(PATH).replace("http://", f"http://{credentials}")
    result = Run(replace(SETTINGS, url_template=template, budget=10.0))(rows("t1"))
    if followed:
        assert result.slugs("verified") == ("t1",), result.verdicts
        return
    assert result.slugs("unreachable") == ("t1",), result.verdicts
    assert "a redirect that leaves the tenant's own path (/t1), not followed" in result.verdicts[0].detail
    assert {seen.path for seen in tenant_stub.request_history} == {"/t1/buildinfo"}


@pytest.mark.parametrize(("location", "followed"), [
    ("/v2/buildinfo?tenant=t1", True), ("/buildinfo?tenant=t2", False), ("/buildinfo", False)])
def test_a_tenant_named_in_the_query_keeps_its_name_through_a_redirect(tenant_stub, location, followed) -> None:
    tenant_stub.get("/buildinfo", [{"status_code": 302, "headers": {"Location": location}},
                                   {"json": {"git_sha": SHA}}])
    tenant_stub.get(ANY, json={"git_sha": SHA})
    template = tenant_stub.url("/buildinfo?tenant={slug}")
    result = Run(replace(SETTINGS, url_template=template, budget=10.0, interval=20.0))(rows("t1"))
    assert result.slugs("verified" if followed else "unreachable") == ("t1",), result.verdicts


def test_a_tenant_named_in_the_host_may_redirect_anywhere_on_its_host() -> None:
    tenant = buildinfo_url("https://{slug}.example.test/buildinfo", "t1")
    assert tenant == "https://t1.example.test/buildinfo"
    assert tenant.redirect_refusal("https://t1.example.test/elsewhere/info") == ""


@pytest.mark.parametrize("slug", ["acme eu/2?x=1", "..", ".", "a/../b", "[x](https://evil.test)", "b\n"])
def test_a_slug_that_cannot_be_a_tenant_name_is_reported_not_polled(tenant_stub, slug) -> None:
    """SECURITY.md § Parsing: `..` must never become a path segment of verify-url."""
    template = tenant_stub.url("/tenants/{slug}/buildinfo")
    tenant_stub.get(ANY, json={"git_sha": SHA})
    result = Run(replace(SETTINGS, url_template=template))(rows(slug, "ok-1"))
    assert result.slugs("unreachable") == (slug,)
    assert result.verdicts[0].detail == "not a tenant name; not polled"
    assert [r.path for r in tenant_stub.request_history] == ["/tenants/ok-1/buildinfo"]


def test_timeouts_and_connection_errors_are_polled_again_then_unreachable(tenant_stub, monkeypatch) -> None:
    tenant_stub.get(path("t1"), fault="stall")  # never answers: each read times out
    tenant_stub.get(path("t2"), fault="reset")  # RST instead of an answer
    stalled_reads_give_up_after(monkeypatch, url(tenant_stub, "t1"), 0.1)  # 5 s of budget, 0.1 s of wall time
    result = Run(on(tenant_stub))(rows("t1", "t2"))
    assert result.slugs("unreachable") == ("t1", "t2")
    assert result.verdicts[0].detail.endswith("no answer within 5 s")
    assert result.verdicts[1].detail.endswith("connection reset")
    assert tenant_stub.call_count == 2 * 6


def test_request_timeout_is_capped_by_interval_and_time_left(tenant_stub, read_budgets) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": OLD_SHA})
    Run(on(tenant_stub, budget=25.0, interval=10.0), http_settings=replace(HTTP, request_timeout=30.0))(rows("t1"))
    assert read_budgets == [10.0, 10.0, 5.0]


def test_overall_deadline_shortens_the_budget(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": OLD_SHA})
    run = Run(on(tenant_stub), overall=15.0)
    run.clock.sleep(3.0)  # earlier stages used part of the run's time
    result = run(rows("t1"))
    assert result.rounds == 2  # ticks at 0 and 10 of the 12 s the run has left
    assert result.started == pytest.approx(3.0)
    assert result.seconds <= 12.0
    assert "cut short by the overall timeout" in run.output


def test_tenants_queued_for_a_worker_are_not_polled_past_the_deadline(tenant_stub, read_budgets) -> None:
    run = Run(on(tenant_stub, budget=10.0, concurrency=1))

    def slow_old_sha(request: Seen) -> dict[str, str]:  # each answer takes 4 s of the shared 10 s
        run.clock.sleep(4.0)
        return {"git_sha": OLD_SHA}

    slugs = [f"t{i}" for i in range(5)]
    for slug in slugs:
        tenant_stub.get(path(slug), json=slow_old_sha)
    result = run(rows(*slugs))
    assert result.rounds == 1
    assert read_budgets == [5.0, 5.0, 2.0]  # the third gets what is left
    assert result.slugs("stale") == ("t0", "t1")
    assert result.slugs("unreachable") == ("t2", "t3", "t4")
    assert "answer took longer than 2 s" in result.verdicts[2].detail
    assert "no time was left to poll it" in result.verdicts[3].detail


def test_an_error_status_with_a_huge_page_still_reports_the_status(tenant_stub) -> None:
    tenant_stub.get(path("t1"), status_code=503, reason="Service Unavailable", text="<html>" + "x" * (2 * BODY_LIMIT))
    result = Run(on(tenant_stub, budget=10.0))(rows("t1"))
    assert result.verdicts[0].detail.endswith("HTTP 503: HTML page (not JSON)")


def test_no_time_left_means_no_poll_and_no_proof(tenant_stub) -> None:
    run = Run(on(tenant_stub), overall=5.0)
    run.clock.sleep(5.0)
    result = run(rows("t1"))
    assert result.rounds == 0 and tenant_stub.call_count == 0
    assert result.slugs("unproven") == ("t1",)  # the timeout cut it short: no verdict on the tenant
    assert "cut by the overall timeout" in result.verdicts[0].detail


def test_unhealthy_row_is_not_polled_and_fails_verify(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": SHA})
    unhealthy = TenantRow("t2", healthz_ok=False, error="/healthz answered 500")
    legacy = TenantRow("t3")  # an older CP without healthz_ok: /buildinfo decides
    tenant_stub.get(path("t3"), json={"git_sha": SHA})
    result = Run(on(tenant_stub))([*rows("t1"), unhealthy, legacy])
    assert not result.ok
    assert result.slugs("verified") == ("t1", "t3")
    assert result.slugs("unhealthy") == ("t2",)
    assert "/healthz answered 500" in result.verdicts[1].detail
    polled = sorted(r.path for r in tenant_stub.request_history)
    assert polled == ["/t1/buildinfo", "/t3/buildinfo"]


def test_each_round_polls_every_pending_tenant_once_and_logs_one_progress_line(tenant_stub) -> None:
    slugs = [f"t{i}" for i in range(10)]
    for slug in slugs[:7]:
        tenant_stub.get(path(slug), json={"git_sha": SHA})
    for slug in slugs[7:]:
        tenant_stub.get(path(slug), [{"json": {"git_sha": OLD_SHA}}, {"json": {"git_sha": SHA}}])
    run = Run(on(tenant_stub, concurrency=3))
    result = run(rows(*slugs))
    assert result.ok and result.rounds == 2
    assert tenant_stub.call_count == 10 + 3
    progress = [line for line in run.output.splitlines() if "on target" in line]
    assert progress == ["verify: 7/10 on target, 3 waiting, 60 s left", "verify: 10/10 on target, 0 waiting, 50 s left"]


def test_final_lists_are_logged_and_in_the_result(tenant_stub) -> None:
    tenant_stub.get(path("ok"), json={"git_sha": SHA})
    tenant_stub.get(path("old"), json={"git_sha": OLD_SHA})
    tenant_stub.get(path("down"), status_code=503)
    run = Run(on(tenant_stub, budget=20.0))
    result = run([*rows("ok", "old", "down"), TenantRow("sick", healthz_ok=False)])
    doc = as_json(result)
    assert doc["ok"] is False
    assert (doc["verified"], doc["stale"], doc["unreachable"], doc["unhealthy"]) == (
        ["ok"], ["old"], ["down"], ["sick"]
    )
    assert [t["slug"] for t in doc["tenants"]] == ["ok", "old", "down", "sick"]
    assert "verify: 1 verified, 1 stale, 1 unreachable, 1 unhealthy in 2 rounds" in run.output
    assert "verify: stale: old" in run.output
    assert "verify: unreachable: down" in run.output
    assert run.runner.annotation_count("error") == 3


def test_a_token_in_the_verify_url_never_reaches_the_log_or_result() -> None:
    token = "s3cr3t-buildinfo-token"
    template = f"http://reader:{token}@127.0.0.1:{closed_port()}/{{slug}}/buildinfo?token={token}"  # refused
    run = Run(replace(SETTINGS, url_template=template, budget=10.0))
    result = run(rows("t1"))
    assert result.slugs("unreachable") == ("t1",)
    assert token not in run.output
    assert token not in json.dumps(as_json(result))


def test_injected_client_is_used_and_left_open(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": SHA})
    clock = FakeClock()
    ctx = Context(Runner(io.StringIO()), Deadline.starting_now(clock, 3600))
    client = ctx.client(http.Policy((), pool_size=4, headers={"X-Probe": "verify"}, lean=True))
    Run(on(tenant_stub))(rows("t1"), client=client)
    assert tenant_stub.last_request.headers["X-Probe"] == "verify"
    assert client._routes, "verify closed the client it was given (close() forgets every route)"


def test_default_client_verifies_tls_does_not_retry_and_pools_per_worker() -> None:
    clock = FakeClock()
    client = buildinfo_session(16, Context(Runner(io.StringIO()), Deadline.starting_now(clock, 3600)))
    adapter = client.session.get_adapter("https://t1.example.test/")
    assert client.session.verify is True
    assert adapter.max_retries.total == 0
    assert adapter._pool_maxsize == 16


def test_no_tenants_is_vacuously_ok_with_no_rounds(tenant_stub) -> None:
    result = Run(on(tenant_stub))([])
    assert result.ok and result.rounds == 0 and result.verdicts == ()


# -- the buildinfo client on its own (what verify and any other reader call) -----------------


def reader_for(clock: FakeClock, concurrency: int = 4) -> BuildinfoClient:
    return BuildinfoClient("git_sha", concurrency, Context(Runner(io.StringIO()), Deadline.starting_now(clock, 3600)))


def test_one_read_is_one_get_returning_the_sha_or_why_not(tenant_stub) -> None:
    tenant_stub.get(path("t1"), json={"git_sha": f"  {SHA}\n"})
    tenant_stub.get(path("t2"), status_code=503, text="upstream connect error")
    clock = FakeClock()
    with reader_for(clock) as reader:
        deadline = Deadline.starting_now(clock, 30.0)
        t1, t2 = url(tenant_stub, "t1"), url(tenant_stub, "t2")
        assert reader.read(t1, 5.0, deadline) == Answer(reported=SHA, problem="", at=clock.now())
        assert reader.read(t2, 5.0, deadline) == Answer.unusable("HTTP 503: upstream connect error", clock.now())
        clock.sleep(30.0)
        assert reader.read(t1, 5.0, deadline) is None  # the deadline passed: no request at all
    assert tenant_stub.call_count == 2


@pytest.mark.parametrize("count", [7, 301], ids=["one-read-per-job", "chunks"])
def test_read_all_keeps_the_order_of_the_urls_and_never_retries(tenant_stub, count) -> None:
    slugs = [f"t{i}" for i in range(count)]
    for i, slug in enumerate(slugs):
        tenant_stub.get(path(slug), json={"git_sha": f"{i:07d}"} if i % 2 else {"version": "1"})
    clock = FakeClock()
    with reader_for(clock, concurrency=3) as reader:
        answers = reader.read_all([url(tenant_stub, s) for s in slugs], 5.0, Deadline.starting_now(clock, 30.0))
    assert [a.reported if a else None for a in answers] == [f"{i:07d}" if i % 2 else "" for i in range(count)]
    assert answers[0] is not None and answers[0].problem == "answered 200 without the field 'git_sha'"
    assert tenant_stub.call_count == len(slugs)


def test_the_pool_grows_to_its_concurrency_while_every_worker_waits_on_a_tenant(tenant_stub, monkeypatch) -> None:
    """Tenants that hang must not queue behind the first workers: the pool starts small (a fast
    fleet is read cheaper by a few threads) and doubles whenever no chunk finishes for a while."""
    slugs = [f"t{i}" for i in range(12)]
    for slug in slugs:
        tenant_stub.get(path(slug), fault="stall")
    stalled_reads_give_up_after(monkeypatch, {url(tenant_stub, slug) for slug in slugs}, 1.0)
    clock = FakeClock()
    with reader_for(clock, concurrency=12) as reader:
        assert reader._workers == 0
        answers = reader.read_all([url(tenant_stub, s) for s in slugs], 5.0, Deadline.starting_now(clock, 30.0))
        assert reader._workers == 12  # 4, then 8, then 12 while the first reads hung
    assert [a.problem if a else None for a in answers] == ["no answer within 5 s"] * 12


def test_what_a_tenant_reports_is_shown_on_one_short_line() -> None:
    answer = Answer(reported=SHA + "\n" + "x" * 200, problem="", at=0.0)
    assert "\n" not in answer.shown and len(answer.shown) == 100 and answer.shown.endswith("…")


def test_only_a_tenant_name_gets_a_url_and_field_paths_stop_at_a_missing_step() -> None:
    with pytest.raises(ValueError, match="cannot be a tenant name"):
        buildinfo_url(PATH, "..")
    assert read_field({"build": {"sha": SHA}}, "build.sha") == SHA
    assert read_field({"build": "v1"}, "build.sha") is None


# -- the simulator's tenants over real HTTP --------------------------------------------------


@contextmanager
def sim_fleet(tenants: list[TenantSpec], time_scale: float = 1.0) -> Iterator[tuple[SimServer, FleetSim, str]]:
    sim = FleetSim(tenants=tenants, builds={"staging-new": SHA}, time_scale=time_scale)
    with SimServer([sim]) as server:
        yield server, sim, buildinfo(server)


def deploy(server: SimServer, sim: FleetSim, slugs: list[str]) -> None:
    """Ship the build through the simulator's CP, as the rollout stage would."""
    body = {
        "target_tag": "staging-new", "confirm": True, "only_slugs": slugs, "dry_run": False,
        "max_stragglers": len(slugs), "batch_size": len(slugs), "soak_seconds": 0,
    }
    response = requests.post(
        server.url + sim.redeploy_path, json=body, headers={"Authorization": f"Bearer {sim.token}"}, timeout=30
    )
    assert response.status_code == 200, response.text


def buildinfo_hits(server: SimServer, slug: str) -> int:
    return len(server.seen(f"/tenants/{slug}/buildinfo"))


def real_run(settings: VerifySettings, tenant_rows: list[TenantRow], request_timeout: float = 5.0):
    ctx = Context(Runner(stream=io.StringIO()), Deadline.starting_now(Clock(), 120.0))
    return verify_tenants(settings, replace(HTTP, request_timeout=request_timeout), SHA, tenant_rows, ctx)


def test_tenants_draining_the_old_container_are_verified_once_they_settle() -> None:
    slugs = ["acme", "globex", "initech"]
    # 20 sim-seconds of draining = 1 s real: the first round surely still sees the old SHA.
    with sim_fleet([TenantSpec(s, deploy_seconds=0, settle_seconds=20) for s in slugs], time_scale=0.05) as (
        server, sim, template
    ):
        deploy(server, sim, slugs)
        settings = replace(SETTINGS, url_template=template, budget=10.0, interval=0.25)
        result = real_run(settings, rows(*slugs), request_timeout=2.0)
    assert result.ok
    assert result.slugs("verified") == tuple(slugs)
    assert {v.running for v in result.verdicts} == {SHA}
    assert result.rounds >= 2
    assert all(buildinfo_hits(server, s) == result.rounds for s in slugs)


def test_simulated_stale_tenant_is_stale_with_its_running_sha() -> None:
    specs = [TenantSpec("fresh", deploy_seconds=0), TenantSpec("stuck", deploy_seconds=0, stale=True)]
    with sim_fleet(specs) as (server, sim, template):
        deploy(server, sim, ["fresh", "stuck"])
        result = Run(replace(SETTINGS, url_template=template, budget=30.0))(rows("fresh", "stuck"))
        assert buildinfo_hits(server, "stuck") == 3
    assert result.slugs("verified") == ("fresh",)
    assert result.slugs("stale") == ("stuck",)
    assert result.verdicts[1].running == OLD_SHA


def test_simulated_dead_tenant_is_unreachable_with_the_last_error() -> None:
    with sim_fleet([TenantSpec("alive", deploy_seconds=0), TenantSpec("dead", dead=True)]) as (server, sim, template):
        deploy(server, sim, ["alive"])
        result = Run(replace(SETTINGS, url_template=template, budget=30.0))(rows("alive", "dead"))
        assert buildinfo_hits(server, "dead") == 3
    assert result.slugs("unreachable") == ("dead",)
    assert result.verdicts[1].detail.startswith("no usable answer after 3 polls")
    assert "connection reset" in result.verdicts[1].detail


def test_simulated_flapping_tenant_is_verified_on_its_good_answer() -> None:
    with sim_fleet([TenantSpec("flappy", deploy_seconds=0, flapping=True)]) as (server, sim, template):
        deploy(server, sim, ["flappy"])
        run = Run(replace(SETTINGS, url_template=template))
        result = run(rows("flappy"))
    assert result.ok
    assert result.rounds == 2  # a 503 HTML page first, then the build
    assert "verify: 0/1 on target, 1 waiting" in run.output


def test_simulated_slow_tenant_times_out_within_the_round() -> None:
    with sim_fleet([TenantSpec("slow", deploy_seconds=0, slow_buildinfo=5.0)]) as (server, sim, template):
        deploy(server, sim, ["slow"])
        settings = replace(SETTINGS, url_template=template, budget=0.6, interval=0.2)
        result = Run(settings)(rows("slow"))
    assert result.slugs("unreachable") == ("slow",)
    assert "no answer within 0.2 s" in result.verdicts[0].detail


def test_unhealthy_row_is_never_polled() -> None:
    with sim_fleet([TenantSpec("ok", deploy_seconds=0), TenantSpec("sick", deploy_seconds=0, unhealthy=True)]) as (
        server, sim, template
    ):
        deploy(server, sim, ["ok", "sick"])
        result = Run(replace(SETTINGS, url_template=template))([*rows("ok"), *rows("sick", healthz_ok=False)])
        assert buildinfo_hits(server, "sick") == 0
        assert buildinfo_hits(server, "ok") == 1
    assert result.slugs("unhealthy") == ("sick",)
    assert not result.ok


def test_forty_settling_tenants_take_rounds_not_the_sequential_sum() -> None:
    slugs = [f"tenant-{i:02d}" for i in range(40)]
    # each tenant drains for 2 sim-seconds = 0.2 s real; a one-by-one poller would pay 40 × 0.2 s
    with sim_fleet([TenantSpec(s, deploy_seconds=0, settle_seconds=2) for s in slugs], time_scale=0.1) as (
        server, sim, template
    ):
        deploy(server, sim, slugs)
        settings = replace(SETTINGS, url_template=template, budget=20.0, interval=0.5, concurrency=8)
        result = real_run(settings, rows(*slugs))
        hits = len(server.seen("/tenants/"))
    assert result.slugs("verified") == tuple(slugs)
    # the second round starts one interval (0.5 s) after the first, past every tenant's 0.2 s settle
    assert result.rounds <= 2
    assert hits <= 2 * len(slugs)


def test_a_tenant_dripping_its_answer_a_byte_at_a_time_cannot_hold_verify_past_its_budget() -> None:
    """Headers at once, then one byte every 0.2 s: 100 bytes would take 20 s to read in full."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    if stop.wait(0.2):
                        return
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    settings = replace(SETTINGS, url_template=f"http://127.0.0.1:{port}/{{slug}}", budget=1.5, interval=0.5)
    try:
        result = verify_tenants(settings, replace(HTTP, request_timeout=0.5), SHA, rows("slow"),
                                Context(Runner(io.StringIO()), Deadline.starting_now(Clock(), 60)))
    finally:
        stop.set()
        listener.close()
    assert result.slugs("unreachable") == ("slow",)
    assert result.seconds < 4.0  # the budget is 1.5 s; reading the drip in full would take 20 s
