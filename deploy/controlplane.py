"""The control-plane client: enumerate the fleet, redeploy a scoped set of tenants.

Two read budgets, because the CP has two speeds: enumeration (a dry run) answers at once and
gets ``request-timeout``; a real redeploy answers only after its slowest tenant, up to the CP's
per-tenant timeout plus health settle, and gets ``rollout-timeout``: the fast budget would give
up before the CP could report a dead tenant, losing every row of the call. A body of the wrong
shape is a :class:`CPResponseError`, never a traceback.

Enumeration is read-only, so its transient failures are retried by the session (see
:mod:`deploy.http`). A deploy POST is sent once here and classified (:class:`CallState`): what
may be retried, when, and for which tenants is :mod:`deploy.redeploy`'s decision, because a
retry sent while the first attempt still runs on the CP would deploy its tenants twice at once.
Every deploy POST carries the call's ``Idempotency-Key``.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, replace
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
    """What a deploy call's answer says the CP did."""

    ANSWERED = "answered"  # a readable 200: its rows say what happened
    FAILED = "failed"  # the CP halted the call (ok: false, its rows count) or refused it (3xx, 4xx: nothing done)
    UNKNOWN = "unknown"  # sent, but no readable answer (a 5xx, a timeout, a cut connection): the tenants decide
    NOT_SENT = "not-sent"  # it never reached the CP, or the CP said it did not start it (503 ok: false): nothing done


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
    settled: tuple[TenantRow, ...] = ()  # the tenants' own word, read after the CP's answer was lost
    attempts: int = 1  # POSTs sent for this call (retries included)
    quiet_at: float = 0.0  # clock time after which no attempt of this call can still run on the CP

    @property
    def outcome_unknown(self) -> bool:
        return self.state is CallState.UNKNOWN

    @property
    def sent(self) -> bool:
        """Whether the CP may have acted on this call at all."""
        return self.state is not CallState.NOT_SENT

    @property
    def failure(self) -> str:
        """How the call went wrong, in a few words: ``outcome unknown``, ``failed``, or ``never reached the CP``."""
        if self.outcome_unknown:
            return "outcome unknown"
        return "failed" if self.sent else "never reached the CP (nothing was deployed)"

    @property
    def known(self) -> dict[str, TenantRow]:
        """What is known of each tenant of the call: the CP's row, or where the CP's answer was
        lost, what the tenant itself reported (:attr:`settled`)."""
        return {row.slug: row for row in (*self.settled, *self.rows)}


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
        self.deploys = ctx.client(replace(policy, retry_delays=()))  # one POST per attempt: see deploy.redeploy

    def enumerate(self) -> CallResult:
        """The live fleet, by dry run: read-only, so it may come before the gates."""
        body = self._body(dry_run=True, max_stragglers=self.rollout.max_stragglers)
        return self._call("enumerate", (), body, self.http.policy.budget)

    def close(self) -> None:
        self.http.close()
        self.deploys.close()

    def redeploy(self, label: str, slugs: Sequence[str], max_stragglers: int, key: str = "") -> CallResult:
        """One POST redeploying ``slugs`` concurrently, not retried; ``max_stragglers`` is the
        fleet-wide tolerance left, ``key`` the call's ``Idempotency-Key`` (the same for every attempt)."""
        body = self._body(
            dry_run=False, max_stragglers=max_stragglers, only_slugs=list(slugs), batch_size=len(slugs)
        )
        headers = {"Idempotency-Key": idempotency_header(key)} if key else {}
        return self._call(label, tuple(slugs), body, self.settings.rollout_timeout, self.deploys, headers)

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

    def _call(self, label: str, slugs: tuple[str, ...], body: dict[str, Any], budget: float,
              client: http.Client | None = None, headers: dict[str, str] | None = None) -> CallResult:
        """One call. A call that got no readable answer is ``UNKNOWN``, never raised: the CP may
        have deployed its tenants, so the report must say so."""
        self.ctx.deadline.check(f"starting the {label} call")
        self._calling = f"{label} ({', '.join(slugs)})" if slugs else label
        started = self.ctx.clock.now()
        try:
            with self._heartbeat(label, budget):
                reply = (client or self.http).request("POST", self.settings.redeploy_url, json=body, budget=budget,
                                                      headers=headers or {})
        except http.TransportError as exc:
            why = f"HTTP 504 (synthetic): {exc}" if exc.timed_out else f"no answer: {exc}"
            return self._result(label, slugs, started, None, why, CallState.UNKNOWN if exc.sent else CallState.NOT_SENT)
        if reply.status != 200:
            error = f"HTTP {reply.status}: {reply.error_text()}"
            return self._result(label, slugs, started, reply.status, error, _state_of(reply))
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
        """A call interrupted in flight (the deadline during a retry wait, a cancellation): it may
        still run on the CP for one worst case."""
        result = self._result(label, slugs, started, None, f"interrupted in flight: {why}", CallState.UNKNOWN)
        return replace(result, quiet_at=self.ctx.clock.now() + self.rollout.call_worst_case)


def _state_of(reply: http.Reply) -> CallState:
    """What a non-200 says the CP did: a 3xx or 4xx refused the call (nothing done), except a 409,
    the draft's "a request with this key is still in progress" (this one did nothing; wait and ask
    again); a 503 whose JSON says ``ok: false`` is the CP itself saying it did not start (busy,
    locked); any other
    answer — a 500 from the CP, a gateway's 502 or 504, an HTML page — may come after some
    tenants were deployed: the outcome is unknown."""
    if reply.status == 409:  # the IETF draft's answer to a key whose first request is still in progress
        return CallState.NOT_SENT
    if reply.status < 500:
        return CallState.FAILED
    if reply.status == 503:
        try:
            doc = reply.json()
        except http.UnusableBody:
            doc = None
        if isinstance(doc, dict) and doc.get("ok") is False:
            return CallState.NOT_SENT
    return CallState.UNKNOWN


