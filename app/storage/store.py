"""The store: the aggregates over one writer, chosen for the database's backend.

    store.conversations   app/storage/conversations.py   a user's conversations
    store.replies         app/storage/replies.py         messages, and a reply's writes
    store.ledger          app/storage/ledger.py          generations and their costs
    store.config          app/storage/config.py          agent overrides, the model catalog's copy
    store.budgets         app/storage/budgets.py         spend reservations, budget overrides

Routes hold no SQL: they call the aggregates. The methods below are the Run's calls
(`app/replies/runs.py`) by the names it has always used, passed on as they are; tests replace
some of them in a `Store` subclass to step in between a run's moves.
"""

from __future__ import annotations

from typing import Any

from databases import Database

from app.storage.budgets import Budgets
from app.storage.config import Config
from app.storage.conversations import Conversations
from app.storage.database import sqlite_path
from app.storage.ledger import GenerationRecord, Ledger
from app.storage.postgres_writer import PostgresWriter
from app.storage.replies import Replies, TurnIds
from app.storage.sqlite_writer import SQLiteWriter
from app.storage.tables import new_id, now
from app.storage.writer import Writer

# What the Run and the test support take from here, wherever it is defined.
__all__ = ["GenerationRecord", "Store", "TurnIds", "new_id", "now"]


class Store:
    def __init__(self, database: Database, *, sqlite_db: bool, busy_timeout: float = 30.0) -> None:
        # SQLite allows one writer: ours go through one connection, grouped into as few
        # transactions as they can be (see `sqlite_writer`). PostgreSQL writes use the pool,
        # a transaction each.
        self.writer: Writer = (
            SQLiteWriter(sqlite_path(str(database.url)), busy_timeout=busy_timeout)
            if sqlite_db
            else PostgresWriter(database)
        )
        self.conversations = Conversations(database=database, writer=self.writer)
        self.ledger = Ledger(database=database, writer=self.writer)
        self.replies = Replies(database=database, writer=self.writer, ledger=self.ledger)
        self.config = Config(database=database, writer=self.writer)
        self.budgets = Budgets(database=database, writer=self.writer, postgres=not sqlite_db)

    async def close(self) -> None:
        await self.writer.close()

    async def reply(self, *, message_id: str) -> dict[str, Any] | None:
        return await self.replies.get(message_id=message_id)

    async def start_turn(self, **turn: Any) -> None:
        await self.replies.start_turn(**turn)

    async def checkpoint(self, **progress: Any) -> None:
        await self.replies.checkpoint(**progress)

    async def finish_reply(self, **reply: Any) -> None:
        await self.replies.finish(**reply)

    async def touch_replies(self, *, message_ids: list[str]) -> None:
        await self.replies.touch(message_ids=message_ids)

    async def interrupt_orphans(self, **orphans: Any) -> list[str]:
        return await self.replies.interrupt_orphans(**orphans)

    async def pending_generations(self, **which: Any) -> list[dict[str, Any]]:
        return await self.ledger.pending_generations(**which)

    async def settle_cost(self, **cost: Any) -> None:
        await self.ledger.settle_cost(**cost)
