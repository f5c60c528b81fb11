"""The command line: ``fleet-rollout``, ``python -m deploy`` and the container's ``entrypoint.py``.

All three call :func:`cli`, so every CI system gets the identical program. Configuration comes
only from the environment: an argument never starts a deploy (the bare command does, through
:func:`deploy.action.run`); it asks for help, the version, the demo or the contract check, or is
an error. This module only dispatches: nothing imports it but the entry points, and the demo
(imported when asked for: a run needs no simulator) runs the pipeline through :mod:`deploy.action`,
not through here.
Exit codes: 0 deployed, promoted, verified, planned or skipped; 1 failed, aborted or an internal error (see
:mod:`deploy.action`); 2 configuration error (or a bad argument).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from deploy import __version__, cancel, config, contract
from deploy.action import PROG, run

__all__ = ["PROG", "cli", "main", "parser", "run"]  # run: deploy.action.run, kept here for existing callers

USAGE = """\
fleet-rollout                                  run the rollout the FLEET_* variables describe
       fleet-rollout demo [--report PATH] [--bad-build] [--bad-metrics]
       fleet-rollout contract URL [--token-env NAME] [--test-tenant SLUG] [...]
       fleet-rollout -h | --help | --version"""
DESCRIPTION = """\
Ship one build to a fleet of tenants through a control plane, prove it runs on every tenant,
then move the image's promote tag (latest). The same program is the GitHub/Gitea action.

Run without arguments, it reads its whole configuration from FLEET_* environment variables
(below) and runs the rollout; no argument ever starts one. GITHUB_OUTPUT, GITHUB_STEP_SUMMARY
and GITHUB_WORKSPACE are used when set; without GITHUB_OUTPUT the outputs are printed as
name=value lines at the end of the log."""
RUN_HELP = "run the rollout the FLEET_* variables describe (what the action's container runs)"
DEMO_HELP = ("the same pipeline against a local simulator: a control plane with five tenants (one dead) and a "
             "registry on loopback, then the log, the outputs and a short summary. Sends nothing outside this "
             "machine; FLEET_* variables are ignored")
CONTRACT_HELP = ("check a control plane's redeploy-fleet endpoint against the README's control-plane contract: "
                 "dry runs only, plus one deploy of --test-tenant when it is named. One PASS/FAIL/WARN/SKIP line "
                 "per check; exit 1 on a FAIL")
DEMO_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--report",), {"metavar": "PATH", "help": "keep the run's JSON report at PATH (the report output then "
                                                "says PATH; without it the report goes with the simulator)"}),
    (("--bad-build",), {"action": "store_true",
                        "help": "ship a bad build: the CP says every tenant is on target but /buildinfo keeps the "
                                "previous build, so the canary's proof stops the rollout after the canary "
                                "(exit 1, latest not moved)"}),
    (("--bad-metrics",), {"action": "store_true",
                          "help": "ship a build that reports its SHA but fails 30%% of requests: a real Prometheus "
                                  "(Debian's prometheus, needed) scrapes the tenants, and the canary's metric "
                                  "analysis stops the rollout after the canary (exit 1, latest not moved)"}),
)
# The README's outcome table, per exit code. Exit 2 says "no deploy call", not "nothing sent": a
# canary the CP does not list, a verify-field no tenant holds, a plan over timeout and a query the
# metrics API cannot run are found by read-only requests, still before anything moves.
EXIT_CODES = """\
exit codes:
  0  deployed, promoted (no rollout stage; the tag moved), verified (stages: verify alone),
     planned (dry run) or skipped (kill switch, superseded); contract: no FAIL
  1  failed (a gate, enumeration, rollout, coverage, verify, promote, timeout or cancel), aborted
     (kill switch set mid-rollout: the fleet is mixed), or an internal error (its traceback is in
     the log); contract: a FAIL
  2  configuration error (no deploy call was made, nothing moved), or a bad command line"""


def _variables() -> str:
    """Every FLEET_* variable with its default, generated from :data:`deploy.config.DEFAULTS`."""
    width = max(len(config.env_name(name)) for name in config.DEFAULTS)
    lines = ["environment (an empty or unset variable means the default; - means none;",
             "what each one means: the README's Inputs table, or the action's action.yml):"]
    for name, default in config.DEFAULTS.items():
        shown = "secret, never printed" if name in config.SECRET_INPUTS else default or "-"
        lines.append(f"  {config.env_name(name):<{width}}  {shown}")
    lines.append("  (FLEET_SHA falls back to GITHUB_SHA; FLEET_TARGET_TAG to staging-<first 7 of sha>)")
    return "\n".join(lines)


COLUMN = 20  # where a command's description starts in the top-level help


class _Options:
    """Adds arguments to a parser and keeps them, so the top-level help can list every command's
    options with their descriptions without reaching into argparse's private state."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.added: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        self.parser.add_argument(*flags, **kwargs)
        self.added.append((flags, kwargs))

    def described(self, indent: int = 4, width: int = 100) -> list[str]:
        """``--report PATH   keep the run's …``, one entry per option, wrapped under ``width``."""
        names = [_label(flags, kwargs) for flags, kwargs in self.added]
        column = max(COLUMN, indent + max(len(name) for name in names) + 2)
        lines = []
        for name, (_flags, kwargs) in zip(names, self.added, strict=True):
            text = textwrap.wrap(self._expanded(kwargs), width - column, break_on_hyphens=False) or [""]
            lines.append(f"{' ' * indent}{name:<{column - indent}}{text[0]}")
            lines += [" " * column + more for more in text[1:]]
        return lines


    def _expanded(self, kwargs: dict[str, Any]) -> str:
        """The help text as argparse prints it: a help string is a %-format (``%%`` for a percent
        sign, ``%(default)s``), which argparse expands and a hand-made listing must expand too."""
        return str(kwargs["help"]) % {**kwargs, "prog": self.parser.prog}


