"""What every stage of one run shares: where it speaks, what time it is, and when it must end.

One frozen object instead of ``runner, clock, deadline`` threaded through every function, so
that whatever a run adds later (a cancellation token, a heartbeat) is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploy import http
from deploy.clock import Clock, Deadline
from deploy.runner import Runner


@dataclass(frozen=True)
class Context:
    runner: Runner
    deadline: Deadline  # the overall ``timeout``, on the run's clock

    @property
    def clock(self) -> Clock:
        return self.deadline.clock

    def client(self, policy: http.Policy, on_retry: http.RetryLog | None = None) -> http.Client:
        """The one way a stage gets an HTTP session: pooled, retried, every exchange bounded."""
        return http.Client(policy, self.clock, self.deadline, on_retry=on_retry)
