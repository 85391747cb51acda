"""Virtual time for deadline tests: exact, and as fast as the code under test.

`VirtualClock` replaces tether's monotonic and wall clocks, and runs an asyncio event loop on
the same virtual time. Whenever the loop has nothing ready to run, the clock jumps straight to
the next timer instead of sleeping, so `await asyncio.sleep(30)` inside a 5 s deadline block
finishes at once and raises `DeadlineExceeded` at exactly virtual 5 s.

    clock = VirtualClock()
    result = clock.run(main())      # runs main() on a virtual-time loop

    with clock:                     # or: only swap tether's clocks (no event loop)
        deadline = Deadline.after(2)
        clock.advance(3)
        assert deadline.expired

Rule: the virtual loop still polls real sockets, but without waiting for them. Use it for
deadline logic; use the real clock for tests that need real I/O to make progress.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from tether import _clock

_T = TypeVar("_T")


class VirtualClock:
    """A monotonic and a wall clock that move only when told to, or when a loop waits."""

    def __init__(self, *, start: float = 1_000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - self._now
        self._installed = 0

    def monotonic(self) -> float:
        """Virtual seconds on the monotonic clock."""
        return self._now

    def wall(self) -> float:
        """Virtual seconds since the Unix epoch; moves with the monotonic clock."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (never backward)."""
        if not seconds >= 0:
            raise ValueError(f"time only moves forward; cannot advance by {seconds!r}")
        self._now += seconds

    def set_wall(self, epoch_seconds: float) -> None:
        """Jump the wall clock (only) to `epoch_seconds`, as an NTP step would."""
        self._wall_offset = float(epoch_seconds) - self._now

    def __enter__(self) -> VirtualClock:
        """Make tether read this clock until the block ends."""
        if self._installed == 0:
            _clock.use(self.monotonic, self.wall)
        self._installed += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._installed -= 1
        if self._installed == 0:
            _clock.use_system_clocks()

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop whose `time()` is this clock and which never sleeps in real time."""
        return _VirtualTimeLoop(self)

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """Run `main` to completion on a virtual-time loop, with tether reading this clock."""
        with self, asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(main)


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking; a wait advances the virtual clock."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:  # no timer pending: only I/O can wake the loop
            return super().select(None)
        if timeout > 0:
            self._clock.advance(timeout)
        return ready


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(selector=_VirtualSelector(clock))
        self._virtual_clock = clock

    def time(self) -> float:
        return self._virtual_clock.monotonic()
