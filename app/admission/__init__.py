"""Admission: may this turn start? Caller, limits, budgets and idempotency in; a ticket (the
run's request and its turn write) or a typed refusal (`app/core/refusals.py`) out."""
