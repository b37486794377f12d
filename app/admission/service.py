"""Admission, one service: a turn's request and rows in, with its Idempotency-Key if it came
with one; out, a `Ticket` to start its run with, the `KeyUsed` turn the key named already, or
a `Refusal` (app/core/refusals.py), with nothing saved and nothing sent upstream.

One path for every turn, in this order:

    1. its key's row, if the key was used: that turn is the answer (nothing counted or reserved;
       another request under the same key is `KeyReused`)
    2. the user's request rate (`RateLimited`), then a slot of this process (`Busy`)
    3. its budget reservation, priced at its worst case (`PriceUnknown`)
    4. its write (`TurnWrite`: rows, reservation, key claim in one transaction), awaited here
       when a limit or a key gates the upstream call (`OverBudget`, `RateLimited` for live
       replies, `NotSaved`); else begun by the run, beside its upstream request

The slot is held until `admit` returns: the caller starts the run with no await between, so
the run is counted among the live ones before the next turn is checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.admission.limits import RequestLimits
from app.admission.turn_write import TurnWrite
from app.billing.budgets import Reservation, SpendControl
from app.core.outage import is_unavailable
from app.core.refusals import KeyReused, NotSaved, Refusal
from app.core.run_request import RunRequest
from app.core.stages import Stage, mark
from app.storage.idempotency import Claim
from app.storage.store import Store
from app.storage.writer import WriteRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Key:
    """An `Idempotency-Key`, and the fingerprint of the request that came with it."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Ticket:
    """An admitted turn: what its run sends upstream, and its write (done, or the run's to
    begin)."""

    request: RunRequest
    write: TurnWrite


@dataclass(frozen=True)
class KeyUsed:
    """The turn an Idempotency-Key named already: its ids."""

    conversation_id: str
    user_message_id: str
    message_id: str


class Admission:
    def __init__(self, *, store: Store, spend: SpendControl, limits: RequestLimits) -> None:
        self._store = store
        self._spend = spend
        self._limits = limits

    async def admit(
        self, request: RunRequest, rows: Mapping[str, Any], *, key: Key | None = None
    ) -> Ticket | KeyUsed:
        """Admit the turn of `request`; `rows` are the arguments of `Replies.start_turn` for
        its rows (all but its reservation and claim)."""
        if key is not None and (used := await self._used(request.user_id, key)) is not None:
            return used
        # The caller's own rate first, outside the process's slots: a flood of one user's refused
        # turns, each awaiting its count (a Redis round trip), must not hold the slots other
        # users' turns need (503 server_busy).
        await self._limits.count_turn(request.user_id)
        with self._limits.process_slot():
            reservation = await self._spend.plan(request)
            mark(Stage.ADMITTED)
            claim = None if key is None else self._claim(request, key)
            write = TurnWrite(
                lambda: self._store.replies.start_turn(
                    **rows, reservation=reservation.terms, claim=claim
                )
            )
            if key is not None:
                # A request that loses the race for its key must not have called upstream
                # nor reserved: the key's row is the write's first step, awaited here.
                if (used := await self._keyed_write(write, reservation, request, key)) is not None:
                    return used
                mark(Stage.SAVED)
            elif reservation.gated:
                # The check is the write: it gates the upstream call.
                await self._gated_write(write, reservation)
                mark(Stage.SAVED)
            return Ticket(request=request, write=write)

    async def _used(self, user_id: str, key: Key) -> KeyUsed | None:
        row = await self._store.idempotency.get(user_id=user_id, key=key.key)
        if row is None:
            return None
        if row["fingerprint"] != key.fingerprint:
            # A key used again must come with the same request: another one is a client's bug.
            raise KeyReused(
                "this Idempotency-Key was used with another request: use a new key for a new turn"
            )
        return KeyUsed(
            conversation_id=row["conversation_id"],
            user_message_id=row["user_message_id"],
            message_id=row["message_id"],
        )

    def _claim(self, request: RunRequest, key: Key) -> Claim:
        return self._store.idempotency.claim(
            user_id=request.user_id,
            key=key.key,
            fingerprint=key.fingerprint,
            conversation_id=request.conversation_id,
            user_message_id=request.user_message_id,
            message_id=request.message_id,
        )

    async def _gated_write(self, write: TurnWrite, reservation: Reservation) -> None:
        task = write.begin()
        assert task is not None
        try:
            await task
        except WriteRefused:
            raise await self._spend.refusal(reservation) from None

    async def _keyed_write(
        self, write: TurnWrite, reservation: Reservation, request: RunRequest, key: Key
    ) -> KeyUsed | None:
        """The keyed turn's write, awaited; the turn a simultaneous try with the key wrote
        instead, if it won the key."""
        try:
            await self._gated_write(write, reservation)
        except Refusal:
            # Refused, perhaps for the live reply of a simultaneous try with this key: then
            # that try's turn is the answer.
            if (used := await self._used_if_readable(request, key)) is not None:
                return used
            raise
        except Exception as failed:
            if is_unavailable(failed):
                raise  # the database is away: the caller's 503 database_unavailable
            # The key's primary key refused it (the backends say so in different exceptions),
            # or the database failed: the key's row tells which.
            if (used := await self._used_if_readable(request, key)) is None:
                log.error("could not save a keyed turn", exc_info=failed)
                raise NotSaved("the conversation could not be saved") from None
            return used
        return None

    async def _used_if_readable(self, request: RunRequest, key: Key) -> KeyUsed | None:
        try:
            return await self._used(request.user_id, key)
        except KeyReused:
            raise
        except Exception:
            return None
