"""The simulator's HTTP plumbing: one threaded server dispatching to pluggable components.

A component is any object with ``handle(request) -> Response | None``; the first that answers
wins, so the control plane, tenants, forge and registry stay separate modules. No taker is a 404;
every request is recorded in ``SimServer.requests``. See ``docs/simulator.md``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    reset: bool = False  # drop the connection without answering

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain") -> Response:
        return cls(status, text.encode(), {"Content-Type": content_type})


class Component(Protocol):
    def handle(self, request: Request) -> Response | None: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a 1000-tenant verify round connects all at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a cut exchange, a cancelled run) is normal here, not a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class SimServer:
    """A threaded HTTP server on loopback; ``with SimServer([...]) as server:`` runs it."""

    def __init__(self, components: Sequence[Component], host: str = "127.0.0.1", port: int = 0,
                 record: bool = True) -> None:
        self.components = list(components)
        self.record = record  # off for benches: a 50,000-tenant run would keep every request
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fleet-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dispatch(self, request: Request) -> Response:
        if self.record:
            with self._lock:
                self.requests.append(request)
        for component in self.components:
            response = component.handle(request)
            if response is not None:
                return response
        return Response.json({"error": f"no route for {request.method} {request.path}"}, 404)

    def seen(self, path_prefix: str = "", method: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix) and (not method or r.method == method)]


def _handler_for(server: SimServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: don't stall on delayed ACKs

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # the simulator is quiet; tests read server.requests instead

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            response = server.dispatch(request)
            if response.reset:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            try:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a read timeout): nothing to say

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve

    return Handler
