"""A Run is one assistant reply being generated (the registry of live ones is `registry.Runs`).

A run owns the upstream stream, not the client connection: it appends numbered events to its
log (`log.ReplyLog`), any number of followers (SSE responses) read it from any event id, and it
persists the reply and its cost rows however it ends:

    complete     the upstream finished (done)
    stopped      POST /api/messages/{id}/stop (done, finish_reason "stopped")
    error        an upstream fault, before or after the first token (error)
    interrupted  cancelled by shutdown or by DISCONNECT_POLICY=cancel (error)

It ties three parts together, each readable (and testable) alone:

    attempts.Attempts    the calls upstream, retried; their events into the draft and the log
    draft.Draft          what the reply says so far, and a cost row per attempt
    writer.ReplyWriter   the turn's write begun, checkpoints, the final write, late costs

and owns what is the reply's as a whole: its log and followers, ending it early (stop,
shutdown, a follower-less reply under DISCONNECT_POLICY=cancel), and its final event.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from app.admission.turn_write import Spawn, TurnWrite
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.core.states import GenerationStatus, MessageStatus
from app.replies.attempts import Attempts, RetryPolicy
from app.replies.draft import Draft
from app.replies.log import ReplyLog
from app.replies.redis_log import Outbox
from app.replies.wire import Event, LogEvent, final_event, meta_payload
from app.replies.writer import ReplyWriter
from app.settings import Settings
from app.storage.ledger import GenerationRecord
from app.storage.store import Store
from app.storage.tables import now
from app.upstream.openrouter import OpenRouterClient, UpstreamError

log = logging.getLogger(__name__)


def _known_sum(values: Iterable[int | None]) -> int | None:
    """The sum of the known values (None: none is known)."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


@dataclass(frozen=True)
class RunConfig:
    """What a run reads of the settings."""

    retry: RetryPolicy
    checkpoint_interval: float
    ping_interval: float
    final_write_patience: float  # STALE_REPLY_AFTER: see `ReplyWriter`

    @classmethod
    def of(cls, settings: Settings) -> RunConfig:
        return cls(
            retry=RetryPolicy(
                max_retries=settings.upstream_max_retries,
                base_delay=settings.upstream_retry_base_delay,
                budget=settings.upstream_retry_budget,
            ),
            checkpoint_interval=settings.checkpoint_interval,
            ping_interval=settings.ping_interval,
            final_write_patience=settings.stale_reply_after,
        )


def _cancel_with_error(run: Run) -> Callable[[], None]:
    """`run.cancel(ERROR)`, held weakly: the writer keeps it, and a run must be freed by its
    reference count alone once over (no cycle for the collector to find)."""
    cancel = weakref.WeakMethod(run.cancel)

    def lost() -> None:
        if (bound := cancel()) is not None:
            bound(MessageStatus.ERROR)

    return lost


