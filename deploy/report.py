"""Report: the only writer of outputs, the job summary and the JSON report.

Everything is derived from :class:`~deploy.pipeline.Run`, so a failed or cut-short run reports
exactly as much as happened. Every fact in the summary is also logged, because Gitea may not
show summaries. :func:`text_summary` renders a written report for a terminal (the demo's ending).

The JSON report is an artifact other tools read, so its shape is a contract: :data:`REPORTED`
declares every key of every result type, :func:`as_json` is the one rule that serialises them,
``schema/report.schema.json`` describes the result, and :data:`SCHEMA_VERSION` changes with it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from deploy import __version__
from deploy.analysis import Evaluation, StepResult
from deploy.config import in_environment_terms
from deploy.controlplane import CallResult, TenantRow
from deploy.domain import sha_matches, writable
from deploy.fleetstate import RollbackResult, Snapshot, TenantBefore
from deploy.gates import ChecksResult
from deploy.pipeline import Outcome, Run, Span
from deploy.promote import PromoteResult, Promotion, PromotionState
from deploy.proof import ProofSpan
from deploy.rollout import RolloutResult, Soak, describe_plan
from deploy.runner import Runner, counted, escape_markdown, listing, refuse_unless_regular
from deploy.settings import OnFailure
from deploy.verify import STATES, TenantVerdict, Verdict, VerifyResult

SCHEMA_VERSION = 4  # bump with schema/report.schema.json whenever a key or a type of the report changes

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|-")
OUTPUT_NAMES = (
    "ok", "outcome", "reason", "result_count", "quarantined", "stragglers", "verified",
    "stale", "unreachable", "unhealthy", "promoted-digest", "previous-digest", "report", "shipped", "aborted-at",
    "already-current", "rolled-back", "not-started",
)
# Outputs made only of our own words, numbers, digests and paths: redacting them could only
# corrupt them (a 3-character token "tru" turned "true" into "***e").
# Report fields made only of our own vocabulary: a short secret such as "deployed" must not
# rewrite them (the outputs have the same rule, VERBATIM_OUTPUTS).
VERBATIM_REPORT_KEYS = frozenset({"schema_version", "tool", "generated_at", "outcome", "state", "stages", "label",
                                  "name", "media_type"})
VERBATIM_OUTPUTS = frozenset(
    {"ok", "outcome", "result_count", "verified", "promoted-digest", "previous-digest", "report", "aborted-at"}
)


def outputs(run: Run, report_shown: str) -> dict[str, str | list[str]]:
    """The outputs; a list is a JSON-array output, which the runner redacts item by item."""
    rollout, verify, promote = run.rollout, run.verify, run.promote
    return {
        "ok": "true" if run.ok else "false",
        "outcome": str(run.outcome or ""),
        "reason": run.reason,
        "result_count": str(rollout.result_count if rollout else 0),
        "quarantined": _listed(rollout.quarantined if rollout else ()),
        "stragglers": _listed(rollout.stragglers if rollout else ()),
        "verified": str(_verified_at_the_end(run)),
        "stale": _listed(verify.slugs(Verdict.STALE) if verify else ()),
        "unreachable": _listed(verify.slugs(Verdict.UNREACHABLE) if verify else ()),
        "unhealthy": _listed(verify.slugs(Verdict.UNHEALTHY) if verify else ()),
        "promoted-digest": promote.promoted_digest_output if promote else "",
        "previous-digest": promote.previous_digest_output if promote else "",
        "report": report_shown,
        "shipped": _listed(rollout.shipped if rollout and not rollout.dry_run else ()),
        "aborted-at": rollout.aborted_at if rollout else "",
        "already-current": _listed(rollout.already_current if rollout else ()),
        "rolled-back": _listed(run.rollback.rolled_back if run.rollback else ()),
        "not-started": _listed(rollout.not_started if rollout else ()),
    }


def _verified_at_the_end(run: Run) -> int:
    """Tenants proven on sha and still on it. A tenant the rollback was sent to counts only if the
    rollback's own reading still finds it on sha (it was asked to leave: its proof no longer holds)."""
    if run.verify is None:
        return 0
    rollback, sha = run.rollback, run.config.sha if run.config else ""
    asked = set(rollback.tenants) if rollback else set()
    last = {v.slug: v.running for v in rollback.verify.verdicts} if rollback and rollback.verify else {}
    return sum(1 for slug in run.verify.slugs(Verdict.VERIFIED)
               if slug not in asked or (sha and last.get(slug) and sha_matches(last[slug], sha)))


