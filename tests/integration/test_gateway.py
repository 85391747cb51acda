"""The gateway as a black box: a real `tether gateway` process, a real upstream on loopback, and
raw sockets where the request must be malformed on purpose."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest

from tether.problems import CATALOGUE, MEDIA_TYPE

from .servers import (
    free_port,
    fuzz_seed,
    gateway_stderr,
    listening,
    raw_exchange,
    read_access_log,
    read_request,
    spawn_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration

RID = "5b0c6a52-3d2e-4c4e-9a53-8d8f3cd1a1f0"
GOOD = {"X-Request-ID": RID, "X-App-ID": "checkout-web", "X-User-ID": "42"}


@dataclass
class Upstream:
    """A small HTTP/1.1 upstream that records requests and when their connections closed."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                self.requests.append(request)
                target, headers = request["target"], request["headers"]
                if target.startswith("/v1/slow"):  # work for 5 s, watching for a disconnect
                    work = asyncio.ensure_future(asyncio.sleep(5))
                    gone = asyncio.ensure_future(reader.read(1))
                    await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
                    work.cancel()
                    if gone.done():
                        return  # the gateway closed the connection: stop working
                    gone.cancel()
                await self.answer(writer, target, headers, request["body"])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed_at.append(time.monotonic())
            writer.close()

    async def answer(
        self, writer: asyncio.StreamWriter, target: str, headers: dict[str, str], body: str
    ) -> None:
        status, content_type, payload = 200, "application/json", b""
        if target.startswith("/v1/fail"):
            status, payload = 500, b'{"message": "database on fire"}'
        elif target.startswith("/v1/problem"):
            status, content_type = 503, "application/problem+json"
            payload = b'{"type": "urn:x:busy", "title": "Busy", "status": 503}'
        elif target.startswith("/v1/text-error"):
            status, content_type, payload = 404, "text/plain", b"nope"
        own = ""
        if target.startswith("/v1/echo-id"):  # answers as a tether service does
            own = f"x-request-id: {headers.get('x-request-id')}\r\nserver-timing: app;dur=1.0\r\n"
        if not payload:
            payload = json.dumps({"target": target, "headers": headers, "body": body}).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{own}"
            f"content-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()


CONFIG = """\
listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin}
zone: zone-a
deadline: {{default: 3s, max: 30s, margin: 5ms}}
conventions:
  request_id: require
  app_ids: [checkout-web, order-service]
limits:
  header_timeout: 500ms
  body_timeout: 500ms
  idle_timeout: 1s
  max_header_bytes: 4096
  max_body_bytes: 1000
policies:
  same_zone:  {{connect: 300ms, read: 1500ms, retries: 1}}
  cross_zone: {{connect: 500ms, read: 3s, retries: 0}}
services:
  user:
    versions: [v1, v2]
    endpoints:
      - address: 127.0.0.1:{upstream}
  down:
    versions: [v1]
    endpoints:
      - address: 127.0.0.1:{dead}
  events:  # long-lived streams: a budget of its own
    versions: [v1]
    deadline: {{default: 20s, max: 60m}}
    endpoints:
      - address: 127.0.0.1:{upstream}
"""


@dataclass
class Gateway:
    url: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path

    def access_log(self) -> list[dict[str, Any]]:
        return read_access_log(self.log_path)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    recorder = Upstream()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    yield recorder
    server.close()


@pytest.fixture
async def gateway(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    # A port free_port() saw free can be taken before the gateway binds it (an outgoing
    # connection's own port comes from the same range): a gateway that exits before listening
    # is started again on new ports; one that never listens fails the test with its stderr.
    for _ in range(3):
        port, admin, dead = free_port(), free_port(), free_port()
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(port=port, admin=admin, upstream=upstream.port, dead=dead))
        log_path = tmp_path / "access.log"
        process = await spawn_gateway(config, log_path)
        stopped = lambda: process.returncode is not None  # noqa: B023, E731 - used at once
        if await listening(port, 10, stopped=stopped):
            break
        if process.returncode is None:  # running, yet not listening after 10 s
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
            pytest.fail(f"the gateway did not listen: {gateway_stderr(log_path).read_text()}")
    else:
        pytest.fail(f"the gateway exited thrice: {gateway_stderr(log_path).read_text()}")
    yield Gateway(f"http://127.0.0.1:{port}", port, process, log_path)
    if process.returncode is None:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def get(
    gateway: Gateway, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            kwargs.pop("method", "GET"), gateway.url + path, headers=headers, **kwargs
        ) as answer,
    ):
        body = await answer.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body
        return answer.status, dict(answer.headers), parsed


