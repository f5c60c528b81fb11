"""The one HTTP layer every client uses (CP, forge, registry, token service, tenants).

It owns what a hostile or broken server could otherwise use against the run:

- **Deadlines on the whole exchange.** urllib3's read timeout bounds each socket read, so a
  server dripping one byte at a time (headers or body) could hold a call forever. Every attempt
  is therefore also registered with a :class:`_Watchdog` thread that shuts the socket down when
  the attempt's budget, or the overall deadline, runs out — whatever phase the exchange is in.
- **Body caps on the decoded size.** The body is read inside urllib3's attempt (see
  :class:`_WatchedPoolMixin`), at most ``cap`` decoded bytes of a success and
  :data:`ERROR_PREFIX` of anything else; urllib3 (≥ 2.6) bounds each decompression step, so a
  gzip bomb costs at most the cap. Reading inside the attempt also means a body cut by a dropped
  connection is retried exactly like a dropped connection.
- **Retries** of 502/503/504, timeouts and dropped connections by urllib3's own
  :class:`~urllib3.util.Retry`, on the user's ``retry-delays`` schedule, slept on the injected
  clock (fast tests, and the overall deadline), one log line per retry with the server's text.
  Every method is retried, POST included: the CP's redeploy of a tag is idempotent, and giving
  up on a slow answer is what loses the per-tenant results.
- **Redirects** are followed only within the same origin (scheme, host and port), for GET and
  HEAD: a redirect may not downgrade to ``http://`` nor carry a credential, or a body from
  another host into the report. A caller may narrow that per call (``keep``): a tenant's read
  stays on the tenant's own path.
- **Failures in one sentence** (:class:`TransportError`): the host, the cause (refused, name not
  resolved, TLS, cut off, no complete answer within N s) and the attempts really made.
- **Linear parsing**: :func:`parse_json` turns invalid or too deeply nested JSON into
  :class:`UnusableBody`; :func:`error_text` looks only at a bounded prefix, without regexes that
  can backtrack.
- **Writable text**: what a server sends reaches the run only through :func:`parse_json`,
  :func:`error_text` and a :class:`Reply`'s reason, and each makes it writable where it enters
  (:func:`deploy.domain.writable`): a lone surrogate in a CP's error cannot stop the report.

- **Two paths for a GET, one set of rules.** Every client goes through requests, except the GETs
  of a lean client (:attr:`Policy.lean`: the tenants' ``/buildinfo`` reads, the one call the fleet
  size multiplies), which go straight to the urllib3 pool requests would have used. Measured at
  10,000 tenants, requests' per-request objects were a third of a read's CPU; the pool, proxy,
  TLS settings, retries, watchdog, caps and redirects stay the same on both paths.

Cancellation: :func:`abort_all` (safe to call from a signal handler: it only sets a flag) makes
the watchdog shut every open exchange within one tick and caps new ones at a short grace, so a
cancelled run is not held by a tenant that never answers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.client import HTTPException
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import getproxies

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError
from urllib3.util import Timeout
from urllib3.util.retry import Retry

from deploy import __version__
from deploy.clock import Clock, Deadline
from deploy.domain import writable
from deploy.errors import DeployFailed

TRANSIENT_STATUSES = frozenset({502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = f"fleet-rollout/{__version__}"
ERROR_PREFIX = 64 * 1024  # what is read of a non-2xx body: enough for any error text
ERROR_TEXT_LIMIT = 300  # characters of a server's error text that reach a message
MAX_REDIRECTS = 3
CANCEL_GRACE = 1.0  # seconds a request started after cancellation may take (promote's put-back)
WATCHDOG_TICK = 0.05
CONNECT_BUDGET = 10.0

RetryLog = Callable[[str], None]


class TransportError(DeployFailed):
    """No usable HTTP answer: ``host: cause (N attempts)``; ``cause`` alone for per-tenant lines.

    ``sent`` is False only when the failure shows the request never reached the server (refused,
    name not resolved, a TLS handshake or a connect that failed): a POST that failed that way did
    nothing there, and may be sent again at once. Anything else may have been received and acted on.
    """

    def __init__(self, url: str, cause: str, *, timed_out: bool = False, attempts: int = 1,
                 sent: bool = True) -> None:
        attempts_note = f" ({attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{_origin(url)}: {cause}{attempts_note}")
        self.cause = cause
        self.timed_out = timed_out
        self.attempts = attempts
        self.sent = sent


class Aborted(DeployFailed):
    """The run was cancelled while a request waited to be retried."""


class UnusableBody(ValueError):
    """A body that is not the JSON it should be (invalid, too deep, or over its cap)."""


class BodyTooLarge(Exception):
    """A success body over its cap; raised through urllib3 (never retried: it would not shrink)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"answered with a body over {_size(cap)}")


