"""The control-plane client: enumerate the fleet, redeploy a scoped set of tenants.

Two read budgets, because the CP has two speeds: enumeration (a dry run) answers at once and
gets ``request-timeout``; a real redeploy answers only after its slowest tenant, up to the CP's
per-tenant timeout plus health settle, and gets ``rollout-timeout``. Giving the slow call the
fast budget is the seed incident. Transient failures are retried by the session (see
:mod:`deploy.http`); what is left is turned into a :class:`CallResult` the rollout can reason
about, with the CP's own error text. A body of the wrong shape is a :class:`CPResponseError`,
never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from deploy import http
from deploy.clock import Clock, Deadline
from deploy.config import ControlPlane, RolloutPlan
from deploy.errors import DeployFailed
from deploy.runner import Runner


class CPResponseError(DeployFailed):
    """The CP answered something this client cannot read."""


@dataclass(frozen=True)
class TenantRow:
    """One tenant's line in a CP answer. ``None`` means an older CP left the field out."""

    slug: str
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "slugs": list(self.slugs), "ok": self.ok, "status": self.status,
            "error": self.error, "started": round(self.started, 3), "seconds": round(self.seconds, 3),
            "rows": [r.as_dict() for r in self.rows],
        }


class ControlPlaneClient:
    def __init__(self, cp: ControlPlane, plan: RolloutPlan, runner: Runner, clock: Clock, deadline: Deadline) -> None:
        self.cp = cp
        self.plan = plan
        self.clock = clock
        self.deadline = deadline
        self.runner = runner
        self._calling = ""  # which call and tenants a retry line is about
        self.session = http.session(cp.retry_delays, clock, on_retry=self._log_retry, deadline=deadline)
        self.session.headers["Authorization"] = f"Bearer {cp.token}"

    def enumerate(self) -> CallResult:
        """The live fleet, by dry run: read-only, so it may come before the gates."""
        body = self._body(dry_run=True, max_stragglers=self.plan.max_stragglers)
        return self._call("enumerate", (), body, self.cp.request_timeout)

    def redeploy(self, label: str, slugs: Sequence[str], max_stragglers: int) -> CallResult:
        """Redeploy ``slugs`` concurrently; ``max_stragglers`` is the fleet-wide tolerance left."""
        body = self._body(
            dry_run=False, max_stragglers=max_stragglers, only_slugs=list(slugs), batch_size=len(slugs)
        )
        return self._call(label, tuple(slugs), body, self.cp.rollout_timeout)

    def _body(self, dry_run: bool, max_stragglers: int, **scope: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "target_tag": self.plan.target_tag,
            "soak_seconds": 0,
            "batch_size": self.plan.batch_size,
            "max_stragglers": max_stragglers,
            "dry_run": dry_run,
            "confirm": True,
        }
        body.update(scope)
        return body

    def _log_retry(self, line: str) -> None:
        self.runner.log(f"  ↻ {self._calling}: {line}")

    def _call(self, label: str, slugs: tuple[str, ...], body: dict[str, Any], budget: float) -> CallResult:
        self.deadline.check(f"starting the {label} call")
        self._calling = f"{label} ({', '.join(slugs)})" if slugs else label
        started = self.clock.now()
        timeout = http.DeadlineTimeout(self.deadline, budget)
        try:
            response = self.session.post(self.cp.redeploy_url, json=body, timeout=timeout)
        except requests.RequestException as exc:
            return self._result(label, slugs, started, None, _transport_error(exc, budget, len(self.cp.retry_delays)))
        if response.status_code != 200:
            error = f"HTTP {response.status_code}: {http.error_text(response.content) or response.reason}"
            return self._result(label, slugs, started, response.status_code, error)
        ok, rows, error = parse_answer(response.content)
        return self._result(label, slugs, started, 200, error, ok=ok, rows=rows)

    def _result(self, label: str, slugs: tuple[str, ...], started: float, status: int | None, error: str,
                ok: bool = False, rows: tuple[TenantRow, ...] = ()) -> CallResult:
        now = self.clock.now()
        return CallResult(label, slugs, ok, rows, status, error, started - self.deadline.start, now - started)


def _transport_error(exc: requests.RequestException, budget: float, retries: int) -> str:
    after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    text = str(exc)
    if isinstance(exc, requests.Timeout) or "Read timed out" in text:
        return f"HTTP 504 (synthetic): no answer within the {budget:g} s read budget{after}"
    return f"connection failed{after}: {type(exc).__name__}"


PROOF_FIELDS = ("healthz_ok", "verified_on_target")
TEXT_FIELDS = ("phase", "ssm_status", "running_image", "error")


def parse_answer(content: bytes) -> tuple[bool, tuple[TenantRow, ...], str]:
    """``(ok, rows, error)`` from a 200 body, or :class:`CPResponseError` naming what is wrong."""
    try:
        doc = json.loads(content)
    except ValueError:
        text = http.error_text(content)
        raise CPResponseError(f"the CP answered 200 with a body that is not JSON: {text!r}") from None
    if not isinstance(doc, dict):
        raise CPResponseError(f"the CP answered JSON that is not an object: {type(doc).__name__}")
    ok = doc.get("ok")
    if not isinstance(ok, bool):
        raise CPResponseError(f"the CP's answer has no boolean 'ok' (got {ok!r:.80})")
    results = doc.get("results", [])
    if not isinstance(results, list):
        raise CPResponseError(f"the CP's 'results' is not a list: {type(results).__name__}")
    rows = tuple(_row(i, raw) for i, raw in enumerate(results))
    error = doc.get("error") or ""
    if not ok and not error:
        error = "the CP answered ok: false without an error message"
    return ok, rows, error if isinstance(error, str) else json.dumps(error)


def _row(index: int, raw: Any) -> TenantRow:
    """One tenant's row. Only ``slug`` is strict; an odd optional field must not discard the rows
    of a batch that really deployed, so it is read leniently — and a proof that is not a boolean
    proves nothing (it counts as false, and the row's error says why)."""
    if not isinstance(raw, dict):
        raise CPResponseError(f"the CP's results[{index}] is not an object: {raw!r:.80}")
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
            values[name] = value if isinstance(value, str) else json.dumps(value)
    code = raw.get("ssm_exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        values["ssm_exit_code"] = code
    values["error"] = "; ".join(filter(None, [values.get("error", ""), *notes]))
    return TenantRow(slug=slug, **values)