async def raw(gateway: Gateway, data: bytes, *, wait: float = 2.0) -> tuple[bytes, bool]:
    """Send raw bytes; return what came back and whether the gateway closed the connection."""
    return await raw_exchange(gateway.port, data, wait=wait)


async def test_a_conforming_request_is_proxied(gateway: Gateway, upstream: Upstream) -> None:
    """Routing, the stripped prefix, the query, the margin, forwarding headers, Server-Timing."""
    status, headers, body = await get(
        gateway, "/api/user/v2/items/7?color=red&x", {**GOOD, "X-Request-Timeout": "800"}
    )
    assert status == 200
    assert body["target"] == "/v2/items/7?color=red&x"
    sent = body["headers"]
    assert 780 <= int(sent["x-request-timeout"]) <= 795
    assert sent["x-request-id"] == RID
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert headers["X-Request-ID"] == RID
    assert "budget;dur=800.0" in headers["Server-Timing"]
    await asyncio.sleep(0.2)  # access log lines are written in batches every 100 ms
    entry = gateway.access_log()[-1]
    assert (entry["status"], entry["service"], entry["version"], entry["app_id"]) == (
        200,
        "user",
        "v2",
        "checkout-web",
    )
    assert entry["budget_ms"] == 800.0


async def test_the_answer_is_framed_once(gateway: Gateway, upstream: Upstream) -> None:
    """The upstream's Content-Length is kept and no Transfer-Encoding is added (an answer with
    both would be ambiguous: a response-smuggling vector)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items()).encode()
    answer, _ = await raw(
        gateway, b"GET /api/user/v1/a HTTP/1.1\r\nhost: x\r\n" + head + b"connection: close\r\n\r\n"
    )
    head_part = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert answer.startswith(b"HTTP/1.1 200")
    assert head_part.count(b"content-length:") == 1
    assert b"transfer-encoding" not in head_part


async def test_an_upstream_that_echoes_the_request_id_gives_the_client_one(
    gateway: Gateway, upstream: Upstream
) -> None:
    """A tether service behind the gateway echoes X-Request-ID too: the client gets the
    gateway's one header, not two; both hops' Server-Timing reach it."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.url + "/api/user/v1/echo-id", headers=GOOD) as answer,
    ):
        await answer.read()
        assert answer.status == 200
        assert answer.headers.getall("X-Request-ID") == [RID]
        timings = answer.headers.getall("Server-Timing")
    assert timings[0] == "app;dur=1.0"
    assert timings[1].startswith("gateway;dur=")


async def test_a_client_that_expects_100_continue_is_told_to_send_its_body(
    gateway: Gateway, upstream: Upstream
) -> None:
    """`Expect: 100-continue` (curl sends it for large bodies and then waits up to 1 s): once
    the request passes the gateway's checks, the gateway answers `100 Continue` at once, reads
    the body and proxies it; the upstream gets the body without the expectation. A request
    the checks refuse gets its final answer instead, and no 100."""
    head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(
            (
                "POST /api/user/v1/items HTTP/1.1\r\nhost: x\r\n"
                + head
                + "content-type: application/json; charset=utf-8\r\ncontent-length: 9\r\n"
                "expect: 100-continue\r\n\r\n"
            ).encode()
        )
        sent = time.monotonic()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert time.monotonic() - sent < 0.2
        writer.write(b'{"n": 42}')
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert final.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    seen = upstream.requests[-1]
    assert seen["body"] == '{"n": 42}'
    assert "expect" not in seen["headers"]
    refused, _ = await raw(
        gateway,
        b"POST /api/user/v1/items HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n"
        b"expect: 100-continue\r\n\r\n",
        wait=1,
    )
    assert refused.startswith(b"HTTP/1.1 400"), refused[:60]


async def test_budgets_are_clamped_and_defaulted(gateway: Gateway, upstream: Upstream) -> None:
    """An hour asked for is clamped to deadline.max; no header gives deadline.default."""
    _, _, clamped = await get(gateway, "/api/user/v1/a", {**GOOD, "X-Request-Timeout": "3600000"})
    _, _, default = await get(gateway, "/api/user/v1/a", GOOD)
    assert 29_900 <= int(clamped["headers"]["x-request-timeout"]) <= 29_995
    assert 2_900 <= int(default["headers"]["x-request-timeout"]) <= 2_995