def idempotency_header(key: str) -> str:
    """``key`` as the Idempotency-Key header's value: a Structured Field string (RFC 8941), as
    the IETF httpapi draft specifies: quoted, with ``"`` and ``\\`` escaped."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


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


class _Kept:
    """What a row about a tenant of the call is parsed into: the first row of that tenant with that
    :func:`badness`, shared by every later one like it (see :func:`_keeping`)."""

    __slots__ = ("row",)

    def __init__(self, row: TenantRow) -> None:
        self.row = row


def parse_answer(content: bytes, asked: frozenset[str] | None = None) -> ParsedAnswer:
    """The answer of a 200, or :class:`CPResponseError`.

    ``asked``: the tenants of a scoped call (``None``: the enumeration, every row is in the call).
    Rows are read while json parses them (:func:`_keeping`), so what an answer costs is bounded by
    the call, not by the answer: a row about a tenant outside the call becomes one shared marker,
    and the rows of one tenant of the call at most a few shared ones. An answer of 1.45 million
    rows, about unknown tenants or all about one tenant, is a list of references to them.
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
    kept: dict[str, TenantRow] = {}  # one row per tenant, where it first appears: the worst of its rows
    rejected: dict[str, None] = {}
    ignored = 0
    for index, raw in enumerate(results):
        if raw is _IGNORED:
            ignored += 1
            continue
        row = raw.row if isinstance(raw, _Kept) else _row(index, raw)
        if not TENANT_RE.match(row.slug):
            rejected[http.compact_json(row.slug, 80)] = None
            continue
        first = kept.get(row.slug)
        if first is None or badness(row) > badness(first):  # worse, or the first: equals keep the first
            kept[row.slug] = row
    error = doc.get("error") or ""
    if not ok and not error:
        error = "the CP answered ok: false without an error message"
    return ParsedAnswer(ok=ok, rows=tuple(kept.values()), error=error if isinstance(error, str) else
                        http.compact_json(error), rejected=tuple(rejected), ignored=ignored, ignored_names=tuple(names))


def _keeping(asked: frozenset[str], names: list[str]) -> http.PairsHook:
    """The JSON object builder of a scoped call's answer (innermost objects first).

    An object whose ``slug`` is outside ``asked`` becomes :data:`_IGNORED` (the first few of those
    tenants named in ``names``). One whose ``slug`` is in the call becomes a :class:`_Kept`, one per
    tenant and :func:`badness`: the duplicates of a row share it, so a tenant costs at most eight
    objects however many rows the answer repeats about it. Only those in ``results`` are rows
    (:func:`parse_answer`); an object nested in a row is none, whatever its ``slug``.
    """
    shared: dict[tuple[str, tuple[bool, bool, bool]], _Kept] = {}
    by_kind: dict[tuple[str, int, int, bool, bool], _Kept] = {}  # at most 64 per tenant: see _kind

    def build(pairs: list[tuple[str, Any]]) -> Any:
        slug = None
        for key, value in pairs:  # the last one counts, as in a dict
            if key == "slug":
                slug = value
        if not isinstance(slug, str) or not slug:
            return dict(pairs)  # not a row (or a malformed one: parse_answer says so)
        if slug not in asked:
            if len(names) < IGNORED_NAMES:
                names.append(http.compact_json(slug, 80))
            return _IGNORED
        raw = {key: value for key, value in pairs if not isinstance(value, (_Ignored, _Kept))}  # nested: no row
        kind = _kind(slug, raw)
        kept = by_kind.get(kind)
        if kept is None:  # a row unlike the ones before it: read it (a repeat costs a lookup, not a row)
            row = _row(0, raw)
            kept = by_kind[kind] = shared.setdefault((slug, badness(row)), _Kept(row))
        return kept

    return build


def _proof_state(value: Any) -> int:
    return 0 if value is None else 1 if value is True else 2 if value is False else 3


def _kind(slug: str, raw: dict[str, Any]) -> tuple[str, int, int, bool, bool]:
    """What :func:`badness` of ``_row(raw)`` depends on, read straight from the JSON object: two rows
    of one kind are equally bad. Each proof field is absent, true, false or not a boolean (which
    ``_row`` takes as false and notes in the error); a dry run is ``ssm_status`` ``"DryRun"``; an
    error is any ``error`` value but none or ''. Bounded (64 kinds a tenant), unlike the rows."""
    return (slug, _proof_state(raw.get("verified_on_target")), _proof_state(raw.get("healthz_ok")),
            raw.get("ssm_status") == "DryRun", raw.get("error") not in (None, ""))


def badness(row: TenantRow) -> tuple[bool, bool, bool]:
    """How bad a row is, for choosing among a tenant's duplicate rows: off target, then unhealthy,
    then an error (a higher tuple is worse)."""
    return not row.on_target, not row.healthy, bool(row.error)


def _row(index: int, raw: Any) -> TenantRow:
    """One tenant's row. Only ``slug`` is strict; an odd optional field must not discard the rows
    of a batch that really deployed, so it is read leniently — and a proof that is not a boolean
    proves nothing (it counts as false, and the row's error says why)."""
    if not isinstance(raw, dict):
        raise CPResponseError(f"the CP's results[{index}] is not an object: {raw!r:.80}")
    raw = {key: value for key, value in raw.items() if not isinstance(value, (_Ignored, _Kept))}  # nested: no row
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
