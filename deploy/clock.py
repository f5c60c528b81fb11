"""Time as a dependency: stages sleep and read time through a :class:`Clock`.

Tests and the simulator inject :class:`FakeClock` so that soaks, backoffs and polling rounds
take no wall time and run deterministically. :class:`Deadline` turns the overall ``timeout``
input into a budget every wait and every HTTP timeout is capped by.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from deploy.errors import DeadlineExceeded


class Clock:
    """Real time: a monotonic clock and a real sleep."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        """Epoch seconds, for server timestamps such as ``X-RateLimit-Reset``."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class FakeClock(Clock):
    """Virtual time for tests: ``sleep`` advances ``now`` instantly and records the wait."""

    current: float = 1000.0
    slept: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    wall_offset: float = 1_800_000_000.0

    def now(self) -> float:
        with self._lock:
            return self.current

    def wall(self) -> float:
        return self.now() + self.wall_offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.current += max(seconds, 0.0)


@dataclass(frozen=True)
class Deadline:
    """The overall run budget, measured on ``clock`` from ``start``."""

    clock: Clock
    start: float
    seconds: float
    reserve: float = 0.0  # the last seconds, kept for a later stage (a rollback): not remaining here

    @classmethod
    def starting_now(cls, clock: Clock, seconds: float) -> Deadline:
        return cls(clock, clock.now(), seconds)

    def keeping(self, reserve: float) -> Deadline:
        """The same deadline with its last ``reserve`` seconds kept back."""
        return replace(self, reserve=reserve)

    def elapsed(self) -> float:
        return self.clock.now() - self.start

    def remaining(self) -> float:
        return max(self.seconds - self.reserve - self.elapsed(), 0.0)

    def check(self, doing: str) -> None:
        """Raise :class:`DeadlineExceeded` if the budget is gone before ``doing``."""
        if self.remaining() <= 0:
            raise DeadlineExceeded(self._message(doing))

    def sleep(self, seconds: float, doing: str) -> None:
        """Sleep ``seconds``, or fail now if that would cross the deadline."""
        if seconds > self.remaining():
            raise DeadlineExceeded(self._message(doing))
        self.clock.sleep(seconds)

    def cap(self, seconds: float) -> float:
        """A timeout no longer than what is left (at least a sliver, so a call can fail fast)."""
        return max(min(seconds, self.remaining()), 0.001)

    def _message(self, doing: str) -> str:
        kept = f" (its last {self.reserve:g} s kept for a rollback)" if self.reserve else ""
        return f"overall timeout of {self.seconds:g} s{kept} reached while {doing} (input `timeout`)"