# -- the watchdog --------------------------------------------------------------------------


@dataclass(eq=False)
class _Attempt:
    """One attempt of one exchange: the connection it uses and when it must be over."""

    expiry: float  # time.monotonic()
    connection: Any = None
    body_socket: socket.socket | None = None  # after `Connection: close`, only the response holds it
    started: float = field(default_factory=time.monotonic)
    fired: bool = False
    done: bool = False


class _Watchdog:
    """One daemon thread that shuts down the sockets of attempts past their expiry.

    Shutting a socket down wakes the thread blocked on it (EOF), in any phase: connecting,
    reading headers, draining a body. An attempt costs its thread one append and one flag (no
    lock: thirty-two readers contending for one cost more CPU than their requests' own work);
    every :data:`WATCHDOG_TICK` the watchdog takes in the new attempts and looks at those in
    flight, which are never more than the run's concurrent exchanges.

    A connection must never be shut once another exchange has it. urllib3 returns a connection
    to its pool the moment its body is read, so an attempt cannot always be marked done first:
    each attempt therefore also marks its connection as its own, and the watchdog leaves a
    connection alone that a newer attempt has taken. For the rest, the owner marks its attempt
    done and only then reads ``fired``, and the watchdog sets ``fired`` before it reads ``done``:
    one of the two always sees the other, so the owner closes what the watchdog may have shut.
    """

    def __init__(self) -> None:
        self._new: collections.deque[_Attempt] = collections.deque()  # append and popleft are atomic
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self.aborted_at: float | None = None  # set by abort_all(), read without a lock

    def watch(self, attempt: _Attempt) -> None:
        if self.aborted_at is not None:
            attempt.expiry = min(attempt.expiry, self.aborted_at + CANCEL_GRACE)
        self._new.append(attempt)
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="http-watchdog", daemon=True)
                    self._thread.start()

    @staticmethod
    def unwatch(attempt: _Attempt) -> None:
        attempt.done = True

    def _run(self) -> None:
        flight: list[_Attempt] = []
        while True:
            time.sleep(WATCHDOG_TICK)
            while self._new:
                flight.append(self._new.popleft())
            now, aborted = time.monotonic(), self.aborted_at
            flight = [attempt for attempt in flight if not attempt.done]
            for attempt in flight:
                if attempt.expiry <= now or (aborted is not None and attempt.started <= aborted):
                    attempt.fired = True
                    if attempt.done:  # its owner reads fired after done: one of the two sees the other
                        continue
                    sock = getattr(attempt.connection, "sock", None)
                    mine = getattr(attempt.connection, "watched_by", attempt) is attempt
                    for target in (sock, attempt.body_socket):  # the same socket, unless `Connection: close`
                        if mine or target is not sock:
                            _shut(target)


def _shut(sock: Any) -> None:
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the raw socket, also under TLS


def _body_socket(response: Any) -> socket.socket | None:
    """The socket a response reads its body from. http.client detaches it from the connection
    when the server says ``Connection: close``, so the watchdog must be told about it here."""
    reader = getattr(getattr(response, "_fp", None), "fp", None)
    sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


_WATCHDOG = _Watchdog()


def abort_all() -> None:
    """Cut every open exchange now and cap new ones at :data:`CANCEL_GRACE` (a cancelled run).

    Only assigns an attribute, so it is safe inside a signal handler.
    """
    if _WATCHDOG.aborted_at is None:
        _WATCHDOG.aborted_at = time.monotonic()


# -- one exchange (all attempts of one request) ---------------------------------------------


@dataclass(eq=False)
class _Exchange:
    """What the pool hooks need to know about the request this thread is making."""

    url: str
    budget: float
    deadline: Deadline
    cap: int
    attempts: int = 0
    attempt: _Attempt | None = None
    tunnel: Any = None  # the connection whose attempt began with its proxy tunnel (see _prepare_proxy)
    body: bytes | None = None
    truncated: bool = False

    def begin_attempt(self, connection: Any) -> None:
        self.end_attempt()
        self.attempts += 1
        self.body, self.truncated = None, False
        self.attempt = _Attempt(time.monotonic() + self.deadline.cap(self.budget), connection)
        connection.watched_by = self.attempt  # whose it is now: the pool may hand it on (see _Watchdog)
        _WATCHDOG.watch(self.attempt)

    def end_attempt(self) -> None:
        if self.attempt is not None:
            _WATCHDOG.unwatch(self.attempt)

    @property
    def timed_out(self) -> bool:
        return self.attempt is not None and self.attempt.fired


