"""Every exception tether raises, in one tree.

    TetherError
    ├── DeadlineExceeded          (also TimeoutError) our own budget ran out, here
    ├── InvalidDeadlineHeader     (also ValueError)   a deadline on the wire could not be read
    ├── UpstreamError                                 a remote party answered with a failure
    │   ├── UpstreamTimeout       (also TimeoutError) the remote says *its* time ran out:
    │   │                                             HTTP 504, gRPC DEADLINE_EXCEEDED,
    │   │                                             PostgreSQL SQLSTATE 57014 from its own
    │   │                                             statement_timeout
    │   └── UpstreamUnavailable                       refused, reset, 502/503, gRPC UNAVAILABLE
    └── ChainError                (also TypeError)    a filter chain was built wrong

Rule: `DeadlineExceeded` means *tether* cancelled the work because the caller's budget was
spent; it is never used for a timeout somebody else reported. The two call for different
actions: the first is the caller's problem (it asked for too little, or waited too long), the
second is a slow or unhealthy dependency.

Rule: catching `TimeoutError` catches both our budget running out and a remote timeout; catch
`DeadlineExceeded` or `UpstreamTimeout` to tell them apart.

`asyncio.CancelledError` is not in the tree and tether never swallows it: a deadline block
turns the cancellation *it* caused into `DeadlineExceeded` and lets every other cancellation
through. A `CancelledError` in a task that nobody is cancelling is not a cancellation but a
bug, and servers' safety nets answer it as one (`stray_cancellation`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.deadline import Deadline


class TetherError(Exception):
    """Base of every exception tether raises."""


class DeadlineExceeded(TetherError, TimeoutError):
    """The caller's time budget ran out before the work finished.

    `budget` is the size in seconds of the budget that ran out, `inherited` tells whether it
    was the block's own or one it inherited from its caller, and `deadline` is the instant it
    ran out at (None when unknown).
    """

    def __init__(
        self,
        detail: str,
        *,
        budget: float | None = None,
        inherited: bool = False,
        deadline: Deadline | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.budget = budget
        self.inherited = inherited
        self.deadline = deadline


class InvalidDeadlineHeader(TetherError, ValueError):
    """A deadline header (or gRPC metadata entry) had a value tether refuses to guess at."""

    def __init__(self, header: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {header} header {value!r}: {reason}")
        self.header = header
        self.value = value
        self.reason = reason


class UpstreamError(TetherError):
    """A remote party (HTTP upstream, gRPC server, database) answered with a failure."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The remote party reports that its own time ran out (not ours)."""


class UpstreamUnavailable(UpstreamError):
    """The remote party could not be reached or refused the work."""


class ChainError(TetherError, TypeError):
    """A filter chain was assembled in an order that would break its guarantees."""


def reported_failure(
    exc: BaseException, expected: Callable[[BaseException], bool] | None = None
) -> BaseException:
    """The exception a server answers for when `exc` ends a request.

    Rule: an exception group (from `asyncio.TaskGroup`, an anyio task group, `tether.TaskGroup`:
    a handler that fans out) stands for its first exception when every exception in it, nested
    groups included, is `expected` (by default: one of tether's errors, an outcome such as an
    upstream being down, which a server answers precisely). A fan-out whose one upstream is down
    is then answered as the same call made alone. A group holding anything else stands for
    itself: a bug, answered as an internal error. Any other exception stands for itself.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    is_expected = _is_tether_error if expected is None else expected
    leaves = _leaves(exc)
    if all(is_expected(leaf) for leaf in leaves):
        return leaves[0]
    return exc


def stray_cancellation(exc: BaseException) -> RuntimeError | None:
    """The bug to report in place of `exc` when it is a stray `CancelledError`; None when it is
    not one (a real cancellation, or no CancelledError at all).

    Rule: a `CancelledError` reaching a server's safety net in a task that nobody is
    cancelling (`task.cancelling()` is 0) did not come to cancel the request: the code awaited
    a task or future that something else cancelled, and the error escaped it. The request is
    not being stopped, so it must still be answered: as a failure (500, `INTERNAL`), logged
    with its traceback. Left to propagate, servers answer it with their own plain 500 (uvicorn)
    or not at all (grpc.aio: the caller waits for its whole deadline).
    """
    if not isinstance(exc, asyncio.CancelledError):
        return None
    task = asyncio.current_task()
    if task is None or task.cancelling():
        return None
    error = RuntimeError(
        "CancelledError in a task that nobody cancelled: the code awaited something that was "
        "cancelled elsewhere, and did not handle it"
    )
    error.__cause__ = exc
    return error


def failure_summary(failure: BaseException, exc: BaseException) -> str:
    """The text of `failure`, which `reported_failure` chose for `exc`, for a log line: when
    it is the first of a group's exceptions, the others are named (none goes unlogged)."""
    if failure is exc or not isinstance(exc, BaseExceptionGroup):
        return str(failure)
    others = [type(leaf).__name__ for leaf in _leaves(exc)[1:]]
    if not others:
        return str(failure)
    return f"{failure} (the first of an exception group; also {', '.join(others)})"


def _is_tether_error(exc: BaseException) -> bool:
    return isinstance(exc, TetherError)


def leaves_of(exc: BaseException) -> list[BaseException]:
    """The exceptions `exc` stands for: an exception group's, nested groups flattened, in the
    group's order; any other exception's, itself."""
    return _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in `group`, nested groups flattened, in the group's order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def format_seconds(seconds: float) -> str:
    """Format a duration for people: `850 ms`, `3.2 s`, `0.4 ms`."""
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.3g} s"


def one_line(text: str, limit: int = 200) -> str:
    """An error message that may quote raw input over several lines (a parser's refusal, say)
    as one line of at most `limit` characters, for log lines and problem details."""
    return " ".join(text.split())[:limit]
