"""HTTP sessions with the retry policy every remote call shares (CP, forge, registry).

Transient failures are 502/503/504, read timeouts and dropped connections. They are retried by
urllib3's own :class:`~urllib3.util.Retry`, mounted on the session's adapter; we only teach it
three things: the user's explicit ``retry-delays`` schedule instead of exponential backoff,
sleeping through the injected clock (fast tests, and the overall deadline), and one log line per
retry with the attempt number and the server's own error text.

Every method is retried, POST included: the CP's redeploy of a tag is idempotent, and the
alternative (giving up on a read timeout) is exactly the seed incident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout
from urllib3.util.retry import Retry

from deploy import __version__
from deploy.clock import Clock, Deadline

TRANSIENT_STATUSES = frozenset({502, 503, 504})
USER_AGENT = f"fleet-rollout/{__version__}"

RetryLog = Callable[[str], None]


class ScheduledRetry(Retry):
    """urllib3 retries on an explicit delay schedule, slept on our clock, logged per attempt."""

    def __init__(
        self,
        delays: tuple[float, ...] = (),
        clock: Clock | None = None,
        on_retry: RetryLog | None = None,
        deadline: Deadline | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("total", len(delays))
        kwargs.setdefault("status_forcelist", TRANSIENT_STATUSES)
        kwargs.setdefault("allowed_methods", None)  # None: every method, POST included
        kwargs.setdefault("raise_on_status", False)  # hand the last response to the caller
        kwargs.setdefault("redirect", 5)
        kwargs.setdefault("respect_retry_after_header", False)
        super().__init__(**kwargs)
        self.delays = delays
        self.clock = clock or Clock()
        self.on_retry = on_retry
        self.deadline = deadline

    def new(self, **kw: Any) -> ScheduledRetry:
        kw.update(delays=self.delays, clock=self.clock, on_retry=self.on_retry, deadline=self.deadline)
        return super().new(**kw)

    def get_backoff_time(self) -> float:
        failures = len(self.history)
        if not failures or not self.delays:
            return 0.0
        return self.delays[min(failures, len(self.delays)) - 1]

    def sleep(self, response: Any = None) -> None:
        """Wait before the next attempt; past the overall deadline, stop instead of retrying."""
        if self.deadline is not None:
            self.deadline.sleep(self.get_backoff_time(), "waiting to retry a transient failure")
        else:
            self.clock.sleep(self.get_backoff_time())

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, *args: Any, **kwargs: Any) -> ScheduledRetry:
        retry = super().increment(method, url, response, error, *args, **kwargs)
        if self.on_retry and retry.history and retry.history[-1].redirect_location is None:
            attempts = len(self.delays) + 1
            attempt = len(retry.history) + 1
            cause = _describe_response(response) if response is not None and error is None else _describe_error(error)
            self.on_retry(
                f"{method} {url}: {cause}; retrying in {retry.get_backoff_time():g} s "
                f"(attempt {attempt}/{attempts})"
            )
        return retry


class DeadlineTimeout(Timeout):
    """A request's budget, re-capped by what is left of the overall deadline at every attempt.

    urllib3 retries inside one ``urlopen`` with the same timeout object and clones it for each
    attempt; re-capping in :meth:`clone` is what keeps a retried call from running past the
    ``timeout`` input by up to one whole read budget.
    """

    def __init__(self, deadline: Deadline, read: float, connect: float = 10.0) -> None:
        super().__init__(connect=min(connect, read), read=read)
        self.deadline, self.budget, self.connect_budget = deadline, read, min(connect, read)

    def clone(self) -> Timeout:
        return Timeout(connect=self.deadline.cap(self.connect_budget), read=self.deadline.cap(self.budget))


def session(
    delays: tuple[float, ...] = (),
    clock: Clock | None = None,
    on_retry: RetryLog | None = None,
    pool_size: int = 10,
    deadline: Deadline | None = None,
) -> requests.Session:
    """A session whose every call gets the transient-failure retry policy.

    With a ``deadline``, a retry that would wait past it raises
    :class:`~deploy.errors.DeadlineExceeded` instead (through requests, untouched).
    """
    s = requests.Session()
    retry = ScheduledRetry(delays=delays, clock=clock, on_retry=on_retry, deadline=deadline)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = USER_AGENT
    return s


def error_text(body: bytes | str, limit: int = 300) -> str:
    """The server's own words, on one line: a JSON ``error``/``message``, an HTML title, or text."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("error", "message", "errors", "detail"):
            if doc.get(key):
                value = doc[key]
                text = value if isinstance(value, str) else json.dumps(value)
                break
    elif re.search(r"<html|<!doctype", text, re.IGNORECASE):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        text = f"HTML page: {title.group(1)}" if title else "HTML page (not JSON)"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_response(response: Any) -> str:
    try:
        body = response.read(4096, decode_content=True) or b""
    except Exception:  # noqa: BLE001 - a body we can't read still has a status to report
        body = b""
    text = error_text(body)
    return f"HTTP {response.status}" + (f": {text}" if text else "")


def _describe_error(error: Exception | None) -> str:
    name = type(error).__name__ if error else "error"
    if "ReadTimeout" in name:
        return "read timed out (treated as a retryable 504)"
    if "Protocol" in name or "Connect" in name or "NewConnection" in name:
        return f"connection failed ({name})"
    return name