_current = threading.local()


def _exchange() -> _Exchange | None:
    return getattr(_current, "exchange", None)


@contextmanager
def _exchanging(exchange: _Exchange) -> Iterator[_Exchange]:
    _current.exchange = exchange
    try:
        yield exchange
    finally:
        _current.exchange = None


def read_capped(raw: Any, cap: int, success: bool) -> tuple[bytes, bool]:
    """``(body, truncated)``: at most ``cap`` decoded bytes of a success (more raises
    :class:`BodyTooLarge`), at most :data:`ERROR_PREFIX` of anything else (the rest is dropped)."""
    limit = cap if success else min(cap, ERROR_PREFIX)
    headers = getattr(raw, "headers", None) or {}
    declared = headers.get("Content-Length", "")
    if success and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    # A declared length read in full needs no further read to see the end (one costs a tenth of a
    # small exchange); an encoded body may still be held in its decoder, so that one does.
    exact = declared.isdigit() and headers.get("Content-Encoding", "identity") == "identity"
    body = bytearray()
    while len(body) <= limit:
        chunk = raw.read(min(65536, limit + 1 - len(body)) or 1, decode_content=True)
        if not chunk:
            return bytes(body), False
        body += chunk
        if exact and len(body) <= limit and getattr(raw, "length_remaining", None) == 0:
            return bytes(body), False
    if success:
        raise BodyTooLarge(limit)
    return bytes(body[:limit]), True


class _WatchedPoolMixin:
    """urllib3 pool hook: each attempt is watched, and its body is read inside the attempt."""

    def _prepare_proxy(self, conn: Any) -> None:
        """Behind an HTTPS proxy the attempt begins here: the CONNECT and the tenant's TLS
        handshake run before :meth:`_make_request`, and a proxy dripping them must be cut too."""
        exchange = _exchange()
        if exchange is not None:
            exchange.begin_attempt(conn)
            exchange.tunnel = conn
        super()._prepare_proxy(conn)  # type: ignore[misc]

    def _make_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        exchange = _exchange()
        if exchange is None:
            return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]
        if exchange.tunnel is not conn:  # else its attempt began with the tunnel
            exchange.begin_attempt(conn)
        exchange.tunnel = None
        response = super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]
        if exchange.attempt is not None:
            exchange.attempt.body_socket = _body_socket(response)
        body, truncated = read_capped(response, exchange.cap, 200 <= response.status < 300)
        exchange.end_attempt()  # answered: from here urllib3 may hand the connection on (even to retry)
        if exchange.timed_out:  # the watchdog ended it: what arrived (headers or body) may be a piece
            response.close()
            raise ReadTimeoutError(self, url, "no complete answer in time")  # type: ignore[arg-type]
        exchange.body, exchange.truncated = body, truncated
        if truncated:  # the unread rest must not be drained before a retry: drop the connection
            response.close()
        return response


class _WatchedHTTPPool(_WatchedPoolMixin, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_WatchedPoolMixin, HTTPSConnectionPool):
    pass


WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """Every pool watched: the direct ones, and those behind a proxy (``HTTP(S)_PROXY``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager


# -- retries -------------------------------------------------------------------------------


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
        kwargs.setdefault("redirect", 0)  # redirects are the client's decision (same origin only)
        kwargs.setdefault("raise_on_redirect", False)
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
        """Wait before the next attempt; past the exchange's deadline, or once cancelled, stop instead.

        The deadline is the exchange's own when it has one (:meth:`Client.request`'s ``deadline``):
        promote's put-back runs on a grace deadline after the overall one has passed, and its
        retries must have that grace too, not the overall deadline it was granted after.
        """
        if _WATCHDOG.aborted_at is not None:
            raise Aborted("cancelled: no further retries")
        exchange = _exchange()
        deadline = exchange.deadline if exchange is not None else self.deadline
        if deadline is not None:
            deadline.sleep(self.get_backoff_time(), "waiting to retry a transient failure")
        else:
            self.clock.sleep(self.get_backoff_time())

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, *args: Any, **kwargs: Any) -> ScheduledRetry:
        retry = super().increment(method, url, response, error, *args, **kwargs)
        if self.on_retry and retry.history:
            exchange = _exchange()
            attempt = len(retry.history) + 1
            if response is not None and error is None:
                cause = f"HTTP {response.status}" + _with_text(exchange.body if exchange else b"")
            else:
                cause = _cause(error, exchange.budget if exchange else 0.0, exchange.timed_out if exchange else False)
            where = _shown(exchange.url) if exchange else url
            self.on_retry(f"{method} {where}: {cause}; retrying in "
                          f"{retry.get_backoff_time():g} s (attempt {attempt}/{len(self.delays) + 1})")
        return retry


class DeadlineTimeout(Timeout):
    """Socket timeouts re-capped by what is left of the overall deadline at every attempt.

    urllib3 clones the timeout object for each attempt; re-capping in :meth:`clone` keeps a
    retried call inside the ``timeout`` input. requests' type hints ask for a float or a tuple,
    but its adapter passes a urllib3 ``Timeout`` through untouched, which is what this relies on.
    """

    def __init__(self, deadline: Deadline, read: float, connect: float = CONNECT_BUDGET) -> None:
        super().__init__(connect=min(connect, read), read=read)
        self.deadline, self.budget, self.connect_budget = deadline, read, min(connect, read)

    def clone(self) -> Timeout:
        return Timeout(connect=self.deadline.cap(self.connect_budget), read=self.deadline.cap(self.budget))


# -- the client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """How one remote party is talked to: the one input of :class:`Client`."""

    retry_delays: tuple[float, ...] = ()
    budget: float = 30.0  # seconds one exchange may take, unless a call says otherwise (request-timeout)
    cap: int = 8 * 1024 * 1024  # decoded bytes of a success body
    pool_size: int = 10
    headers: Mapping[str, str] = field(default_factory=dict)
    lean: bool = False  # GETs straight to urllib3's pool (see Client._urlopen): the tenants' hot loop


@dataclass(frozen=True)
class Reply:
    """A complete answer: status, headers, and the (capped) body."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    url: str
    attempts: int = 1
    refused: str = ""  # why a same-origin redirect was not followed all the same (Client.request's keep)

    def json(self) -> Any:
        return parse_json(self.body)

    def error_text(self, limit: int = ERROR_TEXT_LIMIT) -> str:
        return error_text(self.body, limit) or self.reason

    @property
    def redirect_note(self) -> str:
        """Why a 3xx was not followed (its target is not shown: it may be an internal URL)."""
        location = self.headers.get("Location", "")
        if self.status not in REDIRECT_STATUSES:
            return ""
        if self.refused:
            return self.refused
        if not location:
            return "a redirect without a Location"
        target = urljoin(self.url, location)
        if urlsplit(target).scheme == "http" and urlsplit(self.url).scheme == "https":
            return "a redirect that downgrades to http://, not followed"
        if not same_origin(self.url, target):
            return "a redirect to another origin, not followed"
        return f"more than {MAX_REDIRECTS} redirects"


