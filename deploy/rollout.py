"""Rollout and coverage gate: canary, soak, batches, and the quarantine of stragglers.

A batch is one scoped CP call. Its ``max_stragglers`` is what is left of the fleet-wide
tolerance, so the CP halts a batch exactly when the fleet as a whole would be out of tolerance.
The rollout stops before the next batch when a call fails (non-200, ``ok: false``, no answer
after retries) or stragglers exceed the tolerance; it never raises for a CP failure, so
everything that did happen reaches the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property

from deploy.analysis import Analyzer, StepResult, StepVerdict
from deploy.context import Context
from deploy.controlplane import CallResult, ControlPlaneClient, TenantRow
from deploy.errors import Abort, DeadlineExceeded, DeployFailed, Inconclusive, Skip
from deploy.fleetstate import Snapshot
from deploy.proof import ProofSpan, Prover
from deploy.redeploy import Redeployer
from deploy.runner import Runner, counted, listing
from deploy.settings import OnFailure, RolloutSettings
from deploy.verify import SHOWN_DETAILS
from deploy.waves import BatchSize, call_sizes, split


class CallNotStarted(DeadlineExceeded):
    """A deploy call not started because the CP's worst case no longer fits in ``timeout``."""


@dataclass(frozen=True, kw_only=True)
class Soak:
    """The canary's soak, in seconds since the run started."""

    started: float
    seconds: float


class StopKind(StrEnum):
    """A rollout stopped for a reason other than evidence against the build: it holds, never rolls back."""

    ABORTED = "aborted"  # the live kill switch: the fleet is mixed, a person must look
    SKIPPED = "skipped"  # superseded: the newer run ships
    HELD = "held"  # something the run must read could not be read (the kill switch): no verdict on the build


@dataclass(frozen=True, kw_only=True)
class RolloutResult:
    fleet: tuple[str, ...]  # every tenant the enumeration returned, in order
    max_stragglers: int
    calls: tuple[CallResult, ...] = ()  # deploy calls only: canary and batches
    halted: str = ""  # why the rollout stopped early; '' when it ran through (or was a dry run)
    stopped: StopKind | None = None  # set when it stopped on purpose rather than halted by a failure
    aborted_at: str = ""  # the call where it halted or stopped ("canary", "batch 3/12"); '' otherwise
    planned: tuple[tuple[str, ...], ...] = ()  # the batches, canary first
    soak: Soak | None = None
    proofs: tuple[ProofSpan, ...] = ()  # each call's proof (verify-each-batch) and the soak watch
    already_current: tuple[str, ...] = ()  # not redeployed: the snapshot saw them on the build (skip-current)
    dry_run: bool = False
    # A bug that stopped the rollout: kept so the calls made are recorded, then raised by the pipeline
    # (an internal error: never a verdict on a tenant or a call, and never a reason to roll back).
    analysis: tuple[StepResult, ...] = ()  # each step's metric analysis (analysis-url), canary first
    internal_error: Exception | None = field(default=None, compare=False, repr=False)

    @cached_property
    def _current(self) -> frozenset[str]:
        return frozenset(self.already_current)

    @cached_property
    def rows(self) -> dict[str, TenantRow]:
        """The latest row per tenant from the deploy calls: the CP's, or the tenant's own word
        where the CP's answer was lost."""
        return {slug: row for call in self.calls for slug, row in call.known.items()}

    @cached_property
    def attempted(self) -> frozenset[str]:
        """Tenants a call was sent for (the CP may have acted on them)."""
        return frozenset(slug for call in self.calls if call.sent for slug in call.slugs)

    @property
    def result_count(self) -> int:
        if self.dry_run:
            return len(self.fleet)
        return sum(len(call.rows) for call in self.calls)

    @cached_property
    def stragglers(self) -> tuple[str, ...]:
        """Tenants a call tried and missed: no row, or a row that says they are not on the target."""
        if self.dry_run:
            return ()
        rows, attempted = self.rows, self.attempted
        return tuple(slug for slug in self.fleet
                     if slug in attempted and (slug not in rows or not rows[slug].on_target))

    @cached_property
    def outcome_unknown(self) -> dict[str, str]:
        """Tenants of calls that were sent but got no readable answer, nor a word from the tenant
        itself → why (they are stragglers)."""
        return {slug: call.error for call in self.calls if call.outcome_unknown for slug in call.slugs
                if slug not in self.rows}

    @cached_property
    def not_started(self) -> tuple[str, ...]:
        """Tenants no call reached (the rollout halted first, or their call never reached the CP)."""
        reached = self.attempted | self._current
        return () if self.dry_run else tuple(slug for slug in self.fleet if slug not in reached)

    @property
    def within_tolerance(self) -> bool:
        return len(self.stragglers) <= self.max_stragglers

    @property
    def quarantined(self) -> tuple[str, ...]:
        return self.stragglers if self.within_tolerance and not self.halted else ()

    @cached_property
    def shipped_in(self) -> dict[str, str]:
        """Each tenant a call was made for → the label of its latest call."""
        return {slug: call.label for call in self.calls for slug in call.slugs}

    @cached_property
    def shipped(self) -> tuple[str, ...]:
        stragglers, rows = set(self.stragglers), self.rows
        return tuple(slug for slug in self.fleet if slug in rows and slug not in stragglers)

    @property
    def ok(self) -> bool:
        return not self.halted and self.within_tolerance

    @property
    def failure(self) -> str:
        if self.halted:
            return self.halted
        if not self.within_tolerance:
            names = listing(self.stragglers)
            return f"{_exceed(len(self.stragglers), self.max_stragglers)}: {names}"
        return ""


