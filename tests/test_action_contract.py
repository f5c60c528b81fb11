"""action.yml, the Dockerfile and the code agree: what the runner passes is what we read."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deploy import config, report
from deploy.pipeline import Run
from deploy.sim.fleet import TenantSpec
from tests.actions_runner import ROOT, manifest
from tests.report_schema import load_report
from tests.support import SHA, buildinfo


def test_every_input_has_a_description_and_the_runtime_default():
    inputs = manifest()["inputs"]
    assert set(inputs) == set(config.DEFAULTS)
    for name, meta in inputs.items():
        assert meta.get("description"), name
        default = str(meta.get("default", ""))
        if not default.startswith("${{"):
            assert default == config.DEFAULTS[name], name


def test_every_input_is_mapped_to_its_fleet_variable():
    runs = manifest()["runs"]
    assert runs["using"] == "docker" and runs["image"] == "Dockerfile"
    expected = {config.env_name(name): f"${{{{ inputs.{name} }}}}" for name in manifest()["inputs"]}
    assert runs["env"] == expected


def test_declared_outputs_are_exactly_the_ones_written():
    declared = set(manifest()["outputs"])
    assert declared == set(report.OUTPUT_NAMES)
    assert set(report.outputs(Run(), "r.json")) == declared


def dockerfile_copies() -> list[tuple[str, str]]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [tuple(line.split()[1:3]) for line in lines if line.startswith("COPY ")]  # type: ignore[misc]


def copy_like_the_dockerfile(target: Path) -> Path:
    """Lay out /app as the image would; return the entrypoint's directory."""
    for source, dest in dockerfile_copies():
        destination = target / Path(dest).relative_to("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / source, destination)
    entrypoint = re.search(r'ENTRYPOINT \["python", "(.+?)"\]', (ROOT / "Dockerfile").read_text())
    assert entrypoint, "the Dockerfile's ENTRYPOINT is the exec form running python on a file"
    return target / Path(entrypoint.group(1)).relative_to("/")


def third_party_imports(root: Path) -> set[str]:
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if p.is_dir()}
    return names - set(sys.stdlib_module_names) - local - {"__future__"}


def test_the_image_installs_every_third_party_package_the_code_imports(tmp_path):
    entrypoint = copy_like_the_dockerfile(tmp_path)
    pinned = {
        line.split("==")[0].strip().lower()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert third_party_imports(entrypoint.parent) <= pinned
    assert "pytest" not in pinned and "yaml" not in third_party_imports(entrypoint.parent)


def test_the_entrypoint_runs_from_only_what_the_dockerfile_copies(tmp_path, fleet):
    entrypoint = copy_like_the_dockerfile(tmp_path / "image")
    sim, server = fleet([TenantSpec("a", deploy_seconds=1), TenantSpec("b", deploy_seconds=1)])
    env = {
        "PATH": "/usr/bin:/bin",
        "FLEET_CP_URL": server.url,
        "FLEET_CP_TOKEN": sim.token,
        "FLEET_SHA": SHA,
        "FLEET_VERIFY_URL": buildinfo(server),
        "FLEET_VERIFY_INTERVAL": "0.1",
        "FLEET_SOAK_SECONDS": "0",
        "GITHUB_WORKSPACE": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-E", "-s", str(entrypoint)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outcome=deployed" in proc.stdout
    load_report((tmp_path / "fleet-rollout-report.json").read_text())
