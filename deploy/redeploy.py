"""One deploy call, as the CP and then the tenants settle it: its attempts, the waits between them,
and what the tenants say when the CP's answer is lost.

The CP's answer is a claim, and a lost answer is no claim at all: a 500, a gateway's 504, a read
timeout or a cut connection may come after the CP deployed some of the call's tenants, or while
it is still deploying them. Retrying such a call at once, or rolling it back, would deploy those
tenants twice at the same time, and a report that said "moved nothing" would be false. So:

- **One key per call.** Every attempt of a call — a retry re-scoped to fewer tenants included —
  carries the same ``Idempotency-Key`` (:func:`call_key`: the run and its attempt, the call's
  label, the tag and the tenants it first asked for), so a CP that honours it replays the original
  answer (waiting for it if it still runs) instead of deploying a tenant a second time while the
  first deploy may still run. (The IETF draft binds a key to one payload, and a CP may refuse the
  re-scoped retry with a 4xx: after an unknown attempt, a refusal is settled by the tenants too.)
- **Answered or refused is over.** A readable 200 (its rows say what happened, ``ok: false``
  included) and a 3xx or 4xx (the CP refused: nothing was done) are the call's result.
- **Not sent is retried.** A failure that shows the request never reached the CP (refused,
  name not resolved, TLS, a connect that failed) or a ``503`` in which the CP says it did not
  start (``ok: false``) did nothing: it is retried after its ``retry-delays`` wait.
- **Unknown waits, then asks the tenants.** Any other failure: nothing more is sent to the
  call's tenants until one CP worst case (``cp-tenant-timeout + cp-settle-seconds``) has passed
  since the attempt ended — so a CP that runs past its declared worst case while the client
  waits for its answer is covered too — and then the tenants are read through ``verify-url``:
  those reporting the build shipped, on their own word, and a retry (when one is left) goes to
  the others only. With no retry left, the tenants' word settles the call:
  on the build → shipped; still on the build they ran before → not moved; unreadable → unknown.
- **Without verify-url** there is nothing to read: a retry repeats the whole call after the
  same wait, and the tenants of a call that ends unknown may have moved (a rollback sends them
  back, after waiting out the call).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from deploy.buildinfo import Answer, BuildinfoClient, buildinfo_url, format_seconds
from deploy.context import Context
from deploy.controlplane import CallResult, CallState, ControlPlaneClient, TenantRow
from deploy.domain import sha_matches
from deploy.runner import counted, listing

READ_FROM_TENANT = "read from the tenant"  # the phase of a row that is a tenant's word, not the CP's


def call_key(run_key: str, label: str, tag: str, scope: Sequence[str]) -> str:
    """The ``Idempotency-Key`` of one call of one run: the run, the call's label, and a digest of
    what it first asks (the tag and the tenants). Every retry of the call carries it, re-scoped or
    not, so a CP that honours it never deploys a tenant twice at once; two jobs of one workflow
    run that call one CP with different tenants never share a key."""
    digest = hashlib.sha256("\n".join((tag, *scope)).encode()).hexdigest()[:12]
    return f"{run_key}:{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}:{digest}"


@dataclass(frozen=True)
class Tenants:
    """How a call's tenants are asked what they run, and what their answers mean.

    ``expected(slug)``: the build the call puts on the tenant; ``before(slug)``: the build it ran
    before the call ('' when unknown)."""

    reader: BuildinfoClient
    url_template: str
    request_timeout: float
    expected: Callable[[str], str]
    before: Callable[[str], str]


class Redeployer:
    """Makes deploy calls with their retries, keys and waits (see the module doc)."""

    def __init__(self, client: ControlPlaneClient, retry_delays: Sequence[float], worst_case: float, key: str,
                 ctx: Context, tenants: Tenants | None = None) -> None:
        self.client, self.retry_delays, self.worst_case = client, tuple(retry_delays), worst_case
        self.key, self.ctx, self.tenants = key, ctx, tenants

    def call(self, label: str, slugs: tuple[str, ...], tolerance: int) -> CallResult:
        """The call's result after its retries: the CP's rows, and the tenants' word where the CP's was lost."""
        clock, runner = self.ctx.clock, self.ctx.runner
        scope = slugs
        first = clock.now()
        shipped: dict[str, TenantRow] = {}  # tenants that reported the build after an answer was lost
        attempts, unknown_ended = 0, None
        key = call_key(self.key, label, self.client.rollout.target_tag, slugs)  # one key for every attempt
        while True:
            attempt = self.client.redeploy(label, scope, max_stragglers=tolerance, key=key)
            attempts += 1
            ended = clock.now()
            if attempt.state is CallState.ANSWERED or (attempt.state is CallState.FAILED and unknown_ended is None):
                return self._result(attempt, slugs, shipped, first, attempts, quiet_at=ended)
            if attempt.state is CallState.FAILED:  # refused now, but an earlier attempt may have landed
                break
            unknown_ended = ended if attempt.outcome_unknown else unknown_ended
            if attempts > len(self.retry_delays):
                break
            wait = self._wait_before_retry(attempt, self.retry_delays[attempts - 1])
            left = self.ctx.deadline.remaining()
            if left < wait + self.worst_case:
                attempt = replace(attempt, error=f"{attempt.error}; not retried: {left:.0f} s left of the overall "
                                                 f"timeout (input `timeout`), less than {wait + self.worst_case:g} s "
                                                 "to wait and call again")
                break
            runner.log(f"  ↻ {label}: {attempt.error}; {self._why_wait(attempt, wait)}")
            self.ctx.deadline.sleep(wait, f"waiting to retry {label}")
            if attempt.outcome_unknown and self.tenants is not None:  # the wait was the CP's worst case
                shipped.update((slug, row) for slug, row in self._read(label, scope, final=True).items()
                               if row.verified_on_target)
                scope = tuple(slug for slug in scope if slug not in shipped)
                if not scope:
                    return self._result(attempt, slugs, shipped, first, attempts, quiet_at=clock.now(),
                                        state=CallState.ANSWERED)
            runner.log(f"  ↻ {label}: attempt {attempts + 1}/{len(self.retry_delays) + 1} for {', '.join(scope)}")
        if unknown_ended is None:  # no attempt reached the CP: nothing to wait out or ask
            return self._result(attempt, slugs, shipped, first, attempts, quiet_at=ended)
        quiet_at = unknown_ended + self.worst_case
        settled = self._settle(label, scope, quiet_at) if self.tenants is not None else {}
        every_one_moved = all(slug in settled and settled[slug].verified_on_target for slug in scope)
        return self._result(attempt, slugs, {**shipped, **settled}, first, attempts, quiet_at=quiet_at,
                            state=CallState.ANSWERED if every_one_moved else CallState.UNKNOWN)

    def _wait_before_retry(self, attempt: CallResult, delay: float) -> float:
        """``retry-delays`` after an attempt that did nothing; the CP's worst case, at least, after one
        that may still run (an unknown outcome) or that the CP says still runs (409: the draft's
        answer to a key whose request is in progress)."""
        if attempt.state is CallState.NOT_SENT and attempt.status != 409:
            return delay
        return max(delay, self.worst_case)

    def _why_wait(self, attempt: CallResult, wait: float) -> str:
        if attempt.status == 409:
            return f"the CP says the call is still running: asking again in {format_seconds(wait)} s (its worst case)"
        if attempt.state is CallState.NOT_SENT:
            return f"it did not reach the CP; retrying in {wait:g} s"
        asks = "then reading its tenants and retrying the others" if self.tenants else \
            "then retrying it under the same Idempotency-Key"
        return (f"the outcome is unknown (the CP may still be deploying): waiting {format_seconds(wait)} s, "
                f"the CP's worst case, {asks}")

    def _settle(self, label: str, scope: tuple[str, ...], quiet_at: float) -> dict[str, TenantRow]:
        """The last word on an unknown call: wait until it cannot be running any more (as far as
        ``timeout`` allows), then ask its tenants."""
        clock, deadline = self.ctx.clock, self.ctx.deadline
        wait = max(quiet_at - clock.now(), 0.0)
        waited = wait <= deadline.remaining() - self.tenants_read_budget()
        if wait and waited:
            self.ctx.runner.log(f"{label}: outcome unknown: waiting {format_seconds(wait)} s (the CP's worst case) "
                                "before its tenants say what it did")
            deadline.sleep(wait, f"waiting out {label}")
        return self._read(label, scope, final=waited)

    def tenants_read_budget(self) -> float:
        return self.tenants.request_timeout if self.tenants else 0.0

    def _read(self, label: str, scope: Sequence[str], final: bool) -> dict[str, TenantRow]:
        """One round of the call's tenants: a row for each that reports the call's build, and —
        when the call is over (``final``) — one for each still on the build it ran before."""
        tenants = self.tenants
        assert tenants is not None
        answers = tenants.reader.read_all([buildinfo_url(tenants.url_template, slug) for slug in scope],
                                          tenants.request_timeout, self.ctx.deadline)
        rows: dict[str, TenantRow] = {}
        for slug, answer in zip(scope, answers, strict=True):
            row = _row_from(slug, answer, tenants.expected(slug), tenants.before(slug), final)
            if row is not None:
                rows[slug] = row
        moved = [slug for slug, row in rows.items() if row.verified_on_target]
        stayed = [slug for slug, row in rows.items() if not row.verified_on_target]
        unknown = [slug for slug in scope if slug not in rows]
        self.ctx.runner.log(f"{label}: its tenants say: {counted(len(moved), 'tenant')} on the build "
                            f"({listing(moved) or 'none'}), {len(stayed)} still on the build before "
                            f"({listing(stayed) or 'none'}), {len(unknown)} unknown ({listing(unknown) or 'none'})")
        return rows

    def _result(self, attempt: CallResult, slugs: tuple[str, ...], settled: Mapping[str, TenantRow], first: float,
                attempts: int, quiet_at: float, state: CallState | None = None) -> CallResult:
        """The call as a whole: every tenant asked, from its first attempt on, the last attempt's
        answer, and the tenants' word where an earlier answer was lost."""
        now, began = self.ctx.clock.now(), self.ctx.deadline.start
        merged = replace(attempt, slugs=slugs, settled=tuple(settled.values()), attempts=attempts, quiet_at=quiet_at,
                         state=state or attempt.state, started=first - began, seconds=now - first)
        if state is CallState.ANSWERED and attempt.state is not CallState.ANSWERED:
            merged = replace(merged, ok=True, error=f"answer lost ({attempt.error}); every tenant read on the build")
        return merged


def _row_from(slug: str, answer: Answer | None, expected: str, before: str, final: bool) -> TenantRow | None:
    """A tenant's answer as a row of its call: on the call's build (shipped), or, once the call is
    over, still on the build it ran before (not moved); ``None`` when it says neither."""
    if answer is None or not answer.reported:
        return None
    if expected and sha_matches(answer.reported, expected):
        return TenantRow(slug, phase=READ_FROM_TENANT, verified_on_target=True,
                         error=f"the CP's answer was lost; the tenant reports {answer.shown[:12]}")
    if final and before and sha_matches(answer.reported, before):
        return TenantRow(slug, phase=READ_FROM_TENANT, verified_on_target=False,
                         error=f"the CP's answer was lost; the tenant still runs {answer.shown[:12]}, the build "
                               "before the call, after the CP's worst case")
    return None
