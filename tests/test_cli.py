"""The command line behaves: ``fleet-rollout``, ``python -m deploy`` and ``entrypoint.py`` are one CLI.

Only the bare command runs the pipeline (that is how the container's ENTRYPOINT runs it); every
argument asks for help, the version or the demo, or is a usage error — none ever deploys. The log
starts with the tool's version, reads as a plan on a dry run, says a failure's reason once, and a
reader that leaves early (``| head -1``) costs no traceback and no report.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy import __version__, config
from deploy.pipeline import Outcome
from deploy.runner import parse_output_file
from deploy.sim.fleet import TenantSpec
from deploy.sim.server import SimServer
from tests.actions_runner import ROOT, container_env
from tests.report_schema import load_report
from tests.support import CP_TOKEN, FAST_INPUTS, SHA, healthy

# What pip writes as the `fleet-rollout` console script for `fleet-rollout = deploy.main:cli`.
CONSOLE_SCRIPT = """\
import re
import sys
from deploy.main import cli
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(cli())
"""
VERSION_LINE = f"fleet-rollout {__version__}"


@pytest.fixture
def launchers(tmp_path: Path) -> dict[str, list[str]]:
    """The three ways the CLI is started: the console script, ``python -m deploy``, the container's."""
    script = tmp_path / "bin" / "fleet-rollout"
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    return {
        "console script": [sys.executable, str(script)],
        "python -m deploy": [sys.executable, "-m", "deploy"],
        "entrypoint.py": [sys.executable, str(ROOT / "entrypoint.py")],
    }


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any runner or fleet-rollout variable, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "FLEET_", "GITEA_"))}
    return {**base, "PYTHONPATH": str(ROOT), **extra}


def fleet_env(server: SimServer, workspace: Path, **inputs: str) -> dict[str, str]:
    """A complete FLEET_* configuration for ``server``, as a GitLab job or a laptop would set it."""
    values = {**FAST_INPUTS, "cp-url": server.url, "cp-token": CP_TOKEN, "sha": SHA, "skip-if-superseded": "false",
              **{k.replace("_", "-"): v for k, v in inputs.items()}}
    workspace.mkdir(parents=True, exist_ok=True)
    return clean_env(GITHUB_WORKSPACE=str(workspace), **{config.env_name(k): v for k, v in values.items()})


