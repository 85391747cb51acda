"""The ways work escapes or is bound to a budget: detached(), TaskGroup, plain tasks."""

from __future__ import annotations

import asyncio

import pytest

from tether import (
    DeadlineExceeded,
    TaskGroup,
    current_deadline,
    deadline_after,
    detached,
    time_remaining,
)
from tether.testing import VirtualClock


def test_detached_work_outlives_the_callers_budget(clock: VirtualClock) -> None:
    """Work in detached() runs to the end past the deadline; the caller then gets the error."""
    finished_at: list[float] = []

    async def main() -> None:
        start = clock.monotonic()
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(1), deadline_after(0.8):
                async with detached():
                    assert current_deadline() is None
                    await asyncio.sleep(3)
                    finished_at.append(clock.monotonic() - start)
                await asyncio.sleep(0)  # the paused deadlines fire at the next await
                finished_at.append(-1)  # never reached
        assert clock.monotonic() - start == pytest.approx(3)

    clock.run(main())
    assert finished_at == [pytest.approx(3)]


def test_detached_block_can_set_its_own_deadline(clock: VirtualClock) -> None:
    """Inside detached() a new block may bound the background work on its own terms."""

    async def main() -> None:
        async with deadline_after(0.5):
            async with detached(), deadline_after(10) as block:
                assert not block.inherited
                assert time_remaining() == 10
                await asyncio.sleep(1)
            assert time_remaining() == 0
            await asyncio.sleep(0)

    with pytest.raises(DeadlineExceeded):
        clock.run(main())


def test_detached_that_ends_in_time_leaves_the_budget_running(clock: VirtualClock) -> None:
    """After a short detached block, the caller's deadline is still armed."""

    async def main() -> None:
        async with deadline_after(2):
            async with detached():
                await asyncio.sleep(0.5)
            assert time_remaining() == pytest.approx(1.5)
            await asyncio.sleep(5)

    with pytest.raises(DeadlineExceeded):
        clock.run(main())


def test_detached_does_not_shield_explicit_cancellation(clock: VirtualClock) -> None:
    """detached() escapes deadlines, not task.cancel() (documented)."""

    async def victim() -> None:
        async with detached():
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(victim())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    clock.run(main())


def test_task_group_children_are_cancelled_with_the_block(clock: VirtualClock) -> None:
    """Children started through TaskGroup end when the block's deadline passes."""
    cancelled_at: list[float] = []

    async def child() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_at.append(clock.monotonic())
            raise

    async def main() -> float:
        start = clock.monotonic()
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(0.3), TaskGroup() as group:
                for _ in range(3):
                    group.create_task(child())
        return start

    start = clock.run(main())
    assert cancelled_at == [pytest.approx(start + 0.3)] * 3


def test_children_with_their_own_timers_collapse_into_one_error(clock: VirtualClock) -> None:
    """Children that armed the same deadline do not turn the error into an ExceptionGroup."""

    async def child() -> None:
        async with deadline_after(100):
            await asyncio.sleep(60)

    async def main() -> None:
        async with deadline_after(1), TaskGroup() as group:
            for _ in range(5):
                group.create_task(child())

    for _ in range(20):
        with pytest.raises(DeadlineExceeded) as caught:
            clock.run(main())
        assert not caught.value.inherited


def test_task_group_children_see_the_deadline(clock: VirtualClock) -> None:
    """Children inherit the ambient deadline; a child asking for more still gets the block's."""
    seen: list[float | None] = []

    async def child() -> None:
        async with deadline_after(100):
            seen.append(time_remaining())

    async def main() -> None:
        async with deadline_after(2), TaskGroup() as group:
            group.create_task(child())

    clock.run(main())
    assert seen == [2]


def test_plain_create_task_children_are_not_cancelled(clock: VirtualClock) -> None:
    """The documented leak: asyncio does not cancel a plain task when the block expires."""
    finished: list[float] = []

    async def child() -> None:
        await asyncio.sleep(5)
        finished.append(clock.monotonic())

    async def main() -> float:
        start = clock.monotonic()
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(0.3):
                leak = asyncio.create_task(child())
                await asyncio.sleep(1)
        await leak
        return start

    start = clock.run(main())
    assert finished == [pytest.approx(start + 5)]


def test_task_group_refuses_to_start_children_without_budget(clock: VirtualClock) -> None:
    """create_task raises DeadlineExceeded once the budget is spent, and starts nothing."""
    started = False

    async def child() -> None:
        nonlocal started
        started = True

    async def main() -> None:
        async with deadline_after(1), TaskGroup() as group:
            clock.advance(2)
            group.create_task(child())

    with pytest.raises(DeadlineExceeded):
        clock.run(main())
    assert not started


def test_children_asking_for_longer_timeouts_end_by_the_request_deadline(
    clock: VirtualClock,
) -> None:
    """Nested-timeout leak: children asking for 10 s each end at the 1 s request deadline."""
    ended: list[float] = []

    async def child(seconds: float) -> None:
        try:
            async with deadline_after(seconds):
                await asyncio.sleep(seconds)
        finally:
            ended.append(clock.monotonic())

    async def main() -> float:
        start = clock.monotonic()
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(1), TaskGroup() as group:
                for seconds in (10, 20, 30):
                    group.create_task(child(seconds))
        return start

    start = clock.run(main())
    assert len(ended) == 3
    assert max(ended) <= start + 1


def test_deadline_passed_during_detached_is_not_delivered_after_the_block_ends(
    clock: VirtualClock,
) -> None:
    """A block that ends right after detached(), without awaiting, leaves no stray cancel."""

    async def main() -> str:
        async with deadline_after(1), detached():
            await asyncio.sleep(2)
        await asyncio.sleep(1)  # outside every block: must not be cancelled
        return "clean"

    assert clock.run(main()) == "clean"
