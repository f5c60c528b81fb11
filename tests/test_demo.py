"""The README's demo command does what the README says: quarantine, verify, promote, ok=true —
in the log a laptop shows, ending with a short text summary, and writing only where it is asked to."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from deploy import demo
from deploy.report import OUTPUT_NAMES
from tests.actions_runner import ROOT
from tests.report_schema import load_report


def outputs_of(text: str) -> dict[str, str]:
    """The outputs, printed as ``name=value`` lines at the end of the log (no GITHUB_OUTPUT)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {name: value for name, value in pairs if name in OUTPUT_NAMES}


def assert_dead_tenant_handled(text: str) -> None:
    outputs = outputs_of(text)
    assert outputs["ok"] == "true" and outputs["outcome"] == "deployed"
    assert json.loads(outputs["quarantined"]) == ["philbrew-erton"]
    assert outputs["verified"] == "4"
    assert outputs["promoted-digest"].startswith("sha256:")
    assert outputs["previous-digest"].startswith("sha256:")
    assert outputs["promoted-digest"] != outputs["previous-digest"]
    assert "warning: quarantined philbrew-erton: " in text


def assert_plain_log_and_text_summary(text: str) -> None:
    """The log as outside a runner, then a text table: no workflow command, no Markdown source."""
    assert "== Rollout ==" in text and "== Result ==" in text
    assert not [line for line in text.splitlines() if line.startswith("::")]
    assert "```mermaid" not in text and "| --- |" not in text and "## fleet-rollout" not in text
    summary = text.split("# summary (exit code 0)\n", 1)[1]
    assert summary.lstrip().startswith("fleet-rollout: deployed staging-8ddce85 (8ddce85f3b2a) in ")
    assert re.search(r"^tenant +state +detail$", summary, re.M)
    assert re.search(r"^philbrew-erton +quarantined +SSM command timed out", summary, re.M)
    for slug in ("hongming", "reno-stars", "molecule-adk-demo", "acme-prod"):
        assert re.search(rf"^{slug} +verified$", summary, re.M), slug
    assert re.search(r"^latest on \S+/acme/platform-tenant: promoted, sha256:\w{12}… → sha256:\w{12}…$", summary, re.M)


def laptop_env() -> dict[str, str]:
    """This environment without a runner's variables: run from a CI job, the demo would write its
    Markdown to that job's summary (as it should when a user asks for it)."""
    return {name: value for name, value in os.environ.items() if not name.startswith(("GITHUB_", "FLEET_"))}


def test_the_demo_command_quarantines_the_dead_tenant_and_promotes():
    proc = subprocess.run([sys.executable, "-m", "deploy", "demo"], cwd=ROOT, env=laptop_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_dead_tenant_handled(proc.stdout)
    assert_plain_log_and_text_summary(proc.stdout)
    assert "fleet-rollout demo --report PATH" in proc.stdout  # how to keep the report, which goes otherwise


def test_the_demo_writes_only_its_report_where_asked_and_markdown_only_to_the_users_step_summary(tmp_path):
    """Run inside a job: the job's outputs file, log format and FLEET_* configuration are not the demo's."""
    job_output, summary, kept = tmp_path / "job_output", tmp_path / "step_summary.md", tmp_path / "kept" / "r.json"
    job_output.touch()
    env = {**laptop_env(), "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(job_output),
           "GITHUB_STEP_SUMMARY": str(summary), "FLEET_DRY_RUN": "true", "FLEET_CP_URL": "https://cp.invalid"}
    proc = subprocess.run([sys.executable, "-m", "deploy", "demo", "--report", str(kept)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_dead_tenant_handled(proc.stdout)
    assert_plain_log_and_text_summary(proc.stdout)
    report = load_report(kept.read_text())
    assert report["outcome"] == "deployed" and report["rollout"]["quarantined"] == ["philbrew-erton"]
    assert f"# the JSON report is kept at {kept}" in proc.stdout
    assert "### Tenants" in summary.read_text() and "```mermaid" in summary.read_text()
    assert job_output.read_text() == ""


def test_without_docker_registry_the_demo_uses_the_simulators_registry(monkeypatch, capsys):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    for name in set(os.environ) - set(laptop_env()):
        monkeypatch.delenv(name)
    assert demo.main() == 0
    text = capsys.readouterr().out
    assert "the simulator's registry" in text
    assert_dead_tenant_handled(text)
    assert_plain_log_and_text_summary(text)
