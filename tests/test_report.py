"""Publishing: values are redacted, never structure; each of outputs, summary and report survives
the others failing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from deploy.controlplane import CallResult
from deploy.pipeline import Run
from deploy.promote import PromoteResult, Promotion
from deploy.report import publish
from deploy.rollout import RolloutResult
from deploy.runner import MASK, Runner, parse_output_file


def deployed_run(reason: str = "") -> Run:
    call = CallResult("batch 1/1", ("a", "b"), True, (), 200, "", started=0.2, seconds=2.0)
    run = Run(outcome="deployed", fleet=("a", "b"), seconds=2.5, rollout=RolloutResult(("a", "b"), 1, (call,)))
    run.reason = reason
    return run


def publish_to(tmp_path: Path, run: Run, *secrets: str, output: Path | None = None, summary: Path | None = None,
               report: Path | None = None) -> tuple[str, Path, Path, Path]:
    output = output or tmp_path / "output"
    summary = summary or tmp_path / "summary.md"
    report = report or tmp_path / "report.json"
    stream = io.StringIO()
    runner = Runner(stream, str(output), str(summary), in_actions=True)
    runner.mask(*secrets)
    publish(run, runner, report, tmp_path)
    return stream.getvalue(), output, summary, report


@pytest.mark.parametrize("secret", ["tru", "rue", "200", "0.2", "ok"])
def test_a_short_secret_never_corrupts_the_outputs_or_the_json_report(tmp_path, secret):
    _log, output, _summary, report = publish_to(tmp_path, deployed_run(), secret)
    outputs = parse_output_file(output.read_text())
    assert outputs["ok"] == "true" and outputs["outcome"] == "deployed"
    assert outputs["result_count"] == "0" and outputs["report"] == "report.json"
    assert json.loads(outputs["stragglers"]) == ["a", "b"]
    document = json.loads(report.read_text())  # valid JSON whatever the secret
    assert document["ok"] is True and document["exit_code"] == 0


def test_server_text_in_the_report_and_the_reason_output_is_redacted(tmp_path):
    secret = "cpt_live_9f8e7d6c5b4a"
    run = Run(outcome="failed", exit_code=1, fleet=(f"x-{secret}",), reason=f'CP said "{secret}" is bad')
    log, output, summary, report = publish_to(tmp_path, run, secret)
    assert json.loads(report.read_text())["reason"] == f'CP said "{MASK}" is bad'
    assert json.loads(report.read_text())["fleet"] == [f"x-{MASK}"]
    assert parse_output_file(output.read_text())["reason"] == f'CP said "{MASK}" is bad'
    visible = "\n".join(line for line in log.splitlines() if not line.startswith("::add-mask::"))
    assert "9f8e7d6c5b4a" not in visible + output.read_text() + summary.read_text() + report.read_text()


def test_an_unwritable_github_output_still_leaves_the_summary_and_the_report(tmp_path):
    log, _output, summary, report = publish_to(tmp_path, deployed_run(), output=tmp_path / "missing" / "output")
    assert json.loads(report.read_text())["outcome"] == "deployed"
    assert "deployed" in summary.read_text()
    errors = [line for line in log.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "could not write the outputs" in errors[0]
    assert "Traceback" not in log


def test_an_unwritable_summary_or_report_still_leaves_the_others(tmp_path):
    (tmp_path / "is-a-dir").mkdir()
    log, output, _summary, _report = publish_to(
        tmp_path, deployed_run(), summary=tmp_path / "is-a-dir", report=tmp_path / "is-a-dir"
    )
    assert parse_output_file(output.read_text())["ok"] == "true"
    errors = [line for line in log.splitlines() if line.startswith("::error")]
    assert len(errors) == 2
    assert "could not write the JSON report" in errors[0] and "could not write the job summary" in errors[1]


@pytest.mark.parametrize("secret", ["sha", "deployed", "batch"])
def test_a_secret_that_is_one_of_our_own_words_leaves_the_reports_vocabulary_and_digests(tmp_path, secret):
    """A rollback reads the previous digest from the report: `sha` must not turn it into `***256:…`."""
    digest = "sha256:" + "ab" * 32
    run = deployed_run()
    promotion = Promotion("ghcr.io/acme/app", "v1", digest, digest, "m", "promoted", "")
    run.promote = PromoteResult("latest", (promotion,), "")
    _log, _output, _summary, report = publish_to(tmp_path, run, secret)
    document = json.loads(report.read_text())
    assert document["outcome"] == "deployed" and document["rollout"]["calls"][0]["label"] == "batch 1/1"
    assert document["promote"]["promotions"][0]["previous_digest"] == digest


def test_a_report_path_that_a_link_leads_out_of_the_workspace_is_not_written(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "reports").symlink_to(outside)
    stream = io.StringIO()
    runner = Runner(stream, str(tmp_path / "output"), str(tmp_path / "summary.md"), in_actions=True)
    publish(deployed_run(), runner, workspace / "reports" / "r.json", workspace)
    assert not (outside / "r.json").exists()
    assert "could not write the JSON report" in stream.getvalue() and "outside the workspace" in stream.getvalue()
    assert parse_output_file((tmp_path / "output").read_text())["outcome"] == "deployed"
