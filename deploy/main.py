"""One run of the action: environment in, exit code out; outputs and report written always.

``entrypoint.py`` (the container), the ``fleet-rollout`` console script (GitLab CI, Jenkins,
a laptop) and ``python -m deploy`` all call :func:`cli`, so every CI system gets the identical
pipeline. Configuration comes only from the environment: an argument never starts a deploy (the
bare command does), it asks for help, the version or the demo, or is an error.
Exit codes: 0 deployed, planned or skipped; 1 failed or aborted; 2 configuration error (or a bad argument).
An internal error — an exception nothing expected (a bug, or an installed dependency the code
cannot run on), in a stage, a tenant read, a proof or a rollback — is exit 1 too: ``reason``
says "internal error", its traceback is in the log, outputs and the report are written, and it
is never a verdict on a tenant, a call or a tag, nor a reason to roll back.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import NoReturn, TextIO

from deploy import __version__, cancel, config, pipeline, report
from deploy.clock import Clock
from deploy.errors import ConfigErrors, DeployFailed
from deploy.runner import Runner


def run(env: Mapping[str, str], stream: TextIO | None = None, clock: Clock | None = None) -> int:
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
        subject = error.input_name if runner.in_actions else config.env_name(error.input_name)
        messages.append(error.naming(subject))
        runner.error(messages[-1], title=error.title if runner.in_actions else "")
    return "configuration error: " + "; ".join(messages)


PROG = "fleet-rollout"
USAGE = """\
fleet-rollout                       run the rollout the FLEET_* variables describe
       fleet-rollout demo [--report PATH]  the same pipeline against a local simulator
       fleet-rollout -h | --help | --version"""
DESCRIPTION = """\
Ship one build to a fleet of tenants through a control plane, prove it runs on every tenant,
then move the image's promote tag (latest). The same program is the GitHub/Gitea action.

Run without arguments, it reads its whole configuration from FLEET_* environment variables
(below) and runs the rollout; no argument ever starts one. GITHUB_OUTPUT, GITHUB_STEP_SUMMARY
and GITHUB_WORKSPACE are used when set; without GITHUB_OUTPUT the outputs are printed as
name=value lines at the end of the log."""
EXIT_CODES = """\
exit codes:
  0  deployed, planned (dry run) or skipped (kill switch, superseded)
  1  failed (rollout, coverage, verify, promote, timeout or cancel), aborted (kill switch set
     mid-rollout: the fleet is mixed), or an internal error (its traceback is in the log)
  2  configuration error (nothing was sent), or a bad command line"""


def _variables() -> str:
    """Every FLEET_* variable with its default, generated from :data:`deploy.config.DEFAULTS`."""
    width = max(len(config.env_name(name)) for name in config.DEFAULTS)
    lines = ["environment (an empty or unset variable means the default; - means none):"]
    for name, default in config.DEFAULTS.items():
        shown = "secret, never printed" if name in config.SECRET_INPUTS else default or "-"
        lines.append(f"  {config.env_name(name):<{width}}  {shown}")
    lines.append("  (FLEET_SHA falls back to GITHUB_SHA; FLEET_TARGET_TAG to staging-<first 7 of sha>)")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage, the error and where to read more, on stderr; exit 2 (never a run)."""
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}\n"
                     f"Run '{PROG} --help' for the FLEET_* variables and the exit codes.\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog=PROG, usage=USAGE, description=DESCRIPTION, epilog=f"{_variables()}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                     help="print the version and exit")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)  # see USAGE
    demo = commands.add_parser(
        "demo", prog=f"{PROG} demo",
        description="Start a simulated control plane with five tenants (one dead) and a registry on loopback, "
                    "run the real pipeline against it, then print the log, the outputs and a short summary. "
                    "Sends nothing outside this machine; FLEET_* variables are ignored.",
        allow_abbrev=False,
    )
    demo.add_argument("--report", metavar="PATH", help="keep the run's JSON report at PATH")
    demo.add_argument("--bad-build", action="store_true",
                      help="ship a bad build: the CP says every tenant is on target but /buildinfo keeps the "
                           "previous build, so the canary's proof stops the rollout after the canary "
                           "(exit 1, latest not moved)")
    return top


def main(argv: Sequence[str]) -> int:
    """The command line: help, version, the demo, or — only with no argument at all — a run."""
    cli_parser = parser()
    for arg in argv:  # `--dry-run`, `--batch-size=2`: an input passed as an option, which it never is
        name = arg.removeprefix("--").partition("=")[0]
        if arg.startswith("--") and name in config.DEFAULTS:
            cli_parser.error(f"{arg!r}: inputs are environment variables here; set {config.env_name(name)}")
    args = cli_parser.parse_args(argv)
    if args.command == "demo":
        from deploy import demo  # the simulator is not needed by a run

        try:
            return demo.main(report=args.report, bad_build=args.bad_build)
        except KeyboardInterrupt:  # Ctrl-C in a terminal: stop quietly, as any command-line tool does
            return 130
    if argv:  # e.g. a lone "--": whatever it is, it is not the bare command
        cli_parser.error(f"unexpected arguments {' '.join(argv)!r}; run {PROG} with no arguments to deploy")
    cancel.install()
    return run(os.environ)


class _Stdout(io.TextIOBase):
    """``sys.stdout`` for a reader that may leave early (``fleet-rollout | head -1``).

    The first write or flush that finds the pipe closed points file descriptor 1 at /dev/null and
    the command carries on quietly: a run still writes its outputs, summary and report and exits
    with its own code, and the interpreter's last flush has nowhere to fail (no traceback, no
    "Exception ignored" line).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            self._stream.write(text)
        except BrokenPipeError:
            self._gone()
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    def _gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)


def cli() -> None:
    """The process entry (``entrypoint.py``, the console script, ``python -m deploy``).

    A cancelled job ends the run cleanly, still reporting: on cancel the runner interrupts the step
    (SIGINT, then SIGTERM); ``docker run`` forwards both to the container. Either becomes
    :class:`~deploy.cancel.Cancelled` (see :mod:`deploy.cancel`), so outputs and the report are written.
    """
    sys.stdout = _Stdout(sys.stdout)
    try:
        code = main(sys.argv[1:])  # argparse exits by itself for --help, --version and a usage error
    finally:
        sys.stdout.flush()
    sys.exit(code)
