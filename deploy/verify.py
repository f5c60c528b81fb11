"""Stage 5: prove every tenant that shipped runs the build, before ``latest`` may move.

A CP saying "success" is not proof: tenants have reported success while still serving the old
image, and a freshly swapped tenant keeps answering ``/buildinfo`` with the old SHA while the old
container drains. So each tenant's ``verify-url`` must report ``sha`` itself, and a wrong SHA, a
5xx, a connection error or a timeout is polled again, not failed at once.

All pending tenants are polled concurrently in rounds under one deadline shared by the whole
stage (``verify-budget``, never past the overall ``timeout``): a round polls every pending tenant
once, then waits for the next ``verify-interval`` tick. The stage therefore lasts about as long
as the slowest tenant takes to settle plus one interval, whatever the fleet size. The session
has no retry adapter: the rounds are the retry, and a retry inside a round would only let one
tenant eat the round's time.

A tenant's answer is untrusted input: a body over :data:`BODY_LIMIT`, one that is not JSON, or
one without the field is "no answer yet", never a crash, and what it reports is shortened to
one line before it reaches the log.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from deploy import http
from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.controlplane import TenantRow
from deploy.domain import TENANT_RE, display_url, sha_matches
from deploy.errors import DeadlineExceeded
from deploy.runner import Runner
from deploy.settings import HttpSettings, VerifySettings

BODY_LIMIT = 64 * 1024  # a /buildinfo answer is a few hundred bytes; more is not a build info
MIN_TIMEOUT = 0.05  # a request near the deadline still gets a sliver to fail fast in
SHOWN_CHARS = 100  # what a tenant reports is shortened to this before it is logged or stored


class Verdict(StrEnum):
    """A tenant's state after verify, in the report, the outputs and the summary's tenant table."""

    VERIFIED = "verified"  # it reported the build
    STALE = "stale"  # it still reported another SHA when the budget ran out
    UNREACHABLE = "unreachable"  # it never answered usefully
    UNHEALTHY = "unhealthy"  # the CP said healthz_ok: false, so it was not polled
    QUARANTINED = "quarantined"  # the coverage gate's: a tolerated straggler, never polled


STATES = (Verdict.VERIFIED, Verdict.STALE, Verdict.UNREACHABLE, Verdict.UNHEALTHY)  # what polling can conclude
FAILING = (Verdict.STALE, Verdict.UNREACHABLE, Verdict.UNHEALTHY)


@dataclass(frozen=True, kw_only=True)
class TenantVerdict:
    slug: str
    state: Verdict  # one of STATES
    running: str  # SHA last reported ('' if never)
    detail: str  # last error / why, one line
    seconds: float  # time from stage start to the verdict


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    verdicts: tuple[TenantVerdict, ...]
    rounds: int
    started: float  # seconds since the run started (deadline.elapsed() at stage start)
    seconds: float

    def slugs(self, state: Verdict) -> tuple[str, ...]:
        return tuple(v.slug for v in self.verdicts if v.state == state)

    @property
    def ok(self) -> bool:
        """Every tenant verified. Vacuously true for no tenants: the caller decides if that is proof."""
        return all(v.state == Verdict.VERIFIED for v in self.verdicts)


def buildinfo_url(template: str, slug: str) -> str:
    """The tenant's URL. Only a real tenant name gets one: ``..`` or ``/`` must never reach a path."""
    if not TENANT_RE.match(slug):
        raise ValueError(f"{http.compact_json(slug, 80)} cannot be a tenant name")
    return template.replace("{slug}", quote(slug, safe=""))


def read_field(doc: Any, path: str) -> Any:
    """The value at a dotted path (``build.git_sha``), or ``None`` when any step is missing."""
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def verification_client(concurrency: int, ctx: Context) -> http.Client:
    """No retries (the rounds are the retry), one pooled connection per worker, bodies capped."""
    return ctx.client(http.Policy((), cap=BODY_LIMIT, pool_size=concurrency, headers={"Accept": "application/json"}))


