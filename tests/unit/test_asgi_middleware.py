"""TetherMiddleware against an in-memory ASGI exchange, on virtual time."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tether
from tether import current_deadline, current_request_id, time_remaining
from tether.http import TetherMiddleware
from tether.http.asgi import READ_AHEAD_LIMIT, WATCH_AFTER
from tether.problems import EXPIRED_ON_ARRIVAL, INVALID_DEADLINE_HEADER, VALIDATION_FAILED
from tether.testing import VirtualClock
from tether.tracing import incoming_traceparent, outgoing_trace_headers
from tether.wire import GRPC_TIMEOUT, REQUEST_DEADLINE, REQUEST_TIMEOUT

Message = dict[str, Any]
App = Callable[[Any, Any, Any], Awaitable[None]]


class Exchange:
    """One request through an ASGI app: what it sent back, and when."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.sent: list[Message] = []
        self.sent_at: list[float] = []
        self.disconnect = asyncio.Event()

    async def run(
        self, app: App, headers: list[tuple[bytes, bytes]], body: bytes = b"", path: str = "/"
    ) -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop(0)
            await self.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            self.sent.append(message)
            self.sent_at.append(self.clock.monotonic())

        scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
        await app(scope, receive, send)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def client_leaves(exchange: Exchange, request: asyncio.Task[None], after: float) -> float:
    """`after` seconds on, the request's client leaves; once the request has ended, returns
    when it left."""
    await asyncio.sleep(after)
    gone_at = exchange.clock.monotonic()
    exchange.disconnect.set()
    await request
    return gone_at


def ok_app(seen: dict[str, Any] | None = None) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if seen is not None:
            seen.update(
                deadline=current_deadline(),
                left=time_remaining(),
                request_id=current_request_id(),
                trace=outgoing_trace_headers(),
            )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    return app


def sleeping_app(
    seconds: float, cancelled: list[float] | None = None, clock: VirtualClock | None = None
) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if cancelled is not None and clock is not None:
                cancelled.append(clock.monotonic())
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def run(clock: VirtualClock, app: App, headers: list[tuple[bytes, bytes]]) -> Exchange:
    exchange = Exchange(clock)
    clock.run(exchange.run(app, headers))
    return exchange


def test_budget_from_header_becomes_the_ambient_deadline(clock: VirtualClock) -> None:
    """X-Request-Timeout sets the handler's deadline; the request id is ambient too."""
    seen: dict[str, Any] = {}
    exchange = run(
        clock,
        TetherMiddleware(ok_app(seen)),
        [(b"x-request-timeout", b"300"), (b"x-request-id", b"req-1")],
    )
    assert exchange.status == 200
    assert seen["left"] == pytest.approx(0.3)
    assert seen["request_id"] == "req-1"
    assert exchange.headers[b"x-request-id"] == b"req-1"
    assert exchange.headers[b"server-timing"] == b"app;dur=0.0, budget;dur=300.0"


def test_default_budget_applies_without_a_header(clock: VirtualClock) -> None:
    """No deadline header: the configured default budget."""
    seen: dict[str, Any] = {}
    run(clock, TetherMiddleware(ok_app(seen), default_budget=2.5), [])
    assert seen["left"] == pytest.approx(2.5)


def test_budgets_are_clamped_to_the_maximum(clock: VirtualClock) -> None:
    """A client asking for an hour gets max_budget."""
    seen: dict[str, Any] = {}
    run(clock, TetherMiddleware(ok_app(seen), max_budget=30), [(b"x-request-timeout", b"3600000")])
    assert seen["left"] == pytest.approx(30)


def test_request_id_is_generated_when_missing(clock: VirtualClock) -> None:
    """Without X-Request-ID a UUID4 is made, used in the request, and echoed."""
    seen: dict[str, Any] = {}
    exchange = run(clock, TetherMiddleware(ok_app(seen)), [])
    generated = exchange.headers[b"x-request-id"].decode()
    assert len(generated) == 36
    assert seen["request_id"] == generated


@pytest.mark.parametrize("bad", [b"", b"has space", b"x" * 129, b'quote"', b"\xff", b"a,b"])
def test_malformed_request_id_is_a_400_problem(clock: VirtualClock, bad: bytes) -> None:
    """A malformed X-Request-ID is refused with validation-failed; the app never runs."""
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    exchange = run(clock, TetherMiddleware(app), [(b"x-request-id", bad)])
    assert exchange.status == 400
    assert not called
    assert exchange.body["type"].endswith("validation-failed")
    assert exchange.body["header"] == "X-Request-ID"
    assert exchange.headers[b"content-type"] == b"application/problem+json"


def test_a_request_id_given_twice_must_be_the_same_both_times(clock: VirtualClock) -> None:
    """Two X-Request-IDs with different values are refused, as the gateway refuses them (which
    one would tie the logs together?); the same one repeated is that id."""
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    for ids in ([b"req-1", b"req-2"], [b"req-1", b"req-1", b"req-2"], [b"bad id", b"req-1"]):
        exchange = run(clock, TetherMiddleware(app), [(b"x-request-id", i) for i in ids])
        assert exchange.status == 400
        assert exchange.body["header"] == "X-Request-ID"
        assert exchange.body["type"].endswith("validation-failed")
        assert exchange.body["detail"] == (
            "X-Request-ID is given more than once, with different values"
        )
        assert not called
    seen: dict[str, Any] = {}
    exchange = run(clock, TetherMiddleware(ok_app(seen)), [(b"x-request-id", b"req-1")] * 2)
    assert (exchange.status, seen["request_id"]) == (200, "req-1")