async def test_a_service_with_its_own_deadline_settings(
    gateway: Gateway, upstream: Upstream
) -> None:
    """A service's own `deadline` (here default 20s, max 60m) replaces the gateway's for the
    requests routed to it: an hour asked for passes unclamped, none gives 20 s. The access
    log's `budget_ms` is the budget the request got."""
    hour = {**GOOD, "X-Request-Timeout": "3600000"}
    _, _, long = await get(gateway, "/api/events/v1/a", hour)
    _, _, default = await get(gateway, "/api/events/v1/a", GOOD)
    _, _, above = await get(gateway, "/api/events/v1/a", {**GOOD, "X-Request-Timeout": "7200000"})
    assert 3_599_900 <= int(long["headers"]["x-request-timeout"]) <= 3_599_995
    assert 19_900 <= int(default["headers"]["x-request-timeout"]) <= 19_995
    assert 3_599_900 <= int(above["headers"]["x-request-timeout"]) <= 3_599_995  # its own max
    await asyncio.sleep(0.2)  # access log lines are written in batches every 100 ms
    budgets = [line["budget_ms"] for line in gateway.access_log() if line["service"] == "events"]
    assert [round(budget / 1000) for budget in budgets] == [3600, 20, 3600]


@pytest.mark.parametrize(
    ("path", "headers", "status", "kind"),
    [
        ("/api/user/v1/a", {**GOOD, "X-Request-ID": ""}, 400, "validation-failed"),
        (
            "/api/user/v1/a",
            {"X-App-ID": "checkout-web", "X-User-ID": "1"},
            400,
            "validation-failed",
        ),
        ("/api/user/v1/a", {**GOOD, "X-Request-ID": "123"}, 400, "validation-failed"),
        ("/api/user/v1/a", {**GOOD, "X-App-ID": "bad app"}, 400, "validation-failed"),
        ("/api/user/v1/a", {**GOOD, "X-App-ID": "intruder"}, 403, "forbidden-app"),
        (
            "/api/user/v1/a",
            {k: v for k, v in GOOD.items() if k != "X-User-ID"},
            400,
            "validation-failed",
        ),
        ("/api/nobody/v1/a", GOOD, 404, "route-not-found"),
        ("/api/user/v7/a", GOOD, 404, "route-not-found"),
        ("/api/user/a?version=v1", GOOD, 404, "route-not-found"),
        ("/api/user/v1/a", {**GOOD, "X-Request-Timeout": "soon"}, 400, "invalid-deadline-header"),
        (
            "/api/user/v1/a",
            {**GOOD, "X-Request-Deadline": str(int(time.time() * 1000) - 5000)},
            504,
            "deadline-expired-on-arrival",
        ),
    ],
)
async def test_refusals_are_problems(
    gateway: Gateway, upstream: Upstream, path: str, headers: dict[str, str], status: int, kind: str
) -> None:
    """Every convention, routing and deadline refusal is a problem; nothing reaches upstream."""
    got, answer_headers, body = await get(gateway, path, headers)
    assert got == status
    assert answer_headers["Content-Type"] == "application/problem+json"
    assert body["type"].endswith(kind)
    assert body["status"] == status
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path",
    [
        b"/api/user/v1/%2e%2e/%2e%2e/down/v1/x",
        b"/api/user/v1/../../down/v1/x",
        b"/api/user/v1/a%2f..%2f..",
    ],
)
async def test_paths_that_escape_their_prefix_are_400(
    gateway: Gateway, upstream: Upstream, path: bytes
) -> None:
    """Sent as written (clients normalize such paths, so raw bytes): 400, nothing upstream."""
    head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items()).encode()
    answer, _ = await raw(
        gateway, b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n" + head + b"connection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"climbs out" in answer
    assert upstream.requests == []


async def test_bodies_must_be_json(gateway: Gateway, upstream: Upstream) -> None:
    """A body without JSON in UTF-8 is 415; with it, the body reaches the upstream."""
    status, _, _ = await get(
        gateway,
        "/api/user/v1/a",
        GOOD,
        method="POST",
        data=b"{}",
    )
    assert status == 415
    status, _, body = await get(
        gateway,
        "/api/user/v1/a",
        {**GOOD, "Content-Type": "application/json; charset=utf-8"},
        method="POST",
        data=b'{"n": 1}',
    )
    assert status == 200
    assert body["body"] == '{"n": 1}'


async def test_upstream_errors_become_problems(gateway: Gateway, upstream: Upstream) -> None:
    """A JSON error keeps its status and message; problem+json passes through unchanged."""
    status, headers, body = await get(gateway, "/api/user/v1/fail", GOOD)
    assert status == 500
    assert headers["Content-Type"] == "application/problem+json"
    assert body["detail"] == "database on fire"
    assert body["request_id"] == RID
    status, headers, body = await get(gateway, "/api/user/v1/problem", GOOD)
    assert status == 503
    assert body == {"type": "urn:x:busy", "title": "Busy", "status": 503}
    status, _, body = await get(gateway, "/api/user/v1/text-error", GOOD)
    assert status == 404
    assert body["title"] == "Not Found"


async def test_a_refused_upstream_is_503(gateway: Gateway) -> None:
    """Nothing listening at the endpoint: 503 upstream-unavailable."""
    status, _, body = await get(gateway, "/api/down/v1/x", GOOD)
    assert status == 503
    assert body["type"].endswith("upstream-unavailable")


async def test_deadline_gives_504_and_closes_the_upstream_connection(
    gateway: Gateway, upstream: Upstream
) -> None:
    """A 200 ms budget and a 5 s upstream: 504 at ~200 ms, and the upstream sees its
    connection closed right then (so it can stop its work)."""
    start = time.monotonic()
    status, _, body = await get(gateway, "/api/user/v1/slow", {**GOOD, "X-Request-Timeout": "200"})
    answered = time.monotonic() - start
    await asyncio.sleep(0.05)
    assert status == 504
    assert body["type"].endswith("deadline-exceeded")
    assert 0.18 <= answered <= 0.25
    assert len(upstream.closed_at) == 1
    assert upstream.closed_at[0] - start <= 0.22


async def test_a_client_that_leaves_abandons_the_upstream_call(
    gateway: Gateway, upstream: Upstream
) -> None:
    """The client disconnects mid-request: the upstream connection closes within 10 ms."""
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items())
    writer.write(f"GET /api/user/v1/slow HTTP/1.1\r\nhost: x\r\n{head}\r\n".encode())
    await writer.drain()
    for _ in range(200):
        if upstream.requests:
            break
        await asyncio.sleep(0.005)
    writer.close()
    left = time.monotonic()
    for _ in range(200):
        if upstream.closed_at:
            break
        await asyncio.sleep(0.002)
    assert upstream.closed_at
    assert upstream.closed_at[0] - left <= 0.01 + 0.005