def enumerate_fleet(client: ControlPlaneClient, runner: Runner) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The live fleet by dry run, and the names it held that cannot be tenants (neither deployed
    nor polled). Without a fleet there is nothing to roll out, so a failure is fatal."""
    call = client.enumerate()
    if not call.ok:
        raise DeployFailed(f"could not enumerate the fleet: {call.error}")
    if call.rejected:
        runner.warning(f"the CP enumerated {counted(len(call.rejected), 'name')} that cannot be tenants; they are "
                       f"neither deployed nor polled: {listing(call.rejected)}", title="invalid tenant names")
    fleet = tuple(dict.fromkeys(row.slug for row in call.rows))
    runner.public(*fleet)  # tenant names are the run's own facts: redaction must not censor them
    runner.log(f"fleet: {counted(len(fleet), 'tenant')} ({call.seconds:.1f} s): {listing(fleet, 100) or 'none'}")
    return fleet, call.rejected


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The deploy calls a rollout makes, canary first, and the tenants it leaves alone: one plan for
    the dry run, the time check and the run itself."""

    calls: tuple[tuple[str, ...], ...]
    canary: str
    already_current: tuple[str, ...]  # in fleet order: skip-current's, the canary never among them


def make_plan(settings: RolloutSettings, fleet: Sequence[str], current: Sequence[str] = ()) -> Plan:
    """The calls for ``fleet``: the canary alone, then ``batch-size``'s waves (capped by
    ``max-batch-size``) over the tenants not ``current`` — the canary is deployed even then, so a
    re-run exposes one tenant first exactly like a first run."""
    canary = settings.canary
    skip = frozenset(current) - {canary}
    rest = [slug for slug in fleet if slug not in skip and slug != canary]
    sizes = call_sizes(settings.batch_sizes, len(fleet), len(rest), settings.max_batch_size)
    calls = ((canary,), *split(rest, sizes)) if canary else split(rest, sizes)
    return Plan(calls=calls, canary=canary, already_current=tuple(slug for slug in fleet if slug in skip))


def plan_batches(fleet: Sequence[str], canary: str, batch_size: int) -> tuple[tuple[str, ...], ...]:
    """Fixed-size batches after an optional canary (the plan of one ``batch-size`` number)."""
    rest = [slug for slug in fleet if slug != canary]
    batches = split(rest, call_sizes((BatchSize(count=batch_size),), len(fleet), len(rest)))
    return ((canary,), *batches) if canary else batches


