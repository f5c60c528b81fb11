"""One deploy call's attempts, waits and keys, on a fake clock against a scripted CP and scripted tenants."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from deploy.buildinfo import Answer
from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.controlplane import CallResult, CallState, TenantRow
from deploy.redeploy import READ_FROM_TENANT, Redeployer, Tenants, call_key
from deploy.runner import Runner
from deploy.settings import RolloutSettings
from deploy.waves import BatchSize
from tests.support import SHA

OLD = "0" * 40
WORST = 390.0  # cp-tenant-timeout + cp-settle-seconds
ROLLOUT = RolloutSettings(target_tag="staging-8ddce85", canary="", soak_seconds=0, batch_sizes=(BatchSize(count=3),),
                          max_stragglers=0, cp_tenant_timeout=300, cp_settle_seconds=90, dry_run=False)


@dataclass
class ScriptedCP:
    """Answers each POST with the next scripted state after ``seconds`` of the fake clock; records what was asked."""

    clock: FakeClock
    script: list[tuple[CallState, int | None]]
    seconds: float = 10.0
    rollout: RolloutSettings = ROLLOUT
    asked: list[tuple[tuple[str, ...], str, float]] = field(default_factory=list)  # (scope, key, sent at)

    def redeploy(self, label: str, slugs: tuple[str, ...], max_stragglers: int, key: str = "") -> CallResult:
        self.asked.append((tuple(slugs), key, self.clock.now()))
        state, status = self.script.pop(0)
        self.clock.sleep(self.seconds)
        rows = tuple(TenantRow(slug, verified_on_target=True) for slug in slugs) if state is CallState.ANSWERED else ()
        return CallResult(label=label, slugs=tuple(slugs), ok=state is CallState.ANSWERED, rows=rows, status=status,
                          error="" if state is CallState.ANSWERED else f"HTTP {status}", started=0.0,
                          seconds=self.seconds, state=state)

    def unanswered(self, label: str, slugs: tuple[str, ...], started: float, why: str) -> CallResult:
        raise AssertionError("not expected here")


@dataclass
class ScriptedTenants:
    """``read_all``: what each tenant reports, from ``running``; every read recorded with its time."""

    clock: FakeClock
    running: dict[str, str]
    reads: list[tuple[str, float]] = field(default_factory=list)

    def read_all(self, urls: list[str], timeout: float, deadline: Deadline) -> list[Answer | None]:
        answers: list[Answer | None] = []
        for url in urls:
            slug = url.split("/")[-2]
            self.reads.append((slug, self.clock.now()))
            sha = self.running.get(slug, "")
            answers.append(Answer(reported=sha, problem="", at=self.clock.now()) if sha else
                           Answer.unusable("connection refused", self.clock.now()))
        return answers


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock()


def redeployer(clock: FakeClock, cp: ScriptedCP, tenants: ScriptedTenants | None = None,
               delays: tuple[float, ...] = (5, 10, 20), timeout: float = 3600) -> Redeployer:
    ctx = Context(Runner(io.StringIO()), Deadline.starting_now(clock, timeout))
    reading = None if tenants is None else Tenants(tenants, "https://t.example/{slug}/buildinfo", 5.0,  # type: ignore[arg-type]
                                                   expected=lambda slug: SHA, before=lambda slug: OLD)
    return Redeployer(cp, delays, WORST, "fleet-rollout:acme/app:42.1", ctx, reading)  # type: ignore[arg-type]


def test_an_answered_call_is_one_attempt(clock):
    cp = ScriptedCP(clock, [(CallState.ANSWERED, 200)])
    call = redeployer(clock, cp).call("batch 1/2", ("a", "b"), 0)
    assert (call.state, call.attempts, call.ok) == (CallState.ANSWERED, 1, True) and len(cp.asked) == 1


def test_a_refusal_is_not_retried(clock):
    cp = ScriptedCP(clock, [(CallState.FAILED, 403)])
    call = redeployer(clock, cp).call("batch 1/2", ("a", "b"), 0)
    assert (call.state, call.attempts, call.ok) == (CallState.FAILED, 1, False) and len(cp.asked) == 1


def test_a_call_that_never_reached_the_cp_is_retried_after_its_delay_under_the_same_key(clock):
    cp = ScriptedCP(clock, [(CallState.NOT_SENT, None), (CallState.NOT_SENT, 503), (CallState.ANSWERED, 200)])
    call = redeployer(clock, cp).call("batch 1/2", ("a", "b"), 0)

    assert call.ok and call.attempts == 3
    (_, first_key, first_sent), (_, second_key, second_sent), (_, third_key, third_sent) = cp.asked
    assert first_key == second_key == third_key
    assert second_sent - first_sent == 10 + 5 and third_sent - second_sent == 10 + 10  # the call, then the delay


def test_after_an_unknown_outcome_nothing_is_sent_until_the_cps_worst_case_has_passed(clock):
    cp = ScriptedCP(clock, [(CallState.UNKNOWN, 504), (CallState.ANSWERED, 200)])
    call = redeployer(clock, cp).call("batch 1/2", ("a", "b"), 0)

    assert call.ok and call.attempts == 2
    (_, _, first_sent), (_, _, second_sent) = cp.asked
    assert second_sent - (first_sent + cp.seconds) >= WORST  # counted from when the attempt ended


def test_after_an_unknown_outcome_the_tenants_on_the_build_are_not_deployed_again(clock):
    cp = ScriptedCP(clock, [(CallState.UNKNOWN, 500), (CallState.ANSWERED, 200)])
    tenants = ScriptedTenants(clock, {"a": SHA, "b": OLD, "c": ""})  # a moved; b did not; c cannot be read
    call = redeployer(clock, cp, tenants).call("batch 1/2", ("a", "b", "c"), 0)

    assert [scope for scope, _key, _sent in cp.asked] == [("a", "b", "c"), ("b", "c")]
    first_key, second_key = (key for _scope, key, _sent in cp.asked)
    assert first_key == second_key  # one call, one key: a CP that honours it replays, never deploys b twice at once
    assert call.ok and call.slugs == ("a", "b", "c")
    assert [(row.slug, row.phase, row.verified_on_target) for row in call.settled] == [("a", READ_FROM_TENANT, True)]
    assert all(at - 10 >= WORST for _slug, at in tenants.reads)  # read after the worst case, not before


@pytest.mark.parametrize("status", [403, 422])
def test_a_refused_retry_after_an_unknown_attempt_is_settled_by_the_tenants(clock, status):
    """The first attempt may have landed: a refusal of the retry (a strict CP's 422 to a re-scoped
    key) says nothing about it, so the tenants settle the call as a lost answer would."""
    cp = ScriptedCP(clock, [(CallState.UNKNOWN, 504), (CallState.FAILED, status)])
    tenants = ScriptedTenants(clock, {"a": SHA, "b": OLD, "c": ""})
    call = redeployer(clock, cp, tenants).call("batch 1/2", ("a", "b", "c"), 0)

    assert len(cp.asked) == 2 and call.state is CallState.UNKNOWN and call.outcome_unknown
    rows = {row.slug: row.verified_on_target for row in call.settled}
    assert rows == {"a": True, "b": False}  # a shipped, b did not move; c stays unknown


def test_a_call_whose_every_tenant_reports_the_build_needs_no_retry(clock):
    cp = ScriptedCP(clock, [(CallState.UNKNOWN, 502)])
    tenants = ScriptedTenants(clock, {"a": SHA, "b": SHA})
    call = redeployer(clock, cp, tenants).call("batch 1/2", ("a", "b"), 0)

    assert len(cp.asked) == 1 and call.ok and call.state is CallState.ANSWERED
    assert {row.slug for row in call.settled} == {"a", "b"}


def test_with_no_retry_left_the_tenants_settle_the_call(clock):
    cp = ScriptedCP(clock, [(CallState.UNKNOWN, 500)])
    tenants = ScriptedTenants(clock, {"a": SHA, "b": OLD, "c": ""})
    call = redeployer(clock, cp, tenants, delays=()).call("batch 1/2", ("a", "b", "c"), 0)

    assert call.state is CallState.UNKNOWN and not call.ok
    assert {row.slug: row.verified_on_target for row in call.settled} == {"a": True, "b": False}  # c: still unknown
    assert tenants.reads[0][1] >= 10 + WORST  # waited out before its tenants were believed


def test_without_time_to_wait_out_the_worst_case_there_is_no_retry_and_it_says_why(clock):
    cp = ScriptedCP(clock, [(CallState.UNKNOWN, 504)])
    call = redeployer(clock, cp, timeout=WORST + 60).call("batch 1/2", ("a",), 0)

    assert len(cp.asked) == 1 and call.state is CallState.UNKNOWN
    assert "not retried" in call.error and "left of the overall timeout (input `timeout`)" in call.error
    assert call.quiet_at == pytest.approx(cp.asked[0][2] + cp.seconds + WORST)  # a rollback waits until then


def test_a_409_says_the_call_is_still_running_and_is_asked_again_after_the_worst_case(clock):
    cp = ScriptedCP(clock, [(CallState.NOT_SENT, 409), (CallState.ANSWERED, 200)])
    call = redeployer(clock, cp).call("batch 1/2", ("a",), 0)

    assert call.ok and cp.asked[1][2] - cp.asked[0][2] >= WORST and cp.asked[0][1] == cp.asked[1][1]


def test_keys_are_unique_per_run_and_call_and_stable_otherwise():
    base = call_key("fleet-rollout:acme/app:42.1", "batch 2/5", "staging-8ddce85", ("a", "b"))
    assert base == call_key("fleet-rollout:acme/app:42.1", "batch 2/5", "staging-8ddce85", ("a", "b"))
    assert base.startswith("fleet-rollout:acme/app:42.1:batch-2-5:")
    others = {call_key("fleet-rollout:acme/app:42.2", "batch 2/5", "staging-8ddce85", ("a", "b")),  # a re-run
              call_key("fleet-rollout:acme/app:42.1", "batch 3/5", "staging-8ddce85", ("a", "b")),
              call_key("fleet-rollout:acme/app:42.1", "batch 2/5", "latest", ("a", "b")),  # a rollback
              call_key("fleet-rollout:acme/app:42.1", "batch 2/5", "staging-8ddce85", ("a",))}  # another leg
    assert base not in others and len(others) == 4