def test_an_app_that_sets_its_own_request_id_header_keeps_it(clock: VirtualClock) -> None:
    """The answer never carries X-Request-ID twice: the app's own (any letter case) stays and
    tether adds none; a Server-Timing of the app's stays beside tether's."""

    def app_setting(name: bytes) -> App:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            own = [(name, b"apps-own"), (b"server-timing", b"db;dur=2.0")]
            await send({"type": "http.response.start", "status": 200, "headers": own})
            await send({"type": "http.response.body", "body": b"{}"})

        return app

    for name in (b"x-request-id", b"X-Request-ID"):
        exchange = run(clock, TetherMiddleware(app_setting(name)), [(b"x-request-id", b"req-1")])
        headers = exchange.sent[0]["headers"]
        assert [v for n, v in headers if n.lower() == b"x-request-id"] == [b"apps-own"]
        timings = [v for n, v in headers if n == b"server-timing"]
        assert timings == [b"db;dur=2.0", b"app;dur=0.0, budget;dur=10000.0"]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-request-timeout", b"-5")],
        [(b"x-request-timeout", b"1.5")],
        [(b"grpc-timeout", b"10x")],
        [(b"x-request-deadline", b"soon")],
        [(b"x-request-timeout", b"100"), (b"x-request-timeout", b"200")],
    ],
)
def test_invalid_deadline_header_is_a_400_problem_naming_it(
    clock: VirtualClock, headers: list[tuple[bytes, bytes]]
) -> None:
    """Bad deadline headers give invalid-deadline-header with the header and value."""
    exchange = run(clock, TetherMiddleware(ok_app()), headers)
    assert exchange.status == 400
    body = exchange.body
    assert body["type"].endswith("invalid-deadline-header")
    assert body["header"] == headers[0][0].decode()
    assert headers[0][0].decode() in body["detail"]
    assert body["request_id"] == exchange.headers[b"x-request-id"].decode()


def test_expired_on_arrival_is_refused_before_the_handler(clock: VirtualClock) -> None:
    """An X-Request-Deadline in the past: 504 expired-on-arrival, the app never runs."""
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    past = str(int((clock.wall() - 1) * 1000)).encode()
    exchange = run(clock, TetherMiddleware(app), [(b"x-request-deadline", past)])
    assert exchange.status == 504
    assert not called
    assert exchange.body["type"].endswith("deadline-expired-on-arrival")
    zero = run(clock, TetherMiddleware(app), [(b"x-request-timeout", b"0")])
    assert zero.status == 504
    assert not called


def test_handler_is_cancelled_at_the_deadline_and_client_gets_504(clock: VirtualClock) -> None:
    """A handler slower than its budget is cancelled at the deadline; the answer is 504."""
    cancelled: list[float] = []
    start = clock.monotonic()
    exchange = run(
        clock, TetherMiddleware(sleeping_app(5, cancelled, clock)), [(b"x-request-timeout", b"300")]
    )
    assert exchange.status == 504
    assert exchange.body["type"].endswith("deadline-exceeded")
    assert cancelled == [pytest.approx(start + 0.3)]
    assert exchange.sent_at[0] == pytest.approx(start + 0.3)


