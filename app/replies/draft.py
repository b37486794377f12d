"""What a reply says so far: its text, its thinking, its citations, and a cost row per upstream
attempt. Plain data, filled by the attempts (`attempts.py`), read by the writer (`writer.py`)
and the run's final event; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.caching import CachePrices, cache_saved
from app.core.states import CostSource
from app.replies.wire import LogEvent, event_lengths
from app.storage.ledger import GenerationRecord
from app.upstream.openrouter import Citation, Finish, Opened, Usage


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


class Draft:
    __slots__ = (
        "answering_model",
        "cache_prices",
        "citations",
        "details",
        "finish_reason",
        "parts",
        "records",
        "thoughts",
    )

    def __init__(self, *, cache_prices: Mapping[str, CachePrices] | None = None) -> None:
        # The run's models' cache prices, by id: a generation's saving is its answering model's.
        self.cache_prices = cache_prices or {}
        self.parts: list[str] = []  # each `delta` event's content
        self.thoughts: list[str] = []  # each `reasoning` event's content
        self.details: list[dict[str, Any]] = []  # reasoning_details fragments, as streamed
        self.citations: list[dict[str, Any]] = []  # each `annotation` event's payload
        self.records: list[GenerationRecord] = []  # one per upstream attempt
        self.answering_model: str | None = None
        self.finish_reason: str | None = None

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.thoughts)

    @property
    def relayed(self) -> bool:
        """Whether a follower may have seen thinking or text already."""
        return bool(self.parts or self.thoughts)

    def event_lengths(self, events: list[LogEvent]) -> list[int]:
        """What `messages.event_lengths` records, read off the log at checkpoints
        (`wire.event_lengths`)."""
        return event_lengths(events, self.parts, self.thoughts)

    def cite(self, citation: Citation) -> dict[str, Any]:
        payload = citation.to_json()
        self.citations.append(payload)
        return payload

    def opened(self, record: GenerationRecord, opened: Opened) -> bool:
        """The first chunk's ids, into `record`; whether it named a new generation id."""
        changed = False
        if opened.generation_id and opened.generation_id != record.generation_id:
            record.generation_id, changed = opened.generation_id, True
        if opened.model:
            # The model answering, known from the first chunk: a reply stopped from now on
            # names it in `done`, not the one asked for.
            record.model = self.answering_model = opened.model
        return changed

    def finished(self, record: GenerationRecord, finish: Finish) -> None:
        self.finish_reason = finish.reason
        self.answering_model = finish.model or self.answering_model
        record.model = finish.model
        record.generation_id = record.generation_id or finish.generation_id

    def used(self, record: GenerationRecord, usage: Usage) -> None:
        record_usage(record, usage, prices=self.cache_prices)
        self.answering_model = usage.model or self.answering_model
