"""A forge for the simulator: the few GitHub REST / Gitea ``/api/v1`` calls the gates make.

One component serves either shape (``kind="github"`` or ``"gitea"``) under a base path such as
``/api/v3`` or ``/api/v1``, with the real forges' behaviour a client must cope with: the page size
is clamped (GitHub 100, Gitea 50) so a short page is not the last one, lists come newest first,
Gitea puts a branch head at ``commit.id`` and a variable's value in ``data``. Knobs: statuses and
check runs per commit, branch heads, variables (also changed after the Nth deploy call of a
:class:`~deploy.sim.fleet.FleetSim`: a kill switch set or a newer commit landing mid-rollout),
per-path faults and a one-shot rate limit. Routes and answer shapes: ``docs/simulator.md``.
"""

from __future__ import annotations

import itertools
import math
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from deploy.clock import Clock
from deploy.sim.server import Request, Response

if TYPE_CHECKING:
    from deploy.sim.fleet import FleetSim

DEFAULT_PREFIX = {"github": "/api/v3", "gitea": "/api/v1"}
PAGE_PARAM = {"github": "per_page", "gitea": "limit"}
MAX_PAGE_SIZE = {"github": 100, "gitea": 50}
DEFAULT_PAGE_SIZE = 30  # both forges, when the client does not ask


