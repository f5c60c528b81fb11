"""Gates that run before any side effect: required checks, the superseded guard, the live kill switch.

Each closes a hole a real run fell through: a SHA deployed while its CI was still red; an older
job that started late and rolled the fleet (and ``latest``) back after a newer one had shipped;
a kill switch read only when the job started. They fail in opposite directions on purpose:

- required checks and the kill switch fail *closed* — a check we cannot prove green, or a
  variable we cannot read, stops the run (exit 1);
- the superseded guard fails *open* — a branch head we cannot read warns and carries on, because
  silently skipping a real deploy is as bad as a wrong one.

Check states. Only ``success`` passes. ``failure``, ``error``, ``cancelled``, ``skipped``,
``timed_out``, ``action_required``, ``stale``, GitHub's ``neutral`` and Gitea's ``warning`` fail
at once: each is a finished verdict that is not a pass. ``warning`` in particular: Gitea ranks it
below ``pending`` and its own required-status merge check accepts only ``success``, so a deploy
gate must not be more lenient than the merge button, and waiting on it could only end in a
timeout. Anything else — ``pending``, ``queued``, ``in_progress``, a state we do not know, or a
check not reported at all (``missing``) — keeps the gate waiting until ``checks-timeout``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from deploy.clock import Deadline
from deploy.context import Context
from deploy.domain import SHA_RE, parse_kill_switch, sha_matches
from deploy.errors import DeployFailed, Inconclusive
from deploy.forge import ForgeClient, ForgeError
from deploy.runner import Runner
from deploy.settings import GateSettings

PASSING = "success"
FAILING = frozenset(
    {"failure", "error", "cancelled", "skipped", "timed_out", "action_required", "stale", "neutral", "warning"}
)
MISSING = "missing"


@dataclass(frozen=True, kw_only=True)
class ChecksResult:
    states: tuple[tuple[str, str], ...]  # (check name, final state), in required-checks order
    seconds: float  # how long the gate waited


def wait_for_required_checks(gates: GateSettings, sha: str, client: ForgeClient, ctx: Context) -> ChecksResult:
    """Wait until every required check is green on ``sha``; raise :class:`DeployFailed` otherwise.

    Polls every ``checks-interval`` until ``checks-timeout``, logging a line only when a check's
    state changes. A failing check stops the wait at once, naming the check and its state; a
    timeout lists the last state of each check.
    """
    if not gates.required_checks:
        return ChecksResult(states=(), seconds=0.0)
    runner, clock = ctx.runner, ctx.clock
    started = clock.now()
    budget = Deadline.starting_now(clock, gates.checks_timeout)
    runner.log(
        f"Waiting for required checks on {sha[:12]} (up to {gates.checks_timeout:g} s): "
        + ", ".join(gates.required_checks)
    )
    last: dict[str, str] = {}
    while True:
        reported = client.check_states(sha, budget=budget)
        current = {name: combined_state(reported.get(name, ())) for name in gates.required_checks}
        for name, state in current.items():
            if last.get(name) != state:
                runner.log(f"  {name}: {state}")
        last = current
        failed = [(name, state) for name, state in current.items() if state in FAILING]
        if failed:
            raise DeployFailed(
                f"required check{'s' if len(failed) > 1 else ''} not green on {sha[:12]}: "
                + _listing(failed) + "; nothing was deployed"
            )
        if all(state == PASSING for state in current.values()):
            waited = clock.now() - started
            runner.log(f"All {len(current)} required checks are green on {sha[:12]} (waited {waited:.1f} s)")
            return ChecksResult(states=tuple(current.items()), seconds=waited)
        if budget.remaining() <= 0:
            raise DeployFailed(
                f"required checks not green on {sha[:12]} after {gates.checks_timeout:g} s "
                f"(input `checks-timeout`): {_listing(current.items())}; nothing was deployed"
            )
        ctx.deadline.sleep(min(gates.checks_interval, budget.remaining()), "waiting for required checks")


def combined_state(states: tuple[str, ...]) -> str:
    """One state for a name reported by several sources: a failure, else a wait, else success."""
    if not states:
        return MISSING
    return next((s for s in states if s in FAILING), None) or next((s for s in states if s != PASSING), PASSING)


def newer_head(gates: GateSettings, sha: str, client: ForgeClient | None, runner: Runner,
               quiet: bool = False) -> str | None:
    """The branch's newer head when this run is superseded, ``''`` when it is not, and ``None``
    when the guard is off for this run.

    A head we cannot read (no token, no branch, an API error) is *not* superseded: warn and carry
    on. ``quiet`` logs that instead of warning again, and only a reason not said yet: the guard is
    asked before every deploy call, and one annotation says it is off. Heads compare like verify
    compares a tenant's build: by prefix of at least 7 characters, any case.
    """
    if not gates.skip_if_superseded:
        return ""
    title = "Superseded guard off"
    def warn(message: str, title: str) -> None:
        if not quiet:
            runner.warning(message, title=title)
        elif not runner.has_said("warning", message, title):  # a reason already said is not said again
            runner.log(f"{title}: {message}")

    if client is None:
        warn("no github-token, so the branch head cannot be read; deploying without the guard", title=title)
        return None
    if not gates.branch:
        warn("no branch to compare with (set input `branch`); deploying without the guard", title=title)
        return None
    try:
        head = client.branch_head(gates.branch)
    except ForgeError as exc:
        warn(f"{exc}; deploying without the guard", title=title)
        return None
    if not SHA_RE.match(head):
        warn(f"branch {gates.branch!r} head {head[:80]!r} is not a commit SHA; deploying without the guard",
                       title=title)
        return None
    if sha_matches(head, sha):
        runner.log(f"Branch {gates.branch} is still at {sha[:12]}: this run is the newest")
        return ""
    runner.log(f"Branch {gates.branch} has moved on to {head[:12]} (this run ships {sha[:12]}): superseded")
    return head


def live_kill_switch(gates: GateSettings, client: ForgeClient | None, runner: Runner) -> bool:
    """True when the repository variable ``disabled-variable`` says skip, read live.

    Fails closed: a variable that cannot be read raises :class:`~deploy.errors.Inconclusive` (stop
    and hold). A variable that is not set (404) is not a kill switch.
    """
    name = gates.disabled_variable
    if not name:
        return False
    if client is None:
        raise Inconclusive(f"disabled-variable {name} needs github-token to be read; not deploying blind")
    try:
        value = client.variable(name)
    except ForgeError as exc:
        hint = " (the token needs read access to repository variables; on Gitea, repo-owner rights)"
        raise Inconclusive(
            f"kill switch unreadable, failing closed: {exc}{hint if exc.status in (401, 403) else ''}"
        ) from None
    if value is None:
        runner.log(f"Kill switch: repository variable {name} is not set; proceeding")
        return False
    try:
        disabled = parse_kill_switch(value)
    except ValueError as exc:
        raise Inconclusive(f"repository variable {name} = {value[:40]!r}: {exc}") from None
    runner.log(f"Kill switch: repository variable {name} = {value.strip()!r}: {'skip' if disabled else 'proceed'}")
    return disabled


def _listing(states: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{name}: {state}" for name, state in states)