def cli(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def plain_lines(stdout: str) -> list[str]:
    """The log a person reads: runner-consumed mask lines and the outputs printed at the end left out."""
    outputs = tuple(f"{name}=" for name in ("ok", "outcome", "reason", "result_count", "quarantined", "stragglers",
                                            "verified", "stale", "unreachable", "unhealthy", "promoted-digest",
                                            "previous-digest", "report"))
    return [line for line in stdout.splitlines() if not line.startswith(("::add-mask::", *outputs))]


# -- help, version, usage errors ------------------------------------------------------------------


def test_help_lists_every_fleet_variable_with_its_default_the_commands_and_the_exit_codes(launchers):
    proc = cli([*launchers["python -m deploy"], "--help"], clean_env())

    assert proc.returncode == 0 and proc.stderr == ""
    text = proc.stdout
    for name, default in config.DEFAULTS.items():
        shown = "secret, never printed" if name in config.SECRET_INPUTS else default or "-"
        assert re.search(rf"^  {config.env_name(name)} +{re.escape(shown)}$", text, re.M), name
    assert "fleet-rollout demo [--report PATH]" in text
    assert re.search(r"^  0 +deployed, promoted \(no rollout stage; the tag moved\), verified \(stages: verify "
                     r"alone\),",
                     text, re.M)
    assert re.search(r"^  1 +failed", text, re.M) and re.search(r"^  2 +configuration error", text, re.M)


def help_exit_codes(text: str) -> dict[int, str]:
    """The help's exit-code list: code → its description on one line."""
    block = text.split("\nexit codes:\n", 1)[1]
    found: dict[int, str] = {}
    for line in block.splitlines():
        if head := re.match(r"^  (\d) +(.*)", line):
            found[int(head[1])] = head[2]
        elif found:
            found[max(found)] += " " + line.strip()
    return found


def readme_outcomes() -> dict[int, set[str]]:
    """The README's outcome table: exit code → the outcomes that end with it."""
    section = (ROOT / "README.md").read_text().split("| outcome | `ok` | exit | when |\n", 1)[1].split("\n\n", 1)[0]
    found: dict[int, set[str]] = {}
    for row in section.splitlines()[1:]:
        outcome, _ok, code = (cell.strip().strip("`") for cell in row.strip("|").split("|")[:3])
        found.setdefault(int(code), set()).add(outcome)
    return found


def test_the_help_exit_codes_match_the_readme_outcome_table():
    """Every outcome the README gives an exit code is in the help under that code; exit 2 is a
    configuration error in both, said the same way, and true when it comes after read-only requests."""
    text = cli([sys.executable, "-m", "deploy", "--help"], clean_env()).stdout
    codes = help_exit_codes(text)
    outcomes = readme_outcomes()

    assert set(codes) == set(outcomes) == {0, 1, 2}
    assert set().union(*outcomes.values()) == {outcome.value for outcome in Outcome}  # every outcome, documented
    for code in (0, 1):
        assert {outcome for outcome in outcomes[code] if not re.search(rf"\b{outcome}\b", codes[code])} == set()
    assert outcomes[2] == {"failed"} and codes[2].startswith("configuration error")
    said = "no deploy call was made, nothing moved"
    assert said in codes[2] and said in (ROOT / "README.md").read_text()
    assert "nothing was sent" not in text and "zero requests" not in (ROOT / "README.md").read_text()


def test_help_text_shows_a_percent_sign_as_argparse_would():
    """Help strings are %-formats for argparse (``30%%``); the hand-made command listing expands them too."""
    text = " ".join(cli([sys.executable, "-m", "deploy", "--help"], clean_env()).stdout.split())

    assert "%%" not in text
    assert "fails 30% of requests" in text


@pytest.mark.parametrize("launcher", ["console script", "python -m deploy", "entrypoint.py"])
def test_help_and_version_with_a_live_fleet_configured_send_no_request(fleet, launchers, tmp_path, launcher):
    _sim, server = fleet(healthy("a", "b"))
    env = fleet_env(server, tmp_path / "workspace", verify_url=f"{server.url}/tenants/{{slug}}/buildinfo")

    for flag in ("--help", "-h", "--version"):
        proc = cli([*launchers[launcher], flag], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr == ""
    assert server.requests == []
    assert not (tmp_path / "workspace" / "fleet-rollout-report.json").exists()


def test_version_prints_the_tool_and_the_packaged_version(launchers):
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = cli([*launchers["console script"], "--version"], clean_env())
    assert proc.returncode == 0
    assert proc.stdout == f"fleet-rollout {packaged}\n" == f"{VERSION_LINE}\n"


@pytest.mark.parametrize("args", [
    ["deploy"], ["run"], ["--dry-run"], ["--"], ["--vers"], ["FLEET_DRY_RUN=true"], [""], ["demo", "--bad"],
    ["demo", "--good-build"], ["demo", "extra"],
], ids=repr)
@pytest.mark.parametrize("launcher", ["console script", "entrypoint.py"])
def test_an_unknown_argument_or_command_is_a_usage_error_and_never_deploys(fleet, launchers, tmp_path, launcher,
                                                                            args):
    _sim, server = fleet(healthy("a", "b"))
    proc = cli([*launchers[launcher], *args], fleet_env(server, tmp_path / "workspace"))

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage:") and "fleet-rollout: error:" in proc.stderr
    assert "fleet-rollout --help" in proc.stderr
    assert server.requests == []


def test_an_input_passed_as_an_option_is_refused_naming_its_environment_variable(launchers):
    proc = cli([*launchers["console script"], "--dry-run"], clean_env())
    assert proc.returncode == 2 and proc.stdout == ""
    assert "'--dry-run': inputs are environment variables here; set FLEET_DRY_RUN" in proc.stderr


TOP_LEVEL_OPTIONS = {  # every option of every command, as the top-level help shows it
    "demo": ["--report PATH", "--bad-build"],
    "contract URL": ["URL", "--token-env NAME", "--redeploy-path PATH", "--target-tag TAG", "--test-tenant SLUG",
                     "--request-timeout SECONDS", "--rollout-timeout SECONDS", "--cp-worst-case SECONDS",
                     "--allow-insecure-http"],
}


def test_help_lists_every_command_and_every_option_with_a_description(launchers):
    text = cli([*launchers["console script"], "--help"], clean_env()).stdout
    commands = text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]

    assert "fleet-rollout demo [--report PATH] [--bad-build]" in text  # the usage names --bad-build too
    assert re.search(r"^  \(none\) +run the rollout", commands, re.M)
    for command, options in TOP_LEVEL_OPTIONS.items():
        assert re.search(rf"^  {re.escape(command)} +\w", commands, re.M), command
        for option in options:
            assert re.search(rf"^    {re.escape(option)} +\w", commands, re.M), option
    assert re.search(r"^  --version +print the version", text, re.M)
    assert re.search(r"^  -h, --help +show this help", text, re.M)


def deploy_imports() -> dict[str, set[str]]:
    """Module → the ``deploy`` modules it imports anywhere (at the top or inside a function)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "deploy").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("deploy")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deploy"):
                found.add(node.module or "")
                found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from deploy import demo`
    return {module: {name for name in found if name in graph and name != module} for module, found in graph.items()}


def test_no_module_imports_in_a_circle_and_only_the_entry_points_import_the_command_line():
    graph = deploy_imports()
    assert "deploy.demo" in graph["deploy.main"] and "deploy.action" in graph["deploy.demo"]  # the graph is read

    def cycle_from(module: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for imported in sorted(graph[module]):
            if imported in path:
                return (*path[path.index(imported):], imported)
            if (found := cycle_from(imported, (*path, imported))) is not None:
                return found
        return None

    cycles = {cycle for module in graph if (cycle := cycle_from(module, (module,))) is not None}
    assert cycles == set()
    assert {module for module, imported in graph.items() if "deploy.main" in imported} == {"deploy.__main__"}


def test_demo_help_prints_the_demos_usage_and_starts_nothing(launchers):
    proc = cli([*launchers["python -m deploy"], "demo", "--help"], clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fleet-rollout demo [-h] [--report PATH] [--bad-build]")
    assert re.search(r"^  --bad-build +ship a bad build", proc.stdout, re.M)
    assert "# simulator" not in proc.stdout


# -- the bare command runs --------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["console script", "python -m deploy"])
def test_the_bare_command_runs_the_pipeline_configured_by_the_environment(launchers, tmp_path, launcher):
    proc = cli(launchers[launcher], clean_env(FLEET_DISABLED="true", GITHUB_WORKSPACE=str(tmp_path)))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outcome=skipped" in proc.stdout.splitlines()
    assert load_report((tmp_path / "fleet-rollout-report.json").read_text())["outcome"] == "skipped"


def test_in_a_job_the_first_line_after_the_masks_names_the_tool_and_its_version(fleet, action):
    _sim, server = fleet(healthy("a", "b"))
    result = action(server, dry_run="true")

    assert result.code == 0, result.stdout
    assert result.stdout.startswith("::add-mask::")  # the secrets are registered before anything is said
    assert result.visible_log().splitlines()[0] == VERSION_LINE


def test_outside_a_job_the_first_line_names_the_tool_and_its_version(launchers, tmp_path):
    env = clean_env(FLEET_CP_TOKEN="cp-s3cret-9f2e77", FLEET_BATCH_SIZE="zero", GITHUB_WORKSPACE=str(tmp_path))
    proc = cli(launchers["entrypoint.py"], env)
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[0] == VERSION_LINE


# -- what the log says --------------------------------------------------------------------------------


@pytest.mark.parametrize(("tenants", "batch_size", "canary", "plan"), [
    (("a", "b", "c", "d"), "2", "", "plan: 4 tenants in 2 batches, nothing deployed"),
    (("a",), "3", "", "plan: 1 tenant in 1 batch, nothing deployed"),
    (("a", "b", "c"), "1", "a", "plan: 3 tenants in a canary and 2 batches, nothing deployed"),
])
def test_a_dry_run_reads_as_a_plan(fleet, action, tenants, batch_size, canary, plan):
    _sim, server = fleet(healthy(*tenants))
    result = action(server, dry_run="true", batch_size=batch_size, canary=canary)

    assert result.code == 0 and result.outputs["outcome"] == "planned", result.stdout
    log = result.visible_log()
    assert plan in log.splitlines()
    assert "on target" not in log and "shipped" not in log  # nothing was deployed, so nothing is counted
    assert "::group::Coverage" not in log
    assert "(s)" not in log


def test_plurals_are_right_for_one_tenant_and_one_straggler(fleet, action):
    _sim, server = fleet([*healthy("a", "b"), TenantSpec("dead", omit_row=True)])
    result = action(server, batch_size="3", max_stragglers="1", verify_url="")

    assert result.code == 0, result.stdout
    log = result.visible_log()
    assert "coverage: 2/3 tenants on target, 1 straggler, tolerance 1" in log
    assert "rollout: 2/3 tenants shipped, 2 result rows" in log
    assert "(s)" not in log


FAILURES = {  # the stage logs the reason itself / the run's verdict is the first to say it
    "halted rollout": ([*healthy("a"), TenantSpec("late", omit_row=True), *healthy("b", "c")],
                       {"batch-size": "2", "max-stragglers": "0", "verify-url": ""}),
    "verify failure": ([*healthy("a"), TenantSpec("old", stale=True), *healthy("b")],
                       {"batch-size": "3", "verify-budget": "0.3", "verify-url": "{url}/tenants/{{slug}}/buildinfo"}),
}


def failure(fleet, kind: str) -> tuple[SimServer, dict[str, str]]:
    tenants, inputs = FAILURES[kind]
    _sim, server = fleet(tenants)
    return server, {name.replace("-", "_"): value.format(url=server.url) for name, value in inputs.items()}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_outside_a_job_a_failure_reason_is_printed_once(fleet, launchers, tmp_path, kind):
    server, inputs = failure(fleet, kind)
    proc = cli(launchers["console script"], fleet_env(server, tmp_path / "workspace", **inputs))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    reason = next(line.removeprefix("reason=") for line in proc.stdout.splitlines() if line.startswith("reason="))
    lines = [line for line in plain_lines(proc.stdout) if reason.split("; ")[0] in line]
    assert len(lines) == 1, proc.stdout
    assert "outcome: failed" in proc.stdout.splitlines()


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_in_a_job_a_failure_reason_is_at_most_one_log_line_plus_the_final_annotation(fleet, action, kind):
    server, inputs = failure(fleet, kind)
    result = action(server, **inputs)

    assert result.code == 1, result.stdout
    reason = result.outputs["reason"]
    lines = [line for line in result.visible_log().splitlines() if reason.split("; ")[0] in line]
    assert 1 <= len(lines) <= 2, lines
    assert lines[-1] == f"::error title=fleet-rollout failed::{reason}"  # the verdict; Gitea shows it as a line
    assert "outcome: failed" in result.visible_log().splitlines()


# -- a reader that leaves early (| head -1) ----------------------------------------------------------


def test_help_into_a_pipe_closed_early_exits_quietly(launchers):
    proc = subprocess.Popen([*launchers["console script"], "--help"], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the help is written, as `| head -0` would be
    stderr = proc.stderr.read()
    assert proc.wait(timeout=30) == 0
    assert stderr == ""


def test_a_run_whose_reader_leaves_after_one_line_still_writes_its_outputs_and_report(fleet, tmp_path):
    _sim, server = fleet(healthy("canary", "a", "b"))
    with_ = {**FAST_INPUTS, "cp-url": server.url, "cp-token": CP_TOKEN, "verify-url": "", "canary": "canary",
             "soak-seconds": "0.5", "skip-if-superseded": "false"}  # the soak: more lines come after the reader left
    env = container_env(with_, {"sha": SHA, "token": ""}, tmp_path)
    env = clean_env(**{**env, "GITHUB_ACTIONS": "false"})
    proc = subprocess.Popen([sys.executable, "entrypoint.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()

    assert proc.wait(timeout=60) == 0, stderr
    assert first == f"{VERSION_LINE}\n"
    assert stderr == ""
    outputs = parse_output_file(Path(env["GITHUB_OUTPUT"]).read_text())
    assert outputs["outcome"] == "deployed" and outputs["result_count"] == "3"
    report = load_report((Path(env["GITHUB_WORKSPACE"]) / "fleet-rollout-report.json").read_text())
    assert report["outcome"] == "deployed"
