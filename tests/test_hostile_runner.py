"""The runner's side as hostile input: files that are not files, and a ``runs.env`` left unevaluated.

Issue 21 [7], [8] and [12], against the real entrypoint. ``report-path``, ``GITHUB_OUTPUT`` and
``GITHUB_STEP_SUMMARY`` may each be a symbolic link loop, a FIFO nobody reads, a socket, a directory
or a device: each such surprise is one ``::error`` line, the other two files are written, and the
exit code is the run's own (SECURITY.md § Threat model: hostile servers → Runner files). A FIFO
without a reader must not block the run, not even for a moment.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.runner import parse_output_file
from tests.actions_runner import ROOT, container_env
from tests.report_schema import load_report
from tests.support import SHA

KINDS = ("symlink-loop", "fifo", "socket", "directory", "device")
FILES = {"report": "the JSON report", "output": "GITHUB_OUTPUT", "summary": "GITHUB_STEP_SUMMARY"}
BOUND_SECONDS = 20  # a run that blocks on a file is killed here, and fails the test


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket's path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _make(kind: str, path: Path) -> Path:
    """Put a ``kind`` where ``path`` is; return the path the environment should name."""
    if path.is_file():
        path.unlink()
    if kind == "symlink-loop":
        path.symlink_to(path.name)  # a link to itself: resolving it never ends
    elif kind == "fifo":
        os.mkfifo(path)  # nobody ever opens it for reading
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))  # the socket file stays after close
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/full")  # every write fails with ENOSPC
    return path


def _env(workdir: Path, **inputs: str) -> dict[str, str]:
    env = container_env({"cp-url": "https://cp.example.test", "cp-token": "cp-Token-0f9e8d7c", **inputs},
                        {"sha": SHA, "token": ""}, workdir)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "FLEET_", "GITEA_"))}
    return {**base, **env}


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "entrypoint.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=BOUND_SECONDS)


def _regular(path: Path) -> str:
    return path.read_text() if path.is_file() and not path.is_symlink() else ""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", FILES)
def test_a_runner_file_that_is_not_a_regular_file_is_one_error_and_the_rest_is_written(
        short_dir: Path, which: str, kind: str) -> None:
    env = _env(short_dir, disabled="true")  # a skipped run: exit 0, and nothing on the network
    paths = {"report": Path(env["GITHUB_WORKSPACE"]) / env["FLEET_REPORT_PATH"],
             "output": Path(env["GITHUB_OUTPUT"]), "summary": Path(env["GITHUB_STEP_SUMMARY"])}
    _make(kind, paths[which])
    proc = _run(env)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("::error")]
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the run's own exit code: skipped
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert len(errors) == 1 and FILES[which] in errors[0], errors
    if which != "output":
        assert parse_output_file(_regular(paths["output"]))["outcome"] == "skipped"
    if which != "summary":
        assert "fleet-rollout" in _regular(paths["summary"])
    if which != "report":
        assert load_report(_regular(paths["report"]), "the report")["outcome"] == "skipped"


def test_a_fifo_at_github_output_keeps_a_configuration_errors_exit_code(short_dir: Path) -> None:
    env = _env(short_dir, **{"batch-size": "many"})
    _make("fifo", Path(env["GITHUB_OUTPUT"]))
    proc = _run(env)
    assert proc.returncode == 2, proc.stdout
    assert any("GITHUB_OUTPUT" in line for line in proc.stdout.splitlines() if line.startswith("::error")), proc.stdout
    assert load_report(_regular(Path(env["GITHUB_WORKSPACE"]) / env["FLEET_REPORT_PATH"]), "r")["exit_code"] == 2


def test_dev_null_is_a_place_to_discard_the_summary(short_dir: Path) -> None:
    """/dev/null is the one file that is not a regular file and is accepted: a way to say "no summary"."""
    env = {**_env(short_dir, disabled="true"), "GITHUB_STEP_SUMMARY": os.devnull}
    proc = _run(env)
    assert proc.returncode == 0 and "::error" not in proc.stdout, proc.stdout


def test_literal_expressions_in_every_variable_are_one_explanation_naming_every_input(tmp_path: Path) -> None:
    """Issue 21 [12]: with runs.env not evaluated, every FLEET_* holding a literal ``${{ inputs.* }}`` got
    its own ``::error`` with the same long explanation (ten annotations: the runner's cap). One error
    names them all; the run's verdict is the only other annotation."""
    env = _env(tmp_path)
    literal = sorted(key for key in env if key.startswith("FLEET_"))
    for name in literal:
        env[name] = "${{ inputs." + name.removeprefix("FLEET_").lower().replace("_", "-") + " }}"
    proc = _run(env)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("::error")]
    assert proc.returncode == 2, proc.stdout
    assert len(errors) == 2, "\n".join(errors)
    explanation = next(line for line in errors if "fleet-rollout failed" not in line)
    assert explanation.count("did not evaluate action.yml's runs.env") == 1, explanation
    for name in literal:
        assert name.removeprefix("FLEET_").lower().replace("_", "-") in explanation, name
    outputs = parse_output_file(Path(env["GITHUB_OUTPUT"]).read_text())
    assert json.loads(outputs["stragglers"]) == [] and outputs["outcome"] == "failed"
