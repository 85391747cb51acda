"""Deadline blocks: nesting only shrinks, expiry cancels and raises, other cancels pass."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable

import pytest

from tether import (
    Deadline,
    DeadlineExceeded,
    _clock,
    check_deadline,
    current_deadline,
    deadline_after,
    deadline_at,
    time_remaining,
)
from tether.deadline import CallTimer, deadline_enforced_here, deadline_for_thread
from tether.testing import VirtualClock


def test_no_deadline_outside_blocks(clock: VirtualClock) -> None:
    """Outside any block there is no ambient deadline."""

    async def main() -> None:
        assert current_deadline() is None
        assert time_remaining() is None

    clock.run(main())


def test_block_sets_and_restores_the_ambient_deadline(clock: VirtualClock) -> None:
    """Inside a block its deadline is ambient; after the block, the old one is back."""

    async def main() -> None:
        async with deadline_after(3) as block:
            assert current_deadline() == block.deadline
            assert time_remaining() == 3
        assert current_deadline() is None

    clock.run(main())


def test_nested_block_asking_for_more_inherits_the_callers_deadline(clock: VirtualClock) -> None:
    """Rule: a child's deadline is never later than its parent's."""

    async def main() -> None:
        async with deadline_after(1) as outer, deadline_after(10) as inner:
            assert inner.deadline == outer.deadline
            assert inner.inherited
            assert not outer.inherited
            assert inner.budget == 1

    clock.run(main())


def test_nested_block_asking_for_less_narrows(clock: VirtualClock) -> None:
    """A child asking for less than its parent has gets exactly what it asked for."""

    async def main() -> None:
        async with deadline_after(5):
            async with deadline_after(2) as inner:
                assert not inner.inherited
                assert time_remaining() == 2
            assert time_remaining() == 5

    clock.run(main())


def serve_in_a_task_made_under_a_1s_deadline(
    clock: VirtualClock, serve: Callable[[], Awaitable[None]]
) -> None:
    """Run `serve` in a task created inside a 1 s deadline block, as a server's task is when an
    in-process client's task makes it: the task's context carries that deadline."""

    async def main() -> None:
        async with deadline_after(1):
            serving = asyncio.create_task(serve())
        await serving

    clock.run(main())


def test_a_new_request_block_ignores_the_deadline_its_context_carries(
    clock: VirtualClock,
) -> None:
    """A server's per-request block (new_request=True) has the request's budget alone, even
    when the task serving the request was created under another deadline (a client task in
    the same process); when it ends, the context's deadline is back."""
    seen: list[float | None] = []

    async def serve() -> None:
        with deadline_at(Deadline.after(5), new_request=True) as request:
            assert not request.inherited
            assert request.budget == 5
            seen.append(time_remaining())
            await asyncio.sleep(2)  # past the deadline the task was created under
            seen.append(time_remaining())
        seen.append(time_remaining())

    serve_in_a_task_made_under_a_1s_deadline(clock, serve)
    assert seen == [5, 3, 0]


def test_a_new_request_without_a_deadline_has_none_whatever_its_context_carries(
    clock: VirtualClock,
) -> None:
    """`deadline_at(None, new_request=True)`: a request that has no budget runs without a
    deadline, not under one its task's context happened to carry; blocks inside it set their
    own; when it ends, the context's deadline is back."""
    seen: list[float | None] = []

    async def serve() -> None:
        with deadline_at(None, new_request=True) as request:
            seen.append(time_remaining())
            assert request.deadline is None
            await asyncio.sleep(2)  # past the deadline the task was created under: not cancelled
            async with deadline_after(3):
                seen.append(time_remaining())
            seen.append(time_remaining())
        seen.append(time_remaining())

    serve_in_a_task_made_under_a_1s_deadline(clock, serve)
    assert seen == [None, 3, None, 0]


def test_expiry_cancels_the_block_and_raises_outside_it(clock: VirtualClock) -> None:
    """At the deadline the work is cancelled and DeadlineExceeded leaves the block."""
    reached_end = False

    async def main() -> float:
        nonlocal reached_end
        start = clock.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            async with deadline_after(0.3):
                await asyncio.sleep(5)
                reached_end = True
        assert caught.value.budget == pytest.approx(0.3)
        assert not caught.value.inherited
        assert "this block's budget of 300 ms" in str(caught.value)
        return clock.monotonic() - start

    elapsed = clock.run(main())
    assert elapsed == pytest.approx(0.3)
    assert not reached_end


