"""The attempts of one reply against the upstream: each streamed (or, for `"stream": false`
callers, one whole completion), translated into the reply's draft and log, retried while
nothing was relayed yet and the retry budget lasts.

Every attempt gets a cost row (`GenerationRecord`) of its own, however it ends: a refusal
before any generation existed costs nothing (`not_billed`); a cut stream keeps the usage it
carried. The turn's write begins once the first request is on the wire (the client resolves
`sent`), at the first event at the latest, or when an attempt fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.core.run_request import RunRequest
from app.core.stages import Stage, mark
from app.core.states import CostSource, GenerationStatus
from app.replies.draft import Draft
from app.replies.log import ReplyLog
from app.replies.wire import Event
from app.replies.writer import ReplyWriter
from app.storage.ledger import GenerationRecord
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
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """UPSTREAM_MAX_RETRIES, UPSTREAM_RETRY_BASE_DELAY, UPSTREAM_RETRY_BUDGET."""

    max_retries: int
    base_delay: float
    budget: float  # seconds a reply may spend waiting between its attempts, in all

    def delay(self, exc: UpstreamError, attempt: int) -> float | None:
        """How long to wait before attempt `attempt + 1`, or None: do not retry."""
        if not exc.retryable or attempt > self.max_retries:
            return None
        if exc.retry_after is not None:
            return exc.retry_after
        base = self.base_delay * 2 ** (attempt - 1)
        return base * (0.5 + random.random() / 2)


class Attempts:
    def __init__(
        self,
        request: RunRequest,
        *,
        client: OpenRouterClient,
        retry: RetryPolicy,
        draft: Draft,
        log: ReplyLog,
        writer: ReplyWriter,
    ) -> None:
        self._request = request
        self._client = client
        self._retry = retry
        self._draft = draft
        self._log = log
        self._writer = writer

    async def run(self) -> None:
        """Attempt until one completes; the last attempt's `UpstreamError` if none does."""
        body = self._request.upstream_body()
        draft, waited = self._draft, 0.0
        for attempt in range(1, self._retry.max_retries + 2):
            record = GenerationRecord(
                id=new_id(), attempt=attempt, requested_model=self._request.model, started_at=now()
            )
            draft.records.append(record)
            try:
                if self._request.stream:
                    await self._stream(record, body)
                else:
                    await self._complete(record, body)
                return
            except UpstreamError as exc:
                self._writer.begin_turn()  # written while a retry waits, or before the end
                record.status, record.error_code, record.ended_at = (
                    GenerationStatus.ERROR,
                    exc.code,
                    now(),
                )
                if isinstance(exc, UpstreamStatusError):
                    # Refused before any generation existed: OpenRouter bills nothing.
                    record.cost, record.cost_source = Decimal(0), CostSource.NOT_BILLED
                elif isinstance(exc, UpstreamStreamError) and exc.usage is not None:
                    draft.used(record, exc.usage)
                delay = self._retry.delay(exc, attempt)
                # Once the client has seen thinking or text, a new attempt would stream another
                # answer after it: the reply failed.
                if draft.relayed or delay is None or waited + delay > self._retry.budget:
                    raise
                log.info(
                    "retrying upstream in %.2fs after %s (attempt %d)", delay, exc.code, attempt
                )
                waited += delay
                await asyncio.sleep(delay)

    async def _stream(self, record: GenerationRecord, body: dict[str, Any]) -> None:
        draft, writer, reply_log = self._draft, self._writer, self._log
        finished = False
        # Resolved by the client once the request is on the wire: the turn's write begins then,
        # never between the run's first steps and its request's bytes.
        sent = asyncio.get_running_loop().create_future()
        sent.add_done_callback(lambda done: None if done.cancelled() else writer.begin_turn())
        unbegun = True  # until the turn's write has begun; then for good: not asked per token
        try:
            async for event in self._client.stream_chat(body, sent=sent):
                if unbegun:
                    unbegun = False
                    if not writer.turn.begun:  # a transport without httpcore's trace
                        writer.begin_turn()
                if type(event) is Delta:  # the hot path: keep it short
                    if not draft.parts:
                        record.first_token_at = now()
                        mark(Stage.FIRST_DELTA)
                    draft.parts.append(event.content)
                    reply_log.append_content(Event.DELTA, event.content)
                    if time.monotonic() >= writer.next_checkpoint_at:
                        writer.checkpoint_soon()
                elif type(event) is Reasoning:  # as hot as a delta while a model thinks
                    if event.text:
                        if not draft.thoughts:
                            record.first_reasoning_at = now()
                        draft.thoughts.append(event.text)
                        reply_log.append_content(Event.REASONING, event.text)
                    if event.details:
                        draft.details.extend(event.details)
                    if time.monotonic() >= writer.next_checkpoint_at:
                        writer.checkpoint_soon()
                elif isinstance(event, Citation):
                    reply_log.append(Event.ANNOTATION, draft.cite(event))
                elif isinstance(event, Opened):
                    if draft.opened(record, event):
                        # Saved at once, not at the first checkpoint: after a crash this id is
                        # what the generation's cost is looked up by.
                        writer.checkpoint_soon()
                elif isinstance(event, Finish):
                    finished = True
                    draft.finished(record, event)
                elif isinstance(event, Usage):
                    draft.used(record, event)
        except UpstreamError as exc:
            # Cut after finish_reason: the reply is whole, only its usage chunk is missing,
            # and the generation record will give the cost. An in-band error is not a cut: it
            # says the reply failed, even after finish_reason (a model at its token limit).
            if not finished or isinstance(exc, UpstreamStreamError):
                raise
            log.warning(
                "upstream stream for %s ended after finish_reason without usage",
                self._request.message_id,
            )
        finally:
            if not sent.done():
                sent.cancel()  # never sent: its callback need not run
        record.status, record.ended_at = GenerationStatus.COMPLETE, now()

    async def _complete(self, record: GenerationRecord, body: dict[str, Any]) -> None:
        draft = self._draft
        self._writer.begin_turn()  # no first token to hurry: written alongside the whole call
        for event in await self._client.complete(body):
            if isinstance(event, Delta):
                record.first_token_at = now()
                draft.parts.append(event.content)
                self._log.append_content(Event.DELTA, event.content)
            elif isinstance(event, Reasoning):
                if event.text:
                    record.first_reasoning_at = now()
                    draft.thoughts.append(event.text)
                    self._log.append_content(Event.REASONING, event.text)
                draft.details.extend(event.details)
            elif isinstance(event, Citation):
                self._log.append(Event.ANNOTATION, draft.cite(event))
            elif isinstance(event, Finish):
                draft.finished(record, event)
            elif isinstance(event, Usage):
                draft.used(record, event)
        record.status, record.ended_at = GenerationStatus.COMPLETE, now()
