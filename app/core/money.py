"""Money: USD amounts as `Decimal` in the code, integer pico-dollars (10^-12 USD) in the database.

One unit end to end, so sums over thousands of sub-nano-dollar costs stay exact (a float sum
of 2,000 costs of $0.0000001234 is off in its 13th digit; tests/billing proves the integer one
is not). Every amount read from OpenRouter (a usage chunk's `cost`, a generation record's
`total_cost`, a model's pricing strings) goes through `parse_amount`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

PICOS = Decimal(10**12)
# The largest budget (a setting or an admin's override): 10^18 pico-dollars. The database's
# 64-bit integers hold 9.2 * 10^18, so a day's total under such a budget plus one turn's worst
# case (at most one pico-dollar more than this: `app/billing/budgets.py:worst_case`) is always
# storable and comparable, on SQLite (which would turn an overflowing sum into a float, or
# refuse the value) as on PostgreSQL (which would fail the statement).
MAX_BUDGET_USD = Decimal(1_000_000)
MAX_BUDGET_PICOS = int(MAX_BUDGET_USD * PICOS)


def parse_amount(value: Any) -> Decimal | None:
    """A non-negative USD amount from JSON (number or string); anything else is unknown (None).

    OpenRouter prices a router per call with "-1", and a few providers send costs as strings:
    neither is an error, both are simply not an amount we can use.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(repr(value) if isinstance(value, float) else str(value))
    except ArithmeticError:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def parse_signed_amount(value: Any) -> Decimal | None:
    """A USD amount that may be negative (a generation record's `cache_discount`, negative on
    cache writes), read as `parse_amount` reads one; None for anything that is not a number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        amount = parse_amount(-value)
        return None if amount is None else -amount
    return parse_amount(value)


def to_picos(amount: Decimal | None) -> int | None:
    if amount is None:
        return None
    return int((amount * PICOS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_picos(picos: int | None) -> Decimal | None:
    return None if picos is None else Decimal(int(picos)) / PICOS


def usd(amount: Decimal | None) -> float | None:
    """An amount for a JSON response (the wire's `cost_usd` fields)."""
    return None if amount is None else float(amount)
