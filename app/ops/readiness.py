"""Readiness (`GET /readyz`): can this process do its job right now?

    the database answers, and has every migration this code needs
    OpenRouter accepts our key (`GET {base}/key`), asked at most once a minute

`/healthz` stays the cheap liveness check (the process and the database answer): a router or
an orchestrator restarts on liveness, and only stops sending traffic on readiness.

The key check is cached for `KEY_CHECK_TTL` seconds, its failures too, so no number of probes
makes more than one call a minute to OpenRouter; concurrent probes share one call. A refused key
(401/403) is not ready (`upstream_key_invalid`); OpenRouter failing otherwise (5xx, timeout) is
not ready either (`upstream_unavailable`): no reply can be made. Credit running low is still
ready, with a warning in the log and `streamchat_openrouter_limit_remaining_usd`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.core.money import parse_amount
from app.upstream.openrouter import OpenRouterClient, UpstreamError, UpstreamStatusError

log = logging.getLogger(__name__)
KEY_CHECK_TTL = 60.0
# A probe waits at most this long for OpenRouter (its client's read timeout is a reply's, 60 s).
KEY_CHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class KeyStatus:
    code: str | None  # None: the key works; else why not (an error code of docs/api.md's table)
    message: str
    limit_remaining: Decimal | None = None  # USD; None: the key has no limit (or unknown)
    usage: Decimal | None = None
    label: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "label": self.label,
            "usage_usd": None if self.usage is None else str(self.usage),
            "limit_remaining_usd": None
            if self.limit_remaining is None
            else str(self.limit_remaining),
        }


async def check_key(client: OpenRouterClient, *, within: float = KEY_CHECK_TIMEOUT) -> KeyStatus:
    """One `GET /key`, read into a status (never raises for OpenRouter's failures)."""
    try:
        async with asyncio.timeout(within):
            data = await client.key_info()
    except TimeoutError:
        return KeyStatus("upstream_unavailable", f"OpenRouter's /key did not answer in {within}s")
    except UpstreamStatusError as exc:
        if exc.status in (401, 403):
            return KeyStatus("upstream_key_invalid", "OpenRouter refuses the OPENROUTER_API_KEY")
        return KeyStatus("upstream_unavailable", f"OpenRouter's /key answered {exc.status}")
    except UpstreamError as exc:
        return KeyStatus("upstream_unavailable", f"OpenRouter's /key failed: {exc.code}")
    label = data.get("label")
    return KeyStatus(
        None,
        "the key works",
        limit_remaining=parse_amount(data.get("limit_remaining")),
        usage=parse_amount(data.get("usage")),
        label=label if isinstance(label, str) else None,
    )


class KeyCheck:
    """`check_key`, cached: at most one call to OpenRouter per `ttl` seconds, shared."""

    def __init__(
        self, client: OpenRouterClient, *, warn_below: Decimal, ttl: float = KEY_CHECK_TTL
    ) -> None:
        self._client = client
        self._warn_below = warn_below
        self._ttl = ttl
        self._status: KeyStatus | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def status(self) -> KeyStatus:
        async with self._lock:
            if self._status is None or time.monotonic() - self._checked >= self._ttl:
                self._status = await check_key(self._client)
                self._checked = time.monotonic()
                self._report(self._status)
            return self._status

    def _report(self, status: KeyStatus) -> None:
        if not status.ok:
            log.error("readiness: %s", status.message)
        elif status.limit_remaining is not None and status.limit_remaining < self._warn_below:
            log.warning(
                "OpenRouter credit is low: $%s left on the key (CREDITS_WARNING_USD=%s)",
                status.limit_remaining,
                self._warn_below,
            )