class _NoCookies(requests.cookies.RequestsCookieJar):
    """No API this client talks to sets a cookie: parsing every answer's headers for one cost CPU."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


_NO_COOKIES = _NoCookies()


class Client:
    """A pooled, retrying session for one remote party, every exchange bounded (see module doc)."""

    def __init__(self, policy: Policy, clock: Clock, deadline: Deadline, on_retry: RetryLog | None = None) -> None:
        self.policy, self.clock, self.deadline = policy, clock, deadline
        self.session = requests.Session()
        # The environment is read once here, not per request (see _send); and never ~/.netrc: a
        # credential found there must not be sent to a tenant, a forge or a registry.
        self.session.trust_env = False
        self.session.cookies = _NoCookies()
        self._env_proxies = bool(getproxies())  # the environment, and a laptop's system settings
        self._proxies: dict[str, dict[str, str]] = {}  # origin → proxies, when any are configured
        self._verify: bool | str = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        retry = ScheduledRetry(delays=policy.retry_delays, clock=clock, on_retry=on_retry, deadline=deadline)
        adapter = _WatchedAdapter(max_retries=retry, pool_connections=policy.pool_size,
                                  pool_maxsize=policy.pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers.update(policy.headers)
        self._adapter = adapter
        self._headers = dict(self.session.headers)
        self._routes: dict[str, tuple[Any, bool]] = {}  # origin → (pool, absolute URL), see _route

    def close(self) -> None:
        self._routes.clear()
        self.session.close()

    def request(self, method: str, url: str, *, budget: float | None = None, cap: int | None = None,
                deadline: Deadline | None = None, keep: Callable[[str], str] | None = None, **kwargs: Any) -> Reply:
        """One exchange (with its retries and same-origin redirects); :class:`TransportError` when
        no complete answer came. ``budget`` and ``cap`` override the policy's for this call;
        ``deadline`` replaces the client's own (a stage's budget, promote's put-back grace).

        ``keep``: a narrower rule than the origin for the redirects of this call — why a target may
        not be followed, or '' (a tenant's read stays on the tenant's own path: see
        :class:`deploy.buildinfo.TenantUrl`). Applied to every hop, on both request paths.
        """
        deadline = deadline or self.deadline
        budget = self.policy.budget if budget is None else budget
        for _ in range(MAX_REDIRECTS + 1):
            reply = self._once(method, url, budget, cap or self.policy.cap, deadline, kwargs)
            location = reply.headers.get("Location", "")
            target = urljoin(url, location)
            if not (reply.status in REDIRECT_STATUSES and method in ("GET", "HEAD") and location
                    and same_origin(url, target)):
                return reply
            refused = keep(target) if keep is not None else ""
            if refused:
                return replace(reply, refused=refused)
            url = target
        return reply

    def _once(self, method: str, url: str, budget: float, cap: int, deadline: Deadline,
              kwargs: dict[str, Any]) -> Reply:
        deadline.check(f"{method} {_origin(url)}")
        with _exchanging(_Exchange(url, budget, deadline, cap)) as exchange:
            response = None
            try:
                timeout: Any = DeadlineTimeout(deadline, budget)  # see DeadlineTimeout: requests passes it on
                response = self._send(method, url, timeout, kwargs)
                body = exchange.body
                if body is None:  # no pool hook ran (a test adapter): read it here, same caps
                    body, _ = read_capped(response, cap, 200 <= response.status < 300)
            except BodyTooLarge as exc:
                raise TransportError(url, str(exc), attempts=exchange.attempts) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, HTTPException, OSError, ValueError) as exc:
                # requests re-raises some urllib3 errors as they are (a body that is not the gzip it
                # claims: DecodeError); a malformed URL or header is a ValueError
                raise TransportError(url, _cause(exc, budget, exchange.timed_out),
                                     timed_out=_timed_out(exc, exchange.timed_out),
                                     attempts=max(exchange.attempts, 1), sent=_maybe_sent(exc)) from None
            finally:
                exchange.end_attempt()  # before the connection goes back to the pool (see _Watchdog)
                if response is not None and (exchange.truncated or exchange.timed_out):
                    response.close()  # the rest of the body is unread: the connection can't be reused
                elif response is not None:
                    response.release_conn()
            # The reason, like every header, is decoded by http.client as latin-1, always writable;
            # made so here all the same, since it is the one header text that reaches messages whole.
            return Reply(response.status, writable(response.reason or ""), response.headers, body, url,
                         max(exchange.attempts, 1))

    def _send(self, method: str, url: str, timeout: Any, kwargs: dict[str, Any]) -> Any:
        """The urllib3 response (headers read, body in the exchange): through requests, or for a
        lean client's plain GET straight through the pool (:meth:`_urlopen`)."""
        if self.policy.lean and method == "GET" and not kwargs and "@" not in url:
            return self._urlopen(url, _scheme_and_host(url), timeout)  # (a credential in a URL is requests')
        return self._send_prepared(method, url, timeout, kwargs).raw

    def _send_prepared(self, method: str, url: str, timeout: Any, kwargs: dict[str, Any]) -> requests.Response:
        """``Session.request`` without reading the environment per request, which cost more CPU than
        the exchange itself over a large fleet: proxies and the CA bundle are read once per client
        and per origin. Redirects are this client's own decision (:meth:`request`)."""
        prepared = requests.PreparedRequest()
        rest = {name: value for name, value in kwargs.items() if name != "headers"}  # kwargs serve every redirect
        headers = {**self.session.headers, **(kwargs.get("headers") or {})}
        prepared.prepare(method=method, url=url, headers=headers, cookies=_NO_COOKIES, **rest)
        return self.session.send(prepared, stream=True, timeout=timeout, verify=self._verify, cert=None,
                                 proxies=self._proxies_for(url), allow_redirects=False)

    def _urlopen(self, url: str, origin: str, timeout: Any) -> Any:
        """A GET without requests' per-request objects: the cost of a ``/buildinfo`` read at 10,000
        tenants was a third requests' own (PreparedRequest, Session.send, Response, cookies).

        Only the objects are skipped, nothing requests decides: the pool, the proxy, the TLS
        settings and the URL form come from requests' own adapter, once per origin
        (:meth:`_route`), and the exchange is the one ``HTTPAdapter.send`` makes (the same
        retries, timeout and hooks). requests-mock cannot see these requests: the tests of this
        path use real servers.
        """
        pool, absolute = self._route(url, origin)
        url = url.partition("#")[0]
        rest = url[len(origin):]
        target = url if absolute else rest if rest.startswith("/") else "/" + rest
        return pool.urlopen("GET", target, body=None, headers=self._headers, redirect=False, assert_same_host=False,
                            preload_content=False, decode_content=False, retries=self._adapter.max_retries,
                            timeout=timeout, chunked=False)

    def _route(self, url: str, origin: str) -> tuple[Any, bool]:
        """The pool for ``url``'s origin and whether it takes the absolute URL (a plain-HTTP proxy).

        Cached per origin for as many origins as the adapter keeps pools; a pool the adapter has
        since dropped (closed) is looked up again.
        """
        route = self._routes.get(origin)
        if route is None or route[0].pool is None:
            if len(self._routes) >= self.policy.pool_size:
                self._routes.clear()
            request = requests.PreparedRequest()
            request.url, request.method = url, "GET"
            proxies = self._proxies_for(url)
            pool = self._adapter.get_connection_with_tls_context(request, self._verify, proxies=proxies, cert=None)
            self._adapter.cert_verify(pool, url, self._verify, None)  # type: ignore[no-untyped-call]
            route = self._routes[origin] = (pool, self._adapter.request_url(request, proxies) != request.path_url)
        return route

    def _proxies_for(self, url: str) -> dict[str, str]:
        """``HTTP(S)_PROXY`` and ``NO_PROXY`` exactly as requests reads them, decided once per origin."""
        if not self._env_proxies:
            return {}
        origin = _origin(url)
        if origin not in self._proxies:
            self._proxies[origin] = requests.utils.get_environ_proxies(url)
        return self._proxies[origin]


