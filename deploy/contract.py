"""``python -m deploy.contract URL`` (also ``fleet-rollout contract URL``): check a control plane
against the README's control-plane contract, from the outside, before a rollout depends on it.

A team writing the ``redeploy-fleet`` endpoint has the README and its own server; this tells them
where the two disagree, one line per check, in the terms the action will read the answers in.
It sends dry runs only — the enumeration, and requests the CP must refuse (no token, no
``confirm: true``, an unknown tenant, an empty scope) — so it is safe against a production CP.
Only when the author names ``--test-tenant`` does it deploy, that tenant alone, twice with one
``Idempotency-Key``: once to see a scoped deploy's answer, then again to see whether the CP
replays it or deploys a second time.

Each check ends ``PASS``, ``FAIL`` (the action would misread the CP, or the CP would do what it
must not) or ``WARN`` (it works, but worse than it could: no replay, little time to spare);
``SKIP`` when it could not run (``--test-tenant`` not named, or the enumeration it needs failed).
Exit 0 without a FAIL, 1 with one, 2 for a bad command line. The token comes from an environment
variable, never an argument: an argument is visible to every user of the machine in ``ps``.
The checks are strict where the action is lenient on purpose (it reads an odd optional field of a
deploy answer rather than lose the rows of a batch that really moved): a CP that passes here is
one the action never has to forgive.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn, Protocol, TextIO

from deploy import config, http
from deploy.clock import Clock, Deadline
from deploy.controlplane import ANSWER_CAP, idempotency_header
from deploy.domain import TENANT_RE

PROG = "fleet-rollout contract"
DEFAULT_TOKEN_ENV = "FLEET_CP_TOKEN"
WRONG_TOKEN = "fleet-rollout-contract-check-not-a-token"  # a token the CP must refuse
REPLAY_TELLABLE = 0.5  # seconds: a deploy quicker than this cannot be told from its replay by time
HEADROOM = 0.5  # a dry run slower than this share of request-timeout leaves little to spare
TEXT_FIELDS = ("phase", "ssm_status", "running_image", "error")
# The one 4xx the action does not read as a refusal (controlplane._state_of): the Idempotency-Key
# draft's "still in progress". A CP refusing with it would make the action wait and ask again.
IN_PROGRESS = 409
IN_PROGRESS_MEANS = ("the action reads 409 as \"a request with this Idempotency-Key is still in progress\": it "
                     "waits one CP worst case and asks again instead of halting")
BOOL_FIELDS = ("healthz_ok", "verified_on_target")


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    WARN = "WARN"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Finding:
    """One check's verdict and why, worded for the CP's author."""

    check: str
    verdict: Verdict
    reason: str

    def line(self) -> str:
        return f"{self.verdict} {self.check}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class Target:
    """The endpoint under test and the numbers the action would be configured with."""

    url: str
    token: str = field(repr=False)
    redeploy_path: str = config.DEFAULTS["redeploy-path"]
    target_tag: str = "latest"
    test_tenant: str = ""
    request_timeout: float = float(config.DEFAULTS["request-timeout"])
    rollout_timeout: float = float(config.DEFAULTS["rollout-timeout"])
    cp_worst_case: float = float(config.DEFAULTS["cp-tenant-timeout"]) + float(config.DEFAULTS["cp-settle-seconds"])

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + self.redeploy_path


@dataclass(frozen=True)
class Exchange:
    """One request's answer as the checks need it: status, JSON (``None`` if it is not JSON), time."""

    status: int
    doc: Any
    text: str  # the server's own words, one line (for a refusal's reason)
    seconds: float

    @property
    def described(self) -> str:
        return f"{self.status}" + (f" ({self.text})" if self.text else "")


class TransportFailed(Exception):
    """No complete answer: the message is the HTTP layer's one sentence (host, cause, time)."""


# -- what a well-formed answer is ------------------------------------------------------------


