"""`TetherMiddleware`: the budget inside any ASGI app (Starlette, FastAPI, ...).

Pure ASGI (not Starlette's BaseHTTPMiddleware, which runs the app in another task and breaks
context variables). For each HTTP request, in this order:

1. `X-Request-ID` is read (1-128 characters of `A-Z a-z 0-9 . _ : / + = -`) or generated;
   malformed: 400 `validation-failed`. It becomes the ambient request id and is echoed on the
   response.
2. The deadline comes from `X-Request-Timeout` / `X-Request-Deadline` / `grpc-timeout` (the
   earliest wins), clamped to `max_budget`; without one, `default_budget` applies. Malformed:
   400 `invalid-deadline-header`. Already expired: 504 `deadline-expired-on-arrival`, and the
   app is not called. The clock starts when the middleware sees the request.
3. The app runs inside `deadline_at(deadline)`. At the deadline it is cancelled; the client gets
   504 `deadline-exceeded`, or, if the response had already started, the connection is closed.
   tether's other errors escaping the app map to their problems (`UpstreamTimeout`: 504
   `upstream-timeout`, `UpstreamUnavailable`: 503 `upstream-unavailable`).
4. A client that disconnects cancels the app (the middleware listens for `http.disconnect`
   from 5 ms into the request on; faster requests are never watched, which keeps them cheap).
5. Safety net: any other exception becomes 500 `internal-error` without its text; the traceback
   is logged with the request id; the server keeps serving.
6. The response carries `Server-Timing: app;dur=<ms in this hop>, budget;dur=<ms received>`.

Rule: the cancellation this middleware causes on disconnect is consumed here (nobody is left
to answer); every other cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tether import _clock
from tether._settings import server_budgets
from tether.deadline import Deadline, deadline_at
from tether.errors import InvalidDeadlineHeader, TetherError
from tether.problems import (
    EXPIRED_ON_ARRIVAL,
    INVALID_DEADLINE_HEADER,
    MEDIA_TYPE,
    VALIDATION_FAILED,
    Problem,
    problem_for_exception,
)
from tether.request_id import new_request_id, reset_request_id, set_request_id
from tether.tracing import reset_incoming_traceparent, set_incoming_traceparent
from tether.wire import deadline_from_headers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("tether.http")

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
_DISCONNECT: Message = {"type": "http.disconnect"}

# How long a request runs before the middleware starts watching for its client to leave.
WATCH_AFTER = 0.005


class TetherMiddleware:
    """ASGI middleware that gives each request its budget; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_budget: float = 10.0,
        max_budget: float = 60.0,
    ) -> None:
        self.app = app
        self.default_budget, self.max_budget = server_budgets(default_budget, max_budget)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(send, _clock.monotonic())
        try:
            request_id, when, traceparent = self._read_headers(scope["headers"], exchange)
        except _Refused as refusal:
            await exchange.answer(refusal.problem)
            return
        exchange.budget = when - exchange.started
        if when <= exchange.started:
            detail = "the request's deadline had passed before it arrived; nothing was done"
            await exchange.answer(EXPIRED_ON_ARRIVAL.problem(detail))
            return
        id_token = set_request_id(request_id)
        trace_token = set_incoming_traceparent(traceparent)
        try:
            await self._run(scope, receive, exchange, Deadline(when))
        finally:
            reset_incoming_traceparent(trace_token)
            reset_request_id(id_token)

    def _read_headers(
        self, headers: list[tuple[bytes, bytes]], exchange: _Exchange
    ) -> tuple[str, float, str | None]:
        """The request id, the deadline's instant, and the incoming traceparent."""
        request_id: str | None = None
        traceparent: str | None = None
        for name, value in headers:
            if name == b"x-request-id":
                if not _REQUEST_ID.fullmatch(value):
                    exchange.request_id = new_request_id()
                    detail = (
                        "X-Request-ID must be 1-128 characters of letters, digits and . _ : / + = -"
                    )
                    raise _Refused(VALIDATION_FAILED.problem(detail, header="X-Request-ID"))
                request_id = value.decode("ascii")
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
        exchange.request_id = request_id = request_id or new_request_id()
        try:
            asked = deadline_from_headers(headers, received_at=exchange.started)
        except InvalidDeadlineHeader as exc:
            raise _Refused(INVALID_DEADLINE_HEADER.problem(str(exc), header=exc.header)) from None
        if asked is None:
            return request_id, exchange.started + self.default_budget, traceparent
        return request_id, min(asked.when, exchange.started + self.max_budget), traceparent

    async def _run(
        self, scope: Scope, receive: Receive, exchange: _Exchange, deadline: Deadline
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # ASGI servers run each request in a task
        watcher = _DisconnectWatcher(receive, task, exchange)
        try:
            async with deadline_at(deadline, task=task):
                await self.app(scope, watcher.receive, exchange.send)
        except asyncio.CancelledError:
            if watcher.caused(task):
                log.info(
                    "request %s: the client went away; the handler was cancelled",
                    exchange.request_id,
                    extra={"request_id": exchange.request_id},
                )
                return
            raise
        except Exception as exc:
            _log_failure(exchange.request_id, exc)
            if not exchange.response_started:
                await exchange.answer(problem_for_exception(exc))
            elif not exchange.response_done:
                raise  # the server closes the connection: the answer cannot be completed
        finally:
            watcher.stop()


def _log_failure(request_id: str, exc: Exception) -> None:
    extra = {"request_id": request_id}
    if isinstance(exc, TetherError):  # an outcome (budget spent, upstream down), not a bug
        log.info("request %s ended with %s: %s", request_id, type(exc).__name__, exc, extra=extra)
    else:
        log.error(
            "request %s failed with an unhandled exception; answered with an internal error",
            request_id,
            exc_info=exc,
            extra=extra,
        )


class _Refused(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class _Exchange:
    """The response side of one request: adds tether's headers, knows how far it got."""

    __slots__ = ("_send", "budget", "request_id", "response_done", "response_started", "started")

    def __init__(self, send: Send, started: float) -> None:
        self._send = send
        self.started = started
        self.budget: float | None = None
        self.request_id = ""
        self.response_started = False
        self.response_done = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.response_started = True
            message["headers"] = [*message.get("headers", ()), *self._tether_headers()]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.response_done = True
        await self._send(message)

    def _tether_headers(self) -> list[tuple[bytes, bytes]]:
        elapsed = (_clock.monotonic() - self.started) * 1000
        if self.budget is None:
            timing = b"app;dur=%.1f" % elapsed
        else:
            timing = b"app;dur=%.1f, budget;dur=%.1f" % (elapsed, self.budget * 1000)
        return [(b"x-request-id", self.request_id.encode()), (b"server-timing", timing)]

    async def answer(self, problem: Problem) -> None:
        """Send `problem` as the whole response."""
        if problem.request_id is None:
            problem = Problem(
                type=problem.type,
                title=problem.title,
                status=problem.status,
                detail=problem.detail,
                instance=problem.instance,
                request_id=self.request_id or None,
                extensions=problem.extensions,
            )
        body = problem.to_json()
        headers = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await self.send(
            {"type": "http.response.start", "status": problem.status, "headers": headers}
        )
        await self.send({"type": "http.response.body", "body": body})


class _DisconnectWatcher:
    """Cancels the app's task when the client disconnects.

    Rule: a request that is answered within `WATCH_AFTER` costs no watching at all. After that
    the watcher becomes the only reader of the server's `receive`, handing messages to the app
    one at a time (so request bodies keep their backpressure) and cancelling the app's task when
    `http.disconnect` arrives. A disconnect is therefore noticed at most `WATCH_AFTER` late.
    """

    def __init__(self, receive: Receive, task: asyncio.Task[Any], exchange: _Exchange) -> None:
        self._receive = receive
        self._task = task
        self._exchange = exchange
        self._cancelling = task.cancelling()
        self._slot: asyncio.Queue[Message] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._app_receiving = False
        self._start_when_app_returns = False
        self.disconnected = False
        self._loop = task.get_loop()  # not get_running_loop(): a getpid() call on CPython 3.11
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._exchange.response_done:
            return
        if self._app_receiving:  # two readers of `receive` at once are not allowed
            self._start_when_app_returns = True
            return
        self._slot = asyncio.Queue(maxsize=1)
        self._pump = self._loop.create_task(self._run(self._slot))

    async def _run(self, slot: asyncio.Queue[Message]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if self._exchange.response_done:
                    return  # servers report the end of the exchange as a disconnect too
                self.disconnected = True
                if slot.empty():
                    slot.put_nowait(message)
                self._task.cancel()
                return
            await slot.put(message)

    async def receive(self) -> Message:
        slot = self._slot
        if slot is None:  # not watching yet: the app reads directly
            self._app_receiving = True
            try:
                return await self._receive()
            finally:
                self._app_receiving = False
                if self._start_when_app_returns:
                    self._start_when_app_returns = False
                    self._start()
        if self.disconnected and slot.empty():
            return _DISCONNECT
        return await slot.get()

    def caused(self, task: asyncio.Task[Any]) -> bool:
        """True when the cancellation being handled is the one this watcher sent."""
        return self.disconnected and task.uncancel() <= self._cancelling

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._pump is not None:
            self._pump.cancel()
