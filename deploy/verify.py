"""Verify: prove every tenant that shipped runs the build, before ``latest`` may move.

A CP saying "success" is not proof: tenants have reported success while still serving the old
image, and a freshly swapped tenant keeps answering ``/buildinfo`` with the old SHA while the old
container drains. So each tenant's ``verify-url`` must report ``sha`` itself, and a wrong SHA, a
5xx, a connection error or a timeout is polled again, not failed at once.

All pending tenants are polled concurrently in rounds under one deadline shared by the whole
stage (``verify-budget``, never past the overall ``timeout``): a round polls every pending tenant
once, then waits for the next ``verify-interval`` tick. The stage therefore lasts about as long
as the slowest tenant takes to settle plus one interval, whatever the fleet size. The rounds are
the retry: reading one tenant once, and many at a time, is :mod:`deploy.buildinfo`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from deploy import http
from deploy.buildinfo import Answer, BuildinfoClient, buildinfo_url, format_seconds, one_line
from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.controlplane import TenantRow
from deploy.domain import TENANT_RE, display_url, sha_matches
from deploy.runner import Runner, counted, listing
from deploy.settings import HttpSettings, VerifySettings


class Verdict(StrEnum):
    """A tenant's state after verify, in the report, the outputs and the summary's tenant table."""

    VERIFIED = "verified"  # it reported the build
    STALE = "stale"  # it still reported another SHA when the budget ran out
    UNREACHABLE = "unreachable"  # it never answered usefully
    UNHEALTHY = "unhealthy"  # the CP said healthz_ok: false, so it was not polled
    UNPROVEN = "unproven"  # the overall timeout cut its proof short: no verdict either way
    QUARANTINED = "quarantined"  # the coverage gate's: a tolerated straggler, never polled


# What polling can conclude, and which of those fail a proof.
STATES = (Verdict.VERIFIED, Verdict.STALE, Verdict.UNREACHABLE, Verdict.UNHEALTHY, Verdict.UNPROVEN)
FAILING = (Verdict.STALE, Verdict.UNREACHABLE, Verdict.UNHEALTHY, Verdict.UNPROVEN)


SHOWN_DETAILS = 3  # failing tenants described one by one in a halt's reason; more are listed by state


def failing_listing(result: VerifyResult) -> str:
    """``stale a, b; unreachable c``: each failing state with its tenants (at most 20 named each)."""
    return "; ".join(f"{state} {listing(result.slugs(state))}" for state in FAILING if result.slugs(state))


def described_failures(result: VerifyResult) -> str:
    """``a is stale (why)``, each failing tenant with what was seen when there are only a few
    (a canary's proof names its one tenant); else :func:`failing_listing`."""
    failing = [verdict for verdict in result.verdicts if verdict.state in FAILING]
    if len(failing) <= SHOWN_DETAILS:
        return "; ".join(f"{verdict.slug} is {verdict.state} ({verdict.detail})" for verdict in failing)
    return failing_listing(result)


@dataclass(frozen=True, kw_only=True)
class TenantVerdict:
    slug: str
    state: Verdict  # one of STATES
    running: str  # SHA last reported ('' if never)
    detail: str  # last error / why, one line
    seconds: float  # time from stage start to the verdict
    call: str = ""  # the deploy call that shipped the tenant ('' when this run deployed nothing)
    proven_at: float | None = None  # seconds since the run started when it reported the build


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


@dataclass
class _Pending:
    """A tenant still being polled."""

    slug: str
    url: str
    expected: str  # the SHA it must report
    running: str = ""
    problem: str = "no time was left to poll it"


@dataclass(kw_only=True)
class _Stage:
    """The verify stage as it happens; mutable only inside :func:`verify_tenants`."""

    settings: VerifySettings
    wanted: str  # what the tenants must report, as the log says it
    clock: Clock
    start: float  # clock time the stage began
    end: float  # the one deadline every tenant shares
    started: float  # seconds since the run started
    order: tuple[str, ...]
    verdicts: dict[str, TenantVerdict]
    pending: list[_Pending]
    label: str = "verify"  # what the log lines are about: the verify stage, or a call's proof
    decisive: bool = False  # a SHA reported decides at once: another one is stale, not polled again
    cut: bool = False  # the overall timeout (or the room kept for a rollback) shortened verify-budget
    rounds: int = 0
    verified: int = 0  # counted as verdicts come in: a round's progress line costs nothing per tenant

    @classmethod
    def begin(cls, settings: VerifySettings, sha: str, rows: Sequence[TenantRow], clock: Clock,
              deadline: Deadline, label: str, expected: Mapping[str, str], decisive: bool) -> _Stage:
        start = clock.now()
        wanted = "the SHA it ran before" if expected else sha[:12]
        left = deadline.remaining()
        stage = cls(settings=settings, wanted=wanted, clock=clock, start=start,
                    end=start + min(settings.budget, left), started=deadline.elapsed(),
                    order=tuple(dict.fromkeys(row.slug for row in rows)), verdicts={}, pending=[], label=label,
                    decisive=decisive, cut=left < settings.budget)
        for row in {row.slug: row for row in rows}.values():  # the latest row of a slug wins
            if not TENANT_RE.match(row.slug):
                stage.verdicts[row.slug] = TenantVerdict(slug=row.slug, state=Verdict.UNREACHABLE, running="",
                                                         detail="not a tenant name; not polled", seconds=0.0)
            elif row.healthy:
                url = buildinfo_url(settings.url_template, row.slug)
                stage.pending.append(_Pending(row.slug, url, expected.get(row.slug, sha)))
            else:
                why = "the CP reported healthz_ok: false" + (f" ({one_line(row.error)})" if row.error else "")
                stage.verdicts[row.slug] = TenantVerdict(slug=row.slug, state=Verdict.UNHEALTHY, running="",
                                                         detail=f"{why}; not polled", seconds=0.0)
        return stage

    @property
    def budget(self) -> float:
        return self.end - self.start

    def left(self) -> float:
        return max(self.end - self.clock.now(), 0.0)

    def poll_rounds(self, reader: BuildinfoClient, request_timeout: float, runner: Runner) -> None:
        """Poll every pending tenant once per interval tick until none is pending or time is up."""
        cap = min(request_timeout, self.settings.interval)  # one slow tenant can't stretch a round much
        stage_deadline = Deadline(self.clock, self.start, self.end - self.start)
        while self.pending and self.left() > 0:
            round_start = self.clock.now()
            self.rounds += 1
            answers = reader.read_all([tenant.url for tenant in self.pending], cap, stage_deadline)
            self.pending = self._settle(answers)
            runner.log(
                f"{self.label}: {self.verified}/{len(self.order)} on target, {len(self.pending)} waiting, "
                f"{format_seconds(self.left())} s left"
            )
            next_round = round_start + self.settings.interval
            if not self.pending or next_round >= self.end:
                return
            self.clock.sleep(max(next_round - self.clock.now(), 0.0))

    def _settle(self, answers: list[Answer | None]) -> list[_Pending]:
        """Record one round's answers; return the tenants still waiting."""
        still: list[_Pending] = []
        for tenant, answer in zip(self.pending, answers, strict=True):
            if answer is None:  # the deadline passed before a worker was free for it
                still.append(tenant)
                continue
            if answer.reported:
                tenant.running = answer.shown
            if answer.reported and sha_matches(answer.reported, tenant.expected):
                self.verdicts[tenant.slug] = TenantVerdict(
                    slug=tenant.slug, state=Verdict.VERIFIED, running=tenant.running, detail="",
                    seconds=answer.at - self.start, proven_at=self.started + (answer.at - self.start),
                )
                self.verified += 1
                continue
            tenant.problem = answer.problem or f"reports {tenant.running[:12]}, not {tenant.expected[:12]}"
            if answer.reported and self.decisive:
                self.verdicts[tenant.slug] = TenantVerdict(
                    slug=tenant.slug, state=Verdict.STALE, running=tenant.running, seconds=answer.at - self.start,
                    detail=f"reports {tenant.running[:40]}, not {tenant.expected[:12]}")
                continue
            still.append(tenant)
        return still

    def result(self) -> VerifyResult:
        elapsed = self.clock.now() - self.start
        verdicts = dict(self.verdicts)
        for tenant in self.pending:
            verdicts[tenant.slug] = _cut_short(tenant, elapsed) if self.cut else _give_up(tenant, self.rounds, elapsed)
        return VerifyResult(verdicts=tuple(verdicts[slug] for slug in self.order), rounds=self.rounds,
                            started=self.started, seconds=elapsed)


def verify_tenants(
    settings: VerifySettings,
    http_settings: HttpSettings,
    sha: str,
    rows: Sequence[TenantRow],
    ctx: Context,
    client: http.Client | None = None,
    *,
    reader: BuildinfoClient | None = None,
    label: str = "verify",
    expected: Mapping[str, str] | None = None,
    decisive: bool = False,
    brief: bool = False,
) -> VerifyResult:
    """Poll every healthy row's ``verify-url`` until it reports ``sha`` or the shared deadline passes.

    ``rows`` are the tenants that shipped, quarantined ones already left out. A row whose
    ``healthz_ok`` is false is ``unhealthy`` without a request. Never raises for what a tenant
    does; the overall deadline shortens the budget instead of interrupting the stage. ``reader``
    is a client kept open across calls (a rollout proving call after call); ``label`` names the
    stage or the call being proven in the log. ``expected`` gives tenants a SHA of their own to
    report instead of ``sha`` (a rollback: each back on its snapshot SHA, all in one stage).
    ``decisive``: the first SHA a tenant reports is its verdict — one that went back to another
    build is not waited for (the final check); only a tenant that gives no usable answer is asked again.
    ``brief``: the opening line names only the count and the build (a call's proof after the first:
    where and how they are read was said once).
    """
    if not (sha or expected) or not settings.url_template:
        raise ValueError("verify needs the sha and a verify-url template")
    runner = ctx.runner
    stage = _Stage.begin(settings, sha, rows, ctx.clock, ctx.deadline, label, expected or {}, decisive)
    kept = f", its last {ctx.deadline.reserve:g} s kept for a rollback" if ctx.deadline.reserve else ""
    cut = f" (cut short by the overall timeout{kept})" if stage.budget < settings.budget else ""
    if stage.pending and brief:
        runner.log(f"{label}: {counted(len(stage.pending), 'tenant')} must report {stage.wanted}{cut}")
    elif stage.pending:
        runner.log(
            f"{label}: {counted(len(stage.pending), 'tenant')} must report {settings.field} = {stage.wanted} at "
            f"{display_url(settings.url_template)}; polling up to {settings.concurrency} at a time every "
            f"{settings.interval:g} s for up to {format_seconds(stage.budget)} s{cut}"
        )
    if reader is not None:
        stage.poll_rounds(reader, http_settings.request_timeout, runner)
    else:  # on a cancellation or the deadline, queued reads are dropped, running ones not waited for
        with BuildinfoClient(settings.field, settings.concurrency, ctx, client) as own:
            stage.poll_rounds(own, http_settings.request_timeout, runner)
    result = stage.result()
    _report(result, stage.wanted, runner, label, "" if expected else "; latest must not move")
    return result


def _cut_short(tenant: _Pending, elapsed: float) -> TenantVerdict:
    """A tenant still waiting when the overall timeout cut the budget short: not a verdict on it."""
    last = f"; last read: {tenant.problem}" if tenant.problem else ""
    return TenantVerdict(slug=tenant.slug, state=Verdict.UNPROVEN, running=tenant.running, seconds=elapsed,
                         detail=f"cut by the overall timeout after {format_seconds(elapsed)} s, before it reported "
                                f"the build{last}")


def _give_up(tenant: _Pending, rounds: int, elapsed: float) -> TenantVerdict:
    """Stale if it ever reported a SHA (it runs something else), unreachable if it never did."""
    polls = f"after {rounds} poll{'s' if rounds != 1 else ''} over {format_seconds(elapsed)} s"
    if tenant.running:
        last = "" if tenant.problem.startswith("reports ") else f"; last poll: {tenant.problem}"
        detail = f"still runs {tenant.running[:40]}, not {tenant.expected[:12]}, {polls}{last}"
        return TenantVerdict(slug=tenant.slug, state=Verdict.STALE, running=tenant.running, detail=detail,
                             seconds=elapsed)
    return TenantVerdict(slug=tenant.slug, state=Verdict.UNREACHABLE, running="",
                         detail=f"no usable answer {polls}: {tenant.problem}", seconds=elapsed)


def _report(result: VerifyResult, wanted: str, runner: Runner, label: str, consequence: str) -> None:
    """The final lists in the log (Gitea shows no annotations) and, for the verify stage, one error
    per failing tenant. A call's proof, the final check and a rollback's proof say their failure in
    one error of their own (the caller's), so their tenants are logged, not annotated again."""
    counts = ", ".join(f"{len(result.slugs(s))} {s}" for s in STATES if result.slugs(s))
    rounds = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    runner.log(f"{label}: {counts or 'no tenants'} in {rounds}, {format_seconds(result.seconds)} s")
    for state in FAILING:
        if result.slugs(state):
            runner.log(f"{label}: {state}: {', '.join(result.slugs(state))}")
    for verdict in result.verdicts:
        if verdict.state in FAILING:
            said = f"{label}: {verdict.slug} is {verdict.state}: {verdict.detail}"
            if label == "verify":
                runner.error(said, title=f"verify {verdict.slug}")
            else:
                runner.log(said)
    if not result.ok:
        runner.log(f"{label}: not every tenant proved it runs {wanted}{consequence}")