def test_deadline_exceeded_is_a_timeout_error(clock: VirtualClock) -> None:
    """Code that catches TimeoutError also catches tether's deadline."""

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with deadline_after(0.1):
                await asyncio.sleep(1)

    clock.run(main())


def test_inner_block_that_inherits_reports_the_callers_budget(clock: VirtualClock) -> None:
    """When an inherited deadline runs out, the error names the caller's budget."""

    async def child() -> None:
        async with deadline_after(10):  # in another task: armed here, inherited
            await asyncio.sleep(60)

    async def main() -> DeadlineExceeded:
        async with deadline_after(0.5):
            task = asyncio.create_task(child())
        with pytest.raises(DeadlineExceeded) as caught:
            await task
        return caught.value

    error = clock.run(main())
    assert error.inherited
    assert error.budget == pytest.approx(0.5)
    assert "caller's budget of 500 ms" in str(error)
    assert "asked for 10 s" in str(error)


def test_same_task_inherited_block_needs_no_timer_of_its_own(clock: VirtualClock) -> None:
    """The outer block owning the deadline raises; the inheriting inner one is not armed."""

    async def main() -> None:
        with pytest.raises(DeadlineExceeded) as caught:
            async with deadline_after(1) as outer, deadline_after(5) as inner:
                await asyncio.sleep(2)
        assert outer.expired
        assert not inner.expired
        assert not caught.value.inherited

    clock.run(main())


def test_inner_expiry_can_be_handled_and_the_outer_block_goes_on(clock: VirtualClock) -> None:
    """A caught inner DeadlineExceeded leaves the outer budget intact."""

    async def main() -> str:
        async with deadline_after(5):
            try:
                async with deadline_after(1):
                    await asyncio.sleep(3)
            except DeadlineExceeded:
                pass
            assert time_remaining() == pytest.approx(4)
            await asyncio.sleep(1)
            return "done"

    assert clock.run(main()) == "done"


class _PoolGaveUp(DeadlineExceeded):
    """Stands for an error raised for the ambient deadline just before it (PoolExhausted)."""


def test_an_error_for_the_same_deadline_interrupted_by_its_expiry_goes_on(
    clock: VirtualClock,
) -> None:
    """Rule: when the block's cancellation interrupts clean-up after a DeadlineExceeded raised
    for this very deadline (a pool wait giving up 5 ms early, a session closing past the
    deadline), the caller gets that error, not the block's generic one."""

    async def close_session() -> None:
        await asyncio.sleep(0.5)  # clean-up that runs past the deadline

    async def main() -> tuple[DeadlineExceeded, float]:
        start = clock.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            async with deadline_after(0.1):
                await asyncio.sleep(0.095)
                try:
                    raise _PoolGaveUp(
                        "no connection within the budget", deadline=current_deadline()
                    )
                finally:
                    await close_session()
        return caught.value, clock.monotonic() - start

    error, elapsed = clock.run(main())
    assert type(error) is _PoolGaveUp
    assert str(error) == "no connection within the budget"
    assert elapsed == pytest.approx(0.1)  # the clean-up still ended at the deadline


def test_an_error_for_a_nested_blocks_deadline_gives_way_to_the_blocks_own(
    clock: VirtualClock,
) -> None:
    """A DeadlineExceeded of a tighter, nested budget interrupted by the outer block's expiry
    is not the outer caller's answer: the outer block's own error is."""

    async def main() -> DeadlineExceeded:
        with pytest.raises(DeadlineExceeded) as caught:
            async with deadline_after(0.3):
                try:
                    async with deadline_after(0.1):
                        await asyncio.sleep(1)
                finally:
                    await asyncio.sleep(1)
        return caught.value

    error = clock.run(main())
    assert "this block's budget of 300 ms" in str(error)
    assert isinstance(error.__cause__, asyncio.CancelledError)