def publish(run: Run, runner: Runner, report_path: Path, workspace: Path) -> None:
    """Log the result, then write outputs, summary and report; each survives the others failing.

    A failed write (an unwritable ``GITHUB_OUTPUT``, a full disk, a FIFO or a link loop where a file
    should be: see :func:`deploy.runner.regular_file` and :func:`report_target`) is one ``::error::``
    line, not a traceback, and the others are still written; the run's exit code stays what the run
    decided.

    The ``report`` output is relative to the workspace when the file is in it: inside a Docker
    action the absolute path is the container's (``/github/workspace/…``), which later steps on the
    host cannot open, while a relative one works for them (their working directory is the workspace).
    """
    with runner.group("Result"):
        _log_result(run, runner)
    if run.outcome == Outcome.FAILED and (runner.in_actions or not _logged_already(run.reason, runner)):
        runner.error(run.reason, title="fleet-rollout failed", final=True)  # the verdict, said once
    shown = report_path.relative_to(workspace) if report_path.is_relative_to(workspace) else report_path

    def write_report() -> None:
        target = report_target(report_path, workspace)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = report_text(redact_values(report(run), runner.redact))  # values, never the JSON
        replace_file(target, text + "\n")

    writes: list[tuple[str, Callable[[], None]]] = [
        (f"the JSON report to {report_path}", write_report),
        ("the outputs (GITHUB_OUTPUT)", lambda: runner.write_outputs(outputs(run, str(shown)), VERBATIM_OUTPUTS)),
        ("the job summary (GITHUB_STEP_SUMMARY)", lambda: runner.write_summary(summary(run, runner.redact), True)),
    ]
    for what, write in writes:
        try:
            write()
        except OSError as exc:  # a full disk, a read-only mount, a FIFO or a loop where a file should be
            runner.error(f"could not write {what}: {exc}", title="fleet-rollout report")
        except Exception as exc:  # noqa: BLE001 - a bug in one writer must not cost the others
            runner.log(traceback.format_exc())
            runner.error(f"could not write {what}: internal error ({type(exc).__name__}: {exc})",
                         title="fleet-rollout report")


def report_target(path: Path, workspace: Path) -> Path:
    """Where the report goes: ``path`` with its links resolved, or an ``OSError`` saying why not.

    ``report-path`` is checked as text (relative, no ``..``); a symbolic link is not text, so the
    resolved path must still be inside the workspace, and whatever is there must be a regular
    file (it is replaced by a rename, which would put the report where a FIFO or a socket was
    expected by someone). A link loop is an ``OSError`` too (``Path.resolve`` raised
    ``RuntimeError`` for one before Python 3.13).
    """
    try:
        real = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # not written yet, or a link to a report not written yet
        real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(workspace)):
        raise OSError("it leads outside the workspace (a symbolic link?)")
    with contextlib.suppress(FileNotFoundError):
        refuse_unless_regular(path, real.stat())
    return real


def redact_values(value: Any, redact: Callable[[str], str]) -> Any:
    """``value``, fresh from :func:`as_json`, with every string leaf redacted in place; the
    structure (keys, numbers, booleans) untouched.

    Redacting the serialised JSON instead could rewrite its syntax (a token ``200`` or ``"``). In
    place, because a second copy of a 50,000-tenant report was a fifth of the run's peak memory.
    Each distinct string is redacted once: a large fleet's report repeats its states, phases and
    SHAs tens of thousands of times.
    """
    done: dict[str, str] = {}

    def leaf(text: str) -> str:
        if (shown := done.get(text)) is None:
            shown = done[text] = text if DIGEST_RE.fullmatch(text) else redact(text)  # a digest is never a secret
        return shown

    if isinstance(value, str):
        return leaf(value)
    _redact_in_place(value, leaf)
    return value


def _redact_in_place(value: Any, leaf: Callable[[str], str]) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, str):
            if key not in VERBATIM_REPORT_KEYS:
                value[key] = leaf(item)
        elif key not in VERBATIM_REPORT_KEYS:
            _redact_in_place(item, leaf)


