"""Fleet state: what every tenant ran before this run, and putting back what the run shipped.

- **Snapshot.** Right after enumeration, before the first deploy call, one concurrent round reads
  every tenant's ``verify-url`` (``request-timeout`` each, ``verify-concurrency`` at a time): the
  SHA it runs, or why it could not be read. One request per tenant, one round of time.
- **Resume** (``skip-current``). A tenant whose snapshot already reports ``sha`` is not redeployed:
  re-running a failed job redeploys only what is missing (:meth:`Snapshot.current`).
- **Rollback** (``on-failure: rollback``). When a run fails after it deployed, every tenant it
  deployed is redeployed with ``rollback-tag`` through the same batched, retried, budgeted CP calls,
  then verified back on its snapshot SHA (:func:`roll_back`). Tenants already current were not
  touched, and a straggler whose redeploy never completed still runs what it ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from deploy.buildinfo import BuildinfoClient, buildinfo_url, format_seconds
from deploy.context import Context
from deploy.controlplane import CallResult, ControlPlaneClient, TenantRow
from deploy.domain import sha_matches
from deploy.errors import DeployFailed
from deploy.runner import listing
from deploy.settings import ControlPlaneSettings, HttpSettings, RolloutSettings, VerifySettings
from deploy.verify import TenantVerdict, Verdict, VerifyResult, verify_tenants


@dataclass(frozen=True, kw_only=True)
class Before:
    """One tenant before the run: the SHA its verify-url reported, or why it could not be read."""

    slug: str
    sha: str  # '' when unreadable
    problem: str  # '' when read


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    tenants: tuple[Before, ...]  # in fleet order
    started: float  # seconds since the run started
    seconds: float

    @cached_property
    def by_slug(self) -> dict[str, Before]:
        return {before.slug: before for before in self.tenants}

    def current(self, sha: str) -> tuple[str, ...]:
        """The tenants that already report ``sha``."""
        return tuple(before.slug for before in self.tenants if before.sha and sha_matches(before.sha, sha))

    def sha_of(self, slug: str) -> str:
        before = self.by_slug.get(slug)
        return before.sha if before else ""


def take_snapshot(settings: VerifySettings, http_settings: HttpSettings, sha: str, fleet: Sequence[str],
                  ctx: Context) -> Snapshot:
    """Every tenant's SHA before anything moves: one concurrent round, never raising for a tenant."""
    started, start = ctx.deadline.elapsed(), ctx.clock.now()
    urls = [buildinfo_url(settings.url_template, slug) for slug in fleet]
    with BuildinfoClient(settings.field, settings.concurrency, ctx) as reader:
        answers = reader.read_all(urls, http_settings.request_timeout, ctx.deadline)
    tenants = tuple(
        Before(slug=slug, sha=answer.shown if answer and answer.reported else "",
               problem="" if answer and answer.reported else (answer.problem if answer else "no time was left"))
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
    tenants: tuple[str, ...]  # the tenants this run deployed, asked to go back
    calls: tuple[CallResult, ...]
    verify: VerifyResult | None  # each back on its snapshot SHA (tenants without one are taken on the CP's word)
    rolled_back: tuple[str, ...]
    error: str  # '' when every tenant went back

    @property
    def ok(self) -> bool:
        return not self.error


def to_roll_back(calls: Sequence[CallResult], current: Sequence[str]) -> tuple[str, ...]:
    """Every tenant a deploy call of this run was made for, except those it provably did not
    change: already current (never asked), or a row saying the redeploy never reached the target."""
    skip = set(current)
    slugs: dict[str, None] = {}
    for call in calls:
        rows = {row.slug: row for row in call.rows}
        for slug in call.slugs:
            row = rows.get(slug)
            if slug not in skip and (row is None or row.on_target):
                slugs[slug] = None
    return tuple(slugs)


def roll_back(tenants: Sequence[str], snapshot: Snapshot | None, cp: ControlPlaneSettings, rollout: RolloutSettings,
              http_settings: HttpSettings, verify: VerifySettings, ctx: Context) -> RollbackResult:
    """Redeploy ``tenants`` with the rollback tag, batch by batch, then verify each on its snapshot SHA.

    Every batch is tried (a failed one does not stop the others: the more goes back, the better);
    none starts without time for the CP's worst case.
    """
    tag, runner = rollout.rollback_tag, ctx.runner
    client = ControlPlaneClient(cp, replace(rollout, target_tag=tag), http_settings, ctx)
    batches = [tuple(tenants[i:i + rollout.batch_size]) for i in range(0, len(tenants), rollout.batch_size)]
    calls: list[CallResult] = []
    errors: list[str] = []
    try:
        for number, slugs in enumerate(batches, start=1):
            label = f"rollback {number}/{len(batches)}"
            left = ctx.deadline.remaining()
            if left < rollout.call_worst_case:
                rest = tuple(slug for batch in batches[number - 1:] for slug in batch)
                errors.append(f"could not start {label}: {left:.0f} s left of timeout, less than one call's worst "
                              f"case ({rollout.call_worst_case:g} s); roll back by hand: {listing(rest)}")
                runner.error(errors[-1], title="rollback")
                break
            runner.log(f"{label}: redeploying {', '.join(slugs)} with {tag}")
            call = client.redeploy(label, slugs, max_stragglers=len(slugs))  # put back all it can
            calls.append(call)
            if not call.ok:
                errors.append(f"{label} failed: {call.error}")
    finally:
        client.http.close()
    asked = set(tenants)
    returned = [row for call in calls for row in call.rows if row.on_target and row.slug in asked]
    result_verify = _verify_back(returned, snapshot, http_settings, verify, ctx)
    proven = {v.slug for v in result_verify.verdicts if v.state == Verdict.VERIFIED} if result_verify else set()
    unchecked = {row.slug for row in returned if not (snapshot and snapshot.sha_of(row.slug))}
    rolled_back = tuple(slug for slug in tenants if slug in proven or slug in unchecked)
    missing = [slug for slug in tenants if slug not in rolled_back]
    if missing:
        errors.append(f"not back on their previous build: {listing(missing)}")
    error = "; ".join(errors)
    runner.log(f"rollback: {len(rolled_back)}/{len(tenants)} tenants back on {tag}" + (f"; {error}" if error else ""))
    return RollbackResult(tag=tag, tenants=tuple(tenants), calls=tuple(calls), verify=result_verify,
                          rolled_back=rolled_back, error=error)


def _verify_back(rows: Sequence[TenantRow], snapshot: Snapshot | None, http_settings: HttpSettings,
                 verify: VerifySettings, ctx: Context) -> VerifyResult | None:
    """Each tenant verified on the SHA its snapshot had (tenants grouped by it), when it had one."""
    if snapshot is None or not verify.url_template:
        return None
    groups: dict[str, list[TenantRow]] = {}
    for row in rows:
        sha = snapshot.sha_of(row.slug)
        if sha:
            groups.setdefault(sha, []).append(row)
    started = ctx.deadline.elapsed()
    verdicts: list[TenantVerdict] = []
    rounds = 0
    for sha, group in groups.items():
        try:
            result = verify_tenants(verify, http_settings, sha, group, ctx, label=f"rollback: back on {sha[:12]}")
        except DeployFailed:
            break
        verdicts += result.verdicts
        rounds = max(rounds, result.rounds)
    return VerifyResult(verdicts=tuple(verdicts), rounds=rounds, started=started,
                        seconds=ctx.deadline.elapsed() - started)