def run_rollout(
    settings: RolloutSettings, client: Redeployer | None, fleet: tuple[str, ...], ctx: Context, *,
    plan: Plan | None = None, prover: Prover | None = None, checkpoint: Callable[[str], None] | None = None,
    before: Snapshot | None = None, analyzer: Analyzer | None = None,
) -> RolloutResult:
    """The ``plan``'s calls in order — canary, soak, then the batches; never raises for what the CP
    or a tenant does.

    ``prover`` proves each call's tenants before the next call (verify-each-batch), watches the
    canary through its soak and each batch through its bake; ``analyzer`` judges each step's
    metrics (metric analysis) at the same moments. ``checkpoint(label)`` runs before
    every call after the first and may stop the rollout on purpose: :class:`~deploy.errors.Skip`
    (superseded) or :class:`~deploy.errors.Abort` (the live kill switch); the result then says
    which, and where. ``before`` is the snapshot: a tenant that ran a build before and fails to
    start the new one is evidence against the build, and halts.
    """
    if settings.canary and settings.canary not in fleet:
        raise DeployFailed(f"canary {settings.canary!r} is not in the fleet the CP enumerated")
    runner = ctx.runner
    plan = plan or make_plan(settings, fleet)
    batches = plan.calls
    result = RolloutResult(fleet=fleet, max_stragglers=settings.max_stragglers, planned=batches,
                           dry_run=settings.dry_run, already_current=plan.already_current)
    if settings.dry_run:
        _log_plan(result, settings, runner)
        return result
    if client is None:
        raise ValueError("a rollout that is not a dry run needs a Redeployer")
    progress = _Progress(result, settings, ctx, prover, before, analyzer)
    try:
        for number, slugs in enumerate(batches, start=1):
            progress.current, progress.calling = _label(number, len(batches), bool(settings.canary)), False
            if number > 1 and checkpoint is not None:
                checkpoint(progress.current)
            if progress.current == "canary":
                progress.canary(client, slugs[0], runner)
                progress.soak(slugs[0], settings.soak_seconds, runner)
            else:
                progress.batch(client, progress.current, slugs, runner)
            if progress.halted:
                progress.halted += _later(len(batches) - number)
                break
    except Skip as exc:
        progress.stop(StopKind.SKIPPED, str(exc))
    except Abort as exc:
        progress.stop(StopKind.ABORTED, str(exc))
    except Inconclusive as exc:
        progress.stop(StopKind.HELD, str(exc))
    except DeployFailed as exc:  # the deadline, a cancellation: keep what happened (every call made is recorded)
        named = isinstance(exc, CallNotStarted)  # the call it did not start is in its message already
        progress.halted = str(exc) + _later(len(batches) - len(progress.calls) - named)
    except Exception as exc:  # noqa: BLE001 - a bug must not lose the calls already made; re-raised after
        progress.halted = f"internal error ({type(exc).__name__}: {exc}); this is a bug in fleet-rollout"
        return replace(progress.result(), internal_error=exc)
    return progress.result()


def _later(count: int) -> str:
    return f"; {counted(count, 'later call')} not started" if count > 0 else ""


def _label(number: int, count: int, canary: bool) -> str:
    """``canary``, or ``batch 2/5`` counting the batches alone."""
    if canary and number == 1:
        return "canary"
    return f"batch {number - canary}/{count - canary}"


