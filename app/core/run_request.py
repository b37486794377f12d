"""What a run sends upstream, resolved before it starts: every layer may name it (admission
prices it, the run sends it, the titler builds one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.caching import CachePrices


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
    messages: list[dict[str, Any]]
    stream: bool = True  # False: one non-streaming upstream call (for `"stream": false` callers)
    reasoning: dict[str, Any] | None = None  # OpenRouter's `reasoning` object, as the agent says
    wants_title: bool = False  # a chat not titled yet: the titler names it once this is complete
    # {"sent", "left_out"} when history was left out to fit the model's window (for `meta`).
    history: dict[str, int] | None = None
    # The cache prices of the model and its fallbacks, by id: each generation's cache saving
    # is computed with its answering model's (app/core/caching.py).
    cache_prices: tuple[tuple[str, CachePrices], ...] = ()
    # OpenRouter's file-parser engine for the PDFs it carries, when its model does not read
    # files itself (app/core/attachments.py); None: no parser.
    pdf_engine: str | None = None

    def upstream_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "user": self.user_id,
            # No middle-out: the history is fitted here (app/replies/fitting.py), so what is
            # sent is what `meta` says was sent.
            "transforms": [],
        }
        if self.fallback_models:
            body["models"] = [self.model, *self.fallback_models]
        if self.reasoning:
            body["reasoning"] = self.reasoning
        if self.pdf_engine:
            body["plugins"] = [{"id": "file-parser", "pdf": {"engine": self.pdf_engine}}]
        return body
