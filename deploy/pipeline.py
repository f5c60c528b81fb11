"""The stages in order, and the record of what happened.

:class:`Run` is filled in as stages finish, so that a failure at any point, a deadline, a
cancellation or even a bug still leaves a complete picture for :mod:`deploy.report`: every
per-tenant result that was received is reported, whatever ends the run.

Order: gates (required checks, superseded, live kill switch) → plan (enumerate, read the images
to promote, snapshot every tenant) → canary/soak/batches → coverage gate → verify → the final
check → promote. Gates come before enumeration so that a red check or a frozen repository means
zero CP requests. A dry run skips the gates (it waits for nothing and changes nothing), verify and
promote; it plans from the same snapshot the run would take, so it prints the calls the run makes.

The final check is what makes a proof last until ``latest`` moves: right before promote (after
the superseded guard and the kill switch are read again) one concurrent round re-reads every
tenant counted as verified — proven during the rollout, already current, or read by verify. A
tenant that went back to another build since its proof fails the run there.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NoReturn

from deploy import cancel
from deploy.analysis import Analyzer, StepResult, StepVerdict
from deploy.buildinfo import BuildinfoClient
from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.controlplane import ControlPlaneClient, TenantRow
from deploy.errors import Abort, ConfigError, ConfigErrors, DeployFailed, Inconclusive, Skip
from deploy.fleetstate import RollbackResult, Snapshot, roll_back, take_snapshot, to_roll_back
from deploy.forge import ForgeClient
from deploy.gates import ChecksResult, live_kill_switch, newer_head, wait_for_required_checks
from deploy.promote import PromoteResult, check_rollback_tag, check_sources, promote_images, registry_client
from deploy.proof import Prover
from deploy.redeploy import Redeployer, Tenants
from deploy.registry import Manifest
from deploy.rollout import Plan, RolloutResult, StopKind, enumerate_fleet, make_plan, run_rollout
from deploy.runner import Runner, counted, listing
from deploy.settings import Config, OnFailure
from deploy.verify import TenantVerdict, Verdict, VerifyResult, described_failures, failing_listing, verify_tenants
from deploy.waves import Timing, compressed, fitting, timeout_for


class Outcome(StrEnum):
    """How a run ended: the ``outcome`` output, and the headline of the summary and the report."""

    DEPLOYED = "deployed"  # every requested stage succeeded
    PROMOTED = "promoted"  # no rollout stage, and promote moved the tag (a manual promotion, a put-back)
    VERIFIED = "verified"  # stages: verify alone (a drill), and every tenant proved the build
    PLANNED = "planned"  # a dry run: the fleet enumerated, the batches printed
    SKIPPED = "skipped"  # kill switch or superseded: exit 0, ok=false
    ABORTED = "aborted"  # the live kill switch stopped the rollout between calls: the fleet is mixed, exit 1
    FAILED = "failed"


@dataclass(frozen=True)
class Span:
    """One bar of the timeline: seconds since the run started."""

    name: str
    started: float
    seconds: float


@dataclass
class Run:
    """What happened so far; mutable only while the pipeline runs."""

    config: Config | None = None
    outcome: Outcome | None = None  # None until the run ends
    reason: str = ""
    exit_code: int = 0
    fleet: tuple[str, ...] = ()
    checks: ChecksResult | None = None
    rollout: RolloutResult | None = None
    verify: VerifyResult | None = None
    promote: PromoteResult | None = None
    snapshot: Snapshot | None = None
    rollback: RollbackResult | None = None
    analysis: list[StepResult] = field(default_factory=list)  # each step's metric analysis (analysis-url), in order
    notes: dict[str, str] = field(default_factory=dict)  # stage → why it did not run
    spans: list[Span] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, reason: str, exit_code: int = 1) -> None:
        self.outcome, self.reason, self.exit_code = Outcome.FAILED, " ".join(reason.split()), exit_code

    def skip(self, reason: str) -> None:
        self.outcome, self.reason, self.exit_code = Outcome.SKIPPED, " ".join(reason.split()), 0

    def abort(self, reason: str) -> None:
        self.outcome, self.reason, self.exit_code = Outcome.ABORTED, " ".join(reason.split()), 1

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.DEPLOYED, Outcome.PROMOTED, Outcome.VERIFIED, Outcome.PLANNED)

    def timeline(self) -> list[Span]:
        spans = list(self.spans)
        if self.rollout:
            spans += [Span(f"{c.label} ({len(c.slugs)})", c.started, c.seconds) for c in self.rollout.calls]
            if self.rollout.soak:
                spans.append(Span("soak", self.rollout.soak.started, self.rollout.soak.seconds))
            spans += [Span(p.label, p.started, p.seconds) for p in self.rollout.proofs
                      if p.label.startswith(("proof", "bake"))]
        if self.rollback:
            spans += [Span(c.label, c.started, c.seconds) for c in self.rollback.calls]
        spans += [Span(_analysis_label(step), step.at, 0.0) for step in self.analysis]
        return sorted(spans, key=lambda s: s.started)


def execute(config: Config, run: Run, runner: Runner, clock: Clock) -> None:
    """Run every requested stage; record the outcome in ``run`` instead of raising."""
    run.config = config
    ctx = Context(runner, Deadline.starting_now(clock, config.timeout))
    try:
        with closing(_Stages(config, run, ctx)) as stages:
            stages.run()
    except Skip as skip:
        run.skip(str(skip))
    except Abort as abort:
        run.abort(str(abort))
    except DeployFailed as exc:
        run.fail(str(exc))
    finally:
        run.seconds = ctx.deadline.elapsed()
    if not run.outcome:
        run.outcome = _success(config)


def _success(config: Config) -> Outcome:
    """What a run that did all it was asked did: the outcome never says "deployed" when nothing was."""
    if config.rollout.dry_run:
        return Outcome.PLANNED
    if config.wants("rollout"):
        return Outcome.DEPLOYED
    return Outcome.PROMOTED if config.wants("promote") else Outcome.VERIFIED


class _Stages:
    """The stages of one run, in order, with the clients they share (closed when the run ends)."""

    def __init__(self, config: Config, run: Run, ctx: Context) -> None:
        self.config, self.record, self.ctx = config, run, ctx
        # What may end in a rollback (snapshot, rollout, verify) leaves it the end of `timeout`.
        self.forward = Context(ctx.runner, ctx.deadline.keeping(config.rollback_reserve))
        can_read_forge = config.forge.token and config.forge.repository
        self.forge_client = ForgeClient(config.forge, config.http, ctx) if can_read_forge else None
        self.registry_client = registry_client(config.http, ctx) if config.promote.images else None
        self.cp_client: ControlPlaneClient | None = None
        self.reader: BuildinfoClient | None = None  # the tenants' reads during the rollout: proofs, lost answers
        self.prover: Prover | None = None
        self.pinned: dict[str, Manifest] = {}  # image → the source manifest the preflight read: what promote moves
        self.rollback_build = ""  # the commit rollback-tag's image was built from: what a rollback must prove
        self.rollout_plan: Plan | None = None
        self.analyzer: Analyzer | None = None  # metric analysis, when analysis-url is set
        self.guarded = False  # the superseded guard and kill switch were read right before promote
        self.guard_off = False  # the superseded guard could not read the head once: warned, then logged

    def close(self) -> None:
        sessions = (self.forge_client and self.forge_client.http, self.registry_client)
        for session in sessions:
            if session:
                session.close()
        if self.cp_client is not None:
            self.cp_client.close()
        for reader in (self.prover, self.reader, self.analyzer):
            if reader is not None:
                reader.close()

    def run(self) -> None:
        config, run = self.config, self.record
        dry_run = config.rollout.dry_run
        if not dry_run:
            self.gates()
        self.proof_off_warning()
        cp = None
        if config.wants("rollout") or config.wants("verify"):
            cp = self.cp_client = ControlPlaneClient(config.cp, config.rollout, config.http, self.forward)
            self.plan(cp)
        try:
            if cp and config.wants("rollout"):
                self.rollout(cp)
            if dry_run:
                for stage in ("verify", "promote"):
                    if config.wants(stage):
                        run.notes[stage] = "dry run"
                return
            if config.wants("verify"):
                self.verify()
            if config.wants("promote") and self.registry_client is not None:
                self.before_promote()
            if run.verify is not None and config.wants("verify"):
                self.final_check()
            if self.analyzer is not None and run.rollout is not None:
                self.analyse_before_promote()
        except DeployFailed as failure:
            self.roll_back_after(failure)  # re-raises, the rollback's outcome added to the reason
        if config.wants("promote"):  # a promote that fails leaves a verified fleet: never rolled back
            self.promote()

    def rollout(self, cp: ControlPlaneClient) -> None:
        config, run, ctx = self.config, self.record, self.forward
        dry_run = config.rollout.dry_run
        if not dry_run and config.verify.url_template:
            self.reader = BuildinfoClient(config.verify.field, config.verify.concurrency, ctx)
        self.prover = None if dry_run else self.rollout_prover()
        with self.stage("Rollout", record=False):
            run.rollout = run_rollout(config.rollout, None if dry_run else self.redeployer(cp), run.fleet, ctx,
                                      plan=self.rollout_plan, prover=self.prover,
                                      checkpoint=None if dry_run else self.between_calls, before=run.snapshot,
                                      analyzer=None if dry_run else self.analyzer)
        run.analysis = list(run.rollout.analysis)
        if self.prover is not None and self.prover.verdicts:  # what was proven, even if the run stops here
            run.verify = self.prover.result(run.fleet)
        run.verify = _with_unhealthy_canary(run.verify, run.rollout, config.rollout.canary)
        if run.rollout.internal_error is not None:  # recorded above; a bug fails the run, never rolls back
            raise run.rollout.internal_error
        if run.rollout.stopped == StopKind.SKIPPED:
            raise Skip(run.rollout.halted)
        if run.rollout.stopped == StopKind.ABORTED:
            raise Abort(run.rollout.halted)
        if run.rollout.stopped == StopKind.HELD:
            raise Inconclusive(run.rollout.halted)
        if not run.rollout.ok:
            raise DeployFailed(run.rollout.failure)
        if not dry_run:  # a plan puts nothing on target: there is no coverage to gate
            _report_quarantine(run.rollout, ctx.runner)

    def snapshot(self) -> None:
        """What every tenant runs before anything moves (for resume, rollback, the plan and the summary)."""
        config, run, ctx = self.config, self.record, self.ctx
        if not config.verify.url_template:
            ctx.runner.log("snapshot: none, verify-url is empty (skip-current and the rollback's proof need it)")
            return
        with self.stage("Snapshot"):
            run.snapshot = take_snapshot(config.verify, config.http, config.sha, run.fleet, self.forward)

    def roll_back_after(self, failure: DeployFailed) -> NoReturn:
        """``on-failure: rollback``: put back what this run deployed, then fail as before, saying how it went.

        Only evidence against the build (a halted call, a failed proof or verify, stragglers over
        tolerance) and the overall timeout roll back. Not the kill switch (a person set it to make
        the fleet hold still), not something unreadable (an outage of the forge is no evidence
        against the build), not a cancellation (the run must end now), nor when nothing was moved.
        The rollback has the whole of ``timeout``, its reserve included."""
        config, run = self.config, self.record
        rollout = run.rollout
        if config.rollout.on_failure != OnFailure.ROLLBACK or rollout is None or cancel.requested():
            raise failure
        if isinstance(failure, (Abort, Inconclusive)):
            why = ("a person set the kill switch" if isinstance(failure, Abort)
                   else "what could not be read is no evidence against the build")
            raise type(failure)(f"{failure}; on-failure: rollback not run: {why}, the fleet holds where it is") \
                from None
        tenants = to_roll_back(rollout.calls, run.snapshot, config.sha)
        if not tenants:
            raise failure
        try:
            with self.stage("Rollback"):
                run.rollback = roll_back(tenants, rollout.calls, run.snapshot, self.rollback_build, config, self.ctx,
                                         len(run.fleet))
            if run.rollback.internal_error is not None:  # recorded above; a bug fails the run as one
                raise run.rollback.internal_error
            said = (f"rolled back {counted(len(run.rollback.rolled_back), 'tenant')}" if run.rollback.ok
                    else f"rollback failed: {run.rollback.error}")
        except DeployFailed as exc:  # cancelled mid-rollback: the failure still comes first
            said = f"rollback cut short: {exc}"
        raise (Abort if isinstance(failure, Abort) else DeployFailed)(f"{failure}; {said}") from None

    @contextmanager
    def stage(self, title: str, record: bool = True) -> Iterator[None]:
        deadline, run = self.ctx.deadline, self.record
        started = deadline.elapsed()
        with self.ctx.runner.group(title):
            try:
                yield
            finally:
                if record:
                    run.spans.append(Span(title.lower(), started, deadline.elapsed() - started))

    def gates(self) -> None:
        gates, run, forge, runner = self.config.gates, self.record, self.forge_client, self.ctx.runner
        if not (gates.required_checks or gates.skip_if_superseded or gates.disabled_variable):
            return
        with self.stage("Gates"):
            if gates.skip_if_superseded and forge is None:
                runner.log("superseded guard: off (it needs github-token and GITHUB_REPOSITORY)")
            if gates.required_checks:
                if forge is None:
                    raise DeployFailed("required-checks needs github-token and GITHUB_REPOSITORY")
                run.checks = wait_for_required_checks(gates, self.config.sha, forge, self.ctx)
            self.superseded("before the first side effect")
            if live_kill_switch(gates, forge, runner):
                raise Skip(f"kill switch: repository variable {gates.disabled_variable} is set")

    def plan(self, cp: ControlPlaneClient) -> None:
        """The fleet, the images to promote and what every tenant runs: read only, before anything moves."""
        config, run = self.config, self.record
        with self.stage("Plan"):
            run.fleet, rejected = enumerate_fleet(cp, self.ctx.runner)
            if not run.fleet:
                raise DeployFailed("the CP enumerated no tenant: there is nothing to deploy or verify (check cp-url "
                                   "and redeploy-path, or the CP's fleet)")
            canary = config.rollout.canary
            if config.wants("rollout") and canary and canary not in run.fleet:
                close = difflib.get_close_matches(canary, run.fleet, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigErrors([ConfigError("canary", f"{canary!r} is not one of the {len(run.fleet)} tenants the "
                                                          f"CP enumerated{hint}")])
            if rejected:
                run.notes["plan"] = f"the CP listed {counted(len(rejected), 'name')} that cannot be tenants: " \
                                    f"{listing(rejected)}"
            proven = config.wants("rollout") or config.wants("verify")  # latest must move to what is proven
            if proven and config.wants("promote") and self.registry_client is not None:
                self.pinned = check_sources(config.promote, self.registry_client, self.ctx, config.sha)
            if config.wants("rollout") and config.rollout.on_failure == OnFailure.ROLLBACK:
                self.check_rollback_tag()
        if config.wants("rollout"):
            self.snapshot()
            self.plan_calls()
            if config.analysis.enabled:
                self.analyzer = Analyzer(config.analysis, config.http, self.forward)
                self.analyzer.validate(run.fleet)  # a query the API cannot run is exit 2 now, not mid-rollout

    def plan_calls(self) -> None:
        """The calls the rollout will make, said before anything moves, and refused when their
        worst case cannot fit in what is left of ``timeout`` (exit 2, naming sizes that would)."""
        config, run, runner = self.config, self.record, self.ctx.runner
        rollout = config.rollout
        current = run.snapshot.current(config.sha) if run.snapshot and rollout.skip_current else ()
        plan = self.rollout_plan = make_plan(rollout, run.fleet, current)
        if plan.already_current:
            runner.log(f"skip-current: {counted(len(plan.already_current), 'tenant')} already report the build's "
                       f"commit, not redeployed (to ship a rebuild of the same commit, set skip-current: false): "
                       f"{listing(plan.already_current)}")
        if rollout.canary and rollout.canary in current:
            runner.log(f"canary {rollout.canary}: already reports the build; redeployed anyway: a re-run starts "
                       "again from the canary (its proof and soak) before any batch")
        timing = Timing(call=rollout.call_worst_case, bake=rollout.batch_soak_seconds,
                        soak=rollout.soak_seconds if rollout.canary else 0.0, kept=config.planned_reserve)
        sizes = [len(call) for call in plan.calls]
        worst, left = timing.worst(len(sizes), bool(rollout.canary)), self.ctx.deadline.remaining()
        runner.log(f"plan: {_calls_said(sizes, bool(rollout.canary))}, at worst {worst:g} s = "
                   f"{timing.described(len(sizes), bool(rollout.canary))}; {left:.0f} s left of timeout")
        if worst > left:
            deployed, spent = sum(sizes[bool(rollout.canary):]), max(config.timeout - left, 0.0)
            advice = fitting(rollout.batch_sizes, len(run.fleet), deployed, rollout.max_batch_size, timing, left,
                             bool(rollout.canary), spent)
            if f"at least {timeout_for(worst, spent)} s" not in advice:
                advice += f", or raise timeout to at least {timeout_for(worst, spent)} s for this plan"
            raise ConfigErrors([ConfigError(
                "batch-size", f"cannot finish inside timeout — its plan of {counted(len(sizes), 'call')} takes up to "
                              f"{worst:g} s ({timing.described(len(sizes), bool(rollout.canary))}), and {left:.0f} s "
                              f"are left after {spent:.0f} s spent before it; {advice}")])

    def check_rollback_tag(self) -> None:
        """The build a rollback goes back to, read before anything moves: a missing tag is found now."""
        config = self.config
        tag = config.rollout.rollback_tag
        if self.registry_client is None:
            self.ctx.runner.log(f"rollback-tag {tag}: not checked (promote-images is empty, so no registry to read): "
                                "a missing tag would only show when a rollback needs it")
            return
        self.rollback_build = check_rollback_tag(config.promote, tag, self.registry_client, self.ctx)

    def proof_off_warning(self) -> None:
        """A rollout without the verify stage proves nothing: say so once, rather than silently, and
        the summary says "not verified". (With the verify stage and no verify-url, verify says it.)"""
        config = self.config
        if config.wants("verify") or not config.wants("rollout"):
            return
        moves = "; latest moves on the CP's word" if config.wants("promote") and config.promote.images else ""
        said = "verify-url is set but stages has no verify" if config.verify.url_template else \
            "stages has no verify and verify-url is empty"
        self.record.notes["verify"] = "not verified: stages has no verify"
        self.ctx.runner.warning(f"{said}: nothing is proven (no per-call proof, no verify stage, no final "
                                f"check){moves}", title="proof off")

    def redeployer(self, cp: ControlPlaneClient) -> Redeployer:
        """The forward deploy calls: the build is ``sha``, and a tenant's build before is its snapshot's."""
        config, snapshot = self.config, self.record.snapshot
        tenants = None if self.reader is None else Tenants(
            self.reader, config.verify.url_template, config.http.request_timeout,
            expected=lambda slug: config.sha, before=lambda slug: snapshot.sha_of(slug) if snapshot else "")
        return Redeployer(cp, config.http.retry_delays, config.rollout.call_worst_case, config.run_key, self.forward,
                          tenants)

    def rollout_prover(self) -> Prover | None:
        """The per-call proof (verify-each-batch), when the run verifies and there is a verify-url."""
        verify = self.config.verify
        if not (verify.each_batch and self.config.wants("verify")):
            return None
        if not verify.url_template:
            self.ctx.runner.log("verify-each-batch: nothing to prove with, verify-url is empty")
            return None
        return Prover(verify, self.config.http, self.config.sha, self.forward, self.reader)

    def between_calls(self, label: str) -> None:
        """Before every call after the first: a newer commit (skip) or the live kill switch (abort)
        stops the rollout where it is. An unreadable kill switch fails closed, as at the start."""
        self.superseded(f"before {label}")
        gates = self.config.gates
        if live_kill_switch(gates, self.forge_client, self.ctx.runner):
            raise Abort(f"kill switch: repository variable {gates.disabled_variable} was set during the rollout; "
                        f"{label} and later calls not started, latest not promoted")

    def superseded(self, when: str) -> None:
        config = self.config
        if not config.gates.skip_if_superseded or self.forge_client is None:
            return
        head = newer_head(config.gates, config.sha, self.forge_client, self.ctx.runner, quiet=self.guard_off)
        self.guard_off = self.guard_off or head is None
        if head:
            raise Skip(f"superseded {when}: {config.gates.branch} is now at {head}, not {config.sha}")

    def verify(self) -> None:
        config, run, runner = self.config, self.record, self.ctx.runner
        if not config.verify.url_template:
            run.notes["verify"] = "not verified: verify-url is empty"
            runner.warning("verify skipped: verify-url is empty, so nothing proves the build is running")
            return
        if run.rollout is not None:
            self.superseded("before verify")
        rows = _verify_rows(run)
        if not rows:
            raise DeployFailed("verify: no tenant left to verify (the fleet is empty or all quarantined); "
                               "latest never moves without proof")
        with self.stage("Verify"):
            run.verify = self.verified(rows)
        if not run.verify.ok:
            raise DeployFailed(f"verify failed: {failing_listing(run.verify)}; latest not promoted")

    def verified(self, rows: list[TenantRow]) -> VerifyResult:
        """Every row's verdict: those proven during the rollout as they were, the rest read now,
        each with the call that shipped it."""
        config, run, ctx = self.config, self.record, self.forward
        verdicts = dict(self.prover.verdicts) if self.prover else {}
        proven = self.prover.proven() if self.prover else set()
        unproven = [row for row in rows if row.slug not in proven]
        started, rounds = ctx.deadline.elapsed(), 0
        if len(unproven) < len(rows):
            ctx.runner.log(f"verify: {len(rows) - len(unproven)} proven during the rollout, "
                           f"{len(unproven)} to read now")
        if unproven:
            fresh = verify_tenants(config.verify, config.http, config.sha, unproven, ctx)
            verdicts.update((verdict.slug, verdict) for verdict in fresh.verdicts)
            rounds = fresh.rounds
        shipped_in = run.rollout.shipped_in if run.rollout else {}
        ordered = tuple(replace(verdicts[row.slug], call=verdicts[row.slug].call or shipped_in.get(row.slug, ""))
                        for row in rows)
        return VerifyResult(verdicts=ordered, rounds=rounds, started=started, seconds=ctx.deadline.elapsed() - started)

    def before_promote(self) -> None:
        """The superseded guard and the live kill switch, read again right before the final check and promote."""
        config, run = self.config, self.record
        self.guarded = True
        self.superseded("before promote")
        gates = config.gates
        if run.rollout is not None and live_kill_switch(gates, self.forge_client, self.ctx.runner):
            raise Skip(f"kill switch: repository variable {gates.disabled_variable} was set during the run; "
                       "latest not promoted")

    def final_check(self) -> None:
        """Proof that holds until latest moves: one concurrent round re-reads every tenant counted as
        verified. A tenant that reports another build now (it crashed back into the old container,
        or half its instances still serve the old one) fails the run; one that gives no usable
        answer is asked again every verify-interval within verify-budget."""
        config, run = self.config, self.record
        assert run.verify is not None
        counted_as_verified = [verdict for verdict in run.verify.verdicts if verdict.state == Verdict.VERIFIED]
        if not counted_as_verified or not config.verify.url_template:
            return
        rows = [TenantRow(verdict.slug) for verdict in counted_as_verified]
        with self.stage("Final check"):
            fresh = verify_tenants(config.verify, config.http, config.sha, rows, self.forward, label="final check",
                                   reader=self.prover.reader if self.prover else None, decisive=True)
        run.verify = _after_final_check(run.verify, fresh)
        if not fresh.ok:
            raise DeployFailed(f"final check before promote: {described_failures(run.verify)}; latest not promoted")

    def analyse_before_promote(self) -> None:
        """The metrics of every tenant on the build, once, right before promote: a build that
        slowly hurts the fleet fails here (a rollback may follow); an analysis that cannot decide
        holds under ``analysis-inconclusive: hold``."""
        assert self.analyzer is not None and self.record.rollout is not None
        rollout = self.record.rollout
        on_build = set(rollout.shipped) | set(rollout.already_current)
        tenants = [slug for slug in rollout.fleet if slug in on_build]
        if not tenants:
            return
        with self.stage("Analysis"):
            watch = self.analyzer.start("promote", tenants, 0.0)
            try:
                result = watch.finish()
            except BaseException as exc:  # the timeout, a cancel: the evaluations made so far are still reported
                self.record.analysis.append(watch.cut(str(exc) or type(exc).__name__))
                raise
        self.record.analysis.append(result)
        if result.verdict is StepVerdict.FAIL:
            raise DeployFailed(f"metric analysis before promote failed: {result.reason}; latest not promoted")
        if result.verdict is StepVerdict.HOLD:
            raise Inconclusive(f"metric analysis before promote inconclusive, holding: {result.reason}; latest not "
                               "promoted")

    def promote(self) -> None:
        config, run, runner = self.config, self.record, self.ctx.runner
        if self.registry_client is None:
            run.notes["promote"] = "no promote-images"
            runner.log("promote: skipped, promote-images is empty")
            return
        if not self.guarded:
            self.before_promote()
        with self.stage("Promote"), cancel.deferred():  # a put-back is never cut in half
            run.promote = promote_images(config.promote, self.registry_client, self.ctx, self.pinned)
        if not run.promote.ok:
            raise DeployFailed(f"promote failed: {run.promote.error}")


def _analysis_label(step: StepResult) -> str:
    """A timeline mark for one step's analysis: the last value of each query, and the verdict."""
    last = {evaluation.name: evaluation.value for evaluation in step.evaluations}
    values = " ".join(f"{name}={'none' if value is None else f'{value:.3g}'}" for name, value in last.items())
    return f"analysis {step.step} {values} {step.verdict}"


