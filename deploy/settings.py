"""The validated settings each stage reads: frozen, built only by :func:`deploy.config.load`.

They live apart from the parser so that a stage imports what it is configured by without
importing how the environment is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from deploy import http
from deploy.domain import ImageRef
from deploy.waves import BatchSize

STAGES: tuple[str, ...] = ("rollout", "verify", "promote")


class Comparison(StrEnum):
    """The comparison an ``analysis-query`` line ends with: the value must satisfy it to pass."""

    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    EQ = "=="
    NE = "!="

    def holds(self, value: float, threshold: float) -> bool:
        """Whether ``value <op> threshold`` (callers judge NaN and infinities before asking)."""
        if self is Comparison.LT:
            return value < threshold
        if self is Comparison.LE:
            return value <= threshold
        if self is Comparison.GT:
            return value > threshold
        if self is Comparison.GE:
            return value >= threshold
        if self is Comparison.EQ:
            return value == threshold
        return value != threshold

    def worse(self, a: float, b: float) -> bool:
        """Whether ``a`` is nearer to failing than ``b``: a passing vector is shown by its worst series."""
        if self in (Comparison.LT, Comparison.LE):
            return a > b
        if self in (Comparison.GT, Comparison.GE):
            return a < b
        return False


class Inconclusive(StrEnum):
    """What an inconclusive analysis (no data, NaN, the metrics API down) does to a step
    (``analysis-inconclusive``). Never "pass": missing evidence is not evidence for the build."""

    HOLD = "hold"  # stop without rollback: an outage of Prometheus is no evidence against the build
    FAIL = "fail"  # treat it as a failed analysis: halt, and on-failure applies


class OnFailure(StrEnum):
    """What a failed run does with what it shipped (``on-failure``)."""

    HOLD = "hold"  # leave the fleet as the failure left it; a person decides
    ROLLBACK = "rollback"  # redeploy rollback-tag on every tenant this run moved


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """How long one request may take and how transient failures are retried, for every remote party."""

    request_timeout: float
    retry_delays: tuple[float, ...]

    def policy(self, *, cap: int, headers: Mapping[str, str] | None = None) -> http.Policy:
        """A retried client's policy for one remote party: its body cap and headers, these timings."""
        return http.Policy(self.retry_delays, budget=self.request_timeout, cap=cap, headers=dict(headers or {}))


@dataclass(frozen=True, kw_only=True)
class ControlPlaneSettings:
    """Where the control plane is and how it is called."""

    url: str
    token: str = field(repr=False)
    redeploy_path: str
    rollout_timeout: float  # the read budget of a real redeploy: the CP answers after its slowest tenant

    @property
    def redeploy_url(self) -> str:
        return self.url.rstrip("/") + self.redeploy_path


@dataclass(frozen=True, kw_only=True)
class RolloutSettings:
    """What is deployed and in what steps: canary, soak, batches, tolerance; the CP's own worst case."""

    target_tag: str
    canary: str
    soak_seconds: float
    batch_sizes: tuple[BatchSize, ...]  # the calls after the canary: counts or percentages, the last repeated
    max_stragglers: int
    cp_tenant_timeout: float
    cp_settle_seconds: float
    dry_run: bool
    skip_current: bool = True  # do not redeploy a tenant whose pre-deploy snapshot reports sha (skip-current)
    on_failure: OnFailure = OnFailure.HOLD
    rollback_tag: str = ""  # the tag a rollback deploys: rollback-tag, or promote-tag's value when empty
    batch_soak_seconds: float = 0.0  # each batch's bake: its tenants watched this long after its proof
    max_batch_size: int = 0  # the most tenants the CP takes in one call; 0: no cap

    @property
    def batch_size(self) -> int:
        """One number for a call whose fleet is not known yet (the enumeration's ``batch_size``):
        the largest count, else ``max-batch-size``, else 1."""
        counts = [size.count for size in self.batch_sizes if size.count]
        return min(max(counts), self.max_batch_size or max(counts)) if counts else self.max_batch_size or 1

    def largest_call(self, fleet: int) -> int:
        """The most tenants one call of this plan takes in a fleet of ``fleet``: a rollback's call size."""
        largest = max(size.tenants(fleet) for size in self.batch_sizes)
        return min(largest, self.max_batch_size) if self.max_batch_size else largest
    @property
    def call_worst_case(self) -> float:
        """How long the CP may take to answer a scoped call: its slowest tenant, then the settle."""
        return self.cp_tenant_timeout + self.cp_settle_seconds


