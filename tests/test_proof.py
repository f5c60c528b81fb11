"""The canary's soak watch, poll by poll, on a fake clock with reads that take time."""

from __future__ import annotations

import io

import pytest

from deploy.buildinfo import Answer
from deploy.clock import Deadline, FakeClock
from deploy.context import Context
from deploy.proof import Prover
from deploy.runner import Runner
from deploy.settings import HttpSettings, VerifySettings
from deploy.verify import Verdict
from tests.support import SHA

OTHER = "0" * 40
SETTINGS = VerifySettings(url_template="https://{slug}.example.test/buildinfo", field="git_sha", budget=60.0,
                          interval=1.0, concurrency=4)


class ScriptedReader:
    """Answers in order ('sha', 'other' or 'silent'); each read takes 0.2 s of the fake clock."""

    def __init__(self, clock: FakeClock, script: list[str]) -> None:
        self.clock, self.script, self.reads = clock, list(script), 0

    def read(self, url: str, timeout: float, deadline: Deadline) -> Answer | None:
        self.clock.sleep(0.2)
        self.reads += 1
        kind = self.script.pop(0) if self.script else "sha"
        if kind == "silent":
            return Answer.unusable("HTTP 503: upstream connect error", self.clock.now())
        return Answer(reported=SHA if kind == "sha" else OTHER, problem="", at=self.clock.now())

    def read_all(self, urls: list[str], timeout: float, deadline: Deadline) -> list[Answer | None]:
        return [self.read(url, timeout, deadline) for url in urls]

    def close(self) -> None:
        pass


def watch(script: list[str], soak: float = 4.0) -> tuple[str, Prover, ScriptedReader]:
    clock = FakeClock()
    ctx = Context(Runner(io.StringIO()), Deadline.starting_now(clock, 3600))
    prover = Prover(SETTINGS, HttpSettings(request_timeout=5, retry_delays=()), SHA, ctx)
    prover.reader.close()
    reader = ScriptedReader(clock, script)
    prover.reader = reader  # type: ignore[assignment]
    return prover.watch("canary", ["canary-1"], soak, "the soak"), prover, reader


def test_a_canary_that_keeps_reporting_the_build_passes_and_is_polled_every_interval():
    problem, prover, reader = watch(["sha"] * 10)
    assert problem == "" and reader.reads == 4
    assert prover.spans[-1].label == "soak watch" and prover.spans[-1].ok


def test_one_missed_poll_between_good_ones_is_not_silence():
    problem, _, _ = watch(["sha", "silent", "sha", "sha"])
    assert problem == ""


def test_two_missed_polls_in_a_row_are_silence_for_more_than_an_interval():
    problem, prover, _ = watch(["sha", "silent", "silent", "sha"])
    assert problem.startswith("canary canary-1 stopped answering for more than verify-interval")
    assert "HTTP 503" in problem
    verdict = prover.verdicts["canary-1"]
    assert (verdict.state, verdict.proven_at, verdict.call) == (Verdict.UNREACHABLE, None, "canary")


def test_no_answer_at_the_last_poll_of_the_soak_fails():
    problem, _, reader = watch(["sha", "sha", "sha", "silent"])
    assert problem.startswith("canary canary-1 stopped answering") and reader.reads == 4


@pytest.mark.parametrize("script", [["other"], ["sha", "sha", "other"]])
def test_going_back_to_another_build_fails_at_once_and_the_verdict_says_stale(script):
    problem, prover, reader = watch(script)
    assert problem.startswith(f"canary canary-1 went back to {OTHER[:12]}, not {SHA[:12]}")
    assert reader.reads == len(script)
    assert prover.verdicts["canary-1"].state == Verdict.STALE
    assert prover.verdicts["canary-1"].running == OTHER


def test_a_bake_watches_every_tenant_of_the_batch_and_names_the_one_that_went_back():
    clock = FakeClock()
    ctx = Context(Runner(io.StringIO()), Deadline.starting_now(clock, 3600))
    prover = Prover(SETTINGS, HttpSettings(request_timeout=5, retry_delays=()), SHA, ctx)
    prover.reader.close()
    reader = ScriptedReader(clock, ["sha", "sha", "sha", "other"])  # read in turn: a, b, a, b
    prover.reader = reader  # type: ignore[assignment]

    problem = prover.watch("batch 1/2", ["a", "b"], 4.0, "its bake")

    assert problem.startswith(f"batch 1/2: b went back to {OTHER[:12]}, not {SHA[:12]}") and "into its bake" in problem
    assert reader.reads == 4 and set(prover.verdicts) == {"b"}
    assert (prover.verdicts["b"].state, prover.verdicts["b"].call) == (Verdict.STALE, "batch 1/2")
    assert prover.spans[-1].label == "bake batch 1/2" and not prover.spans[-1].ok
