"""The control-plane client: enumerate the fleet, redeploy a scoped set of tenants.

Two read budgets, because the CP has two speeds: enumeration (a dry run) answers at once and
gets ``request-timeout``; a real redeploy answers only after its slowest tenant, up to the CP's
per-tenant timeout plus health settle, and gets ``rollout-timeout``: the fast budget would give
up before the CP could report a dead tenant, losing every row of the call. Transient failures
are retried by the session (see :mod:`deploy.http`); what is left is turned into a
:class:`CallResult` the rollout can reason about, with the CP's own error text. A body of the
wrong shape is a :class:`CPResponseError`, never a traceback.

**A call's answer is about its own tenants.** A scoped call (``only_slugs``) believes only the
rows about the tenants it asked for: a row about any other tenant is ignored — counted, named in
one log line per call and in the report (``ignored_rows``), never kept. The filter runs while the
answer is parsed (:func:`parse_answer`'s ``asked``), so a 32 MiB answer of rows about unknown
tenants costs their parse, not their memory. The enumeration asks about the whole fleet: every
row it returns is in the call. **Duplicates: the worst row counts.** When a call's answer holds
several rows for one tenant, the one kept is the worst — off target beats on target, unhealthy
beats healthy, a row with an error beats one without; between rows equally bad, the first — so
the canary, the coverage gate, the rollback and the report all read the same one row, and a
tenant counts as on target only if every row about it says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from typing import Any

from deploy import http
from deploy.context import Context
from deploy.domain import TENANT_RE
from deploy.errors import DeployFailed
from deploy.runner import counted, listing
from deploy.settings import ControlPlaneSettings, HttpSettings, RolloutSettings

ANSWER_CAP = 32 * 1024 * 1024  # a 50,000-tenant enumeration is about 10 MiB of rows


class CPResponseError(DeployFailed):
    """The CP answered something this client cannot read."""


class CallState(StrEnum):
    ANSWERED = "answered"  # a readable 200: its rows say what happened
    FAILED = "failed"  # the CP answered with an error (non-200, or ok: false)
    UNKNOWN = "unknown"  # sent, but no readable answer: the CP may or may not have deployed


@dataclass(frozen=True)
class TenantRow:
    """One tenant's line in a CP answer. ``None`` means an older CP left the field out.

    Only the slug is positional: the rest are runs of same-typed fields, easy to swap by position.
    """

    slug: str
    _: KW_ONLY
    phase: str = ""
    ssm_status: str = ""
    ssm_exit_code: int | None = None
    healthz_ok: bool | None = None
    verified_on_target: bool | None = None
    running_image: str = ""
    error: str = ""

    @property
    def dry_run(self) -> bool:
        return self.ssm_status == "DryRun"

    @property
    def on_target(self) -> bool:
        """A missing ``verified_on_target`` counts as verified (older CPs); dry runs prove nothing."""
        return not self.dry_run and self.verified_on_target is not False

    @property
    def healthy(self) -> bool:
        return self.healthz_ok is not False


@dataclass(frozen=True, kw_only=True)
class CallResult:
    """One CP call after retries: what was asked, what came back, how long it took."""

    label: str  # "enumerate", "canary", "batch 2/5"
    slugs: tuple[str, ...]  # tenants asked for (empty: the whole fleet)
    ok: bool
    rows: tuple[TenantRow, ...]
    status: int | None  # None: no HTTP answer at all (timeout, dropped connection)
    error: str  # why it failed (the CP's text or the transport failure); with ok, the CP's note if any
    started: float  # seconds since the run started
    seconds: float
    state: CallState = CallState.ANSWERED
    rejected: tuple[str, ...] = ()  # slugs in the answer that cannot be tenant names (shown escaped)
    ignored: int = 0  # rows about tenants outside the call, not believed (see the module doc)

    @property
    def outcome_unknown(self) -> bool:
        return self.state is CallState.UNKNOWN


class ControlPlaneClient:
    heartbeat_seconds = 30.0  # a line while a call is in flight: a silent 10-minute step looks hung

    def __init__(self, cp: ControlPlaneSettings, rollout: RolloutSettings, http_settings: HttpSettings,
                 ctx: Context) -> None:
        self.settings = cp
        self.rollout = rollout
        self.ctx = ctx
        self._calling = ""  # which call and tenants a retry line is about
        policy = http_settings.policy(cap=ANSWER_CAP, headers={"Authorization": f"Bearer {cp.token}"})
        self.http = ctx.client(policy, on_retry=self._log_retry)

    def enumerate(self) -> CallResult:
        """The live fleet, by dry run: read-only, so it may come before the gates."""
        body = self._body(dry_run=True, max_stragglers=self.rollout.max_stragglers)
        return self._call("enumerate", (), body, self.http.policy.budget)

    def redeploy(self, label: str, slugs: Sequence[str], max_stragglers: int) -> CallResult:
        """Redeploy ``slugs`` concurrently; ``max_stragglers`` is the fleet-wide tolerance left."""
        body = self._body(
            dry_run=False, max_stragglers=max_stragglers, only_slugs=list(slugs), batch_size=len(slugs)
        )
        return self._call(label, tuple(slugs), body, self.settings.rollout_timeout)

    def _body(self, dry_run: bool, max_stragglers: int, **scope: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "target_tag": self.rollout.target_tag,
            "soak_seconds": 0,
            "batch_size": self.rollout.batch_size,
            "max_stragglers": max_stragglers,
            "dry_run": dry_run,
            "confirm": True,
        }
        body.update(scope)
        return body

    def _log_retry(self, line: str) -> None:
        self.ctx.runner.log(f"  ↻ {self._calling}: {line}")

    def _call(self, label: str, slugs: tuple[str, ...], body: dict[str, Any], budget: float) -> CallResult:
        """One call after retries. A call that got no readable answer is ``UNKNOWN``, never raised:
        the CP may have deployed its tenants, so the report must say so."""
        self.ctx.deadline.check(f"starting the {label} call")
        self._calling = f"{label} ({', '.join(slugs)})" if slugs else label
        started = self.ctx.clock.now()
        try:
            with self._heartbeat(label, budget):
                reply = self.http.request("POST", self.settings.redeploy_url, json=body, budget=budget)
        except http.TransportError as exc:
            why = f"HTTP 504 (synthetic): {exc}" if exc.timed_out else f"no answer: {exc}"
            return self._result(label, slugs, started, None, why, CallState.UNKNOWN)
        if reply.status != 200:
            error = f"HTTP {reply.status}: {reply.error_text()}"
            state = CallState.UNKNOWN if reply.status in http.TRANSIENT_STATUSES else CallState.FAILED
            return self._result(label, slugs, started, reply.status, error, state)
        try:
            answer = parse_answer(reply.body, asked=frozenset(slugs) if slugs else None)
        except CPResponseError as exc:
            return self._result(label, slugs, started, 200, f"unreadable answer: {exc}", CallState.UNKNOWN)
        if answer.ignored:
            shown = listing(answer.ignored_names, 5) + (", …" if answer.ignored > len(answer.ignored_names) else "")
            self.ctx.runner.log(f"{label}: ignored {counted(answer.ignored, 'row')} about tenants outside the call "
                                f"({shown}): a call's answer is about its own tenants")
        state = CallState.ANSWERED if answer.ok else CallState.FAILED
        return self._result(label, slugs, started, 200, answer.error, state, ok=answer.ok, rows=answer.rows,
                            rejected=answer.rejected, ignored=answer.ignored)

    @contextmanager
    def _heartbeat(self, label: str, budget: float) -> Iterator[None]:
        """Every :attr:`heartbeat_seconds` of real time, say the call is still waiting, and for how long."""
        stop, started = threading.Event(), time.monotonic()

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                self.ctx.runner.log(f"{label}: waiting for the CP, {time.monotonic() - started:.0f} s of "
                                f"{budget:g} s read budget")

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    def _result(self, label: str, slugs: tuple[str, ...], started: float, status: int | None, error: str,
                state: CallState, ok: bool = False, rows: tuple[TenantRow, ...] = (),
                rejected: tuple[str, ...] = (), ignored: int = 0) -> CallResult:
        now = self.ctx.clock.now()
        return CallResult(label=label, slugs=slugs, ok=ok, rows=rows, status=status, error=error,
                          started=started - self.ctx.deadline.start, seconds=now - started, state=state,
                          rejected=rejected, ignored=ignored)

    def unanswered(self, label: str, slugs: tuple[str, ...], started: float, why: str) -> CallResult:
        """A call interrupted in flight (the deadline during a retry wait, a cancellation)."""
        return self._result(label, slugs, started, None, f"interrupted in flight: {why}", CallState.UNKNOWN)


PROOF_FIELDS = ("healthz_ok", "verified_on_target")
TEXT_FIELDS = ("phase", "ssm_status", "running_image", "error")


@dataclass(frozen=True, kw_only=True)
class ParsedAnswer:
    """A 200 answer as this client believes it (see the module doc)."""

    ok: bool
    rows: tuple[TenantRow, ...]  # one per tenant of the call, in the order they first appear: the worst row
    error: str
    rejected: tuple[str, ...] = ()  # names in the enumeration that cannot be tenants (shown escaped)
    ignored: int = 0  # rows about tenants outside a scoped call
    ignored_names: tuple[str, ...] = ()  # the first few of those tenants (shown escaped)


IGNORED_NAMES = 5  # tenants named in the log line about a call's out-of-call rows


class _Ignored:
    """What a row about a tenant outside the call is parsed into: one shared object, nothing kept."""

    __slots__ = ()


_IGNORED = _Ignored()


def parse_answer(content: bytes, asked: frozenset[str] | None = None) -> ParsedAnswer:
    """The answer of a 200, or :class:`CPResponseError`.

    ``asked``: the tenants of a scoped call. An object with a ``slug`` outside it becomes one shared
    marker as soon as it is parsed, before the next row is read: the memory of an answer of 1.45
    million rows about unknown tenants is a list of references to it (``None``: the enumeration,
    every row is in the call).
    """
    names: list[str] = []
    try:
        doc = http.parse_json(content, None if asked is None else _keeping(asked, names))
    except http.UnusableBody as exc:
        text = http.error_text(content, 120)
        raise CPResponseError(f"the CP answered 200 with a body that is {exc}: {text!r}") from None
    if not isinstance(doc, dict):
        raise CPResponseError(f"the CP answered JSON that is not an object: {type(doc).__name__}")
    ok = doc.get("ok")
    if not isinstance(ok, bool):
        raise CPResponseError(f"the CP's answer has no boolean 'ok' (got {ok!r:.80})")
    results = doc.get("results", [])
    if not isinstance(results, list):
        raise CPResponseError(f"the CP's 'results' is not a list: {type(results).__name__}")
    parsed = [_row(i, raw) for i, raw in enumerate(results) if raw is not _IGNORED]
    ignored = len(results) - len(parsed)
    rows = _worst_rows(row for row in parsed if TENANT_RE.match(row.slug))
    rejected = tuple(http.compact_json(row.slug, 80) for row in parsed if not TENANT_RE.match(row.slug))
    error = doc.get("error") or ""
    if not ok and not error:
        error = "the CP answered ok: false without an error message"
    return ParsedAnswer(ok=ok, rows=rows, error=error if isinstance(error, str) else http.compact_json(error),
                        rejected=rejected, ignored=ignored, ignored_names=tuple(names))


def _keeping(asked: frozenset[str], names: list[str]) -> http.PairsHook:
    """The JSON object builder of a scoped call's answer: an object about a tenant outside ``asked``
    becomes :data:`_IGNORED` (the first few of those tenants named in ``names``)."""
    def build(pairs: list[tuple[str, Any]]) -> Any:
        for key, value in pairs:
            if key == "slug" and isinstance(value, str) and value and value not in asked:
                if len(names) < IGNORED_NAMES:
                    names.append(http.compact_json(value, 80))
                return _IGNORED
        return dict(pairs)

    return build


def badness(row: TenantRow) -> tuple[bool, bool, bool]:
    """How bad a row is, for choosing among a tenant's duplicate rows: off target, then unhealthy,
    then an error (a higher tuple is worse)."""
    return not row.on_target, not row.healthy, bool(row.error)


def _worst_rows(rows: Iterable[TenantRow]) -> tuple[TenantRow, ...]:
    """One row per tenant, where it first appears: the worst of its rows (the first among equals)."""
    kept: dict[str, TenantRow] = {}
    for row in rows:
        first = kept.get(row.slug)
        if first is None or badness(row) > badness(first):
            kept[row.slug] = row
    return tuple(kept.values())


def _row(index: int, raw: Any) -> TenantRow:
    """One tenant's row. Only ``slug`` is strict; an odd optional field must not discard the rows
    of a batch that really deployed, so it is read leniently — and a proof that is not a boolean
    proves nothing (it counts as false, and the row's error says why)."""
    if not isinstance(raw, dict):
        raise CPResponseError(f"the CP's results[{index}] is not an object: {raw!r:.80}")
    raw = {key: value for key, value in raw.items() if value is not _IGNORED}  # a nested object about another
    slug = raw.get("slug")
    if not isinstance(slug, str) or not slug:
        raise CPResponseError(f"the CP's results[{index}] has no string 'slug' (got {slug!r:.80})")
    values: dict[str, Any] = {}
    notes = []
    for name in PROOF_FIELDS:
        value = raw.get(name)
        if value is not None:
            values[name] = value is True
            if not isinstance(value, bool):
                notes.append(f"the CP sent {name}={value!r:.40}, not a boolean: taken as false")
    for name in TEXT_FIELDS:
        value = raw.get(name)
        if value is not None:
            values[name] = value if isinstance(value, str) else http.compact_json(value)
    code = raw.get("ssm_exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        values["ssm_exit_code"] = code
    values["error"] = "; ".join(filter(None, [values.get("error", ""), *notes]))
    return TenantRow(slug=slug, **values)