@dataclass(frozen=True)
class _Answer:
    """One poll of one tenant: the SHA it reported ('' if none) or why it gave no useful answer."""

    reported: str
    problem: str
    at: float  # clock time of the answer


@dataclass
class _Pending:
    """A tenant still being polled."""

    slug: str
    url: str
    running: str = ""
    problem: str = "no time was left to poll it"


@dataclass
class _Stage:
    """The verify stage as it happens; mutable only inside :func:`verify_tenants`."""

    settings: VerifySettings
    sha: str
    clock: Clock
    start: float  # clock time the stage began
    end: float  # the one deadline every tenant shares
    started: float  # seconds since the run started
    order: tuple[str, ...]
    verdicts: dict[str, TenantVerdict]
    pending: list[_Pending]
    rounds: int = 0

    @classmethod
    def begin(cls, settings: VerifySettings, sha: str, rows: Sequence[TenantRow], clock: Clock,
              deadline: Deadline) -> _Stage:
        start = clock.now()
        stage = cls(settings, sha, clock, start, start + min(settings.budget, deadline.remaining()),
                    deadline.elapsed(), tuple(dict.fromkeys(row.slug for row in rows)), {}, [])
        for row in {row.slug: row for row in rows}.values():  # the latest row of a slug wins
            if not TENANT_RE.match(row.slug):
                stage.verdicts[row.slug] = TenantVerdict(slug=row.slug, state=Verdict.UNREACHABLE, running="",
                                                         detail="not a tenant name; not polled", seconds=0.0)
            elif row.healthy:
                stage.pending.append(_Pending(row.slug, buildinfo_url(settings.url_template, row.slug)))
            else:
                why = "the CP reported healthz_ok: false" + (f" ({_one_line(row.error)})" if row.error else "")
                stage.verdicts[row.slug] = TenantVerdict(slug=row.slug, state=Verdict.UNHEALTHY, running="",
                                                         detail=f"{why}; not polled", seconds=0.0)
        return stage

    @property
    def budget(self) -> float:
        return self.end - self.start

    def left(self) -> float:
        return max(self.end - self.clock.now(), 0.0)

    def poll_rounds(self, client: http.Client, request_timeout: float, runner: Runner) -> None:
        """Poll every pending tenant once per interval tick until none is pending or time is up."""
        workers = max(1, min(self.settings.concurrency, len(self.pending)))
        cap = min(request_timeout, self.settings.interval)
        stage_deadline = Deadline(self.clock, self.start, self.end - self.start)
        probe = _Probe(client, self.settings.field, self.clock, cap, self.end, stage_deadline)
        pool = _Workers(workers, probe)
        try:
            self._rounds(pool, runner)
        finally:  # on a cancellation or the deadline, queued probes are dropped, running ones not waited for
            pool.stop()

    def _rounds(self, pool: _Workers, runner: Runner) -> None:
        while self.pending and self.left() > 0:
            round_start = self.clock.now()
            self.rounds += 1
            answers = pool.map([tenant.url for tenant in self.pending])
            self.pending = self._settle(answers)
            verified = sum(v.state == Verdict.VERIFIED for v in self.verdicts.values())
            runner.log(
                f"verify: {verified}/{len(self.order)} on target, {len(self.pending)} waiting, "
                f"{_seconds(self.left())} s left"
            )
            next_round = round_start + self.settings.interval
            if not self.pending or next_round >= self.end:
                return
            self.clock.sleep(max(next_round - self.clock.now(), 0.0))

    def _settle(self, answers: list[_Answer | None]) -> list[_Pending]:
        """Record one round's answers; return the tenants still waiting."""
        still: list[_Pending] = []
        for tenant, answer in zip(self.pending, answers, strict=True):
            if answer is None:  # the deadline passed before a worker was free for it
                still.append(tenant)
                continue
            if answer.reported:
                tenant.running = _one_line(answer.reported)
            if answer.reported and sha_matches(answer.reported, self.sha):
                self.verdicts[tenant.slug] = TenantVerdict(
                    slug=tenant.slug, state=Verdict.VERIFIED, running=tenant.running, detail="",
                    seconds=answer.at - self.start,
                )
                continue
            tenant.problem = answer.problem or f"reports {tenant.running[:12]}, not {self.sha[:12]}"
            still.append(tenant)
        return still

    def result(self) -> VerifyResult:
        elapsed = self.clock.now() - self.start
        verdicts = dict(self.verdicts)
        for tenant in self.pending:
            verdicts[tenant.slug] = _give_up(tenant, self.sha, self.rounds, elapsed)
        return VerifyResult(verdicts=tuple(verdicts[slug] for slug in self.order), rounds=self.rounds,
                            started=self.started, seconds=elapsed)


