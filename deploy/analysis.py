"""Metric analysis: is the build hurting the tenants a step moved? Asked of a Prometheus-compatible API.

A tenant that reports the SHA can still answer every request with a 500. Each ``analysis-query``
line names a PromQL expression and the condition its value must meet (``errors: … < 0.01``);
:class:`Analyzer` sends it with ``{tenants}`` resolved to the tenants under analysis and judges
the answer. The pipeline asks three things of it: :meth:`Analyzer.validate` at plan time (a query
the API cannot parse is a configuration error before anything moves), :meth:`Analyzer.watch`
during a soak or a bake, and :meth:`Analyzer.evaluate` once right before promote.

**Verdicts.** Each evaluation of one query is ``pass``, ``fail`` or ``inconclusive``
(:class:`Verdict`). A vector is judged per series: it fails if any series fails, and is named by
the worst one (``errors = 0.31 on tenant="t01", not < 0.01``); a series without a usable value
(NaN: no traffic in the window, ±Inf, a non-number) makes the evaluation inconclusive unless
another series fails. No series at all, a matrix or a string, an API error, an unreachable,
slow or lying API (HTML, a huge or deeply nested body, ``status: error``, wrong types): all
inconclusive, never ``pass``. Missing evidence is not evidence for the build, nor against it.

**Steps.** A step's :class:`StepResult` is ``pass``, ``fail`` or ``hold`` (:class:`StepVerdict`):
a query that fails ``analysis-failure-limit`` evaluations in a row fails the step (Argo's
``failureLimit``; an inconclusive evaluation in between neither counts nor clears the streak), and
one inconclusive that many times in a row is ``hold`` or ``fail`` as ``analysis-inconclusive``
says. A streak still open when a watch ends (or at a one-shot :meth:`Analyzer.evaluate`) is
settled by evaluating again every ``analysis-interval``, at most ``2 × failure-limit`` more
rounds, so a step never passes on a last evaluation that failed. ``analysis-dry-run`` evaluates
and records everything but the step always passes ("report only", with what it would have done).

**Bounded like every client.** One session from :meth:`deploy.context.Context.client`: each
exchange has a deadline (``request-timeout``, at most ``analysis-interval``, and never past the
overall ``timeout``), a body cap of :data:`BODY_LIMIT`, retries of 502/503/504 on
``retry-delays``, redirects only within the origin. Queries are POSTed as a form: a regex of
10,000 tenants does not fit in a URL. What a server says reaches the log and the records only
shortened and redacted; the token travels only in ``Authorization``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any

from deploy import http, promql
from deploy.context import Context
from deploy.domain import display_url
from deploy.errors import ConfigError, ConfigErrors, DeployFailed
from deploy.runner import counted
from deploy.settings import AnalysisQuery, AnalysisSettings, Comparison, HttpSettings, Inconclusive

BODY_LIMIT = 8 * 1024 * 1024  # a vector of 10,000 tenant series is about 1 MiB
QUERY_KEPT = 4096  # characters of a sent query an Evaluation keeps (a 10,000-tenant regex is ~100 KB)
NAMED_SERIES = 5  # failing series named in an evaluation's detail
FAILING_KEPT = 20  # failing series an Evaluation lists
SERIES_SHOWN = 200  # characters of one series' labels
LABEL_SHOWN = 60  # characters of one label value
LABELS_SHOWN = 8  # labels of one series
VALUE_CHARS = 64  # a sample value longer than this is not a number
DETAIL_CHARS = 300  # characters of a server's words in a detail


class Verdict(StrEnum):
    """One evaluation of one query; also what the analysis of a step found."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"  # no data, NaN, the API down or lying: never pass


