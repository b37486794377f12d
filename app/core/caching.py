"""Prompt caching's vocabulary: which models need breakpoints, and what a cache saved.

Providers cache a prompt's prefix and bill what they read from it at a fraction of the input
price (docs/caching.md). OpenAI, DeepSeek, Gemini 2.5 and others do it by themselves; Anthropic
(Claude) caches only up to the `cache_control` breakpoints a request marks. The one rule:

    a turn marks breakpoints when its model's catalog pricing has a cache-read price
    (`pricing.input_cache_read`) and its provider is one that needs them (EXPLICIT_PROVIDERS,
    by the model id's `provider/` prefix)

What caching saved on one generation is what its prompt would have cost at the full input price,
less what it cost: the tokens read from the cache at the input price less the read price, less
the tokens written to it at the write price less the input price (a write costs more than a plain
read of the prompt: a first turn saves less than nothing). This is OpenRouter's `cache_discount`
of the generation record, negative on writes, computed from the usage's token counts and the
catalog's prices, in integer pico-dollars (app/core/money.py), exactly: the prices are decimal
strings, so the products are exact to the pico-dollar for any price of at most 12 decimals.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from app.core.money import to_picos

# The providers whose models cache only where a request says (`cache_control` on content
# parts); every other provider with a cache price caches by itself (OpenAI, DeepSeek, Gemini
# 2.5, Grok, ...), and a breakpoint sent there would be at best ignored.
EXPLICIT_PROVIDERS = frozenset({"anthropic"})


@dataclass(frozen=True, slots=True)
class CachePrices:
    """A model's prices of its prompt tokens, USD per token: plain, read from the cache, and
    written to it (None: the catalog gives no write price, so a write costs the input price)."""

    input: Decimal
    read: Decimal
    write: Decimal | None = None

    def saved(self, *, cached_tokens: int, cache_write_tokens: int) -> int:
        """What caching saved on a prompt with these tokens read and written, in pico-dollars
        (negative when the writes' extra cost is more than the reads saved)."""
        write = self.input if self.write is None else self.write
        amount = cached_tokens * (self.input - self.read) - cache_write_tokens * (
            write - self.input
        )
        saved = to_picos(amount)
        assert saved is not None
        return saved


def needs_breakpoints(model_id: str, prices: CachePrices | None) -> bool:
    """Whether a request to `model_id` should mark `cache_control` breakpoints (the rule above)."""
    provider = model_id.split("/", 1)[0]
    return prices is not None and provider in EXPLICIT_PROVIDERS


def cache_saved(
    prices: CachePrices | None, *, cached_tokens: int, cache_write_tokens: int
) -> int | None:
    """A generation's saving in pico-dollars: 0 when nothing was read or written from a cache,
    None when something was and the model's cache prices are not known."""
    if not cached_tokens and not cache_write_tokens:
        return 0
    if prices is None:
        return None
    return prices.saved(cached_tokens=cached_tokens, cache_write_tokens=cache_write_tokens)