class ForgeSim:
    """A one-repository forge. Mutate the knobs freely while a :class:`SimServer` serves it."""

    def __init__(
        self, kind: str = "github", prefix: str | None = None, repository: str = "acme/app",
        token: str = "", clock: Clock | None = None,
    ) -> None:
        if kind not in DEFAULT_PREFIX:
            raise ValueError(f"kind must be github or gitea, not {kind!r}")
        self.kind = kind
        self.prefix = (DEFAULT_PREFIX[kind] if prefix is None else prefix).rstrip("/")
        self.repository = repository
        self.token = token  # when set, requests must carry `token <it>` or `Bearer <it>`
        self.clock = clock or Clock()
        self.statuses: dict[str, list[dict[str, Any]]] = {}  # sha → rows, oldest first
        self.check_runs: dict[str, list[dict[str, Any]]] = {}  # sha → rows, oldest first (GitHub only)
        self.branches: dict[str, str] = {}  # branch → head SHA
        self.variables: dict[str, str] = {}  # name → value
        self._faults: dict[str, list[int | None]] = {}  # repo-relative path → [status, times left]
        self._rate_limit: dict[str, float] | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- knobs ---------------------------------------------------------------------------------

    def add_status(self, sha: str, context: str, state: str) -> dict[str, Any]:
        """Report a commit status, as CI would (a newer row for the same context supersedes it)."""
        key = "state" if self.kind == "github" else "status"
        return self._add(self.statuses, sha, {key: state, "context": context, "description": f"{context} {state}"})

    def add_check_run(
        self, sha: str, name: str, status: str = "completed", conclusion: str | None = "success"
    ) -> dict[str, Any]:
        """Report a GitHub check run; ``conclusion`` counts only once ``status`` is ``completed``."""
        finished = conclusion if status == "completed" else None
        row = {"name": name, "head_sha": sha, "status": status, "conclusion": finished}
        return self._add(self.check_runs, sha, row)

    def fault(self, path: str, status: int, times: int | None = None) -> None:
        """Answer ``status`` for ``path`` (relative to the repository, e.g. ``branches/main``).

        ``times=None`` keeps failing; otherwise the fault heals after ``times`` requests.
        """
        with self._lock:
            self._faults[path.strip("/")] = [status, times]

    def rate_limit_once(self, reset_in: float = 60.0, retry_after: float | None = None) -> None:
        """Answer the next request with a rate limit: 403 + ``X-RateLimit-*``, or 429 + ``Retry-After``."""
        with self._lock:
            self._rate_limit = {"reset_in": reset_in} if retry_after is None else {"retry_after": retry_after}

    def change_after_deploys(
        self, fleet: FleetSim, calls: int, variables: dict[str, str] | None = None,
        branches: dict[str, str] | None = None,
    ) -> None:
        """After the ``calls``-th deploy call ``fleet`` serves from now on, set ``variables`` and
        ``branches`` (merged into the current ones; a variable replaces one of the same name in any
        case): a kill switch set, or a newer commit landing, mid-rollout.

        The change is made in ``fleet.after_deploy``, which runs once per deploy call that took
        effect (not dry runs, faulted calls or an unknown ``target_tag``), before the CP answers: a
        client reading the forge after the Nth answer sees the new values, one reading after an
        earlier answer the old. An ``after_deploy`` already set still runs first.
        """
        if calls < 1:
            raise ValueError(f"calls must be at least 1, not {calls}; set the knobs directly for a change before any")
        chained, seen, lock = fleet.after_deploy, [0], threading.Lock()

        def after_deploy(body: dict[str, Any]) -> None:
            if chained is not None:
                chained(body)
            with lock:
                seen[0] += 1
                if seen[0] != calls:
                    return
            with self._lock:
                for name, value in (variables or {}).items():  # variable names are case-insensitive
                    for same in [k for k in self.variables if k.upper() == name.upper()]:
                        del self.variables[same]
                    self.variables[name] = value
                self.branches.update(branches or {})

        fleet.after_deploy = after_deploy

    # -- serving -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response | None:
        base = f"{self.prefix}/repos/{self.repository}/"
        if not request.path.startswith(self.prefix + "/"):
            return None
        if self.token and request.headers.get("authorization") not in (f"token {self.token}", f"Bearer {self.token}"):
            return Response.json({"message": "Bad credentials"}, 401)
        if not request.path.startswith(base):
            return _not_found()
        path = request.path[len(base):].strip("/")
        injected = self._injected(path)
        if injected is not None:
            return injected
        if request.method != "GET":
            return Response.json({"message": "Method Not Allowed"}, 405)
        return self._route(path, request)

    def _route(self, path: str, request: Request) -> Response:
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "commits" and parts[2] == "statuses":
            return self._list(request, self.statuses.get(parts[1].lower(), []), None)
        if len(parts) == 3 and parts[0] == "commits" and parts[2] == "check-runs" and self.kind == "github":
            return self._list(request, self.check_runs.get(parts[1].lower(), []), "check_runs")
        if parts[0] == "branches" and len(parts) > 1:
            return self._branch("/".join(parts[1:]))
        if parts[:2] == ["actions", "variables"] and len(parts) == 3:
            return self._variable(parts[2])
        return _not_found()

    def _list(self, request: Request, rows: list[dict[str, Any]], key: str | None) -> Response:
        try:
            size = int(request.param(PAGE_PARAM[self.kind], str(DEFAULT_PAGE_SIZE)))
            page = int(request.param("page", "1"))
        except ValueError:
            return Response.json({"message": "page and page size must be integers"}, 422)
        size = min(max(size, 1), MAX_PAGE_SIZE[self.kind])
        start = (max(page, 1) - 1) * size
        with self._lock:
            newest_first = list(reversed(rows))
        chunk = newest_first[start:start + size]
        return Response.json({"total_count": len(newest_first), key: chunk} if key else chunk)

    def _branch(self, name: str) -> Response:
        head = self.branches.get(name)
        if head is None:
            return _not_found("Branch not found")
        commit = {"sha": head} if self.kind == "github" else {"id": head, "message": "sim commit"}
        return Response.json({"name": name, "commit": commit, "protected": False})

    def _variable(self, name: str) -> Response:
        found = {k.upper(): v for k, v in self.variables.items()}.get(name.upper())
        if found is None:
            return _not_found()
        if self.kind == "github":
            return Response.json({"name": name.upper(), "value": found, "created_at": self._now()})
        return Response.json({"owner_id": 0, "repo_id": 1, "name": name.upper(), "data": found})

    def _injected(self, path: str) -> Response | None:
        with self._lock:
            limit, self._rate_limit = self._rate_limit, None
            fault = None if limit else self._faults.get(path)
            if fault and fault[1] is not None:
                fault[1] -= 1
                if fault[1] <= 0:
                    del self._faults[path]
        if limit is not None:
            if "retry_after" in limit:
                return Response.json({"message": "You have exceeded a secondary rate limit"}, 429,
                                     {"Retry-After": f"{limit['retry_after']:g}"})
            reset = math.ceil(self.clock.wall() + limit["reset_in"])
            return Response.json({"message": "API rate limit exceeded"}, 403,
                                 {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
        if fault:
            return Response.json({"message": f"injected fault {fault[0]}"}, int(fault[0] or 500))
        return None

    def _add(self, table: dict[str, list[dict[str, Any]]], sha: str, row: dict[str, Any]) -> dict[str, Any]:
        stamp = self._now()
        with self._lock:
            row = {"id": next(self._ids), **row, "created_at": stamp, "updated_at": stamp}
            table.setdefault(sha.lower(), []).append(row)
        return row

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock.wall(), UTC).isoformat().replace("+00:00", "Z")


def _not_found(message: str = "Not Found") -> Response:
    return Response.json({"message": message}, 404)
