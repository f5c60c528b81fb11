"""The stages in order, and the record of what happened.

:class:`Run` is filled in as stages finish, so that a failure at any point, a deadline, a
cancellation or even a bug still leaves a complete picture for :mod:`deploy.report`: every
per-tenant result that was received is reported, whatever ends the run.

Order: gates (required checks, superseded, live kill switch) → enumerate → canary/soak/batches
→ coverage gate → verify → promote. Gates come before enumeration so that a red check or a
frozen repository means zero CP requests. A dry run skips the gates (it waits for nothing and
changes nothing), verify and promote.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NoReturn

from deploy import cancel
from deploy.clock import Clock, Deadline
from deploy.context import Context
from deploy.controlplane import ControlPlaneClient, TenantRow
from deploy.errors import Abort, DeployFailed, Skip
from deploy.fleetstate import RollbackResult, Snapshot, roll_back, take_snapshot, to_roll_back
from deploy.forge import ForgeClient
from deploy.gates import ChecksResult, live_kill_switch, newer_head, wait_for_required_checks
from deploy.promote import PromoteResult, check_sources, promote_images, registry_client
from deploy.proof import Prover
from deploy.rollout import RolloutResult, StopKind, enumerate_fleet, run_rollout
from deploy.runner import Runner, counted, listing
from deploy.settings import Config, OnFailure
from deploy.verify import VerifyResult, failing_listing, verify_tenants


class Outcome(StrEnum):
    """How a run ended: the ``outcome`` output, and the headline of the summary and the report."""

    DEPLOYED = "deployed"  # every requested stage succeeded
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
        return self.outcome in (Outcome.DEPLOYED, Outcome.PLANNED)

    def timeline(self) -> list[Span]:
        spans = list(self.spans)
        if self.rollout:
            spans += [Span(c.label, c.started, c.seconds) for c in self.rollout.calls]
            if self.rollout.soak:
                spans.append(Span("soak", self.rollout.soak.started, self.rollout.soak.seconds))
            spans += [Span(p.label, p.started, p.seconds) for p in self.rollout.proofs if p.label.startswith("proof")]
        if self.rollback:
            spans += [Span(c.label, c.started, c.seconds) for c in self.rollback.calls]
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
        run.outcome = Outcome.PLANNED if config.rollout.dry_run else Outcome.DEPLOYED


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
        self.prover: Prover | None = None
        self.guard_off = False  # the superseded guard could not read the head once: warned, then logged

    def close(self) -> None:
        sessions = (self.forge_client and self.forge_client.http, self.cp_client and self.cp_client.http,
                    self.registry_client)
        for session in sessions:
            if session:
                session.close()
        if self.prover is not None:
            self.prover.close()

    def run(self) -> None:
        config, run = self.config, self.record
        dry_run = config.rollout.dry_run
        if not dry_run:
            self.gates()
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
        except DeployFailed as failure:
            self.roll_back_after(failure)  # re-raises, the rollback's outcome added to the reason
        if config.wants("promote"):  # a promote that fails leaves a verified fleet: never rolled back
            self.promote()

    def rollout(self, cp: ControlPlaneClient) -> None:
        config, run, ctx = self.config, self.record, self.forward
        dry_run = config.rollout.dry_run
        if not dry_run:
            self.snapshot()
        current = run.snapshot.current(config.sha) if run.snapshot and config.rollout.skip_current else ()
        self.prover = None if dry_run else self.rollout_prover()
        with self.stage("Rollout", record=False):
            run.rollout = run_rollout(config.rollout, cp, run.fleet, ctx, prover=self.prover,
                                      checkpoint=None if dry_run else self.between_calls, current=current)
        if run.rollout.internal_error is not None:  # recorded above; a bug fails the run, never rolls back
            raise run.rollout.internal_error
        if self.prover is not None and self.prover.verdicts:  # what was proven, even if the run stops here
            run.verify = self.prover.result(run.fleet)
        if run.rollout.stopped == StopKind.SKIPPED:
            raise Skip(run.rollout.halted)
        if run.rollout.stopped == StopKind.ABORTED:
            raise Abort(run.rollout.halted)
        if not run.rollout.ok:
            raise DeployFailed(run.rollout.failure)
        if not dry_run:  # a plan puts nothing on target: there is no coverage to gate
            _report_quarantine(run.rollout, ctx.runner)

    def snapshot(self) -> None:
        """What every tenant runs before anything moves (for resume, rollback and the summary)."""
        config, run, ctx = self.config, self.record, self.ctx
        if not config.verify.url_template:
            ctx.runner.log("snapshot: none, verify-url is empty (skip-current and the rollback's proof need it)")
            return
        with self.stage("Snapshot"):
            run.snapshot = take_snapshot(config.verify, config.http, config.sha, run.fleet, self.forward)

    def roll_back_after(self, failure: DeployFailed) -> NoReturn:
        """``on-failure: rollback``: put back what this run deployed, then fail as before, saying how it went.

        Not after a cancellation (the run must end now), nor when nothing was moved. The rollback
        has the whole of ``timeout``, its reserve included."""
        config, run = self.config, self.record
        rollout = run.rollout
        if config.rollout.on_failure != OnFailure.ROLLBACK or rollout is None or cancel.requested():
            raise failure
        tenants = to_roll_back(rollout.calls, run.snapshot, config.sha)
        if not tenants:
            raise failure
        try:
            with self.stage("Rollback"):
                run.rollback = roll_back(tenants, run.snapshot, config.cp, config.rollout, config.http,
                                         config.verify, self.ctx)
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
        config, run = self.config, self.record
        with self.stage("Plan"):
            run.fleet, rejected = enumerate_fleet(cp, self.ctx.runner)
            if rejected:
                run.notes["plan"] = f"the CP listed {counted(len(rejected), 'name')} that cannot be tenants: " \
                                    f"{listing(rejected)}"
            if config.wants("rollout") and config.wants("promote") and self.registry_client is not None:
                check_sources(config.promote, self.registry_client, self.ctx)

    def rollout_prover(self) -> Prover | None:
        """The per-call proof (verify-each-batch), when the run verifies and there is a verify-url."""
        verify = self.config.verify
        if not (verify.each_batch and self.config.wants("verify")):
            return None
        if not verify.url_template:
            self.ctx.runner.log("verify-each-batch: nothing to prove with, verify-url is empty")
            return None
        return Prover(verify, self.config.http, self.config.sha, self.forward)

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

    def promote(self) -> None:
        config, run, runner = self.config, self.record, self.ctx.runner
        if self.registry_client is None:
            run.notes["promote"] = "no promote-images"
            runner.log("promote: skipped, promote-images is empty")
            return
        self.superseded("before promote")
        gates = config.gates
        if run.rollout is not None and live_kill_switch(gates, self.forge_client, runner):
            raise Skip(f"kill switch: repository variable {gates.disabled_variable} was set during the run; "
                       "latest not promoted")
        with self.stage("Promote"), cancel.deferred():  # a put-back is never cut in half
            run.promote = promote_images(config.promote, self.registry_client, self.ctx)
        if not run.promote.ok:
            raise DeployFailed(f"promote failed: {run.promote.error}")


def _report_quarantine(rollout: RolloutResult, runner: Runner) -> None:
    with runner.group("Coverage"):
        current = f" ({len(rollout.already_current)} already current)" if rollout.already_current else ""
        runner.log(
            f"coverage: {len(rollout.shipped) + len(rollout.already_current)}/{counted(len(rollout.fleet), 'tenant')} "
            f"on target{current}, {counted(len(rollout.stragglers), 'straggler')}, tolerance {rollout.max_stragglers}"
        )
        for slug in rollout.quarantined:
            runner.warning(
                f"{slug} quarantined: it did not reach the target and is excluded from verify "
                f"(within max-stragglers {rollout.max_stragglers})",
                title=f"quarantined {slug}",
            )


def _verify_rows(run: Run) -> list[TenantRow]:
    if run.rollout is None:  # verify-only: every enumerated tenant
        return [TenantRow(slug) for slug in run.fleet]
    quarantined, rows, current = set(run.rollout.quarantined), run.rollout.rows, set(run.rollout.already_current)
    return [rows.get(slug) or TenantRow(slug) for slug in run.fleet
            if (slug in rows or slug in current) and slug not in quarantined]
