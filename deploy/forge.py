"""The forge API the gates read: GitHub REST or Gitea ``/api/v1``, one client for both.

The two speak almost the same dialect; the differences live in :data:`SHAPES` (page size and its
parameter, where a branch head and a variable's value sit) and nowhere else. Two server habits
shape the reading code:

- servers clamp the page size (Gitea to 50 whatever we ask), so a short page is not the end:
  lists are read until an *empty* page — a check that is green only on page 2 must not look
  "missing" for the whole ``checks-timeout``;
- GitHub rate limits (403/429 with ``Retry-After``, or ``X-RateLimit-Remaining: 0`` and
  ``X-RateLimit-Reset``) are waited out on the injected clock, within the caller's budget, with a
  log line saying until when; a wait that would not fit fails at once instead.

Transient 502/503/504, read timeouts and dropped connections are retried by the shared session
(:class:`deploy.http.Client`). The token travels only in the ``Authorization`` header; it is
masked, and scrubbed from any server text an error carries.
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from deploy import http
from deploy.clock import Deadline
from deploy.context import Context
from deploy.errors import DeployFailed
from deploy.settings import ForgeSettings, HttpSettings

ANSWER_CAP = 8 * 1024 * 1024  # a page of 100 check runs with their output texts
MAX_PAGES = 100  # 5,000 statuses on Gitea: far beyond a real commit; stops a server that ignores `page`
RATE_LIMIT_MARGIN = 1.0  # seconds past the announced reset, for clock skew between us and the forge
UNANNOUNCED_RATE_LIMIT_WAIT = 60.0  # GitHub: a 429 without headers means "wait at least a minute"
MAX_ANNOUNCED_WAIT = 366 * 86400.0  # longer than any run: a larger figure from a server means the same


@dataclass(frozen=True)
class ApiShape:
    """Where GitHub and Gitea differ in the few calls we make."""

    label: str
    page_size_param: str
    page_size: int  # the server's maximum: asking for more is clamped anyway
    head_key: str  # branch → commit.<head_key>
    value_key: str  # variable → <value_key>
    accept: str


SHAPES = {
    "github": ApiShape("GitHub", "per_page", 100, "sha", "value", "application/vnd.github+json"),
    "gitea": ApiShape("Gitea", "limit", 50, "id", "data", "application/json"),
}


class ForgeError(DeployFailed):
    """A forge call that failed: carries the HTTP status (None for network errors) and the server's text."""

    def __init__(self, message: str, status: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.text = text


class ForgeClient:
    """Reads branch heads, repository variables and commit check states from one repository."""

    def __init__(self, settings: ForgeSettings, http_settings: HttpSettings, ctx: Context) -> None:
        self.settings, self.ctx = settings, ctx
        self.shape = SHAPES[settings.kind]
        ctx.runner.mask(settings.token)
        # `token` works on both forges (GitHub also takes Bearer; Gitea's job token only `token`).
        headers = {"Authorization": f"token {settings.token}", "Accept": self.shape.accept}
        if settings.kind == "github":
            headers["X-GitHub-Api-Version"] = "2022-11-28"
        self.http = ctx.client(http_settings.policy(cap=ANSWER_CAP, headers=headers), on_retry=ctx.runner.log)

    def branch_head(self, branch: str) -> str:
        """The commit SHA at the head of ``branch`` (lower case)."""
        what = f"reading the head of branch {branch!r}"
        doc = _json(self._get(f"branches/{quote(branch, safe='/')}", what), what)
        commit = doc.get("commit") if isinstance(doc, dict) else None
        head = commit.get(self.shape.head_key) if isinstance(commit, dict) else None
        if not isinstance(head, str) or not head:
            raise ForgeError(f"{what}: the {self.shape.label} API answered without commit.{self.shape.head_key}")
        return head.lower()

    def variable(self, name: str) -> str | None:
        """The repository variable's value, or None when it is not set (404)."""
        what = f"reading repository variable {name}"
        response = self._get(f"actions/variables/{quote(name, safe='')}", what, missing_ok=True)
        if response is None:
            return None
        doc = _json(response, what)
        value = doc.get(self.shape.value_key) if isinstance(doc, dict) else None
        if not isinstance(value, str):
            raise ForgeError(f"{what}: the {self.shape.label} API answered without `{self.shape.value_key}`")
        return value

    def check_states(self, sha: str, budget: Deadline | None = None) -> dict[str, tuple[str, ...]]:
        """Every check reported on ``sha``: name → the newest state from each source that has it.

        A commit status contributes its ``state`` (GitHub) or ``status`` (Gitea); on GitHub a
        check run contributes its ``conclusion`` once completed, else its ``status``
        (``queued``, ``in_progress``, …). A name reported both ways maps to two states
        (status first), and the gate requires both to be green. States are lower case.
        ``budget`` is the caller's own time budget (``checks-timeout``): a rate-limit wait must fit
        in it as well as in the overall deadline.
        """
        what = f"reading the checks of {sha[:12]}"
        statuses = _newest(self._pages(f"commits/{sha}/statuses", None, what, budget), "context")
        states: dict[str, tuple[str, ...]] = {
            name: (_state(row.get("state") or row.get("status")),) for name, row in statuses.items()
        }
        if self.settings.kind == "github":
            runs = _newest(self._pages(f"commits/{sha}/check-runs", "check_runs", what, budget), "name")
            for name, row in runs.items():
                run_state = row.get("conclusion") if row.get("status") == "completed" else row.get("status")
                states[name] = (*states.get(name, ()), _state(run_state))
        return states

    # -- HTTP ---------------------------------------------------------------------------------

    def _pages(self, path: str, key: str | None, what: str, budget: Deadline | None) -> list[dict[str, Any]]:
        """Every row of a paginated list, read until an empty page (a short page is not the end)."""
        rows: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            params = {"page": page, self.shape.page_size_param: self.shape.page_size}
            doc = _json(self._get(path, what, params=params, budget=budget), what)
            items = doc.get(key) if key and isinstance(doc, dict) else doc
            if not isinstance(items, list):
                raise ForgeError(f"{what}: page {page} of {path} is not a list")
            if not items:
                return rows
            rows.extend(item for item in items if isinstance(item, dict))
        raise ForgeError(f"{what}: {path} still had rows after {MAX_PAGES} pages; giving up")

    def _get(
        self, path: str, what: str, params: dict[str, Any] | None = None,
        budget: Deadline | None = None, missing_ok: bool = False,
    ) -> http.Reply | None:
        owner, _, name = self.settings.repository.partition("/")
        if not owner or not name or "/" in name:
            raise ForgeError(f"{what}: no repository to ask (GITHUB_REPOSITORY is {self.settings.repository!r})")
        url = f"{self.settings.api_url.rstrip('/')}/repos/{owner}/{name}/{path}"
        while True:
            self.ctx.deadline.check(what)
            try:
                # the caller's own budget (checks-timeout) bounds the exchange too, not only rate-limit
                # waits; the last poll, made as it runs out, is bounded by the overall deadline alone
                overall = self.ctx.deadline.remaining()
                limit = budget if budget is not None and 0 < budget.remaining() < overall else None
                response = self.http.request("GET", url, params=params, deadline=limit)
            except http.TransportError as exc:
                raise ForgeError(f"{what}: the {self.shape.label} API is unreachable ({exc})") from None
            wait = self._rate_limit_wait(response)
            if wait is None:
                break
            self._wait_out_rate_limit(wait, what, budget, response.status)
        if response.status == 404 and missing_ok:
            return None
        if response.status != 200:
            text = self.ctx.runner.redact(http.error_text(response.body))  # a server may echo the token
            detail = f": {text}" if text else ""
            raise ForgeError(
                f"{what}: the {self.shape.label} API answered HTTP {response.status}{detail}",
                response.status, text,
            )
        return response

    def _rate_limit_wait(self, response: http.Reply) -> float | None:
        """Seconds until the forge lifts a rate limit, or None when ``response`` is not one.

        A 403 alone is a permission error: only the headers make it a rate limit.
        """
        if response.status not in (403, 429):
            return None
        headers = response.headers
        if headers.get("Retry-After"):
            return _retry_after(headers["Retry-After"], self.ctx.clock.wall())
        reset = headers.get("X-RateLimit-Reset", "")
        if headers.get("X-RateLimit-Remaining") == "0" and reset.isascii() and reset.isdigit() and len(reset) <= 12:
            return float(reset) - self.ctx.clock.wall()
        return UNANNOUNCED_RATE_LIMIT_WAIT if response.status == 429 else None

    def _wait_out_rate_limit(self, wait: float, what: str, budget: Deadline | None, status: int) -> None:
        wait = min(max(wait, 0.0), MAX_ANNOUNCED_WAIT) + RATE_LIMIT_MARGIN  # 1e308 s is "not in this run"
        limits = [(self.ctx.deadline.remaining(), "timeout")]
        if budget is not None:
            limits.append((budget.remaining(), "checks-timeout"))
        left, limit_name = min(limits)
        until = time.strftime("%H:%M:%S UTC", time.gmtime(self.ctx.clock.wall() + wait))
        if wait > left:
            raise ForgeError(
                f"{what}: the {self.shape.label} API rate limit lifts in {wait:.0f} s (at {until}), "
                f"beyond the {left:.0f} s left of the budget (input `{limit_name}`)",
                status,
            )
        self.ctx.runner.log(f"{self.shape.label} API rate limit reached while {what}: waiting {wait:.0f} s, "
                            f"until {until}")
        self.ctx.clock.sleep(wait)



def _json(response: http.Reply | None, what: str) -> Any:
    try:
        return response.json() if response is not None else None
    except http.UnusableBody as exc:
        raise ForgeError(f"{what}: the forge answered HTTP 200 with a body that is {exc}") from None


def _newest(rows: list[dict[str, Any]], name_key: str) -> dict[str, dict[str, Any]]:
    """One row per name: the newest. Ties keep the first seen (both forges list newest first)."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.get(name_key)
        if isinstance(name, str) and (name not in newest or _recency(row) > _recency(newest[name])):
            newest[name] = row
    return newest


def _recency(row: dict[str, Any]) -> tuple[int, float]:
    """Ids grow with time on both forges; timestamps decide for rows that carry none."""
    row_id = row.get("id")
    stamp = row.get("updated_at") or row.get("completed_at") or row.get("started_at") or row.get("created_at")
    try:
        seconds = datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else float("-inf")
    except ValueError:
        seconds = float("-inf")
    return (row_id if isinstance(row_id, int) else -1, seconds)


def _state(value: Any) -> str:
    return value.lower() if isinstance(value, str) and value else "unknown"


def _retry_after(value: str, now: float) -> float:
    """``Retry-After`` is seconds, or an HTTP date."""
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as floats but announce nothing
        return seconds if math.isfinite(seconds) else UNANNOUNCED_RATE_LIMIT_WAIT
    try:
        return email.utils.parsedate_to_datetime(value[:100]).timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError):
        return UNANNOUNCED_RATE_LIMIT_WAIT
