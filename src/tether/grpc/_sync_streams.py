"""Synchronous streaming handlers (`def` generators), run one step at a time from the call's task.

grpc.aio runs such a handler in a thread of its `migration_thread_pool` that iterates the
generator and hands each response to the call through a one-place queue. When the call ends
before the generator does (the client cancels, its deadline passes), nothing takes from that
queue again: the thread blocks inside grpc for good and the generator is never closed. Each
such call keeps one of the pool's threads until the process exits; once all are taken, every
synchronous handler of the server waits for ever (grpc 1.85: two cancelled streams stop a
two-thread pool).

tether's interceptor runs these handlers itself, as an async generator (what grpc.aio expects
of an async handler) that asks a worker thread for one response at a time. Rules:
- At most one step of the generator runs at a time, in a worker thread, in the call's own
  context: the request id, the trace context and the deadline are ambient there (the deadline
  known, not enforced: a step is never interrupted). The next response is made while the
  previous one is sent, so the generator runs at most one response ahead of the call (grpc's
  own way runs up to two ahead).
- When the call ends first, the generator is closed in a worker thread as soon as no step
  runs: at once if it waits at a `yield`, else right after the step in progress. Its
  `finally` blocks run; no thread is kept.
- The handler gets grpc's synchronous servicer API; `abort` and `send_initial_metadata`
  reach the call through its event loop. Callbacks from `add_callback` run when the call ends
  (grpc.aio never runs them for streams).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Executor
from typing import Any, NoReturn

import grpc

from tether.deadline import current_deadline, deadline_for_thread

log = logging.getLogger("tether.grpc")

_END = object()  # a step's answer once the generator (or the request stream) has ended


def run_in_threads(
    behavior: Callable[..., Any], *, request_streaming: bool, thread_pool: Executor | None
) -> Callable[..., AsyncIterator[Any]]:
    """The synchronous streaming handler `behavior` as an async generator function, stepping
    it in `thread_pool` (None: the event loop's default executor)."""

    async def stepped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        if request_streaming:
            request = _blocking_requests(request.__aiter__(), loop)
        deadline = current_deadline()
        responses = responses_under_deadline(
            behavior,
            request,
            SyncServicerContext(context, loop),
            None if deadline is None else deadline.when,
        )
        steps = _Steps(responses, loop, thread_pool)
        try:
            step = steps.start()
            while True:
                response = await asyncio.shield(step)  # see `_Steps.start`
                if response is _END:
                    return
                step = steps.start()  # the next response is made while this one is sent
                yield response
        finally:
            steps.stop()

    return stepped


def responses_under_deadline(
    behavior: Callable[..., Any], request: Any, context: Any, when: float | None
) -> Generator[Any, None, None]:
    """A synchronous streaming handler's responses, under the call's deadline: entered in the
    thread and context of the first step, left when the generator ends or is closed."""
    with deadline_for_thread(when):
        yield from behavior(request, context)


class _Steps:
    """One generator, stepped in worker threads, in a copy of the call's context."""

    __slots__ = ("_context", "_generator", "_lock", "_loop", "_over", "_pool", "_running")

    def __init__(
        self,
        generator: Generator[Any, None, None],
        loop: asyncio.AbstractEventLoop,
        pool: Executor | None,
    ) -> None:
        self._generator = generator
        self._context = contextvars.copy_context()
        self._loop = loop
        self._pool = pool
        self._lock = threading.Lock()  # guards the two flags below
        self._running = False  # a step is in a worker thread (or waits for one)
        self._over = False  # the call has ended: no more steps; close the generator

    def start(self) -> asyncio.Future[Any]:
        """Start making the next response (or `_END`). Await the step shielded: once started,
        a step is never cancelled, not even while it waits for a free thread, because it is
        what closes the generator if the call ends meanwhile (see `stop`)."""
        with self._lock:
            self._running = True
        try:
            step = self._loop.run_in_executor(self._pool, self._step)
        except BaseException:  # the executor is shut down: no step runs, `stop` closes
            with self._lock:
                self._running = False
            raise
        step.add_done_callback(self._after_the_call)
        return step

    def _step(self) -> Any:  # in a worker thread
        try:
            return self._context.run(next, self._generator, _END)
        finally:
            with self._lock:
                self._running = False
                close = self._over
            if close:
                self._close()

    def stop(self) -> None:
        """The call has ended: close the generator now, or after the step in progress."""
        with self._lock:
            self._over = True
            if self._running:
                return  # that step closes it
        if inspect.getgeneratorstate(self._generator) == inspect.GEN_CLOSED:
            return  # it has ended: nothing to close
        try:
            closing = self._loop.run_in_executor(self._pool, self._close)
        except RuntimeError:  # the executor or the loop is shut down: close it here
            self._close()
        else:
            closing.add_done_callback(self._after_the_call)

    def _close(self) -> None:
        self._context.run(self._generator.close)

    def _after_the_call(self, done: asyncio.Future[Any]) -> None:
        """Log what a step or the closing raised once nobody waits for it (the call's own
        exceptions reach the call and its safety net)."""
        if done.cancelled() or not self._over:
            return
        exc = done.exception()
        if exc is not None and not isinstance(exc, grpc.aio.AbortError):
            log.warning("a synchronous stream raised after its call ended", exc_info=exc)


def _blocking_requests(
    requests: AsyncIterator[Any], loop: asyncio.AbstractEventLoop
) -> Iterator[Any]:
    """The call's request stream as a plain iterator, for a worker thread."""
    while True:
        request = asyncio.run_coroutine_threadsafe(_next_request(requests), loop).result()
        if request is _END:
            return
        yield request


async def _next_request(requests: AsyncIterator[Any]) -> Any:
    try:
        return await requests.__anext__()
    except StopAsyncIteration:
        return _END


class SyncServicerContext:
    """grpc's synchronous servicer context over a grpc.aio call's, for a worker thread: the
    methods grpc.aio gives synchronous handlers, plus `is_active()`."""

    __slots__ = ("_context", "_loop")

    def __init__(
        self, context: grpc.aio.ServicerContext[Any, Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._context = context
        self._loop = loop

    def _on_loop(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        self._on_loop(self._context.abort(code, details, trailing_metadata))
        raise AssertionError("context.abort returns only by raising")  # pragma: no cover

    def send_initial_metadata(self, metadata: Any) -> None:
        self._on_loop(self._context.send_initial_metadata(metadata))

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        """Run `callback` (in the event loop's thread) when the call ends."""

        def when_done(context: Any) -> None:
            callback()

        # grpc's stubs type the callback as a class of their own, not a callable
        self._loop.call_soon_threadsafe(self._context.add_done_callback, when_done)  # type: ignore[arg-type]
        return True

    def is_active(self) -> bool:
        return not self._context.done()

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(metadata)

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_compression(self, compression: grpc.Compression) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()