def test_entering_an_expired_block_fails_fast(clock: VirtualClock) -> None:
    """Rule: no work starts without budget; the body never runs."""
    ran = False

    async def main() -> None:
        nonlocal ran
        with pytest.raises(DeadlineExceeded):
            async with deadline_at(Deadline.after(-1)):
                ran = True
        async with deadline_after(1):
            clock.advance(2)  # the budget is spent without an await
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(5):
                    ran = True

    clock.run(main())
    assert not ran


def test_other_cancellations_pass_through_unchanged(clock: VirtualClock) -> None:
    """A cancel from elsewhere stays a CancelledError, not a DeadlineExceeded."""

    async def victim() -> None:
        async with deadline_after(10):
            await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(victim())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    clock.run(main())


def test_external_cancel_at_the_deadline_is_not_swallowed(clock: VirtualClock) -> None:
    """A cancel that races the deadline still cancels the task (like asyncio.timeout)."""

    async def victim() -> None:
        async with deadline_after(1):
            await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(victim())
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + 1, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task

    clock.run(main())


def test_deadline_at_none_narrows_nothing(clock: VirtualClock) -> None:
    """deadline_at(None) keeps the caller's deadline, or none."""

    async def main() -> None:
        async with deadline_at(None) as block:
            assert current_deadline() is None
            assert block.deadline is None
        async with deadline_after(2), deadline_at(None):
            assert time_remaining() == 2

    clock.run(main())


