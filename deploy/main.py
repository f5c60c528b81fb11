"""One run of the action: environment in, exit code out; outputs and report written always.

``entrypoint.py`` (the container) and the ``fleet-rollout`` console script (GitLab CI, Jenkins,
a laptop) both call :func:`run`, so every CI system gets the identical pipeline.
Exit codes: 0 deployed, planned or skipped; 1 failed; 2 configuration error.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import TextIO

from deploy import config, http, pipeline, report
from deploy.clock import Clock
from deploy.errors import ConfigErrors, DeployFailed
from deploy.runner import Runner


class Cancelled(DeployFailed):
    """The runner stopped the container (job cancelled or timed out)."""


_publishing = threading.Event()  # once outputs are being written, a signal must not cut them short


def _cancel(signum: int, frame: object) -> None:
    """Stop now, but report: cut every open HTTP exchange (a tenant that never answers must not
    hold the exit), then raise :class:`Cancelled` in the main thread, which the stages record."""
    for name in ("SIGINT", "SIGTERM"):  # the runner may send both: the second must not cut the report short
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    http.abort_all()
    if not _publishing.is_set():
        raise Cancelled(f"cancelled by signal {signal.Signals(signum).name}; later stages did not run")


def run(env: Mapping[str, str], stream: TextIO | None = None, clock: Clock | None = None) -> int:
    runner_env = config.RunnerEnv.from_env(env)
    runner = Runner(stream or sys.stdout, runner_env.output_path, runner_env.summary_path, runner_env.in_actions)
    runner.mask(*config.secrets_in(env))
    for warning in config.short_secret_warnings(env):
        runner.warning(warning, title="short secret")
    record = pipeline.Run()
    report_path = runner_env.report_path(env)
    try:
        if config.kill_switch(env):
            record.skip("kill switch: input `disabled` is set")
        else:
            settings = config.load(env)
            report_path = settings.report_path
            pipeline.execute(settings, record, runner, clock or Clock())
    except ConfigErrors as exc:
        for error in exc.errors:
            runner.error(str(error), title=f"input {error.input_name}")
        record.fail(f"configuration error: {exc}", exit_code=2)
    except DeployFailed as exc:  # a cancellation between stages
        record.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must still leave outputs and a report behind
        runner.log(traceback.format_exc())
        record.fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in fleet-rollout, please report it")
    _publishing.set()
    report.publish(record, runner, report_path, runner_env.workspace)
    runner.finish()
    return record.exit_code


def cli() -> None:
    """The process entry: a cancelled job ends the run cleanly, still reporting.

    On cancel the runner interrupts the step (SIGINT, then SIGTERM); ``docker run`` forwards both
    to the container. Either becomes :class:`Cancelled`, so outputs and the report are written.
    """
    signal.signal(signal.SIGTERM, _cancel)
    signal.signal(signal.SIGINT, _cancel)
    sys.exit(run(os.environ))
