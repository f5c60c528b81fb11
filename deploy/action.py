"""One run of the action: environment in, exit code out; outputs and report written always.

This is what the container, the ``fleet-rollout`` console script and the demo all run. It lives
apart from the command line (:mod:`deploy.main`) so that whoever runs the pipeline — the command
line, the demo, a benchmark — imports it without importing the command line: the command line
dispatches to the demo, and the demo calls this, never the other way round.

An internal error — an exception nothing expected (a bug, or an installed dependency the code
cannot run on), in a stage, a tenant read, a proof or a rollback — is exit 1: ``reason`` says
"internal error", its traceback is in the log, outputs and the report are written, and it is
never a verdict on a tenant, a call or a tag, nor a reason to roll back.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from typing import TextIO

from deploy import __version__, cancel, config, pipeline, report
from deploy.clock import Clock
from deploy.errors import ConfigError, ConfigErrors, DeployFailed
from deploy.runner import Runner

PROG = "fleet-rollout"


def run(env: Mapping[str, str], stream: TextIO | None = None, clock: Clock | None = None) -> int:
    """The whole run ``env`` describes; returns its exit code (0, 1 or 2), having written outputs,
    summary and report whatever happened. ``stream``: where the log goes (stdout by default)."""
    sources = config.InputSources.read(env)
    env = sources.env
    runner_env = config.RunnerEnv.from_env(env)
    runner = Runner(stream or sys.stdout, runner_env.output_path, runner_env.summary_path, runner_env.in_actions)
    runner.public(*config.public_facts(env))  # first: a secret that is one of them is not masked
    runner.mask(*config.secrets_in(env))
    runner.log(f"{PROG} {__version__}")  # the first line a reader sees (masks are consumed by the runner)
    for warning in config.short_secret_warnings(env):
        runner.warning(warning, title="short secret")
    for warning in sources.warnings():
        runner.warning(warning, title="unknown variable")
    for note in sources.notes():
        runner.log(note)
    record = pipeline.Run()
    report_path = runner_env.report_path(env)
    try:
        with cancel.armed():
            if config.kill_switch(env):
                record.skip("kill switch: input `disabled` is set")
            elif sources.literal:
                raise ConfigErrors(sources.errors())
            else:
                settings = config.load(env)
                report_path = settings.report_path
                runner.log(config.effective_settings(env, settings))
                pipeline.execute(settings, record, runner, clock or Clock())
    except ConfigErrors as exc:
        record.fail(_configuration_error(exc, runner), exit_code=2)
    except DeployFailed as exc:  # a cancellation between stages
        record.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must still leave outputs and a report behind
        runner.log(traceback.format_exc())
        record.fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in fleet-rollout, please report it")
    report.publish(record, runner, report_path, runner_env.workspace)  # not armed: a signal cannot cut it
    runner.finish()
    return record.exit_code


def _configuration_error(exc: ConfigErrors, runner: Runner) -> str:
    """One error per bad input, named as the user set it: the input inside Actions, the
    ``FLEET_*`` variable elsewhere (GitLab, a laptop), where there are no inputs."""
    messages = []
    for error in exc.errors:
        if runner.in_actions:
            messages.append(error.naming(error.input_name))
        else:  # the advice in the words of where the user is: FLEET_* variables, not YAML inputs
            said = ConfigError(error.input_name, config.in_environment_terms(error.message), about=error.about)
            messages.append(said.naming(config.env_name(error.input_name)))
        runner.error(messages[-1], title=error.title if runner.in_actions else "")
    return "configuration error: " + "; ".join(messages)