@pytest.mark.parametrize(
    ("start", "sent"),
    [
        ({}, {"body": b"partial", "more_body": True}),
        # With trailers (ASGI's extension) the last body message is not the end: they are.
        ({"trailers": True}, {"body": b"all of it"}),
        ({"trailers": True}, {"type": "http.response.pathsend", "path": "/srv/file"}),
    ],
    ids=["body", "trailers", "pathsend-then-trailers"],
)
def test_deadline_after_response_started_closes_the_connection(
    clock: VirtualClock, start: Message, sent: Message
) -> None:
    """Once the response has started, the deadline can only end it: the error goes to the server."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], **start})
        await send({"type": "http.response.body", **sent})  # or the type `sent` names
        await asyncio.sleep(5)
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    from tether import DeadlineExceeded

    with pytest.raises(DeadlineExceeded):
        run(clock, TetherMiddleware(app), [(b"x-request-timeout", b"100")])


def test_unbounded_paths_run_without_a_deadline_until_their_client_leaves(
    clock: VirtualClock,
) -> None:
    """On `unbounded_paths` (and below them) the server sets no budget: a stream runs past
    `default_budget` without a deadline, even one its task's context carries, the answer has
    no budget entry, and the client leaving still cancels it. Other paths keep the default."""
    middleware = TetherMiddleware(
        ok_app(), default_budget=1.0, max_budget=2.0, unbounded_paths=["/events", "/feed/"]
    )
    seen: list[object] = []

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_deadline())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick", "more_body": True})
                await asyncio.sleep(1)
        except asyncio.CancelledError:
            seen.append(clock.monotonic())
            raise

    middleware.app = stream

    async def one(path: str, leave_after: float) -> Exchange:
        exchange = Exchange(clock)
        async with tether.deadline_after(0.5):  # the context the server's task is made in
            task = asyncio.create_task(exchange.run(middleware, [], path=path))
        await asyncio.sleep(leave_after)
        exchange.disconnect.set()
        await task
        return exchange

    started = clock.monotonic()
    for path in ("/events", "/events/orders", "/feed"):
        exchange = clock.run(one(path, 10.5))
        assert exchange.headers[b"server-timing"] == b"app;dur=0.0"
        assert len(exchange.sent) == 1 + 11  # a tick a second until the client left
    assert seen[::2] == [None, None, None]
    assert [round(at - started, 6) for at in seen[1::2]] == [10.5, 21, 31.5]
    with pytest.raises(tether.DeadlineExceeded):
        clock.run(one("/eventsource", 10.5))  # not below /events: cut at the default budget


@pytest.mark.parametrize(
    ("root_path", "path", "unbounded"),
    [
        ("/orders", "/orders/events", True),  # uvicorn --root-path: root_path, then the route
        ("/orders", "/orders/events/7", True),
        ("/orders", "/events", True),  # a server that leaves root_path out of path
        ("/orders", "/orders/other", False),
        ("/orders", "/ordersevents", False),  # not under root_path: taken as it is
        ("/orders", "/orders", False),  # the root itself is "/"
        ("", "/events", True),
    ],
)
def test_unbounded_paths_are_the_apps_own_routes_without_the_root_path(
    clock: VirtualClock, root_path: str, path: str, unbounded: bool
) -> None:
    """`unbounded_paths` are matched as the app routes them: the scope's `path` without the
    `root_path` the server put in front of it."""
    seen: dict[str, Any] = {}
    middleware = TetherMiddleware(ok_app(seen), default_budget=1.0, unbounded_paths=["/events"])

    async def request() -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        scope = {"type": "http", "path": path, "root_path": root_path, "headers": []}
        await middleware(scope, receive, send)

    clock.run(request())
    assert (seen["deadline"] is None) is unbounded


def test_on_unbounded_paths_the_requests_own_deadline_applies_unclamped(
    clock: VirtualClock,
) -> None:
    """A deadline the request brings still applies on an unbounded path, above `max_budget`
    too (the server sets no budget of its own there); one already passed is refused."""
    cancelled: list[float] = []
    middleware = TetherMiddleware(
        sleeping_app(600, cancelled, clock), max_budget=60.0, unbounded_paths=["/events"]
    )
    exchange = Exchange(clock)
    started = clock.monotonic()
    clock.run(exchange.run(middleware, [(b"x-request-timeout", b"120000")], path="/events"))
    assert exchange.status == 504
    assert exchange.headers[b"server-timing"] == b"app;dur=120000.0, budget;dur=120000.0"
    assert cancelled == [pytest.approx(started + 120)]
    expired = Exchange(clock)
    clock.run(expired.run(middleware, [(b"x-request-timeout", b"0")], path="/events"))
    assert expired.body["type"].endswith("deadline-expired-on-arrival")


def test_client_disconnect_cancels_the_handler_at_once(clock: VirtualClock) -> None:
    """http.disconnect cancels the handler; nothing is sent; no error escapes."""
    cancelled: list[float] = []
    exchange = Exchange(clock)

    async def main() -> float:
        task = asyncio.create_task(
            exchange.run(TetherMiddleware(sleeping_app(60, cancelled, clock)), [])
        )
        return await client_leaves(exchange, task, 1)

    gone_at = clock.run(main())
    assert cancelled == [gone_at]
    assert exchange.sent == []


def test_each_request_is_watched_from_watch_after_into_it(clock: VirtualClock) -> None:
    """Requests that start at different times share one watchlist timer, yet each one's watch
    starts `WATCH_AFTER` into it: a client that left before then is noticed at that moment,
    not at the next ring of a fixed period. Finished requests leave nothing listed."""
    starts = [0.0, 0.003, 0.004]
    cancelled: list[float] = []
    exchanges = [Exchange(clock) for _ in starts]
    middleware = TetherMiddleware(sleeping_app(60, cancelled, clock))

    async def one(exchange: Exchange, start: float) -> None:
        await asyncio.sleep(start)
        await exchange.run(middleware, [])

    async def main() -> float:
        began = clock.monotonic()
        tasks = [asyncio.create_task(one(e, s)) for e, s in zip(exchanges, starts, strict=True)]
        await asyncio.sleep(0.001)
        for exchange in exchanges:
            exchange.disconnect.set()  # every client is gone before any watch starts
        await asyncio.gather(*tasks)
        assert not asyncio.get_running_loop()._tether_watchlist._listed  # type: ignore[attr-defined]
        return began

    began = clock.run(main())
    assert [round(at - began, 6) for at in cancelled] == [round(s + WATCH_AFTER, 6) for s in starts]
    assert all(exchange.sent == [] for exchange in exchanges)


@pytest.mark.parametrize("after", [0.001, 0.5], ids=["before-the-watch", "while-watched"])
def test_a_cancellation_from_the_server_propagates(clock: VirtualClock, after: float) -> None:
    """The server cancelling a request (shutting down, say) is not the middleware's to answer
    or to swallow: CancelledError leaves it, nothing is sent, and the request leaves nothing
    listed or ambient behind. Checked before the disconnect watch starts and while it runs."""
    cancelled: list[float] = []
    exchange = Exchange(clock)

    async def main() -> None:
        task = asyncio.create_task(
            exchange.run(TetherMiddleware(sleeping_app(60, cancelled, clock)), [])
        )
        await asyncio.sleep(after)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)  # a watch, had one been left running, would act by now
        assert not asyncio.get_running_loop()._tether_watchlist._listed  # type: ignore[attr-defined]
        assert current_request_id() is None

    clock.run(main())
    assert len(cancelled) == 1
    assert exchange.sent == []


@pytest.mark.parametrize(
    "last",
    [
        {"type": "http.response.body", "body": b"{}"},
        {"type": "http.response.pathsend", "path": "/srv/report.pdf"},  # Starlette's FileResponse
    ],
    ids=["body", "pathsend"],
)
def test_background_work_after_the_response_is_not_cancelled_by_the_end_of_the_exchange(
    clock: VirtualClock, last: Message
) -> None:
    """Servers report the end of an exchange as `http.disconnect` while an app may still be
    working after its response (Starlette's background tasks run inside the app call): that
    is not a client leaving, and the work runs on to its end, within the request's budget.
    A response ends with its last body message, or with the one `http.response.pathsend` of
    servers that send files themselves (ASGI's extension: granian, Starlette's FileResponse)."""
    done: list[float] = []
    exchange = Exchange(clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.01)  # past WATCH_AFTER: the disconnect watch is running
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(dict(last))
        exchange.disconnect.set()  # the server: the response is out, the exchange is over
        await asyncio.sleep(0.05)  # background work
        done.append(clock.monotonic())

    clock.run(exchange.run(TetherMiddleware(app), []))
    assert exchange.status == 200
    assert len(done) == 1


def test_reading_after_the_exchange_is_over_gets_the_disconnect_at_once(
    clock: VirtualClock,
) -> None:
    """An app that reads `receive` after its complete response (to see whether its client is
    still there, or to drain what it did not read) while the disconnect watch runs gets what
    the server gives: the message the watch already holds, then `http.disconnect` at every
    read, at once. It used to wait for a message that never came, until the deadline."""
    reads: list[tuple[str, float]] = []
    exchange = Exchange(clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.01)  # past WATCH_AFTER: the watch has read the request's body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        exchange.disconnect.set()  # the server: the response is out, the exchange is over
        answered_at = clock.monotonic()
        for _ in range(3):
            message = await receive()
            reads.append((message["type"], round(clock.monotonic() - answered_at, 6)))

    clock.run(exchange.run(TetherMiddleware(app), [(REQUEST_TIMEOUT.encode(), b"2000")]))
    assert exchange.status == 200
    assert reads == [("http.request", 0), ("http.disconnect", 0), ("http.disconnect", 0)]


@pytest.mark.parametrize("watched", [False, True], ids=["at-once", "while-watched"])
def test_a_stray_cancelled_error_is_answered_500_as_a_bug(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, watched: bool
) -> None:
    """An app that awaits a task something else cancelled gets a CancelledError while nobody
    is cancelling its request: it is answered as the failure it is, a 500 problem with the
    request id, logged with its traceback (it used to pass through to the server, which
    answered its own plain-text 500 without tether's headers). Also once the disconnect watch
    runs."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if watched:
            await asyncio.sleep(0.01)
        work = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        work.cancel()  # its owner shuts it down
        await work

    with caplog.at_level(logging.ERROR, logger="tether.http"):
        exchange = run(clock, TetherMiddleware(app), [(b"x-request-id", b"req-stray")])
    assert exchange.status == 500
    assert exchange.body["type"].endswith(":internal-error")
    assert exchange.headers[b"x-request-id"] == b"req-stray"
    (record,) = caplog.records
    assert record.request_id == "req-stray"  # type: ignore[attr-defined]
    assert isinstance(record.exc_info[1].__cause__, asyncio.CancelledError)  # type: ignore[index]


def test_an_exception_after_a_complete_response_is_logged_and_not_raised(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An app that fails after its whole response was sent (in background work, say): the
    client already has its answer, so nothing more is sent and nothing escapes to the server;
    the failure is logged with the request id and its traceback."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await ok_app()(scope, receive, send)
        raise RuntimeError("cleanup failed")

    with caplog.at_level(logging.ERROR, logger="tether.http"):
        exchange = run(clock, TetherMiddleware(app), [(b"x-request-id", b"req-bg")])
    assert exchange.status == 200
    assert len(exchange.sent) == 2  # the app's own start and body, nothing after them
    assert caplog.records[-1].request_id == "req-bg"  # type: ignore[attr-defined]
    assert "after its complete response" in caplog.records[-1].getMessage()
    assert "cleanup failed" in str(caplog.records[-1].exc_info)


def test_app_reads_the_body_through_the_watcher(clock: VirtualClock) -> None:
    """The app still receives the request body while the middleware watches for disconnects."""
    received: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        received.append(message["body"])
        await ok_app()(scope, receive, send)

    exchange = Exchange(clock)
    clock.run(exchange.run(TetherMiddleware(app), [], body=b'{"a": 1}'))
    assert received == [b'{"a": 1}']
    assert exchange.status == 200


def upload(
    clock: VirtualClock, pieces: int, size: int, pulled: list[float], gone: asyncio.Event
) -> Callable[[], Awaitable[Message]]:
    """A server's `receive` for an upload of `pieces` pieces of `size` bytes, one every 10 ms
    (each piece's bytes are its index), noting when each is pulled; the client leaves, once
    `gone` is set, after the pieces it has sent."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        if sent == pieces:
            await gone.wait()
            return {"type": "http.disconnect"}
        await asyncio.sleep(0.01)
        if gone.is_set():
            return {"type": "http.disconnect"}
        pulled.append(clock.monotonic())
        sent += 1
        return {"type": "http.request", "body": bytes([sent]) * size, "more_body": sent < pieces}

    return receive


def test_a_client_leaving_mid_upload_cancels_an_app_that_has_not_read_it(
    clock: VirtualClock,
) -> None:
    """An app busy elsewhere before it reads the body (an upstream call, say): the watch keeps
    reading the upload and hears its client leave, cancelling the app at once. It used to hold
    one piece, wait for the app to take it, and so hear nothing until the deadline."""
    cancelled: list[float] = []
    exchange = Exchange(clock)
    pulled: list[float] = []

    async def main() -> float:
        receive = upload(clock, 100, 1000, pulled, exchange.disconnect)

        async def send(message: Message) -> None:
            exchange.sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        app = TetherMiddleware(sleeping_app(60, cancelled, clock))
        task = asyncio.create_task(app(scope, receive, send))
        return await client_leaves(exchange, task, 0.255)

    gone_at = clock.run(main())
    assert len(cancelled) == 1
    assert cancelled[0] - gone_at <= 0.01  # the server reports it at its next 10 ms step
    assert exchange.sent == []
    assert len(pulled) == 25


def test_the_watch_reads_a_bounded_way_ahead_of_an_app_that_is_not_reading(
    clock: VirtualClock,
) -> None:
    """Backpressure: an app that reads its upload late finds at most `READ_AHEAD_LIMIT` bytes
    (and one more piece) read ahead for it, joined into one message, and then gets every byte,
    in order, at its own pace."""
    pulled: list[float] = []
    received: list[Message] = []
    pieces, size = 40, 10_000
    exchange = Exchange(clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(2)  # 200 pieces' time: without a limit, all 40 would be read
        pulled_before = len(pulled)
        while not received or received[-1]["more_body"]:
            received.append(await receive())
        pulled.append(pulled_before)
        await ok_app()(scope, receive, send)

    async def main() -> None:
        receive = upload(clock, pieces, size, pulled, exchange.disconnect)

        async def send(message: Message) -> None:
            exchange.sent.append(message)
            exchange.disconnect.set()  # the server ends the exchange once the answer is out

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        await TetherMiddleware(app)(scope, receive, send)

    clock.run(main())
    pulled_before = pulled.pop()
    assert pulled_before == -(-READ_AHEAD_LIMIT // size) + 1  # 7 joined, 1 waiting for room
    assert b"".join(m["body"] for m in received) == b"".join(
        bytes([i]) * size for i in range(1, pieces + 1)
    )
    assert len(received[0]["body"]) == (pulled_before - 1) * size
    assert exchange.status == 200


@pytest.mark.parametrize("reads_at", [None, 0.02])
def test_a_request_that_expects_100_continue_is_watched_only_once_the_app_reads(
    clock: VirtualClock, reads_at: float | None
) -> None:
    """`Expect: 100-continue`: servers send `100 Continue` at the first `receive()`, so the
    watch does not read before the app does. An app that refuses the request without reading
    its body (None) leaves the server's `receive` untouched: the client is never asked for
    the body. One that reads it (after 20 ms, past WATCH_AFTER) is watched from then on: its
    client leaving still cancels it."""
    reads: list[float] = []
    cancelled: list[float] = []
    exchange = Exchange(clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if reads_at is None:
            await asyncio.sleep(0.05)  # an auth check, say
            await send({"type": "http.response.start", "status": 413, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await asyncio.sleep(reads_at)
        await receive()
        await sleeping_app(60, cancelled, clock)(scope, receive, send)

    began = clock.monotonic()

    async def main() -> float:
        async def receive() -> Message:
            reads.append(clock.monotonic() - began)
            if len(reads) == 1:
                return {"type": "http.request", "body": b"x" * 10, "more_body": False}
            await exchange.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            exchange.sent.append(message)

        headers = [(b"content-length", b"10"), (b"expect", b"100-continue")]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        task = asyncio.create_task(TetherMiddleware(app)(scope, receive, send))
        return await client_leaves(exchange, task, 0.5)

    gone_at = clock.run(main())
    if reads_at is None:
        assert reads == []
        assert exchange.status == 413
    else:
        assert reads[0] == pytest.approx(reads_at)  # the app's own read came first
        assert cancelled == [gone_at]


def test_watch_falling_due_while_the_app_waits_in_receive_starts_after_it(
    clock: VirtualClock,
) -> None:
    """An app waiting in the server's `receive` when the watch falls due keeps the only read;
    watching starts when it returns, and a later disconnect still cancels the handler."""
    cancelled: list[float] = []
    exchange = Exchange(clock)
    body_ready = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # waits well past WATCH_AFTER for the body below
        await sleeping_app(60, cancelled, clock)(scope, receive, send)

    async def main() -> float:
        messages: list[Message] = []

        async def receive() -> Message:
            if not messages:
                await body_ready.wait()
                messages.append({"type": "http.request", "body": b"", "more_body": False})
                return messages[-1]
            await exchange.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            exchange.sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        task = asyncio.create_task(TetherMiddleware(app)(scope, receive, send))
        await asyncio.sleep(0.5)  # the watch fell due at 5 ms, while the app was in receive
        body_ready.set()
        return await client_leaves(exchange, task, 1)

    gone_at = clock.run(main())
    assert cancelled == [gone_at]
    assert exchange.sent == []


def test_concurrent_requests_each_get_their_own_deadline_and_id(clock: VirtualClock) -> None:
    """Requests in flight together share the loop's timers but not their budgets or ids."""
    seen: list[dict[str, Any]] = []
    exchanges = [Exchange(clock) for _ in range(50)]

    async def main() -> None:
        app = TetherMiddleware(ok_app_recording(seen))
        await asyncio.gather(
            *(
                exchange.run(app, [(b"x-request-timeout", str(100 + 10 * i).encode())])
                for i, exchange in enumerate(exchanges)
            )
        )

    clock.run(main())
    assert sorted(entry["left"] for entry in seen) == pytest.approx(
        [0.1 + 0.01 * i for i in range(50)]
    )
    assert len({entry["request_id"] for entry in seen}) == 50
    assert len({exchange.headers[b"x-request-id"] for exchange in exchanges}) == 50


@pytest.mark.parametrize("watched", [False, True], ids=["before-its-watch", "watched"])
def test_a_finished_request_is_freed_at_once(clock: VirtualClock, watched: bool) -> None:
    """A request answered before its disconnect watch falls due leaves nothing behind: the
    watchlist must not keep it (and the server's objects it holds) alive until its turn. Held
    objects cost real time under load (tens of requests' memory stays live, out of cache).
    A request that was watched is freed by reference counting too, once its watch's reader
    has stopped (no reference cycle between the request and its watch)."""
    kept: list[weakref.ref[Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        kept.append(weakref.ref(send.__self__))  # the middleware's per-request state
        if watched:
            await asyncio.sleep(0.01)
        await ok_app()(scope, receive, send)

    async def main() -> bool:
        middleware = TetherMiddleware(app)
        await Exchange(clock).run(middleware, [])
        if watched:
            await asyncio.sleep(0)  # the watch's reader ends its cancellation
            await asyncio.sleep(0)
        return kept[0]() is None  # unwatched: checked before the watch's 5 ms have passed

    gc.disable()  # freed by reference counting, not by a later collection
    try:
        assert clock.run(main())
    finally:
        gc.enable()


def ok_app_recording(seen: list[dict[str, Any]]) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.01)  # all fifty are in flight at once
        seen.append({"left": time_remaining() + 0.01, "request_id": current_request_id()})
        await ok_app()(scope, receive, send)

    return app


def test_exceptions_become_a_500_problem_without_their_text(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Safety net: the client sees a generic 500; the log has the traceback and request id."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("db password is hunter2")

    with caplog.at_level(logging.ERROR, logger="tether.http"):
        exchange = run(clock, TetherMiddleware(app), [(b"x-request-id", b"req-9")])
    assert exchange.status == 500
    assert "hunter2" not in json.dumps(exchange.body)
    assert exchange.body["request_id"] == "req-9"
    assert caplog.records[-1].request_id == "req-9"  # type: ignore[attr-defined]
    assert "answered 500" in caplog.records[-1].getMessage()
    assert "hunter2" in str(caplog.records[-1].exc_info)


@pytest.mark.parametrize("failure", [RuntimeError("boom"), tether.UpstreamUnavailable("down")])
def test_the_safety_net_holds_under_an_apps_log_record_factory(
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    apps_record_factory: str,
    failure: Exception,
) -> None:
    """A service whose record factory puts `request_id` on every log record: the failure is
    still answered with its problem and logged (logging's extra= would have raised KeyError
    from inside the safety net); the record keeps the service's own id."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise failure

    with caplog.at_level(logging.INFO, logger="tether.http"):
        exchange = run(clock, TetherMiddleware(app), [(b"x-request-id", b"req-9")])
    assert exchange.status == (500 if isinstance(failure, RuntimeError) else 503)
    assert "req-9" in caplog.records[-1].getMessage()
    assert caplog.records[-1].request_id == apps_record_factory  # type: ignore[attr-defined]


def test_traceparent_is_passed_on(clock: VirtualClock) -> None:
    """A valid incoming traceparent is offered to outgoing calls; a malformed one is dropped."""
    good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    seen: dict[str, Any] = {}
    run(clock, TetherMiddleware(ok_app(seen)), [(b"traceparent", good)])
    assert seen["trace"] == [("traceparent", good.decode())]
    run(clock, TetherMiddleware(ok_app(seen)), [(b"traceparent", b"00-zz")])
    assert seen["trace"] == []
    # Two are no valid trace context (W3C Trace Context), even when each is valid alone.
    other = b"00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
    for repeated in ([good, other], [good, good], [b"00-zz", good]):
        run(clock, TetherMiddleware(ok_app(seen)), [(b"traceparent", t) for t in repeated])
        assert seen["trace"] == []


def test_the_trace_context_is_the_requests_own(clock: VirtualClock) -> None:
    """A request that brings no traceparent passes none on, even when the context the server
    runs it in carries one (an in-process caller's, as with httpx's ASGI transport)."""
    callers = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    seen: dict[str, Any] = {}
    with incoming_traceparent(callers):
        run(clock, TetherMiddleware(ok_app(seen)), [])
        assert seen["trace"] == []
        assert outgoing_trace_headers() == [("traceparent", callers)]  # the caller's is back


def test_lifespan_passes_through(clock: VirtualClock) -> None:
    """Lifespan scopes reach the app untouched: the server's own receive and send, no
    deadline, no request id."""
    seen: list[tuple[str, Any, Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], receive, send, current_deadline(), current_request_id()))

    async def receive() -> Any:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    clock.run(TetherMiddleware(app)({"type": "lifespan"}, receive, send))
    assert seen == [("lifespan", receive, send, None, None)]


def websocket_scope(*headers: tuple[bytes, bytes], answers_http: bool = True) -> Any:
    extensions = {"websocket.http.response": {}} if answers_http else {}
    return {"type": "websocket", "path": "/ws", "headers": list(headers), "extensions": extensions}


def test_a_websocket_gets_its_request_id_and_no_budget(clock: VirtualClock) -> None:
    """A WebSocket connection: the caller's X-Request-ID (or a new one) is ambient for the
    whole connection and echoed on the handshake's answer; no deadline, whatever it asks."""
    seen: list[tuple[Any, Any]] = []
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"1")]})
        await asyncio.sleep(120)  # longer than any budget (virtual time)
        seen.append((current_request_id(), current_deadline()))
        await send({"type": "websocket.close", "code": 1000})

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        middleware = TetherMiddleware(app, default_budget=1, max_budget=5)
        await middleware(
            websocket_scope((b"x-request-id", b"ws-7"), (b"x-request-timeout", b"100")),
            receive,
            send,
        )
        await middleware(websocket_scope(), receive, send)

    clock.run(main())
    assert seen[0] == ("ws-7", None)
    new_id, deadline = seen[1]
    assert deadline is None
    assert new_id
    assert new_id != "ws-7"
    accepts = [m["headers"] for m in sent if m["type"] == "websocket.accept"]
    assert accepts == [
        [(b"x-app", b"1"), (b"x-request-id", b"ws-7")],
        [(b"x-app", b"1"), (b"x-request-id", new_id.encode())],
    ]
    assert current_request_id() is None  # reset after each connection


def test_a_websocket_app_that_sets_its_own_request_id_keeps_it(clock: VirtualClock) -> None:
    """The handshake's answer never carries X-Request-ID twice either."""
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept", "headers": [(b"X-Request-Id", b"apps-own")]})

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = websocket_scope((b"x-request-id", b"ws-7"))
    clock.run(TetherMiddleware(app)(scope, receive, send))
    assert sent[0]["headers"] == [(b"X-Request-Id", b"apps-own")]


@pytest.mark.parametrize("answers_http", [True, False])
@pytest.mark.parametrize("bad", [(b"bad id",), (b"req-1", b"req-2")])
def test_a_websocket_with_a_malformed_request_id_is_refused(
    clock: VirtualClock, answers_http: bool, bad: tuple[bytes, ...]
) -> None:
    """A malformed X-Request-ID refuses the handshake without calling the app: a 400
    validation problem where the server lets the app answer over HTTP, else a close (1008)
    before accepting, which the server answers with 403."""
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = websocket_scope(*((b"x-request-id", i) for i in bad), answers_http=answers_http)
    clock.run(TetherMiddleware(app)(scope, receive, send))
    if not answers_http:
        (close,) = sent
        assert (close["type"], close["code"]) == ("websocket.close", 1008)
        assert "X-Request-ID" in close["reason"]
        return
    start, body = sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 400
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    problem = json.loads(body["body"])
    assert problem["type"].endswith("validation-failed")
    assert problem["header"] == "X-Request-ID"
    assert problem["request_id"] == headers[b"x-request-id"].decode()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_budget": 0},
        {"default_budget": -1},
        {"max_budget": float("inf")},
        {"default_budget": float("nan")},
        {"default_budget": "5"},
        {"default_budget": 20, "max_budget": 10},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    """Non-positive, infinite, NaN or non-numeric budgets, or default > max: ValueError."""
    with pytest.raises(ValueError, match="budget"):
        TetherMiddleware(ok_app(), **kwargs)


@pytest.mark.parametrize(
    "paths",
    [
        "/events",
        b"/events",
        3,
        None,
        ["events"],
        [""],
        ["/a b"],
        ["/a?b"],
        ["/a#b"],
        ["/a\x00"],
        [7],
    ],
)
def test_bad_unbounded_paths_are_refused(paths: Any) -> None:
    """`unbounded_paths` is a list of paths starting with `/`, without spaces, control
    characters, `?` or `#`; one string alone (a common slip) is refused too: ValueError
    naming the setting."""
    with pytest.raises(ValueError, match="unbounded_paths"):
        TetherMiddleware(ok_app(), unbounded_paths=paths)


# Header values an ASGI server may hand over: any bytes but CR, LF and NUL.
_header_values = st.binary(max_size=40).filter(lambda v: not any(c in v for c in b"\r\n\x00"))
# Values near the forms tether reads, so that some are valid.
_near_valid = st.one_of(
    _header_values,
    st.integers(-5, 10**20).map(lambda n: str(n).encode()),
    st.integers(1_699_999_999_000, 1_700_000_099_000).map(lambda n: str(n).encode()),
    st.tuples(st.integers(0, 10**9), st.sampled_from("HMSmunx ")).map(
        lambda pair: f"{pair[0]}{pair[1]}".encode()
    ),
    st.from_regex(rb"\A[A-Za-z0-9._:/+=-]{1,130}\Z"),
)
_asked_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *(name.encode() for name in (REQUEST_TIMEOUT, REQUEST_DEADLINE, GRPC_TIMEOUT)),
                *(b"x-request-id", b"traceparent", b"x-other"),
            ]
        ),
        _near_valid,
    ),
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(_asked_headers)
def test_any_header_values_get_the_app_or_a_clean_refusal(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Whatever the headers carry, the middleware runs the app (200) or refuses with a 400
    naming a header or a 504 expired-on-arrival; it never raises, never answers 500, and
    always echoes a well-formed request id."""
    with VirtualClock() as clock:
        called: list[bool] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            called.append(True)
            await ok_app()(scope, receive, send)

        exchange = run(clock, TetherMiddleware(app), headers)
    echoed = exchange.headers[b"x-request-id"]
    assert re.fullmatch(rb"[A-Za-z0-9._:/+=-]{1,128}", echoed)
    if called:
        assert exchange.status == 200
        return
    assert exchange.status in (400, 504)
    assert exchange.headers[b"content-type"] == b"application/problem+json"
    kind = exchange.body["type"]
    if exchange.status == 504:
        assert kind == EXPIRED_ON_ARRIVAL.uri
    else:
        assert kind in (INVALID_DEADLINE_HEADER.uri, VALIDATION_FAILED.uri)
        assert exchange.body["header"] in (
            "X-Request-ID",
            REQUEST_TIMEOUT,
            REQUEST_DEADLINE,
            GRPC_TIMEOUT,
        )


# An app's response, step by step: ("sleep", seconds) or a message to send; the messages form
# a valid ASGI response (start, body chunks, then the last body or a pathsend, then trailers
# when announced), and the app may raise instead of taking any step.
_Step = tuple[str, Any]


@st.composite
def _app_scripts(draw: st.DrawFn) -> list[_Step]:
    trailers = draw(st.booleans())
    messages: list[_Step] = [("start", trailers)]
    messages += [("chunk", None)] * draw(st.integers(0, 2))
    messages.append(draw(st.sampled_from([("last", None), ("pathsend", None)])))
    if trailers:
        messages.append(("trailers", None))
    steps: list[_Step] = []
    for message in messages:
        steps += [("sleep", draw(st.sampled_from([0.0, 0.003, 0.02, 0.2])))] * draw(
            st.integers(0, 1)
        )
        steps.append(message)
    if draw(st.booleans()):  # background work after the response
        steps.append(("sleep", draw(st.sampled_from([0.003, 0.02, 0.2]))))
    failure = draw(st.sampled_from([None, RuntimeError, tether.UpstreamUnavailable]))
    if failure is not None:
        steps.insert(draw(st.integers(0, len(steps))), ("raise", failure))
    return steps


@settings(max_examples=1000, deadline=None)
@given(
    _app_scripts(),
    st.sampled_from([None, b"10", b"100", b"250"]),
    st.sampled_from([None, 0.001, 0.01, 0.15, 0.5]),
)
def test_any_app_behaviour_ends_in_one_whole_answer_or_a_closed_connection(
    script: list[_Step], budget: bytes | None, leaves_at: float | None
) -> None:
    """Whatever an app does (answers in pieces, sends a file, announces trailers, works on
    after its answer, raises anywhere) under any budget and with its client leaving at any
    moment: the server gets one response start at most; the middleware raises only while a
    started response is incomplete (the server then closes the connection); a response it did
    not complete is the client leaving, or else the app's failure before it started answered
    with a problem; nothing ambient is left behind."""
    sent_by_app: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for kind, value in script:
            if kind == "sleep":
                await asyncio.sleep(value)
            elif kind == "raise":
                raise value("secret")
            elif kind == "start":
                start = {"type": "http.response.start", "status": 200, "headers": []}
                await send({**start, "trailers": True} if value else start)
            elif kind == "chunk":
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
            elif kind == "last":
                await send({"type": "http.response.body", "body": b"end"})
            elif kind == "pathsend":
                await send({"type": "http.response.pathsend", "path": "/srv/file"})
            else:
                await send(
                    {"type": "http.response.trailers", "headers": [], "more_trailers": False}
                )
            if kind != "sleep":
                sent_by_app.append(kind)

    headers = [] if budget is None else [(b"x-request-timeout", budget)]
    with VirtualClock() as clock:
        exchange = Exchange(clock)

        async def main() -> BaseException | None:
            async def leave() -> None:
                if leaves_at is not None:
                    await asyncio.sleep(leaves_at)
                    exchange.disconnect.set()

            leaving = asyncio.create_task(leave())
            try:
                await exchange.run(TetherMiddleware(app), headers)
            except Exception as exc:
                return exc
            finally:
                leaving.cancel()
                assert current_request_id() is None
                assert current_deadline() is None
            return None

        raised = clock.run(main())
    kinds = [m["type"] for m in exchange.sent]
    assert kinds.count("http.response.start") <= 1
    app_done = "last" in sent_by_app or "pathsend" in sent_by_app
    complete = app_done and (("start", True) not in script or "trailers" in sent_by_app)
    if raised is not None:
        assert "start" in sent_by_app, (script, raised)
        assert not complete, (script, raised)
        return
    if not exchange.sent or complete:
        return  # nothing sent (the client left first) or the app's whole answer
    if "start" not in sent_by_app:  # the middleware answered: a problem
        assert exchange.status in (500, 503, 504)
        assert exchange.headers[b"content-type"] == b"application/problem+json"
        assert "secret" not in json.dumps(exchange.body)
        return
    assert leaves_at is not None, (script, budget, kinds)  # cut short: only by the client
