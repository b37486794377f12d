"""What keeps replies and costs whole across crashes and processes: the heartbeat of our live
replies (which also brings the stop requests other processes left for them in the database),
the sweep of dead processes' orphans (and of expired idempotency keys), and the cost lookups of
generations whose usage never came (a stopped stream, a crash)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from app.billing.costs import find_cost
from app.core.outage import Outage, tend
from app.settings import Settings
from app.storage.ledger import LateCost
from app.storage.store import Store
from app.storage.tables import now
from app.upstream.openrouter import OpenRouterClient

log = logging.getLogger(__name__)
# The sweep of unused uploads runs on one heartbeat in this many (90 s at the default 3 s).
UPLOAD_SWEEP_BEATS = 30

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]


class Recovery:
    def __init__(
        self,
        *,
        store: Store,
        client: OpenRouterClient,
        settings: Settings,
        spawn: Spawn,
        live: Callable[[], list[str]],
        stop: Callable[[list[str]], None],
        learnt: Callable[[LateCost], None],
    ) -> None:
        self._store = store
        self._client = client
        self._settings = settings
        self._spawn = spawn  # background work that shutdown waits for
        self._live = live  # the message ids of this process's live replies
        self._stop = stop  # stops those of them another process was asked to stop
        self._learnt = learnt  # tells the observers of a cost learnt after its reply ended
        self._lookups: set[asyncio.Task[Any]] = set()
        self._tending: asyncio.Task[None] | None = None
        self._stop_tending = asyncio.Event()
        self._outage = Outage("the heartbeat of live replies and the sweep of orphans")
        self._beats = 0

    def reconcile(self, *, record_id: str, generation_id: str | None) -> None:
        """Look a generation's cost up in the background; shutdown cancels, never waits for it."""
        task = self._spawn(self._reconcile(record_id, generation_id))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _reconcile(self, record_id: str, generation_id: str | None) -> None:
        found = await find_cost(
            self._client,
            generation_id=generation_id,
            timeout=self._settings.generation_lookup_timeout,
        )
        # Shutdown cancels the lookup, never the writes it led to: they land, and the
        # database is closed only after them (shutdown waits for spawned writes).
        await asyncio.shield(self._spawn(self._settle(record_id, found)))

    async def _settle(self, record_id: str, found: dict[str, Any]) -> None:
        late = await self._store.ledger.settle_cost(record_id=record_id, **found)
        if late is not None:
            self._learnt(late)
        # The reply's budget reservation becomes its real cost once its last one is known.
        await self._store.budgets.settle_ready()

    def start(self) -> None:
        """Heartbeat our live replies, sweep up the orphans of dead processes and delete the
        expired idempotency keys, every HEARTBEAT until `stop`.

        The first sweep runs at start-up: replies a crashed process left `streaming` become
        `interrupted` (once STALE_REPLY_AFTER has passed since it last touched them), and their
        cost is looked up in the generation record.
        """
        tending = tend(
            self._beat,
            outage=self._outage,
            interval=self._settings.heartbeat_interval,
            stop=self._stop_tending,
        )
        self._tending = asyncio.create_task(tending, name="tend-runs")

    async def _beat(self) -> None:
        live = self._live()
        if live and (stop := await self._store.replies.touch(message_ids=live)):
            self._stop(stop)
        idle_since = now() - timedelta(seconds=self._settings.stale_reply_after)
        orphans = await self._store.replies.interrupt_orphans(idle_since=idle_since)
        if orphans:
            log.warning("marked %d orphaned replies as interrupted", len(orphans))
            for row in await self._store.ledger.pending_generations(message_ids=orphans):
                self.reconcile(record_id=row["id"], generation_id=row["generation_id"])
        # After the orphans: their reservations end with them (settled once known).
        ended = await self._store.budgets.sweep(idle_since=idle_since)
        if ended:
            log.warning("ended %d budget reservations of dead replies", ended)
        await self._store.idempotency.expire(at=now())
        # Uploads no message carries, a day after they were made (and unfinished ones): a
        # day's deadline needs no heartbeat's precision, every UPLOAD_SWEEP_BEATS-th will do.
        if self._beats % UPLOAD_SWEEP_BEATS == 0:
            swept = await self._store.uploads.expire(at=now())
            if swept:
                log.info("deleted %d uploads no message carries", swept)
        self._beats += 1

    async def stop(self) -> None:
        """Stop tending; unfinished cost lookups are cancelled and wait for the next start-up
        (their rows stay `pending`), the writes they already began are not."""
        if self._tending is not None:
            self._stop_tending.set()
            await self._tending
        for task in self._lookups:
            task.cancel()