def _with_unhealthy_canary(verify: VerifyResult | None, rollout: RolloutResult, canary: str) -> VerifyResult | None:
    """A canary halted by its CP row's ``healthz_ok: false`` is ``unhealthy`` in the verdicts (and so in
    the ``unhealthy`` output), proof or no proof: a failed canary is always in the list of its failure."""
    row = rollout.rows.get(canary) if canary else None
    if rollout.aborted_at != "canary" or row is None or row.healthy or not rollout.halted:
        return verify
    why = "the CP reported healthz_ok: false" + (f" ({row.error})" if row.error else "")
    verdict = TenantVerdict(slug=canary, state=Verdict.UNHEALTHY, running="", detail=f"{why}; not polled",
                            seconds=0.0, call="canary")
    if verify is None:
        return VerifyResult(verdicts=(verdict,), rounds=0, started=0.0, seconds=0.0)
    others = tuple(v for v in verify.verdicts if v.slug != canary)
    return replace(verify, verdicts=(verdict, *others))


def _after_final_check(verify: VerifyResult, fresh: VerifyResult) -> VerifyResult:
    """The verify result with the final check's verdicts: a tenant that failed it says what it
    reports now, and that it had been proven (and when) — it reverted after its proof."""
    failed = {verdict.slug: verdict for verdict in fresh.verdicts if verdict.state != Verdict.VERIFIED}
    if not failed:
        return verify
    verdicts = []
    for verdict in verify.verdicts:
        now = failed.get(verdict.slug)
        if now is None:
            verdicts.append(verdict)
            continue
        proven = f" at {verdict.proven_at:.1f} s" if verdict.proven_at is not None else ""
        verdicts.append(replace(now, call=verdict.call, detail=f"reverted after its proof{proven}: {now.detail}"))
    return replace(verify, verdicts=tuple(verdicts))