def _label(flags: tuple[str, ...], kwargs: dict[str, Any]) -> str:
    """``--report PATH``, ``--bad-build``, or a positional's metavar (``URL``)."""
    if not flags[0].startswith("-"):
        return str(kwargs.get("metavar", flags[0]))
    return " ".join([*flags, kwargs["metavar"]] if "metavar" in kwargs else flags)


def _commands(demo: _Options, contract_options: _Options) -> str:
    """The commands and their options, for the top-level help (each command's own --help says the same)."""
    def entry(name: str, text: str) -> list[str]:
        wrapped = textwrap.wrap(text, 100 - COLUMN, break_on_hyphens=False)
        return [f"  {name:<{COLUMN - 2}}{wrapped[0]}", *(" " * COLUMN + line for line in wrapped[1:])]

    return "\n".join(["commands:", *entry("(none)", RUN_HELP), *entry("demo", DEMO_HELP), *demo.described(),
                      *entry("contract URL", CONTRACT_HELP), *contract_options.described()])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage, the error and where to read more, on stderr; exit 2 (never a run)."""
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}\n"
                     f"Run '{PROG} --help' for the commands, the FLEET_* variables and the exit codes.\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog=PROG, usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                     help="print the version and exit")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)  # see the description
    demo = _Options(commands.add_parser("demo", prog=f"{PROG} demo", description=DEMO_HELP + ".",
                                        allow_abbrev=False))
    for flags, kwargs in DEMO_OPTIONS:
        demo.add_argument(*flags, **kwargs)
    contract_parser = commands.add_parser("contract", prog=f"{PROG} contract", description=contract.DESCRIPTION,
                                          allow_abbrev=False)
    contract_options = _Options(contract_parser)
    contract.add_arguments(contract_options)
    top.description = f"{DESCRIPTION}\n\n{_commands(demo, contract_options)}"
    top.epilog = f"{_variables()}\n\n{EXIT_CODES}"
    top.set_defaults(contract_error=contract_parser.error)
    return top


def main(argv: Sequence[str]) -> int:
    """The command line: help, version, the demo, the contract check, or — only with no argument
    at all — a run."""
    cli_parser = parser()
    run_options = argv if not argv or argv[0] != "contract" else ()  # contract's options share inputs' names
    for arg in run_options:  # `--dry-run`, `--batch-size=2`: an input passed as an option, which it never is
        name = arg.removeprefix("--").partition("=")[0]
        if arg.startswith("--") and name in config.DEFAULTS:
            cli_parser.error(f"{arg!r}: inputs are environment variables here; set {config.env_name(name)}")
    args = cli_parser.parse_args(argv)
    try:
        if args.command == "demo":
            from deploy import demo  # the simulator is not needed by a run

            return demo.main(report=args.report, bad_build=args.bad_build, bad_metrics=args.bad_metrics)
        if args.command == "contract":
            return contract.run(args, os.environ, sys.stdout, args.contract_error)
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
