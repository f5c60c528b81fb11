"""A simulated control plane and its tenants: ``POST redeploy-fleet`` and ``/tenants/{slug}/buildinfo``.

The contract kept here is ``docs/simulator.md`` (request checks, row shapes, knobs). The CP
redeploys a call's tenants concurrently and answers only after the slowest one, so a client read
budget shorter than the slowest tenant loses every result of the call. A dead tenant makes a call
slow (the CP's per-tenant timeout plus its health settle, 390 sim seconds by default), not failed:
its row says ``verified_on_target: false``, and the CP answers ``ok: false`` only when the call's
failed tenants outnumber its ``max_stragglers``.

Knobs per tenant (:class:`TenantSpec`) cover dead, slow, stale, unhealthy, flapping, settling,
reverting, silent and half-swapped tenants, tenants that start on a given build or refuse a tag
(a rollback), rows missing or
in an older CP's shape; ``FleetSim.bad_builds`` makes a build bad fleet-wide (the CP says on target,
``/buildinfo`` keeps the previous build); ``builds`` maps every tag the CP can deploy, ``latest``
included (:func:`builds_for`: ``latest`` still names the previous build, for rollbacks);
:class:`Fault` scripts CP failures (502 JSON, 503 HTML, a hang past the read budget, a dropped
connection, ``ok: false``) for successive calls.

Each tenant also serves ``/tenants/{slug}/metrics`` (Prometheus text format) from generated traffic
(:mod:`deploy.sim.metrics`): ``request_rate`` (fleet-wide, or per tenant; 0 is no traffic), and
``FleetSim.build_health`` / ``TenantSpec.health`` (target tag → :class:`~deploy.sim.metrics.Health`)
make a build answer 5xx or slowly once a tenant runs it, on every tenant or on some.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from deploy.sim.metrics import CONTENT_TYPE, Health, Traffic, health_for
from deploy.sim.server import Request, Response

OLD_SHA = "0" * 40
HTML_503 = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>nginx</body></html>"
GATEWAY_504 = "<html><head><title>504 Gateway Time-out</title></head><body>nginx</body></html>"


@dataclass
class TenantSpec:
    """One tenant's behaviour (durations in sim seconds); fields may change while the server runs."""

    slug: str
    dead: bool = False  # the redeploy never finishes; /buildinfo drops connections
    deploy_seconds: float = 5.0  # how long the CP's redeploy of this tenant takes
    settle_seconds: float = 0.0  # /buildinfo keeps reporting its initial build this long after the deploy call's wait
    stale: bool = False  # /buildinfo never reports the new SHA (keeps its initial build), whatever the CP says
    unhealthy: bool = False  # the CP row says healthz_ok: false
    flapping: bool = False  # /buildinfo alternates a 503 with a good answer
    reverts_after: float | None = None  # this long after a deploy call's wait, /buildinfo reports the previous build
    slow_buildinfo: float = 0.0  # /buildinfo takes this long to answer
    omit_row: bool = False  # the CP answers without a row for this tenant
    legacy_row: bool = False  # the row lacks verified_on_target and healthz_ok (an older CP)
    running: str | None = None  # what /buildinfo reports before any deploy; None: OLD_SHA
    refuses: set[str] = field(default_factory=set)  # target tags whose deploy fails here: row failed, build kept
    alternates: bool = False  # half-swapped: after a deploy, every other /buildinfo read is its initial build
    silent_after: float | None = None  # this long after a deploy call's wait, /buildinfo drops connections …
    silent_for: float | None = None  # … for this long (None: for good, until the next deploy)
    request_rate: float | None = None  # requests per real second its /metrics counts; None: the fleet's, 0: no traffic
    health: dict[str, Health] = field(default_factory=dict)  # target tag → how that build serves here (metrics)

    @property
    def initial(self) -> str:
        """The build the tenant runs before its first deploy."""
        return OLD_SHA if self.running is None else self.running


