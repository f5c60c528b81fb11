"""Cancellation: the runner's SIGINT/SIGTERM stops the run soon, and it still reports.

The runner (and ``docker stop``) allows about 10 s before SIGKILL. On a signal, every open HTTP
exchange is cut (:func:`deploy.http.abort_all`: a tenant that never answers must not hold the
exit) and :class:`Cancelled` is raised in the main thread — but only where something records it:

- only while the pipeline runs (:func:`armed`): a signal before it starts is raised as soon as it
  does, and one while outputs are written is not raised at all (they must not be cut short);
- not inside a :func:`deferred` section (promote's put-back of moved tags: half the images moved
  is worse than a second's delay); the section ends within the HTTP layer's cancel grace, and
  the cancellation is raised as it exits.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from deploy import http
from deploy.errors import DeployFailed


class Cancelled(DeployFailed):
    """The runner stopped the job (cancelled, or timed out)."""


class _State:
    armed = False
    deferring = 0
    signal_name = ""


_state = _State()


def install() -> None:
    """Route SIGINT and SIGTERM here (the process entry only: handlers need the main thread)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    for other in (signal.SIGINT, signal.SIGTERM):  # the runner may send both: the second changes nothing
        signal.signal(other, signal.SIG_IGN)
    http.abort_all()
    _state.signal_name = signal.Signals(signum).name
    if _state.armed and not _state.deferring:
        raise _cancelled()


def requested() -> bool:
    """Whether the runner has asked the job to stop (work that would outlast it must not start)."""
    return bool(_state.signal_name)


def _cancelled() -> Cancelled:
    return Cancelled(f"cancelled by signal {_state.signal_name}; later stages did not run")


@contextmanager
def armed() -> Iterator[None]:
    """The pipeline's extent: a signal becomes :class:`Cancelled` here (and only here)."""
    _state.armed = True
    try:
        if _state.signal_name:
            raise _cancelled()
        yield
    finally:
        _state.armed = False


@contextmanager
def deferred() -> Iterator[None]:
    """Work that must not be cut in half; a cancellation that arrived meanwhile is raised after it."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if _state.signal_name and _state.armed and not _state.deferring:
        raise _cancelled()
