"""`tend` (app/core/outage.py), the loop of the background beats, without a server: a beat that
raises does not end it, an outage is told once as it goes and once as it is back, each beat
runs in a task of its own, and `stop` ends it without cutting a beat off."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.core.outage import Outage, tend

LOGGER = "app.core.outage"
# The interval of the tests whose beat ends the loop: short, but not 0, with which
# `asyncio.wait_for` gives up on `stop` without looking whether it is set.
BRIEF = 0.001
# Long enough that a test never sees a second beat come of the interval: each test ends its
# loop through `stop` (a beat sets it, or the test does), which is what is waited on.
NEVER = 3600.0
# A guard, not a measure: a loop that does not stop fails the test instead of hanging it.
GUARD = 10.0


class Beats:
    """A beat that fails as `failures` says (one exception, or None, a beat), then succeeds, and
    sets `stop` after `count` beats."""

    def __init__(self, stop: asyncio.Event, failures: list[BaseException | None], count: int):
        self.stop = stop
        self.failures = failures
        self.count = count
        self.tasks: list[asyncio.Task] = []

    async def __call__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        if len(self.tasks) >= self.count:
            self.stop.set()
        failure = (
            self.failures[len(self.tasks) - 1] if len(self.tasks) <= len(self.failures) else None
        )
        if failure is not None:
            raise failure


def run(beats: Beats, outage: Outage, interval: float = BRIEF) -> None:
    async def scenario() -> None:
        await asyncio.wait_for(
            tend(beats, outage=outage, interval=interval, stop=beats.stop), GUARD
        )

    asyncio.run(scenario())


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [
        (r.levelno, r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if r.name == LOGGER
    ]


def test_a_beat_that_raises_is_logged_with_its_traceback_and_the_beats_go_on(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage = Outage("the test's beat")
    beats = Beats(asyncio.Event(), [ValueError("a bug"), None], count=3)
    run(beats, outage)
    assert len(beats.tasks) == 3
    assert lines(caplog) == [(logging.ERROR, "the test's beat failed", True)]
    [record] = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert not outage.down  # a bug is not an outage


def test_an_outage_is_told_once_as_it_goes_and_once_as_it_is_back(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage = Outage("the test's beat")
    away = [ConnectionRefusedError(111, "Connection refused") for _ in range(3)]
    beats = Beats(asyncio.Event(), [*away, None], count=5)
    run(beats, outage)
    assert len(beats.tasks) == 5
    assert lines(caplog) == [
        (
            logging.WARNING,
            "database unavailable (ConnectionRefusedError: [Errno 111] Connection refused): "
            "the test's beat waits for it",
            False,
        ),
        (logging.INFO, "database is back: the test's beat resumes", False),
    ]
    assert not outage.down


def test_a_loop_that_ends_during_an_outage_leaves_it_told_once(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outage = Outage("the test's beat")
    away = [ConnectionResetError("reset") for _ in range(4)]
    beats = Beats(asyncio.Event(), away, count=4)
    run(beats, outage)
    assert [level for level, _, _ in lines(caplog)] == [logging.WARNING]
    assert outage.down


def test_each_beat_runs_in_a_task_of_its_own() -> None:
    beats = Beats(asyncio.Event(), [], count=3)
    run(beats, Outage("the test's beat"))
    assert len({id(task) for task in beats.tasks}) == 3


def test_stop_ends_the_wait_at_once_and_never_cuts_a_beat_off() -> None:
    async def scenario() -> tuple[int, bool]:
        stop = asyncio.Event()
        started, release = asyncio.Event(), asyncio.Event()
        beats = 0
        finished = False

        async def beat() -> None:
            nonlocal beats, finished
            beats += 1
            started.set()
            await release.wait()
            finished = True

        loop = asyncio.create_task(
            tend(beat, outage=Outage("the test's beat"), interval=NEVER, stop=stop)
        )
        await started.wait()
        # Told to stop mid-beat: the beat runs to its end, then the loop ends without waiting
        # out the interval and without another beat.
        stop.set()
        release.set()
        await asyncio.wait_for(loop, GUARD)
        return beats, finished

    assert asyncio.run(scenario()) == (1, True)


def test_a_stop_set_before_it_starts_still_beats_once() -> None:
    # The first beat is the start-up sweep: it runs however soon the loop is stopped.
    stop = asyncio.Event()
    stop.set()
    beats = Beats(stop, [], count=1)
    run(beats, Outage("the test's beat"), interval=NEVER)
    assert len(beats.tasks) == 1
