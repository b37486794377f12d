"""A turn's write, alone: begun once whoever asks first, waited for by anyone, a failure seen."""

from __future__ import annotations

import asyncio

from app.admission.turn_write import TurnWrite


def test_begun_once_and_waited_for_before_and_after_it_begins() -> None:
    async def scenario() -> tuple[list[str], list[bool]]:
        writes: list[str] = []

        async def write() -> None:
            await asyncio.sleep(0)
            writes.append("rows")

        turn = TurnWrite(write)
        early = asyncio.ensure_future(turn.written())  # a follower, before the run begins it
        await asyncio.sleep(0)
        assert not early.done() and not turn.begun
        first = turn.begin()
        assert first is not None and turn.begin() is None  # the second ask starts nothing
        return writes, [await early, await turn.written()]

    writes, written = asyncio.run(scenario())
    assert writes == ["rows"] and written == [True, True]


def test_a_failed_write_says_so_to_every_waiter() -> None:
    async def scenario() -> list[bool]:
        async def write() -> None:
            raise ConnectionError("the database went away")

        turn = TurnWrite(write)
        task = turn.begin()
        assert task is not None
        await asyncio.wait([task])
        return [await turn.written(), await turn.written()]

    assert asyncio.run(scenario()) == [False, False]


def test_a_waiter_is_woken_in_the_loop_iteration_after_the_write_ends() -> None:
    """For a turn nothing gates, its stream's status line and `meta` wait for the write: each
    loop iteration between is one more wait behind every other stream's work (issue #33)."""

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []

        async def write() -> None:
            await asyncio.sleep(0)
            # The write's last step: a marker two iterations on.
            loop.call_soon(loop.call_soon, order.append, "two iterations on")

        turn = TurnWrite(write)
        turn.begin()

        async def follower() -> None:
            assert await turn.written()
            order.append("woken")

        await asyncio.gather(follower(), asyncio.sleep(0.01))
        return order

    assert asyncio.run(scenario()) == ["woken", "two iterations on"]
