"""The README's demo command does what the README says: quarantine, verify, promote, ok=true —
in the log a laptop shows, ending with a short text summary, and writing only where it is asked to."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from deploy import demo
from deploy.report import OUTPUT_NAMES
from deploy.runner import parse_output_file
from deploy.sim.fleet import FleetSim
from deploy.sim.registry import SimRegistry
from tests.actions_runner import ROOT
from tests.report_schema import load_report


def outputs_of(text: str) -> dict[str, str]:
    """The outputs, printed as ``name=value`` lines at the end of the log (no GITHUB_OUTPUT)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {name: value for name, value in pairs if name in OUTPUT_NAMES}


def plain_summary(text: str, code: int) -> str:
    """The demo's text summary, after a log printed as outside a runner (groups as headers, no ``::`` commands)."""
    assert "== Rollout ==" in text and "== Result ==" in text
    assert not [line for line in text.splitlines() if line.startswith("::")]
    return text.split(f"# summary (exit code {code})\n", 1)[1]


def assert_dead_tenant_handled(text: str) -> None:
    outputs = outputs_of(text)
    assert outputs["ok"] == "true" and outputs["outcome"] == "deployed"
    assert json.loads(outputs["quarantined"]) == ["philbrew-erton"]
    assert outputs["verified"] == "4"
    assert outputs["promoted-digest"].startswith("sha256:")
    assert outputs["previous-digest"].startswith("sha256:")
    assert outputs["promoted-digest"] != outputs["previous-digest"]
    assert "warning: quarantined: philbrew-erton did not reach the target" in text


def assert_plain_log_and_text_summary(text: str) -> None:
    """The log as outside a runner, then a text table: no workflow command, no Markdown source."""
    assert "```mermaid" not in text and "| --- |" not in text and "## fleet-rollout" not in text
    summary = plain_summary(text, 0)
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
    assert outputs_of(proc.stdout)["report"] == ""  # it went with the simulator: no path to a deleted file


def test_in_a_job_the_demo_writes_its_outputs_report_and_markdown_where_the_job_says(tmp_path):
    """Run as a step: the outputs go to the job's GITHUB_OUTPUT too (with report=PATH, the kept report),
    the Markdown to its step summary; the job's log format and FLEET_* configuration are not the demo's."""
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
    assert outputs_of(proc.stdout)["report"] == str(kept)
    written = parse_output_file(job_output.read_text())
    assert written == outputs_of(proc.stdout)  # the same outputs, printed and written
    assert written["ok"] == "true" and written["report"] == str(kept) and set(written) == set(OUTPUT_NAMES)
    assert f"# the outputs are also written to GITHUB_OUTPUT ({job_output})" in proc.stdout


def test_report_output_names_the_kept_report_and_an_unwritable_job_output_fails_the_demo(tmp_path, monkeypatch,
                                                                                         capsys):
    """``--report`` relative to where the demo runs: ``report=`` says that path; a GITHUB_OUTPUT that
    cannot be written is said on stderr and the demo exits 1, although the run itself succeeded."""
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    for name in set(os.environ) - set(laptop_env()):
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path))  # a directory: cannot be appended to

    code = demo.main(report="out/demo.json")

    printed = capsys.readouterr()
    assert code == 1
    assert "could not write the outputs to GITHUB_OUTPUT" in printed.err
    assert outputs_of(printed.out)["ok"] == "true" and outputs_of(printed.out)["report"] == "out/demo.json"
    assert load_report((tmp_path / "out" / "demo.json").read_text())["outcome"] == "deployed"


def test_without_docker_registry_the_demo_uses_the_simulators_registry(monkeypatch, capsys):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    for name in set(os.environ) - set(laptop_env()):
        monkeypatch.delenv(name)
    assert demo.main() == 0
    text = capsys.readouterr().out
    assert "the simulator's registry" in text
    assert_dead_tenant_handled(text)
    assert_plain_log_and_text_summary(text)


# -- --bad-build: the canary's proof stops the rollout ----------------------------------------------


