"""How the real runners hand inputs over and read outputs back (GitHub's runner, Gitea's act).

- act applies ``runs.env`` only when the step has no ``with: args`` (and older releases did not
  interpolate it): the action must then read the runner's own ``INPUT_<NAME>`` variables;
- act reads ``GITHUB_OUTPUT`` with Go's ``bufio.Scanner`` (64 KiB per line, the error unchecked)
  and drops every output of the step when a heredoc is left open: :func:`act_outputs` emulates it;
- on GitHub a ``FLEET_*`` set in a workflow ``env:`` beats ``with:``: the action names such inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.sim.fleet import TenantSpec, healthy_fleet
from tests.actions_runner import ROOT, container_env
from tests.report_schema import load_report
from tests.support import CP_TOKEN, FAST_INPUTS, SHA

ACT_LINE_LIMIT = 64 * 1024


def act_outputs(text: str) -> dict[str, str]:
    """``GITHUB_OUTPUT`` as Gitea's act reads it: a line of 64 KiB or more stops the scan there,
    and an unterminated ``name<<DELIM`` block (the scan stopped inside it) drops every output."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if len(line.encode()) + 1 > ACT_LINE_LIMIT:
            return outputs  # bufio.Scanner: ErrTooLong, unchecked; nothing after this line is read
        index += 1
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value: list[str] = []
            while index < len(lines) and lines[index] != delimiter:
                if len(lines[index].encode()) + 1 > ACT_LINE_LIMIT:
                    return {}  # the heredoc never closes: act drops all outputs of the step
                value.append(lines[index])
                index += 1
            if index == len(lines):
                return {}
            index += 1
            outputs[name] = "\n".join(value)
        elif "=" in line:
            name, _, rest = line.partition("=")
            outputs[name] = rest
    return outputs


def test_the_act_emulation_drops_everything_after_a_long_line_inside_a_heredoc() -> None:
    """The emulation must be able to fail: a 72 KB output line loses every output."""
    long_value = json.dumps([f"tenant-{i:05d}-abcdefghijk" for i in range(3000)])
    text = f"ok<<D1\ntrue\nD1\nstragglers<<D2\n{long_value}\nD2\nreason<<D3\nx\nD3\n"
    assert len(long_value) > ACT_LINE_LIMIT
    assert act_outputs(text) == {}
    assert act_outputs("ok<<D1\ntrue\nD1\n") == {"ok": "true"}


def test_every_output_line_of_a_5000_tenant_failure_stays_readable_by_act(fleet, action) -> None:
    """Every tenant a straggler: the lists would be ~130 KB lines; they are bounded instead."""
    tenants = [TenantSpec(f"tenant-with-a-long-name-{i:05d}", deploy_seconds=0, omit_row=True) for i in range(5000)]
    _sim, server = fleet(tenants)
    result = action(server, batch_size="5000", max_stragglers="1", verify_url="")

    assert result.code == 1
    text = result.output_text
    assert max(len(line.encode()) for line in text.split("\n")) < ACT_LINE_LIMIT // 2
    seen = act_outputs(text)
    assert seen == result.outputs and seen["outcome"] == "failed"
    stragglers = json.loads(seen["stragglers"])
    assert stragglers[0] == "tenant-with-a-long-name-00000" and stragglers[-1].startswith("+")
    assert int(stragglers[-1].split()[0]) + len(stragglers) - 1 == 5000
    assert len(result.report["rollout"]["stragglers"]) == 5000  # the report keeps every name
    assert "… and 4980 more" in seen["reason"]


def runner_env_without_runs_env(with_: dict[str, str], workdir: Path, server_url: str) -> dict[str, str]:
    """What act exports when runs.env is not applied: INPUT_* only, no FLEET_*."""
    env = container_env(with_, {"sha": SHA, "token": "", "api_url": f"{server_url}/api/v3"}, workdir)
    return {k: v for k, v in env.items() if not k.startswith("FLEET_")}