def row_problems(row: Any, index: int, dry_run: bool) -> list[str]:
    """What is wrong with one result row, field by field (empty when nothing is)."""
    where = f"results[{index}]"
    if not isinstance(row, dict):
        return [f"{where} is not an object"]
    problems = []
    slug = row.get("slug")
    if not isinstance(slug, str) or not TENANT_RE.match(slug):
        problems.append(f"{where} has no usable 'slug' (got {_shown(slug)}): letters, digits, '.', '_', '-'")
    for name in TEXT_FIELDS:
        if row.get(name) is not None and not isinstance(row[name], str):
            problems.append(f"{where}.{name} is {_shown(row[name])}, not a string")
    for name in BOOL_FIELDS:
        if row.get(name) is not None and not isinstance(row[name], bool):
            problems.append(f"{where}.{name} is {_shown(row[name])}, not a boolean (the action reads it as false)")
    code = row.get("ssm_exit_code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        problems.append(f"{where}.ssm_exit_code is {_shown(code)}, not an integer or null")
    if dry_run and row.get("ssm_status") != "DryRun":
        problems.append(f"{where} of a dry run has ssm_status {_shown(row.get('ssm_status'))}, not \"DryRun\"")
    if not dry_run and row.get("ssm_status") == "DryRun":
        problems.append(f"{where} of a deploy says ssm_status \"DryRun\": the action reads it as not deployed")
    return problems


def answer_problems(exchange: Exchange, dry_run: bool) -> list[str]:
    """What keeps a 200 from being the contract's ``{"ok": bool, "results": [row…], "error"?: string}``."""
    if exchange.status != 200:
        return [f"answered {exchange.described}, not 200"]
    doc = exchange.doc
    if not isinstance(doc, dict):
        return ["answered 200 with a body that is not a JSON object: the action reads that as outcome unknown"]
    problems = []
    if not isinstance(doc.get("ok"), bool):
        problems.append(f"'ok' is {_shown(doc.get('ok'))}, not a boolean")
    results = doc.get("results")
    if not isinstance(results, list):
        problems.append(f"'results' is {_shown(results)}, not a list")
        results = []
    if doc.get("error") is not None and not isinstance(doc["error"], str):
        problems.append(f"'error' is {_shown(doc['error'])}, not a string")
    for index, row in enumerate(results):
        problems += row_problems(row, index, dry_run)
    return problems


def slugs_of(doc: Any) -> list[str]:
    """The string slugs of an answer's rows, in order (other rows are reported by :func:`answer_problems`)."""
    rows = doc.get("results") if isinstance(doc, dict) else None
    return [row["slug"] for row in rows or () if isinstance(row, dict) and isinstance(row.get("slug"), str)]


def _shown(value: Any) -> str:
    return "missing" if value is None else http.compact_json(value, 60)


def _names(slugs: Iterable[str], limit: int = 5) -> str:
    slugs = list(slugs)
    more = f" and {len(slugs) - limit} more" if len(slugs) > limit else ""
    return ", ".join(slugs[:limit]) + more


def idempotency_key(run: str, label: str) -> str:
    """The header value for the check's own test deploy, quoted as the action quotes its keys."""
    return idempotency_header(f"fleet-rollout-contract:{run}:{label}")


# -- the checks -----------------------------------------------------------------------------


class ContractCheck:
    """Runs the checks in order against one endpoint; :meth:`run` returns every finding."""

    def __init__(self, target: Target, clock: Clock | None = None) -> None:
        self.target = target
        self.clock = clock or Clock()
        # Every request is bounded by its own budget; this only keeps the whole check finite.
        deadline = Deadline.starting_now(self.clock, 10 * target.request_timeout + 3 * target.rollout_timeout)
        anonymous = http.Policy(budget=target.request_timeout, cap=ANSWER_CAP)  # no retries: what the CP does, once
        authorized = http.Policy(budget=target.request_timeout, cap=ANSWER_CAP,
                                 headers={"Authorization": f"Bearer {target.token}"})
        self.anonymous = http.Client(anonymous, self.clock, deadline)
        self.client = http.Client(authorized, self.clock, deadline)
        self.run_id = uuid.uuid4().hex[:12]

    def close(self) -> None:
        self.anonymous.close()
        self.client.close()

    def body(self, dry_run: bool = True, **changes: Any) -> dict[str, Any]:
        """The body the action sends (an enumeration by default); ``changes`` replace or add keys,
        and a value of ``None`` leaves its key out."""
        body: dict[str, Any] = {"target_tag": self.target.target_tag, "soak_seconds": 0, "batch_size": 3,
                                "max_stragglers": 1, "dry_run": dry_run, "confirm": True, **changes}
        return {key: value for key, value in body.items() if value is not None}

    def post(self, body: Mapping[str, Any], *, client: http.Client | None = None, budget: float | None = None,
             headers: Mapping[str, str] | None = None) -> Exchange:
        started = self.clock.now()
        try:
            reply = (client or self.client).request("POST", self.target.endpoint, json=dict(body),
                                                    budget=budget, headers=dict(headers or {}))
        except http.TransportError as exc:
            raise TransportFailed(str(exc)) from None
        try:
            doc = reply.json()
        except http.UnusableBody:
            doc = None
        text = reply.error_text(120) if reply.status != 200 else ""
        return Exchange(reply.status, doc, text, self.clock.now() - started)

    def run(self) -> list[Finding]:
        """Every check, in order. A check that needs another's answer is skipped when that one gave
        none; the deploy is sent only when the scope check showed that ``only_slugs`` holds (a CP
        that ignores it would redeploy the whole fleet for one test tenant)."""
        findings = [self._guarded("auth", self.check_auth)]
        fleet: list[str] = []
        try:
            enumeration = self.post(self.body())
        except TransportFailed as exc:
            findings += [Finding("enumerate", Verdict.FAIL, f"no answer to a dry run: {exc}"),
                         Finding("enumerate-time", Verdict.FAIL, f"no complete answer: {exc}")]
        else:
            findings += [self.check_enumeration(enumeration), self.check_enumeration_time(enumeration)]
            if enumeration.status == 200:
                fleet = list(dict.fromkeys(slug for slug in slugs_of(enumeration.doc) if TENANT_RE.match(slug)))
        findings.append(self._guarded("confirm", self.check_confirm))
        findings.append(self._guarded("unknown-tenant", lambda: self.check_unknown_tenant(fleet)))
        findings.append(self._guarded("empty-scope", self.check_empty_scope))
        if fleet:
            findings.append(self._guarded("scope", lambda: self.check_scope(fleet)))
        else:
            findings.append(Finding("scope", Verdict.SKIP, "not run: the enumeration named no tenant"))
        if findings[-1].verdict in (Verdict.PASS, Verdict.WARN):
            findings += self.check_test_tenant(fleet)
        else:
            why = "not run: a deploy is sent only once the scope check passed"
            findings += [Finding("deploy", Verdict.SKIP, why), Finding("idempotency", Verdict.SKIP, why)]
        return findings

    def _guarded(self, name: str, check: Callable[[], Finding]) -> Finding:
        try:
            return check()
        except TransportFailed as exc:
            return Finding(name, Verdict.FAIL, f"no answer: {exc}")

    # Each check returns its finding; the wording says what the action would make of the answer.

    def check_auth(self) -> Finding:
        """Without the token, and with a wrong one, the CP must refuse with 401 or 403."""
        answers = {
            "without a token": self.post(self.body(), client=self.anonymous),
            "with a wrong token": self.post(self.body(), client=self.anonymous,
                                            headers={"Authorization": f"Bearer {WRONG_TOKEN}"}),
        }
        accepted = [how for how, answer in answers.items() if 200 <= answer.status < 300]
        if accepted:
            return Finding("auth", Verdict.FAIL, f"accepted a dry run {' and '.join(accepted)}: anyone who can reach "
                                                 "it can redeploy the fleet; answer 401 (or 403)")
        odd = {how: answer for how, answer in answers.items() if answer.status not in (401, 403)}
        conflicts = _in_progress(answers)
        if conflicts:
            return Finding("auth", Verdict.FAIL, f"{conflicts} — {IN_PROGRESS_MEANS}; answer 401 or 403")
        if any(answer.status >= 500 for answer in odd.values()):
            return Finding("auth", Verdict.FAIL, "; ".join(f"{how}: {a.described}" for how, a in odd.items())
                           + " — the action reads a 5xx as outcome unknown, not as refused; answer 401 or 403")
        if odd:
            return Finding("auth", Verdict.WARN, "; ".join(f"{how}: {a.described}" for how, a in odd.items())
                           + " — refused, but the action says 'check cp-token' only for 401 and 403")
        statuses = "/".join(sorted({str(a.status) for a in answers.values()}))
        return Finding("auth", Verdict.PASS, f"refused without a token and with a wrong one ({statuses})")

    def check_enumeration(self, exchange: Exchange) -> Finding:
        """A dry run without ``only_slugs``: 200, ``ok: true``, a typed ``DryRun`` row per tenant, no twice."""
        problems = answer_problems(exchange, dry_run=True)
        if problems:
            return Finding("enumerate", Verdict.FAIL, _problem_list(problems))
        if exchange.doc["ok"] is not True:
            said = str(exchange.doc.get("error") or "no error text")[:120]
            return Finding("enumerate", Verdict.FAIL, f"a dry run answered ok: false ({said}): the action cannot "
                                                      "enumerate the fleet")
        slugs = slugs_of(exchange.doc)
        twice = sorted(slug for slug, count in Counter(slugs).items() if count > 1)
        if twice:
            return Finding("enumerate", Verdict.FAIL, f"the same tenant in several rows: {_names(twice)}")
        if not slugs:
            return Finding("enumerate", Verdict.WARN, "a dry run listed no tenant: the action would have nothing to do")
        return Finding("enumerate", Verdict.PASS, f"a dry run listed {len(slugs)} tenant{'s' * (len(slugs) != 1)} "
                                                  f"({_names(slugs, 3)}), every row typed, ssm_status DryRun")

    def check_enumeration_time(self, exchange: Exchange) -> Finding:
        """The action gives a dry run ``request-timeout``; it must answer well within it."""
        budget, took = self.target.request_timeout, exchange.seconds
        said = f"answered in {took:.2f} s (request-timeout {budget:g} s)"
        if took > budget:
            return Finding("enumerate-time", Verdict.FAIL, f"{said}: the action would give up on it")
        if took > HEADROOM * budget:
            return Finding("enumerate-time", Verdict.WARN, f"{said}: little to spare; a dry run must not wait "
                                                           "for tenants")
        return Finding("enumerate-time", Verdict.PASS, said)

    def check_confirm(self) -> Finding:
        """A body without ``confirm: true`` (left out, or false) must be refused: it is the guard
        against a request that was not meant to deploy."""
        answers = {"confirm left out": self.post(self.body(confirm=None)),
                   "confirm: false": self.post(self.body(confirm=False))}
        return _refusal("confirm", answers, "a request without confirm: true")

    def check_unknown_tenant(self, fleet: Sequence[str]) -> Finding:
        """``only_slugs`` naming a tenant the CP does not have must be refused, not answered 200
        (the action would count a made-up row, or a missing one, as a tenant that moved or failed)."""
        known = set(fleet)
        unknown = next(slug for slug in (f"fleet-rollout-contract-{uuid.uuid4().hex[:8]}" for _ in range(9))
                       if slug not in known)
        answer = self.post(self.body(only_slugs=[unknown], batch_size=1))
        return _refusal("unknown-tenant", {f"only_slugs [{unknown}]": answer}, "a tenant it does not have")

    def check_empty_scope(self) -> Finding:
        """``only_slugs: []`` must be refused: read as "no scope", it is the whole fleet."""
        answer = self.post(self.body(only_slugs=[], batch_size=0))
        if answer.status == 200 and slugs_of(answer.doc):
            rows = len(slugs_of(answer.doc))
            return Finding("empty-scope", Verdict.FAIL, f"only_slugs: [] answered rows for {rows} tenants: an empty "
                                                        "scope read as the whole fleet; refuse it (400)")
        if answer.status == 200:
            return Finding("empty-scope", Verdict.WARN, "only_slugs: [] answered 200 (with no rows); refuse it (400) "
                                                        "— the action never sends it")
        return _refusal("empty-scope", {"only_slugs: []": answer}, "an empty only_slugs")

    def check_scope(self, fleet: Sequence[str]) -> Finding:
        """A dry run scoped by ``only_slugs`` must answer a row for each of its tenants and for no other:
        a CP that answers for other tenants would redeploy them on every batch call."""
        scope = [fleet[0], fleet[-1]] if len(fleet) >= 3 else [fleet[0]]
        answer = self.post(self.body(only_slugs=scope, batch_size=len(scope)))
        shown = http.compact_json(scope, 200)
        problems = answer_problems(answer, dry_run=True)
        if problems:
            return Finding("scope", Verdict.FAIL, f"a dry run with only_slugs {shown}: " + _problem_list(problems))
        return _scoped_rows("scope", answer, scope, f"a dry run with only_slugs {shown}", len(fleet))

    def check_test_tenant(self, fleet: Sequence[str]) -> list[Finding]:
        """The one deploy (only with ``--test-tenant``), then the same request with the same key."""
        slug = self.target.test_tenant
        if not slug:
            why = "not run: name a tenant that may be redeployed with --test-tenant SLUG"
            return [Finding("deploy", Verdict.SKIP, why), Finding("idempotency", Verdict.SKIP, why)]
        if slug not in fleet:
            return [Finding("deploy", Verdict.FAIL, f"--test-tenant {slug} is not a tenant the enumeration listed"),
                    Finding("idempotency", Verdict.SKIP, "not run: it needs the deploy")]
        body = self.body(dry_run=False, only_slugs=[slug], batch_size=1, max_stragglers=0)
        headers = {"Idempotency-Key": idempotency_key(self.run_id, "test-tenant")}
        try:
            first = self.post(body, budget=self.target.rollout_timeout, headers=headers)
        except TransportFailed as exc:
            return [Finding("deploy", Verdict.FAIL, f"no answer within rollout-timeout: {exc} — the action would "
                                                    "treat the call's outcome as unknown"),
                    Finding("idempotency", Verdict.SKIP, "not run: it needs the deploy's answer")]
        deployed = self.check_deploy(first, slug)
        if first.status != 200 or deployed.verdict is Verdict.FAIL:
            return [deployed, Finding("idempotency", Verdict.SKIP, "not run: it needs a readable deploy answer")]
        return [deployed, self._guarded("idempotency", lambda: self.check_replay(body, headers, first))]

    def check_deploy(self, answer: Exchange, slug: str) -> Finding:
        """A scoped deploy: a 200 in shape, a row for the tenant and no other, within the worst case."""
        if answer.status == 503 and isinstance(answer.doc, dict) and answer.doc.get("ok") is False:
            return Finding("deploy", Verdict.WARN, f"503 with ok: false ({answer.text}): the CP did not start the "
                                                   "call; the action retries it — run the check again when it is free")
        problems = answer_problems(answer, dry_run=False)
        if problems:
            return Finding("deploy", Verdict.FAIL, f"a deploy of {slug}: " + _problem_list(problems))
        scoped = _scoped_rows("deploy", answer, [slug], f"a deploy of {slug}", 0)
        if scoped.verdict is Verdict.FAIL:
            return scoped
        took, worst = answer.seconds, self.target.cp_worst_case
        if took > worst:
            return Finding("deploy", Verdict.WARN, f"answered in {took:.1f} s, above cp-tenant-timeout + "
                                                   f"cp-settle-seconds ({worst:g} s): set them to the CP's real worst "
                                                   "case, or the action waits too little before a retry")
        row = next(row for row in answer.doc["results"] if row.get("slug") == slug)
        if row.get("verified_on_target") is False or row.get("healthz_ok") is False or answer.doc["ok"] is not True:
            said = row.get("error") or answer.doc.get("error") or "no error text"
            return Finding("deploy", Verdict.WARN, f"answered in shape in {took:.1f} s, but {slug} did not reach "
                                                   f"{self.target.target_tag} ({said}): the contract holds, the "
                                                   "tenant did not")
        return Finding("deploy", Verdict.PASS, f"deployed {self.target.target_tag} on {slug} in {took:.1f} s; "
                                               "its row alone, on target and healthy")

    def check_replay(self, body: Mapping[str, Any], headers: Mapping[str, str], first: Exchange) -> Finding:
        """The same request with the same ``Idempotency-Key``: a CP that honours it answers what it
        answered the first time, at once, without deploying again. One that does not is allowed:
        the action then waits one worst case before any retry (so a WARN, not a FAIL)."""
        again = self.post(body, budget=self.target.rollout_timeout, headers=headers)
        if again.status == IN_PROGRESS:
            return Finding("idempotency", Verdict.FAIL, f"the same request with the same key, after the first was "
                                                        f"answered, got {again.described} — {IN_PROGRESS_MEANS}, "
                                                        "here for a request long over; replay the first answer")
        if 400 <= again.status < 500:
            return Finding("idempotency", Verdict.FAIL, f"the same request with the same key was refused "
                                                        f"({again.described}): the action reads a 4xx as "
                                                        "refused and halts; replay the first answer instead")
        if again.status != 200:
            return Finding("idempotency", Verdict.FAIL, f"the same request with the same key answered "
                                                        f"{again.described}, not the first answer")
        if again.doc != first.doc:
            return Finding("idempotency", Verdict.WARN, f"another answer to the same Idempotency-Key after "
                                                        f"{again.seconds:.1f} s: it deployed again — the action still "
                                                        "works, waiting one CP worst case before a retry")
        timing = f"the first took {first.seconds:.2f} s, the second {again.seconds:.2f} s"
        if first.seconds < REPLAY_TELLABLE:
            return Finding("idempotency", Verdict.WARN, f"the same answer, but {timing}: too quick to tell a "
                                                        "replay from a second deploy")
        if again.seconds > first.seconds / 2:
            return Finding("idempotency", Verdict.WARN, f"the same answer, as slowly ({timing}): it deployed again "
                                                        "— the action still works, waiting one CP worst case "
                                                        "before a retry")
        return Finding("idempotency", Verdict.PASS, f"replayed the first answer ({timing})")


def _refusal(name: str, answers: Mapping[str, Exchange], what: str) -> Finding:
    """A request the CP must refuse with a 4xx other than 409 (nothing done, no retry, as the action reads it)."""
    accepted = [f"{how}: 200" for how, answer in answers.items() if 200 <= answer.status < 300]
    if accepted:
        return Finding(name, Verdict.FAIL, f"accepted {what} ({'; '.join(accepted)}); refuse it with a 4xx (400)")
    conflicts = _in_progress(answers)
    if conflicts:
        return Finding(name, Verdict.FAIL, f"{conflicts} — {IN_PROGRESS_MEANS}; refuse it with 400, 404 or 422")
    wrong = [f"{how}: {answer.described}" for how, answer in answers.items() if not 400 <= answer.status < 500]
    if wrong:
        return Finding(name, Verdict.FAIL, f"{'; '.join(wrong)} — the action reads a 4xx (but 409) as refused, a "
                                           "5xx as outcome unknown; refuse it with a 4xx (400)")
    said = "; ".join(f"{how}: {answer.described}" for how, answer in answers.items())
    return Finding(name, Verdict.PASS, f"refused {what} ({said})")


def _in_progress(answers: Mapping[str, Exchange]) -> str:
    """The answers that were 409, described ("" when none was): a refusal the action would not read as one."""
    return "; ".join(f"{how}: {answer.described}" for how, answer in answers.items() if answer.status == IN_PROGRESS)


def _scoped_rows(name: str, answer: Exchange, scope: Sequence[str], call: str, fleet_size: int) -> Finding:
    """Rows only for the call's tenants, and one for each."""
    slugs = slugs_of(answer.doc)
    outside = [slug for slug in slugs if slug not in scope]
    missing = [slug for slug in scope if slug not in slugs]
    if outside:
        return Finding(name, Verdict.FAIL, f"{call} answered rows for other tenants too ({_names(outside)}): "
                                           "only_slugs must scope the call — a CP that ignores it redeploys "
                                           "the whole fleet on every batch")
    if missing:
        return Finding(name, Verdict.FAIL, f"{call} answered no row for {_names(missing)}: the action counts a "
                                           "tenant without a row as a straggler")
    if fleet_size == 1:
        return Finding(name, Verdict.WARN, f"{call} answered its row, but the fleet has one tenant: "
                                           "rows for other tenants could not show")
    return Finding(name, Verdict.PASS, f"{call} answered a row for each of them and no other")


def _problem_list(problems: Sequence[str], limit: int = 4) -> str:
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


# -- the command line ----------------------------------------------------------------------


def _seconds(value: str) -> float:
    try:
        return config.parse_duration(value, positive=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with '/' (got {value!r})")
    return value


def _slug(value: str) -> str:
    if not TENANT_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} cannot be a tenant name (letters, digits, '.', '_', '-')")
    return value


class ArgumentSink(Protocol):
    """What :func:`add_arguments` needs: an ``argparse`` parser, or anything that records for one."""

    def add_argument(self, *flags: str, **kwargs: Any) -> Any: ...


def add_arguments(parser: ArgumentSink) -> None:
    """The options, for ``python -m deploy.contract`` and ``fleet-rollout contract`` alike."""
    defaults = config.DEFAULTS
    parser.add_argument("url", metavar="URL", help="the control plane's base URL, as cp-url (https://, or http:// "
                                                   "to a loopback host or with --allow-insecure-http)")
    parser.add_argument("--token-env", metavar="NAME", default=DEFAULT_TOKEN_ENV,
                        help=f"environment variable holding the CP token (default {DEFAULT_TOKEN_ENV}); "
                             "never pass a token as an argument: ps shows arguments to every user")
    parser.add_argument("--redeploy-path", metavar="PATH", type=_path, default=defaults["redeploy-path"],
                        help=f"the endpoint's path, as redeploy-path (default {defaults['redeploy-path']})")
    parser.add_argument("--target-tag", metavar="TAG", default="latest",
                        help="the tag every request names; with --test-tenant, the build deployed on it "
                             "(default latest: the build the fleet was last promoted to)")
    parser.add_argument("--test-tenant", metavar="SLUG", type=_slug,
                        help="also redeploy this one tenant with --target-tag, twice with one Idempotency-Key "
                             "(without it, only dry runs are sent)")
    parser.add_argument("--request-timeout", metavar="SECONDS", type=_seconds,
                        default=float(defaults["request-timeout"]),
                        help=f"the action's request-timeout: a dry run must answer within it "
                             f"(default {defaults['request-timeout']})")
    parser.add_argument("--rollout-timeout", metavar="SECONDS", type=_seconds,
                        default=float(defaults["rollout-timeout"]),
                        help=f"the action's rollout-timeout: the test tenant's deploy gets that long "
                             f"(default {defaults['rollout-timeout']})")
    parser.add_argument("--cp-worst-case", metavar="SECONDS", type=_seconds,
                        default=float(defaults["cp-tenant-timeout"]) + float(defaults["cp-settle-seconds"]),
                        help="the action's cp-tenant-timeout + cp-settle-seconds: a deploy answering later is "
                             "warned about (default 390)")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="allow http:// to a host that is not loopback (the token then travels in clear)")