@dataclass
class Fault:
    """One scripted CP failure, consumed by the next authorized, valid call it matches (not recorded)."""

    kind: str  # "502" | "503-html" | "503-busy" | "500" | "403" | "409" | "hang" | "reset" | "ok-false" |
    #            "500-after" | "reset-after" | "gateway-504" (any other kind drops the connection)
    on: str = "deploy"  # "deploy" | "enumerate" | "any"
    seconds: float = 0.0  # "hang": real seconds before the (abandoned) answer; "gateway-504": before the 504

    @property
    def deploys(self) -> bool:
        """The CP still deploys the call (the answer is what fails): the rest never reach its logic."""
        return self.kind in ("500-after", "reset-after", "gateway-504")

    def matches(self, dry_run: bool) -> bool:
        return self.on == "any" or self.on == ("enumerate" if dry_run else "deploy")


@dataclass(frozen=True)
class DeployRecord:
    """One tenant's redeploy by the CP: which tag, and when it began and ended (``time.monotonic()``)."""

    slug: str
    tag: str
    started: float
    ended: float


def overlapping(log: Iterable[DeployRecord]) -> list[tuple[DeployRecord, DeployRecord]]:
    """Pairs of redeploys of one tenant that ran at the same time: what must never happen."""
    by_slug: dict[str, list[DeployRecord]] = {}
    for record in log:
        by_slug.setdefault(record.slug, []).append(record)
    pairs = []
    for records in by_slug.values():
        longest: DeployRecord | None = None  # of those begun so far, the one that ends last
        for record in sorted(records, key=lambda record: record.started):
            if longest is not None and record.started < longest.ended:
                pairs.append((longest, record))
            if longest is None or record.ended > longest.ended:
                longest = record
    return pairs


@dataclass
class _Keyed:
    """A deploy call under one Idempotency-Key: its answer, once it has one."""

    done: threading.Event = field(default_factory=threading.Event)
    response: Response | None = None


@dataclass(frozen=True)
class _Deployed:
    """What a tenant's last deploy left: the build, when /buildinfo starts reporting it (``initial``,
    the build the tenant started on, until then), and when (``reverts_at``, monotonic) it falls back
    to ``previous``, the build it ran before."""

    sha: str
    ready_at: float
    previous: str = OLD_SHA
    reverts_at: float | None = None
    initial: str = OLD_SHA
    silent: tuple[float, float] | None = None  # (from, until) monotonic: /buildinfo drops connections

    def silent_at(self, now: float) -> bool:
        return self.silent is not None and self.silent[0] <= now < self.silent[1]

    def build(self, now: float) -> str:
        """The build the tenant runs at ``now``, settled or not."""
        return self.previous if self.reverts_at is not None and now >= self.reverts_at else self.sha

    def reports(self, now: float) -> str:
        """What /buildinfo reports at ``now``: ``initial`` while settling, ``previous`` once reverted."""
        if self.reverts_at is not None and now >= self.reverts_at:
            return self.previous
        return self.sha if now >= self.ready_at else self.initial