@dataclass
class _Progress:
    """The rollout as it happens; mutable only inside :func:`run_rollout`."""

    start: RolloutResult
    settings: RolloutSettings
    ctx: Context
    prover: Prover | None
    before: Snapshot | None = None
    analyzer: Analyzer | None = None
    analyses: list[StepResult] = field(default_factory=list)  # each step's metric analysis, in order
    calls: list[CallResult] = field(default_factory=list)
    current: str = ""  # the call being made (or about to be)
    halted: str = ""
    stopped: StopKind | None = None
    calling: bool = False  # the current call was sent: a stop now is not "not started"
    soak_span: Soak | None = None
    # Tenants a call was made for that are not on target yet, as an ordered set. Each call updates
    # only its own tenants, and nothing per call walks the whole fleet or every straggler: a large
    # rollout stays linear in the fleet.
    straggling: dict[str, None] = field(default_factory=dict)

    def result(self) -> RolloutResult:
        result = RolloutResult(
            fleet=self.start.fleet, max_stragglers=self.start.max_stragglers, calls=tuple(self.calls),
            halted=self.halted, stopped=self.stopped, aborted_at=self.current if self.halted else "",
            planned=self.start.planned, soak=self.soak_span,
            proofs=tuple(self.prover.spans) if self.prover else (), already_current=self.start.already_current,
            analysis=tuple(self.analyses),
        )
        if self.stopped is None:
            return result
        # stopped on purpose: say what shipped and what did not, since the fleet is now mixed
        shipped = result.shipped
        on_target = set(shipped)
        others = tuple(slug for slug in result.fleet if slug not in on_target)
        tally = (f"{counted(len(shipped), 'tenant')} shipped ({listing(shipped) or 'none'}), "
                 f"{len(others)} not ({listing(others) or 'none'})")
        return replace(result, halted=f"{self.halted}; {tally}")

    def stop(self, kind: StopKind, reason: str) -> None:
        self.stopped, self.halted = kind, reason
        self.ctx.runner.log(f"{self.current}: {'stopped' if self.calling else 'not started'}: {reason}")

    def _record(self, call: CallResult) -> None:
        self.calls.append(call)
        rows = call.known
        for slug in call.slugs if call.sent else ():
            row = rows.get(slug)
            if row is not None and row.on_target:
                self.straggling.pop(slug, None)
            else:
                self.straggling[slug] = None

    def redeploy(self, client: Redeployer, label: str, slugs: tuple[str, ...], tolerance: int) -> CallResult:
        """One scoped call, started only if the CP has time to answer it within the overall timeout.

        A call abandoned mid-deploy loses its per-tenant results, and with them the quarantine
        that depends on them; not starting it leaves the fleet where the report says it is.
        """
        worst, left, kept = self.settings.call_worst_case, self.ctx.deadline.remaining(), self.ctx.deadline.reserve
        if left < worst:
            before = f" before the {kept:g} s kept for a rollback" if kept else ""
            raise CallNotStarted(
                f"overall timeout: {left:.0f} s left{before}, less than the CP's worst case for a call "
                f"({worst:g} s = cp-tenant-timeout + cp-settle-seconds); {label} ({', '.join(slugs)}) not started"
            )
        started = self.ctx.clock.now()
        self.calling = True
        try:
            call = client.call(label, slugs, tolerance)
        except BaseException as exc:  # sent, then interrupted: the CP may have deployed these tenants
            self._record(client.client.unanswered(label, slugs, started, str(exc) or type(exc).__name__))
            raise
        self._record(call)
        return call

    def canary(self, client: Redeployer, slug: str, runner: Runner) -> None:
        runner.log(f"canary {slug}: redeploying alone")
        call = self.redeploy(client, "canary", (slug,), tolerance=0)
        row = call.known.get(slug)
        if not call.ok:
            self.halted = f"canary {slug} {call.failure}: {call.error}"
        elif row is None or not row.on_target or not row.healthy:
            self.halted = f"canary {slug} did not come back verified: {_row_problem(row)}{self._ran_before(slug)}"
        if not self.halted:
            runner.log(f"canary {slug}: on target, healthy ({call.seconds:.1f} s)")
            if self.prover is not None and row is not None:
                self.halted = self.prover.prove("canary", [row])
        if self.halted:
            runner.error(self.halted, title=f"canary {slug}")

    def soak(self, slug: str, seconds: float, runner: Runner) -> None:
        """The canary alone on the build for ``soak-seconds``: its /buildinfo watched when proving,
        its metrics analysed when ``analysis-url`` is set."""
        if self.halted:
            return
        started = self.ctx.deadline.elapsed()
        self.watch("canary", [slug], seconds, "the soak", runner)
        if seconds > 0:
            self.soak_span = Soak(started=started, seconds=self.ctx.deadline.elapsed() - started)

    def watch(self, label: str, slugs: list[str], seconds: float, during: str, runner: Runner) -> None:
        """After a call's proof: its tenants watched for ``seconds`` (the canary's soak, a batch's
        bake) through their /buildinfo when proving, and their metrics analysed when
        ``analysis-url`` is set — once right away when there is no such wait. A failed analysis
        halts like a failed proof; an inconclusive one under ``analysis-inconclusive: hold``
        stops the rollout without a rollback (:class:`~deploy.errors.Inconclusive`)."""
        if self.halted or not slugs or (seconds <= 0 and self.analyzer is None):
            return
        analysis = self.analyzer.start(label, slugs, seconds) if self.analyzer is not None else None
        try:
            if seconds > 0:
                how = " (/buildinfo watched every verify-interval)" if self.prover else ""
                runner.log(f"soak: waiting {seconds:g} s with the canary alone on the new build{how}"
                           if label == "canary" else
                           f"{label}: baking {seconds:g} s with its {counted(len(slugs), 'tenant')}{how}")
                if self.prover is not None:
                    self.halted = self.prover.watch(label, slugs, seconds, during, analysis)
                elif analysis is None:
                    self.ctx.deadline.sleep(seconds, f"{label}: {during}")
            if analysis is not None and not self.halted:
                self.judge(label, analysis.finish())
        except BaseException as exc:  # the timeout, a cancel: the evaluations made so far are still reported
            if analysis is not None and not analysis.done:
                self.analyses.append(analysis.cut(str(exc) or type(exc).__name__))
            raise
        if analysis is not None and not analysis.done:
            self.analyses.append(analysis.cut(f"{label}'s proof halted the step"))
        if self.halted:
            runner.error(self.halted, title=f"canary {slugs[0]}" if label == "canary" else f"{label} not proven")

    def judge(self, label: str, result: StepResult) -> None:
        self.analyses.append(result)
        if result.verdict is StepVerdict.FAIL:
            self.halted = f"{label}: metric analysis failed: {result.reason}"
        elif result.verdict is StepVerdict.HOLD:
            raise Inconclusive(f"{label}: metric analysis inconclusive, holding: {result.reason}")

    def batch(self, client: Redeployer, label: str, slugs: tuple[str, ...], runner: Runner) -> None:
        tolerance = self.start.max_stragglers - len(self.straggling)
        runner.log(f"{label}: redeploying {', '.join(slugs)} (stragglers still tolerated: {tolerance})")
        call = self.redeploy(client, label, slugs, tolerance)
        stragglers = [s for s in slugs if s in self.straggling]
        runner.log(
            f"{label}: {len(call.rows)}/{len(slugs)} rows, {len(slugs) - len(stragglers)} on target, "
            f"stragglers {', '.join(stragglers) or 'none'} ({call.seconds:.1f} s)"
        )
        rows = call.known
        answered = call.status == 200 and not call.outcome_unknown  # the CP's own rows, not a lost answer
        failed_on_build = [slug for slug in stragglers if answered and slug in rows and self._ran(slug)]
        for slug in stragglers if answered else ():  # warned once, later: quarantined, or named in the halt
            if slug not in failed_on_build:
                runner.log(f"{label}: straggler {slug} did not reach the target: {_row_problem(rows.get(slug))}")
        self.halted = self._batch_halt(call, label, slugs, stragglers, failed_on_build)
        if self.halted:
            runner.error(self.halted, title=f"{label} failed")
            return
        if call.error:  # ok: true with a message is information, not a halt
            runner.log(f"{label}: the CP adds: {call.error}")
        shipped = [rows[slug] for slug in slugs if slug in rows and slug not in self.straggling]
        if self.prover is not None and shipped:  # the stragglers are the coverage gate's, not the proof's
            self.halted = self.prover.prove(label, shipped)
            if self.halted:
                runner.error(self.halted, title=f"{label} not proven")
                return
        self.watch(label, [row.slug for row in shipped], self.settings.batch_soak_seconds, "its bake", runner)

    def _batch_halt(self, call: CallResult, label: str, slugs: tuple[str, ...], stragglers: list[str],
                    failed_on_build: list[str]) -> str:
        """Why the rollout must stop after this call, or ''.

        A tenant that ran a build before (the snapshot read it) and then fails to start this one is
        evidence against the build, never quarantined: quarantine is for boxes that were dead
        already. And a call that put none of its tenants on target halts whatever max-stragglers
        says — a build that crashes on start must not get a second batch — unless every one of them
        was unreadable before the run (the seed's dead box, alone in its call).
        """
        rows = call.known
        cp_error = "" if call.ok else f"{label} ({', '.join(slugs)}) {call.failure}: {call.error}"
        if failed_on_build:
            shown = "; ".join(f"{slug} failed on the new build, ran {self._sha_before(slug)} before: "
                              f"{_row_problem(rows.get(slug))}" for slug in failed_on_build[:SHOWN_DETAILS])
            more = f"; and {len(failed_on_build) - SHOWN_DETAILS} more" if len(failed_on_build) > SHOWN_DETAILS else ""
            return f"{label}: {shown}{more}"
        if len(self.straggling) > self.start.max_stragglers:  # name them, whether or not the CP halted too
            names = listing(tuple(self.straggling))
            return f"{_exceed(len(self.straggling), self.start.max_stragglers)}: {names}" + (
                f" ({cp_error})" if cp_error else "")
        if cp_error:
            return cp_error
        dead_before = self.before is not None and not any(self._ran(slug) for slug in slugs)
        if len(stragglers) == len(slugs) and not dead_before:
            problems = "; ".join(f"{slug}: {_row_problem(rows.get(slug))}" for slug in stragglers[:SHOWN_DETAILS])
            return f"{label}: no tenant reached the target ({problems}): the build is not started on a second call"
        return ""

    def _ran(self, slug: str) -> bool:
        return bool(self._sha_before(slug))

    def _sha_before(self, slug: str) -> str:
        return self.before.sha_of(slug)[:12] if self.before else ""

    def _ran_before(self, slug: str) -> str:
        return f"; it ran {self._sha_before(slug)} before" if self._ran(slug) else ""


