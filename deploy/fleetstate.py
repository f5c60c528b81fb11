"""Fleet state: what every tenant ran before this run, and putting back what the run shipped.

- **Snapshot.** Right after enumeration, before the first deploy call, one concurrent round reads
  every tenant's ``verify-url`` (``verify-concurrency`` at a time, over at most one
  ``request-timeout``): the SHA it runs, or why it could not be read. One request per tenant.
- **Resume** (``skip-current``). A tenant whose snapshot already reports ``sha`` is not redeployed:
  re-running a failed job redeploys only what is missing (:meth:`Snapshot.current`).
- **Rollback** (``on-failure: rollback``). When a run fails after it deployed, every tenant it may
  have moved (:func:`to_roll_back`) is redeployed with ``rollback-tag`` through the same batched,
  retried, budgeted CP calls, then verified back on its snapshot SHA (:func:`roll_back`). The
  stages before it leave it the end of ``timeout`` (:attr:`deploy.settings.Config.rollback_reserve`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from deploy import cancel
from deploy.buildinfo import SHOWN_CHARS, BuildinfoClient, buildinfo_url, format_seconds
from deploy.clock import Deadline
from deploy.context import Context
from deploy.controlplane import CallResult, ControlPlaneClient, TenantRow
from deploy.domain import sha_matches
from deploy.errors import DeployFailed
from deploy.runner import counted, listing
from deploy.settings import ControlPlaneSettings, HttpSettings, RolloutSettings, VerifySettings
from deploy.verify import Verdict, VerifyResult, verify_tenants


@dataclass(frozen=True, kw_only=True)
class TenantBefore:
    """One tenant before the run: the SHA its verify-url reported, or why it could not be read."""

    slug: str
    sha: str  # as reported, its first SHOWN_CHARS characters (still a prefix a rollback can prove); '' when unreadable
    problem: str  # '' when read


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    tenants: tuple[TenantBefore, ...]  # in fleet order
    started: float  # seconds since the run started
    seconds: float

    @cached_property
    def by_slug(self) -> dict[str, TenantBefore]:
        return {before.slug: before for before in self.tenants}

    def current(self, sha: str) -> tuple[str, ...]:
        """The tenants that already report ``sha``."""
        return tuple(before.slug for before in self.tenants if before.sha and sha_matches(before.sha, sha))

    def sha_of(self, slug: str) -> str:
        before = self.by_slug.get(slug)
        return before.sha if before else ""


def take_snapshot(settings: VerifySettings, http_settings: HttpSettings, sha: str, fleet: Sequence[str],
                  ctx: Context) -> Snapshot:
    """Every tenant's SHA before anything moves: one concurrent round, never raising for a tenant.

    The round ends after one ``request-timeout``: tenants that hang take a worker each for that
    long, and a tenant still queued behind them then is unreadable (and simply deployed), so a
    fleet of dead tenants cannot stretch the snapshot to its size over the concurrency.
    """
    started, start = ctx.deadline.elapsed(), ctx.clock.now()
    round_end = Deadline(ctx.clock, start, min(http_settings.request_timeout, ctx.deadline.remaining()))
    urls = [buildinfo_url(settings.url_template, slug) for slug in fleet]
    with BuildinfoClient(settings.field, settings.concurrency, ctx) as reader:
        answers = reader.read_all(urls, http_settings.request_timeout, round_end)
    late = f"not read within the round's {format_seconds(round_end.seconds)} s"
    tenants = tuple(
        TenantBefore(slug=slug, sha=answer.reported[:SHOWN_CHARS] if answer and answer.reported else "",
                     problem="" if answer and answer.reported else (answer.problem if answer else late))
        for slug, answer in zip(fleet, answers, strict=True)
    )
    snapshot = Snapshot(tenants=tenants, started=started, seconds=ctx.clock.now() - start)
    current = len(snapshot.current(sha))
    unreadable = sum(1 for before in tenants if not before.sha)
    ctx.runner.log(f"snapshot: {len(tenants)} tenants read in {format_seconds(snapshot.seconds)} s: {current} already "
                   f"on {sha[:12]}, {len(tenants) - current - unreadable} on another build, {unreadable} unreadable")
    return snapshot


@dataclass(frozen=True, kw_only=True)
class RollbackResult:
    tag: str
    tenants: tuple[str, ...]  # the tenants this run moved, asked to go back
    calls: tuple[CallResult, ...]
    verify: VerifyResult | None  # each back on its snapshot SHA (tenants without one are taken on the CP's word)
    rolled_back: tuple[str, ...]
    not_rolled_back: tuple[str, ...]  # to roll back by hand: not asked (no time), or not proven back
    error: str  # '' when every tenant went back
    # A bug while proving the tenants back: kept so the calls made are recorded, then raised by the
    # pipeline (an internal error, never a verdict on a tenant).
    internal_error: Exception | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return not self.error


def to_roll_back(calls: Sequence[CallResult], snapshot: Snapshot | None, sha: str) -> tuple[str, ...]:
    """Every tenant a deploy call of this run may have moved, in call order.

    A row on target moved; a row off target (a quarantined straggler) did not. A tenant without a
    row may have moved when its call got no readable answer or a 200 that left it out, not when
    the CP refused the call with an error status. A tenant that ran ``sha`` before the run (in
    the snapshot) is left where it is: going back would take it off the build it ran.
    """
    slugs: dict[str, None] = {}
    for call in calls:
        rows = {row.slug: row for row in call.rows}
        unsaid_may_have_moved = call.outcome_unknown or call.status == 200
        for slug in call.slugs:
            row = rows.get(slug)
            moved = row.on_target if row is not None else unsaid_may_have_moved
            if moved and not (snapshot and sha_matches(snapshot.sha_of(slug), sha)):
                slugs[slug] = None
    return tuple(slugs)


def roll_back(tenants: Sequence[str], snapshot: Snapshot | None, cp: ControlPlaneSettings, rollout: RolloutSettings,
              http_settings: HttpSettings, verify: VerifySettings, ctx: Context) -> RollbackResult:
    """Redeploy ``tenants`` with the rollback tag, batch by batch, then verify each on its snapshot SHA.

    Every batch is tried (a failed one does not stop the others: the more goes back, the better);
    none starts without time for the CP's worst case, and a call cut short (the deadline during a
    retry wait, a cancellation) ends the rollback with what it has. Never raises for what the CP
    or a tenant does.
    """
    tag = rollout.rollback_tag
    client = ControlPlaneClient(cp, replace(rollout, target_tag=tag), http_settings, ctx)
    try:
        calls, errors = _redeploy_back(tuple(tenants), client, rollout, ctx)
    finally:
        client.http.close()
    asked = set(tenants)
    returned = [row for call in calls for row in call.rows if row.on_target and row.slug in asked]
    result_verify, internal = None, None
    if not cancel.requested():
        try:
            result_verify = _verify_back(returned, snapshot, http_settings, verify, ctx)
        except DeployFailed as exc:  # cancelled while proving: what the calls did is still reported
            errors.append(f"rollback verify cut short: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug: the calls made are recorded, then it is raised
            internal = exc
            errors.append(f"rollback verify: internal error ({type(exc).__name__}: {exc})")
    back = {v.slug for v in result_verify.verdicts if v.state == Verdict.VERIFIED} if result_verify else set()
    back |= {row.slug for row in returned if not (snapshot and snapshot.sha_of(row.slug))}  # the CP's word
    rolled_back = tuple(slug for slug in tenants if slug in back)
    missing = tuple(slug for slug in tenants if slug not in back)
    if missing:
        errors.append(f"{counted(len(missing), 'tenant')} not back on the build they ran before "
                      f"(roll back by hand): {listing(missing)}")
    error = "; ".join(errors)
    ctx.runner.log(f"rollback: {len(rolled_back)}/{len(tenants)} tenants back on {tag}{'; ' if error else ''}{error}")
    return RollbackResult(tag=tag, tenants=tuple(tenants), calls=tuple(calls), verify=result_verify,
                          rolled_back=rolled_back, not_rolled_back=missing, error=error, internal_error=internal)


def _redeploy_back(tenants: tuple[str, ...], client: ControlPlaneClient, rollout: RolloutSettings,
                   ctx: Context) -> tuple[list[CallResult], list[str]]:
    """The rollback's CP calls, and what went wrong in a few words (the tenants are listed once, later):
    the first failed call and how many failed, then why the rollback stopped early, if it did."""
    batches = [tenants[i:i + rollout.batch_size] for i in range(0, len(tenants), rollout.batch_size)]
    calls: list[CallResult] = []
    failed: list[str] = []
    stopped = ""
    for number, slugs in enumerate(batches, start=1):
        label = f"rollback {number}/{len(batches)}"
        left = ctx.deadline.remaining()
        if left < rollout.call_worst_case:
            stopped = (f"could not start {label}: {left:.0f} s left of timeout, less than one call's worst case "
                       f"({rollout.call_worst_case:g} s)")
            ctx.runner.error(f"{stopped}; roll back by hand: {listing(tenants[(number - 1) * rollout.batch_size:])}",
                             title="rollback")
            break
        ctx.runner.log(f"{label}: redeploying {', '.join(slugs)} with {rollout.rollback_tag}")
        started = ctx.clock.now()
        try:
            call = client.redeploy(label, slugs, max_stragglers=len(slugs))  # put back all it can
        except DeployFailed as exc:  # cut short in flight: the CP may have moved these tenants
            calls.append(client.unanswered(label, slugs, started, str(exc)))
            stopped = f"{label} cut short: {exc}"
            break
        calls.append(call)
        if not call.ok:
            failed.append(f"{label} failed: {call.error}")
    errors = [failed[0] if len(failed) == 1 else f"{len(failed)} rollback calls failed, the first: {failed[0]}"
              ] if failed else []
    return calls, errors + ([stopped] if stopped else [])


def _verify_back(rows: Sequence[TenantRow], snapshot: Snapshot | None, http_settings: HttpSettings,
                 verify: VerifySettings, ctx: Context) -> VerifyResult | None:
    """Each tenant verified on the SHA its snapshot had, all in one stage; ``None`` when none had one."""
    if snapshot is None or not verify.url_template:
        return None
    expected = {row.slug: sha for row in rows if (sha := snapshot.sha_of(row.slug))}
    if not expected:
        return None
    checked = [row for row in rows if row.slug in expected]
    return verify_tenants(verify, http_settings, "", checked, ctx, label="rollback verify", expected=expected)
