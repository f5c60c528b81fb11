"""Publishing: values are redacted, never structure; each of outputs, summary and report survives
the others failing; the report is replaced whole or not at all."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from deploy import report as report_module
from deploy.controlplane import CallResult
from deploy.pipeline import Outcome, Run
from deploy.promote import PromoteResult, Promotion, PromotionState
from deploy.report import publish
from deploy.rollout import RolloutResult
from deploy.runner import MASK, Runner, parse_output_file
from tests.report_schema import load_report


def deployed_run(reason: str = "") -> Run:
    call = CallResult(label="batch 1/1", slugs=("a", "b"), ok=True, rows=(), status=200, error="", started=0.2,
                      seconds=2.0)
    rollout = RolloutResult(fleet=("a", "b"), max_stragglers=1, calls=(call,))
    run = Run(outcome=Outcome.DEPLOYED, fleet=("a", "b"), seconds=2.5, rollout=rollout)
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
    document = load_report(report.read_text())  # valid JSON, and valid against the schema, whatever the secret
    assert document["ok"] is True and document["exit_code"] == 0


def test_server_text_in_the_report_and_the_reason_output_is_redacted(tmp_path):
    secret = "cpt_live_9f8e7d6c5b4a"
    run = Run(outcome=Outcome.FAILED, exit_code=1, fleet=(f"x-{secret}",), reason=f'CP said "{secret}" is bad')
    log, output, summary, report = publish_to(tmp_path, run, secret)
    assert load_report(report.read_text())["reason"] == f'CP said "{MASK}" is bad'
    assert load_report(report.read_text())["fleet"] == [f"x-{MASK}"]
    assert parse_output_file(output.read_text())["reason"] == f'CP said "{MASK}" is bad'
    visible = "\n".join(line for line in log.splitlines() if not line.startswith("::add-mask::"))
    assert "9f8e7d6c5b4a" not in visible + output.read_text() + summary.read_text() + report.read_text()


def test_an_unwritable_github_output_still_leaves_the_summary_and_the_report(tmp_path):
    log, _output, summary, report = publish_to(tmp_path, deployed_run(), output=tmp_path / "missing" / "output")
    assert load_report(report.read_text())["outcome"] == "deployed"
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
    promotion = Promotion(image="ghcr.io/acme/app", source="v1", promoted_digest=digest, previous_digest=digest,
                          media_type="m", state=PromotionState.PROMOTED, detail="")
    run.promote = PromoteResult(tag="latest", promotions=(promotion,), error="")
    _log, _output, _summary, report = publish_to(tmp_path, run, secret)
    document = load_report(report.read_text())
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


def test_a_failed_replace_leaves_the_previous_report_whole_and_no_temporary_file(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    report.write_text('{"previous": "run"}\n')

    def full_disk(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module.os, "replace", full_disk)
    log, output, _summary, _report = publish_to(tmp_path, deployed_run())
    assert report.read_text() == '{"previous": "run"}\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["output", "report.json", "summary.md"]
    assert "could not write the JSON report" in log and "No space left on device" in log
    assert parse_output_file(output.read_text())["outcome"] == "deployed"  # the others are still written


def test_a_write_cut_short_leaves_no_partial_report_and_no_temporary_file(tmp_path, monkeypatch):
    class HalfWritten:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file.close()

        def write(self, text):
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            raise OSError(28, "No space left on device")

    def half_open(*args, **kwargs):
        return HalfWritten(open(*args, **kwargs))

    monkeypatch.setattr(report_module, "open", half_open, raising=False)
    log, _output, _summary, report = publish_to(tmp_path, deployed_run())
    assert not report.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["output", "summary.md"]
    assert "could not write the JSON report" in log


def test_the_report_is_created_as_a_plain_write_would_create_it(tmp_path):
    """A later step on the host, as another user, must still be able to read it."""
    (tmp_path / "plain").write_text("")
    _log, _output, _summary, report = publish_to(tmp_path, deployed_run())
    assert report.stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert report.read_text().endswith("}\n") and json.loads(report.read_text())["ok"] is True


def test_a_report_path_that_is_a_link_inside_the_workspace_writes_its_target(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "latest.json").symlink_to(tmp_path / "reports" / "r.json")
    publish_to(tmp_path, deployed_run(), report=tmp_path / "latest.json")
    assert (tmp_path / "latest.json").is_symlink()
    assert load_report((tmp_path / "reports" / "r.json").read_text())["outcome"] == "deployed"
    assert os.listdir(tmp_path / "reports") == ["r.json"]
