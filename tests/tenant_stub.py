"""A scripted tenant on loopback: real HTTP answers for the ``/buildinfo`` reader's edge cases.

The reader talks to urllib3's connection pool directly, below ``requests.Session.send`` where
requests-mock patches, so its tests need a server that answers over real sockets. The API stays
close to requests-mock's, so a test reads the same: ``stub.get(path, json=...)``, a list of
answers served in order (the last repeats), ``request_history``, ``call_count``, ``last_request``.

What requests-mock raised as an exception is done to the socket here (:data:`Fault`): the
connection reset, closed without an answer, or held until the client gives up.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import socket
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

ANY = "*"  # a path that answers for every path not registered on its own
Fault = Literal["reset", "close", "stall"]  # RST without answering; FIN without answering; never answer


@dataclass(frozen=True)
class Seen:
    """One request as it arrived: what requests-mock's ``request_history`` entries offered."""

    method: str
    path: str  # without the query
    query: str
    headers: Message  # names case-insensitive, as on the wire


Body = Any  # a value, or a callable of the :class:`Seen` request returning it (a dynamic answer)


@dataclass(frozen=True, kw_only=True)
class Scripted:
    """One answer. ``close_delimited``: no Content-Length, the body ends when the connection closes."""

    status_code: int = 200
    json: Body = None
    text: Body = None
    content: Body = None
    headers: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None
    close_delimited: bool = False
    fault: Fault | None = None

    def body(self, request: Seen) -> tuple[bytes, str | None]:
        """The bytes to send and their Content-Type (none for raw ``content``)."""
        def value(given: Body) -> Any:
            return given(request) if callable(given) else given

        if self.json is not None:
            return jsonlib.dumps(value(self.json)).encode(), "application/json"
        if self.text is not None:
            return value(self.text).encode(), "text/plain; charset=utf-8"
        return value(self.content) or b"", None


NOT_FOUND = Scripted(status_code=404, json={"error": "no answer scripted for this path"})


class TenantStub:
    """A threaded HTTP/1.1 (keep-alive) server on 127.0.0.1; ``with TenantStub() as stub:`` runs it."""

    def __init__(self) -> None:
        self.request_history: list[Seen] = []
        self._routes: dict[str, list[Scripted]] = {}
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="tenant-stub", daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def get(self, path: str, answers: Sequence[Mapping[str, Any]] | None = None, **answer: Any) -> None:
        """What GET ``path`` (or :data:`ANY`) answers: one answer (keywords of :class:`Scripted`), or a list
        served in order whose last repeats. Registering a path again replaces its answers and starts them over.
        A path not registered answers 404; every request is in :attr:`request_history`."""
        scripted = [Scripted(**a) for a in answers] if answers is not None else [Scripted(**answer)]
        with self._lock:
            self._routes[path], self._served[path] = scripted, 0

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self.request_history)

    @property
    def last_request(self) -> Seen | None:
        with self._lock:
            return self.request_history[-1] if self.request_history else None

    def start(self) -> TenantStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and hang up on kept-alive connections (an injected client may still hold one)."""
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            for sock in self._open:
                _shut(sock)
        self._httpd.server_close()

    def __enter__(self) -> TenantStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, request: Seen) -> Scripted:
        with self._lock:
            self.request_history.append(request)
            path = request.path if request.path in self._routes else ANY
            if path not in self._routes:
                return NOT_FOUND
            scripted, served = self._routes[path], self._served[path]
            self._served[path] = served + 1
            return scripted[min(served, len(scripted) - 1)]


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a cap reached, a timeout) is what the tests provoke."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(stub: TenantStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: don't stall on delayed ACKs

        def setup(self) -> None:
            super().setup()
            with stub._lock:
                stub._open.add(self.connection)

        def finish(self) -> None:
            with stub._lock:
                stub._open.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            request = Seen(self.command, parts.path, parts.query, self.headers)
            scripted = stub._answer(request)
            if scripted.fault is not None:
                self.close_connection = True
                getattr(self, f"_{scripted.fault}")()
                return
            body, content_type = scripted.body(request)
            headers = {name.lower(): value for name, value in scripted.headers.items()}
            if content_type and "content-type" not in headers:
                headers["content-type"] = content_type
            if scripted.close_delimited:
                headers["connection"] = "close"
            elif "content-length" not in headers:
                headers["content-length"] = str(len(body))
            # close-delimited, or a declared length the body does not match: the connection ends here
            self.close_connection = headers.get("content-length") != str(len(body))
            self.send_response(scripted.status_code, scripted.reason)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _reset(self) -> None:
            """RST: with SO_LINGER 0, closing the socket resets it (the request's reader shares it, so it goes
            first; the writer does not, and must stay open for the stdlib's flush after this)."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()

        def _close(self) -> None:
            _shut(self.connection)

        def _stall(self) -> None:
            """Never answer; return once the client hangs up (its timeout) or the stub stops."""
            self.connection.settimeout(0.05)
            while not stub._stopping.is_set():
                try:
                    if not self.connection.recv(4096):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    return Handler
