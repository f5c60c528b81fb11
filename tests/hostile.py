"""A hostile HTTP server for the end-to-end tests: it misbehaves at byte level, on purpose.

:class:`HostileServer` listens on ``127.0.0.1:0`` with raw sockets (``http.server`` would insist on
well-formed, prompt answers). Each request is parsed, recorded as a :class:`Seen`, and matched
against :class:`Rule` s in order; the first matching rule's :class:`Behaviour` answers it.
Unmatched requests are relayed to ``upstream`` (usually a :class:`deploy.sim.server.SimServer`
serving the fleet, the forge and the registry) with :mod:`http.client`. Every connection is
closed after one answer, so a client never reuses a socket that a behaviour left in a strange
state.

Every behaviour is bounded: it gives up after ``give_up`` seconds (30 by default), stops as soon
as the peer goes away, and stops when the server stops, so :meth:`HostileServer.stop` returns
within a couple of seconds whatever the clients do.

Behaviours (factories returning a :class:`Behaviour`):

- :func:`forward` — relay upstream (what an unmatched request gets);
- :func:`respond`, :func:`json_answer` — a canned answer;
- :func:`drip_headers` — the status line and headers one byte every ``interval`` s, then the body;
- :func:`drip_body` — headers at once (with ``Content-Length``), then the body one byte every
  ``interval`` s; ``drip_body(502)`` is a 502 whose error body drips, so a client that drains
  error bodies before a retry is held too;
- :func:`huge_body` — ``N`` MiB of body, with or without ``Content-Length``;
- :func:`gzip_bomb` — ``Content-Encoding: gzip``, ~1 MB on the wire inflating to 1 GiB of zeros;
- :func:`nested_json` — ``[`` × depth … ``]`` × depth;
- :func:`html_titles` — an HTML page of repeated unclosed ``<title>`` tags (quadratic for a
  lazy ``<title>(.*?)</title>`` search);
- :func:`redirect` — a 3xx to ``location``;
- :func:`echo_auth` — echoes the request's ``Authorization`` header and query string in the body,
  raw, URL-quoted, base64, HTML-escaped and JSON-escaped (and a Basic header decoded);
- :func:`truncated` — a 200 with ``Content-Length`` whose body is cut by a connection reset;
- :func:`applied_then_reset` — relayed upstream (so the upstream acts on it), and the answer
  replaced by a connection reset: a request that took effect and whose answer was lost;
- :func:`hang` — the request is read and never answered.
"""

from __future__ import annotations

import base64
import contextlib
import html
import http.client
import json
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

GIVE_UP_SECONDS = 30.0  # no behaviour holds a connection longer than this
HEAD_LIMIT = 64 * 1024  # request line and headers
REQUEST_BODY_LIMIT = 64 * 1024 * 1024  # larger request bodies are recorded without their body and refused (413)
POLL = 0.05  # socket timeout: how often loops look at the stop event
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "content-length",
})


@dataclass(frozen=True)
class Seen:
    """One request as received: the raw request target (path and query), headers, body."""

    method: str
    target: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when the request was complete
    body_refused: bool = False  # the body was over REQUEST_BODY_LIMIT: not kept, answered 413

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


class Behaviour:
    """How one request is answered: a named callable taking an :class:`Exchange`.

    ``prepare`` runs when the behaviour is added to a server, so slow set-up (the gzip bomb)
    never delays an answer: a delay would be a different misbehaviour than the one under test.
    """

    def __init__(self, name: str, run: Callable[[Exchange], None], prepare: Callable[[], object] | None = None) -> None:
        self.name, self._run, self.prepare = name, run, prepare

    def __call__(self, exchange: Exchange) -> None:
        self._run(exchange)

    def __repr__(self) -> str:
        return f"<behaviour {self.name}>"


@dataclass
class Rule:
    """``behaviour`` answers requests matching every given criterion.

    ``path`` is an exact path (no query), ``prefix`` a path prefix, ``when`` any predicate on the
    :class:`Seen` request (body, headers). ``times`` limits how many requests the rule answers
    (then it stops matching); ``skip`` lets the first matching requests through to the upstream.
    """

    behaviour: Behaviour
    method: str = ""
    path: str = ""
    prefix: str = ""
    when: Callable[[Seen], bool] | None = None
    times: int | None = None
    skip: int = 0
    hits: int = 0  # requests this rule answered
    passed: int = 0  # matching requests let through because of ``skip``

    def matches(self, seen: Seen) -> bool:
        if self.method and seen.method != self.method.upper():
            return False
        if self.path and seen.path != self.path:
            return False
        if self.prefix and not seen.path.startswith(self.prefix):
            return False
        return self.when is None or bool(self.when(seen))