@dataclass
class FleetSim:
    """The CP and tenant endpoints of the simulator, as one :class:`~deploy.sim.server.Component`.

    Knobs may change between calls, except ``tenants``: the slug index is built once from it.
    """

    tenants: list[TenantSpec]
    builds: dict[str, str]  # target tag → the git SHA that tag's image reports
    token: str = "sim-cp-token"
    time_scale: float = 1.0
    cp_tenant_timeout: float = 300.0
    cp_settle_seconds: float = 90.0
    redeploy_path: str = "/cp/admin/tenants/redeploy-fleet"
    image: str = "registry.example/acme/tenant"
    faults: list[Fault] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # every accepted CP body, in order
    after_deploy: Callable[[dict[str, Any]], None] | None = None  # e.g. a newer commit lands mid-run
    bad_builds: set[str] = field(default_factory=set)  # target tags that never really swap (/buildinfo keeps the old)
    request_rate: float = 10.0  # requests per real second each tenant's /metrics counts (deploy.sim.metrics)
    build_health: dict[str, Health] = field(default_factory=dict)  # target tag → how that build serves, fleet-wide
    answer_loss: float = 0.0  # the share of deploy answers lost after the deploy took effect (the connection drops)
    replays: list[dict[str, Any]] = field(default_factory=list)  # bodies answered from an Idempotency-Key, not deployed
    deploy_log: list[DeployRecord] = field(default_factory=list)  # every tenant redeploy, with its times
    _keys: dict[str, _Keyed] = field(default_factory=dict, repr=False)
    _losses: random.Random = field(default_factory=lambda: random.Random(7), repr=False)  # seeded: runs repeat
    _traffic: Traffic = field(default_factory=Traffic, repr=False)
    _running: dict[str, _Deployed] = field(default_factory=dict)  # slug → its last deploy
    _buildinfo_hits: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.by_slug = {t.slug: t for t in self.tenants}

    def running_sha(self, slug: str) -> str:
        """What the tenant's /buildinfo reports right now (``stale`` aside): its ``running`` knob
        (``OLD_SHA`` by default) until its first deploy."""
        deployed = self._running.get(slug)
        return deployed.reports(time.monotonic()) if deployed else self._initial(slug)

    def mark_deployed(self, slug: str, sha: str) -> None:
        """The tenant already runs ``sha`` (as after an earlier rollout): for verify-only drills."""
        initial = self._initial(slug)
        self._running[slug] = _Deployed(sha, 0.0, initial, initial=initial)

    def _initial(self, slug: str) -> str:
        tenant = self.by_slug.get(slug)
        return tenant.initial if tenant else OLD_SHA

    def deploy_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if not c.get("dry_run")]

    # -- HTTP ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response | None:
        if request.path == self.redeploy_path and request.method == "POST":
            return self._redeploy(request)
        parts = request.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "tenants" and parts[2] == "buildinfo":
            return self._buildinfo(parts[1])
        if len(parts) == 3 and parts[0] == "tenants" and parts[2] == "metrics":
            return self._metrics(parts[1])
        return None

    def _redeploy(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response.json({"ok": False, "error": "unauthorized"}, 401)
        try:
            body = request.json()
        except ValueError:
            return Response.json({"ok": False, "error": "body is not JSON"}, 400)
        problem = _body_problem(body, self.by_slug)
        if problem:
            return Response.json({"ok": False, "error": problem}, 400)
        fault = self._next_fault(bool(body.get("dry_run")))
        if fault is not None and not fault.deploys:
            return self._fail(fault)
        if body.get("dry_run"):
            with self._lock:
                self.calls.append(body)
            return Response.json({"ok": True, "results": [self._dry_run_row(t) for t in self._targets(body)]})
        key = request.headers.get("idempotency-key", "")
        if fault is not None and fault.kind == "gateway-504":  # the gateway gives up; the CP goes on, and lands
            threading.Thread(target=self._keyed_deploy, args=(key, body), daemon=True).start()
            time.sleep(fault.seconds)
            return Response.text(GATEWAY_504, 504, "text/html")
        response = self._keyed_deploy(key, body)
        if fault is None and self.answer_loss and self._losses.random() < self.answer_loss:
            fault = Fault("reset-after")
        if fault is not None and fault.kind == "reset-after":  # deployed, then the answer is lost
            return Response(reset=True)
        if fault is not None:  # 500-after: deployed, then the answer is an error
            return Response.json({"ok": False, "error": "internal error after the redeploy"}, 500)
        return response

    def _keyed_deploy(self, key: str, body: dict[str, Any]) -> Response:
        """The deploy, once per Idempotency-Key: a later call with the same key waits for the first
        one's answer and gets it again (even if it asks for fewer tenants), deploying nothing."""
        with self._lock:
            entry = self._keys.get(key) if key else None
            first = entry is None
            if first and key:
                entry = self._keys[key] = _Keyed()
            if first:
                self.calls.append(body)
            else:
                self.replays.append(body)
        if entry is not None and not first:
            entry.done.wait()
            assert entry.response is not None
            return entry.response
        response = self._deploy(body)
        if entry is not None:
            entry.response = response
            entry.done.set()
        return response

    def _targets(self, body: dict[str, Any]) -> list[TenantSpec]:
        by_slug = self.by_slug
        if body.get("only_slugs"):
            return [by_slug[s] for s in body["only_slugs"]]
        canary = body.get("canary_slug")
        return sorted(self.tenants, key=lambda t: t.slug != canary)

    def _deploy(self, body: dict[str, Any]) -> Response:
        sha = self.builds.get(body["target_tag"])
        if sha is None:
            return Response.json({"ok": False, "error": f"image tag {body['target_tag']!r} not found"}, 500)
        targets = self._targets(body)
        worst = max(self._deploy_seconds(t) for t in targets)
        began = time.monotonic()
        time.sleep(worst * self.time_scale)  # concurrent redeploys: the call lasts as long as the slowest
        now = time.monotonic()
        with self._lock:
            self.deploy_log += [DeployRecord(tenant.slug, body["target_tag"], began, now) for tenant in targets]
        swaps = body["target_tag"] not in self.bad_builds  # a bad build: the CP's word, no new container
        rows = []
        for tenant in targets:
            if swaps and not tenant.dead and body["target_tag"] not in tenant.refuses:
                self._running[tenant.slug] = self._swap(tenant, sha, now)
            if not tenant.omit_row:
                rows.append(self._deploy_row(tenant, body["target_tag"]))
        failed = [r["slug"] for r in rows if r.get("verified_on_target") is False]
        failed += [t.slug for t in targets if t.omit_row]
        tolerance = int(body.get("max_stragglers", 0))
        if self.after_deploy is not None:
            self.after_deploy(body)
        if len(failed) > tolerance:
            error = f"halted: {len(failed)} tenant(s) failed ({', '.join(failed)}), max_stragglers={tolerance}"
            return Response.json({"ok": False, "results": rows, "error": error})
        return Response.json({"ok": True, "results": rows})

    def _swap(self, tenant: TenantSpec, sha: str, now: float) -> _Deployed:
        """The tenant now runs ``sha`` (reported after its settle), and falls back to the build it
        ran before ``reverts_after`` sim seconds from ``now``, when set."""
        before = self._running.get(tenant.slug)
        previous = before.build(now) if before else tenant.initial
        reverts = None if tenant.reverts_after is None else now + tenant.reverts_after * self.time_scale
        silent = None
        if tenant.silent_after is not None:
            begins = now + tenant.silent_after * self.time_scale
            lasts = float("inf") if tenant.silent_for is None else tenant.silent_for * self.time_scale
            silent = (begins, begins + lasts)
        return _Deployed(sha, now + tenant.settle_seconds * self.time_scale, previous, reverts, tenant.initial, silent)

    def _deploy_seconds(self, tenant: TenantSpec) -> float:
        return self.cp_tenant_timeout + self.cp_settle_seconds if tenant.dead else tenant.deploy_seconds

    def _deploy_row(self, tenant: TenantSpec, tag: str) -> dict[str, Any]:
        if tenant.dead:
            return {
                "slug": tenant.slug, "phase": "failed", "ssm_status": "TimedOut", "ssm_exit_code": None,
                "healthz_ok": False, "verified_on_target": False, "running_image": "",
                "error": f"SSM command timed out after {self.cp_tenant_timeout:g} s; /healthz never answered",
            }
        if tag in tenant.refuses:
            return {
                "slug": tenant.slug, "phase": "failed", "ssm_status": "Failed", "ssm_exit_code": 1,
                "healthz_ok": True, "verified_on_target": False, "running_image": "",
                "error": f"redeploy with image tag {tag!r} failed: container exited 1 on start; "
                         "the previous container keeps serving",
            }
        row = {
            "slug": tenant.slug, "phase": "done", "ssm_status": "Success", "ssm_exit_code": 0,
            "healthz_ok": not tenant.unhealthy, "verified_on_target": True,
            "running_image": f"{self.image}:{tag}",
        }
        if tenant.legacy_row:
            del row["verified_on_target"], row["healthz_ok"]
        return row

    @staticmethod
    def _dry_run_row(tenant: TenantSpec) -> dict[str, Any]:
        return {"slug": tenant.slug, "phase": "planned", "ssm_status": "DryRun", "ssm_exit_code": None}

    def _next_fault(self, dry_run: bool) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.matches(dry_run):
                    return self.faults.pop(i)
        return None

    @staticmethod
    def _fail(fault: Fault) -> Response:
        if fault.kind == "502":
            return Response.json({"ok": False, "error": "upstream connect error (bad gateway)"}, 502)
        if fault.kind == "503-html":
            return Response.text(HTML_503, 503, "text/html")
        if fault.kind == "500":
            return Response.json({"ok": False, "error": "internal error: fleet lock held by another rollout"}, 500)
        if fault.kind == "503-busy":
            return Response.json({"ok": False, "error": "busy: another rollout holds the fleet lock; not started"}, 503)
        if fault.kind == "409":
            return Response.json({"ok": False, "error": "conflict: a request with this key is in progress"}, 409)
        if fault.kind == "403":
            return Response.json({"ok": False, "error": "forbidden: this token may not redeploy"}, 403)
        if fault.kind == "ok-false":
            return Response.json({"ok": False, "results": [], "error": "halted by operator: change freeze"})
        if fault.kind == "hang":
            time.sleep(fault.seconds)
            return Response.json({"ok": False, "error": "answered after the client gave up"}, 504)
        return Response(reset=True)

    def _buildinfo(self, slug: str) -> Response:
        tenant = self.by_slug.get(slug)
        if tenant is None:
            return Response.json({"error": "no such tenant"}, 404)
        deployed = self._running.get(slug)
        if tenant.dead or (deployed is not None and deployed.silent_at(time.monotonic())):
            return Response(reset=True)
        with self._lock:
            hits = self._buildinfo_hits[slug] = self._buildinfo_hits.get(slug, 0) + 1
        if tenant.flapping and hits % 2:
            return Response.text(HTML_503, 503, "text/html")
        if tenant.slow_buildinfo:
            time.sleep(tenant.slow_buildinfo * self.time_scale)
        sha = tenant.initial if tenant.stale else self.running_sha(slug)
        if tenant.alternates and deployed is not None and hits % 2:
            sha = tenant.initial  # the instance that never swaps, where the load balancer sends every other request
        return Response.json({"git_sha": sha, "service": "tenant", "slug": slug})

    def _metrics(self, slug: str) -> Response:
        """Prometheus text format for the build the tenant serves now (what /buildinfo reports, a
        ``stale`` tenant's initial build); a dead tenant drops the connection (``up`` 0)."""
        tenant = self.by_slug.get(slug)
        if tenant is None:
            return Response.json({"error": "no such tenant"}, 404)
        if tenant.dead:
            return Response(reset=True)
        sha = tenant.initial if tenant.stale else self.running_sha(slug)
        rate = self.request_rate if tenant.request_rate is None else tenant.request_rate
        health = health_for(sha, self.builds, tenant.health, self.build_health)
        return Response.text(self._traffic.exposition(slug, time.monotonic(), rate, health), 200, CONTENT_TYPE)


def _body_problem(body: Any, known: dict[str, TenantSpec]) -> str:
    """The CP's 400 text, or '' for a valid body: a non-empty object with ``confirm: true``, a
    non-empty ``target_tag``, ``only_slugs`` (when present) a non-empty list of known slugs, and
    integer ``batch_size`` / ``max_stragglers`` / ``soak_seconds`` (when present)."""
    if not isinstance(body, dict) or not body:
        return "body must be a non-empty JSON object"
    if body.get("confirm") is not True:
        return "confirm must be true"
    if "only_slugs" in body:
        slugs = body["only_slugs"]
        if not isinstance(slugs, list) or not slugs:
            return "only_slugs must be a non-empty list"
        unknown = [s for s in slugs if s not in known]
        if unknown:
            return f"unknown tenant(s): {', '.join(map(str, unknown))}"
    if not isinstance(body.get("target_tag"), str) or not body["target_tag"]:
        return "target_tag is required"
    for key in ("batch_size", "max_stragglers", "soak_seconds"):
        if key in body and not isinstance(body[key], int):
            return f"{key} must be an integer"
    return ""


def builds_for(target_tag: str, sha: str, latest: str = OLD_SHA) -> dict[str, str]:
    """``FleetSim.builds`` of a CP that deploys ``target_tag`` as ``sha`` and whose ``latest`` still
    names the previous build (``OLD_SHA``, what an untouched tenant reports, unless given), so that
    a rollback with ``target_tag: latest`` puts a tenant back where it started."""
    return {target_tag: sha, "latest": latest}


def healthy_fleet(count: int, prefix: str = "tenant") -> list[TenantSpec]:
    return [TenantSpec(f"{prefix}-{i:0{len(str(count))}d}") for i in range(1, count + 1)]


def specs(slugs: Iterable[str], **knobs: Any) -> list[TenantSpec]:
    return [TenantSpec(slug, **knobs) for slug in slugs]
