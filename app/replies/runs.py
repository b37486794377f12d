"""A Run is one assistant reply being generated; `Runs` is the registry of live ones.

A run owns the upstream stream, not the client connection: it appends numbered events to its
log, any number of subscribers (SSE responses) read the log from any event id, and it persists
the reply and its cost rows however it ends:

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
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from app.billing.costs import find_cost
from app.replies.events import LogEvent, final_event, meta_payload
from app.settings import Settings
from app.storage.store import GenerationRecord, Store, new_id, now
from app.upstream.openrouter import (
    Delta,
    Finish,
    Opened,
    OpenRouterClient,
    UpstreamError,
    UpstreamStatusError,
    Usage,
    parse_usage,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs to call upstream, resolved before the run starts."""

    message_id: str
    conversation_id: str
    user_message_id: str
    user_id: str
    agent: str
    model: str
    fallback_models: tuple[str, ...]
    temperature: float
    max_tokens: int
    messages: list[dict[str, str]]
    stream: bool = True  # False: one non-streaming upstream call (for `"stream": false` callers)

    def upstream_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "user": self.user_id,
        }
        if self.fallback_models:
            body["models"] = [self.model, *self.fallback_models]
        return body


class Run:
    def __init__(self, request: RunRequest, *, runs: Runs) -> None:
        self.request = request
        self.message_id = request.message_id
        self._runs = runs
        self.events: list[LogEvent] = []
        self.parts: list[str] = []
        self.records: list[GenerationRecord] = []
        self.finished = False
        self.status = "streaming"
        self.subscribers = 0
        self._abandoned: asyncio.TimerHandle | None = None
        # Subscribers and `wait` callers asleep until the log grows: a future each while they
        # wait, rather than a new Event per event appended (an Event's deque is ~0.7 KB).
        self._waiters: list[asyncio.Future[None]] = []
        self._end_status: str | None = None  # set by cancel() before cancelling the task
        self._ending = False  # generation is over; only the final write remains
        self._answering_model: str | None = None
        self._finish_reason: str | None = None
        self._last_checkpoint = time.monotonic()
        self._checkpointing: asyncio.Task[None] | None = None
        self._checkpoint_again = False  # something to save arrived while a checkpoint was written
        self.saving: asyncio.Task[None] | None = None  # the turn's rows, written alongside
        self._append(
            "meta",
            meta_payload(
                conversation_id=request.conversation_id,
                message_id=request.message_id,
                user_message_id=request.user_message_id,
                agent=request.agent,
                model=request.model,
            ),
        )
        self.task: asyncio.Task[None] | None = None

    # -- the event log ----------------------------------------------------------------------------

    def _append(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append(LogEvent.make(len(self.events) + 1, event, payload))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _next_append(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def follow(
        self, after: int = 0, *, ping_interval: float
    ) -> AsyncIterator[list[LogEvent]]:
        """Events with id > `after`, live, until the final one: each time, all there are.

        A subscriber that fell behind (a busy event loop, a slow client) gets what piled up in
        one batch, so one send instead of one per event: the busier the server, the fewer
        sends per reply.

        An empty batch says nothing went out for `ping_interval` seconds: the response sends a
        keep-alive comment. It comes from a timer handle, not from a task of the response (as
        sse-starlette's pings do): an idle stream's memory is mostly its tasks.
        """
        self.subscribers += 1
        if self._abandoned is not None:  # a browser reconnecting in time keeps the run alive
            self._abandoned.cancel()
            self._abandoned = None
        pings = _Pings(ping_interval)
        try:
            # `meta` says the conversation and its messages exist: not before they do.
            await self.turn_saved()
            position = max(0, after)
            while True:
                if position < len(self.events):
                    batch = self.events[position:]
                    position += len(batch)
                    pings.due = False
                    yield batch
                    # A send to a slow client can take a while, and the run goes on meanwhile:
                    # look again before waiting, or before taking the run's end for ours.
                    continue
                if self.finished:
                    return
                if pings.due:
                    pings.due = False
                    yield []
                    continue
                pings.waiter = self._next_append()
                await pings.waiter
        finally:
            pings.stop()
            if pings.waiter in self._waiters:
                self._waiters.remove(pings.waiter)  # left while waiting (a client gone)
            self.subscribers -= 1
            if self.subscribers == 0 and not self.finished:
                self._runs.on_abandoned(self)

    async def wait(self) -> None:
        """Until the reply is persisted and its final event appended."""
        while not self.finished:
            await self._next_append()

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def event_lengths(self) -> list[int]:
        return [len(part) for part in self.parts]

    # -- ending it from outside -------------------------------------------------------------------

    def cancel(self, status: str) -> bool:
        """End the run early with `status` (stopped or interrupted); False if already ending."""
        if self._ending or self._end_status is not None or self.task is None:
            return False
        self._end_status = status
        self.task.cancel()
        return True

    # -- generating -------------------------------------------------------------------------------

    async def run(self) -> None:
        status, error = "complete", None
        try:
            await self._generate()
        except asyncio.CancelledError:
            status = self._end_status or "interrupted"
            for record in self.records:
                if record.status == "streaming":
                    record.status, record.ended_at = "cancelled", now()
        except UpstreamError as exc:
            status, error = "error", exc
        except Exception:  # a bug of ours must still end the reply and save it
            log.exception("run %s failed", self.message_id)
            status = "error"
            error = UpstreamError(
                "the server failed while generating the reply", code="internal_error"
            )
            for record in self.records:
                if record.status == "streaming":
                    record.status, record.error_code, record.ended_at = (
                        "error",
                        "internal_error",
                        now(),
                    )
        self._ending = True
        # A cancellation arriving now (shutdown after stop) must not cut the final write short.
        await asyncio.shield(self._runs.spawn(self._finish(status, error)))

    async def _generate(self) -> None:
        settings = self._runs.settings
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
                record.status, record.error_code, record.ended_at = "error", exc.code, now()
                if isinstance(exc, UpstreamStatusError):
                    # Refused before any generation existed: OpenRouter bills nothing.
                    record.cost, record.cost_source = Decimal(0), "not_billed"
                delay = self._retry_delay(exc, attempt)
                if self.parts or delay is None or waited + delay > settings.upstream_retry_budget:
                    raise
                log.info(
                    "retrying upstream in %.2fs after %s (attempt %d)", delay, exc.code, attempt
                )
                waited += delay
                await asyncio.sleep(delay)

    def _retry_delay(self, exc: UpstreamError, attempt: int) -> float | None:
        if not exc.retryable or attempt > self._runs.settings.upstream_max_retries:
            return None
        if exc.retry_after is not None:
            return exc.retry_after
        base = self._runs.settings.upstream_retry_base_delay * 2 ** (attempt - 1)
        return base * (0.5 + random.random() / 2)

    async def _stream_attempt(self, record: GenerationRecord, body: dict[str, Any]) -> None:
        finished = False
        try:
            async for event in self._runs.client.stream_chat(body):
                if type(event) is Delta:  # the hot path: keep it short
                    if not self.parts:
                        record.first_token_at = now()
                    self.parts.append(event.content)
                    self._append("delta", {"content": event.content})
                    if (
                        time.monotonic() - self._last_checkpoint
                        >= self._runs.settings.checkpoint_interval
                    ):
                        self._checkpoint_soon()
                elif isinstance(event, Opened):
                    record.generation_id = event.generation_id
                    if record.generation_id:
                        # Saved at once, not at the first checkpoint: after a crash this id is
                        # what the generation's cost is looked up by.
                        self._checkpoint_soon()
                elif isinstance(event, Finish):
                    finished = True
                    self._finish_reason = event.reason
                    self._answering_model = event.model or self._answering_model
                    record.model = event.model
                    record.generation_id = record.generation_id or event.generation_id
                elif isinstance(event, Usage):
                    self._apply_usage(record, event)
        except UpstreamError:
            # Cut after finish_reason: the reply is whole, only its usage chunk is missing,
            # and the generation record will give the cost.
            if not finished:
                raise
            log.warning(
                "upstream stream for %s ended after finish_reason without usage", self.message_id
            )
        record.status, record.ended_at = "complete", now()

    async def _complete_attempt(self, record: GenerationRecord, body: dict[str, Any]) -> None:
        payload = await self._runs.client.complete(body)
        record.generation_id = payload.get("id")
        choices = payload.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        content = (choice.get("message") or {}).get("content") or ""
        if content:
            record.first_token_at = now()
            self.parts.append(content)
            self._append("delta", {"content": content})
        self._finish_reason = choice.get("finish_reason") or "stop"
        self._answering_model = record.model = payload.get("model")
        if isinstance(payload.get("usage"), dict):
            self._apply_usage(
                record,
                parse_usage(
                    payload["usage"], model=record.model, generation_id=record.generation_id
                ),
            )
        record.status, record.ended_at = "complete", now()

    def _apply_usage(self, record: GenerationRecord, usage: Usage) -> None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.cached_tokens = usage.cached_tokens
        record.model = usage.model or record.model
        self._answering_model = usage.model or self._answering_model
        record.generation_id = record.generation_id or usage.generation_id
        if usage.cost is not None:
            record.cost, record.cost_source = usage.cost, "usage"

    def _checkpoint_soon(self) -> None:
        self._last_checkpoint = time.monotonic()
        if self._checkpointing is None or self._checkpointing.done():
            self._checkpointing = self._runs.spawn(self._checkpoint())
        else:
            # A retry's generation id can arrive while the first attempt's is still being
            # written; waiting for the next content checkpoint would leave a crash without it.
            self._checkpoint_again = True

    def on_saved(self, saving: asyncio.Task[None]) -> None:
        if not saving.cancelled() and saving.exception() is not None:
            log.error("could not save the turn of %s", self.message_id, exc_info=saving.exception())
            self.cancel("error")  # streaming on would give a reply nobody can find again

    async def turn_saved(self) -> bool:
        """Whether the turn's rows are written, once they are (or could not be)."""
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
            await self._runs.store.checkpoint(
                message_id=self.message_id,
                conversation_id=self.request.conversation_id,
                agent=self.request.agent,
                content=self.content,
                event_lengths=self.event_lengths(),
                records=[record for record in self.records if record.generation_id],
            )

    async def _finish(self, status: str, error: UpstreamError | None) -> None:
        if self._checkpointing is not None:
            # A checkpoint must land before the final write, never after it.
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        for record in self.records:
            if record.cost_source == "pending" and record.generation_id is None:
                record.cost_source = "none"  # nothing upstream to ask about it
        if not await self.turn_saved():
            status, error = (
                "error",
                UpstreamError("the conversation could not be saved", code="storage_error"),
            )
        finish_reason = "stopped" if status == "stopped" else self._finish_reason
        if status == "interrupted" and error is None:
            error = UpstreamError(
                "the reply was interrupted before it finished", code="interrupted", retryable=True
            )
        content = self.content
        try:
            await self._runs.store.finish_reply(
                message_id=self.message_id,
                conversation_id=self.request.conversation_id,
                agent=self.request.agent,
                status=status,
                content=content,
                event_lengths=self.event_lengths(),
                model=self._answering_model,
                finish_reason=finish_reason,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                records=self.records,
            )
        except Exception:
            # Left `streaming` in the database, it is marked interrupted at the next start-up.
            log.exception("could not save reply %s", self.message_id)
        known = [r.cost for r in self.records if r.cost is not None]
        name, payload = final_event(
            status=status,
            message_id=self.message_id,
            finish_reason=finish_reason,
            model=self._answering_model,
            prompt_tokens=sum(r.prompt_tokens for r in self.records),
            completion_tokens=sum(r.completion_tokens for r in self.records),
            cost=sum(known, Decimal(0)) if known else None,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
        )
        self.status = status
        self.finished = True
        self._append(name, payload)
        self._runs.on_finished(self)
        for record in self.records:
            if record.cost_source == "pending":
                self._runs.reconcile(record_id=record.id, generation_id=record.generation_id)


class _Pings:
    """When a subscriber is due a keep-alive ping: a timer that fires every interval and
    wakes the subscriber if it is waiting.

    An object and a bound method, not a closure over `follow`'s frame: a closure that re-arms
    itself refers to itself, so each finished run waited for the cyclic garbage collector
    (measured: ~300 dead runs held at 50 streams, +8 MB of peak memory).
    """

    __slots__ = ("_interval", "_timer", "due", "waiter")

    def __init__(self, interval: float) -> None:
        self.due = False
        self.waiter: asyncio.Future[None] | None = None
        self._interval = interval
        self._timer = asyncio.get_running_loop().call_later(interval, self._fire)

    def _fire(self) -> None:
        self.due = True
        if self.waiter is not None and not self.waiter.done():
            # Left in the run's list of waiters: done ones are skipped, and dropped at its
            # next event.
            self.waiter.set_result(None)
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._fire)

    def stop(self) -> None:
        self._timer.cancel()


class Runs:
    """The live runs of this process, and the background work they leave behind."""

    def __init__(self, *, store: Store, client: OpenRouterClient, settings: Settings) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.live: dict[str, Run] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._lookups: set[asyncio.Task[Any]] = set()
        self._drain: asyncio.Task[None] | None = None
        self._tending: asyncio.Task[None] | None = None
        self._stop_tending = asyncio.Event()

    def start(self, request: RunRequest, *, save_turn: Coroutine[Any, Any, None]) -> Run:
        """Start generating; `save_turn` writes the turn's rows meanwhile, never in the way."""
        run = Run(request, runs=self)
        self.live[run.message_id] = run
        run.saving = self.spawn(save_turn)
        run.saving.add_done_callback(run.on_saved)
        run.task = asyncio.create_task(run.run(), name=f"run:{run.message_id}")
        return run

    def get(self, message_id: str) -> Run | None:
        return self.live.get(message_id)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Background work that shutdown waits for (database writes)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    def reconcile(self, *, record_id: str, generation_id: str | None) -> None:
        """Look a generation's cost up in the background; shutdown cancels, never waits for it."""
        task = self.spawn(self._reconcile(record_id, generation_id))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _reconcile(self, record_id: str, generation_id: str | None) -> None:
        found = await find_cost(
            self.client,
            generation_id=generation_id,
            timeout=self.settings.generation_lookup_timeout,
        )
        # Shutdown cancels the lookup, never the write it led to: the write lands, and the
        # database is closed only after it (shutdown waits for spawned writes).
        await asyncio.shield(self.spawn(self.store.settle_cost(record_id=record_id, **found)))

    def on_abandoned(self, run: Run) -> None:
        """The last subscriber left: under DISCONNECT_POLICY=cancel, cancel unless one returns."""
        if self.settings.disconnect_policy != "cancel" or self._drain is not None:
            return
        run._abandoned = asyncio.get_running_loop().call_later(
            self.settings.disconnect_cancel_delay, run.cancel, "interrupted"
        )

    def on_finished(self, run: Run) -> None:
        self.live.pop(run.message_id, None)

    def start_tending(self) -> None:
        self._tending = asyncio.create_task(self._tend(), name="tend-runs")

    async def _tend(self) -> None:
        """Heartbeat our live replies and sweep up the orphans of dead processes, forever.

        The first sweep runs at start-up: replies a crashed process left `streaming` become
        `interrupted` (once STALE_REPLY_AFTER has passed since it last touched them), and their
        cost is looked up in the generation record.
        """
        interval = min(self.settings.checkpoint_interval, self.settings.stale_reply_after / 3)
        while True:
            try:
                if self.live:
                    await self.store.touch_replies(message_ids=list(self.live))
                idle_since = now() - timedelta(seconds=self.settings.stale_reply_after)
                orphans = await self.store.interrupt_orphans(idle_since=idle_since)
                if orphans:
                    log.warning("marked %d orphaned replies as interrupted", len(orphans))
                    for row in await self.store.pending_generations(message_ids=orphans):
                        self.reconcile(record_id=row["id"], generation_id=row["generation_id"])
            except Exception:  # a database hiccup must not end the heartbeat
                log.exception("tending live replies failed")
            # Not cancelled at shutdown but told to stop, so no query is cut off mid-flight.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_tending.wait(), interval)
                return

    def begin_drain(self) -> None:
        """Shutdown has begun (SIGTERM): live runs get SHUTDOWN_GRACE seconds to finish.

        Called as soon as the signal is seen, not at lifespan shutdown: uvicorn only gets there
        after open connections close, and subscribers should receive each run's final event.
        """
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_runs(), name="drain-runs")

    async def _drain_runs(self) -> None:
        tasks = [run.task for run in self.live.values() if run.task]
        if tasks:
            log.info(
                "waiting up to %.0fs for %d live replies", self.settings.shutdown_grace, len(tasks)
            )
            await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        remaining = [run for run in self.live.values() if run.task]
        for run in remaining:
            run.cancel("interrupted")
        if remaining:
            log.warning("interrupted %d replies still streaming at shutdown", len(remaining))
            await asyncio.wait([run.task for run in remaining if run.task])

    async def shutdown(self) -> None:
        """Drain the runs, finish every write; unfinished cost lookups wait for the next start."""
        self.begin_drain()
        assert self._drain is not None
        await self._drain
        if self._tending is not None:
            self._stop_tending.set()
            await self._tending
        for task in self._lookups:
            task.cancel()  # their rows stay `pending`; start-up recovery looks them up again
        while self._background:
            await asyncio.wait(list(self._background))


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
