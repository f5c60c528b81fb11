"""The JSON report's shape, recorded: every key path with its JSON types, from runs that fill every section.

Readers of the report tell its shapes apart by ``schema_version`` alone, so the shape may change
only together with :data:`deploy.report.SCHEMA_VERSION`. ``python -m tests.golden`` rewrites
``report.shape.json`` from the code, and refuses to when the shape changed but the version did not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from deploy.analysis import Evaluation, StepResult, StepVerdict
from deploy.analysis import Verdict as Finding
from deploy.config import load
from deploy.controlplane import CallResult, CallState, TenantRow
from deploy.fleetstate import RollbackResult, Snapshot, TenantBefore
from deploy.gates import ChecksResult
from deploy.pipeline import Outcome, Run, Span
from deploy.promote import PromoteResult, Promotion, PromotionState
from deploy.proof import ProofSpan
from deploy.report import SCHEMA_VERSION, report
from deploy.rollout import RolloutResult, Soak, StopKind
from deploy.settings import Comparison
from deploy.verify import TenantVerdict, Verdict, VerifyResult
from tests.support import SHA

GOLDEN = Path(__file__).with_name("report.shape.json")
REGENERATE = "python -m tests.golden"
MAPS = frozenset({"notes"})  # objects keyed by data (a stage), not by the contract: one path for every key
DIGESTS = ("sha256:" + "ab" * 32, "sha256:" + "cd" * 32)


def representative_runs() -> dict[str, Run]:
    """A run that fills every section and every nullable field both ways, a dry run, a configuration error."""
    config = load({"FLEET_CP_URL": "https://cp.example.com", "FLEET_CP_TOKEN": "cp-token-0123456789", "FLEET_SHA": SHA,
                   "FLEET_VERIFY_URL": "https://{slug}.example.com/buildinfo", "FLEET_CANARY": "a",
                   "FLEET_PROMOTE_IMAGES": "ghcr.io/acme/one,ghcr.io/acme/two", "GITHUB_WORKSPACE": "/tmp"})
    fleet = ("a", "b", "c", "d", "e")
    canary = CallResult(label="canary", slugs=("a",), ok=True, status=200, error="", started=0.1, seconds=1.5,
                        rows=(TenantRow("a", phase="done", ssm_status="Success", ssm_exit_code=0, healthz_ok=True,
                                        verified_on_target=True, running_image="acme/tenant:staging-8ddce85"),))
    batch = CallResult(label="batch 1/2", slugs=("b", "c"), ok=True, status=200, error="", started=2.1, seconds=3.25,
                       rows=(TenantRow("b", healthz_ok=False, verified_on_target=False, error="SSM timed out"),
                             TenantRow("c")),
                       rejected=('"../etc"',))
    unknown = CallResult(label="batch 2/2", slugs=("d", "e"), ok=False, rows=(), status=None, started=5.4,
                         seconds=6.0, error="HTTP 504 (synthetic): no answer", state=CallState.UNKNOWN, attempts=2,
                         settled=(TenantRow("d", phase="read from the tenant", verified_on_target=True,
                                            error="the CP's answer was lost; the tenant reports 8ddce85f3b2a"),))
    rollout = RolloutResult(fleet=fleet, max_stragglers=3, calls=(canary, batch, unknown),
                            planned=(("a",), ("b", "c"), ("d", "e")), soak=Soak(started=1.6, seconds=0.5),
                            stopped=StopKind.ABORTED, aborted_at="batch 2/2", already_current=("x",),
                            proofs=(ProofSpan(label="proof canary", started=1.5, seconds=0.1, ok=True),))
    verdicts = (
        TenantVerdict(slug="a", state=Verdict.VERIFIED, running=SHA, detail="", seconds=0.25, call="canary",
                      proven_at=1.6),
        TenantVerdict(slug="c", state=Verdict.STALE, running="0123456", detail="still runs 0123456", seconds=4.0),
        TenantVerdict(slug="x", state=Verdict.UNREACHABLE, running="", detail="HTTP 503", seconds=4.0),
        TenantVerdict(slug="y", state=Verdict.UNHEALTHY, running="", detail="healthz_ok: false", seconds=0.0),
    )
    promote = PromoteResult(tag="latest", error="ghcr.io/acme/two: registry refused PUT", promotions=(
        Promotion(image="ghcr.io/acme/one", source="staging-8ddce85", promoted_digest=DIGESTS[1],
                  previous_digest=DIGESTS[1], media_type="application/vnd.oci.image.index.v1+json",
                  state=PromotionState.PUT_BACK, detail="latest put back"),
        Promotion(image="ghcr.io/acme/two", source="staging-8ddce85", promoted_digest="", previous_digest=DIGESTS[0],
                  media_type="", state=PromotionState.FAILED, detail="registry refused PUT"),
    ))
    full = Run(config=config, outcome=Outcome.FAILED, reason="promote failed", exit_code=1, fleet=fleet,
               checks=ChecksResult(states=(("ci/build", "success"),), seconds=12.5), rollout=rollout,
               verify=VerifyResult(verdicts=verdicts, rounds=3, started=11.4, seconds=4.0), promote=promote,
               snapshot=Snapshot(tenants=(TenantBefore(slug="a", sha="0123456", problem=""),
                                          TenantBefore(slug="b", sha="", problem="HTTP 503")),
                                 started=0.1, seconds=0.2),
               rollback=RollbackResult(tag="latest", build=SHA[:12], tenants=("a", "c"), calls=(batch,),
                                       rolled_back=("a",), not_rolled_back=("c",),
                                       error="not back on their previous build: c",
                                       verify=VerifyResult(verdicts=verdicts[:1], rounds=1, started=16.0,
                                                           seconds=0.5)),
               notes={"plan": "the CP listed 1 name that cannot be tenants"},
               analysis=[StepResult(step="canary", verdict=StepVerdict.FAIL, finding=Finding.FAIL,
                                    reason='errors = 0.31 on tenant="a", not < 0.01', query="errors", at=2.5,
                                    evaluations=(
                                        Evaluation(step="canary", name="errors", query='rate(x{tenant=~"^(?:a)$"})',
                                                   series='tenant="a"', value=0.31, op=Comparison.LT, threshold=0.01,
                                                   verdict=Finding.FAIL, at=2.5, detail="1 of 1 series fail",
                                                   series_count=1, failing_count=1, failing=('tenant="a"',)),
                                        Evaluation(step="canary", name="traffic", query="sum(rate(x[1m]))", series="",
                                                   value=None, op=Comparison.GT, threshold=1, at=2.5,
                                                   verdict=Finding.INCONCLUSIVE, detail="no series"),
                                    ))],
               spans=[Span("gates", 0.0, 0.05), Span("plan", 0.05, 0.05), Span("verify", 11.4, 4.0),
                      Span("promote", 15.4, 1.0)],
               seconds=16.5)
    dry = Run(config=config, outcome=Outcome.PLANNED, fleet=fleet, notes={"verify": "dry run"}, seconds=0.5,
              rollout=RolloutResult(fleet=fleet, max_stragglers=1, planned=(("a",), ("b", "c")), dry_run=True))
    invalid = Run(outcome=Outcome.FAILED, exit_code=2, reason="configuration error: batch-size: not a number")
    return {"full": full, "dry run": dry, "configuration error": invalid}


def documents() -> dict[str, Any]:
    """Each representative run's report as a reader gets it: written as JSON and read back."""
    return {name: json.loads(json.dumps(report(run))) for name, run in representative_runs().items()}