async def test_the_budget_starts_at_the_first_byte(gateway: Gateway, upstream: Upstream) -> None:
    """A slow sender spends budget: headers sent in three parts over 200 ms leave the upstream
    1000 - 200 - margin ms, not 1000 - margin (the clock started at the first byte)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items())
    request = f"GET /api/user/v1/a HTTP/1.1\r\nhost: x\r\n{head}x-request-timeout: 1000\r\n\r\n"
    third = len(request) // 3
    for piece in (request[:third], request[third : 2 * third], request[2 * third :]):
        writer.write(piece.encode())
        await writer.drain()
        await asyncio.sleep(0.1)
    answer = await asyncio.wait_for(reader.read(65536), 2)
    writer.close()
    assert b"200" in answer.split(b"\r\n", 1)[0]
    assert 770 <= int(upstream.requests[-1]["headers"]["x-request-timeout"]) <= 796


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /api/user/v1/a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/user/v1/a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n"
        b"\r\nabcd",
        b"POST /api/user/v1/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
        b"GET /api/user/v1/a HTTP/1.1\r\nhost: x\r\nx-app-id: checkout-web\r\n folded\r\n\r\n",
    ],
    ids=["cl-and-te", "differing-cl", "bad-chunk-size", "obs-fold"],
)
async def test_request_smuggling_is_refused(
    gateway: Gateway, upstream: Upstream, request_bytes: bytes
) -> None:
    """Ambiguous framing: 400 and the connection closed; nothing reaches the upstream."""
    answer, closed = await raw(gateway, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400")
    assert closed
    assert upstream.requests == []


async def test_size_limits(gateway: Gateway, upstream: Upstream) -> None:
    """Headers over max_header_bytes: 431; a body over max_body_bytes: 413."""
    big = "x" * 5000
    answer, closed = await raw(
        gateway, f"GET /api/user/v1/a HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 431")
    assert closed
    status, _, body = await get(
        gateway,
        "/api/user/v1/a",
        {**GOOD, "Content-Type": "application/json; charset=utf-8"},
        method="POST",
        data=b"[" + b"1," * 600 + b"1]",
    )
    assert status == 413
    assert body["type"].endswith("payload-too-large")


async def test_slow_and_silent_clients_are_closed(gateway: Gateway, upstream: Upstream) -> None:
    """Dripping headers, a silent connection and an idle keep-alive are closed at their
    limits, while a normal client is served meanwhile."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", gateway.port)

    async def drip() -> float:
        try:
            for byte in b"GET /api/user/v1/a HTTP/1.1\r\nhost: x\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
            await reader.read()
        except OSError:  # the gateway hung up on us: that is the point
            pass
        return time.monotonic() - start

    dripper = asyncio.create_task(drip())
    status, _, _ = await get(gateway, "/api/user/v1/a", GOOD)  # served while the drip goes on
    assert status == 200
    assert await asyncio.wait_for(silent_reader.read(), 2) == b""
    silent_closed = time.monotonic() - start
    dripped_closed = await asyncio.wait_for(dripper, 3)
    writer.close()
    silent_writer.close()
    assert 0.45 <= silent_closed <= 0.8
    assert 0.45 <= dripped_closed <= 0.8