# -- wording and parsing -------------------------------------------------------------------


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _cause(exc: BaseException | None, budget: float, cut: bool) -> str:
    if exc is None:
        return "error"
    if _timed_out(exc, cut):
        return f"no complete answer within {budget:g} s"
    chain = list(_chain(exc))
    names = " ".join(type(e).__name__ for e in chain)
    text = " ".join(str(e) for e in chain[-1:])
    if isinstance(exc, requests.TooManyRedirects):
        return "too many redirects"
    if "DecodeError" in names or "ContentDecodingError" in names:
        return "a body that does not decode as its Content-Encoding says"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolution" in names:
        return "name not resolved"
    if isinstance(exc, requests.exceptions.SSLError) or "SSL" in names:
        return f"TLS failure: {_one_line(text, 120)}"
    if "IncompleteRead" in names or "IncompleteRead" in text or "ChunkedEncodingError" in names:
        return "the answer was cut off (connection dropped mid-body)"
    if any(isinstance(e, ConnectionResetError) for e in chain) or "reset" in text.lower():
        return "connection reset"
    if "RemoteDisconnected" in names or "closed connection" in text:
        return "the server closed the connection without answering"
    return f"connection failed: {_one_line(text or type(chain[-1]).__name__, 120)}"


def _timed_out(exc: BaseException, cut: bool) -> bool:
    """Cut by the watchdog, or a timeout anywhere in the chain. urllib3 derives the error of a
    refused or unreachable connection from its connect timeout: that one is not a timeout."""
    return cut or any(isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
                      and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in _chain(exc))


NOT_SENT = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
            urllib3.exceptions.NameResolutionError, ssl.SSLError, ConnectionRefusedError, socket.gaierror)


