"""A Run is one assistant reply being generated (the registry of live ones is `registry.Runs`).

A run owns the upstream stream, not the client connection: it appends numbered events to its
log (`log.ReplyLog`), any number of followers (SSE responses) read it from any event id, and it
persists the reply and its cost rows however it ends:

    complete     the upstream finished (done)
    stopped      POST /api/messages/{id}/stop (done, finish_reason "stopped")
    error        an upstream fault, before or after the first token (error)
    interrupted  cancelled by shutdown or by DISCONNECT_POLICY=cancel (error)

Persistence never sits on the relay path: the turn's rows are written while the upstream
request starts (a run whose rows cannot be saved ends with `storage_error`), content is
checkpointed every CHECKPOINT_INTERVAL seconds from a background task, and the final rows are
written once at the end, shielded from the cancellation that may have ended the run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from decimal import Decimal
from typing import Any

from app.core.caching import CachePrices, cache_saved
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.core.stages import Stage, mark
from app.core.states import CostSource, GenerationStatus, MessageStatus
from app.replies.log import ReplyLog
from app.replies.redis_log import Outbox
from app.replies.wire import Event, LogEvent, event_lengths, final_event, meta_payload
from app.settings import Settings
from app.storage.ledger import GenerationRecord
from app.storage.store import Store
from app.storage.tables import new_id, now
from app.upstream.openrouter import (
    Citation,
    Delta,
    Finish,
    Opened,
    OpenRouterClient,
    Reasoning,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamError,
    Usage,
    merge_reasoning_details,
)

log = logging.getLogger(__name__)


def record_usage(
    record: GenerationRecord, usage: Usage, *, prices: Mapping[str, CachePrices] | None = None
) -> None:
    """A generation's usage chunk, into its cost row (the cost too, when it carries one), and
    what caching saved on it, at the answering model's cache `prices` (by model id)."""
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.reasoning_tokens = usage.reasoning_tokens
    record.cached_tokens = usage.cached_tokens
    record.cache_write_tokens = usage.cache_write_tokens
    record.is_byok = usage.is_byok
    record.upstream_cost = usage.upstream_cost
    record.model = usage.model or record.model
    record.generation_id = record.generation_id or usage.generation_id
    record.cache_saved = cache_saved(
        (prices or {}).get(record.model or record.requested_model),
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    if usage.cost is not None:
        record.cost, record.cost_source = usage.cost, CostSource.USAGE


def _known_sum(values: Iterable[int | None]) -> int | None:
    """The sum of the known values (None: none is known)."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]

# How often a reply's final write is tried again while the database is away.
FINAL_WRITE_RETRY_DELAY = 1.0


class Run:
    """One reply: generated upstream, appended to its log, persisted however it ends.

    Given what it needs, not the registry: the store, the OpenRouter client, the settings,
    `spawn` for background writes (shutdown waits for them), `reconcile` to look a cost up
    later, and the registry's two callbacks: `on_deserted` (its last follower left before the
    end) and `on_finished` (its final event is out).
    """

    def __init__(
        self,
        request: RunRequest,
        *,
        store: Store,
        client: OpenRouterClient,
        settings: Settings,
        spawn: Spawn,
        reconcile: Callable[..., None],
        on_deserted: Callable[[Run], None],
        on_finished: Callable[[Run], None],
        outbox: Outbox | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.request = request
        self.message_id = request.message_id
        self._cache_prices = dict(request.cache_prices)
        self.created_at = now()  # a reply's duration and time to first token start here
        self._store = store
        self._client = client
        self._settings = settings
        self._spawn = spawn
        self._reconcile = reconcile
        self._on_deserted = on_deserted
        self._on_finished = on_finished
        # The database's state as this process's replies see it, shared by them all: one
        # warning when it goes, however many replies' writes fail.
        self._outage = outage or Outage("live replies' checkpoints and final writes")
        self.log = ReplyLog(ping_interval=settings.ping_interval)
        if outbox is not None:  # REDIS_URL: other processes follow it live, from its stream
            self.log.feed = outbox.feed(request.message_id, self.log.events)
        self.parts: list[str] = []  # each `delta` event's content
        self.thoughts: list[str] = []  # each `reasoning` event's content
        self.details: list[dict[str, Any]] = []  # reasoning_details fragments, as streamed
        self.citations: list[dict[str, Any]] = []  # each `annotation` event's payload
        self.records: list[GenerationRecord] = []
        self.status = MessageStatus.STREAMING
        self._abandoned: asyncio.TimerHandle | None = None
        self._end_status: MessageStatus | None = None  # set by cancel() before cancelling the task
        self._ending = False  # generation is over; only the final write remains
        self._answering_model: str | None = None
        self._finish_reason: str | None = None
        self._last_checkpoint = time.monotonic()
        self._checkpointing: asyncio.Task[None] | None = None
        self._checkpoint_again = False  # something to save arrived while a checkpoint was written
        self.saving: asyncio.Task[None] | None = None  # the turn's rows, written alongside
        self._unsaved: Coroutine[Any, Any, None] | None = None  # that write, not yet begun
        self._save_begun: asyncio.Future[None] | None = None
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

    def start(self, save_turn: Coroutine[Any, Any, None] | None) -> None:
        """Generate; `save_turn` writes the turn's rows meanwhile, never in the way (None: they
        are written already, as a keyed or gated turn's are).

        The write starts once the upstream request is on the wire (or has failed): started
        with the run, SQLite's transaction ran on the event loop between the run's first
        steps and its request's bytes (the stage probe, `bench --stages`: the upstream stage
        held the write). It still lands before the first event is sent (`follow` waits for
        it), while the upstream works on its answer."""
        if save_turn is not None:
            self._unsaved = save_turn
            self._save_begun = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self.run(), name=f"run:{self.message_id}")

    def _save_now(self) -> None:
        """Start writing the turn's rows, if they wait to be."""
        if self._unsaved is None:
            return
        save_turn, self._unsaved = self._unsaved, None
        self.saving = self._spawn(save_turn)
        self.saving.add_done_callback(self._on_saved)
        if self._save_begun is not None and not self._save_begun.done():
            self._save_begun.set_result(None)

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

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.thoughts)

    def event_lengths(self) -> list[int]:
        """What `messages.event_lengths` records: the events in the order streamed, read off
        the log at checkpoints (`wire.event_lengths`)."""
        return event_lengths(self.log.events, self.parts, self.thoughts)

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
            await self._generate()
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
        self._save_now()  # ended before its request was out (stopped, a bug): saved all the same
        # A cancellation arriving now (shutdown after stop) must not cut the final write short.
        await asyncio.shield(self._spawn(self._finish(status, error)))

    async def _generate(self) -> None:
        settings = self._settings
        body = self.request.upstream_body()
        waited = 0.0
        for attempt in range(1, settings.upstream_max_retries + 2):
            record = GenerationRecord(
                id=new_id(), attempt=attempt, requested_model=self.request.model, started_at=now()
            )
            self.records.append(record)
            try:
                if self.request.stream:
                    await self._stream_attempt(record, body)
                else:
                    await self._complete_attempt(record, body)
                return
            except UpstreamError as exc:
                self._save_now()  # written while a retry waits, or before the reply ends
                record.status, record.error_code, record.ended_at = (
                    GenerationStatus.ERROR,
                    exc.code,
                    now(),
                )
                if isinstance(exc, UpstreamStatusError):
                    # Refused before any generation existed: OpenRouter bills nothing.
                    record.cost, record.cost_source = Decimal(0), CostSource.NOT_BILLED
                elif isinstance(exc, UpstreamStreamError) and exc.usage is not None:
                    self._apply_usage(record, exc.usage)
                delay = self._retry_delay(exc, attempt)
                # Once the client has seen thinking or text, a new attempt would stream another
                # answer after it: the reply failed.
                relayed = self.parts or self.thoughts
                if relayed or delay is None or waited + delay > settings.upstream_retry_budget:
                    raise
                log.info(
                    "retrying upstream in %.2fs after %s (attempt %d)", delay, exc.code, attempt
                )
                waited += delay
                await asyncio.sleep(delay)

    def _retry_delay(self, exc: UpstreamError, attempt: int) -> float | None:
        if not exc.retryable or attempt > self._settings.upstream_max_retries:
            return None
        if exc.retry_after is not None:
            return exc.retry_after
        base = self._settings.upstream_retry_base_delay * 2 ** (attempt - 1)
        return base * (0.5 + random.random() / 2)

    async def _stream_attempt(self, record: GenerationRecord, body: dict[str, Any]) -> None:
        finished = False
        try:
            # The turn's write starts when the request is on the wire; at the first event at
            # the latest (a transport without httpcore's trace).
            async for event in self._client.stream_chat(body, on_sent=self._save_now):
                if self._unsaved is not None:
                    self._save_now()
                if type(event) is Delta:  # the hot path: keep it short
                    if not self.parts:
                        record.first_token_at = now()
                        mark(Stage.FIRST_DELTA)
                    self.parts.append(event.content)
                    self.log.append(Event.DELTA, {"content": event.content})
                    if (
                        time.monotonic() - self._last_checkpoint
                        >= self._settings.checkpoint_interval
                    ):
                        self._checkpoint_soon()
                elif type(event) is Reasoning:  # as hot as a delta while a model thinks
                    if event.text:
                        if not self.thoughts:
                            record.first_reasoning_at = now()
                        self.thoughts.append(event.text)
                        self.log.append(Event.REASONING, {"content": event.text})
                    if event.details:
                        self.details.extend(event.details)
                    if (
                        time.monotonic() - self._last_checkpoint
                        >= self._settings.checkpoint_interval
                    ):
                        self._checkpoint_soon()
                elif isinstance(event, Citation):
                    self._cite(event)
                elif isinstance(event, Opened):
                    self._apply_opened(record, event)
                elif isinstance(event, Finish):
                    finished = True
                    self._apply_finish(record, event)
                elif isinstance(event, Usage):
                    self._apply_usage(record, event)
        except UpstreamError as exc:
            # Cut after finish_reason: the reply is whole, only its usage chunk is missing,
            # and the generation record will give the cost. An in-band error is not a cut: it
            # says the reply failed, even after finish_reason (a model at its token limit).
            if not finished or isinstance(exc, UpstreamStreamError):
                raise
            log.warning(
                "upstream stream for %s ended after finish_reason without usage", self.message_id
            )
        record.status, record.ended_at = GenerationStatus.COMPLETE, now()

    def _apply_opened(self, record: GenerationRecord, opened: Opened) -> None:
        changed = False
        if opened.generation_id and opened.generation_id != record.generation_id:
            record.generation_id, changed = opened.generation_id, True
        if opened.model:
            # The model answering, known from the first chunk: a reply stopped from now on
            # names it in `done`, not the one asked for.
            record.model = self._answering_model = opened.model
        if changed:
            # Saved at once, not at the first checkpoint: after a crash this id is what the
            # generation's cost is looked up by.
            self._checkpoint_soon()

    def _cite(self, citation: Citation) -> None:
        payload = citation.to_json()
        self.citations.append(payload)
        self.log.append(Event.ANNOTATION, payload)

    async def _complete_attempt(self, record: GenerationRecord, body: dict[str, Any]) -> None:
        self._save_now()  # no first token to hurry: written alongside the whole call
        for event in await self._client.complete(body):
            if isinstance(event, Delta):
                record.first_token_at = now()
                self.parts.append(event.content)
                self.log.append(Event.DELTA, {"content": event.content})
            elif isinstance(event, Reasoning):
                if event.text:
                    record.first_reasoning_at = now()
                    self.thoughts.append(event.text)
                    self.log.append(Event.REASONING, {"content": event.text})
                self.details.extend(event.details)
            elif isinstance(event, Citation):
                self._cite(event)
            elif isinstance(event, Finish):
                self._apply_finish(record, event)
            elif isinstance(event, Usage):
                self._apply_usage(record, event)
        record.status, record.ended_at = GenerationStatus.COMPLETE, now()

    def _apply_finish(self, record: GenerationRecord, finish: Finish) -> None:
        self._finish_reason = finish.reason
        self._answering_model = finish.model or self._answering_model
        record.model = finish.model
        record.generation_id = record.generation_id or finish.generation_id

    def _apply_usage(self, record: GenerationRecord, usage: Usage) -> None:
        record_usage(record, usage, prices=self._cache_prices)
        self._answering_model = usage.model or self._answering_model

    def _checkpoint_soon(self) -> None:
        self._last_checkpoint = time.monotonic()
        if self._checkpointing is None or self._checkpointing.done():
            self._checkpointing = self._spawn(self._checkpoint())
        else:
            # A retry's generation id can arrive while the first attempt's is still being
            # written; waiting for the next content checkpoint would leave a crash without it.
            self._checkpoint_again = True

    def _on_saved(self, saving: asyncio.Task[None]) -> None:
        if not saving.cancelled() and (failure := saving.exception()) is not None:
            if not self._outage.failed(failure):
                log.error("could not save the turn of %s", self.message_id, exc_info=failure)
            self.cancel(
                MessageStatus.ERROR
            )  # streaming on would give a reply nobody can find again

    async def turn_saved(self) -> bool:
        """Whether the turn's rows are written, once they are (or could not be)."""
        if self.saving is None and self._save_begun is not None:
            await asyncio.shield(self._save_begun)  # the run starts the write
        if self.saving is None:
            return True
        if not self.saving.done():
            await asyncio.wait([self.saving])
        return not self.saving.cancelled() and self.saving.exception() is None

    async def _checkpoint(self) -> None:
        """Partial content, and the generation rows: their ids recover the cost after a crash."""
        if not await self.turn_saved():
            return
        self._checkpoint_again = True
        while self._checkpoint_again:
            self._checkpoint_again = False
            try:
                await self._store.replies.checkpoint(
                    message_id=self.message_id,
                    conversation_id=self.request.conversation_id,
                    agent=self.request.agent,
                    user_id=self.request.user_id,
                    content=self.content,
                    event_lengths=self.event_lengths(),
                    records=[record for record in self.records if record.generation_id],
                    reasoning=self.reasoning,
                    annotations=self.citations,
                )
            except Exception as exc:
                if not self._outage.failed(exc):
                    raise
                return  # the database is away: the next checkpoint (or the final write) catches up
            self._outage.ok()

    async def _finish(self, status: MessageStatus, error: UpstreamError | None) -> None:
        if self._checkpointing is not None:
            # A checkpoint must land before the final write, never after it.
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        for record in self.records:
            if record.cost_source == CostSource.PENDING and record.generation_id is None:
                record.cost_source = CostSource.NONE  # nothing upstream to ask about it
        saved = await self.turn_saved()
        if not saved:
            status, error = (
                MessageStatus.ERROR,
                UpstreamError("the conversation could not be saved", code="storage_error"),
            )
        finish_reason = "stopped" if status == MessageStatus.STOPPED else self._finish_reason
        if status == MessageStatus.INTERRUPTED and error is None:
            error = UpstreamError(
                "the reply was interrupted before it finished", code="interrupted", retryable=True
            )
        content = self.content
        # The database away, the final write is tried again until it is back, for up to
        # STALE_REPLY_AFTER (the run stays live meanwhile, so the heartbeat keeps it ours).
        deadline = time.monotonic() + (self._settings.stale_reply_after if saved else 0)
        while True:
            try:
                # A task a try: see `Recovery._tend`.
                await asyncio.create_task(self._save_final(status, error, content, finish_reason))
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
                    log.warning("could not save reply %s: the database is away", self.message_id)
                else:
                    log.exception("could not save reply %s", self.message_id)
                break
        known = [r.cost for r in self.records if r.cost is not None]
        name, payload = final_event(
            status=status,
            message_id=self.message_id,
            finish_reason=finish_reason,
            # The row keeps None (no model answered); the event names the one asked, as a
            # replay of the row does.
            model=self._answering_model or self.request.model,
            prompt_tokens=sum(r.prompt_tokens for r in self.records),
            completion_tokens=sum(r.completion_tokens for r in self.records),
            reasoning_tokens=sum(r.reasoning_tokens for r in self.records),
            cost=sum(known, Decimal(0)) if known else None,
            cache_saved=_known_sum(r.cache_saved for r in self.records),
            error_code=error.code if error else None,
            error_message=error.message if error else None,
        )
        self.status = status
        if self._abandoned is not None:  # its handle refers to this run: no cycle left behind
            self._abandoned.cancel()
            self._abandoned = None
        self.log.finish(name, payload)
        self._on_finished(self)
        for record in self.records:
            if record.cost_source == CostSource.PENDING:
                self._reconcile(record_id=record.id, generation_id=record.generation_id)

    async def _save_final(
        self,
        status: MessageStatus,
        error: UpstreamError | None,
        content: str,
        finish_reason: str | None,
    ) -> None:
        await self._store.replies.finish(
            message_id=self.message_id,
            conversation_id=self.request.conversation_id,
            agent=self.request.agent,
            user_id=self.request.user_id,
            status=status,
            content=content,
            event_lengths=self.event_lengths(),
            model=self._answering_model,
            finish_reason=finish_reason,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
            records=self.records,
            reasoning=self.reasoning,
            reasoning_details=merge_reasoning_details(self.details),
            annotations=self.citations,
            # Before the final event: a client that reads its usage on `done` sees it
            # settled.
            then=self._store.budgets.end_steps(message_id=self.message_id),
        )
