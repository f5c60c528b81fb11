"""The seven stages in order, and the record of what happened.

:class:`Run` is filled in as stages finish, so that a failure at any point, a deadline, a
cancellation or even a bug still leaves a complete picture for :mod:`deploy.report`: the seed
run lost every per-tenant result because the client crashed before it could report them.

Order: gates (required checks, superseded, live kill switch) → enumerate → canary/soak/batches
→ coverage gate → verify → promote. Gates come before enumeration so that a red check or a
frozen repository means zero CP requests. A dry run skips the gates (it waits for nothing and
changes nothing), verify and promote.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from deploy import cancel
from deploy.clock import Clock, Deadline
from deploy.config import Config
from deploy.controlplane import ControlPlaneClient, TenantRow
from deploy.errors import DeployFailed
from deploy.forge import ForgeClient
from deploy.gates import ChecksResult, live_kill_switch, newer_head, wait_for_required_checks
from deploy.promote import PromoteResult, check_sources, promote_images
from deploy.rollout import RolloutResult, counted, enumerate_fleet, run_rollout
from deploy.runner import Runner, listing
from deploy.verify import VerifyResult, verify_tenants


class Skip(Exception):
    """Stop here on purpose: kill switch or superseded. Exit 0, ``ok=false``."""


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
    outcome: str = ""
    reason: str = ""
    exit_code: int = 0
    fleet: tuple[str, ...] = ()
    checks: ChecksResult | None = None
    rollout: RolloutResult | None = None
    verify: VerifyResult | None = None
    promote: PromoteResult | None = None
    notes: dict[str, str] = field(default_factory=dict)  # stage → why it did not run
    spans: list[Span] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, reason: str, exit_code: int = 1) -> None:
        self.outcome, self.reason, self.exit_code = "failed", " ".join(reason.split()), exit_code

    def skip(self, reason: str) -> None:
        self.outcome, self.reason, self.exit_code = "skipped", " ".join(reason.split()), 0

    @property
    def ok(self) -> bool:
        return self.outcome in ("deployed", "planned")

    def timeline(self) -> list[Span]:
        spans = list(self.spans)
        if self.rollout:
            spans += [Span(c.label, c.started, c.seconds) for c in self.rollout.calls]
            if self.rollout.soak:
                spans.append(Span("soak", *self.rollout.soak))
        return sorted(spans, key=lambda s: s.started)


def execute(config: Config, run: Run, runner: Runner, clock: Clock) -> None:
    """Run every requested stage; record the outcome in ``run`` instead of raising."""
    run.config = config
    deadline = Deadline.starting_now(clock, config.timeout)
    try:
        _stages(config, run, runner, clock, deadline)
    except Skip as skip:
        run.skip(str(skip))
    except DeployFailed as exc:
        run.fail(str(exc))
    finally:
        run.seconds = deadline.elapsed()
    if not run.outcome:
        run.outcome = "planned" if config.rollout.dry_run else "deployed"


def _stages(config: Config, run: Run, runner: Runner, clock: Clock, deadline: Deadline) -> None:
    forge = _forge_client(config, runner, clock, deadline)
    dry_run = config.rollout.dry_run
    if not dry_run:
        _gates(config, run, forge, runner, clock, deadline)
    cp = None
    if config.wants("rollout") or config.wants("verify"):
        cp = ControlPlaneClient(config.cp, config.rollout, runner, clock, deadline)
        with _stage(run, runner, "Plan", deadline):
            run.fleet, rejected = enumerate_fleet(cp, runner)
            if rejected:
                run.notes["plan"] = f"the CP listed {counted(len(rejected), 'name')} that cannot be tenants: " \
                                    f"{listing(rejected)}"
            if config.wants("rollout") and config.wants("promote") and config.promote.images:
                check_sources(config.promote, runner, clock, deadline)
    if cp and config.wants("rollout"):
        with _stage(run, runner, "Rollout", deadline, record=False):
            run.rollout = run_rollout(config.rollout, cp, run.fleet, runner, deadline)
        if not run.rollout.ok:
            raise DeployFailed(run.rollout.failure)
        if not dry_run:  # a plan puts nothing on target: there is no coverage to gate
            _report_quarantine(run.rollout, runner)
    if dry_run:
        for stage in ("verify", "promote"):
            if config.wants(stage):
                run.notes[stage] = "dry run"
        return
    if config.wants("verify"):
        _verify(config, run, forge, runner, clock, deadline)
    if config.wants("promote"):
        _promote(config, run, forge, runner, clock, deadline)


@contextmanager
def _stage(run: Run, runner: Runner, title: str, deadline: Deadline, record: bool = True) -> Iterator[None]:
    started = deadline.elapsed()
    with runner.group(title):
        try:
            yield
        finally:
            if record:
                run.spans.append(Span(title.lower(), started, deadline.elapsed() - started))


def _forge_client(config: Config, runner: Runner, clock: Clock, deadline: Deadline) -> ForgeClient | None:
    if not config.forge.token or not config.forge.repository:
        return None
    return ForgeClient(config.forge, runner, clock, deadline)


def _gates(config: Config, run: Run, forge: ForgeClient | None, runner: Runner, clock: Clock,
           deadline: Deadline) -> None:
    gates = config.gates
    if not (gates.required_checks or gates.skip_if_superseded or gates.disabled_variable):
        return
    with _stage(run, runner, "Gates", deadline):
        if gates.skip_if_superseded and forge is None:
            runner.log("superseded guard: off (it needs github-token and GITHUB_REPOSITORY)")
        if gates.required_checks:
            if forge is None:
                raise DeployFailed("required-checks needs github-token and GITHUB_REPOSITORY")
            run.checks = wait_for_required_checks(gates, config.sha, forge, runner, clock, deadline)
        _superseded(config, forge, runner, "before the first side effect")
        if gates.disabled_variable and live_kill_switch(gates, forge, runner):
            raise Skip(f"kill switch: repository variable {gates.disabled_variable} is set")


def _superseded(config: Config, forge: ForgeClient | None, runner: Runner, when: str) -> None:
    if not config.gates.skip_if_superseded or forge is None:
        return
    head = newer_head(config.gates, config.sha, forge, runner)
    if head:
        raise Skip(f"superseded {when}: {config.gates.branch} is now at {head}, not {config.sha}")


def _report_quarantine(rollout: RolloutResult, runner: Runner) -> None:
    with runner.group("Coverage"):
        runner.log(
            f"coverage: {len(rollout.shipped)}/{counted(len(rollout.fleet), 'tenant')} on target, "
            f"{counted(len(rollout.stragglers), 'straggler')}, tolerance {rollout.max_stragglers}"
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
    quarantined, rows = set(run.rollout.quarantined), run.rollout.rows
    return [rows[slug] for slug in run.fleet if slug in rows and slug not in quarantined]


def _verify(config: Config, run: Run, forge: ForgeClient | None, runner: Runner, clock: Clock,
            deadline: Deadline) -> None:
    if not config.verify.url_template:
        run.notes["verify"] = "not verified: verify-url is empty"
        runner.warning("verify skipped: verify-url is empty, so nothing proves the build is running")
        return
    if run.rollout is not None:
        _superseded(config, forge, runner, "before verify")
    rows = _verify_rows(run)
    if not rows:
        raise DeployFailed("verify: no tenant left to verify (the fleet is empty or all quarantined); "
                           "latest never moves without proof")
    with _stage(run, runner, "Verify", deadline):
        run.verify = verify_tenants(config.verify, config.sha, rows, runner, clock, deadline)
    if not run.verify.ok:
        bad = [f"{state} {listing(run.verify.slugs(state))}" for state in ("stale", "unreachable", "unhealthy")
               if run.verify.slugs(state)]
        raise DeployFailed(f"verify failed: {'; '.join(bad)}; latest not promoted")


def _promote(config: Config, run: Run, forge: ForgeClient | None, runner: Runner, clock: Clock,
             deadline: Deadline) -> None:
    if not config.promote.images:
        run.notes["promote"] = "no promote-images"
        runner.log("promote: skipped, promote-images is empty")
        return
    _superseded(config, forge, runner, "before promote")
    if run.rollout is not None and config.gates.disabled_variable and live_kill_switch(config.gates, forge, runner):
        raise Skip(f"kill switch: repository variable {config.gates.disabled_variable} was set during the run; "
                   "latest not promoted")
    with _stage(run, runner, "Promote", deadline), cancel.deferred():  # a put-back is never cut in half
        run.promote = promote_images(config.promote, runner, clock, deadline)
    if not run.promote.ok:
        raise DeployFailed(f"promote failed: {run.promote.error}")
