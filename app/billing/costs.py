"""Cost reconciliation: the price of a generation whose stream never delivered its usage chunk.

A stopped, cancelled or cut stream has no usage chunk; OpenRouter's generation record has the
cost, but answers 404 for a while after the stream ends, so it is polled with backoff. Whatever
the outcome, the row ends with a source an operator can see: `generation`, or `none`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from app.core.money import parse_amount, parse_signed_amount
from app.core.states import CostSource
from app.upstream.openrouter import OpenRouterClient, UpstreamError, token_count

log = logging.getLogger(__name__)


async def find_cost(
    client: OpenRouterClient,
    *,
    generation_id: str | None,
    timeout: float,  # noqa: ASYNC109 -- a deadline across many requests, not one await
    first_delay: float = 0.5,
    max_delay: float = 8.0,
) -> dict[str, Any]:
    """What `Ledger.settle_cost` should record for a generation: its cost, or source `none`.

    Only reads: the caller writes, so that a lookup cancelled by shutdown never cuts a write.
    """
    if generation_id is None:
        return {"cost": None, "source": CostSource.NONE}
    deadline = time.monotonic() + timeout
    delay = first_delay
    while True:
        try:
            record = await client.get_generation(generation_id)
        except UpstreamError as exc:
            log.info("generation %s lookup failed: %s", generation_id, exc.code)
            record = None
        cost = parse_amount(record.get("total_cost")) if record else None
        if record is not None and cost is not None:
            return {
                "cost": cost,
                "source": CostSource.GENERATION,
                "prompt_tokens": token_count(record.get("tokens_prompt")),
                "completion_tokens": token_count(record.get("tokens_completion")),
                "model": record.get("model") if isinstance(record.get("model"), str) else None,
                # What caching saved, as OpenRouter counts it (negative on cache writes).
                "cache_discount": parse_signed_amount(record.get("cache_discount")),
            }
        if time.monotonic() + delay > deadline:
            log.warning("no cost found for generation %s within %.0fs", generation_id, timeout)
            return {"cost": None, "source": CostSource.NONE}
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