def _calls_said(sizes: Sequence[int], canary: bool) -> str:
    """``3 deploy calls (canary 1, then 2, 5 tenants)``; ``no deploy call`` when all are current."""
    if not sizes:
        return "no deploy call (every tenant already runs the build)"
    batches = sizes[canary:]
    tenants = f"{compressed(batches)} {'tenant' if batches == [1] else 'tenants'}" if batches else ""
    parts = ", then ".join(part for part in ("canary 1" if canary else "", tenants) if part)
    return f"{counted(len(sizes), 'deploy call')} ({parts})"


def _report_quarantine(rollout: RolloutResult, runner: Runner) -> None:
    with runner.group("Coverage"):
        current = f" ({len(rollout.already_current)} already current)" if rollout.already_current else ""
        runner.log(
            f"coverage: {len(rollout.shipped) + len(rollout.already_current)}/{counted(len(rollout.fleet), 'tenant')} "
            f"on target{current}, {counted(len(rollout.stragglers), 'straggler')}, tolerance {rollout.max_stragglers}"
        )
        for slug in rollout.quarantined:
            runner.warning(
                f"quarantined: {slug} did not reach the target and is excluded from verify "
                f"(within max-stragglers {rollout.max_stragglers})",
                title=f"quarantined {slug}",
            )


def _verify_rows(run: Run) -> list[TenantRow]:
    if run.rollout is None:  # verify-only: every enumerated tenant
        return [TenantRow(slug) for slug in run.fleet]
    quarantined, rows, current = set(run.rollout.quarantined), run.rollout.rows, set(run.rollout.already_current)
    return [rows.get(slug) or TenantRow(slug) for slug in run.fleet
            if (slug in rows or slug in current) and slug not in quarantined]
