"""The ambient time budget: a `Deadline` value and the blocks that narrow it.

Rules (the whole design follows from them):

1. A deadline is an instant on the monotonic clock, never a duration. Durations exist only at
   the edges: `Deadline.after(seconds)` in memory, remaining milliseconds on the wire.
2. Invariant: a block's deadline is never later than its parent's. Asking for more time than
   the caller has keeps the caller's deadline (the block is then said to *inherit* it).
3. A reusable function takes no `timeout=` argument. The caller narrows the ambient deadline
   with `deadline_after`/`deadline_at`; the callee reads `current_deadline()`.
4. Enforcement is asyncio's own edge-triggered cancellation, as in `asyncio.timeout_at`: at the
   deadline the task is cancelled once, and the block that owns the deadline turns that
   cancellation into `DeadlineExceeded`. Other cancellations pass through untouched.
5. Entering a block whose deadline has already passed raises `DeadlineExceeded` at once:
   no work starts without budget.
6. `detached()` is the only way out of the ambient budget.

The deadline lives in a context variable, so tasks created inside a block see it. asyncio does
*not* cancel a plain `create_task` child when the block expires (the child only knows the
deadline); children started through `TaskGroup` are cancelled with the block.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Generator
from contextvars import Context, ContextVar, Token
from heapq import heapify, heappop, heappush
from types import TracebackType
from typing import Any, Final, TypeVar, final

from tether import _clock
from tether._loop_state import PerLoop
from tether.errors import DeadlineExceeded, format_seconds

__all__ = [
    "CallTimer",
    "Deadline",
    "DeadlineScope",
    "TaskGroup",
    "check_deadline",
    "current_deadline",
    "deadline_after",
    "deadline_at",
    "deadline_for_request",
    "deadline_for_thread",
    "detached",
    "earliest",
    "time_remaining",
]


@final
class Deadline:
    """An immutable instant on tether's monotonic clock by which work must be done."""

    __slots__ = ("_when",)
    _when: float

    def __new__(cls, when: float) -> Deadline:
        self = object.__new__(cls)
        if type(when) is not float or not -_INF < when < _INF:  # the common case: one test
            when = _finite(when, "when")
        _set_when(self, when)
        return self

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline `seconds` from now (zero or negative: already expired)."""
        return cls(_clock.monotonic() + _finite(seconds, "seconds"))

    @classmethod
    def at(cls, instant: float) -> Deadline:
        """The deadline at `instant`, a reading of tether's monotonic clock."""
        return cls(instant)

    @property
    def when(self) -> float:
        """The instant, on tether's monotonic clock."""
        return self._when

    def remaining(self) -> float:
        """Seconds left until the deadline; never negative."""
        left = self._when - _clock.monotonic()
        return left if left > 0.0 else 0.0

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return _clock.monotonic() >= self._when

    def earlier(self, other: Deadline | None) -> Deadline:
        """The earlier of this deadline and `other` (None stands for "no deadline")."""
        if other is None or self._when <= other._when:
            return self
        return other

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Deadline is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deadline) and self._when == other._when

    def __hash__(self) -> int:
        return hash(self._when)

    def __lt__(self, other: Deadline) -> bool:
        return self._when < other._when

    def __le__(self, other: Deadline) -> bool:
        return self._when <= other._when

    def __gt__(self, other: Deadline) -> bool:
        return self._when > other._when

    def __ge__(self, other: Deadline) -> bool:
        return self._when >= other._when

    def __repr__(self) -> str:
        return f"Deadline(when={self._when:.6f}, remaining={self.remaining():.6f})"


_set_when = Deadline.__dict__["_when"].__set__  # the slot's own setter: immutable to others
_new_deadline = object.__new__


def _trusted_deadline(when: float) -> Deadline:
    """`Deadline(when)` for an instant tether computed itself (finite; not checked again)."""
    deadline: Deadline = _new_deadline(Deadline)
    _set_when(deadline, when)
    return deadline


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    """The earliest of the given deadlines, ignoring None; None when none is given."""
    found: Deadline | None = None
    for deadline in deadlines:
        if deadline is not None:
            found = deadline.earlier(found)
    return found


_INF = math.inf


