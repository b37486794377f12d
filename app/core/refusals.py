"""Why a turn was not admitted: nothing of it was saved, nothing was sent upstream.

Raised by admission (`app/admission/`) and the budgets it asks (`app/billing/budgets.py`);
no HTTP here: `app/http/refusals.py` gives each its status, code and headers.

    Refusal           a turn not admitted (`message` says why to the caller, `details` adds
    │                 the figures a client may show); the caller's code in brackets
    ├── Busy          this process answers as many replies as it may     (server_busy)
    ├── RateLimited   too many turns a minute, or replies live at once   (rate_limited)
    ├── OverBudget    the turn's worst case does not fit what is left    (budget_exceeded)
    ├── PriceUnknown  a budget applies and a model's price is not known  (price_unknown)
    ├── KeyReused     an Idempotency-Key again, with another request     (idempotency_key_reused)
    └── NotSaved      the turn's rows could not be written               (storage_error)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Refusal(Exception):
    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Busy(Refusal):
    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a slot is likely free


class RateLimited(Refusal):
    def __init__(
        self,
        message: str,
        *,
        limit: int,
        remaining: int,
        retry_after: int,
        details: Mapping[str, Any],
    ) -> None:
        super().__init__(message, details=details)
        self.limit, self.remaining, self.retry_after = limit, remaining, retry_after


class OverBudget(Refusal):
    pass


class PriceUnknown(Refusal):
    pass


class KeyReused(Refusal):
    pass


class NotSaved(Refusal):
    pass
