"""Fleet state's parts on a fake clock: what a rollback says when its calls fail or time runs out."""

from __future__ import annotations

import io

from deploy import config
from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.controlplane import CallResult, CallState
from deploy.fleetstate import _redeploy_back
from deploy.runner import Runner
from deploy.settings import RolloutSettings
from deploy.waves import BatchSize
from tests.support import SHA

ROLLOUT = RolloutSettings(target_tag="staging", canary="", soak_seconds=0, batch_sizes=(BatchSize(count=3),),
                          max_stragglers=1, cp_tenant_timeout=300, cp_settle_seconds=90, dry_run=False,
                          rollback_tag="latest")


class RefusingCP:
    """Stands in for the rollback's Redeployer: every call takes the CP's worst case and is refused (409)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.asked = clock, []

    def call(self, label: str, slugs: tuple[str, ...], tolerance: int) -> CallResult:
        self.asked.append(label)
        self.clock.sleep(ROLLOUT.call_worst_case)
        return CallResult(label=label, slugs=slugs, ok=False, rows=(), status=409, error="HTTP 409: boom",
                          started=0.0, seconds=ROLLOUT.call_worst_case, state=CallState.FAILED)


def rollback_calls(timeout: float) -> tuple[list[str], list[str]]:
    clock = FakeClock()
    cp = RefusingCP(clock)
    ctx = Context(Runner(stream=io.StringIO()), Deadline.starting_now(clock, timeout))
    _calls, errors = _redeploy_back(tuple("abcdefghi"), cp, ROLLOUT, ctx, 3)  # type: ignore[arg-type]
    return cp.asked, errors


def test_one_failed_call_then_no_time_left_says_both() -> None:
    asked, errors = rollback_calls(timeout=1.5 * ROLLOUT.call_worst_case)
    assert asked == ["rollback 1/3"]
    assert errors == ["rollback 1/3 failed: HTTP 409: boom",
                      "could not start rollback 2/3: 195 s left of timeout, less than one call's worst case (390 s)"]


def test_several_failed_calls_are_counted_and_the_first_one_named() -> None:
    asked, errors = rollback_calls(timeout=10 * ROLLOUT.call_worst_case)
    assert asked == ["rollback 1/3", "rollback 2/3", "rollback 3/3"]
    assert errors == ["3 rollback calls went wrong, the first: rollback 1/3 failed: HTTP 409: boom"]


def test_a_run_that_deploys_nothing_keeps_no_time_for_a_rollback() -> None:
    base = {"FLEET_CP_URL": "https://cp.example.com", "FLEET_CP_TOKEN": "t0k", "FLEET_SHA": SHA,
            "FLEET_ON_FAILURE": "rollback", "FLEET_VERIFY_URL": "https://t.example/{slug}/buildinfo"}
    assert config.load(base).rollback_reserve == 390 + 240
    assert config.load({**base, "FLEET_STAGES": "verify"}).rollback_reserve == 0
    assert config.load({**base, "FLEET_DRY_RUN": "true"}).rollback_reserve == 0
    assert config.load({**base, "FLEET_STAGES": "verify", "FLEET_TIMEOUT": "300"}).timeout == 300