async def test_graceful_drain(gateway: Gateway, upstream: Upstream) -> None:
    """SIGTERM with requests in flight: they all complete, then the gateway exits 0."""

    async def one() -> int:
        status, _, _ = await get(
            gateway, "/api/user/v1/slow", {**GOOD, "X-Request-Timeout": "1000"}
        )
        return status

    # 504s here are the budget, not the drain: each request ends by itself at 1 s. The signal
    # comes once all five are at the upstream (a request still connecting would be refused).
    tasks = [asyncio.create_task(one()) for _ in range(5)]
    await wait_until(lambda: upstream.requests, lambda seen: len(seen) == 5, 0.9)
    os.kill(gateway.process.pid, signal.SIGTERM)
    statuses = await asyncio.gather(*tasks)
    code = await asyncio.wait_for(gateway.process.wait(), 10)
    assert statuses == [504] * 5  # answered, not dropped
    assert code == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=0.5).close()


async def test_pipelined_requests_are_answered_in_order(
    gateway: Gateway, upstream: Upstream
) -> None:
    """Three requests sent in one write (HTTP/1.1 pipelining) get three answers, in the order
    asked, on the same connection; the last one's `connection: close` closes it."""
    head = "".join(f"{k}: {v}\r\n" for k, v in GOOD.items()).encode()
    requests = b"".join(
        b"GET /api/user/v1/" + name + b" HTTP/1.1\r\nhost: x\r\n" + head + extra + b"\r\n"
        for name, extra in ((b"first", b""), (b"second", b""), (b"third", b"connection: close\r\n"))
    )
    answer, closed = await raw(gateway, requests)
    assert answer.count(b"HTTP/1.1 200") == 3, answer
    targets = [t.decode() for t in re.findall(rb'"target": ?"(/v1/[a-z]+)"', answer)]
    assert targets == ["/v1/first", "/v1/second", "/v1/third"]
    assert closed


# -- malformed input, many at once --

# Request heads and bodies the gateway must answer cleanly, mutated at random below.
_FUZZ_BASES = [
    b"GET /api/user/v1/items/7?color=red HTTP/1.1\r\nhost: x\r\n"
    b"x-request-id: %s\r\nx-app-id: checkout-web\r\nx-user-id: 42\r\n"
    b"x-request-timeout: 800\r\n\r\n" % RID.encode(),
    b"POST /api/user/v2/items HTTP/1.1\r\nhost: x\r\n"
    b"x-request-id: %s\r\nx-app-id: checkout-web\r\nx-user-id: 42\r\n"
    b'content-type: application/json\r\ncontent-length: 9\r\n\r\n{"a": 1}\n' % RID.encode(),
    b"POST /api/user/v1/items HTTP/1.1\r\nhost: x\r\n"
    b"x-request-id: %s\r\nx-app-id: order-service\r\nx-user-id: 42\r\n"
    b"grpc-timeout: 2S\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    b"4\r\n[1]\n\r\n0\r\n\r\n" % RID.encode(),
]
# Pieces that break parsers: line ends, NULs, separators, non-ASCII, number edges, framing words.
_FUZZ_PIECES = [
    b"\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b":",
    b" ",
    b"\t",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"%",
    b"%00",
    b"../",
    b"//",
    b"?",
    b"#",
    b"-1",
    b"0",
    b"1e309",
    b"NaN",
    b"99999999999999999999",
    b"0x10",
    b"chunked",
    b"identity",
    b"content-length: 5\r\n",
    b"transfer-encoding: x\r\n",
    b"x-request-timeout: \r\n",
    b"grpc-timeout: 9999999999H\r\n",
    b"x-request-deadline: 1\r\n",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"\r\n\r\n",
]