DESCRIPTION = (
    "Check a control plane's redeploy-fleet endpoint against fleet-rollout's control-plane contract "
    "(README, Control-plane contract): auth, the dry-run enumeration and its timing, refusals (no confirm, "
    "an unknown tenant, an empty scope), rows scoped by only_slugs; with --test-tenant, one scoped deploy "
    "and its replay under the same Idempotency-Key. Dry runs only unless --test-tenant is named. "
    "One line per check (PASS, FAIL, WARN, or SKIP when it could not run); exit 0 without a FAIL, "
    "1 with one, 2 for a bad command line."
)


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False)
    add_arguments(top)
    return top


def run(args: argparse.Namespace, env: Mapping[str, str], stream: TextIO, fail: Callable[[str], NoReturn]) -> int:
    """Check the endpoint ``args`` name; ``fail(message)`` reports a bad command line (exit 2)."""
    try:
        url = config.parse_url(args.url, allow_insecure=args.allow_insecure_http)
    except ValueError as exc:
        fail(f"URL {args.url!r} {exc}".replace("allow-insecure-http: true", "--allow-insecure-http"))
    token = env.get(args.token_env, "").strip()
    if not token:
        fail(f"no token: set {args.token_env} to the CP token (or name another variable with --token-env)")
    target = Target(url=url, token=token, redeploy_path=args.redeploy_path, target_tag=args.target_tag,
                    test_tenant=args.test_tenant or "", request_timeout=args.request_timeout,
                    rollout_timeout=max(args.rollout_timeout, args.request_timeout), cp_worst_case=args.cp_worst_case)
    print(f"# {PROG}: POST {target.endpoint}" + (f", test tenant {target.test_tenant}" if target.test_tenant
                                                 else ", dry runs only"), file=stream, flush=True)
    check = ContractCheck(target)
    try:
        findings = check.run()
    finally:
        check.close()
    for finding in findings:
        print(finding.line().replace(token, "***"), file=stream, flush=True)
    counts = {verdict: sum(f.verdict is verdict for f in findings) for verdict in Verdict}
    print(f"# {', '.join(f'{n} {verdict}' for verdict, n in counts.items())}", file=stream, flush=True)
    return 1 if counts[Verdict.FAIL] else 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> int:
    """``python -m deploy.contract``; ``fleet-rollout contract`` is the same through :mod:`deploy.main`."""
    top = parser("python -m deploy.contract")
    args = top.parse_args(argv)
    return run(args, os.environ if env is None else env, stream or sys.stdout, top.error)


if __name__ == "__main__":
    sys.exit(main())
