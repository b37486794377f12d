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
