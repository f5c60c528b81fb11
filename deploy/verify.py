"""Stage 5: prove every tenant that shipped runs the build, before ``latest`` may move.

A CP saying "success" is not proof: tenants have reported success while still serving the old
image, and a freshly swapped tenant keeps answering ``/buildinfo`` with the old SHA while the old
container drains. So each tenant's ``verify-url`` must report ``sha`` itself, and a wrong SHA, a
5xx, a connection error or a timeout is polled again, not failed at once.

All pending tenants are polled concurrently in rounds under one deadline shared by the whole
stage (``verify-budget``, never past the overall ``timeout``): a round polls every pending tenant
once, then waits for the next ``verify-interval`` tick. The stage therefore lasts about as long
as the slowest tenant takes to settle plus one interval, whatever the fleet size. The session
has no retry adapter: the rounds are the retry, and a retry inside a round would only let one
tenant eat the round's time.

A tenant's answer is untrusted input: a body over :data:`BODY_LIMIT`, one that is not JSON, or
one without the field is "no answer yet", never a crash, and what it reports is shortened to
one line before it reaches the log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from deploy import http
from deploy.clock import Clock, Deadline
from deploy.config import VerifySettings
from deploy.controlplane import TenantRow
from deploy.runner import Runner

STATES = ("verified", "stale", "unreachable", "unhealthy")
FAILING = ("stale", "unreachable", "unhealthy")
BODY_LIMIT = 64 * 1024  # a /buildinfo answer is a few hundred bytes; more is not a build info
MAX_REDIRECTS = 3
MIN_TIMEOUT = 0.05  # a request near the deadline still gets a sliver to fail fast in
MIN_PREFIX = 7  # `git rev-parse --short`'s length: shorter prefixes prove nothing
SHOWN_CHARS = 100  # what a tenant reports is shortened to this before it is logged or stored


@dataclass(frozen=True)
class TenantVerdict:
    slug: str
    state: str  # "verified" | "stale" | "unreachable" | "unhealthy"
    running: str  # SHA last reported ('' if never)
    detail: str  # last error / why, one line
    seconds: float  # time from stage start to the verdict

    def as_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug, "state": self.state, "running": self.running,
            "detail": self.detail, "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class VerifyResult:
    verdicts: tuple[TenantVerdict, ...]
    rounds: int
    started: float  # seconds since the run started (deadline.elapsed() at stage start)
    seconds: float

    def slugs(self, state: str) -> tuple[str, ...]:
        return tuple(v.slug for v in self.verdicts if v.state == state)

    @property
    def ok(self) -> bool:
        """Every tenant verified. Vacuously true for no tenants: the caller decides if that is proof."""
        return all(v.state == "verified" for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "rounds": self.rounds, "started": round(self.started, 3),
            "seconds": round(self.seconds, 3),
            **{state: list(self.slugs(state)) for state in STATES},
            "tenants": [v.as_dict() for v in self.verdicts],
        }


def sha_matches(reported: str, sha: str) -> bool:
    """Equal, or one a prefix of the other of at least :data:`MIN_PREFIX` characters; any case."""
    reported, sha = reported.strip().lower(), sha.strip().lower()
    if not reported or not sha:
        return False
    if reported == sha:
        return True
    shorter, longer = sorted((reported, sha), key=len)
    return len(shorter) >= MIN_PREFIX and longer.startswith(shorter)


def buildinfo_url(template: str, slug: str) -> str:
    """The tenant's URL; the slug is quoted whole, so ``/`` or ``?`` in it can't change the path."""
    return template.replace("{slug}", quote(slug, safe=""))


def shown_url(template: str) -> str:
    """The template for the log, without userinfo or query: either may carry a credential."""
    parts = urlsplit(template)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def read_field(doc: Any, path: str) -> Any:
    """The value at a dotted path (``build.git_sha``), or ``None`` when any step is missing."""
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def verification_session(concurrency: int) -> requests.Session:
    """A plain session: TLS verified, redirects bounded, one pooled connection per worker, no retries."""
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=concurrency, pool_maxsize=concurrency, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.max_redirects = MAX_REDIRECTS
    s.headers["User-Agent"] = http.USER_AGENT
    s.headers["Accept"] = "application/json"
    return s


@dataclass(frozen=True)
class _Answer:
    """One poll of one tenant: the SHA it reported ('' if none) or why it gave no useful answer."""

    reported: str
    problem: str
    at: float  # clock time of the answer


@dataclass
class _Pending:
    """A tenant still being polled."""

    slug: str
    url: str
    running: str = ""
    problem: str = "no time was left to poll it"


@dataclass
class _Stage:
    """The verify stage as it happens; mutable only inside :func:`verify_tenants`."""

    settings: VerifySettings
    sha: str
    clock: Clock
    start: float  # clock time the stage began
    end: float  # the one deadline every tenant shares
    started: float  # seconds since the run started
    order: tuple[str, ...]
    verdicts: dict[str, TenantVerdict]
    pending: list[_Pending]
    rounds: int = 0

    @classmethod
    def begin(cls, settings: VerifySettings, sha: str, rows: Sequence[TenantRow], clock: Clock,
              deadline: Deadline) -> _Stage:
        start = clock.now()
        stage = cls(settings, sha, clock, start, start + min(settings.budget, deadline.remaining()),
                    deadline.elapsed(), tuple(dict.fromkeys(row.slug for row in rows)), {}, [])
        for row in {row.slug: row for row in rows}.values():  # the latest row of a slug wins
            if row.healthy:
                stage.pending.append(_Pending(row.slug, buildinfo_url(settings.url_template, row.slug)))
            else:
                why = "the CP reported healthz_ok: false" + (f" ({_one_line(row.error)})" if row.error else "")
                stage.verdicts[row.slug] = TenantVerdict(row.slug, "unhealthy", "", f"{why}; not polled", 0.0)
        return stage

    @property
    def budget(self) -> float:
        return self.end - self.start

    def left(self) -> float:
        return max(self.end - self.clock.now(), 0.0)

    def poll_rounds(self, session: requests.Session, runner: Runner) -> None:
        """Poll every pending tenant once per interval tick until none is pending or time is up."""
        workers = max(1, min(self.settings.concurrency, len(self.pending)))
        cap = min(self.settings.request_timeout, self.settings.interval)
        probe = _Probe(session, self.settings.field, self.clock, cap, self.end)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
        try:
            self._rounds(pool, probe, runner)
        finally:  # on a cancellation or the deadline, queued probes are dropped, not run
            pool.shutdown(wait=True, cancel_futures=True)

    def _rounds(self, pool: ThreadPoolExecutor, probe: _Probe, runner: Runner) -> None:
        while self.pending and self.left() > 0:
            round_start = self.clock.now()
            self.rounds += 1
            answers = list(pool.map(probe, [tenant.url for tenant in self.pending]))
            self.pending = self._settle(answers)
            verified = sum(v.state == "verified" for v in self.verdicts.values())
            runner.log(
                f"verify: {verified}/{len(self.order)} on target, {len(self.pending)} waiting, "
                f"{_seconds(self.left())} s left"
            )
            next_round = round_start + self.settings.interval
            if not self.pending or next_round >= self.end:
                return
            self.clock.sleep(max(next_round - self.clock.now(), 0.0))

    def _settle(self, answers: list[_Answer | None]) -> list[_Pending]:
        """Record one round's answers; return the tenants still waiting."""
        still: list[_Pending] = []
        for tenant, answer in zip(self.pending, answers, strict=True):
            if answer is None:  # the deadline passed before a worker was free for it
                still.append(tenant)
                continue
            if answer.reported:
                tenant.running = _one_line(answer.reported)
            if answer.reported and sha_matches(answer.reported, self.sha):
                self.verdicts[tenant.slug] = TenantVerdict(
                    tenant.slug, "verified", tenant.running, "", answer.at - self.start
                )
                continue
            tenant.problem = answer.problem or f"reports {tenant.running[:12]}, not {self.sha[:12]}"
            still.append(tenant)
        return still

    def result(self) -> VerifyResult:
        elapsed = self.clock.now() - self.start
        verdicts = dict(self.verdicts)
        for tenant in self.pending:
            verdicts[tenant.slug] = _give_up(tenant, self.sha, self.rounds, elapsed)
        return VerifyResult(tuple(verdicts[slug] for slug in self.order), self.rounds, self.started, elapsed)


