"""The README's demo command does what the README says: quarantine, verify, promote, ok=true."""

from __future__ import annotations

import json
import subprocess
import sys

from deploy import demo
from tests.actions_runner import ROOT


def outputs_of(text: str) -> dict[str, str]:
    block = text.split("# outputs (GITHUB_OUTPUT)\n", 1)[1].split("\n\n", 1)[0]
    return dict(line.split("=", 1) for line in block.splitlines())


def assert_seed_incident_handled(text: str) -> None:
    outputs = outputs_of(text)
    assert outputs["ok"] == "true" and outputs["outcome"] == "deployed"
    assert json.loads(outputs["quarantined"]) == ["philbrew-erton"]
    assert outputs["verified"] == "4"
    assert outputs["promoted-digest"].startswith("sha256:")
    assert outputs["previous-digest"].startswith("sha256:")
    assert outputs["promoted-digest"] != outputs["previous-digest"]
    assert "::warning title=quarantined philbrew-erton::" in text


def test_the_demo_command_replays_the_seed_incident_and_promotes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deploy", "demo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_seed_incident_handled(proc.stdout)


def test_without_docker_registry_the_demo_uses_the_simulators_registry(monkeypatch, capsys):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    assert demo.main() == 0
    text = capsys.readouterr().out
    assert "the simulator's registry" in text
    assert_seed_incident_handled(text)