class StepVerdict(StrEnum):
    """What a step does with its analysis: go on, halt like a failed proof (on-failure applies),
    or stop without rollback (an inconclusive analysis under ``analysis-inconclusive: hold``).
    ``cut``: the step ended before its analysis decided (its proof halted, the timeout, a cancel);
    its evaluations so far are kept, and it says nothing about the build."""

    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"
    CUT = "cut"


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One query evaluated once, for the log and the report.

    ``series``/``value`` are the deciding series: the worst failing one, else the worst passing
    one (nearest to failing), else the first without a usable value; ``""`` for a scalar or a
    series without labels.
    """

    step: str
    name: str
    query: str  # as sent, {tenants} resolved; past QUERY_KEPT characters cut with a note
    series: str  # labels of the deciding series: tenant="t01", code="500"
    value: float | None  # its value; None when there is none (inconclusive)
    op: Comparison
    threshold: float
    verdict: Verdict
    at: float  # seconds since the run started (ctx.deadline.elapsed())
    detail: str  # one line: the series judged, or why there is no verdict
    series_count: int = 0
    failing_count: int = 0
    failing: tuple[str, ...] = ()  # labels of the worst failing series, at most FAILING_KEPT

    @property
    def summary(self) -> str:
        """``errors = 0.31 on tenant="t01", not < 0.01`` — what a reason or a log line says."""
        if self.verdict is Verdict.INCONCLUSIVE or self.value is None:
            return f"{self.name} is inconclusive: {self.detail}"
        on = f" on {self.series}" if self.series else ""
        condition = f"{self.op} {self.threshold:g}"
        if self.verdict is Verdict.FAIL:
            more = f" ({self.failing_count} of {self.series_count} series fail)" if self.series_count > 1 else ""
            return f"{self.name} = {self.value:g}{on}, not {condition}{more}"
        worst = f" (worst of {self.series_count} series)" if self.series_count > 1 else ""
        return f"{self.name} = {self.value:g}{on}{worst} {condition}"


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """The analysis of one step (``canary``, ``batch 2/5``, ``promote``).

    ``verdict`` is what the step does; ``finding`` what the analysis found before report-only
    and ``analysis-inconclusive`` were applied; ``reason`` names the query, the value and the
    threshold (``errors = 0.31 on tenant="t01", not < 0.01``).
    """

    step: str
    verdict: StepVerdict
    finding: Verdict
    reason: str
    query: str = ""  # name of the deciding query; '' when every query passed
    evaluations: tuple[Evaluation, ...] = ()  # this step's, in order
    report_only: bool = False
    at: float = 0.0  # seconds since the run started, when the step's analysis ended

    @property
    def passed(self) -> bool:
        return self.verdict is StepVerdict.PASS


@dataclass(frozen=True)
class _Answer:
    """The API's answer to one query: its ``data`` object, or why there is none."""

    data: dict[str, Any] | None
    problem: str = ""
    status: int = 0  # HTTP status; 0 when no answer came
    error_type: str = ""  # Prometheus' errorType (bad_data, execution, timeout, …)
    words: str = ""  # the API's own error text, redacted


@dataclass(frozen=True)
class _Decision:
    verdict: Verdict  # FAIL or INCONCLUSIVE
    evaluation: Evaluation
    streak: int
    unsettled: bool = False  # a streak still open after settling: neither a pass nor a failure


@dataclass
class _Streaks:
    """Consecutive failed and inconclusive evaluations of each query within one step."""

    limit: int
    failed: dict[str, int] = field(default_factory=dict)
    unclear: dict[str, int] = field(default_factory=dict)

    def add(self, evaluations: Sequence[Evaluation]) -> _Decision | None:
        """Count one round; the first query (fail before inconclusive) whose streak reached the limit."""
        for evaluation in evaluations:
            name = evaluation.name
            if evaluation.verdict is Verdict.PASS:
                self.failed[name] = self.unclear[name] = 0
            elif evaluation.verdict is Verdict.FAIL:
                self.failed[name] = self.failed.get(name, 0) + 1
                self.unclear[name] = 0
            else:  # neither counts as a failure nor clears one
                self.unclear[name] = self.unclear.get(name, 0) + 1
        for verdict, streaks in ((Verdict.FAIL, self.failed), (Verdict.INCONCLUSIVE, self.unclear)):
            for evaluation in evaluations:
                if streaks.get(evaluation.name, 0) >= self.limit:
                    return _Decision(verdict, evaluation, streaks[evaluation.name])
        return None

    def open(self) -> set[str]:
        """Queries with a streak begun but not decided."""
        return {name for name in (*self.failed, *self.unclear) if self.failed.get(name) or self.unclear.get(name)}


