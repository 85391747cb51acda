"""The two clocks tether reads, in one place so that tests can replace both.

Rule: every instant in memory is on `monotonic()` (seconds, arbitrary origin). `wall()`
(seconds since the Unix epoch) is read only to translate absolute deadlines that arrive on
the wire. `tether.testing.VirtualClock` swaps both functions, and runs an event loop whose
`time()` is the same virtual monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

monotonic: Callable[[], float] = time.monotonic
wall: Callable[[], float] = time.time


def use(monotonic_clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
    """Make tether read these clocks from now on."""
    global monotonic, wall
    monotonic = monotonic_clock
    wall = wall_clock


def use_system_clocks() -> None:
    """Go back to the system's clocks."""
    use(time.monotonic, time.time)