def verify_tenants(
    settings: VerifySettings,
    sha: str,
    rows: Sequence[TenantRow],
    runner: Runner,
    clock: Clock,
    deadline: Deadline,
    session: requests.Session | None = None,
) -> VerifyResult:
    """Poll every healthy row's ``verify-url`` until it reports ``sha`` or the shared deadline passes.

    ``rows`` are the tenants that shipped, quarantined ones already left out. A row whose
    ``healthz_ok`` is false is ``unhealthy`` without a request. Never raises for what a tenant
    does; the overall deadline shortens the budget instead of interrupting the stage.
    """
    if not sha or not settings.url_template:
        raise ValueError("verify needs the sha and a verify-url template")
    stage = _Stage.begin(settings, sha, rows, clock, deadline)
    cut = " (cut short by the overall timeout)" if stage.budget < settings.budget else ""
    runner.log(
        f"verify: {len(stage.pending)} tenants must report {settings.field} = {sha[:12]} at "
        f"{shown_url(settings.url_template)}; polling {settings.concurrency} at a time every {settings.interval:g} s "
        f"for up to {_seconds(stage.budget)} s{cut}"
    )
    own_session = session is None
    session = session or verification_session(settings.concurrency)
    try:
        stage.poll_rounds(session, runner)
    finally:
        if own_session:
            session.close()
    result = stage.result()
    _report(result, sha, runner)
    return result