def verify_tenants(
    settings: VerifySettings,
    http_settings: HttpSettings,
    sha: str,
    rows: Sequence[TenantRow],
    ctx: Context,
    client: http.Client | None = None,
) -> VerifyResult:
    """Poll every healthy row's ``verify-url`` until it reports ``sha`` or the shared deadline passes.

    ``rows`` are the tenants that shipped, quarantined ones already left out. A row whose
    ``healthz_ok`` is false is ``unhealthy`` without a request. Never raises for what a tenant
    does; the overall deadline shortens the budget instead of interrupting the stage.
    """
    if not sha or not settings.url_template:
        raise ValueError("verify needs the sha and a verify-url template")
    runner = ctx.runner
    stage = _Stage.begin(settings, sha, rows, ctx.clock, ctx.deadline)
    cut = " (cut short by the overall timeout)" if stage.budget < settings.budget else ""
    runner.log(
        f"verify: {len(stage.pending)} tenants must report {settings.field} = {sha[:12]} at "
        f"{display_url(settings.url_template)}; polling {settings.concurrency} at a time every {settings.interval:g} s "
        f"for up to {_seconds(stage.budget)} s{cut}"
    )
    own_client = client is None
    client = client or verification_client(settings.concurrency, ctx)
    try:
        stage.poll_rounds(client, http_settings.request_timeout, runner)
    finally:
        if own_client:
            client.close()
    result = stage.result()
    _report(result, sha, runner)
    return result


def _give_up(tenant: _Pending, sha: str, rounds: int, elapsed: float) -> TenantVerdict:
    """Stale if it ever reported a SHA (it runs something else), unreachable if it never did."""
    polls = f"after {rounds} poll{'s' if rounds != 1 else ''} over {_seconds(elapsed)} s"
    if tenant.running:
        last = "" if tenant.problem.startswith("reports ") else f"; last poll: {tenant.problem}"
        detail = f"still runs {tenant.running[:40]}, not {sha[:12]}, {polls}{last}"
        return TenantVerdict(slug=tenant.slug, state=Verdict.STALE, running=tenant.running, detail=detail,
                             seconds=elapsed)
    return TenantVerdict(slug=tenant.slug, state=Verdict.UNREACHABLE, running="",
                         detail=f"no usable answer {polls}: {tenant.problem}", seconds=elapsed)


