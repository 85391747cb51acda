"""`TetherMiddleware`: the budget inside any ASGI app (Starlette, FastAPI, ...).

Pure ASGI (not Starlette's BaseHTTPMiddleware, which runs the app in another task and breaks
context variables). For each HTTP request, in this order:

1. `X-Request-ID` is read (1-128 characters of `A-Z a-z 0-9 . _ : / + = -`) or generated;
   malformed, or given twice with different values: 400 `validation-failed`. It becomes the
   ambient request id and is echoed on the response. A valid `traceparent` becomes the one
   tether's clients pass on; without one (or with a malformed one, or more than one), none is
   passed on.
2. The deadline comes from `X-Request-Timeout` / `X-Request-Deadline` / `grpc-timeout` (the
   earliest wins), clamped to `max_budget`; without one, `default_budget` applies. Malformed:
   400 `invalid-deadline-header`. Already expired: 504 `deadline-expired-on-arrival`, and the
   app is not called. The clock starts when the middleware sees the request. On
   `unbounded_paths` (the app's own routes: matched without the server's `root_path`) the
   server sets no budget of its own: a deadline the request brings applies unclamped, and a
   request without one runs without a deadline (long streams).
3. The app runs inside the request's deadline block. At the deadline it is cancelled; the
   client gets 504 `deadline-exceeded`, or, if the response had already started, the
   connection is closed. tether's other errors escaping the app map to their problems
   (`UpstreamTimeout`: 504 `upstream-timeout`, `UpstreamUnavailable`: 503
   `upstream-unavailable`), also from a task group that holds only tether's errors (its first
   one answers: `tether.errors.reported_failure`).
4. A client that disconnects cancels the app (the middleware listens for `http.disconnect`
   from 5 ms into the request on; faster requests are never watched, which keeps them cheap).
   A request that expects `100 Continue` is watched only once the app reads its body:
   listening earlier would make the server ask the client for a body the app may refuse.
5. Safety net: any other exception becomes 500 `internal-error` without its text; the traceback
   is logged with the request id; the server keeps serving.
6. The response carries `Server-Timing: app;dur=<ms in this hop>, budget;dur=<ms received>`
   (without the budget entry when the request has no deadline), added to any the app sets.
   An app that sets its own `X-Request-ID` on the response keeps it: tether adds none.

WebSocket connections get step 1 only (their request id, echoed on the handshake's answer; a
malformed one refuses the handshake), for the connection's life, and no budget. Lifespan
scopes pass through untouched.

Rule: the cancellation this middleware causes on disconnect is consumed here (nobody is left
to answer); every other cancellation propagates. A CancelledError while nobody is cancelling
the request's task is no cancellation but a bug (`tether.errors.stray_cancellation`): 500.

Cost rule: this runs on every request of a service, so a request that ends well inside its
budget creates no loop timer and no extra coroutine: its deadline is one entry in the loop's
shared deadline heap, its disconnect watch one entry in a shared set (added, then discarded),
and `send` is wrapped by a plain function. A finished request is freed at once: nothing of
tether's keeps it (and the server objects it refers to) alive, which under load would keep tens
of requests' memory live and out of cache (measured: ~7% of the throughput of a hello-world
app).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from tether import _clock
from tether._logging import log_fields
from tether._loop_state import PerLoop
from tether._settings import PathPrefixes, server_budgets
from tether.deadline import deadline_for_request
from tether.errors import (
    InvalidDeadlineHeader,
    TetherError,
    failure_summary,
    reported_failure,
    stray_cancellation,
)
from tether.problems import (
    EXPIRED_ON_ARRIVAL,
    INVALID_DEADLINE_HEADER,
    MEDIA_TYPE,
    VALIDATION_FAILED,
    Problem,
    problem_for_exception,
)
from tether.request_id import (
    REPEATED_WITH_DIFFERENT_VALUES,
    REQUEST_ID_PATTERN,
    REQUEST_ID_RULE,
    new_request_id,
    read_incoming,
    reset_request_id,
    set_request_id,
)
from tether.tracing import reset_incoming_traceparent, set_incoming_traceparent
from tether.wire import GRPC_TIMEOUT, REQUEST_DEADLINE, REQUEST_TIMEOUT, deadline_from_headers

Scope = MutableMapping[str, Any]
Header = tuple[bytes, bytes]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("tether.http")

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.encode())
_BAD_REQUEST_ID = f"X-Request-ID must be {REQUEST_ID_RULE}"
_REPEATED_REQUEST_ID = f"X-Request-ID is {REPEATED_WITH_DIFFERENT_VALUES}"
_DEADLINE_HEADERS = frozenset(
    name.encode() for name in (REQUEST_TIMEOUT, REQUEST_DEADLINE, GRPC_TIMEOUT)
)
_DISCONNECT: Message = {"type": "http.disconnect"}
_current_task = asyncio.current_task

# Whether the app is inside the server's own `receive` (before watching starts); or, for a
# request that expects `100 Continue` and whose body the app has not asked for yet, that the
# watch fell due and waits for the app's first read.
_NOT_READING, _READING, _READING_PAST_DUE, _WAITING_FOR_FIRST_READ = 0, 1, 2, 3

# How long a request runs before the middleware starts watching for its client to leave.
WATCH_AFTER = 0.005

# How many bytes of a request's body the watch reads ahead of an app that is not reading it.
READ_AHEAD_LIMIT = 65_536


class TetherMiddleware:
    """ASGI middleware that gives each request its budget; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_budget: float = 10.0,
        max_budget: float = 60.0,
        unbounded_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.default_budget, self.max_budget = server_budgets(default_budget, max_budget)
        self.unbounded_paths = PathPrefixes("unbounded_paths", unbounded_paths)
        self._any_unbounded = bool(self.unbounded_paths)  # a plain bool: read per request
        self._default_budget_timing = _budget_timing(self.default_budget)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await _websocket(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        started = _clock.monotonic()
        headers = scope["headers"]
        request_id, ids_differ, traceparent, asks_deadline = read_incoming(
            headers, b"x-request-id", b"traceparent", _DEADLINE_HEADERS
        )
        exchange = _Exchange(send, receive, started, headers)
        if request_id is None:
            exchange.request_id = new_request_id()
        elif _REQUEST_ID.fullmatch(request_id) and not ids_differ:
            exchange.request_id = request_id.decode("ascii")
        else:
            exchange.request_id = new_request_id()
            await exchange.answer(_request_id_refusal(ids_differ))
            return
        # The request's deadline, on tether's clock; None: it has none (an unbounded path).
        when: float | None
        unbounded = self._any_unbounded and _route_path(scope) in self.unbounded_paths
        if asks_deadline:
            try:
                asked = deadline_from_headers(headers, received_at=started)
            except InvalidDeadlineHeader as exc:
                problem = INVALID_DEADLINE_HEADER.problem(str(exc), header=exc.header)
                await exchange.answer(problem)
                return
            if asked is not None:
                when = asked.when if unbounded else min(asked.when, started + self.max_budget)
            else:
                when = None if unbounded else started + self.default_budget
            if when is not None:
                exchange.budget_timing = _budget_timing(when - started)
                if when <= started:
                    detail = "the request's deadline had passed before it arrived; nothing was done"
                    await exchange.answer(EXPIRED_ON_ARRIVAL.problem(detail))
                    return
        elif unbounded:
            when = None
        else:
            when = started + self.default_budget
            exchange.budget_timing = self._default_budget_timing
        task = _current_task()
        assert task is not None  # ASGI servers run each request in a task
        watchlist: _Watchlist | None = None
        id_token = set_request_id(exchange.request_id)
        # The request's own trace context: none when it brings none, whatever the running
        # context carries (an in-process caller's).
        trace_token = set_incoming_traceparent(
            None if traceparent is None else traceparent.decode("latin-1")
        )
        try:
            # `with`: no coroutines to enter. The budget is the request's alone.
            with deadline_for_request(when, task):
                watchlist = exchange.watch(task)
                await self.app(scope, exchange.receive, exchange.send)
        except asyncio.CancelledError as exc:
            if exchange.disconnect_caused(task):
                log_fields(
                    log,
                    logging.INFO,
                    "request %s: the client went away; the handler was cancelled",
                    exchange.request_id,
                    fields={"request_id": exchange.request_id},
                )
                return
            failure = stray_cancellation(exc)  # a bug, not a cancellation: answered as one
            if failure is None:
                raise
            await _end_with_failure(exchange, failure)
        except Exception as exc:
            await _end_with_failure(exchange, exc)
        finally:
            exchange.finished = True
            if exchange.watching is not None:
                exchange.watching.stop()
                exchange.watching = None  # no cycle with its watch: freed by reference counting
            elif watchlist is not None:
                watchlist.discard(exchange)
            if trace_token is not None:
                reset_incoming_traceparent(trace_token)
            reset_request_id(id_token)


async def _end_with_failure(exchange: _Exchange, exc: Exception) -> None:
    """The safety net, for an exception that escaped the app: answer it as a problem if the
    response has not started, and log it with the request id."""
    if exchange.watching is not None:
        exchange.watching.app_ended()
    if not exchange.response_started:
        problem = problem_for_exception(exc)
        _log_failure(exchange.request_id, exc, f"answered {problem.status}")
        await exchange.answer(problem)
    elif not exchange.response_done:
        _log_failure(exchange.request_id, exc, "mid-response; the connection is closed")
        raise exc  # the server closes the connection: the answer cannot be completed
    else:
        _log_failure(exchange.request_id, exc, "after its complete response")


def _problem_response(problem: Problem, request_id: str) -> tuple[int, list[Header], bytes]:
    """Status, headers and body of a response carrying `problem` (and the request id)."""
    if problem.request_id is None and request_id:
        problem = dataclasses.replace(problem, request_id=request_id)
    body = problem.to_json()
    headers = [
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return problem.status, headers, body


async def _websocket(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket connection: its request id (read and validated as HTTP's, or new) and trace
    context are ambient for the whole connection, and the id is echoed on the handshake's
    answer. It gets no budget: a connection lasts as long as its peers want."""
    request_id, ids_differ, traceparent, _ = read_incoming(
        scope["headers"], b"x-request-id", b"traceparent", ()
    )
    if request_id is not None and (ids_differ or not _REQUEST_ID.fullmatch(request_id)):
        await _refuse_websocket(scope, receive, send, new_request_id(), ids_differ)
        return
    own_id = new_request_id() if request_id is None else request_id.decode("ascii")

    def send_with_id(message: Message) -> Awaitable[None]:
        if message["type"] in ("websocket.accept", "websocket.http.response.start"):
            message["headers"] = _with_request_id(message.get("headers", ()), own_id)
        return send(message)

    id_token = set_request_id(own_id)
    trace_token = set_incoming_traceparent(
        None if traceparent is None else traceparent.decode("latin-1")
    )
    try:
        await app(scope, receive, send_with_id)
    finally:
        reset_incoming_traceparent(trace_token)
        reset_request_id(id_token)


async def _refuse_websocket(
    scope: Scope, receive: Receive, send: Send, request_id: str, ids_differ: bool
) -> None:
    """Refuse a handshake whose X-Request-ID is malformed (or given twice, differing): a 400
    problem where the server lets the app answer the handshake over HTTP (ASGI's
    `websocket.http.response`), else a close before accepting (code 1008, policy violation; the
    server answers it with 403)."""
    problem = _request_id_refusal(ids_differ)
    fields = {"request_id": request_id}
    log_fields(log, logging.INFO, "websocket refused: %s", problem.detail, fields=fields)
    await receive()  # websocket.connect: the first message of every connection
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": problem.detail})
        return
    status, headers, body = _problem_response(problem, request_id)
    headers.append((b"x-request-id", request_id.encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def _with_request_id(headers: Iterable[Header], request_id: str) -> list[Header]:
    """An answer's `headers` and `X-Request-ID: request_id`, unless the app set its own (any
    letter case): an answer never carries two."""
    out = [*headers]
    for name, _ in out:
        if len(name) == 12 and name.lower() == b"x-request-id":
            return out
    out.append((b"x-request-id", request_id.encode()))
    return out


def _expects_continue(headers: Iterable[Header]) -> bool:
    """Whether the request asks for `100 Continue` before it sends its body."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in headers)


def _route_path(scope: Scope) -> str:
    """The path as the app routes it: the scope's `path` without the server's `root_path`
    (servers such as uvicorn put it in front of `path`, ASGI's rule; `unbounded_paths` are
    written as the app's routes). A `path` not under `root_path` is taken as it is."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    if not rest:
        return "/"
    return rest if rest[0] == "/" else path


def _request_id_refusal(ids_differ: bool) -> Problem:
    """The 400 problem for an `X-Request-ID` that is malformed, or given twice with different
    values."""
    detail = _REPEATED_REQUEST_ID if ids_differ else _BAD_REQUEST_ID
    return VALIDATION_FAILED.problem(detail, header="X-Request-ID")


def _budget_timing(budget: float) -> bytes:
    """The `Server-Timing` entry for the budget a request received."""
    return b", budget;dur=%.1f" % (budget * 1000)


def _log_failure(request_id: str, exc: Exception, outcome: str) -> None:
    """Log an exception that escaped the app; `outcome` says what the client got."""
    fields = {"request_id": request_id}
    failure = reported_failure(exc)
    if isinstance(failure, TetherError):  # an outcome (budget spent, upstream down), not a bug
        log_fields(
            log,
            logging.INFO,
            "request %s ended with %s (%s): %s",
            request_id,
            type(failure).__name__,
            outcome,
            failure_summary(failure, exc),
            fields=fields,
        )
    else:
        log_fields(
            log,
            logging.ERROR,
            "request %s failed with an unhandled exception (%s)",
            request_id,
            outcome,
            exc_info=exc,
            fields=fields,
        )


class _Exchange:
    """One request: adds tether's headers to the response, knows how far it got, and, from
    `WATCH_AFTER` into the request on, watches for the client leaving (see `_Watch`).

    A request answered within `WATCH_AFTER` costs no watching at all: it is only listed in its
    loop's `_Watchlist` while it runs.
    """

    __slots__ = (
        "__weakref__",  # for tests that check a finished request is freed
        "_has_read",
        "_headers",
        "_reading",
        "_receive",
        "_send",
        "_trailers",
        "budget_timing",
        "finished",
        "request_id",
        "response_done",
        "response_started",
        "started",
        "task",
        "watching",
    )

    def __init__(
        self, send: Send, receive: Receive, started: float, headers: Iterable[Header]
    ) -> None:
        self._send = send
        self._receive = receive
        self._headers = headers
        self._has_read = False
        self.started = started
        self.budget_timing = b""  # b", budget;dur=<ms>" once the budget is known
        self.request_id = ""
        self.response_started = False
        self.response_done = False
        self._trailers = False
        self.finished = False
        self.watching: _Watch | None = None
        self._reading = _NOT_READING

    # -- the response --

    def send(self, message: Message) -> Awaitable[None]:
        """The app's `send`: a plain function handing back the server's awaitable."""
        kind = message["type"]
        if kind == "http.response.start":
            self.response_started = True
            timing = b"app;dur=%.1f%s" % (
                (_clock.monotonic() - self.started) * 1000,
                self.budget_timing,
            )
            headers = _with_request_id(message.get("headers", ()), self.request_id)
            headers.append((b"server-timing", timing))
            message["headers"] = headers
            if message.get("trailers"):  # ASGI's extension: the response ends with them
                self._trailers = True
        elif kind == "http.response.body":
            if not message.get("more_body", False) and not self._trailers:
                self.response_done = True
        elif kind == "http.response.pathsend":  # ASGI's extension: a file, the whole body
            if not self._trailers:
                self.response_done = True
        elif kind == "http.response.trailers" and not message.get("more_trailers", False):
            self.response_done = True
        return self._send(message)

    async def answer(self, problem: Problem) -> None:
        """Send `problem` as the whole response."""
        status, headers, body = _problem_response(problem, self.request_id)
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    # -- the request side --

    def watch(self, task: asyncio.Task[Any]) -> _Watchlist:
        """Watch for the client leaving from `WATCH_AFTER` on, cancelling `task` if it does.
        Returns the watchlist, from which the request must be discarded when it finishes."""
        self.task = task  # set here, not in __init__: only requests that reach the app have one
        loop = task.get_loop()
        watchlist = _watchlists.last
        if watchlist._loop is not loop:
            watchlist = _watchlists.of(loop)
        watchlist.add(self)
        return watchlist

    def start_watching(self) -> None:
        """Called by the watchlist once the request has run `WATCH_AFTER`.

        Rule: a request that expects `100 Continue` is watched only from the app's first read
        of its body on. Servers send `100 Continue` at the first `receive()`, and the client
        then sends the body, which the app may be about to refuse (413, 401) without reading.
        """
        if self.finished or self.response_done or self.watching is not None:
            return
        if self._reading:  # two readers of `receive` at once are not allowed: after the app's
            self._reading = _READING_PAST_DUE
            return
        if not self._has_read and _expects_continue(self._headers):
            self._reading = _WAITING_FOR_FIRST_READ
            return
        self.watching = _Watch(self._receive, self.task, self)

    async def receive(self) -> Message:
        """The app's `receive`: the server's own until watching starts, then the read-ahead."""
        if self.watching is not None:
            return await self.watching.receive()
        past_due = self._reading == _WAITING_FOR_FIRST_READ
        self._has_read = True
        self._reading = _READING
        try:
            return await self._receive()
        finally:
            past_due = past_due or self._reading == _READING_PAST_DUE
            self._reading = _NOT_READING
            if past_due:
                self.start_watching()

    def disconnect_caused(self, task: asyncio.Task[Any]) -> bool:
        """True when the cancellation being handled is the one a disconnect sent."""
        return self.watching is not None and self.watching.disconnect_caused(task)


class _Watch:
    """The watch over one request's client, from `WATCH_AFTER` on.

    It is the only reader of the server's `receive`, handing its messages to the app, and
    cancels the app's task when `http.disconnect` arrives before the response is complete. A
    disconnect is therefore noticed at most about `WATCH_AFTER` late.

    Rule: it holds at most one message for the app, so it never reads far ahead of it. Body
    pieces the app has not taken yet are joined into that one message, up to `READ_AHEAD_LIMIT`
    bytes, so that the watch keeps reading (and hears a client that leaves mid-upload) while the
    app is busy elsewhere; past the limit it waits for the app, and the upload its backpressure.
    """

    __slots__ = (
        "_app_done",
        "_cancelling",
        "_exchange",
        "_held",
        "_pump",
        "_receive",
        "_task",
        "_waiters",
        "disconnected",
        "ended",
    )

    def __init__(self, receive: Receive, task: asyncio.Task[Any], exchange: _Exchange) -> None:
        self._receive = receive
        self._task = task
        self._exchange = exchange
        self._cancelling = task.cancelling()
        self.disconnected = False  # the client left before the response was complete
        self.ended = False  # the server reported `http.disconnect`: no message comes after it
        self._held: Message | None = None  # read from the server, not yet taken by the app
        self._app_done = False  # the app has ended: nobody takes messages any more
        # Whoever waits for the other side: the app for a message, the pump for room.
        self._waiters: list[asyncio.Future[None]] = []
        self._pump: asyncio.Task[None] | None = task.get_loop().create_task(self._read_ahead())

    async def _read_ahead(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                # Servers report the end of a complete exchange as a disconnect too: the app
                # still gets the message (from then on at every read, as from the server), but
                # only a client leaving before the response is complete cancels it.
                self.ended = True
                if not self._exchange.response_done:
                    self.disconnected = True
                    self._task.cancel()
                self._wake()
                return
            while self._held is not None and not _joins(self._held, message):
                await self._wait()
            if self._app_done:
                continue  # nobody will take it: read on, so that the server is never blocked
            held = self._held
            if held is None:
                self._held = message
            else:
                body = held.get("body", b"") + message.get("body", b"")
                more = message.get("more_body", False)
                self._held = {"type": "http.request", "body": body, "more_body": more}
            self._wake()

    async def receive(self) -> Message:
        while self._held is None:
            if self.ended:
                return _DISCONNECT
            await self._wait()
        message, self._held = self._held, None
        self._wake()
        return message

    async def _wait(self) -> None:
        waiter = self._task.get_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def disconnect_caused(self, task: asyncio.Task[Any]) -> bool:
        return self.disconnected and task.uncancel() <= self._cancelling

    def app_ended(self) -> None:
        """The app has ended and the middleware answers in its place: from now on the watch
        drops what it reads instead of holding it for the app.

        Rule: a message nobody will take must not block the server. hypercorn completes a
        send only once its own queue of messages for the app has room (to report the end of
        the exchange), so a watch still holding a full read-ahead for an app that is gone
        would hang the middleware's answer, and the request, for good."""
        self._app_done = True
        self._held = None
        self._wake()

    def stop(self) -> None:
        # The reader is let go of as it is cancelled: once done it holds its CancelledError,
        # whose traceback holds the reader's frame and so this watch, a cycle that only the
        # garbage collector would free (with the request it holds).
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()


def _joins(held: Message, message: Message) -> bool:
    """Whether body piece `message` may be joined to the `held` one the app has not taken."""
    return bool(
        held.get("more_body", False)
        and held["type"] == "http.request"
        and message["type"] == "http.request"
        and len(held.get("body", b"")) < READ_AHEAD_LIMIT
    )


class _Watchlist:
    """The requests of one loop not yet watched for disconnects.

    A request is listed when it reaches the app and leaves the list when it finishes or its
    watch starts; the list holds it only meanwhile, so a finished request is freed at once.
    One loop timer, running only while the list is not empty, rings `WATCH_AFTER` after the
    oldest listed request started: each request that has run that long starts being watched,
    and the timer re-arms for the oldest one left. A request is thus watched from
    `WATCH_AFTER` into it (a little later when the loop is busy).
    """

    __slots__ = ("_listed", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._listed: set[_Exchange] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: _Exchange) -> None:
        self._listed.add(exchange)
        if self._timer is None:  # listed requests are younger than the one the timer is for
            self._timer = self._loop.call_later(WATCH_AFTER, self._ring)

    def discard(self, exchange: _Exchange) -> None:
        self._listed.discard(exchange)

    def _ring(self) -> None:
        self._timer = None
        now = _clock.monotonic()
        due_since = now - WATCH_AFTER
        oldest = now
        due = []
        for exchange in self._listed:
            if exchange.started <= due_since:
                due.append(exchange)
            elif exchange.started < oldest:
                oldest = exchange.started
        for exchange in due:
            self._listed.discard(exchange)
            exchange.start_watching()
        if self._listed:
            self._timer = self._loop.call_later(oldest + WATCH_AFTER - now, self._ring)


# Each loop's one _Watchlist.
_watchlists: PerLoop[_Watchlist] = PerLoop("_tether_watchlist", _Watchlist)