def _give_up(tenant: _Pending, sha: str, rounds: int, elapsed: float) -> TenantVerdict:
    """Stale if it ever reported a SHA (it runs something else), unreachable if it never did."""
    polls = f"after {rounds} poll{'s' if rounds != 1 else ''} over {_seconds(elapsed)} s"
    if tenant.running:
        last = "" if tenant.problem.startswith("reports ") else f"; last poll: {tenant.problem}"
        detail = f"still runs {tenant.running[:40]}, not {sha[:12]}, {polls}{last}"
        return TenantVerdict(tenant.slug, "stale", tenant.running, detail, elapsed)
    return TenantVerdict(tenant.slug, "unreachable", "", f"no usable answer {polls}: {tenant.problem}", elapsed)


@dataclass(frozen=True)
class _Probe:
    """Asks one tenant for its build info. Never raises for anything a tenant can do.

    Time limits are taken when the request starts, not when the round does: with more pending
    tenants than workers, a request may wait for a worker, and no request may run past ``end``.
    """

    session: requests.Session
    field: str
    clock: Clock
    cap: float  # min(request-timeout, interval): one slow tenant can't stretch a round much
    end: float

    def __call__(self, url: str) -> _Answer | None:
        """One GET; ``None`` when the deadline passed before it could start."""
        left = self.end - self.clock.now()
        if left <= 0:
            return None
        timeout = max(min(self.cap, left), MIN_TIMEOUT)
        started = self.clock.now()
        try:
            with self.session.get(url, timeout=timeout, stream=True, allow_redirects=True) as response:
                if response.status_code != 200:
                    return _Answer("", self._status_problem(response, started + timeout, timeout), self.clock.now())
                body = _read_capped(response, self.clock, started + timeout, timeout)
        except _Unreadable as exc:
            return _Answer("", str(exc), self.clock.now())
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return _Answer("", _transport_problem(exc, timeout), self.clock.now())
        return _parse(body, self.field, self.clock.now())

    def _status_problem(self, response: requests.Response, until: float, timeout: float) -> str:
        try:
            text = http.error_text(_read_capped(response, self.clock, until, timeout))
        except _Unreadable:
            text = ""
        return f"HTTP {response.status_code}: {text or response.reason or 'no reason given'}"