def _row_problem(row: TenantRow | None) -> str:
    if row is None:
        return "the CP returned no row for it"
    if row.error:
        return row.error
    if not row.healthy:
        return "healthz_ok is false"
    return f"verified_on_target is false (ssm_status {row.ssm_status or 'unknown'})"


def _log_plan(result: RolloutResult, settings: RolloutSettings, runner: Runner) -> None:
    """The calls the run would make, in order: the same plan a real run follows."""
    canary = settings.canary
    runner.log(f"dry run: would deploy {settings.target_tag} to {describe_plan(result.planned, canary)}"
               + (f"; {len(result.already_current)} already current, not redeployed" if result.already_current else ""))
    for number, slugs in enumerate(result.planned, start=1):
        runner.log(f"  {number}. {_label(number, len(result.planned), bool(canary))}: {', '.join(slugs)}")
    if settings.on_failure == OnFailure.ROLLBACK:
        runner.log(f"dry run: on-failure: rollback — a run that fails after a deploy call redeploys "
                   f"{settings.rollback_tag} on the tenants it moved, then proves each back on its build")
    else:
        runner.log("dry run: on-failure: hold — a run that fails leaves the fleet where it stopped, for a person "
                   "to decide")


def describe_plan(planned: Sequence[Sequence[str]], canary: str) -> str:
    """``4 tenants in 2 batches``, or ``5 tenants in a canary and 2 batches``: the tenants the calls deploy."""
    batches = counted(len(planned) - (1 if canary else 0), "batch")
    return f"{counted(sum(len(call) for call in planned), 'tenant')} in {'a canary and ' if canary else ''}{batches}"


def _exceed(stragglers: int, tolerance: int) -> str:
    return f"{counted(stragglers, 'straggler')} {'exceeds' if stragglers == 1 else 'exceed'} max-stragglers {tolerance}"
