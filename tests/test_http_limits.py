"""The server's HTTP limits on a real uvicorn server on 127.0.0.1, with the product's own protocol and
gate around a small app: a request head that dribbles is cut off, a body that stalls gets 408, a body
over its limit gets 413, and connections beyond the cap get 503. Short limits keep the tests quick."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from playground.api.metrics import ApiCounters
from playground.server.access import Access
from playground.server.gate import BodyLimits, Gate
from playground.server.http import HeadDeadlineH11
from tests.server import free_port

HEAD_SECONDS, IDLE_SECONDS, MAX_CONNECTIONS = 1.0, 1.0, 4


class QuickHead(HeadDeadlineH11):
    head_timeout = HEAD_SECONDS


def small_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(2 * HEAD_SECONDS)  # longer than the head deadline: must not cut the answer
        return {"ok": True}

    app.add_middleware(Gate, access=Access(b"k" * 32), counters=ApiCounters(),
                       limits=BodyLimits(upload_mb=1, idle_seconds=IDLE_SECONDS))
    return app


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(small_app(), host="127.0.0.1", port=port, http=QuickHead, log_level="warning",
                            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if b"\r\n\r\n" in data and (b"content-length: 0" in data.lower() or data.endswith(b"}")):
            break
    return data


@pytest.mark.timeout(30)
def test_a_dribbled_head_is_cut_off(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert HEAD_SECONDS * 0.8 < time.monotonic() - start < HEAD_SECONDS + 3


@pytest.mark.timeout(30)
def test_a_complete_head_is_answered_however_long_the_handler_takes(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.timeout(30)
def test_a_stalled_body_gets_408(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        start = time.monotonic()
        reply = answer(sock)
        assert reply.startswith(b"HTTP/1.1 408") and b"stalled" in reply
        assert time.monotonic() - start < IDLE_SECONDS + 3


@pytest.mark.timeout(30)
def test_bodies_over_the_limit_get_413_declared_or_not(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 413")
    with connect(port) as sock:  # chunked: no length up front, counted as it arrives
        chunk = b"x" * 65536
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(20):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server may close as soon as it has answered
        assert answer(sock).startswith(b"HTTP/1.1 413")
    with connect(port) as sock:
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        reply = answer(sock)
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"bytes":5}')


@pytest.mark.timeout(30)
def test_connections_beyond_the_cap_get_503(port: int) -> None:
    idle = [connect(port) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    try:
        with connect(port) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    with connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 200")