def _finite(value: float, name: str) -> float:
    try:
        if -_INF < value < _INF:
            return value if type(value) is float else float(value)
    except TypeError:
        raise TypeError(f"{name} must be a number of seconds, got {value!r}") from None
    raise ValueError(f"{name} must be finite, got {value!r}")


# The scope whose deadline is in force for the running context; None means no deadline.
_current: ContextVar[DeadlineScope | None] = ContextVar("tether.deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline in force for the running task, or None when there is none."""
    scope = _current.get()
    return None if scope is None else scope.deadline


def time_remaining() -> float | None:
    """Seconds left of the ambient budget (never negative), or None without a deadline."""
    scope = _current.get()
    if scope is None:
        return None
    left = scope._in_force - _clock.monotonic()
    return left if left > 0.0 else 0.0


def check_deadline() -> None:
    """Raise `DeadlineExceeded` when the ambient budget has run out; otherwise do nothing.

    The checkpoint for work that the deadline cannot cancel. Synchronous code in a worker
    thread (a FastAPI or Starlette `def` endpoint, `asyncio.to_thread`) runs in a copy of the
    request's context, so it knows the deadline, but no cancellation reaches a thread: at the
    deadline the client is answered and the thread runs on, unseen, until it returns. Call this
    between steps of such work (each loop round, each file, each batch) so that it stops too.
    Also useful in a long CPU-bound stretch between awaits. Costs a context-variable read and a
    clock read.
    """
    scope = _current.get()
    if scope is not None and _clock.monotonic() >= scope._in_force:
        raise scope._exceeded()


def deadline_enforced_here() -> bool:
    """True when the ambient deadline will cancel the running task by itself: it was set by a
    deadline block of this very task, whose timer is armed. (A task that only inherited a
    deadline from the task that created it knows the deadline but is not cancelled at it.)"""
    scope = _current.get()
    if scope is None:
        return False
    task = scope._task
    if task is None:  # a thread's block: nothing enforces it
        return False
    # current_task(loop), not current_task(): on CPython 3.11 looking up the running loop is a
    # getpid() system call, and this runs once per database statement.
    return task is _current_task(task.get_loop())


_current_task = asyncio.current_task

# Scope states.
_CREATED: Final = 0
_ENTERED: Final = 1
_DONE: Final = 2  # left in time, or never armed
_EXPIRING: Final = 3  # its timer cancelled the task; the block has not exited yet
_EXPIRED: Final = 4  # left after its timer rang
_PRIMED: Final = -1  # made by deadline_for_request(), not entered yet


@final
class DeadlineScope:
    """One `async with deadline_after(...)` / `deadline_at(...)` block.

    Read-only for users: `deadline` (the one in force inside the block), `budget` (the size in
    seconds of the budget that deadline belongs to), `inherited` (True when the caller's
    deadline was earlier than what the block asked for) and `expired`.
    """

    __slots__ = (
        "_alarm",
        "_alarms",
        "_armed",
        "_asked",
        "_cancelling",
        "_deadline",
        "_in_force",
        "_known_task",
        "_loop_when",
        "_new_request",
        "_parent",
        "_requested",
        "_state",
        "_task",
        "_token",
        "budget",
        "inherited",
    )
    # Set on entry, and only for a block that has a deadline in force:
    _in_force: float  # the instant in force (the truth), read on every nested entry
    _deadline: Deadline | None  # the same instant as a Deadline; None until first asked for
    _asked: float | None  # the seconds the block asked for, for the error message
    # Set only when the block arms its timer (then it is in `_current` until it exits):
    _task: asyncio.Task[Any] | None  # None: a thread's block (deadline_for_thread)
    _alarms: _Alarms
    _cancelling: int
    _loop_when: float  # the deadline on the running loop's clock
    _parent: DeadlineScope | None

    # This class runs once per request in servers: entering and leaving are written flat (no
    # helper calls beyond the alarm heap), and only what a later step reads is stored.

    def __init__(
        self,
        requested: Deadline | None,
        budget: float | None,
        task: asyncio.Task[Any] | None = None,
        new_request: bool = False,
        armed: bool = True,
    ) -> None:
        self._requested = None if requested is None else requested._when
        self._new_request = new_request
        self._armed = armed
        self.budget = budget  # the size of `requested`; replaced by the owner's when inheriting
        self._state = _CREATED
        self._alarm: _Alarm | None = None
        self._token: Token[DeadlineScope | None] | None = None
        self.inherited = False
        self._known_task = task  # the task that will run the block, when the caller knows it

    @property
    def deadline(self) -> Deadline | None:
        """The deadline in force inside the block (None when there is none)."""
        deadline: Deadline | None = getattr(self, "_deadline", None)
        if deadline is None and hasattr(self, "_in_force"):
            # Made when first asked for: most blocks end without anyone asking.
            deadline = self._deadline = _trusted_deadline(self._in_force)
        return deadline

    @property
    def expired(self) -> bool:
        """True once this block's own timer has cancelled it."""
        return self._state >= _EXPIRING

    async def __aenter__(self) -> DeadlineScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # The same block as a plain `with`, for integrations' hot paths (a server's per-request
    # code): no coroutine for entering and leaving. Only inside the task that runs the block.

    def __enter__(self) -> DeadlineScope:
        if self._state == _PRIMED:  # deadline_for_request(): no parent, the instant as given
            now = _clock.monotonic()
            when = self._in_force
            self.budget = when - now
            if when <= now:
                self._state = _DONE
                raise self._exceeded()
            self._state = _ENTERED
            if self._armed:
                task = self._task
                assert task is not None  # only a thread's block has none, and it is unarmed
                self._arm_timer(task, when, now)
            self._token = _current.set(self)
            return self
        if self._state != _CREATED:
            raise RuntimeError("a deadline block can be entered only once")
        self._state = _ENTERED
        now = _clock.monotonic()
        parent = self._parent = None if self._new_request else _current.get()
        requested = self._requested
        if requested is None:
            self._asked = None
            if parent is None:  # no deadline asked for and none inherited
                if self._new_request:  # a request without a budget: none from the context
                    self._token = _current.set(None)  # undone on exit, as an entered block's
                else:
                    self._state = _DONE
                return self
            when = self._inherit(parent)
        else:
            asked = self._asked = requested - now
            if parent is not None and parent._in_force <= requested:
                when = self._inherit(parent)
            else:
                when = self._in_force = requested
                self._deadline = None
                if self.budget is None:
                    self.budget = asked
        if when <= now:
            self._state = _DONE
            raise self._exceeded()
        task = self._known_task or asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline block must run inside an asyncio task")
        if self.inherited and parent is not None and parent._task is task:
            # The parent's timer already cancels this task at this very deadline.
            self._state = _DONE
            return self
        self._task = task
        if self._armed:  # unarmed: something else cancels the task at this deadline
            self._arm_timer(task, when, now)
        self._token = _current.set(self)
        return self

    def _arm_timer(self, task: asyncio.Task[Any], when: float, now: float) -> None:
        # The task's loop, not asyncio.get_running_loop(): on CPython 3.11 every lookup of the
        # running loop is a getpid() system call, and this runs once per request.
        loop = task.get_loop()
        self._cancelling = task.cancelling()
        loop_when = self._loop_when = loop.time() + (when - now)
        alarms = _alarms_per_loop.last
        if alarms._loop is not loop:
            alarms = _alarms_per_loop.of(loop)
        self._alarms = alarms
        self._alarm = alarms.add(loop_when, self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = self._token
        if token is None:  # never armed: inherited within the task, or no deadline
            return
        self._token = None
        alarm = self._alarm
        if alarm is not None:
            self._alarms.cancel(alarm)
            self._alarm = None
        _current.reset(token)
        if self._state == _ENTERED:
            self._state = _DONE
            return
        self._state = _EXPIRED
        task = self._task
        assert task is not None  # it expired: its timer was armed, in its task
        # Like asyncio.Timeout: convert only the cancellation this block caused.
        if task.uncancel() <= self._cancelling and isinstance(exc, asyncio.CancelledError):
            earlier = _interrupted_exceeded(exc, self.deadline)
            if earlier is not None:
                # The cancellation came while an error for this very deadline was on its way
                # out (a pool wait that gave up just before it, whose clean-up then ran past
                # it): that error says more than the block's own would, so it goes on.
                raise earlier
            raise self._exceeded() from exc

    def _inherit(self, parent: DeadlineScope) -> float:
        self.budget = parent.budget
        self.inherited = True
        self._deadline = parent._deadline
        when: float = parent._in_force
        self._in_force = when
        return when

    def _on_timeout(self) -> None:
        self._state = _EXPIRING
        self._alarm = None
        assert self._task is not None  # an armed block has its task
        self._task.cancel()

    def _exceeded(self) -> DeadlineExceeded:
        budget = self.budget or 0.0
        if self.inherited:
            detail = f"deadline exceeded: the caller's budget of {format_seconds(budget)} ran out"
            if self._asked is not None:
                detail += f" (this block asked for {format_seconds(max(self._asked, 0.0))})"
        else:
            detail = f"deadline exceeded: this block's budget of {format_seconds(budget)} ran out"
        return DeadlineExceeded(
            detail, budget=budget, inherited=self.inherited, deadline=self.deadline
        )

    # -- used by detached(): pause and resume the timers of this task's enclosing blocks --

    def _pause(self) -> bool:
        if self._alarm is None:
            return False
        self._alarms.cancel(self._alarm)
        self._alarm = None
        return True

    def _resume(self) -> None:
        if self._state != _ENTERED:
            return
        # Re-armed even when the instant has passed (it then rings at the loop's next turn),
        # not a direct cancel(): on 3.11 a pending cancel of the running task cannot be
        # withdrawn if the block ends before its next await.
        self._alarm = self._alarms.add(self._loop_when, self)


# An armed block (or a client's call timer) waiting for its instant: [instant on the loop's
# clock, sequence number, the block or timer, or None once it no longer waits]. A list, so the
# heap compares in C.
_Alarm = list[Any]


class _Alarms:
    """The deadline timers of one event loop, behind a single loop timer.

    A block that starts and ends within its budget (the common case, thousands of times a
    second in a server) costs a heap push and a flag instead of creating and cancelling a loop
    timer. Rules:
    - the loop timer is armed for the earliest alarm in the heap, and only re-armed when a new
      alarm comes earlier (requests with equal budgets arrive in deadline order, so almost
      never);
    - a cancelled alarm stays in the heap with its block cleared; it is dropped when it
      reaches the top, or when cancelled alarms outnumber live ones (so the heap holds at
      most about twice the blocks in flight);
    - an alarm rings no earlier than its instant on the loop's clock.
    Only its own loop's thread touches it.
    """

    __slots__ = ("_armed_for", "_cancelled", "_heap", "_loop", "_next", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[_Alarm] = []
        self._cancelled = 0
        self._next = 0
        self._timer: asyncio.Handle | None = None
        self._armed_for = _INF

    def add(self, when: float, scope: DeadlineScope | CallTimer) -> _Alarm:
        self._next += 1
        alarm = [when, self._next, scope]
        heappush(self._heap, alarm)
        if when < self._armed_for:
            self._arm(when)
        return alarm

    def cancel(self, alarm: _Alarm) -> None:
        alarm[2] = None
        self._cancelled += 1
        heap = self._heap
        if self._cancelled == len(heap):  # nothing waits (the timer rings once for nothing)
            heap.clear()
            self._cancelled = 0
        elif self._cancelled > 32 and 2 * self._cancelled > len(heap):
            heap[:] = [alarm for alarm in heap if alarm[2] is not None]
            heapify(heap)
            self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        if when <= self._loop.time():  # due already (a resumed block): before other callbacks
            self._timer = self._loop.call_soon(self._ring)
        else:
            self._timer = self._loop.call_at(when, self._ring)

    def _ring(self) -> None:
        self._timer = None
        self._armed_for = _INF
        heap = self._heap
        now = self._loop.time()
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            alarm = heappop(heap)
            scope = alarm[2]
            if scope is None:
                self._cancelled -= 1
            else:
                alarm[2] = None
                scope._on_timeout()
        if heap:
            self._arm(heap[0][0])


# Each loop's one _Alarms.
_alarms_per_loop: PerLoop[_Alarms] = PerLoop("_tether_alarms", _Alarms)


def _interrupted_exceeded(
    cancelled: asyncio.CancelledError, deadline: Deadline | None
) -> DeadlineExceeded | None:
    """The `DeadlineExceeded` for `deadline` whose raising `cancelled` interrupted, if any: the
    first one in the chain of exceptions being handled when the cancellation came. One for
    another deadline (a nested block's, earlier) is not taken: the block's own budget is what
    its caller must hear about."""
    seen = 0
    context = cancelled.__context__
    while context is not None and seen < 16:  # a chain, not a cycle: bounded anyway
        if isinstance(context, DeadlineExceeded):
            return context if context.deadline == deadline else None
        context = context.__context__
        seen += 1
    return None


def deadline_after(seconds: float) -> DeadlineScope:
    """A block that must finish within `seconds` (or the caller's deadline, if earlier)."""
    seconds = _finite(seconds, "seconds")
    return DeadlineScope(Deadline(_clock.monotonic() + seconds), seconds)


def deadline_at(
    deadline: Deadline | None,
    *,
    task: asyncio.Task[Any] | None = None,
    new_request: bool = False,
    armed: bool = True,
) -> DeadlineScope:
    """A block that must finish by `deadline` (or the caller's, if earlier).

    None narrows nothing: the block runs under the caller's deadline, if any.
    `task`: the task that runs the block, for a caller that already holds it (a server's
    per-request task). It saves `asyncio.current_task()`, which on CPython 3.11 costs a
    getpid() system call; passing any other task than the current one is a bug.
    `new_request=True`: the block starts the handling of a request that arrived from outside,
    whose budget is `deadline` alone (None: the request has no deadline). A deadline that the
    running context happens to carry (the server's task was created from a client's task in
    the same process) is ignored.
    `armed=False`: the block makes its deadline ambient but sets no timer of its own, for a
    caller that knows something else cancels the task at that very instant (grpc.aio cancels a
    call's handler at the deadline its client sent). Expiry then arrives as that cancellation,
    not as `DeadlineExceeded`; nested blocks and `deadline_enforced_here()` rely on it as on a
    timer of tether's.
    """
    if deadline is not None and not isinstance(deadline, Deadline):
        raise TypeError(f"deadline_at() takes a Deadline or None, got {deadline!r}")
    return DeadlineScope(deadline, None, task, new_request, armed)


@final
class CallTimer:
    """The timeout of one outgoing call, for clients' per-call path: `with CallTimer(loop,
    seconds):` cancels the running task `seconds` after entry, and the block then raises
    `TimeoutError`, as `asyncio.timeout(seconds)` does.

    Rules:
    - Not ambient: code inside the block still sees the caller's deadline. So it is only for a
      client whose `seconds` already is `min(explicit, remaining - margin)` (`call_timeout()`),
      never more than the caller has, around a library's call that reads no deadline.
    - Its alarm is an entry in the loop's shared heap, as an armed block's: a call that ends in
      time costs a heap push and a flag, no loop timer (measured on the outbound client: ~3 us
      per call less than a deadline block around the call).
    - Only the cancellation it caused becomes `TimeoutError`; any other passes through.
    - `loop` is the running loop (the client's session's): the task is looked up on it, which
      on CPython 3.11 saves the getpid() system call of finding the running loop.
    """

    __slots__ = ("_alarm", "_alarms", "_cancelling", "_loop", "_seconds", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self._seconds = seconds

    def __enter__(self) -> CallTimer:
        loop = self._loop
        task = _current_task(loop)
        if task is None:
            raise RuntimeError("a call timer must run inside an asyncio task of its loop")
        self._task = task
        self._cancelling = task.cancelling()
        alarms = _alarms_per_loop.last
        if alarms._loop is not loop:
            alarms = _alarms_per_loop.of(loop)
        self._alarms = alarms
        self._alarm: _Alarm | None = alarms.add(loop.time() + self._seconds, self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        alarm = self._alarm
        if alarm is not None:  # left in time
            self._alarm = None
            self._alarms.cancel(alarm)
            return
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _on_timeout(self) -> None:
        self._alarm = None
        self._task.cancel()


_new_scope = object.__new__


def deadline_for_request(
    when: float | None, task: asyncio.Task[Any], *, armed: bool = True
) -> DeadlineScope:
    """The block of a request that arrived from outside, for servers' per-request path: the
    same block as `deadline_at(Deadline(when), task=task, new_request=True, armed=armed)`,
    made with less work (counted in a loop of its own: ~12,600 CPU instructions instead of
    ~18,600 armed, ~7,500 instead of ~13,800 unarmed).

    `when` is an instant on tether's monotonic clock, finite (not checked here: the caller
    computed it), or None for a request without a deadline (an unbounded path or method): the
    block then only clears any deadline the running context carries. `task` is the task that
    will run the block. The block's `Deadline` object is made only if something asks for it
    (`current_deadline()`, the block's `deadline`).
    """
    if when is None:
        return deadline_at(None, task=task, new_request=True)
    scope: DeadlineScope = _new_scope(DeadlineScope)
    scope._state = _PRIMED
    scope._in_force = when
    scope._deadline = None
    scope._task = task
    scope._armed = armed
    scope._parent = None
    scope._asked = None
    scope._alarm = None
    scope._token = None
    scope.inherited = False
    return scope


def deadline_for_thread(when: float | None) -> DeadlineScope:
    """The block of a request handled by synchronous code in a worker thread (a grpc.aio
    service's `def` handler): a plain `with`, entered and left in that thread. Inside it the
    instant `when` (on tether's clock, finite) is ambient, so `time_remaining()`,
    `check_deadline()` and tether's synchronous clients see it, but nothing enforces it: no
    cancellation reaches a thread. Entering it after `when` raises `DeadlineExceeded`.
    None: the request has no deadline, and none from the thread's context applies."""
    # The one block made without a task: it is unarmed, so no timer ever needs one (and a
    # block without a deadline needs none either).
    return deadline_for_request(when, None, armed=False)  # type: ignore[arg-type]


@final
class detached:  # noqa: N801 - used like a function: `async with detached():`
    """Run a block outside the caller's budget: the only way out, like a shield.

    Inside, `current_deadline()` is None (a new block inside may set its own deadline), and
    the deadlines of the enclosing blocks *of this task* are paused: their cancellation is not
    delivered while the block runs. On exit they are re-armed; if one passed meanwhile, it
    fires at the next await after the block.

    It shields from deadlines only. A cancellation from elsewhere (`task.cancel()`, a client
    that went away) still reaches the block; work that must survive even that belongs in its
    own task, started with `asyncio.create_task` inside `detached()` and kept referenced.
    """

    __slots__ = ("_paused", "_token")

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        self._paused: list[DeadlineScope] = []
        scope = _current.get()
        while scope is not None and scope._task is task:
            if scope._pause():
                self._paused.append(scope)
            scope = scope._parent
        self._token = _current.set(None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._token)
        for scope in self._paused:
            scope._resume()


_T = TypeVar("_T")


class TaskGroup(asyncio.TaskGroup):
    """`asyncio.TaskGroup` whose children end with the deadline block around it.

    When the block's deadline passes, the block's task is cancelled, and a task group that is
    cancelled cancels and awaits all its children before the block raises
    `DeadlineExceeded`: nothing started here outlives the budget. Children see the block's
    deadline through `current_deadline()`.

    Compare `asyncio.create_task`: such a child sees the deadline too, but nothing cancels it
    when the deadline passes; it runs on after the caller has given up.

    Two rules are added to asyncio's:
    - `create_task` refuses to start a child when the budget is already spent (raises
      `DeadlineExceeded`), so no work starts without budget;
    - when the budget has run out and every error the group collected is a
      `DeadlineExceeded` (children that armed the same deadline fire at the same instant as
      the block), the group raises the block's one `DeadlineExceeded`, not an ExceptionGroup.
    """

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            _, others = group.split(DeadlineExceeded)
            scope = _current.get()
            if others is None and scope is not None and _clock.monotonic() >= scope._in_force:
                raise scope._exceeded() from group
            raise

    def create_task(
        self,
        coro: Generator[Any, None, _T] | Coroutine[Any, Any, _T],
        *,
        name: str | None = None,
        context: Context | None = None,
    ) -> asyncio.Task[_T]:
        scope = _current.get()
        if scope is not None and _clock.monotonic() >= scope._in_force:
            coro.close()
            raise scope._exceeded()
        return super().create_task(coro, name=name, context=context)