def report_text(value: Any, depth: int = 0) -> str:
    """The report as JSON a person can still read: objects indented down to the stages' own keys,
    and each item of a list of objects (a call, a tenant's verdict) on a line of its own.

    Deeper values are written compactly by json's C encoder, which runs only without indentation:
    fully indented, the report of a 50,000-tenant run took more CPU than the rest of the run.
    """
    pad = "  " * (depth + 1)
    if isinstance(value, dict) and value and depth < 2:
        items = (f"{pad}{json.dumps({key: 0})[1:-4]}: {report_text(item, depth + 1)}" for key, item in value.items())
        return "{\n" + ",\n".join(items) + "\n" + pad[2:] + "}"
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return "[\n" + ",\n".join(pad + json.dumps(item) for item in value) + "\n" + pad[2:] + "]"
    return json.dumps(value)


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a reader (an upload step, a later job) never
    finds half a report, and a failed write leaves the previous file as it was.

    The text goes to a new file beside ``path`` (the same file system), created like ``write_text``
    creates one (the umask decides its mode), and is then renamed over ``path``.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", encoding="utf-8") as file:
            file.write(writable(text))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def report(run: Run) -> dict[str, Any]:
    """The JSON report: what the run did, as :data:`REPORTED` declares it (not yet redacted)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"fleet-rollout {__version__}",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **as_json(run),
    }


@dataclass(frozen=True)
class Key:
    """One key of a reported object: what it is read from — the attribute (a field or a property)
    of its name, another attribute, or a function of the object — and the places a float is rounded
    to (``None``: as measured)."""

    name: str
    read: str | Callable[[Any], Any] = ""
    digits: int | None = None

    def value(self, result: Any) -> Any:
        value = self.read(result) if callable(self.read) else getattr(result, self.read or self.name)
        return round(value, self.digits) if self.digits is not None and isinstance(value, float) else value


MS = 3  # durations and times are reported to the millisecond


def _slugs(state: Verdict) -> Callable[[VerifyResult], tuple[str, ...]]:
    return lambda verify: verify.slugs(state)


REPORTED: dict[type, tuple[Key, ...]] = {
    Run: (
        Key("outcome"), Key("ok"), Key("reason"), Key("exit_code"), Key("seconds", digits=MS),
        Key("sha", lambda run: run.config.sha if run.config else ""),
        Key("target_tag", lambda run: run.config.rollout.target_tag if run.config else ""),
        Key("stages", lambda run: run.config.stages if run.config else ()),
        Key("notes"), Key("fleet"), Key("snapshot"), Key("checks"), Key("rollout"), Key("verify"), Key("rollback"),
        Key("analysis"), Key("promote"), Key("timeline", Run.timeline),
    ),
    Snapshot: (Key("started", digits=MS), Key("seconds", digits=MS), Key("tenants")),
    TenantBefore: (Key("slug"), Key("sha"), Key("problem")),
    RollbackResult: (
        Key("tag"), Key("build"), Key("ok"), Key("error"), Key("tenants"), Key("rolled_back"), Key("not_rolled_back"),
        Key("calls"), Key("verify"),
    ),
    Span: (Key("name"), Key("started", digits=MS), Key("seconds", digits=MS)),
    ChecksResult: (Key("states"), Key("seconds")),
    RolloutResult: (
        Key("fleet"), Key("planned_batches", "planned"), Key("max_stragglers"), Key("dry_run"), Key("halted"),
        Key("result_count"), Key("stragglers"), Key("quarantined"),
        Key("outcome_unknown", lambda rollout: tuple(rollout.outcome_unknown)),  # the slugs; the calls say why
        Key("shipped"), Key("already_current"), Key("not_started"), Key("stopped"), Key("aborted_at"),
        Key("calls"), Key("soak"), Key("proofs"), Key("analysis"),
    ),
    StepResult: (
        Key("step"), Key("verdict"), Key("finding"), Key("reason"), Key("query"), Key("report_only"),
        Key("at", digits=MS), Key("evaluations"),
    ),
    Evaluation: (
        Key("step"), Key("name"), Key("query"), Key("series"), Key("value"), Key("op"), Key("threshold"),
        Key("verdict"), Key("at", digits=MS), Key("detail"), Key("series_count"), Key("failing_count"), Key("failing"),
    ),
    Soak: (Key("started"), Key("seconds")),
    ProofSpan: (Key("label"), Key("started", digits=MS), Key("seconds", digits=MS), Key("ok")),
    CallResult: (
        Key("label"), Key("slugs"), Key("state"), Key("ok"), Key("status"), Key("error"),
        Key("started", digits=MS), Key("seconds", digits=MS), Key("rows"), Key("rejected_slugs", "rejected"),
        Key("ignored_rows", "ignored"), Key("settled"), Key("attempts"),
    ),
    TenantRow: tuple(Key(name) for name in (
        "slug", "phase", "ssm_status", "ssm_exit_code", "healthz_ok", "verified_on_target", "running_image", "error",
    )),
    VerifyResult: (
        Key("ok"), Key("rounds"), Key("started", digits=MS), Key("seconds", digits=MS),
        *(Key(state.value, _slugs(state)) for state in STATES),
        Key("tenants", "verdicts"),
    ),
    TenantVerdict: (
        Key("slug"), Key("state"), Key("running"), Key("detail"), Key("seconds", digits=MS), Key("call"),
        Key("proven_at", digits=MS),
    ),
    PromoteResult: (Key("tag"), Key("ok"), Key("error"), Key("promotions")),
    Promotion: tuple(Key(name) for name in (
        "image", "source", "promoted_digest", "previous_digest", "media_type", "state", "detail",
    )),
}


def as_json(value: Any) -> Any:
    """``value`` as the JSON report shows it: the one rule every result is serialised by.

    A result dataclass is an object of the keys :data:`REPORTED` declares for its type, in that
    order; an enum is its value; a tuple or a list is an array, a mapping an object; ``None``, a
    string, a number or a boolean is itself. Anything else — a type nobody declared — is a
    :class:`TypeError`: nothing reaches the report without being declared here.
    """
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    if is_dataclass(value) and type(value) in REPORTED:
        return {key.name: as_json(key.value(value)) for key in REPORTED[type(value)]}
    if isinstance(value, (tuple, list)):
        return [as_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): as_json(item) for key, item in value.items()}
    raise TypeError(f"{type(value).__name__} is not part of the JSON report's contract (deploy.report.REPORTED)")


def summary(run: Run, redact: Callable[[str], str] | None = None) -> str:
    """The job summary's Markdown. With ``redact``, every value is redacted before it is escaped
    (:class:`_Cell`), so the Markdown around the values never is; the runner is then told not to."""
    cell = _Cell(redact or (lambda text: text))
    lines = [f"## fleet-rollout: {_headline(run)}", ""]
    if run.reason:
        lines += [f"**Reason:** {cell(run.reason)}", ""]
    standing = where_things_stand(run)
    if standing:
        lines += ["**Where things stand:**", "", *(f"- {cell(line)}" for line in standing), ""]
    lines += _timeline(run)  # people would rather look than read: the timeline comes first
    lines += _facts(run, cell)
    lines += _tenant_table(run, cell)
    lines += _rollback_section(run, cell)
    lines += _analysis_table(run, cell)
    lines += _promotion_table(run, cell)
    return "\n".join(lines) + "\n"


HEADLINE_ICONS = {Outcome.DEPLOYED: "✅", Outcome.PROMOTED: "✅", Outcome.VERIFIED: "✅", Outcome.PLANNED: "📝",
                  Outcome.SKIPPED: "⏭️", Outcome.ABORTED: "🛑", Outcome.FAILED: "❌"}


def _headline(run: Run) -> str:
    """The outcome, the build, and what a green headline must not hide: tenants left behind."""
    icon = HEADLINE_ICONS.get(run.outcome, "❔") if run.outcome else "❔"
    config = run.config
    what = f" `{config.rollout.target_tag}` ({config.sha[:12]})" if config and config.rollout.target_tag else ""
    quarantined = run.rollout.quarantined if run.rollout else ()
    left = f", {len(quarantined)} quarantined ({escape_markdown(listing(quarantined, 3))})" \
        if quarantined and run.ok else ""
    return f"{icon} {run.outcome or 'unfinished'}{what}{left}"


def _facts(run: Run, cell: _Cell) -> list[str]:
    rows = []
    if run.fleet:
        rows.append(("Fleet", f"{len(run.fleet)} tenants"))
    if run.rollout:
        r = run.rollout
        went_back = f"; {len(run.rollback.rolled_back)} since rolled back" if run.rollback else ""
        rows.append(("Shipped", f"{len(r.shipped)} (result rows: {r.result_count}{went_back})"))
        rows.append(("Quarantined", listing(r.quarantined) or "none"))
        if r.stragglers and not r.quarantined:
            rows.append(("Stragglers", listing(r.stragglers)))
        if r.not_started:
            rows.append(("Not started", f"{len(r.not_started)} (no call reached them: {listing(r.not_started)})"))
        if r.already_current:
            rows.append(("Already current", f"{len(r.already_current)} not redeployed: their verify-url reported sha "
                                            "before the rollout (to ship a rebuild of the same commit, set "
                                            "skip-current: false)"))
        config = run.config
        canary = config.rollout.canary if config else ""
        if config and canary and run.snapshot and not r.dry_run and canary in run.snapshot.current(config.sha):
            rows.append(("Canary", f"{canary} already reported sha and was deployed again: a re-run starts from the "
                                   "canary, its proof and soak, before any batch"))
    if run.verify:
        counts = ", ".join(f"{s} {len(run.verify.slugs(s))}" for s in STATES if run.verify.slugs(s)) or "none"
        how = (f"{run.verify.rounds} verify rounds in {run.verify.seconds:.1f} s" if run.verify.rounds
               else "proven call by call during the rollout")
        final = "; each re-read by the final check" if any(span.name == "final check" for span in run.spans) else ""
        rows.append(("Verify", f"{counts} ({how}{final})"))
    for stage, note in run.notes.items():
        rows.append((stage.capitalize(), note))
    rows.append(("Duration", f"{run.seconds:.1f} s"))
    return ["| | |", "| --- | --- |", *[f"| {k} | {cell(v)} |" for k, v in rows], ""]


# A span's first word → its section; the rest (calls, proofs, bakes) is Rollout.
SECTIONS = {"gates": "Gates", "plan": "Plan", "snapshot": "Snapshot", "verify": "Verify", "final": "Final check",
            "analysis": "Analysis", "promote": "Promote", "rollback": "Rollback"}
TIMELINE_BARS = 40  # batch bars in the summary's timeline; more batches are merged into this many
CELL_CHARS = 300  # of one summary cell: a CP's long error text must not make the table megabytes (the report keeps it)
TABLE_ROWS = 300  # rows of the summary's tenant table: about 40 KiB, far below the runner's 1 MiB


def where_things_stand(run: Run) -> list[str]:
    """After a failed or aborted run: what the fleet runs now (tenants per build), where ``latest``
    is, what ``on-failure`` did, and the next step. Every fact is what the run last read or was
    told; a run that failed before deploying says that nothing moved."""
    config, rollout = run.config, run.rollout
    if run.outcome not in (Outcome.FAILED, Outcome.ABORTED) or config is None or (rollout and rollout.dry_run):
        return []
    readings = _last_readings(run)
    if rollout is not None:
        lines = [f"The fleet runs: {_builds_now(run, readings)}."]
    elif readings:
        lines = [f"Nothing was deployed; verify read: {_builds_now(run, readings)}."]
    else:
        lines = ["Nothing was deployed: no deploy call was made."]
    if run.promote and run.promote.promotions:
        lines.append(f"{run.promote.tag}: " + "; ".join(f"{p.image} {p.state} ({p.promoted_digest or 'unknown'})"
                                                       for p in run.promote.promotions) + ".")
    else:
        lines.append(f"{config.promote.tag} did not move: it still names the build it named before the run.")
    if rollout is not None:
        lines.append(_on_failure_said(run))
    lines.append(_next_step(run, _left_on_build(run, readings)))
    return lines


def _last_readings(run: Run) -> dict[str, str]:
    """The build each tenant last reported: the rollback's proof, else the proof or verify, else
    the snapshot for a tenant no call reached. A tenant absent was never read after it moved."""
    untouched = _untouched(run) if run.rollout else set(run.fleet)
    readings = {slug: before.sha for slug, before in (run.snapshot.by_slug if run.snapshot else {}).items()
                if slug in untouched and before.sha}
    for verify in (run.verify, run.rollback.verify if run.rollback else None):
        readings.update({v.slug: v.running for v in verify.verdicts if v.running} if verify else {})
    return readings


def _untouched(run: Run) -> set[str]:
    """Tenants no deploy call of this run asked for: not started, or already on the build."""
    rollout = run.rollout
    return set(rollout.not_started) | set(rollout.already_current) if rollout else set()


def _left_on_build(run: Run, readings: Mapping[str, str]) -> list[str]:
    """The tenants this run moved that are (as far as anything read says) still on the build: each
    one reporting ``sha``, or never read since the CP said it shipped."""
    if run.rollout is None or run.config is None:
        return []
    back = set(run.rollback.rolled_back) if run.rollback else set()
    sha = run.config.sha
    return [slug for slug in run.rollout.shipped
            if slug not in back and (slug not in readings or sha_matches(readings[slug], sha))]


def _builds_now(run: Run, readings: Mapping[str, str]) -> str:
    """Tenants per build: each tenant's last reading, or the CP's word (said so), or unknown."""
    rollout, untouched = run.rollout, _untouched(run)
    counts: dict[str, int] = {}
    for slug in run.fleet:
        build = readings[slug][:12] if slug in readings else "unknown (not read)"
        if slug not in readings and rollout and slug in rollout.rows and rollout.rows[slug].on_target \
                and slug not in untouched and run.config:
            build = f"{run.config.sha[:12]} (the CP's word)"
        counts[build] = counts.get(build, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{build} on {counted(count, 'tenant')}" for build, count in ranked[:6])
    return shown + (f", {len(ranked) - 6} other builds" if len(ranked) > 6 else "")


def _on_failure_said(run: Run) -> str:
    config = run.config
    assert config is not None
    if run.rollback is not None:
        back = len(run.rollback.rolled_back)
        missing = f"; {len(run.rollback.not_rolled_back)} not back" if run.rollback.not_rolled_back else ""
        return f"on-failure: rollback redeployed {run.rollback.tag}: {counted(back, 'tenant')} back{missing}."
    if "on-failure: rollback not run:" in run.reason:
        return "on-failure: rollback did not run: " + run.reason.split("on-failure: rollback not run:", 1)[1].strip()
    if config.rollout.on_failure == OnFailure.ROLLBACK:
        return "on-failure: rollback had nothing to put back (no deploy call moved a tenant), or no time."
    return "on-failure: hold: nothing was rolled back; the fleet stays as it is for a person to decide."


def _next_step(run: Run, left: list[str]) -> str:
    config = run.config
    assert config is not None
    if run.rollback is not None and run.rollback.not_rolled_back:
        return (f"Next: roll back by hand the tenants not back ({listing(run.rollback.not_rolled_back)}): redeploy "
                f"{run.rollback.tag} on them (examples/github-manual-rollback.yml), then re-run.")
    if run.promote is not None and not run.promote.ok:
        verified = "the fleet was verified on the build; " if run.rollout or run.verify else ""
        return (f"Next: {verified}fix what the promotion table says and re-run with stages: promote "
                "(skip-if-superseded: false) to move the tag.")
    if run.rollout is None:
        if run.verify and not run.verify.ok:
            return (f"Next: the tenants verify names do not run {config.sha[:12]}: redeploy them (stages: rollout), "
                    "then verify again.")
        return "Next: fix the cause and re-run this job: nothing moved."
    if not left:
        return "Next: fix the cause and re-run this job: no tenant this run deployed is left on the build."
    automatic = "" if config.rollout.on_failure == OnFailure.ROLLBACK else ", or set on-failure: rollback"
    return (f"Next: fix the cause and re-run this job (skip-current redeploys only the tenants not on "
            f"{config.sha[:12]}), or roll the {counted(len(left), 'tenant')} left on the build back by hand "
            f"(examples/github-manual-rollback.yml, with the previous build){automatic}.")


def _timeline(run: Run) -> list[str]:
    """A Mermaid gantt of the real durations (GitHub renders Mermaid in job summaries); at most
    about :data:`TIMELINE_BARS` bars, however many batches ran."""
    spans = _bounded(run.timeline())
    if not spans:
        return []
    lines = ["### Timeline", "", "```mermaid", "gantt", "    dateFormat x", "    axisFormat %M:%S"]
    section = ""
    for span in spans:
        name = SECTIONS.get(span.name.split(" ")[0], "Rollout")
        if name != section:
            section = name
            lines.append(f"    section {name}")
        start = round(span.started * 1000)
        end = start + max(round(span.seconds * 1000), 1)
        label = "".join(c for c in span.name if c not in ":;#")
        lines.append(f"    {label} {span.seconds:.1f} s :{start}, {end}")
    return [*lines, "```", ""]


def _bounded(spans: list[Span]) -> list[Span]:
    """The spans, with runs of consecutive batch calls (and of their proofs) merged into one bar each
    ("batches 1–50/2000") when there are more than :data:`TIMELINE_BARS`: a Mermaid chart of 2,000
    bars shows nothing."""
    for prefix in ("batch ", "proof batch ", "bake batch ", "rollback "):
        spans = _merged(spans, prefix)
    return spans


def _merged(spans: list[Span], prefix: str) -> list[Span]:
    batches = [span for span in spans if span.name.startswith(prefix)]
    if len(batches) <= TIMELINE_BARS:
        return spans
    edges = [len(batches) * bar // TIMELINE_BARS for bar in range(TIMELINE_BARS + 1)]  # as even as can be
    merged = []
    for first, last in itertools.pairwise(edges):
        group = batches[first:last]
        until = group[-1].name.removeprefix(prefix).split(" ")[0]  # "7/9", without a call's size
        numbers = f"{group[0].name.removeprefix(prefix).split('/')[0]}–{until}"
        end = group[-1].started + group[-1].seconds
        merged.append(Span(f"{prefix.replace('batch ', 'batches ')}{numbers}", group[0].started,
                           end - group[0].started))
    return sorted([span for span in spans if not span.name.startswith(prefix)] + merged, key=lambda s: s.started)


def _tenant_table(run: Run, cell: _Cell) -> list[str]:
    """Every tenant, up to :data:`TABLE_ROWS`; above that, the tenants with a problem (up to
    :data:`TABLE_ROWS` of them) and counts: the runner cuts a summary at 1 MiB, and the full table
    is in the JSON report anyway. Tenants the rollout never reached are counted, not listed: a
    halt early in a large rollout must not push the tenant that caused it out of the table."""
    if not run.fleet:
        return []
    header = [
        "### Tenants", "",
        "| tenant | phase | status | healthz | on target | verify | shipped in | proven at | before → after | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    whole = len(run.fleet) <= TABLE_ROWS or bool(run.rollout and run.rollout.dry_run)
    lines: list[str] = []
    problems = not_reached = 0
    for fields, state in _tenant_rows(run):
        problems += state == _PROBLEM
        not_reached += state == _NOT_REACHED
        if (whole or state == _PROBLEM) and len(lines) < TABLE_ROWS:
            lines.append("| " + " | ".join(cell(field) for field in fields) + " |")
    if whole:
        return [*header, *lines, ""]
    shown = f", the first {len(lines)} below" if problems > len(lines) else (", below" if problems else "")
    rest = f"; {not_reached} not started (the rollout halted first)" if not_reached else ""
    note = (f"{problems} of {len(run.fleet)} tenants {'has' if problems == 1 else 'have'} a problem{shown}{rest}. "
            "The table of every tenant is in the JSON report (`report` output).")
    return [*header[:2], note, "", *(header[2:] + lines if lines else []), ""]


_FINE, _PROBLEM, _NOT_REACHED = "fine", "problem", "not reached"


def _tenant_rows(run: Run) -> Iterator[tuple[tuple[str, ...], str]]:
    """(the table's cells, fine / a problem / not reached) per tenant, in fleet order."""
    rollout = run.rollout
    rows = rollout.rows if rollout else {}
    quarantined = set(rollout.quarantined) if rollout else set()
    not_started = set(rollout.not_started) if rollout else set()
    calls = rollout.shipped_in if rollout else {}
    current = set(rollout.already_current) if rollout else set()
    verdicts = {v.slug: v for v in run.verify.verdicts} if run.verify else {}
    before = run.snapshot.by_slug if run.snapshot else {}
    rollback = run.rollback
    back = {v.slug: v for v in rollback.verify.verdicts} if rollback and rollback.verify else {}
    rolled_back, tag = (set(rollback.rolled_back), rollback.tag) if rollback else (set(), "")
    for slug in run.fleet:
        row, verdict = rows.get(slug), verdicts.get(slug)
        verify = Verdict.QUARANTINED if slug in quarantined else (verdict.state if verdict else "")
        if verdict and verdict.state != Verdict.VERIFIED and verdict.running:
            verify += f" (runs {verdict.running[:12]})"
        error = row.error if row else ("" if slug in current else _missing_row(run, slug, not_started))
        error = error or (verdict.detail if verdict and verdict.state != Verdict.VERIFIED else "")
        proven = "" if verdict is None or verdict.proven_at is None else f"{verdict.proven_at:.1f} s"
        shipped_in = "already current" if slug in current else (verdict.call if verdict else "") or calls.get(slug, "")
        if slug in quarantined:  # a call tried it; it did not ship
            shipped_in = f"not shipped (tried in {shipped_in})" if shipped_in else ""
        was, now = before.get(slug), back.get(slug) or verdict  # after a rollback: where it went back to
        after = now.running[:12] if now else ("not deployed" if not rollout or slug in not_started else "not read")
        if slug in rolled_back:  # proven back on its snapshot SHA, or taken on the CP's word (no SHA to prove)
            after = f"{after} (rolled back)" if slug in back else f"{tag} (rolled back, CP's word)"
        change = f"{(was.sha[:12] or 'unreadable') if was else ''} → {after}"
        fields = (slug, row.phase if row else "", row.ssm_status if row else "", _flag(row.healthz_ok if row else None),
                  _flag(row.verified_on_target if row else None), verify, shipped_in, proven,
                  change if was or now else "", error)
        fine = verdict.state == Verdict.VERIFIED if verdict else (
            slug in current or bool(row and row.on_target and row.healthy and not error))
        if (rollout and rollout.dry_run) or fine:
            yield fields, _FINE
        else:
            yield fields, _NOT_REACHED if slug in not_started and slug not in verdicts else _PROBLEM


def _missing_row(run: Run, slug: str, not_started: set[str]) -> str:
    if not run.rollout or run.rollout.dry_run:
        return ""
    if slug in run.rollout.outcome_unknown:
        return f"outcome unknown: {run.rollout.outcome_unknown[slug]}"
    return "not started: the rollout halted first" if slug in not_started else "no row from the CP"


def _rollback_section(run: Run, cell: _Cell) -> list[str]:
    """What ``on-failure: rollback`` put back, and what it could not (every one of those named)."""
    rollback = run.rollback
    if rollback is None:
        return []
    proven = len(rollback.verify.slugs(Verdict.VERIFIED)) if rollback.verify else 0
    word = len(rollback.rolled_back) - proven
    taken = f" ({word} on the CP's word: their snapshot had no SHA)" if word else ""
    lines = [f"### Rollback: tenants redeployed with `{rollback.tag}`", "",  # a tag (TAG_RE): nothing to escape
             f"{len(rollback.rolled_back)} of {counted(len(rollback.tenants), 'tenant')} this run moved are back on "
             f"the build they ran before{taken}."]
    if rollback.error:
        lines += ["", f"**Not done:** {cell(rollback.error)}"]
    return [*lines, ""]


ANALYSIS_ROWS = 60  # steps in the summary's analysis table: the first and the last ones, the report has all


def _analysis_table(run: Run, cell: _Cell) -> list[str]:
    """Metric analysis, one row per step and query: the last value, the condition, the verdict and
    how many evaluations; a step that did not pass first, then the first and last steps."""
    if not run.analysis:
        return []
    steps = run.analysis
    if len(steps) > ANALYSIS_ROWS:
        failed = [step for step in steps if step.verdict != "pass"]
        steps = failed + [step for step in (*steps[:ANALYSIS_ROWS // 2], *steps[-ANALYSIS_ROWS // 2:])
                          if step not in failed]
    lines = ["### Metric analysis", "", "| step | query | value | condition | verdict | evaluations |",
             "| --- | --- | --- | --- | --- | --- |"]
    for step in steps:
        last: dict[str, Evaluation] = {}
        counts: dict[str, int] = {}
        for evaluation in step.evaluations:
            last[evaluation.name] = evaluation
            counts[evaluation.name] = counts.get(evaluation.name, 0) + 1
        for name, evaluation in last.items():
            value = "–" if evaluation.value is None else f"{evaluation.value:.4g}"
            on = f" ({evaluation.series})" if evaluation.series else ""
            decided_here = name == step.query or step.verdict == "cut"
            verdict = f"{evaluation.verdict}" + (f" → step {step.verdict}" if decided_here else "")
            lines.append(f"| {cell(step.step)} | {cell(name)} | {cell(value + on)} | "
                         f"{cell(f'{evaluation.op} {evaluation.threshold:g}')} | {cell(verdict)} | {counts[name]} |")
    if len(run.analysis) > len(steps):
        lines += ["", f"{len(run.analysis) - len(steps)} more steps passed: see the JSON report (`analysis`)."]
    return [*lines, ""]


def _promotion_table(run: Run, cell: _Cell) -> list[str]:
    if not run.promote:
        return []
    lines = [
        f"### Promotion of `{run.promote.tag}`", "",
        "| image | state | now | before | detail |", "| --- | --- | --- | --- | --- |",
    ]
    for p in run.promote.promotions:
        lines.append(
            f"| {cell(p.image)} | {cell(p.state)} | {cell.digest(p.promoted_digest)} "
            f"| {cell.digest(p.previous_digest)} | {cell(p.detail)} |"
        )
    return [*lines, ""]


def _log_result(run: Run, runner: Runner) -> None:
    # A failure's reason is the run's last line, the verdict after this group: not repeated here.
    because = f" — {run.reason}" if run.reason and run.outcome != Outcome.FAILED else ""
    runner.log(f"outcome: {run.outcome or 'unfinished'}{because}")
    for line in where_things_stand(run):  # outside Actions, in the words of FLEET_* variables
        runner.log(line if runner.in_actions else in_environment_terms(line))
    r = run.rollout
    if r and r.dry_run:
        canary = run.config.rollout.canary if run.config else ""
        runner.log(f"plan: {describe_plan(r.planned, canary)}, nothing deployed")
    elif r:
        runner.log(f"rollout: {len(r.shipped)}/{counted(len(r.fleet), 'tenant')} shipped, "
                   f"{counted(r.result_count, 'result row')}")
        runner.log(f"stragglers: {_names(r.stragglers)}; quarantined: {_names(r.quarantined)}")
        if r.outcome_unknown:
            runner.log(f"outcome unknown (sent, no readable answer): {listing(tuple(r.outcome_unknown))}")
        if r.halted and r.not_started:
            runner.log(f"not started (the rollout halted first): {listing(r.not_started)}")
    if run.verify:
        for state in STATES:
            slugs = run.verify.slugs(state)
            names = f" ({_names(slugs)})" if slugs and state != Verdict.VERIFIED else ""
            runner.log(f"verify {state}: {len(slugs)}{names}")
    for step in run.analysis:
        runner.log(f"analysis {step.step}: {step.verdict} — {step.reason}")
    _log_tenants(run, runner)
    if run.promote:
        for p in run.promote.promotions:
            moved = f"now {p.promoted_digest}, before {p.previous_digest or '(no tag)'}"
            what = moved if p.state == PromotionState.PROMOTED else p.detail
            runner.log(f"promote {p.image}:{run.promote.tag}: {p.state}: {what}")
    for stage, note in run.notes.items():
        runner.log(f"{stage}: {note}")


def _log_tenants(run: Run, runner: Runner) -> None:
    """The summary's tenant table as log lines (Gitea before 1.27 shows no summary): the same
    tenants — every one up to :data:`TABLE_ROWS`, else those with a problem — and the same facts."""
    if not run.fleet or (run.rollout is not None and run.rollout.dry_run) or (run.rollout is None and not run.verify):
        return  # nothing happened to a tenant (a dry run, or a refusal before the first deploy call)
    whole = len(run.fleet) <= TABLE_ROWS
    shown = 0
    for fields, state in _tenant_rows(run):
        if not (whole or state == _PROBLEM):
            continue
        if shown == TABLE_ROWS:
            runner.log("tenant: … more in the JSON report (`report` output)")
            return
        slug, _phase, _status, _healthz, _on_target, verify, shipped_in, proven, change, error = fields
        facts = [verify or "not verified", f"shipped in {shipped_in}" if shipped_in else "",
                 f"proven at {proven}" if proven else "", change, error]
        runner.log(f"tenant {slug}: " + "; ".join(fact for fact in facts if fact))
        shown += 1


def _logged_already(reason: str, runner: Runner) -> bool:
    """Whether the stage that failed already logged the reason as an error line: a halted canary or
    batch (the reason may go on with "; N later calls not started", which the Result group lists),
    or a configuration error's bad inputs, one line each. Outside Actions the verdict would only be
    that line again; inside, it is the run's one annotation and is always made."""
    reason = " ".join(runner.redact(reason).split()).removeprefix("configuration error: ")
    return any(message and reason.startswith(message) for message in runner.errors_said())


def text_summary(document: Mapping[str, Any]) -> str:
    """The run for a terminal, from its JSON report (:func:`report`, as written: redacted):
    the headline, the reason, one line per tenant with its state, and the promotion.

    The job summary's Markdown and Mermaid are for the runner's summary page, not for a terminal.
    """
    what = f" {document['target_tag']} ({document['sha'][:12]})" if document.get("target_tag") else ""
    lines = [f"fleet-rollout: {document['outcome']}{what} in {document.get('seconds', 0):.1f} s"]
    if document.get("reason"):
        lines.append(f"reason: {document['reason']}")
    states = _tenant_states(document)
    if states:
        table = [("tenant", "state", "detail"), *((slug, *verdict) for slug, verdict in states.items())]
        widths = [max(len(row[column]) for row in table) for column in (0, 1)]
        lines.append("")
        lines += [f"{slug:<{widths[0]}}  {state:<{widths[1]}}  {detail}".rstrip() for slug, state, detail in table]
    promote = document.get("promote") or {}
    lines += [""] if promote.get("promotions") else []
    for p in promote.get("promotions", []):
        moved = f"{_short(p['previous_digest']) or '(no tag)'} → {_short(p['promoted_digest'])}"
        what = moved if p["state"] == PromotionState.PROMOTED else p["detail"]
        lines.append(f"{promote['tag']} on {p['image']}: {p['state']}, {what}")
    return "\n".join(lines) + "\n"


def _tenant_states(document: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """slug → (state, detail), the same verdicts as the job summary's tenant table."""
    rollout, verify = document.get("rollout") or {}, document.get("verify") or {}
    calls = rollout.get("calls", [])
    rows = {row["slug"]: row for call in calls for row in call.get("rows", [])}
    asked = {slug for call in calls for slug in call.get("slugs", [])}
    verdicts = {tenant["slug"]: tenant for tenant in verify.get("tenants", [])}
    quarantined, unknown = set(rollout.get("quarantined", [])), set(rollout.get("outcome_unknown", []))
    stragglers = set(rollout.get("stragglers", []))  # sets: a lookup per tenant, linear in the fleet
    not_started = set(rollout.get("not_started", []))
    states: dict[str, tuple[str, str]] = {}
    for slug in document.get("fleet", []):
        row, verdict = rows.get(slug, {}), verdicts.get(slug)
        if slug in quarantined:
            states[slug] = (Verdict.QUARANTINED, row.get("error", "") or "did not reach the target")
        elif verdict:
            states[slug] = (verdict["state"], "" if verdict["state"] == Verdict.VERIFIED else verdict["detail"])
        elif rollout.get("dry_run"):
            states[slug] = ("planned", "")
        elif slug in unknown:
            states[slug] = ("outcome unknown", "sent, no readable answer")
        elif slug in stragglers:
            states[slug] = ("straggler", row.get("error", "") or "no row from the CP")
        elif slug in not_started:
            states[slug] = ("not started", "no call reached it" if slug in asked else "the rollout halted first")
        else:
            states[slug] = ("on target", "") if slug in rows else ("", "")
    return states


def _short(digest: str) -> str:
    return f"{digest[:19]}…" if digest.startswith("sha256:") else digest


def _names(slugs: Any) -> str:
    return ", ".join(slugs) or "none"


def _listed(items: Any) -> list[str]:
    """A JSON-array output: the runner redacts each item, then encodes the array."""
    return [str(item) for item in items]


def _flag(value: bool | None) -> str:
    return {True: "✅", False: "❌", None: ""}[value]


class _Cell:
    """Server text as a Markdown table cell: redacted first, then made inert (:func:`escape_markdown`:
    one line, no link, image, HTML or table break); a plain slug such as ``tenant-1`` is unchanged."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        self.redact = redact

    def __call__(self, text: object) -> str:
        text = self.redact(str(text))
        return escape_markdown(text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…")

    def digest(self, digest: str) -> str:
        """A digest as code, or — when a registry sent something else — as any other server text."""
        digest = digest or "-"
        return f"`{digest}`" if DIGEST_RE.fullmatch(digest) else self(digest)
