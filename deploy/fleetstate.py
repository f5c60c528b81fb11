"""Fleet state: what every tenant ran before this run, and putting back what the run shipped.

- **Snapshot.** Right after enumeration, before the first deploy call, one concurrent round reads
  every tenant's ``verify-url`` (``verify-concurrency`` at a time, over at most one
  ``request-timeout``): the SHA it runs, or why it could not be read. One request per tenant.
- **Resume** (``skip-current``). A tenant whose snapshot already reports ``sha`` is not redeployed:
  re-running a failed job redeploys only what is missing (:meth:`Snapshot.current`).
- **Rollback** (``on-failure: rollback``). When a run fails on evidence against the build after it
  deployed, every tenant it may have moved (:func:`to_roll_back`) is redeployed with
  ``rollback-tag`` through the same batched, retried, budgeted CP calls, then verified back on
  the build that tag names, or each on its snapshot SHA (:func:`roll_back`). The stages before
  it leave it the end of ``timeout`` (:attr:`deploy.settings.Config.rollback_reserve`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from deploy import cancel
from deploy.buildinfo import HELD_KEYS, SHOWN_CHARS, Answer, BuildinfoClient, buildinfo_url, format_seconds
from deploy.clock import Deadline
from deploy.context import Context
from deploy.controlplane import CallResult, ControlPlaneClient, TenantRow
from deploy.domain import sha_matches
from deploy.errors import ConfigError, ConfigErrors, DeployFailed
from deploy.redeploy import Redeployer, Tenants
from deploy.runner import counted, listing
from deploy.settings import Config, HttpSettings, RolloutSettings, VerifySettings
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
        """What the tenant reported before the run ('' when it could not be read): a tenant that
        ran a build before and fails on the new one is evidence against the build, not a dead box."""
        before = self.by_slug.get(slug)
        return before.sha if before else ""


def take_snapshot(settings: VerifySettings, http_settings: HttpSettings, sha: str, fleet: Sequence[str],
                  ctx: Context) -> Snapshot:
    """Every tenant's SHA before anything moves: one concurrent round, never raising for a tenant.

    The round ends after one ``request-timeout``: tenants that hang take a worker each for that
    long, and a tenant still queued behind them then is unreadable (and simply deployed), so a
    fleet of dead tenants cannot stretch the snapshot to its size over the concurrency.

    It is also the preflight of ``verify-field``: when every tenant that answered answered 200
    without the field, the field name is wrong (a proof could only ever wait out its budget and
    call healthy tenants unreachable), so the run stops here with a configuration error, before
    the first deploy call.
    """
    started, start = ctx.deadline.elapsed(), ctx.clock.now()
    round_end = Deadline(ctx.clock, start, min(http_settings.request_timeout, ctx.deadline.remaining()))
    urls = [buildinfo_url(settings.url_template, slug) for slug in fleet]
    with BuildinfoClient(settings.field, settings.concurrency, ctx) as reader:
        answers = reader.read_all(urls, http_settings.request_timeout, round_end)
    _check_field(settings.field, answers)
    late = f"not read within the round's {format_seconds(round_end.seconds)} s"
    tenants = tuple(
        TenantBefore(slug=slug, sha=answer.reported[:SHOWN_CHARS] if answer and answer.reported else "",
                     problem="" if answer and answer.reported else (answer.problem if answer else late))
        for slug, answer in zip(fleet, answers, strict=True)
    )
    snapshot = Snapshot(tenants=tenants, started=started, seconds=ctx.clock.now() - start)
    current = len(snapshot.current(sha))
    reasons = Counter(_reason(before.problem) for before in tenants if not before.sha)
    unreadable = sum(reasons.values())
    why = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common(SHOWN_REASONS))
    why += f"; {len(reasons) - SHOWN_REASONS} other reasons" if len(reasons) > SHOWN_REASONS else ""
    ctx.runner.log(f"snapshot: {len(tenants)} tenants read in {format_seconds(snapshot.seconds)} s: {current} already "
                   f"on {sha[:12]}, {len(tenants) - current - unreadable} on another build, {unreadable} unreadable"
                   + (f" ({why})" if why else ""))
    return snapshot


SHOWN_REASONS = 4  # reasons for unreadable tenants counted in the snapshot's log line; the rest are summed up


def _reason(problem: str) -> str:
    """What kind of problem a tenant's read had, without the details that make each one unique
    (``HTTP 503: <page title>`` → ``HTTP 503``), so a thousand unreadable tenants make a few counts."""
    return problem.split(": ", 1)[0][:60] or "no answer"


def _check_field(field: str, answers: Sequence[Answer | None]) -> None:
    """A configuration error when tenants answered 200 but not one answer held ``field``."""
    answered = [answer for answer in answers if answer is not None and (answer.reported or answer.held is not None)]
    if not answered or any(answer.reported for answer in answered):
        return
    keys = list(dict.fromkeys(key for answer in answered for key in answer.held or ()))[:HELD_KEYS]
    held = f"they hold {', '.join(keys)}" if keys else "none is a JSON object at that path"
    raise ConfigErrors([ConfigError(
        "verify-field", f"is {field!r}, which no tenant's answer holds: {counted(len(answered), 'tenant')} "
                        f"answered 200 without it before anything was deployed ({held}); name the field that holds "
                        "the running commit SHA (a dotted path such as build.git_sha)")])


@dataclass(frozen=True, kw_only=True)
class RollbackResult:
    tag: str
    build: str  # the commit rollback-tag's image was built from, which every tenant must report ('' unknown)
    tenants: tuple[str, ...]  # the tenants this run moved, asked to go back
    calls: tuple[CallResult, ...]
    verify: VerifyResult | None  # each back on `build`, or without one on its snapshot SHA (or the CP's word)
    rolled_back: tuple[str, ...]  # now on the build they go back to
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

    A row on target moved (the CP's, or the tenant's own word after the CP's answer was lost); a
    row off target (a quarantined straggler, a tenant still on its build after an unknown call)
    did not. A tenant without any row may have moved when its call got no readable answer (and
    the tenant could not be read: no verify-url) or a 200 that left it out — not when the CP
    refused the call, nor when it never reached the CP. A tenant that ran ``sha`` before the run
    (in the snapshot) is left where it is: going back would take it off the build it ran.
    """
    slugs: dict[str, None] = {}
    for call in calls:
        rows = call.known
        unsaid_may_have_moved = call.outcome_unknown or call.status == 200
        for slug in call.slugs if call.sent else ():
            row = rows.get(slug)
            moved = row.on_target if row is not None else unsaid_may_have_moved
            if moved and not (snapshot and sha_matches(snapshot.sha_of(slug), sha)):
                slugs[slug] = None
    return tuple(slugs)


