"""A turn's write: its rows, its budget reservation and its key's claim, one transaction, begun
once. An object the run owns, not a coroutine handed along.

Admission begins and awaits it when something gates the upstream call (a limit: the check and
the reservation are the write; an Idempotency-Key: the key's row is its first step). Otherwise
the run begins it once its upstream request is on the wire, so a turn nothing gates waits for
no database before its first token; its followers wait for it (`written`) before the first
event says the conversation exists.

Whoever waits is woken by the write's own last step, in the loop's next iteration: waiting on
its task (`asyncio.wait`) took two, the task's callback and then the waiter's, and for a turn
nothing gates that wait is on the first token's path (its stream's status line and `meta`:
issue #33, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Future[Any]]


class TurnWrite:
    def __init__(self, write: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._write = write
        self._task: asyncio.Future[None] | None = None
        self._begun = asyncio.get_running_loop().create_future()
        self._landed = asyncio.Event()  # the write ended, however
        self._written = False
        self._failure: BaseException | None = None

    @property
    def begun(self) -> bool:
        return self._task is not None

    def begin(self, spawn: Spawn = asyncio.ensure_future) -> asyncio.Future[None] | None:
        """Start the write with `spawn` (a run's: shutdown waits for it); its task, or None
        when it was begun already."""
        if self._task is not None:
            return None
        self._task = spawn(self._write_and_tell())
        self._begun.set_result(None)
        return self._task

    async def _write_and_tell(self) -> None:
        try:
            await self._write()
            self._written = True
        except Exception as failure:
            self._failure = failure
            raise
        finally:
            self._landed.set()  # each waiter's own future: woken next iteration

    @property
    def failure(self) -> BaseException | None:
        """Why the write failed, once it has (None while it runs, or when it succeeded)."""
        return self._failure

    async def written(self) -> bool:
        """Whether the rows are written, once they are (or could not be)."""
        await asyncio.shield(self._begun)
        await self._landed.wait()
        return self._written
