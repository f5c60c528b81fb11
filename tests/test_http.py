"""The HTTP layer against servers misbehaving at the byte level (a raw socket on loopback).

SECURITY.md § Threat model: deadlines, body caps, parsing, redirects. Budgets are small and real:
every case ends by the watchdog or a cap, and each test asserts what the client reported, not
how long it took.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests.adapters

from deploy import http
from deploy.clock import Clock, Deadline


@contextmanager
def raw_server(handler) -> Iterator[str]:
    """Serves every connection with ``handler(conn, request_bytes)``; yields the base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    seen: list[bytes] = []

    def serve_one(conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                request = conn.recv(65536)
                seen.append(request)
                handler(conn, request)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        listener.close()
    raw_server.seen = seen  # type: ignore[attr-defined]


def drip(conn: socket.socket, data: bytes, every: float = 0.05, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    for byte in data:
        if time.monotonic() > end:
            return
        conn.sendall(bytes([byte]))
        time.sleep(every)


LEAN = {"lean": False}  # set per test by `transport`


@pytest.fixture(autouse=True, params=[False, True], ids=["requests", "urllib3"])
def transport(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every case runs on both paths of a GET: through requests (CP, forge, registry) and
    straight through urllib3's pool (a lean client: the tenants' /buildinfo reads)."""
    LEAN["lean"] = request.param
    yield
    LEAN["lean"] = False


def client(delays: tuple[float, ...] = (), overall: float = 30.0, cap: int = 1024 * 1024) -> http.Client:
    clock = Clock()
    return http.Client(http.Policy(delays, cap=cap, lean=LEAN["lean"]), clock, Deadline.starting_now(clock, overall))


@pytest.mark.parametrize("close", [b"", b"Connection: close\r\n"], ids=["keep-alive", "close"])
@pytest.mark.parametrize("what", ["headers", "body", "502-body"])
def test_a_dripping_server_is_cut_off_by_the_attempt_budget(what: str, close: bytes) -> None:
    """SECURITY.md § Deadlines: a byte every 50 ms keeps every socket read alive; the budget still holds.
    With `Connection: close` the socket belongs to the response, not the connection: cut it there too."""
    head = {"headers": b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 500,
            "body": b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 500\r\n\r\n",
            "502-body": b"HTTP/1.1 502 Bad Gateway\r\n" + close + b"Content-Length: 500\r\n\r\n"}[what]

    def handler(conn: socket.socket, _: bytes) -> None:
        if what == "headers":
            drip(conn, head)
        else:
            conn.sendall(head)
            drip(conn, b"x" * 500)

    with raw_server(handler) as url, pytest.raises(http.TransportError) as caught:
        client(delays=(0.01,)).request("GET", url + "/x", budget=0.5)
    assert caught.value.timed_out
    assert caught.value.attempts == 2
    assert str(caught.value) == f"{url.removeprefix('http://')}: no complete answer within 0.5 s (2 attempts)"


@pytest.mark.parametrize("what", ["headers", "body"])
def test_behind_a_proxy_a_dripping_answer_is_cut_off_by_the_budget_too(monkeypatch, no_proxy_settings,
                                                                        what: str) -> None:
    """SECURITY.md § Deadlines: requests builds its own pools for a proxy; they are watched as well."""
    def handler(conn: socket.socket, request: bytes) -> None:
        assert request.startswith(b"GET http://tenant.example.test/x ")  # asked of the proxy
        if what == "headers":
            drip(conn, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 500)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
            drip(conn, b"x" * 500)

    with raw_server(handler) as url, pytest.raises(http.TransportError) as caught:
        monkeypatch.setenv("HTTP_PROXY", url)
        client().request("GET", "http://tenant.example.test/x", budget=0.5)
    assert caught.value.timed_out
    assert str(caught.value) == "tenant.example.test: no complete answer within 0.5 s"


def test_behind_an_https_proxy_a_dripped_tunnel_is_cut_off_by_the_budget_too(monkeypatch, no_proxy_settings) -> None:
    """The CONNECT and the tenant's TLS handshake come before the request: one attempt with it."""
    def handler(conn: socket.socket, request: bytes) -> None:
        assert request.startswith(b"CONNECT tenant.example.test:443 ")
        drip(conn, b"HTTP/1.1 200 Connection established\r\nX-Slow: " + b"a" * 500)

    with raw_server(handler) as url, pytest.raises(http.TransportError) as caught:
        monkeypatch.setenv("HTTPS_PROXY", url)
        client().request("GET", "https://tenant.example.test/x", budget=0.5)
    assert caught.value.timed_out, caught.value


def test_the_watchdog_never_shuts_a_connection_another_exchange_has_taken(monkeypatch) -> None:
    """urllib3 returns a connection to its pool as its body is read. The first exchange is held
    just after (its expiry passes meanwhile) while a second one takes the same connection: the
    watchdog must cut the first attempt, not the second exchange."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    def handler(conn: socket.socket, request: bytes) -> None:
        time.sleep(0.25)  # the first answer comes just before its 0.3 s budget ends
        conn.sendall(answer)
        while conn.recv(65536):
            time.sleep(0.4)  # the second, on the same connection, past the first one's expiry
            conn.sendall(answer)

    end_attempt, held = http._Exchange.end_attempt, threading.Event()

    def held_after_the_body(self: http._Exchange) -> None:
        if self.url.endswith("/first") and self.attempt is not None and not held.is_set():
            held.set()
            time.sleep(0.4)
        end_attempt(self)

    monkeypatch.setattr(http._Exchange, "end_attempt", held_after_the_body)
    shared, outcomes = client(), []

    def first() -> None:
        with contextlib.suppress(http.TransportError):
            shared.request("GET", url + "/first", budget=0.3)

    with raw_server(handler) as url:
        thread = threading.Thread(target=first)
        thread.start()
        assert held.wait(5)
        outcomes.append(shared.request("GET", url + "/second", budget=5).status)
        thread.join(5)
    assert outcomes == [200]


def test_the_overall_deadline_cuts_an_attempt_whose_own_budget_is_longer() -> None:
    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
        drip(conn, b"x" * 500)

    started = time.monotonic()
    with raw_server(handler) as url, pytest.raises(http.TransportError):
        client(overall=0.6).request("GET", url, budget=60)
    assert time.monotonic() - started < 30  # far below the 60 s budget: the deadline cut it


def test_a_body_cut_by_a_reset_is_retried_and_the_attempts_are_counted() -> None:
    """SECURITY.md § Deadlines: a dropped body is a dropped connection, retried as one."""

    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    with raw_server(handler) as url, pytest.raises(http.TransportError) as caught:
        client(delays=(0.01, 0.01)).request("POST", url, budget=2, json={})
    assert caught.value.attempts == 3 and len(raw_server.seen) == 3  # type: ignore[attr-defined]
    assert "(3 attempts)" in str(caught.value) and not caught.value.timed_out


def test_a_success_body_over_its_cap_is_refused_without_reading_it_all() -> None:
    """SECURITY.md § Body caps."""

    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # no Content-Length: read until the cap
        for _ in range(64):
            conn.sendall(b"x" * 65536)

    with raw_server(handler) as url, pytest.raises(http.TransportError, match="body over 64 KiB"):
        client(cap=64 * 1024).request("GET", url, budget=5)


def test_a_gzip_bomb_costs_at_most_the_cap() -> None:
    """SECURITY.md § Body caps: the cap is on the decoded size, so 100 MiB of zeros never lands in memory."""
    bomb = gzip.compress(b"\0" * (100 * 1024 * 1024), compresslevel=9)

    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb)

    with raw_server(handler) as url, pytest.raises(http.TransportError, match="body over 1 MiB"):
        client(cap=1024 * 1024).request("GET", url, budget=5)


def test_an_error_body_is_read_only_to_its_prefix_and_still_reported() -> None:
    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 10000000\r\n\r\n" + b'{"error": "db down"}' + b" " * 70000)

    with raw_server(handler) as url:
        reply = client().request("GET", url, budget=5)
    assert reply.status == 500 and len(reply.body) == http.ERROR_PREFIX
    assert reply.error_text() == "db down"  # the prefix still holds the server's own words


@pytest.mark.parametrize(("location", "followed"), [("/elsewhere", True), ("http://127.0.0.2:1/x", False)])
def test_redirects_are_followed_only_within_the_same_origin(location: str, followed: bool) -> None:
    """SECURITY.md § Redirects."""

    def handler(conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET /elsewhere"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            # this server answers one request per connection, and says so
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nConnection: close\r\nContent-Length: 6\r\n\r\nsecret"
                         % location.encode())

    with raw_server(handler) as url:
        reply = client().request("GET", url + "/start", budget=5)
    if followed:
        assert (reply.status, reply.body) == (200, b"ok")
    else:
        assert reply.status == 302 and reply.redirect_note == "a redirect to another origin, not followed"


def test_a_followed_redirect_carries_the_same_headers() -> None:
    def handler(conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET /elsewhere"):
            status = b"200 OK" if b"\r\nx-probe: 1\r\n" in request.lower() else b"400 Bad Request"
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nConnection: close\r\n"
                         b"Content-Length: 0\r\n\r\n")

    with raw_server(handler) as url:
        reply = client().request("GET", url + "/start", budget=5, headers={"X-Probe": "1"})
    assert reply.status == 200


def test_abort_all_cuts_an_exchange_in_flight() -> None:
    """SECURITY.md § Cancellation: a tenant that never answers does not hold a cancelled run."""
    answered = threading.Event()

    def handler(conn: socket.socket, _: bytes) -> None:
        answered.wait(20)

    errors: list[BaseException] = []

    def call(url: str) -> None:
        try:
            client().request("GET", url, budget=20)
        except http.TransportError as exc:
            errors.append(exc)

    watchdog = http._WATCHDOG
    with raw_server(handler) as url:
        thread = threading.Thread(target=call, args=(url,))
        thread.start()
        time.sleep(0.3)
        try:
            http.abort_all()
            thread.join(5)
        finally:
            watchdog.aborted_at = None
            answered.set()
    assert not thread.is_alive() and errors and errors[0].timed_out  # type: ignore[attr-defined]


def test_deeply_nested_json_is_an_unusable_body_not_a_crash() -> None:
    """SECURITY.md § Parsing."""
    with pytest.raises(http.UnusableBody, match="nested too deeply"):
        http.parse_json(b"[" * 200_000)
    assert http.error_text(b'{"error": ' + b"[" * 200_000) == '{"error": ' + "[" * 289 + "…"


def test_error_text_finds_a_title_in_linear_time_and_ignores_unclosed_ones() -> None:
    """SECURITY.md § Parsing: 2 MB of unclosed <title> tags took minutes with a lazy regex."""
    bomb = b"<html>" + b"<title>" * 300_000
    assert http.error_text(bomb) == "HTML page (not JSON)"
    assert http.error_text(b"<!DOCTYPE html><TITLE>502 Bad Gateway</TITLE>") == "HTML page: 502 Bad Gateway"


def test_a_body_that_is_not_the_gzip_it_claims_is_a_transport_error_not_a_crash() -> None:
    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!")

    with raw_server(handler) as url, pytest.raises(http.TransportError, match="does not decode as its Content-En"):
        client().request("GET", url, budget=5)


def test_a_body_read_until_close_that_the_watchdog_cut_is_not_taken_as_complete() -> None:
    """No Content-Length: EOF ends the body. The watchdog's shutdown is an EOF too, so without a
    check a piece of an answer would pass as all of it."""

    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"ok": tr')
        drip(conn, b"ue" + b" " * 500)

    with raw_server(handler) as url, pytest.raises(http.TransportError) as caught:
        client().request("GET", url, budget=0.5)
    assert caught.value.timed_out


def test_once_cancelled_a_request_is_not_retried_after_a_wait() -> None:
    """SECURITY.md § Cancellation: a retry wait after SIGTERM would hold the exit past 2 s."""

    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")

    watchdog = http._WATCHDOG
    with raw_server(handler) as url:
        http.abort_all()
        try:
            with pytest.raises(http.Aborted):
                client(delays=(30.0,)).request("GET", url, budget=5)
        finally:
            watchdog.aborted_at = None


def test_a_lean_get_asks_for_the_path_and_query_without_the_fragment() -> None:
    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}')

    with raw_server(handler) as url:
        client().request("GET", f"{url}?token=t1#part")
        client().request("GET", f"{url}/a//b?x=1")
    first, second = (request.split(b"\r\n")[0] for request in raw_server.seen)  # type: ignore[attr-defined]
    assert (first, second) == (b"GET /?token=t1 HTTP/1.1", b"GET /a//b?x=1 HTTP/1.1")


def test_a_credential_in_the_url_is_sent_as_requests_sends_it() -> None:
    """A lean client leaves a URL with userinfo to requests, which turns it into Basic auth."""

    def handler(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}')

    with raw_server(handler) as url:
        client().request("GET", url.replace("http://", "http://robot:pw@") + "/x")
    assert b"\r\nAuthorization: Basic cm9ib3Q6cHc=\r\n" in raw_server.seen[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("bundle", [None, "/etc/ssl/certs/ca-certificates.crt"])
def test_a_lean_get_verifies_tls_with_the_ca_bundle_requests_would_use(monkeypatch, bundle: str | None) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    if bundle:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    clock = Clock()
    lean = http.Client(http.Policy(lean=True), clock, Deadline.starting_now(clock, 30))
    pool, absolute = lean._route("https://t1.example.test/buildinfo", "https://t1.example.test")
    assert (pool.cert_reqs, absolute) == ("CERT_REQUIRED", False)
    if pool.ca_certs is None and bundle is None:  # requests 2.32.2: its bundle, in a context it loaded once
        assert pool.conn_kw.get("ssl_context") is requests.adapters._preloaded_ssl_context
    else:
        assert pool.ca_certs == (bundle or requests.adapters.DEFAULT_CA_BUNDLE_PATH)


def test_a_refused_connection_is_reported_as_refused_not_as_a_timeout() -> None:
    """urllib3 2 derives NewConnectionError from ConnectTimeoutError; a refusal is not a timeout."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(http.TransportError) as caught:
        client().request("GET", f"http://127.0.0.1:{port}/x", budget=5)
    assert (caught.value.cause, caught.value.timed_out) == ("connection refused", False)