def shape(document: Any, path: str = "", into: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Key path → the JSON types found there (``rollout.calls[].rows[].slug``; a map's keys are ``*``)."""
    into = {} if into is None else into
    if path:
        into.setdefault(path, set()).add(_json_type(document))
    if isinstance(document, dict):
        for key, value in document.items():
            name = "*" if path in MAPS else key
            shape(value, f"{path}.{name}" if path else name, into)
    elif isinstance(document, list):
        for item in document:
            shape(item, f"{path}[]", into)
    return into


def current() -> dict[str, Any]:
    merged: dict[str, set[str]] = {}
    for document in documents().values():
        for path, types in shape(document).items():
            merged.setdefault(path, set()).update(types)
    return {"schema_version": SCHEMA_VERSION, "regenerate": REGENERATE,
            "shape": {path: " | ".join(sorted(types)) for path, types in sorted(merged.items())}}


def recorded() -> dict[str, Any] | None:
    return json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.exists() else None


def differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per key path removed (-), added (+) or retyped (~)."""
    lines = [f"  - {path}: {old[path]}" for path in old if path not in new]
    lines += [f"  + {path}: {new[path]}" for path in new if path not in old]
    lines += [f"  ~ {path}: {old[path]} → {new[path]}" for path in new if path in old and old[path] != new[path]]
    return lines


def main() -> int:
    now, before = current(), recorded()
    if before and before["shape"] != now["shape"] and before["schema_version"] == now["schema_version"]:
        print(f"the report's shape changed, but SCHEMA_VERSION is still {now['schema_version']}:", file=sys.stderr)
        print("\n".join(differences(before["shape"], now["shape"])), file=sys.stderr)
        print("bump SCHEMA_VERSION in deploy/report.py and the schema_version const in schema/report.schema.json, "
              "then run this again", file=sys.stderr)
        return 1
    GOLDEN.write_text(json.dumps(now, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{GOLDEN}: schema_version {now['schema_version']}, {len(now['shape'])} key paths")
    return 0


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]
