"""One shape for every layer: a handler answers a request, a filter wraps a handler.

    Handler = (request) -> Awaitable[response]
    Filter  = (request, next) -> Awaitable[response]

`chain(f1, f2, f3, handler)` is built once and answers like `f1(req, f2(req, f3(req,
handler)))`: the first filter is the outermost.

Rules:
1. A server chain starts with a `SafetyNet`. It turns any exception below it into the protocol's
   internal-error answer, logs it with the request id, and keeps the server serving. A safety
   net anywhere but first would let the filters above it crash the server, so `chain()` refuses
   to build that, and `server_chain()` refuses to build a chain without one.
2. A filter that answers without calling `next` short-circuits the chain. That is allowed (an
   auth filter refusing a request does it) but never silent: the chain logs which filter
   answered, sets `answered_by` on responses whose type declares that attribute, and calls
   `on_short_circuit(filter_name, request, response)` when given.
3. `asyncio.CancelledError` is never caught: cancellation is how deadlines work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from tether._logging import log_fields
from tether.errors import (
    ChainError,
    TetherError,
    failure_summary,
    reported_failure,
    stray_cancellation,
)
from tether.request_id import current_request_id

__all__ = ["Filter", "Handler", "SafetyNet", "chain", "server_chain"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Req], Awaitable[Resp]]
Filter = Callable[[Req, Callable[[Req], Awaitable[Resp]]], Awaitable[Resp]]
ShortCircuitHook = Callable[[str, Any, Any], None]

log = logging.getLogger("tether.chain")


class SafetyNet(Generic[Req, Resp]):
    """The outermost filter of a server chain: no exception gets past it.

    `answer(request, exc)` builds the protocol's internal-error answer (for HTTP, a 500
    problem; tether's own errors may map to more precise answers). It must not raise. The
    client never sees the exception's text; the log gets the traceback and the request id.
    """

    def __init__(
        self,
        answer: Callable[[Req, Exception], Resp],
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self._answer = answer
        self._log = logger or logging.getLogger("tether.safety_net")

    async def __call__(self, request: Req, next: Handler[Req, Resp]) -> Resp:
        try:
            return await next(request)
        except asyncio.CancelledError as exc:  # a cancellation passes through; a bug does not
            failure = stray_cancellation(exc)
            if failure is None:
                raise
            self._report(failure)
            return self._answer(request, failure)
        except Exception as exc:
            self._report(exc)
            return self._answer(request, exc)

    def _report(self, exc: Exception) -> None:
        request_id = current_request_id()
        failure = reported_failure(exc)  # a group of tether's errors: its first one
        if isinstance(failure, TetherError):  # an expected outcome, not a bug: no traceback
            log_fields(
                self._log,
                logging.WARNING,
                "request %s ended with %s: %s",
                request_id,
                type(failure).__name__,
                failure_summary(failure, exc),
                fields={"request_id": request_id},
            )
            return
        log_fields(
            self._log,
            logging.ERROR,
            "request %s failed with an unhandled %s; answered with an internal error",
            request_id,
            type(exc).__name__,
            exc_info=exc,
            fields={"request_id": request_id},
        )


def chain(
    *links: Callable[..., Awaitable[Resp]],
    on_short_circuit: ShortCircuitHook | None = None,
) -> Handler[Any, Resp]:
    """Compose `filters..., handler` into one handler; the first filter is the outermost."""
    if not links:
        raise ChainError("chain() needs at least a handler")
    for position, link in enumerate(links):
        if not callable(link):
            raise ChainError(f"chain() argument {position + 1} is not callable: {link!r}")
    *filters, handler = links
    _check_safety_net_first(filters)
    composed: Handler[Any, Resp] = handler
    for filter_ in reversed(filters):
        composed = _link(filter_, composed, _name(filter_), on_short_circuit)
    return composed


def server_chain(
    *links: Callable[..., Awaitable[Resp]],
    on_short_circuit: ShortCircuitHook | None = None,
) -> Handler[Any, Resp]:
    """`chain()` for a server: the first link must be a `SafetyNet`."""
    if not links or not isinstance(links[0], SafetyNet):
        raise ChainError(
            "a server chain must start with a SafetyNet: pass SafetyNet(...) as the first "
            "argument of server_chain(), so no exception from the filters or the handler "
            "can reach the server"
        )
    return chain(*links, on_short_circuit=on_short_circuit)


def _check_safety_net_first(filters: list[Callable[..., Any]]) -> None:
    for position, filter_ in enumerate(filters):
        if isinstance(filter_, SafetyNet) and position > 0:
            above = ", ".join(_name(f) for f in filters[:position])
            raise ChainError(
                f"the SafetyNet is filter {position + 1} of the chain, so exceptions raised "
                f"by {above} would reach the server; move the SafetyNet to the first "
                f"position of chain()"
            )


def _link(
    filter_: Callable[..., Awaitable[Resp]],
    downstream: Handler[Any, Resp],
    name: str,
    on_short_circuit: ShortCircuitHook | None,
) -> Handler[Any, Resp]:
    async def link(request: Any) -> Resp:
        called = False

        # A plain function handing back downstream's awaitable: noting the call costs no
        # extra coroutine frame.
        def next_(forwarded: Any) -> Awaitable[Resp]:
            nonlocal called
            called = True
            return downstream(forwarded)

        response = await filter_(request, next_)
        if not called:
            _short_circuited(name, request, response, on_short_circuit)
        return response

    link.__qualname__ = f"link[{name}]"
    return link


def _short_circuited(name: str, request: Any, response: Any, hook: ShortCircuitHook | None) -> None:
    request_id = current_request_id()
    log_fields(
        log,
        logging.INFO,
        "request %s was answered by filter %s without calling the rest of the chain",
        request_id,
        name,
        fields={"request_id": request_id, "answered_by": name},
    )
    if hasattr(type(response), "answered_by"):
        response.answered_by = name
    if hook is not None:
        hook(name, request, response)


def _name(filter_: Callable[..., Any]) -> str:
    name = getattr(filter_, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(filter_).__qualname__
