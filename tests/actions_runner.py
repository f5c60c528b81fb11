"""Runs ``entrypoint.py`` the way the Actions runner runs a Docker action.

From ``action.yml``: every input gets its ``with:`` value or its default (``${{ github.* }}``
defaults resolved from a fake github context), is exported as ``INPUT_<NAME>`` upper-cased with
the hyphen kept, and substituted into ``runs.env`` (which may reference only ``inputs``). The
file commands (``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``) are files in a temp directory, parsed
afterwards exactly as the runner parses them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.runner import parse_output_file
from tests.report_schema import load_report
from tests.support import JOB_TOKEN, SHA

ROOT = Path(__file__).resolve().parent.parent
EXPRESSION = re.compile(r"\$\{\{\s*([a-z]+)\.([A-Za-z0-9_-]+)\s*\}\}")


def manifest() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "action.yml").read_text())


@dataclass
class ActionResult:
    code: int
    stdout: str
    stderr: str
    outputs: dict[str, str]
    summary: str
    report: dict[str, Any] | None
    files_text: str  # every file the action wrote, for secret scans
    output_text: str = ""  # GITHUB_OUTPUT as written, for parsers other than the runner's

    def everything(self) -> str:
        """All text a user or a log could ever see."""
        return "\n".join([self.stdout, self.stderr, self.files_text])

    def visible_log(self) -> str:
        """The log as the runner displays it: ``::add-mask::`` lines are consumed, never shown."""
        return "\n".join(line for line in self.stdout.splitlines() if not line.startswith("::add-mask::"))


def container_env(with_: dict[str, str], github: dict[str, str], workdir: Path) -> dict[str, str]:
    spec = manifest()
    inputs: dict[str, str] = {}
    for name, meta in spec["inputs"].items():
        value = with_.get(name, meta.get("default", ""))
        inputs[name] = _substitute(str(value), {"github": github})
    unknown = set(with_) - set(inputs)
    assert not unknown, f"not inputs of action.yml: {unknown}"
    env = {f"INPUT_{name.upper()}": value for name, value in inputs.items()}
    for key, value in spec["runs"]["env"].items():
        env[key] = _substitute(str(value), {"inputs": inputs})
    output, summary = workdir / "file_commands" / "output", workdir / "file_commands" / "summary"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.touch()
    summary.touch()
    env.update(
        GITHUB_ACTIONS="true",
        GITHUB_OUTPUT=str(output),
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_WORKSPACE=str(workdir / "workspace"),
        GITHUB_SHA=github["sha"],
        GITHUB_REF_NAME=github.get("ref_name", "main"),
        GITHUB_REPOSITORY=github.get("repository", "acme/platform"),
        GITHUB_API_URL=github.get("api_url", "https://api.github.com"),
    )
    (workdir / "workspace").mkdir(exist_ok=True)
    return env


def _substitute(text: str, contexts: dict[str, dict[str, str]]) -> str:
    def value(match: re.Match[str]) -> str:
        context, key = match.groups()
        assert context in contexts, f"{match.group(0)}: context {context!r} is not available here"
        return contexts[context].get(key.replace("-", "_") if context == "github" else key, "")

    return EXPRESSION.sub(value, text)


def run_action(
    with_: dict[str, str],
    workdir: Path,
    github: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
) -> ActionResult:
    github = {"sha": SHA, "token": JOB_TOKEN, **(github or {})}
    env = container_env(with_, github, workdir)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "FLEET_", "GITEA_"))}
    proc = subprocess.run(
        [sys.executable, "entrypoint.py"],
        cwd=cwd,
        env={**base, **env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    outputs_text = Path(env["GITHUB_OUTPUT"]).read_text()
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    report_file = Path(env["GITHUB_WORKSPACE"]) / env["FLEET_REPORT_PATH"]
    report_text = report_file.read_text() if report_file.exists() else ""
    return ActionResult(
        code=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        outputs=parse_output_file(outputs_text),
        summary=summary,
        report=load_report(report_text, f"the JSON report at {report_file}"),
        files_text="\n".join([outputs_text, summary, report_text]),
        output_text=outputs_text,
    )
