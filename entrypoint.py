"""The container's entrypoint: read the environment, run the pipeline, report, exit.

Exit codes: 0 deployed, planned or skipped; 1 failed; 2 configuration error. Outputs and the
JSON report are written in every case, a bug or a cancellation included.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Mapping
from typing import TextIO

from deploy import config, pipeline, report
from deploy.clock import Clock
from deploy.errors import ConfigErrors, DeployFailed
from deploy.runner import Runner


class Cancelled(DeployFailed):
    """The runner stopped the container (job cancelled or timed out)."""


def _cancel(signum: int, frame: object) -> None:
    raise Cancelled(f"cancelled by signal {signal.Signals(signum).name}; later stages did not run")


def main(env: Mapping[str, str] = os.environ, stream: TextIO = sys.stdout, clock: Clock | None = None) -> int:
    runner_env = config.RunnerEnv.from_env(env)
    runner = Runner(stream, runner_env.output_path, runner_env.summary_path, runner_env.in_actions)
    runner.mask(*config.secrets_in(env))
    run = pipeline.Run()
    report_path = runner_env.report_path(env)
    try:
        if config.kill_switch(env):
            run.skip("kill switch: input `disabled` is set")
        else:
            settings = config.load(env)
            report_path = settings.report_path
            pipeline.execute(settings, run, runner, clock or Clock())
    except ConfigErrors as exc:
        for error in exc.errors:
            runner.error(str(error), title=f"input {error.input_name}")
        run.fail(f"configuration error: {exc}", exit_code=2)
    except DeployFailed as exc:  # a cancellation between stages
        run.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must still leave outputs and a report behind
        runner.log(traceback.format_exc())
        run.fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in fleet-rollout, please report it")
    report.publish(run, runner, report_path)
    runner.finish()
    return run.exit_code


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _cancel)
    sys.exit(main())