class Run:
    """One reply: generated upstream, appended to its log, persisted however it ends.

    Given what it needs, not the registry: the turn's write, the store, the OpenRouter client,
    its config, `spawn` for background writes (shutdown waits for them), `reconcile` to look a
    cost up later, and the registry's two callbacks: `on_deserted` (its last follower left
    before the end) and `on_finished` (its final event is out).
    """

    def __init__(
        self,
        request: RunRequest,
        *,
        turn: TurnWrite,
        store: Store,
        client: OpenRouterClient,
        config: RunConfig,
        spawn: Spawn,
        reconcile: Callable[..., None],
        on_deserted: Callable[[Run], None],
        on_finished: Callable[[Run], None],
        outbox: Outbox | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.request = request
        self.message_id = request.message_id
        self.created_at = now()  # a reply's duration and time to first token start here
        self._spawn = spawn
        self._on_deserted = on_deserted
        self._on_finished = on_finished
        self.log = ReplyLog(ping_interval=config.ping_interval)
        if outbox is not None:  # REDIS_URL: other processes follow it live, from its stream
            self.log.feed = outbox.feed(request.message_id, self.log.events)
        self.draft = Draft(cache_prices=dict(request.cache_prices))
        self.writer = ReplyWriter(
            request,
            turn=turn,
            draft=self.draft,
            log=self.log,
            store=store,
            spawn=spawn,
            reconcile=reconcile,
            checkpoint_interval=config.checkpoint_interval,
            on_turn_lost=_cancel_with_error(self),
            outage=outage or Outage("live replies' checkpoints and final writes"),
            final_write_patience=config.final_write_patience,
        )
        self._attempts = Attempts(
            request,
            client=client,
            retry=config.retry,
            draft=self.draft,
            log=self.log,
            writer=self.writer,
        )
        self.status = MessageStatus.STREAMING
        self._abandoned: asyncio.TimerHandle | None = None
        self._end_status: MessageStatus | None = None  # set by cancel() before cancelling the task
        self._ending = False  # generation is over; only the final write remains
        self.log.append(
            Event.META,
            meta_payload(
                conversation_id=request.conversation_id,
                message_id=request.message_id,
                user_message_id=request.user_message_id,
                agent=request.agent,
                model=request.model,
                history=request.history,
            ),
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Generate; the turn's write, unless written already (as a keyed or gated turn's is),
        begins meanwhile, never in the way.

        The write starts once the upstream request is on the wire (or has failed): started
        with the run, SQLite's transaction ran on the event loop between the run's first
        steps and its request's bytes (the stage probe, `bench --stages`: the upstream stage
        held the write). It still lands before the first event is sent (`follow` waits for
        it), while the upstream works on its answer."""
        self.task = asyncio.create_task(self.run(), name=f"run:{self.message_id}")

    @property
    def turn(self) -> TurnWrite:
        return self.writer.turn

    @property
    def records(self) -> list[GenerationRecord]:
        return self.draft.records

    @property
    def content(self) -> str:
        return self.draft.content

    async def turn_saved(self) -> bool:
        """Whether the turn's rows are written, once they are (or could not be)."""
        return await self.writer.turn.written()

    # -- following it (a `ReplySource`) -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.log.finished

    def has_events_after(self, after: int) -> bool:
        return self.log.has_events_after(after)

    def follow(self, after: int) -> AsyncIterator[list[LogEvent]]:
        # `meta` says the conversation and its messages exist: not before they do.
        return self.log.follow(after, ready=self.turn_saved, on_followers=self._followers)

    def _followers(self, count: int) -> None:
        if count and self._abandoned is not None:  # a browser reconnecting in time keeps it
            self._abandoned.cancel()
            self._abandoned = None
        elif count == 0 and not self.log.finished:
            self._on_deserted(self)

    def cancel_unless_followed(self, delay: float) -> None:
        """Interrupt the run in `delay` seconds unless a follower comes back meanwhile."""
        self._abandoned = asyncio.get_running_loop().call_later(
            delay, self.cancel, MessageStatus.INTERRUPTED
        )

    async def wait(self) -> None:
        """Until the reply is persisted and its final event appended."""
        await self.log.wait()

    # -- ending it from outside -------------------------------------------------------------------

    def cancel(self, status: MessageStatus) -> bool:
        """End the run early with `status` (stopped or interrupted); False if already ending."""
        if self._ending or self._end_status is not None or self.task is None:
            return False
        self._end_status = status
        self.task.cancel()
        return True

    # -- generating -------------------------------------------------------------------------------

    async def run(self) -> None:
        status, error = MessageStatus.COMPLETE, None
        try:
            await self._attempts.run()
        except asyncio.CancelledError:
            status = self._end_status or MessageStatus.INTERRUPTED
            for record in self.records:
                if record.status == GenerationStatus.STREAMING:
                    record.status, record.ended_at = GenerationStatus.CANCELLED, now()
        except UpstreamError as exc:
            status, error = MessageStatus.ERROR, exc
        except Exception:  # a bug of ours must still end the reply and save it
            log.exception("run %s failed", self.message_id)
            status = MessageStatus.ERROR
            error = UpstreamError(
                "the server failed while generating the reply", code="internal_error"
            )
            for record in self.records:
                if record.status == GenerationStatus.STREAMING:
                    record.status, record.error_code, record.ended_at = (
                        GenerationStatus.ERROR,
                        "internal_error",
                        now(),
                    )
        self._ending = True
        self.writer.begin_turn()  # ended before its request was out (stopped, a bug): saved
        # A cancellation arriving now (shutdown after stop) must not cut the final write short.
        await asyncio.shield(self._spawn(self._finish(status, error)))

    async def _finish(self, status: MessageStatus, error: UpstreamError | None) -> None:
        status, error, finish_reason = await self.writer.finish(status, error)
        records = self.records
        known = [r.cost for r in records if r.cost is not None]
        name, payload = final_event(
            status=status,
            message_id=self.message_id,
            finish_reason=finish_reason,
            # The row keeps None (no model answered); the event names the one asked, as a
            # replay of the row does.
            model=self.draft.answering_model or self.request.model,
            prompt_tokens=sum(r.prompt_tokens for r in records),
            completion_tokens=sum(r.completion_tokens for r in records),
            reasoning_tokens=sum(r.reasoning_tokens for r in records),
            cost=sum(known, Decimal(0)) if known else None,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
            cache_saved=_known_sum(r.cache_saved for r in records),
        )
        self.status = status
        if self._abandoned is not None:  # its handle refers to this run: no cycle left behind
            self._abandoned.cancel()
            self._abandoned = None
        self.log.finish(name, payload)
        self._on_finished(self)
        self.writer.reconcile_pending()