@dataclass(frozen=True, kw_only=True)
class VerifySettings:
    """How each tenant proves what it runs: its ``/buildinfo`` URL and field, and the polling budget."""

    url_template: str  # empty: verify is skipped with a warning
    field: str
    budget: float
    interval: float
    concurrency: int
    each_batch: bool = True  # prove each deploy call's tenants before the next call (verify-each-batch)


@dataclass(frozen=True, kw_only=True)
class PromoteSettings:
    """Which tag moves, in which images, to which source, with which registry credentials."""

    images: tuple[ImageRef, ...]
    tag: str
    source: str  # a tag, or a sha256: digest
    username: str
    password: str = field(repr=False)
    allow_single_arch: bool


@dataclass(frozen=True, kw_only=True)
class GateSettings:
    """What must hold before anything moves: green checks, the newest commit, no kill switch."""

    required_checks: tuple[str, ...]  # commit status or check-run names, all of which must succeed
    checks_timeout: float
    checks_interval: float
    skip_if_superseded: bool
    branch: str  # whose head decides whether this run is superseded
    disabled_variable: str  # a repository variable read live; '' for none


@dataclass(frozen=True, kw_only=True)
class ForgeSettings:
    """Where the forge API is (GitHub or Gitea), and the job's token for it."""

    kind: str  # "github" | "gitea"
    api_url: str
    repository: str  # owner/name
    token: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class AnalysisQuery:
    """One line of ``analysis-query``: ``NAME: EXPR <op> THRESHOLD``, parsed by :mod:`deploy.promql`."""

    name: str
    expr: str  # PromQL as written, ``{tenants}`` kept (rendered per step: deploy.promql.render)
    op: Comparison
    threshold: float
    line: int  # 1-based line of the input, for errors
    quotes: tuple[str, ...] = ()  # the quote character around each ``{tenants}``, in order

    @property
    def condition(self) -> str:
        """``< 0.01``: what a passing value satisfies."""
        return f"{self.op} {self.threshold:g}"


@dataclass(frozen=True, kw_only=True)
class AnalysisSettings:
    """Metric analysis against a Prometheus-compatible API; the default (no ``url``) is off."""

    url: str = ""  # the API's base URL: queries go to {url}/api/v1/query
    queries: tuple[AnalysisQuery, ...] = ()
    token: str = field(default="", repr=False)  # Authorization: Bearer
    username: str = ""  # Authorization: Basic, with password (never with token)
    password: str = field(default="", repr=False)
    interval: float = 30.0  # seconds between evaluations while a step is watched
    failure_limit: int = 1  # consecutive failed (or inconclusive) evaluations of a query that decide a step
    inconclusive: Inconclusive = Inconclusive.HOLD
    dry_run: bool = False  # report only: evaluate and record, never stop a step

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def query_url(self) -> str:
        return self.url.rstrip("/") + "/api/v1/query"


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every validated input of one run, grouped by the stage or client that reads it."""

    stages: tuple[str, ...]  # in pipeline order
    sha: str
    http: HttpSettings
    cp: ControlPlaneSettings
    rollout: RolloutSettings
    verify: VerifySettings
    promote: PromoteSettings
    gates: GateSettings
    forge: ForgeSettings
    report_path: Path
    timeout: float
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)  # off unless analysis-url is set
    run_key: str = "fleet-rollout"  # this run's part of every Idempotency-Key (deploy.config.run_key)

    def wants(self, stage: str) -> bool:
        return stage in self.stages

    @property
    def planned_reserve(self) -> float:
        """:attr:`rollback_reserve` as the run would keep it: what a dry run's plan leaves for a rollback too."""
        if self.rollout.on_failure != OnFailure.ROLLBACK or not self.wants("rollout"):
            return 0.0
        return self.rollout.call_worst_case + (self.verify.budget if self.verify.url_template else 0.0)

    @property
    def rollback_reserve(self) -> float:
        """Seconds of ``timeout`` the snapshot, rollout and verify leave to a rollback: one call's
        worst case and the proof after it. None without ``on-failure: rollback``, nor for a run
        that deploys nothing (a dry run, ``stages`` without rollout): it cannot roll back."""
        return 0.0 if self.rollout.dry_run else self.planned_reserve