def assert_stopped_after_the_canary(text: str, code: int) -> None:
    """One deploy call (the canary), the canary named stale, ``latest`` not moved, the same prints."""
    assert code == 1, text
    outputs = outputs_of(text)
    assert outputs["ok"] == "false" and outputs["outcome"] == "failed"
    assert json.loads(outputs["shipped"]) == ["hongming"] and outputs["aborted-at"] == "canary"
    assert "canary" in outputs["reason"] and "hongming" in outputs["reason"] and "stale" in outputs["reason"]
    assert json.loads(outputs["stale"]) == ["hongming"] and outputs["verified"] == "0"
    assert outputs["result_count"] == "1"  # the canary's row only
    assert outputs["promoted-digest"] == "" and outputs["previous-digest"] == ""  # promote never ran
    assert "# the build is bad:" in text
    summary = plain_summary(text, 1)
    assert summary.lstrip().startswith("fleet-rollout: failed staging-8ddce85 (8ddce85f3b2a) in ")
    assert re.search(r"^reason: .*hongming", summary, re.M)
    assert re.search(r"^hongming +stale +", summary, re.M)
    for slug in ("reno-stars", "molecule-adk-demo", "philbrew-erton", "acme-prod"):
        assert re.search(rf"^{slug} +not started", summary, re.M), slug
    assert not re.search(r"^latest on .*: promoted", summary, re.M)


def test_the_bad_build_demo_stops_after_the_canary_and_leaves_latest(tmp_path):
    kept = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "deploy", "demo", "--bad-build", "--report", str(kept)], cwd=ROOT,
                          env=laptop_env(), capture_output=True, text=True, timeout=120)

    assert_stopped_after_the_canary(proc.stdout, proc.returncode)
    report = load_report(kept.read_text())
    assert report["outcome"] == "failed" and report["exit_code"] == 1
    assert [(call["label"], call["slugs"]) for call in report["rollout"]["calls"]] == [("canary", ["hongming"])]
    assert report["rollout"]["soak"] is None  # the proof failed before the soak began
    assert report["promote"] is None


def test_the_bad_build_demo_sends_one_deploy_call_and_latest_stays_on_the_previous_build(monkeypatch, capsys):
    """Seen from the simulator's side: the CP got one deploy call, the registry's latest did not move."""
    fleets: list[FleetSim] = []
    registries: list[SimRegistry] = []
    make_fleet, make_registry = demo.demo_fleet, demo.SimRegistry

    def kept_fleet(bad_build: bool = False, bad_metrics: bool = False) -> FleetSim:
        fleets.append(make_fleet(bad_build, bad_metrics))
        return fleets[-1]

    def kept_registry() -> SimRegistry:
        registries.append(make_registry())
        return registries[-1]

    monkeypatch.setattr(demo, "demo_fleet", kept_fleet)
    monkeypatch.setattr(demo, "SimRegistry", kept_registry)
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)  # the simulator's registry, kept in memory
    for name in set(os.environ) - set(laptop_env()):
        monkeypatch.delenv(name)

    code = demo.main(bad_build=True)

    assert_stopped_after_the_canary(capsys.readouterr().out, code)
    [fleet], [registry] = fleets, registries
    assert fleet.bad_builds == {demo.TAG}
    assert [call.get("only_slugs") for call in fleet.deploy_calls()] == [["hongming"]]
    latest, build = registry.tag_digest(demo.REPOSITORY, "latest"), registry.tag_digest(demo.REPOSITORY, demo.TAG)
    assert latest.startswith("sha256:") and build.startswith("sha256:") and latest != build


def test_the_bad_metrics_demo_stops_at_the_canarys_metric_analysis(tmp_path):
    """Every proof passes (the build reports its SHA); a real Prometheus shows 30 % of requests failing."""
    kept = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "deploy", "demo", "--bad-metrics", "--report", str(kept)], cwd=ROOT,
                          env=laptop_env(), capture_output=True, text=True, timeout=120)
    if "--bad-metrics needs a real Prometheus" in proc.stderr and os.environ.get("CI", "").lower() != "true":
        pytest.skip("prometheus is not installed (CI installs it, and fails this test without it)")
    outputs = outputs_of(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert outputs["aborted-at"] == "canary" and json.loads(outputs["shipped"]) == ["hongming"]
    assert outputs["reason"].startswith('canary: metric analysis failed: errors = ')
    assert 'on tenant="hongming", not < 0.05' in outputs["reason"]
    assert outputs["promoted-digest"] == "" and "# metrics: Debian's prometheus at http://127.0.0.1:" in proc.stdout
    report = load_report(kept.read_text())
    assert [step["step"] for step in report["analysis"]] == ["canary"] and report["analysis"][0]["verdict"] == "fail"
    assert report["verify"]["verified"] == ["hongming"]  # proven: only the metrics tell