class _Unreadable(Exception):
    """A body too large or too slow to be a build info; the tenant has not answered yet."""


def _read_capped(response: requests.Response, clock: Clock, until: float, timeout: float) -> bytes:
    """The body, read no further than :data:`BODY_LIMIT` bytes and no later than ``until``.

    ``timeout`` bounds each socket read, not the whole body, so the clock is checked after every
    read: ``read1`` returns what one read brought, where a sized read would wait for the whole
    chunk and let a tenant dripping bytes hold a worker for the rest of the stage.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > BODY_LIMIT:
        raise _Unreadable(f"answered with a body over {BODY_LIMIT // 1024} KiB")
    body = bytearray()
    while chunk := response.raw.read1(8192, decode_content=True):
        body += chunk
        if len(body) > BODY_LIMIT:
            raise _Unreadable(f"answered with a body over {BODY_LIMIT // 1024} KiB")
        if clock.now() > until:
            raise _Unreadable(f"answer took longer than {_seconds(timeout)} s")
    return bytes(body)


def _parse(body: bytes, field: str, at: float) -> _Answer:
    try:
        doc = json.loads(body)
    except ValueError:
        return _Answer("", f"answered 200 with a body that is not JSON: {http.error_text(body, 120)}", at)
    value = read_field(doc, field)
    if value is None:
        return _Answer("", f"answered 200 without the field {field!r}", at)
    if not isinstance(value, str) or not value.strip():
        return _Answer("", f"answered 200 but {field!r} is not a SHA: {json.dumps(value)[:60]}", at)
    return _Answer(value.strip(), "", at)


def _transport_problem(exc: BaseException, timeout: float) -> str:
    """One line for a failed request, without the URL (a template may carry a token in its query)."""
    if isinstance(exc, requests.TooManyRedirects):
        return f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {_seconds(timeout)} s"
    cause = _root_cause(exc)
    if "timed out" in cause.lower():
        return f"no answer within {_seconds(timeout)} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS verification failed: {cause}"
    return f"connection failed: {cause}"


def _root_cause(exc: BaseException) -> str:
    """The innermost error's own words: requests wraps urllib3, which wraps the socket error."""
    seen: BaseException = exc
    for _ in range(8):
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in reversed(seen.args) if isinstance(a, BaseException)), None)
        if inner is None:
            break
        seen = inner
    text = str(seen).rsplit("): ", 1)[-1] or type(seen).__name__
    return _one_line(text)


def _report(result: VerifyResult, sha: str, runner: Runner) -> None:
    """The final lists in the log (Gitea shows no annotations) and one error per failing tenant."""
    counts = ", ".join(f"{len(result.slugs(s))} {s}" for s in STATES if result.slugs(s))
    rounds = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    runner.log(f"verify: {counts or 'no tenants'} in {rounds}, {_seconds(result.seconds)} s")
    for state in FAILING:
        if result.slugs(state):
            runner.log(f"verify: {state}: {', '.join(result.slugs(state))}")
    for verdict in result.verdicts:
        if verdict.state in FAILING:
            runner.error(f"{verdict.slug} is {verdict.state}: {verdict.detail}", title=f"verify {verdict.slug}")
    if not result.ok:
        runner.log(f"verify: not every tenant proved it runs {sha[:12]}; latest must not move")


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or math.isclose(value, round(value)) else f"{value:.1f}"
