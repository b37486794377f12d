"""The writer of a reply's rows: its turn's write begun, checkpoints while it streams, the final
write once, then the lookups of costs it ended without.

Persistence never sits on the relay path: checkpoints are written from a background task every
CHECKPOINT_INTERVAL seconds (one at a time, the latest content each), and the final write
waits for the one in flight, never the other way round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.admission.turn_write import Spawn, TurnWrite
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.core.states import CostSource, MessageStatus
from app.replies.draft import Draft
from app.replies.log import ReplyLog
from app.storage.store import Store
from app.upstream.openrouter import UpstreamError, merge_reasoning_details

log = logging.getLogger(__name__)

# How often a reply's final write is tried again while the database is away.
FINAL_WRITE_RETRY_DELAY = 1.0


class ReplyWriter:
    """Given the store, the reply's request, draft and log (read at each write), `spawn` for
    the writes (shutdown waits for them), `reconcile` to look a cost up later, and
    `on_turn_lost`, told when the turn's rows could not be written; `outage`, the database's
    state as this process's replies see it, shared by them all (one warning when it goes,
    however many replies' writes fail), and `final_write_patience`: how long a final write is
    tried again while the database is away (STALE_REPLY_AFTER: the run stays live meanwhile,
    so the heartbeat keeps it ours)."""

    def __init__(
        self,
        request: RunRequest,
        *,
        turn: TurnWrite,
        draft: Draft,
        log: ReplyLog,
        store: Store,
        spawn: Spawn,
        reconcile: Callable[..., None],
        checkpoint_interval: float,
        on_turn_lost: Callable[[], None],
        outage: Outage,
        final_write_patience: float,
    ) -> None:
        self.request = request
        self.turn = turn
        self._draft = draft
        self._log = log
        self._store = store
        self._spawn = spawn
        self._reconcile = reconcile
        self._interval = checkpoint_interval
        self._on_turn_lost = on_turn_lost
        self._outage = outage
        self._patience = final_write_patience
        # When content is next due to be checkpointed (time.monotonic()): read per token.
        self.next_checkpoint_at = time.monotonic() + checkpoint_interval
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpoint_again = False  # something to save arrived while a checkpoint was written

    # -- the turn's rows --------------------------------------------------------------------------

    def begin_turn(self) -> None:
        """Start writing the turn's rows, if they wait to be."""
        saving = self.turn.begin(self._spawn)
        if saving is not None:
            saving.add_done_callback(self._turn_written)

    def _turn_written(self, saving: asyncio.Future[None]) -> None:
        if not saving.cancelled() and (failure := saving.exception()) is not None:
            if not self._outage.failed(failure):
                log.error(
                    "could not save the turn of %s", self.request.message_id, exc_info=failure
                )
            self._on_turn_lost()  # streaming on would give a reply nobody can find again

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_soon(self) -> None:
        self.next_checkpoint_at = time.monotonic() + self._interval
        if self._checkpointing is None or self._checkpointing.done():
            self._checkpointing = self._spawn(self._checkpoint())
        else:
            # A retry's generation id can arrive while the first attempt's is still being
            # written; waiting for the next content checkpoint would leave a crash without it.
            self._checkpoint_again = True

    async def _checkpoint(self) -> None:
        """Partial content, and the generation rows: their ids recover the cost after a crash."""
        if not await self.turn.written():
            return
        self._checkpoint_again = True
        draft, request = self._draft, self.request
        while self._checkpoint_again:
            self._checkpoint_again = False
            try:
                await self._store.replies.checkpoint(
                    message_id=request.message_id,
                    conversation_id=request.conversation_id,
                    agent=request.agent,
                    user_id=request.user_id,
                    content=draft.content,
                    event_lengths=draft.event_lengths(self._log.events),
                    records=[record for record in draft.records if record.generation_id],
                    reasoning=draft.reasoning,
                    annotations=draft.citations,
                )
            except Exception as exc:
                if not self._outage.failed(exc):
                    raise
                return  # the database is away: the next checkpoint (or the final write) catches up
            self._outage.ok()

    # -- the end ----------------------------------------------------------------------------------

    async def finish(
        self, status: MessageStatus, error: UpstreamError | None
    ) -> tuple[MessageStatus, UpstreamError | None, str | None]:
        """Write the reply's final rows (and settle its reservation); how it ended, as written:
        its status, error and finish reason."""
        if self._checkpointing is not None:
            # A checkpoint must land before the final write, never after it.
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        draft, request = self._draft, self.request
        for record in draft.records:
            if record.cost_source == CostSource.PENDING and record.generation_id is None:
                record.cost_source = CostSource.NONE  # nothing upstream to ask about it
        saved = await self.turn.written()
        if not saved:
            status, error = (
                MessageStatus.ERROR,
                UpstreamError("the conversation could not be saved", code="storage_error"),
            )
        finish_reason = "stopped" if status == MessageStatus.STOPPED else draft.finish_reason
        if status == MessageStatus.INTERRUPTED and error is None:
            error = UpstreamError(
                "the reply was interrupted before it finished", code="interrupted", retryable=True
            )
        # The database away, the final write is tried again until it is back, for up to
        # STALE_REPLY_AFTER (the run stays live meanwhile, so the heartbeat keeps it ours).
        deadline = time.monotonic() + (self._patience if saved else 0)
        while True:
            try:
                # A task a try: `databases` keeps a connection per task, and one the database
                # cut mid-release stays unusable to its task for good (see `tend` in
                # app/core/outage.py).
                await asyncio.create_task(self._save_final(status, error, finish_reason))
                self._outage.ok()
                break
            except Exception as exc:
                away = self._outage.failed(exc)
                if away and time.monotonic() < deadline:
                    await asyncio.sleep(FINAL_WRITE_RETRY_DELAY)
                    continue
                # Left `streaming` in the database, it is marked interrupted by the sweep, and
                # its reservation ended by it, within STALE_REPLY_AFTER.
                if away:
                    log.warning("could not save reply %s: the database is away", request.message_id)
                else:
                    log.exception("could not save reply %s", request.message_id)
                break
        return status, error, finish_reason

    async def _save_final(
        self, status: MessageStatus, error: UpstreamError | None, finish_reason: str | None
    ) -> None:
        draft, request = self._draft, self.request
        await self._store.replies.finish(
            message_id=request.message_id,
            conversation_id=request.conversation_id,
            agent=request.agent,
            user_id=request.user_id,
            status=status,
            content=draft.content,
            event_lengths=draft.event_lengths(self._log.events),
            model=draft.answering_model,
            finish_reason=finish_reason,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
            records=draft.records,
            reasoning=draft.reasoning,
            reasoning_details=merge_reasoning_details(draft.details),
            annotations=draft.citations,
            # Before the final event: a client that reads its usage on `done` sees it
            # settled.
            then=self._store.budgets.end_steps(message_id=request.message_id),
        )

    def reconcile_pending(self) -> None:
        """Look up, later, the costs the reply ended without."""
        for record in self._draft.records:
            if record.cost_source == CostSource.PENDING:
                self._reconcile(record_id=record.id, generation_id=record.generation_id)
