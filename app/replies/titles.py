"""Titles: a chat's first complete reply gets it a title from a small, cheap model.

The `titler` agent of the agents file (its own model, temperature, max_tokens and prompt) is
asked after a chat's first complete reply, whenever it comes (a first reply stopped or failed
does not count: the next complete one is asked about), until the conversation is titled: its
`done` is out already, so a title never delays a reply. One non-streaming upstream call,
recorded in the ledger like any other generation: agent `titler`, a cost row of its own (its
`message_id` is the row's own id, as a title is no message), counted in the conversation's
total. If the call fails or answers nothing usable, the question's first words, which the
turn saved, stay the title (until the next complete reply); a title the user gave
(`PATCH /api/conversations/{id}`) settles it: never overwritten, never asked for again.

It runs as the registry's background work (`Runs.spawn`); shutdown cancels it, and its row
then says so. The page learns the title by reading the conversation list again
(`docs/browser.md`): no event is added to the reply, whose log is over by then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from app.agents.overrides import Agents
from app.billing.budgets import SpendControl
from app.core.attachments import text_of
from app.core.refusals import Refusal
from app.core.run_request import RunRequest
from app.core.states import CostSource, GenerationStatus
from app.replies.draft import record_usage
from app.settings import Settings
from app.storage.ledger import GenerationRecord
from app.storage.store import Store
from app.storage.tables import new_id, now
from app.upstream.openrouter import (
    Delta,
    Finish,
    OpenRouterClient,
    UpstreamError,
    UpstreamStatusError,
    Usage,
)

log = logging.getLogger(__name__)
AGENT = "titler"
FIRST_WORDS = 80  # characters of the question: the title until the titler's
MAX_TITLE = 200  # what a title may be, the titler's or one a user gives
EXCERPT = 1000  # characters of the question and of the answer the titler reads: enough to name it


def first_words(text: str) -> str:
    """A conversation's title until the titler gives it a better one (or if it fails)."""
    return " ".join(text.split())[:FIRST_WORDS]


def clean(text: str) -> str | None:
    """The title in a model's answer: its first line, without the quotes, heading marks or
    final full stop models like to add; None if nothing is left."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = (
        " ".join(line.split())
        .strip("#*_ ")
        .strip("\"'\u201c\u201d\u2018\u2019")
        .rstrip(".")
        .strip()
    )
    return line[:MAX_TITLE] or None


class Titler:
    def __init__(
        self,
        *,
        store: Store,
        client: OpenRouterClient,
        agents: Agents,
        settings: Settings,
        spend: SpendControl,
        reconcile: Callable[..., None],
    ) -> None:
        self._spend = spend
        self._store = store
        self._client = client
        self._agents = agents
        self._settings = settings
        self._reconcile = reconcile

    async def title(self, request: RunRequest, *, answer: str) -> None:
        """Name `request`'s conversation from its question and first `answer`."""
        # Its text: the content may be parts (attachments, a cache breakpoint).
        question = text_of(request.messages[-1]["content"])
        agent = self._agents.effective(AGENT)
        model = agent.effective_model(self._settings.default_model)
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": agent.system_prompt},
                {
                    "role": "user",
                    "content": f"User: {question[:EXCERPT]}\n\nAssistant: {answer[:EXCERPT]}",
                },
            ],
            "temperature": agent.temperature,
            "max_tokens": agent.max_tokens,
            "user": request.user_id,
        }
        if agent.reasoning is not None:
            body["reasoning"] = agent.reasoning.upstream()
        record = GenerationRecord(id=new_id(), attempt=1, requested_model=model, started_at=now())
        # The title is spent like a reply: its worst case is reserved against the user's budgets
        # first (under the generation's own id, which its cost row carries as its message id),
        # and a title that does not fit is not asked for: the first words stay.
        try:
            await self._spend.reserve(
                dataclasses.replace(
                    request,
                    message_id=record.id,
                    agent=AGENT,
                    model=model,
                    fallback_models=(),
                    temperature=agent.temperature,
                    max_tokens=agent.max_tokens,
                    messages=body["messages"],
                    stream=False,
                    reasoning=body.get("reasoning"),
                )
            )
        except Refusal as refused:
            log.info("no title for %s: %s", request.conversation_id, type(refused).__name__)
            return
        try:
            await self._ask(request, body, record)
        finally:
            await asyncio.shield(self._store.budgets.end(message_id=record.id))

    async def _ask(
        self, request: RunRequest, body: dict[str, Any], record: GenerationRecord
    ) -> None:
        title = None
        try:
            events = await self._client.complete(body)
        except UpstreamError as exc:
            log.warning("no title for %s: %s", request.conversation_id, exc.code)
            record.status, record.error_code = GenerationStatus.ERROR, exc.code
            if isinstance(exc, UpstreamStatusError):  # refused before a generation existed
                record.cost, record.cost_source = Decimal(0), CostSource.NOT_BILLED
        except asyncio.CancelledError:  # shutdown: the call may have been billed all the same
            record.status = GenerationStatus.CANCELLED
            await self._save(request, record, title=None)
            raise
        else:
            parts = []
            for event in events:
                if isinstance(event, Delta):
                    parts.append(event.content)
                elif isinstance(event, Usage):
                    record_usage(record, event)
                elif isinstance(event, Finish):
                    record.model = event.model or record.model
                    record.generation_id = record.generation_id or event.generation_id
            record.status = GenerationStatus.COMPLETE
            title = clean("".join(parts))
        await self._save(request, record, title=title)
        if record.cost_source == CostSource.PENDING:
            self._reconcile(record_id=record.id, generation_id=record.generation_id)

    async def _save(
        self, request: RunRequest, record: GenerationRecord, *, title: str | None
    ) -> None:
        record.ended_at = now()
        if record.cost_source == CostSource.PENDING and record.generation_id is None:
            record.cost_source = CostSource.NONE  # nothing upstream to ask about it
        await self._store.conversations.save_title(
            conversation_id=request.conversation_id,
            new=title,
            generation=self._store.ledger.generation_steps(
                records=[record],
                message_id=record.id,
                conversation_id=request.conversation_id,
                agent=AGENT,
                user_id=request.user_id,
            ),
        )