class Exchange:
    """One connection being answered: bounded sends, waits and drips."""

    def __init__(self, server: HostileServer, sock: socket.socket, seen: Seen) -> None:
        self.server, self.sock, self.seen = server, sock, seen
        self.give_up_at = time.monotonic() + server.give_up

    @property
    def stopping(self) -> bool:
        return self.server.stopping or time.monotonic() > self.give_up_at

    def send(self, data: bytes) -> bool:
        """Send everything, or return False when the peer is gone, the server stops or time is up."""
        view = memoryview(data)
        while view:
            if self.stopping:
                return False
            try:
                sent = self.sock.send(view[: 256 * 1024])
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep, or return False when the server stops, time is up or the peer went away."""
        end = min(time.monotonic() + seconds, self.give_up_at)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return time.monotonic() <= self.give_up_at
            if self.server.wait_stop(min(left, POLL)) or self.peer_closed():
                return False

    def drip(self, data: bytes, interval: float) -> bool:
        """One byte every ``interval`` seconds."""
        return all(self.wait(interval) and self.send(data[i : i + 1]) for i in range(len(data)))

    def peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return bool(readable) and self.sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def answer(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> bool:
        return self.send(head(status, headers, len(body)) + body)

    def reset(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), not an orderly close."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.sock.close()


class HostileServer:
    """``with HostileServer(upstream_url) as server: server.add(drip_body(502), path=...)``."""

    def __init__(self, upstream: str | None = None, give_up: float = GIVE_UP_SECONDS) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.give_up = give_up
        self.rules: list[Rule] = []
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(POLL)
        self._acceptor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, e.g. in front of a repository name."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, seconds: float) -> bool:
        return self._stop.wait(seconds)

    def start(self) -> HostileServer:
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"hostile-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection, and wait (briefly) for the handlers."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=2)
        self._listener.close()
        with self._lock:
            open_now, threads = list(self._open), list(self._threads)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        end = time.monotonic() + 3
        for thread in threads:
            thread.join(timeout=max(end - time.monotonic(), 0.01))

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules and what was seen -------------------------------------------------------------

    def add(self, behaviour: Behaviour, **criteria: Any) -> Rule:
        """Append a rule (see :class:`Rule` for ``method``, ``path``, ``prefix``, ``when``, ``times``, ``skip``)."""
        rule = Rule(behaviour, **criteria)
        if behaviour.prepare is not None:
            behaviour.prepare()
        with self._lock:
            self.rules.append(rule)
        return rule

    def seen(self, path_prefix: str = "", method: str = "") -> list[Seen]:
        with self._lock:
            return [r for r in self.requests
                    if r.path.startswith(path_prefix) and (not method or r.method == method.upper())]

    def _choose(self, seen: Seen) -> Behaviour:
        with self._lock:
            for rule in self.rules:
                if not rule.matches(seen):
                    continue
                if rule.passed < rule.skip:
                    rule.passed += 1
                    return FORWARD
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.hits += 1
                return rule.behaviour
        return FORWARD

    # -- serving -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), name=f"hostile-conn-{self.port}", daemon=True)
            with self._lock:
                self._open.add(sock)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(POLL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a dripped byte leaves at once
        try:
            seen = self._read_request(sock)
            if seen is None:
                return
            with self._lock:
                self.requests.append(seen)
            exchange = Exchange(self, sock, seen)
            if seen.body_refused:
                exchange.answer(413, b'{"error": "request body too large for the hostile server"}',
                                {"Content-Type": "application/json"})
                return
            with contextlib.suppress(OSError):  # the client went away mid-answer: nothing to tell it
                self._choose(seen)(exchange)
        finally:
            with self._lock:
                self._open.discard(sock)
            _close(sock)

    def _read_request(self, sock: socket.socket) -> Seen | None:
        end = time.monotonic() + 10
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = self._recv(sock, end)
            if not chunk or len(buffer) > HEAD_LIMIT:
                return None
            buffer += chunk
        raw_head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body, refused = bytearray(rest), False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while not body.endswith(b"0\r\n\r\n"):
                chunk = self._recv(sock, end)
                if not chunk:
                    return None
                body += chunk
            body = bytearray(_dechunk(bytes(body)))
        else:
            length = int(headers.get("content-length") or 0)
            refused = length > REQUEST_BODY_LIMIT
            while not refused and len(body) < length:
                chunk = self._recv(sock, end + 20)
                if not chunk:
                    return None
                body += chunk
        return Seen(method.upper(), target, headers, b"" if refused else bytes(body), time.monotonic(), refused)

    def _recv(self, sock: socket.socket, end: float) -> bytes:
        """Some bytes, or b'' at EOF, an error, the server stopping or ``end``."""
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                return sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        sock.close()


def _dechunk(data: bytes) -> bytes:
    out, rest = bytearray(), data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


def head(status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
         length: int | None = None) -> bytes:
    """A status line and headers; ``Content-Length`` when ``length`` is given; always ``Connection: close``."""
    items = list(headers.items() if isinstance(headers, Mapping) else headers or [])
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Whatever')}"]
    lines += [f"{name}: {value}" for name, value in items]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- behaviours ------------------------------------------------------------------------------


def _forward(exchange: Exchange) -> None:
    seen, upstream = exchange.seen, exchange.server.upstream
    if not upstream:
        text = b'{"error": "no rule matched and there is no upstream"}'
        exchange.answer(404, text, {"Content-Type": "application/json"})
        return
    parts = urlsplit(upstream)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=exchange.server.give_up)
    headers = {name: value for name, value in seen.headers.items() if name not in HOP_BY_HOP}
    try:
        connection.request(seen.method, seen.target, body=seen.body if seen.body else None, headers=headers)
        response = connection.getresponse()
        body = response.read()
        relayed = [(n, v) for n, v in response.getheaders() if n.lower() not in HOP_BY_HOP]
        length = int(response.getheader("Content-Length") or 0) if seen.method == "HEAD" else len(body)
    except (OSError, http.client.HTTPException) as exc:
        text = json.dumps({"error": f"hostile server: upstream failed: {type(exc).__name__}"}).encode()
        exchange.answer(502, text, {"Content-Type": "application/json"})
        return
    finally:
        connection.close()
    exchange.send(head(response.status, relayed, length) + (b"" if seen.method == "HEAD" else body))


FORWARD = Behaviour("forward", _forward)


def forward() -> Behaviour:
    return FORWARD


def respond(status: int = 200, body: bytes | str = b"", headers: Mapping[str, str] | None = None,
            content_type: str = "application/json") -> Behaviour:
    data = body.encode() if isinstance(body, str) else body
    all_headers = {"Content-Type": content_type, **(headers or {})}
    return Behaviour(f"respond {status}", lambda ex: ex.answer(status, data, all_headers))


def json_answer(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Behaviour:
    return respond(status, json.dumps(doc).encode(), headers)


def drip_headers(status: int = 200, body: bytes = b"{}", interval: float = 0.1,
                 content_type: str = "application/json") -> Behaviour:
    """The status line and headers one byte every ``interval`` s: no single read ever times out."""
    def run(ex: Exchange) -> None:
        if ex.drip(head(status, {"Content-Type": content_type, "X-Padding": "p" * 64}, len(body)), interval):
            ex.send(body)

    return Behaviour(f"drip headers of {status}", run)


def drip_body(status: int = 200, body: bytes | None = None, interval: float = 0.1,
              content_type: str = "application/json") -> Behaviour:
    """Headers at once, then the body one byte every ``interval`` s (4 KiB: ~7 minutes at 0.1 s)."""
    if body is None:
        key = b'"error"' if status >= 400 else b'"ok": true, "results"'
        body = b'{' + key + b': "' + b"x" * 4096 + b'"}'
    data = body

    def run(ex: Exchange) -> None:
        if ex.send(head(status, {"Content-Type": content_type}, len(data))):
            ex.drip(data, interval)

    return Behaviour(f"drip body of {status}", run)


def huge_body(megabytes: float, content_length: bool = True, status: int = 200,
              content_type: str = "application/json", prefix: bytes = b'{"ok": true, "results": [') -> Behaviour:
    """``megabytes`` MiB (JSON-looking, never closed), streamed; without ``Content-Length`` it ends at close."""
    total = int(megabytes * 1024 * 1024)
    filler = b" " * (256 * 1024)

    def run(ex: Exchange) -> None:
        if not ex.send(head(status, {"Content-Type": content_type}, total if content_length else None) + prefix):
            return
        left = total - len(prefix)
        while left > 0 and ex.send(filler[: min(left, len(filler))]):
            left -= len(filler)

    return Behaviour(f"huge body {megabytes:g} MiB", run)


_BOMB: bytes | None = None
_BOMB_LOCK = threading.Lock()


def gzip_bomb_bytes(inflated_mib: int = 1024) -> bytes:
    """~1 MB of gzip that inflates to ``inflated_mib`` MiB of zeros; made once (about 2 s), then cached."""
    global _BOMB
    with _BOMB_LOCK:
        if _BOMB is None:
            compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
            zeros = bytes(1024 * 1024)
            parts = [compressor.compress(zeros) for _ in range(inflated_mib)]
            parts.append(compressor.flush())
            _BOMB = b"".join(parts)
        return _BOMB


def gzip_bomb(status: int = 200, content_type: str = "application/json") -> Behaviour:
    def run(ex: Exchange) -> None:
        bomb = gzip_bomb_bytes()
        ex.send(head(status, {"Content-Type": content_type, "Content-Encoding": "gzip"}, len(bomb)) + bomb)

    return Behaviour("gzip bomb", run, prepare=gzip_bomb_bytes)


def nested_json(depth: int = 100_000, status: int = 200, content_type: str = "application/json") -> Behaviour:
    """``[[[[…]]]]``: valid JSON that a recursive parser cannot read (RecursionError, not ValueError)."""
    return respond(status, b"[" * depth + b"]" * depth, content_type=content_type)


def html_titles(status: int = 500, size: int = 300_000) -> Behaviour:
    """An HTML page of ``size`` bytes of unclosed ``<title>`` tags."""
    tag = b"<title>"
    body = b"<html><head>" + tag * (size // len(tag))
    return respond(status, body, content_type="text/html")


def redirect(location: str, status: int = 302) -> Behaviour:
    return respond(status, b"", {"Location": location}, content_type="text/plain")


def echo_forms(text: str) -> list[tuple[str, str]]:
    """``text`` in the encodings a careless error page might use, base64 first."""
    return [
        ("base64", base64.b64encode(text.encode()).decode()),
        ("urlquoted", quote(text, safe="")),
        ("html", html.escape(text)),
        ("json", json.dumps(text)),
        ("raw", text),
    ]


def echo_auth(status: int = 401, headers: Mapping[str, str] | None = None) -> Behaviour:
    """A JSON error (``error``, ``message`` and a registry-style ``errors`` list) echoing the request's
    ``Authorization`` header and query string in several encodings; a Basic header also decoded."""
    def run(ex: Exchange) -> None:
        authorization = ex.seen.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        pieces = []  # the bare credential first: a client that shortens error texts still shows it
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials).decode("utf-8", "replace")
            except ValueError:
                decoded = ""
            pieces += [f"basic.{name}={value}" for name, value in echo_forms(decoded)]
        if scheme.lower() in ("bearer", "token"):
            pieces += [f"token.{name}={value}" for name, value in echo_forms(credentials)]
        pieces += [f"auth.{name}={value}" for name, value in echo_forms(authorization)]
        pieces += [f"query.{name}={value}" for name, value in echo_forms(ex.seen.query)]
        text = "denied, you sent: " + " ".join(pieces)
        doc = {"error": text, "message": text, "errors": [{"code": "UNAUTHORIZED", "message": text}]}
        ex.answer(status, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})})

    return Behaviour(f"echo authorization in a {status}", run)


def truncated(status: int = 200, declared: int = 4096, sent: int = 64, content_type: str = "application/json",
              prefix: bytes = b'{"ok": true, "results": [{"slug": "') -> Behaviour:
    """Declares ``declared`` bytes, sends ``sent`` of them, then resets the connection."""
    body = (prefix + b"x" * sent)[:sent]

    def run(ex: Exchange) -> None:
        if ex.send(head(status, {"Content-Type": content_type}, declared) + body):
            ex.wait(0.05)  # let the bytes leave before the reset
        ex.reset()

    return Behaviour(f"{status} cut after {sent}/{declared} bytes", run)


def applied_then_reset() -> Behaviour:
    """Relay the request upstream, where it takes effect, then reset the connection instead of answering."""
    def run(ex: Exchange) -> None:
        upstream = ex.server.upstream
        assert upstream, "applied_then_reset needs an upstream"
        parts = urlsplit(upstream)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=ex.server.give_up)
        headers = {name: value for name, value in ex.seen.headers.items() if name not in HOP_BY_HOP}
        try:
            connection.request(ex.seen.method, ex.seen.target, body=ex.seen.body or None, headers=headers)
            connection.getresponse().read()
        finally:
            connection.close()
        ex.reset()

    return Behaviour("applied, answer lost", run)


def hang() -> Behaviour:
    """Read the request, never answer; ends when the client gives up, the server stops, or after ``give_up``."""
    def run(ex: Exchange) -> None:
        while ex.wait(0.1):
            pass

    return Behaviour("hang", run)