# The problems the gateway makes itself (an upstream's own errors would add others; the
# mutated requests below reach only the recorder's 200 answers).
_GATEWAY_PROBLEM_TYPES = frozenset(kind.uri for kind in CATALOGUE)


def _mutated(rng: random.Random) -> bytes:
    """One of `_FUZZ_BASES` with one to three random changes."""
    data = bytearray(rng.choice(_FUZZ_BASES))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        match rng.randrange(5):
            case 0:  # a byte changed to any value
                if at < len(data):
                    data[at] = rng.randrange(256)
            case 1:  # a parser-breaking piece inserted
                data[at:at] = rng.choice(_FUZZ_PIECES)
            case 2:  # a piece cut out
                del data[at : at + rng.randint(1, 8)]
            case 3:  # a header line repeated
                lines = bytes(data).split(b"\r\n")
                copied = rng.randrange(len(lines))
                lines.insert(copied, lines[copied])
                data = bytearray(b"\r\n".join(lines))
            case _:  # cut short: the rest never comes
                del data[at:]
    return bytes(data)


def _responses(received: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Status, headers and body of each complete response in `received`, parsed by
    httptools (strict framing: a response it cannot parse fails the test)."""
    done: list[tuple[int, dict[bytes, bytes], bytes]] = []
    current: dict[str, Any] = {}

    class Collect:
        def on_message_begin(self) -> None:
            current.update(headers={}, body=b"")

        def on_header(self, name: bytes, value: bytes) -> None:
            current["headers"][name.lower()] = value

        def on_body(self, body: bytes) -> None:
            current["body"] += body

        def on_message_complete(self) -> None:
            done.append((parser.get_status_code(), current["headers"], current["body"]))

    parser = httptools.HttpResponseParser(Collect())
    parser.feed_data(received)
    return done


async def test_malformed_requests_get_clean_answers_and_the_gateway_keeps_serving(
    gateway: Gateway, upstream: Upstream
) -> None:
    """400 randomly mutated requests (seeded; 25 connections at a time): each gets, within
    2 s, well-framed HTTP answers or a closed connection, never silence; every error answer
    is a problem+json naming its own status; no request makes the gateway fail (no 500, no
    traceback on its stderr); afterwards it still proxies a good request."""
    seed = fuzz_seed()
    rng = random.Random(seed)
    cases = [_mutated(rng) for _ in range(400)]
    slots = asyncio.Semaphore(25)

    async def exchange(data: bytes) -> tuple[bytes, bytes, bool]:
        async with slots:
            received, closed = await raw(gateway, data, wait=2.0)
            return data, received, closed

    outcomes = await asyncio.gather(*(exchange(data) for data in cases))
    statuses: list[int] = []
    for sent, received, closed in outcomes:
        where = f"seed {seed}, request {sent!r}, answer {received[:300]!r}"
        assert received or closed, f"no answer and the connection left open: {where}"
        answers = _responses(received)
        assert answers or closed, where
        for status, headers, body in answers:
            statuses.append(status)
            assert status != 500, where
            if status >= 400:
                assert headers[b"content-type"] == MEDIA_TYPE.encode(), where
                problem = json.loads(body)
                assert problem["status"] == status, where
                assert problem["type"] in _GATEWAY_PROBLEM_TYPES, where
    assert gateway.process.returncode is None
    assert "Traceback" not in gateway_stderr(gateway.log_path).read_text()
    assert {200, 400} <= set(statuses)  # the mutations reach both sides
    status, _, body = await get(gateway, "/api/user/v1/after", GOOD)
    assert (status, body["target"]) == (200, "/v1/after")