def roll_back(tenants: Sequence[str], forward: Sequence[CallResult], snapshot: Snapshot | None, build: str,
              config: Config, ctx: Context, fleet: int = 0) -> RollbackResult:
    """Redeploy ``tenants`` with the rollback tag, batch by batch, then verify each is back.

    A tenant is back when it reports ``build`` (the commit rollback-tag's image was built from,
    when the registry said so), or without it the SHA its snapshot had; with neither, the CP's
    word. Every tenant asked is read, whatever its call answered: one that never left its build is
    back too. Nothing is sent to a tenant whose forward call may still be running (an unknown
    outcome): that call's worst case is waited out first. Every batch is tried (a failed one does
    not stop the others: the more goes back, the better); none starts without time for the CP's
    worst case, and a call cut short (the deadline, a cancellation) ends the rollback with what
    it has. Each call takes ``max-batch-size`` tenants, or the largest call of ``batch-size`` in a
    fleet of ``fleet``. Never raises for what the CP or a tenant does.
    """
    rollout, verify = config.rollout, config.verify
    tag = rollout.rollback_tag

    def expected(slug: str) -> str:
        return build or (snapshot.sha_of(slug) if snapshot else "")

    errors = _wait_out(tenants, forward, rollout, ctx)
    client = ControlPlaneClient(config.cp, replace(rollout, target_tag=tag), config.http, ctx)
    reader = BuildinfoClient(verify.field, verify.concurrency, ctx) if verify.url_template else None
    calls: list[CallResult] = []
    result_verify, internal = None, None
    try:
        if not errors:
            tenants_back = None if reader is None else Tenants(
                reader, verify.url_template, config.http.request_timeout, expected=expected,
                before=lambda slug: config.sha)
            redeployer = Redeployer(client, config.http.retry_delays, rollout.call_worst_case, config.run_key, ctx,
                                    tenants_back)
            size = rollout.largest_call(fleet or len(tenants))
            calls, errors = _redeploy_back(tuple(tenants), redeployer, rollout, ctx, size)
        if not cancel.requested() and reader is not None:
            try:
                result_verify = _verify_back(tenants, expected, config, ctx, reader)
            except DeployFailed as exc:  # cancelled while proving: what the calls did is still reported
                errors.append(f"rollback verify cut short: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bug: the calls made are recorded, then it is raised
                internal = exc
                errors.append(f"rollback verify: internal error ({type(exc).__name__}: {exc})")
    finally:
        client.close()
        if reader is not None:
            reader.close()
    back = {v.slug for v in result_verify.verdicts if v.state == Verdict.VERIFIED} if result_verify else set()
    returned = {slug for call in calls for slug, row in call.known.items() if row.on_target}
    back |= {slug for slug in returned if not expected(slug)}  # nothing to prove it by: the CP's word
    rolled_back = tuple(slug for slug in tenants if slug in back)
    missing = tuple(slug for slug in tenants if slug not in back)
    if missing:
        errors.append(f"{counted(len(missing), 'tenant')} not back on the build they ran before "
                      f"(roll back by hand): {listing(missing)}")
    error = "; ".join(errors)
    to = f"{tag} ({build[:12]})" if build else tag
    ctx.runner.log(f"rollback: {len(rolled_back)}/{len(tenants)} tenants back on {to}{'; ' if error else ''}{error}")
    return RollbackResult(tag=tag, build=build, tenants=tuple(tenants), calls=tuple(calls), verify=result_verify,
                          rolled_back=rolled_back, not_rolled_back=missing, error=error, internal_error=internal)


def _wait_out(tenants: Sequence[str], forward: Sequence[CallResult], rollout: RolloutSettings,
              ctx: Context) -> list[str]:
    """Wait until no forward call of these tenants can still be running (an unknown outcome: the
    CP may be deploying them right now); an error when ``timeout`` does not leave that long and a call."""
    asked = set(tenants)
    quiet = max((call.quiet_at for call in forward if call.outcome_unknown and asked.intersection(call.slugs)),
                default=0.0)
    wait = quiet - ctx.clock.now()
    if wait <= 0:
        return []
    if ctx.deadline.remaining() < wait + rollout.call_worst_case:
        error = (f"could not wait out the forward calls whose outcome is unknown ({wait:.0f} s more, the CP's "
                 f"worst case) and still make a call within timeout: nothing was sent back")
        ctx.runner.error(f"{error}; roll back by hand: {listing(tuple(tenants))}", title="rollback")
        return [error]
    ctx.runner.log(f"rollback: waiting {wait:.0f} s until no forward call with an unknown outcome can still be "
                   "running (its tenants must not be deployed twice at once)")
    ctx.deadline.sleep(wait, "waiting out a forward call before the rollback")
    return []


def _redeploy_back(tenants: tuple[str, ...], client: Redeployer, rollout: RolloutSettings, ctx: Context,
                   size: int) -> tuple[list[CallResult], list[str]]:
    """The rollback's CP calls, and what went wrong in a few words (the tenants are listed once, later):
    the first failed call and how many failed, then why the rollback stopped early, if it did."""
    batches = [tenants[i:i + size] for i in range(0, len(tenants), size)]
    calls: list[CallResult] = []
    failed: list[str] = []
    stopped = ""
    for number, slugs in enumerate(batches, start=1):
        label = f"rollback {number}/{len(batches)}"
        left = ctx.deadline.remaining()
        if left < rollout.call_worst_case:
            stopped = (f"could not start {label}: {left:.0f} s left of timeout, less than one call's worst case "
                       f"({rollout.call_worst_case:g} s)")
            ctx.runner.error(f"{stopped}; roll back by hand: {listing(tenants[(number - 1) * size:])}",
                             title="rollback")
            break
        ctx.runner.log(f"{label}: redeploying {', '.join(slugs)} with {rollout.rollback_tag}")
        started = ctx.clock.now()
        try:
            call = client.call(label, slugs, len(slugs))  # put back all it can
        except DeployFailed as exc:  # cut short in flight: the CP may have moved these tenants
            calls.append(client.client.unanswered(label, slugs, started, str(exc)))
            stopped = f"{label} cut short: {exc}"
            break
        calls.append(call)
        if not call.ok:
            failed.append(f"{label} {call.failure}: {call.error}")
    errors = [failed[0] if len(failed) == 1 else f"{len(failed)} rollback calls went wrong, the first: {failed[0]}"
              ] if failed else []
    return calls, errors + ([stopped] if stopped else [])


def _verify_back(tenants: Sequence[str], expected: Callable[[str], str], config: Config, ctx: Context,
                 reader: BuildinfoClient) -> VerifyResult | None:
    """Every tenant asked, each read until it reports the build it goes back to, all in one stage;
    ``None`` when no tenant has a build to prove it by."""
    builds = {slug: build for slug in tenants if (build := expected(slug))}
    if not builds:
        return None
    rows = [TenantRow(slug) for slug in tenants if slug in builds]
    return verify_tenants(config.verify, config.http, "", rows, ctx, reader=reader, label="rollback verify",
                          expected=builds)
