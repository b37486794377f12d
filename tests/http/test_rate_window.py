"""The in-memory moving window (app/admission/rate_window.py) under `limits`' rate limiter: exact
"N in any 60 s", window stats for the 429 headers, idle users forgotten, and no wait."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter

import app.admission.rate_window
from app.admission.rate_window import LocalMovingWindow


@pytest.fixture
def clock(monkeypatch):
    now = [1_000_000.0]
    monkeypatch.setattr(app.admission.rate_window, "time", SimpleNamespace(time=lambda: now[0]))
    return now


def hit(limiter: MovingWindowRateLimiter, item, user: str) -> bool:
    return asyncio.run(limiter.hit(item, user))


def test_at_most_n_in_any_window_not_per_minute_of_the_clock(clock):
    limiter = MovingWindowRateLimiter(LocalMovingWindow())
    two = RateLimitItemPerMinute(2)

    assert hit(limiter, two, "ann")
    clock[0] += 50  # ten seconds before a fixed window would reset
    assert hit(limiter, two, "ann")
    clock[0] += 11  # the first hit has left the window, the second not
    assert hit(limiter, two, "ann")
    assert not hit(limiter, two, "ann")  # a fixed window would have allowed a burst here
    assert hit(limiter, two, "bob")  # one user's window is not another's


def test_a_hit_exactly_one_window_old_still_counts(clock):
    limiter = MovingWindowRateLimiter(LocalMovingWindow())
    one = RateLimitItemPerMinute(1)

    assert hit(limiter, one, "ann")
    clock[0] += 60
    assert not hit(limiter, one, "ann")  # as `limits`' own memory window: the edge is inside
    clock[0] += 0.001
    assert hit(limiter, one, "ann")


def test_window_stats_say_when_a_place_frees_and_how_many_are_left(clock):
    limiter = MovingWindowRateLimiter(LocalMovingWindow())
    three = RateLimitItemPerMinute(3)
    start = clock[0]
    hit(limiter, three, "ann")
    clock[0] += 20
    hit(limiter, three, "ann")

    reset_at, remaining = asyncio.run(limiter.get_window_stats(three, "ann"))

    assert (reset_at, remaining) == (start + 60, 1)
    clock[0] += 41  # the first hit has left
    assert asyncio.run(limiter.get_window_stats(three, "ann")) == (start + 20 + 60, 2)


def test_users_idle_for_a_window_are_forgotten_and_a_busy_one_keeps_only_the_window(clock):
    storage = LocalMovingWindow()
    limiter = MovingWindowRateLimiter(storage)
    many = RateLimitItemPerMinute(1000)
    for user in ("ann", "bob", "cy"):
        hit(limiter, many, user)
    for _ in range(200):  # ann keeps going, a hit a second: 200 hits, 60 of them in the window
        clock[0] += 1
        hit(limiter, many, "ann")

    assert list(storage._hits) == [many.key_for("ann")]
    assert len(storage._hits[many.key_for("ann")]) == 61  # now's and the 60 seconds before it


def test_counting_a_turn_never_suspends(clock):
    """The wait this window exists for: `limits`' memory storage made a hit wait behind its
    expiry task's thread hop. Here a hit completes in one step of its coroutine."""
    storage = LocalMovingWindow()
    for n in range(3):
        step = storage.acquire_entry("ann", 2, 60)
        with pytest.raises(StopIteration) as done:
            step.send(None)
        assert done.value.value is (n < 2)