def test_deadline_at_refuses_non_deadlines() -> None:
    """deadline_at() takes a Deadline or None, nothing else."""
    with pytest.raises(TypeError, match="Deadline or None"):
        deadline_at(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1"])
def test_deadline_after_refuses_bad_budgets(bad: object) -> None:
    """deadline_after() refuses NaN, infinity and non-numbers when called."""
    with pytest.raises((ValueError, TypeError)):
        deadline_after(bad)  # type: ignore[arg-type]


def test_a_block_is_entered_once(clock: VirtualClock) -> None:
    """Re-entering a block object is a programming error."""

    async def main() -> None:
        block = deadline_after(1)
        async with block:
            pass
        with pytest.raises(RuntimeError, match="only once"):
            async with block:
                pass

    clock.run(main())


def test_blocks_in_concurrent_tasks_are_independent(clock: VirtualClock) -> None:
    """Each task's budget is its own: one expiring does not touch the other."""

    async def worker(budget: float, work: float) -> str:
        try:
            async with deadline_after(budget):
                await asyncio.sleep(work)
                return "ok"
        except DeadlineExceeded:
            return "expired"

    async def main() -> list[str]:
        return await asyncio.gather(worker(1, 2), worker(3, 2), worker(0.5, 0.1))

    assert clock.run(main()) == ["expired", "ok", "ok"]


def test_real_clock_expiry() -> None:
    """On the real clock and loop too, a short block around a long sleep raises."""

    async def main() -> None:
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(0.02):
                await asyncio.sleep(10)

    asyncio.run(main())


def test_deadline_enforced_here_only_in_the_task_whose_block_is_armed(
    clock: VirtualClock,
) -> None:
    """True inside a block of this task; False outside, in detached(), and in a child task
    that merely inherited the deadline."""
    from tether.deadline import deadline_enforced_here, detached

    async def child() -> bool:
        return deadline_enforced_here()

    async def main() -> list[bool]:
        seen = [deadline_enforced_here()]
        async with deadline_after(5):
            seen.append(deadline_enforced_here())
            async with deadline_after(10):  # inherits, unarmed, but the parent's timer is here
                seen.append(deadline_enforced_here())
            seen.append(await asyncio.create_task(child()))
            async with detached():
                seen.append(deadline_enforced_here())
        return seen

    assert clock.run(main()) == [False, True, True, False, False]


def test_a_block_given_its_task_behaves_the_same(clock: VirtualClock) -> None:
    """`deadline_at(..., task=...)` (for servers that hold their request's task) expires, sets
    and restores the ambient deadline exactly like the plain form."""

    async def main() -> float:
        task = asyncio.current_task()
        assert task is not None
        start = clock.monotonic()
        deadline = Deadline(start + 0.2)
        with pytest.raises(DeadlineExceeded):
            async with deadline_at(deadline, task=task):
                assert current_deadline() == deadline
                await asyncio.sleep(5)
        assert current_deadline() is None
        async with deadline_at(Deadline(clock.monotonic() + 1), task=task):
            await asyncio.sleep(0.1)  # finishes in time: nothing raised
        return clock.monotonic() - start

    assert clock.run(main()) == pytest.approx(0.3)


def test_many_blocks_share_one_loop_timer_and_each_rings_at_its_own_instant(
    clock: VirtualClock,
) -> None:
    """Blocks in many tasks, entered in any order of deadlines, each expire at their instant."""
    budgets = [5.0, 1.0, 3.0, 0.5, 4.0, 2.0, 0.25]
    expired_after: dict[float, float] = {}

    async def one(budget: float) -> None:
        start = clock.monotonic()
        try:
            async with deadline_after(budget):
                await asyncio.sleep(60)
        except DeadlineExceeded:
            expired_after[budget] = clock.monotonic() - start

    async def main() -> None:
        await asyncio.gather(*(one(budget) for budget in budgets))

    clock.run(main())
    assert expired_after == {budget: pytest.approx(budget) for budget in budgets}


def test_blocks_that_finish_in_time_leave_nothing_behind(clock: VirtualClock) -> None:
    """Thousands of blocks that end within their budget: the loop's deadline heap stays small
    (cancelled entries are dropped), and one that expires afterwards still rings on time."""
    from tether.deadline import _alarms_per_loop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with deadline_after(100):  # a long-lived block keeps the heap non-empty
            for _ in range(5000):
                async with deadline_after(10):
                    await asyncio.sleep(0)
            assert len(_alarms_per_loop.of(loop)._heap) < 100
            start = clock.monotonic()
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(0.5):
                    await asyncio.sleep(10)
            assert clock.monotonic() - start == pytest.approx(0.5)

    clock.run(main())


def test_an_unarmed_block_makes_its_deadline_ambient_and_sets_no_timer(
    clock: VirtualClock,
) -> None:
    """`deadline_at(..., armed=False)` (grpc cancels the handler itself): the deadline is
    ambient and counts as enforced in this task, nested blocks asking for more inherit it
    without a timer, an earlier nested block still arms its own; and nothing of tether's
    cancels the task at the unarmed deadline."""
    from tether.deadline import deadline_enforced_here

    async def main() -> list[object]:
        deadline = Deadline(clock.monotonic() + 1)
        seen: list[object] = []
        with deadline_at(deadline, new_request=True, armed=False) as block:
            seen += [current_deadline() == deadline, deadline_enforced_here()]
            async with deadline_after(5) as longer:
                seen += [longer.inherited, longer.expired]
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(0.2):  # earlier: armed as usual
                    await asyncio.sleep(1)
            await asyncio.sleep(2)  # past the unarmed deadline: not cancelled
            seen += [block.expired, time_remaining()]
        seen.append(current_deadline())
        return seen

    assert clock.run(main()) == [True, True, True, False, False, 0.0, None]


def test_a_request_block_is_a_new_requests_deadline_block(clock: VirtualClock) -> None:
    """`deadline_for_request(when, task)` (servers' per-request path) behaves as
    `deadline_at(Deadline(when), task=task, new_request=True)`: a deadline the task's context
    carried is ignored, the budget is measured from entry, the Deadline object is one and the
    same for every reader, and at the instant the task is cancelled with `DeadlineExceeded`."""
    from tether.deadline import deadline_for_request

    async def handle(seen: list[object]) -> None:
        task = asyncio.current_task()
        assert task is not None
        when = clock.monotonic() + 2
        block = deadline_for_request(when, task)
        seen += [block.expired]
        with pytest.raises(DeadlineExceeded, match="budget of 2 s ran out") as caught:
            with block:
                seen += [current_deadline() is current_deadline(), block.budget]
                seen += [current_deadline() == Deadline(when), time_remaining()]
                await asyncio.sleep(5)
        seen += [block.expired, caught.value.deadline == Deadline(when), clock.monotonic()]
        with pytest.raises(RuntimeError, match="entered only once"):
            block.__enter__()

    async def main() -> list[object]:
        seen: list[object] = []
        async with deadline_after(0.5):  # what the server's task was created under
            server_task = asyncio.create_task(handle(seen))
        await server_task
        return seen

    start = clock.monotonic()
    seen = clock.run(main())
    assert seen[:5] == [False, True, 2.0, True, 2.0]
    assert seen[5:7] == [True, True]
    assert seen[7] == pytest.approx(start + 2)


def test_a_request_block_refuses_an_instant_already_passed(clock: VirtualClock) -> None:
    """Rule 5 holds for `deadline_for_request`: no work starts without budget."""
    from tether.deadline import deadline_for_request

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        with pytest.raises(DeadlineExceeded), deadline_for_request(clock.monotonic(), task):
            raise AssertionError("the block's body ran")  # pragma: no cover
        assert current_deadline() is None

    clock.run(main())


def test_an_unarmed_request_block_sets_no_timer(clock: VirtualClock) -> None:
    """`deadline_for_request(..., armed=False)`: ambient and enforced here, never fired."""
    from tether.deadline import deadline_enforced_here, deadline_for_request

    async def main() -> list[object]:
        task = asyncio.current_task()
        assert task is not None
        with deadline_for_request(clock.monotonic() + 1, task, armed=False) as block:
            seen: list[object] = [deadline_enforced_here(), time_remaining()]
            await asyncio.sleep(2)
            seen += [block.expired, time_remaining()]
        return seen

    assert clock.run(main()) == [True, 1.0, False, 0.0]


def test_a_call_timer_cancels_at_its_time_and_raises_timeout_error(clock: VirtualClock) -> None:
    """`CallTimer(loop, seconds)` (clients' per-call path) cancels the call at `seconds` and
    raises `TimeoutError` there, like `asyncio.timeout`; inside, the ambient deadline stays the
    caller's (the timer is not a block)."""

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        seen: list[object] = []
        async with deadline_after(3) as outer:
            with pytest.raises(TimeoutError) as raised:
                with CallTimer(loop, 0.5):
                    seen += [current_deadline() == outer.deadline, time_remaining()]
                    await asyncio.sleep(1)
            seen += [type(raised.value) is TimeoutError, time_remaining()]
        return seen

    assert clock.run(main()) == [True, 3.0, True, 2.5]


def test_a_call_timer_left_in_time_never_rings(clock: VirtualClock) -> None:
    """A call that ends before its timer leaves nothing behind: sleeping past the timer's
    instant afterwards is not cancelled, and the loop's heap holds no live alarm."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = clock.monotonic()
        with CallTimer(loop, 0.5):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # past the timer's instant
        alarms = loop._tether_alarms  # type: ignore[attr-defined]
        assert all(alarm[2] is None for alarm in alarms._heap)
        return clock.monotonic() - start

    assert clock.run(main()) == pytest.approx(1.1)


def test_a_call_timer_passes_other_cancellations_through(clock: VirtualClock) -> None:
    """A cancellation the timer did not cause stays a cancellation: from another task before
    the timer rings, the enclosing block's own expiry (its `DeadlineExceeded`), and one that
    arrives while the timer's own is being handled."""

    async def call(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        with CallTimer(loop, seconds):
            await asyncio.sleep(10)

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        start = clock.monotonic()
        task = asyncio.create_task(call(loop, 5))
        await asyncio.sleep(1)
        task.cancel()
        seen: list[object] = []
        try:
            await task
        except asyncio.CancelledError:
            seen.append("cancelled")
        with pytest.raises(DeadlineExceeded, match="budget of 300 ms"):
            async with deadline_after(0.3):
                await call(loop, 5)  # a timer longer than the block: the block's expiry wins
        seen.append(clock.monotonic() - start)
        task = asyncio.create_task(cancelled_again_while_timing_out(loop))
        try:
            await task
        except asyncio.CancelledError:
            seen.append("cancelled")
        return seen

    async def cancelled_again_while_timing_out(loop: asyncio.AbstractEventLoop) -> None:
        with CallTimer(loop, 0.5):
            try:
                await asyncio.sleep(1)
            finally:  # the timer rang; meanwhile someone else cancels the call too
                this = asyncio.current_task()
                assert this is not None
                this.cancel()

    assert clock.run(main()) == ["cancelled", pytest.approx(1.3), "cancelled"]


def test_a_call_timer_needs_a_task_of_its_loop() -> None:
    """Entered outside a task of the loop it was given: a clear error, not a silent no-op."""
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="inside an asyncio task of its loop"):
            with CallTimer(loop, 1.0):
                pass  # pragma: no cover
    finally:
        loop.close()


def test_check_deadline_raises_once_the_ambient_budget_is_spent(clock: VirtualClock) -> None:
    """The checkpoint for code no cancellation reaches: silent while budget is left (and
    without a deadline), `DeadlineExceeded` naming the budget from the deadline on."""

    async def main() -> None:
        check_deadline()  # no deadline: nothing to check
        async with deadline_after(1):
            check_deadline()
            clock.advance(0.999)  # the clock moves, no await: the block's timer cannot ring
            check_deadline()
            clock.advance(0.001)
            with pytest.raises(DeadlineExceeded, match="this block's budget of 1 s ran out"):
                check_deadline()
        async with deadline_after(2), deadline_after(5):  # inherits the caller's 2 s
            clock.advance(2)
            with pytest.raises(DeadlineExceeded, match="budget of 2 s ran out") as raised:
                check_deadline()
            assert raised.value.budget == 2

    clock.run(main())


def test_check_deadline_in_a_request_without_a_deadline_passes(clock: VirtualClock) -> None:
    """A request that has no deadline (an unbounded path) is never out of budget, whatever
    the context it was started from carried."""

    async def main() -> None:
        async with deadline_after(1):
            task = asyncio.current_task()
            assert task is not None
            with deadline_at(None, task=task, new_request=True):
                clock.advance(5)
                check_deadline()
            with pytest.raises(DeadlineExceeded):
                check_deadline()

    clock.run(main())


def test_a_threads_block_makes_the_deadline_known_and_enforces_nothing(
    clock: VirtualClock,
) -> None:
    """`deadline_for_thread` in a worker thread (no event loop there): the deadline is
    ambient, `check_deadline()` raises once it has passed, nothing claims to enforce it, and
    a block entered after its instant refuses to start."""
    seen: list[object] = []

    def in_thread() -> None:
        start = _clock.monotonic()
        with deadline_for_thread(start + 1.0) as block:
            seen.append(time_remaining())
            seen.append(deadline_enforced_here())
            clock.advance(1.0)
            with pytest.raises(DeadlineExceeded, match="budget of 1 s ran out"):
                check_deadline()
            seen.append(block.budget)
        seen.append(current_deadline())
        with pytest.raises(DeadlineExceeded), deadline_for_thread(start):
            pass

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert seen == [1.0, False, 1.0, None]


def test_a_threads_block_without_a_deadline_clears_the_one_its_context_carries(
    clock: VirtualClock,
) -> None:
    """`deadline_for_thread(None)`: a request without a deadline, handled in a thread whose
    context carries another one (copied from a task under a deadline): inside, no deadline
    is ambient and `check_deadline()` passes; after it, the carried deadline is back."""
    seen: list[object] = []

    def in_thread() -> None:
        with deadline_for_thread(None):
            seen.append(current_deadline())
            check_deadline()
        seen.append(time_remaining())

    async def main() -> None:
        with deadline_for_thread(_clock.monotonic() + 2.0):
            worker = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,))
            worker.start()
            worker.join()

    clock.run(main())
    assert seen == [None, 2.0]


def test_a_request_block_without_a_deadline_clears_the_one_its_context_carries(
    clock: VirtualClock,
) -> None:
    """`deadline_for_request(None, task)` (a request on an unbounded path or method), in a task
    whose context carries a deadline (created under one, as an in-process client's server
    task is): inside, no deadline is ambient; after it, the carried one is back."""
    from tether.deadline import deadline_for_request

    seen: list[object] = []

    async def handle() -> None:
        task = asyncio.current_task()
        assert task is not None
        with deadline_for_request(None, task):
            seen.append(current_deadline())
        seen.append(time_remaining())

    async def main() -> None:
        async with deadline_after(2.0):
            await asyncio.get_running_loop().create_task(handle())

    clock.run(main())
    assert seen == [None, 2.0]