class Analyzer:
    """Metric analysis for one run: one session to the API, every evaluation kept in :attr:`evaluations`.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, settings: AnalysisSettings, http_settings: HttpSettings, ctx: Context) -> None:
        self.settings, self.ctx = settings, ctx
        self.evaluations: list[Evaluation] = []
        self.budget = min(http_settings.request_timeout, settings.interval)
        headers = {"Accept": "application/json", **_authorization(settings)}
        self.http = ctx.client(http_settings.policy(cap=BODY_LIMIT, headers=headers), on_retry=ctx.runner.log)

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- plan time ---------------------------------------------------------------------

    def validate(self, tenants: Sequence[str]) -> None:
        """Send every query once, before anything moves (``time`` = now, the tenants resolved).

        A query the API cannot parse (``errorType: bad_data``), or one that answers a matrix or a
        string (nothing to compare), is a :class:`ConfigErrors` naming ``analysis-query`` and the
        line (exit 2). An API that does not answer usefully now would not during the rollout
        either: :class:`DeployFailed` (exit 1), nothing deployed.
        """
        errors: list[ConfigError] = []
        where, unchecked = display_url(self.settings.url), 0
        for query in self.settings.queries:
            answer = self._ask(promql.render(query, tenants), at=self.ctx.clock.wall())
            if answer.status == 400 and answer.error_type == "bad_data":
                errors.append(ConfigError("analysis-query", f"line {query.line} ({query.name}): the API at {where} "
                                                            f"cannot run it: {answer.words} (positions count in "
                                                            "the query as sent, {tenants} resolved)"))
            elif answer.data is None:
                hint = " (check analysis-token or analysis-username/analysis-password)" \
                    if answer.status in (401, 403) else ""
                said = (f"analysis-url {where} gave no usable answer to {query.name} at plan time: "
                        f"{answer.problem}{hint}")
                if self.settings.dry_run:  # report only: a gate being tried out never stops the run
                    self.ctx.runner.warning(f"{said}; report only (analysis-dry-run), so the rollout goes on",
                                            title="metric analysis")
                    unchecked += 1
                    continue
                raise DeployFailed(f"{said}, so no step could be judged; nothing was deployed")
            elif answer.data.get("resultType") not in ("vector", "scalar"):
                errors.append(ConfigError("analysis-query", f"line {query.line} ({query.name}): returns a "
                                                            f"{_shape(answer.data.get('resultType'))}; a query must "
                                                            "return an instant vector or a scalar to be compared"))
        if errors:
            raise ConfigErrors(errors)
        count = len(self.settings.queries)
        self.ctx.runner.log(f"analysis: {count - unchecked} of {count} queries checked by {where}" if unchecked
                            else f"analysis: {count} queries accepted by {where}")

    # -- steps -------------------------------------------------------------------------

    def evaluate(self, step: str, tenants: Sequence[str]) -> StepResult:
        """Every query once, now (a failure is re-evaluated up to the failure limit: see module doc)."""
        return self.watch(step, tenants, 0.0)

    def watch(self, step: str, tenants: Sequence[str], seconds: float) -> StepResult:
        """Evaluate every ``analysis-interval`` for ``seconds``, and once at the end.

        The first evaluation comes one interval in (at once when ``seconds`` is 0), so it sees
        the build running; a failure decided early ends the watch early (not in report-only mode,
        which keeps watching and reports what it would have done). Sleeps on the run's clock,
        within the overall deadline (:class:`~deploy.errors.DeadlineExceeded` otherwise).
        """
        return self.start(step, tenants, seconds).finish()

    def start(self, step: str, tenants: Sequence[str], seconds: float) -> StepWatch:
        """A watch that the caller drives (:meth:`StepWatch.tick` whenever it has a moment, and
        :meth:`StepWatch.finish` at the end): a soak or a bake that also polls ``/buildinfo``."""
        rendered = [(query, promql.render(query, tenants)) for query in self.settings.queries]
        every = f", every {self.settings.interval:g} s" if seconds > self.settings.interval else ""
        self.ctx.runner.log(f"analysis · {step}: {len(self.settings.queries)} queries over {len(set(tenants))} "
                            f"tenant(s), " + (f"for {seconds:g} s{every}" if seconds > 0 else "once"))
        return StepWatch(self, step, rendered, seconds)

    def _sleep_until(self, at: float, step: str) -> None:
        wait = at - self.ctx.clock.now()
        if wait > 0:
            self.ctx.deadline.sleep(wait, f"analysing {step}")

    def _round(self, step: str, rendered: Sequence[tuple[AnalysisQuery, str]]) -> list[Evaluation]:
        """Every query once: one evaluation and one log line each."""
        evaluations = []
        for query, text in rendered:
            evaluation = self._evaluation(step, query, text, self._ask(text))
            self.evaluations.append(evaluation)
            evaluations.append(evaluation)
            self.ctx.runner.log(f"analysis · {step} · {evaluation.summary} → {evaluation.verdict} "
                                f"({evaluation.at:.1f} s)")
        return evaluations

    def _settle(self, step: str, rendered: Sequence[tuple[AnalysisQuery, str]], streaks: _Streaks,
                decision: _Decision | None, evaluations: Sequence[Evaluation]) -> _Decision | None:
        """A streak still open when a watch ends (any query's, one opened while settling too):
        evaluate again every interval, at most twice the failure limit. Still open after that, the
        step is inconclusive, never a pass: its last word on some query was not a pass."""
        rounds, last = 0, list(evaluations)
        while decision is None and streaks.open() and rounds < 2 * self.settings.failure_limit:
            self._sleep_until(self.ctx.clock.now() + self.settings.interval, step)
            last = self._round(step, rendered)
            decision = streaks.add(last)
            rounds += 1
        if decision is not None or not streaks.open():
            return decision
        latest = {evaluation.name: evaluation for evaluation in last}
        unsettled = [latest[name] for name in sorted(streaks.open()) if name in latest]
        worst = next((e for e in unsettled if e.verdict is Verdict.FAIL), unsettled[0] if unsettled else last[-1])
        return _Decision(Verdict.INCONCLUSIVE, worst, 0, unsettled=True)

    def _result(self, step: str, decision: _Decision | None, evaluations: tuple[Evaluation, ...],
                seconds: float) -> StepResult:
        at = self.ctx.deadline.elapsed()
        report_only = self.settings.dry_run
        if decision is None:
            reason = _passed(self.settings.queries, evaluations, seconds)
            return StepResult(step=step, verdict=StepVerdict.PASS, finding=Verdict.PASS,
                              reason=f"report only: {reason}" if report_only else reason,
                              evaluations=evaluations, report_only=report_only, at=at)
        streak = f" ({decision.streak} evaluations in a row)" if decision.streak > 1 else ""
        if decision.unsettled:
            streak = (f" (still not passing after {2 * self.settings.failure_limit} more evaluations: "
                      "the step ends unsettled)")
        reason = decision.evaluation.summary + streak
        if decision.verdict is Verdict.FAIL:
            verdict = StepVerdict.FAIL
        else:
            verdict = StepVerdict.HOLD if self.settings.inconclusive is Inconclusive.HOLD else StepVerdict.FAIL
            reason += f" (analysis-inconclusive: {self.settings.inconclusive})"
        if report_only:
            reason, verdict = f"report only: {reason} (would {verdict})", StepVerdict.PASS
        return StepResult(step=step, verdict=verdict, finding=decision.verdict, reason=reason,
                          query=decision.evaluation.name, evaluations=evaluations, report_only=report_only, at=at)

    # -- one query ---------------------------------------------------------------------

    def _ask(self, text: str, at: float | None = None) -> _Answer:
        """POST the query (a form: a 10,000-tenant regex does not fit a URL); the ``data`` or why not."""
        form = {"query": text, "timeout": f"{self.budget:g}"}
        if at is not None:
            form["time"] = f"{at:.3f}"
        try:
            reply = self.http.request("POST", self.settings.query_url, data=form, budget=self.budget)
        except http.TransportError as exc:
            return _Answer(None, self._said(f"no answer from the API: {exc}"))
        if reply.status != 200:
            text = reply.redirect_note or reply.error_text() or "no reason given"
            return _Answer(None, self._said(f"the API answered HTTP {reply.status}: {text}"), reply.status,
                           _error_type(reply.body), self._said(text))
        try:
            doc = reply.json()
        except http.UnusableBody as exc:
            return _Answer(None, self._said(f"the API answered 200 with a body that is {exc}: "
                                            f"{http.error_text(reply.body, 120)}"), 200)
        if not isinstance(doc, dict):
            return _Answer(None, f"the API answered 200 with JSON that is not an object: {http.compact_json(doc, 80)}",
                           200)
        if doc.get("status") != "success":
            words = http.error_text(reply.body) or "no reason given"
            problem = f"the API answered status {http.compact_json(doc.get('status'), 40)}: {words}"
            return _Answer(None, self._said(problem), 200, _text(doc.get("errorType")), self._said(words))
        data = doc.get("data")
        if not isinstance(data, dict):
            return _Answer(None, f"the API answered success without a data object: {http.compact_json(data, 80)}", 200)
        return _Answer(data, "", 200)

    def _said(self, text: str) -> str:
        """A server's words, redacted (it may echo the token) and on one bounded line."""
        return self.ctx.runner.redact(" ".join(text.split())[: DETAIL_CHARS * 2])

    def _evaluation(self, step: str, query: AnalysisQuery, text: str, answer: _Answer) -> Evaluation:
        kept = text if len(text) <= QUERY_KEPT else \
            text[:QUERY_KEPT] + f"… ({len(text) - QUERY_KEPT} more characters)"
        base = Evaluation(step=step, name=query.name, query=kept, series="", value=None, op=query.op,
                          threshold=query.threshold, verdict=Verdict.INCONCLUSIVE, at=self.ctx.deadline.elapsed(),
                          detail="")
        if answer.data is None:
            return replace(base, detail=answer.problem)
        kind, result = answer.data.get("resultType"), answer.data.get("result")
        if kind == "scalar":
            value, problem = _sample(result)
            if value is None:
                return replace(base, series_count=1, detail=f"the scalar has {problem}")
            verdict = Verdict.PASS if query.op.holds(value, query.threshold) else Verdict.FAIL
            return replace(base, value=value, verdict=verdict, detail="a scalar", series_count=1)
        if kind != "vector":
            return replace(base, detail=f"the query returned a {_shape(kind)}, not an instant vector or a scalar")
        if not isinstance(result, list):
            return replace(base, detail=f"the vector's result is not a list: {http.compact_json(result, 80)}")
        return _judge_vector(query, result, base)


class StepWatch:
    """One step's analysis as it happens: evaluated when due, decided at the end.

    :meth:`finish` drives it alone to its end (sleeping until each evaluation is due): that is
    :meth:`Analyzer.watch`. A soak or a bake that also polls the tenants' ``/buildinfo`` calls
    :meth:`tick` after each of its rounds — an evaluation then comes at the first round after it is
    due — and :meth:`finish` when its own watch is over.
    """

    def __init__(self, analyzer: Analyzer, step: str, rendered: Sequence[tuple[AnalysisQuery, str]],
                 seconds: float) -> None:
        self.analyzer, self.step, self.rendered, self.seconds = analyzer, step, rendered, seconds
        clock, interval = analyzer.ctx.clock, analyzer.settings.interval
        self.first = len(analyzer.evaluations)
        self.streaks = _Streaks(analyzer.settings.failure_limit)
        self.end = clock.now() + max(seconds, 0.0)
        self.due = min(clock.now() + interval, self.end)  # the first evaluation sees the build running
        self.decision: _Decision | None = None
        self.rounds = 0
        self.last = float("-inf")  # clock time of the last evaluation
        self.done = False  # finished or cut: its StepResult was made

    def over(self) -> bool:
        """Decided (and not report-only, which watches to the end), or evaluated at the end of its time."""
        decided = self.decision is not None and not self.analyzer.settings.dry_run
        return decided or self.last >= self.end

    def tick(self) -> bool:
        """Evaluate if an evaluation is due; True once the step is decided (the caller may stop early)."""
        clock = self.analyzer.ctx.clock
        if self.over() or clock.now() < self.due:
            return self.over()
        self.last = clock.now()
        found = self.streaks.add(self.analyzer._round(self.step, self.rendered))
        self.decision = self.decision or found
        self.rounds += 1
        self.due = min(self.due + self.analyzer.settings.interval, self.end)
        if self.due <= clock.now() < self.end:  # a slow round: the next one is due now, not in the past
            self.due = clock.now()
        return self.over()

    def finish(self) -> StepResult:
        """The step's result: the evaluations still due (the one at the end included) made, and an
        open failure streak settled (see the module doc)."""
        analyzer = self.analyzer
        while not self.over():
            analyzer._sleep_until(self.due, self.step)
            self.tick()
        self.decision = analyzer._settle(self.step, self.rendered, self.streaks, self.decision,
                                         analyzer.evaluations[self.first:])
        result = analyzer._result(self.step, self.decision, tuple(analyzer.evaluations[self.first:]), self.seconds)
        analyzer.ctx.runner.log(f"analysis · {self.step}: {result.verdict} — {result.reason}")
        self.done = True
        return result

    def cut(self, why: str) -> StepResult:
        """The step ended before its analysis decided: what was evaluated so far, kept for the
        report, with no verdict on the build."""
        self.done = True
        analyzer = self.analyzer
        evaluations = tuple(analyzer.evaluations[self.first:])
        return StepResult(step=self.step, verdict=StepVerdict.CUT, finding=Verdict.INCONCLUSIVE,
                          reason=f"cut short after {counted(len(evaluations), 'evaluation')}: {why}",
                          evaluations=evaluations, report_only=analyzer.settings.dry_run,
                          at=analyzer.ctx.deadline.elapsed())


def _judge_vector(query: AnalysisQuery, result: list[Any], base: Evaluation) -> Evaluation:
    """Each series on its own: any failing series fails the vector; then any unusable one makes it
    inconclusive; an empty vector is no data."""
    if not result:
        return replace(base, detail="no data: the query returned no series (no traffic, or no series of these tenants)")
    failing: list[tuple[str, float]] = []
    unusable: list[tuple[str, str]] = []
    worst: tuple[str, float] | None = None
    for item in result:
        labels = _labels(item.get("metric") if isinstance(item, dict) else None)
        value, problem = _sample(item.get("value") if isinstance(item, dict) else None)
        if value is None:
            unusable.append((labels, problem))
        elif not query.op.holds(value, query.threshold):
            failing.append((labels, value))
        elif worst is None or query.op.worse(value, worst[1]):
            worst = (labels, value)
    count = len(result)
    if failing:
        ranked = failing  # worst first: the furthest past the threshold
        if query.op in (Comparison.LT, Comparison.LE):
            ranked = sorted(failing, key=lambda pair: pair[1], reverse=True)
        elif query.op in (Comparison.GT, Comparison.GE):
            ranked = sorted(failing, key=lambda pair: pair[1])
        named = ", ".join(f"{labels or '{}'} {value:g}" for labels, value in ranked[:NAMED_SERIES])
        more = f" and {len(ranked) - NAMED_SERIES} more" if len(ranked) > NAMED_SERIES else ""
        return replace(base, series=ranked[0][0], value=ranked[0][1], verdict=Verdict.FAIL, series_count=count,
                       failing=tuple(labels for labels, _ in ranked[:FAILING_KEPT]), failing_count=len(ranked),
                       detail=f"{len(ranked)} of {count} series fail: {named}{more}")
    if unusable:
        labels, problem = unusable[0]
        on = f" on {labels}" if labels else ""
        others = f" ({len(unusable)} of {count} series without a usable value)" if count > 1 else ""
        return replace(base, series=labels, series_count=count, detail=f"{problem}{on}{others}")
    assert worst is not None  # every series passed
    return replace(base, series=worst[0], value=worst[1], verdict=Verdict.PASS, series_count=count,
                   detail=f"{count} series pass" + (f"; worst {worst[0]}" if worst[0] else ""))


def _sample(raw: Any) -> tuple[float | None, str]:
    """A sample ``[time, "value"]``: its finite value, or ``(None, why not)``."""
    if not isinstance(raw, list) or len(raw) != 2:
        return None, f"a sample that is not [time, value]: {http.compact_json(raw, 60)}"
    value = raw[1]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None, f"a value that is not a number: {http.compact_json(value, 60)}"
    try:
        if isinstance(value, str) and len(value) > VALUE_CHARS:
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        return None, f"a value that is not a number: {http.compact_json(value, 60)}"
    if math.isnan(number):
        return None, "value NaN (0/0: no traffic in the window?)"
    if math.isinf(number):
        return None, f"value {'+' if number > 0 else '-'}Inf"
    return number, ""


def _labels(metric: Any) -> str:
    """``tenant="t01", code="500"``: a series' labels, bounded (a server chose them)."""
    if not isinstance(metric, dict):
        return "" if metric is None else f"(labels that are not an object: {http.compact_json(metric, 40)})"
    parts = []
    for name, value in list(metric.items())[:LABELS_SHOWN]:
        shown = value if isinstance(value, str) else http.compact_json(value, LABEL_SHOWN)
        shown = " ".join(shown.split())
        shown = shown if len(shown) <= LABEL_SHOWN else shown[:LABEL_SHOWN - 1] + "…"
        parts.append(f'{" ".join(str(name).split())[:LABEL_SHOWN]}="{shown}"')
    more = f", … {len(metric) - LABELS_SHOWN} more labels" if len(metric) > LABELS_SHOWN else ""
    text = ", ".join(parts) + more
    return text if len(text) <= SERIES_SHOWN else text[:SERIES_SHOWN - 1] + "…"


def _shape(kind: Any) -> str:
    shapes = {"matrix": "range vector (matrix): wrap it in a function such as rate(…[2m]) or max_over_time(…)",
              "string": "string"}
    return shapes.get(kind, f"result of type {http.compact_json(kind, 40)}") if isinstance(kind, str) \
        else f"result of type {http.compact_json(kind, 40)}"


def _error_type(body: bytes) -> str:
    try:
        doc = http.parse_json(body)
    except http.UnusableBody:
        return ""
    return _text(doc.get("errorType")) if isinstance(doc, dict) else ""


def _passed(queries: Sequence[AnalysisQuery], evaluations: Sequence[Evaluation], seconds: float) -> str:
    """``errors, p99 passed 4 evaluations over 60 s``; with the verdicts counted when not all passed."""
    names = ", ".join(query.name for query in queries)
    over = f" over {seconds:g} s" if seconds else ""
    counts = {verdict: sum(e.verdict is verdict for e in evaluations) for verdict in Verdict}
    if counts[Verdict.PASS] == len(evaluations):
        rounds = len(evaluations) // max(len(queries), 1)
        return f"{names} passed {rounds} evaluation{'s' if rounds != 1 else ''}{over}"
    said = ", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count)
    return f"{names}: {len(evaluations)} evaluations{over} ({said}), no streak reached the limit and the last passed"


def _text(value: Any) -> str:
    return value[:40] if isinstance(value, str) else ""


def _authorization(settings: AnalysisSettings) -> dict[str, str]:
    """Bearer (analysis-token) or Basic (analysis-username/-password); both are registered secrets."""
    if settings.token:
        return {"Authorization": f"Bearer {settings.token}"}
    if settings.username:
        pair = base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    return {}