def run_entrypoint(env: dict[str, str]) -> tuple[int, str]:
    """Run the entrypoint; the report it wrote must hold to the shipped schema."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "FLEET_", "GITEA_"))}
    proc = subprocess.run([sys.executable, "entrypoint.py"], cwd=ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=120)
    report = Path(env["GITHUB_WORKSPACE"]) / "fleet-rollout-report.json"
    assert load_report(report.read_text()) is not None, proc.stdout
    return proc.returncode, proc.stdout


def test_with_only_input_variables_a_run_with_a_dead_tenant_still_ships(fleet, tmp_path: Path) -> None:
    _sim, server = fleet([*healthy_fleet(3), TenantSpec("dead", dead=True)])
    with_ = {**FAST_INPUTS, "cp-url": server.url, "cp-token": CP_TOKEN, "batch-size": "2",
             "verify-url": f"{server.url}/tenants/{{slug}}/buildinfo"}
    env = runner_env_without_runs_env(with_, tmp_path, server.url)
    code, stdout = run_entrypoint(env)
    outputs = act_outputs(Path(env["GITHUB_OUTPUT"]).read_text())
    assert code == 0, stdout
    assert (outputs["ok"], outputs["outcome"], json.loads(outputs["quarantined"])) == ("true", "deployed", ["dead"])
    assert "inputs read from INPUT_* (runs.env was not applied)" in stdout


def test_with_only_input_variables_the_kill_switch_still_skips(tmp_path: Path) -> None:
    env = runner_env_without_runs_env({"cp-url": "https://cp.example.test", "disabled": "true"}, tmp_path,
                                      "https://forge.invalid")
    code, stdout = run_entrypoint(env)
    outputs = act_outputs(Path(env["GITHUB_OUTPUT"]).read_text())
    assert code == 0 and outputs["outcome"] == "skipped", stdout


def test_an_uninterpolated_runs_env_value_is_one_clear_configuration_error(tmp_path: Path) -> None:
    env = runner_env_without_runs_env({"cp-url": "https://cp.example.test"}, tmp_path, "https://forge.invalid")
    env["FLEET_CP_URL"] = "${{ inputs.cp-url }}"
    code, stdout = run_entrypoint(env)
    outputs = act_outputs(Path(env["GITHUB_OUTPUT"]).read_text())
    assert code == 2 and outputs["outcome"] == "failed"
    assert "cp-url is the literal text '${{ inputs.cp-url }}': the runner did not evaluate" in outputs["reason"]
    assert stdout.count("::error") == 2  # the input's error and the run's verdict, nothing else


def test_an_input_overridden_by_a_workflow_env_is_named_without_its_value(action) -> None:
    result = action(None, stages="promote", promote_images="", promote_source="v1",
                    extra_env={"FLEET_PROMOTE_TAG": "stable", "FLEET_REGISTRY_PASSWORD": "q8Zr-Kx2w-Tn7v-Lp4m"})
    assert "input promote-tag: FLEET_PROMOTE_TAG differs from INPUT_PROMOTE-TAG" in result.stdout
    assert "input registry-password: FLEET_REGISTRY_PASSWORD differs" in result.stdout
    assert "q8Zr-Kx2w-Tn7v-Lp4m" not in result.visible_log() + result.files_text
    assert "stable" not in result.stdout


def test_an_unknown_fleet_variable_is_warned_about_with_the_closest_name(action) -> None:
    result = action(None, stages="promote", promote_images="", promote_source="v1",
                    extra_env={"FLEET_BATCHSIZE": "5", "FLEET_NOTHING_LIKE_IT": "x"})
    assert "FLEET_BATCHSIZE is not a fleet-rollout variable; did you mean FLEET_BATCH_SIZE?" in result.stdout
    assert "FLEET_NOTHING_LIKE_IT is not a fleet-rollout variable" in result.stdout


@pytest.mark.parametrize("path", ["/tmp/report.json", "../outside.json", "reports/../../x.json", "~/r.json"])
def test_a_report_path_outside_the_workspace_is_a_configuration_error(action, path: str) -> None:
    result = action(None, stages="promote", promote_images="", promote_source="v1", report_path=path)
    assert result.code == 2 and "report-path" in result.outputs["reason"]
    assert result.outputs["report"] == "fleet-rollout-report.json"  # the default, inside the workspace


def test_a_timeout_shorter_than_one_deploy_call_is_a_configuration_error(action) -> None:
    result = action(None, cp_url="https://cp.example.test", cp_token=CP_TOKEN, timeout="1.5")
    assert result.code == 2
    assert "timeout must be at least 1.95 s here (one deploy call's worst case (cp-tenant-timeout + " \
           "cp-settle-seconds) 1.95 s)" in result.outputs["reason"]


def test_outside_actions_a_configuration_error_names_the_environment_variable(tmp_path: Path) -> None:
    code, stdout = run_entrypoint({"GITHUB_WORKSPACE": str(tmp_path), "FLEET_BATCH_SIZE": "many"})
    assert code == 2
    assert "error: FLEET_CP_URL is required for the rollout and verify stages" in stdout
    assert "error: FLEET_BATCH_SIZE: 'many' is neither a count of tenants (5) nor a percentage of the fleet (10%) " \
           "(got 'many')" in stdout
    assert "cp-url: cp-url" not in stdout and "input cp-url" not in stdout


def test_when_no_runs_env_value_was_evaluated_the_kill_switch_still_wins(tmp_path: Path) -> None:
    """Every FLEET_* left as its literal expression: INPUT_DISABLED=true must still skip."""
    with_ = {"cp-url": "https://cp.example.test", "cp-token": "cp-Token-0f9e8d7c", "disabled": "true"}
    env = container_env(with_, {"sha": SHA, "token": ""}, tmp_path)
    for name in [key for key in env if key.startswith("FLEET_")]:
        env[name] = "${{ inputs." + name.removeprefix("FLEET_").lower().replace("_", "-") + " }}"
    code, stdout = run_entrypoint(env)
    outputs = act_outputs(Path(env["GITHUB_OUTPUT"]).read_text())
    assert (code, outputs["outcome"]) == (0, "skipped"), stdout
    assert "cp-Token-0f9e8d7c" not in stdout.replace("::add-mask::cp-Token-0f9e8d7c", "")


def test_when_no_runs_env_value_was_evaluated_the_error_says_why_and_masks_the_token(tmp_path: Path) -> None:
    with_ = {"cp-url": "https://cp.example.test", "cp-token": "cp-Token-0f9e8d7c"}
    env = container_env(with_, {"sha": SHA, "token": ""}, tmp_path)
    for name in [key for key in env if key.startswith("FLEET_")]:
        env[name] = "${{ inputs." + name.removeprefix("FLEET_").lower().replace("_", "-") + " }}"
    code, stdout = run_entrypoint(env)
    outputs = act_outputs(Path(env["GITHUB_OUTPUT"]).read_text())
    assert code == 2 and "the runner did not evaluate action.yml's runs.env" in outputs["reason"]
    assert "::add-mask::cp-Token-0f9e8d7c" in stdout