def _maybe_sent(exc: BaseException) -> bool:
    """False when the failure happened before a byte of the request could reach the server: no
    connection (refused, name not resolved, connect timed out) or no TLS session. A connection cut
    later, a timeout or a reset may have come after the server read the request."""
    return not any(isinstance(e, NOT_SENT) for e in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: requests wraps urllib3, which wraps the socket error."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in reversed(seen.args) if isinstance(a, BaseException)), None)
        seen = inner or seen.__cause__ or seen.__context__


PairsHook = Callable[[list[tuple[str, Any]]], Any]
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # may decode to a surrogate (pairs too)


def parse_json(body: bytes | str, pairs_hook: PairsHook | None = None) -> Any:
    """JSON, or :class:`UnusableBody`; nesting deep enough to exhaust the stack is just invalid.

    What it returns is writable (see :func:`deploy.domain.writable`): this is where the text of a
    server's JSON enters the run, so nothing downstream meets a code point a log line or a file
    cannot hold. Bytes are decoded with ``replace`` (json itself would let an encoded surrogate
    through), and only a body that holds a ``\\uD8xx``–``\\uDFxx`` escape has its strings walked.

    ``pairs_hook`` builds each object from its ``(key, value)`` pairs, innermost first (json's
    ``object_pairs_hook``): a caller may drop what it will not keep while parsing (a CP answer's
    rows about tenants outside the call), instead of after building all of it.
    """
    text = body.decode(json.detect_encoding(body), "replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text, object_pairs_hook=pairs_hook)
    except ValueError:
        raise UnusableBody("not JSON") from None
    except RecursionError:
        raise UnusableBody("not JSON (nested too deeply)") from None
    return _writable_tree(doc) if _SURROGATE_ESCAPE.search(text) else doc


def _writable_tree(doc: Any) -> Any:
    """``doc`` with every string in it, keys too, made writable; an explicit stack, since the depth
    is the server's (json's own limit let it through)."""
    root = [doc]
    stack: list[list[Any] | dict[str, Any]] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(not key.isascii() for key in node):
                items = [(writable(key), value) for key, value in node.items()]
                node.clear()
                node.update(items)
            keys: Iterable[Any] = list(node)
        else:
            keys = range(len(node))
        for key in keys:
            value = node[key]
            if isinstance(value, str):
                node[key] = writable(value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return root[0]


def error_text(body: bytes | str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """The server's own words, on one line: a JSON ``error``/``message``, an HTML title, or text.

    Only a :data:`ERROR_PREFIX` prefix is looked at, with plain ``find`` calls: linear time
    whatever the body (a lazy regex over repeated unclosed ``<title>`` tags is quadratic).
    """
    data = body[:ERROR_PREFIX]
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    try:
        doc = parse_json(text)
    except UnusableBody:
        doc = None
    if isinstance(doc, dict):
        for key in ("error", "message", "errors", "detail"):
            if doc.get(key):
                text = doc[key] if isinstance(doc[key], str) else compact_json(doc[key])
                break
    else:
        lowered = text.lower()
        if "<html" in lowered or "<!doctype" in lowered:
            text = _html_title(text, lowered)
    return _one_line(text, limit)


def _html_title(text: str, lowered: str) -> str:
    start = lowered.find("<title")
    opened = lowered.find(">", start) if start != -1 else -1
    end = lowered.find("</title", opened) if opened != -1 else -1
    if end == -1:
        return "HTML page (not JSON)"
    return f"HTML page: {text[opened + 1:end]}"


def compact_json(value: Any, limit: int = ERROR_TEXT_LIMIT) -> str:
    """A value a server sent, as short JSON; never raises (a parsed value may still be deep)."""
    try:
        return _one_line(json.dumps(value), limit)
    except (ValueError, TypeError, RecursionError):
        return "(unprintable value)"


def _with_text(body: bytes | None) -> str:
    text = error_text(body or b"")
    return f": {text}" if text else ""


def _one_line(text: str, limit: int) -> str:
    """A server's text (or a failure's) for a message: one line, at most ``limit``, writable."""
    text = writable(" ".join(text[: limit * 4].split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url[:80]


def _scheme_and_host(url: str) -> str:
    """``scheme://host:port`` of an absolute URL, as written: the part a request target leaves out."""
    start = url.find("//") + 2
    ends = [end for end in (url.find(mark, start) for mark in "/?#") if end != -1]
    return url[:min(ends)] if ends else url


def _shown(url: str) -> str:
    """Host and path only: userinfo and a query may carry a credential."""
    parts = urlsplit(url)
    return _origin(url) + parts.path


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"