class _Workers:
    """A fixed set of daemon threads pulling URLs from a queue.

    Daemon threads, because a cancelled run must not wait for a probe still in flight (the HTTP
    layer cuts those sockets too); a queue, because one future per tenant per round from a
    contended main thread does not scale to large fleets.
    """

    def __init__(self, count: int, probe: Callable[[str], _Answer | None]) -> None:
        self.probe = probe
        self.jobs: queue.SimpleQueue[tuple[int, str] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[int, _Answer | None]] = queue.SimpleQueue()
        self.stopped = False
        for number in range(count):
            threading.Thread(target=self._work, name=f"verify-{number}", daemon=True).start()
        self.count = count

    def map(self, urls: list[str]) -> list[_Answer | None]:
        for index, url in enumerate(urls):
            self.jobs.put((index, url))
        answers: list[_Answer | None] = [None] * len(urls)
        for _ in urls:
            index, answer = self.done.get()
            answers[index] = answer
        return answers

    def stop(self) -> None:
        self.stopped = True
        for _ in range(self.count):
            self.jobs.put(None)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            index, url = job
            try:
                answer = None if self.stopped else self.probe(url)
            except Exception as exc:  # noqa: BLE001 - a bug in one probe must not hang the round
                answer = _Answer("", f"internal error probing it: {type(exc).__name__}", 0.0)
            self.done.put((index, answer))


@dataclass(frozen=True)
class _Probe:
    """Asks one tenant for its build info. Never raises for anything a tenant can do.

    Time limits are taken when the request starts, not when the round does: with more pending
    tenants than workers, a request may wait for a worker, and no request may run past ``end``.
    The HTTP layer bounds the whole exchange (headers and body), caps the body at
    :data:`BODY_LIMIT` and follows redirects only within the tenant's own origin.
    """

    client: http.Client
    field: str
    clock: Clock
    cap: float  # min(request-timeout, interval): one slow tenant can't stretch a round much
    end: float
    stage_deadline: Deadline

    def __call__(self, url: str) -> _Answer | None:
        """One GET; ``None`` when the deadline passed before it could start."""
        left = self.end - self.clock.now()
        if left <= 0:
            return None
        timeout = max(min(self.cap, left), MIN_TIMEOUT)
        started = self.clock.now()
        try:
            reply = self.client.request("GET", url, budget=timeout, deadline=self.stage_deadline)
        except http.TransportError as exc:
            problem = f"no answer within {_seconds(timeout)} s" if exc.timed_out else exc.cause
            return _Answer("", problem, self.clock.now())
        except DeadlineExceeded:
            return None
        if self.clock.now() > started + timeout:  # an answer past its budget proves nothing
            return _Answer("", f"answer took longer than {_seconds(timeout)} s", self.clock.now())
        if reply.status != 200:
            # A redirect's own body is not shown: it may describe where it points.
            text = reply.redirect_note or reply.error_text() or "no reason given"
            return _Answer("", f"HTTP {reply.status}: {text}", self.clock.now())
        return _parse(reply.body, self.field, self.clock.now())


def _parse(body: bytes, field: str, at: float) -> _Answer:
    try:
        doc = http.parse_json(body)
    except http.UnusableBody as exc:
        return _Answer("", f"answered 200 with a body that is {exc}: {http.error_text(body, 120)}", at)
    value = read_field(doc, field)
    if value is None:
        return _Answer("", f"answered 200 without the field {field!r}", at)
    if not isinstance(value, str) or not value.strip():
        return _Answer("", f"answered 200 but {field!r} is not a SHA: {http.compact_json(value, 60)}", at)
    return _Answer(value.strip(), "", at)


def _report(result: VerifyResult, sha: str, runner: Runner) -> None:
    """The final lists in the log (Gitea shows no annotations) and one error per failing tenant."""
    counts = ", ".join(f"{len(result.slugs(s))} {s}" for s in STATES if result.slugs(s))
    rounds = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    runner.log(f"verify: {counts or 'no tenants'} in {rounds}, {_seconds(result.seconds)} s")
    for state in FAILING:
        if result.slugs(state):
            runner.log(f"verify: {state}: {', '.join(result.slugs(state))}")
    for verdict in result.verdicts:
        if verdict.state in FAILING:
            runner.error(f"{verdict.slug} is {verdict.state}: {verdict.detail}", title=f"verify {verdict.slug}")
    if not result.ok:
        runner.log(f"verify: not every tenant proved it runs {sha[:12]}; latest must not move")


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or math.isclose(value, round(value)) else f"{value:.1f}"
