"""The store: the aggregates over one writer, chosen for the database's backend.

    store.conversations   app/storage/conversations.py   a user's conversations
    store.replies         app/storage/replies.py         messages, and a reply's writes
    store.ledger          app/storage/ledger.py          generations and their costs
    store.config          app/storage/config.py          agent overrides, the model catalog's copy
    store.idempotency     app/storage/idempotency.py     the keys of idempotent turns
    store.search          app/storage/search.py          full-text search of a user's messages
    store.budgets         app/storage/budgets.py         spend reservations, budget overrides
    store.feedback        app/storage/feedback.py        users' thumbs and comments on replies
    store.shares          app/storage/shares.py          read-only links to a conversation
    store.uploads         app/storage/uploads.py         a user's images and PDFs, in chunks

Routes hold no SQL: they, the Run and recovery call the aggregates themselves
(`store.replies.finish(...)`); the store only picks the writer and builds the aggregates on it. The
writer is closed by whoever built the store (`store.writer.close()`).
"""

from __future__ import annotations

from databases import Database

from app.storage.budgets import Budgets
from app.storage.config import Config
from app.storage.conversations import Conversations
from app.storage.database import sqlite_path
from app.storage.feedback import Feedback
from app.storage.idempotency import IdempotencyKeys
from app.storage.ledger import Ledger
from app.storage.postgres_writer import PostgresWriter
from app.storage.replies import Replies
from app.storage.search import Search
from app.storage.shares import Shares
from app.storage.sqlite_writer import SQLiteWriter
from app.storage.uploads import Uploads
from app.storage.writer import Writer


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
        self.idempotency = IdempotencyKeys(database=database, writer=self.writer)
        self.search = Search(database=database, sqlite_db=sqlite_db)
        self.budgets = Budgets(database=database, writer=self.writer, postgres=not sqlite_db)
        self.feedback = Feedback(database=database, writer=self.writer)
        self.shares = Shares(database=database, writer=self.writer)
        self.uploads = Uploads(database=database, writer=self.writer, postgres=not sqlite_db)
