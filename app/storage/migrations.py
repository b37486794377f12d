"""Versioned schema migrations, applied in order and recorded in `schema_migrations`.

Each migration holds its own frozen copy of the tables it creates or alters: the current shape
lives in `app/storage/tables.py`, and changing it means adding a migration here, never editing one.
Applying is idempotent and safe from several processes at once: SQLite takes the write lock
(`BEGIN IMMEDIATE`), PostgreSQL an advisory transaction lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from databases import Database
from databases.core import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from app.storage.database import is_sqlite

log = logging.getLogger(__name__)
ADVISORY_LOCK_KEY = 0x5C0A7  # any constant; the same in every process of this app
MIGRATE_COMMAND = "python -m app migrate"


class MigrationsPending(RuntimeError):
    """The database lacks migrations and this process was told not to apply them."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[sa.engine.Dialect], list[str]]


def _ddl(metadata: sa.MetaData, dialect: sa.engine.Dialect) -> list[str]:
    statements = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect)) for index in table.indexes
        )
    return statements


def _initial_schema(dialect: sa.engine.Dialect) -> list[str]:
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "conversations",
        md,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("subject_conversation_id", sa.String(36), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Index("ix_conversations_user_updated", "user_id", "updated_at"),
    )
    sa.Table(
        "messages",
        md,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "conversation_id", sa.String(36), sa.ForeignKey("conversations.id"), nullable=False
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("temperature", sa.Float, nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("event_lengths", sa.Text, nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        sa.Index("ix_messages_status", "status"),
    )
    sa.Table(
        "generations",
        md,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("generation_id", sa.String(200), nullable=True),
        # No foreign keys: the cost ledger outlives a deleted conversation.
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("conversation_id", sa.String(36), nullable=False),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        # Integer pico-dollars: exact sums; OpenRouter prices tokens in fractions of a nano-dollar.
        sa.Column("cost_picousd", sa.BigInteger, nullable=True),
        sa.Column("cost_source", sa.String(16), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("first_token_at", ts, nullable=True),
        sa.Column("ended_at", ts, nullable=True),
        sa.Index("ix_generations_message", "message_id"),
        sa.Index("ix_generations_conversation", "conversation_id"),
        sa.Index("ix_generations_cost_source", "cost_source"),
    )
    return _ddl(md, dialect)


def _catalog_tables(dialect: sa.engine.Dialect) -> list[str]:
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "model_catalog",
        md,
        # One row per catalog source ("openrouter"): the last good `GET /models` answer, raw.
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("fetched_at", ts, nullable=False),
    )
    sa.Table(
        "agent_overrides",
        md,
        sa.Column("agent", sa.String(32), primary_key=True),
        # NULL means "as in the agents file".
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("fallback_models", sa.Text, nullable=True),  # JSON list
        sa.Column("temperature", sa.Float, nullable=True),
        sa.Column("max_tokens", sa.Integer, nullable=True),
        sa.Column("updated_at", ts, nullable=False),
    )
    return _ddl(md, dialect)


def _conversation_pages(dialect: sa.engine.Dialect) -> list[str]:
    # A page of a user's conversations is a keyset range over (updated_at, id), newest first
    # (`app/storage/conversations.py`): with `id` in the index, the page is read backwards off
    # it and stops after `limit` rows, instead of sorting all of the user's conversations to
    # break ties. The old index is its prefix, so it goes.
    return [
        "DROP INDEX ix_conversations_user_updated",
        "CREATE INDEX ix_conversations_user_updated_id ON conversations (user_id, updated_at, id)",
    ]


def _reasoning_columns(dialect: sa.engine.Dialect) -> list[str]:
    """Reasoning, its details and citations on messages; usage details on generations; an
    agent's reasoning settings. Defaults give the rows already there what they had: none."""

    def add(table: str, column: str, kind: sa.types.TypeEngine, extra: str = "") -> str:
        return f"ALTER TABLE {table} ADD COLUMN {column} {kind.compile(dialect=dialect)}{extra}"

    ts = sa.DateTime(timezone=True)
    return [
        add("messages", "reasoning", sa.Text(), " NOT NULL DEFAULT ''"),
        add("messages", "reasoning_details", sa.Text()),
        add("messages", "annotations", sa.Text()),
        add("generations", "cache_write_tokens", sa.Integer(), " NOT NULL DEFAULT 0"),
        add("generations", "is_byok", sa.Boolean(), " NOT NULL DEFAULT false"),
        add("generations", "upstream_cost_picousd", sa.BigInteger()),
        add("generations", "first_reasoning_at", ts),
        add("agent_overrides", "reasoning", sa.Text()),
    ]


def _idempotency_keys(dialect: sa.engine.Dialect) -> list[str]:
    md = sa.MetaData()
    sa.Table(
        "idempotency_keys",
        md,
        # The primary key is what makes two requests with one key start one turn: the second
        # insert fails, and the turn's rows written in its transaction with it.
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),  # sha256 of path and body
        sa.Column("conversation_id", sa.String(36), nullable=False),
        sa.Column("user_message_id", sa.String(36), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_idempotency_keys_created", "created_at"),  # the sweep of expired keys
    )
    return _ddl(md, dialect)


def _message_search(dialect: sa.engine.Dialect) -> list[str]:
    """The full-text index of messages' content (`app/storage/search.py` says why each way).
    Built over the rows already there, in the migration's transaction: on a big table, writes
    to `messages` wait for it."""
    if dialect.name == "postgresql":
        return [
            "CREATE INDEX ix_messages_content_fts ON messages"
            " USING gin (to_tsvector('simple', content))"
        ]
    # External content: the FTS table holds only the index, read from `messages` by rowid.
    # Triggers keep it in step with every write, the SQLite writer's own connection included;
    # a reply's checkpoints re-index its text only when it changed, and heartbeats never.
    fts = "INSERT INTO messages_fts(messages_fts, rowid, content)"
    return [
        "CREATE VIRTUAL TABLE messages_fts USING fts5("
        "content, content='messages', tokenize='unicode61 remove_diacritics 2')",
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN"
        " INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END",
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN"
        f" {fts} VALUES ('delete', old.rowid, old.content); END",
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages"
        " WHEN old.content IS NOT new.content BEGIN"
        f" {fts} VALUES ('delete', old.rowid, old.content);"
        " INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END",
        "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    ]


def _budget_tables(dialect: sa.engine.Dialect) -> list[str]:
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "budget_reservations",
        md,
        # The reply's message id; no foreign key: a turn refused storage or a crash before its
        # rows were written still leaves its reservation, which the sweep settles.
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        # The worst case reserved before the upstream call, kept for the record...
        sa.Column("reserved_picousd", sa.BigInteger, nullable=False),
        # ...and what counts against the budgets: the worst case while held (or kept, when the
        # cost stayed unknown), the real cost once settled.
        sa.Column("amount_picousd", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),  # held | settled | kept
        sa.Column("created_at", ts, nullable=False),
        sa.Column("ended_at", ts, nullable=True),  # NULL: the reply is live
        sa.Column("settled_at", ts, nullable=True),
        sa.Index("ix_budget_reservations_user_day", "user_id", "day"),
        sa.Index("ix_budget_reservations_user_month", "user_id", "month"),
        sa.Index("ix_budget_reservations_day", "day"),
        sa.Index("ix_budget_reservations_state", "state"),  # settling: the held ones
        sa.Index("ix_budget_reservations_ended", "ended_at"),  # the sweep: the live ones
        sa.Index("ix_budget_reservations_user_ended", "user_id", "ended_at"),  # a user's live
    )
    sa.Table(
        "budget_overrides",
        md,
        sa.Column("user_id", sa.String(64), primary_key=True),
        # Not overridden: the server's default (BUDGET_USER_*_USD); overridden with NULL: none.
        sa.Column("daily_overridden", sa.Boolean, nullable=False),
        sa.Column("daily_picousd", sa.BigInteger, nullable=True),
        sa.Column("monthly_overridden", sa.Boolean, nullable=False),
        sa.Column("monthly_picousd", sa.BigInteger, nullable=True),
        sa.Column("updated_at", ts, nullable=False),
    )
    return _ddl(md, dialect)


def _generations_by_start(dialect: sa.engine.Dialect) -> list[str]:
    """Cost reports (app/billing/reports.py) read a range of `started_at`, and the line-item
    export pages through it in (started_at, id) order. On PostgreSQL the index also carries
    every column a grouped report reads (INCLUDE), so a report is an index-only scan of its
    range instead of a read of the whole table: measured by `python -m bench.reports`
    (docs/operations.md, "Measured")."""
    if dialect.name == "postgresql":
        return [
            "CREATE INDEX ix_generations_started_at ON generations (started_at, id) INCLUDE "
            "(agent, model, requested_model, attempt, status, cost_source, cost_picousd, "
            "conversation_id, prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, "
            "cache_write_tokens)"
        ]
    return ["CREATE INDEX ix_generations_started_at ON generations (started_at, id)"]


def _message_tree(dialect: sa.engine.Dialect) -> list[str]:
    """Messages as a tree (regenerate and edit make siblings), each conversation showing one
    branch: `messages.parent_id` and `conversations.active_leaf_id`.

    Rows already there become the one branch they were: each message's parent is the one before
    it in `seq`, and the branch shown ends at the last, so every conversation shows what it
    showed before. Written as plain SQL that SQLite and PostgreSQL read alike.
    """
    return [
        "ALTER TABLE messages ADD COLUMN parent_id VARCHAR(36)",
        "ALTER TABLE conversations ADD COLUMN active_leaf_id VARCHAR(36)",
        "UPDATE messages SET parent_id = (SELECT earlier.id FROM messages earlier"
        " WHERE earlier.conversation_id = messages.conversation_id AND earlier.seq < messages.seq"
        " ORDER BY earlier.seq DESC LIMIT 1)",
        "UPDATE conversations SET active_leaf_id = (SELECT m.id FROM messages m"
        " WHERE m.conversation_id = conversations.id ORDER BY m.seq DESC LIMIT 1)",
        # Siblings and descendants are found by parent (switching branches).
        "CREATE INDEX ix_messages_parent ON messages (parent_id)",
        # A conversation's total counts the coach calls that reviewed it, found by subject.
        "CREATE INDEX ix_conversations_subject ON conversations (subject_conversation_id)",
    ]


def _stop_requests(dialect: sa.engine.Dialect) -> list[str]:
    # When POST /stop reached a process other than the reply's owner: the owner's heartbeat
    # reads it (app/replies/signals.py), so Stop works across processes without Redis too.
    column = sa.DateTime(timezone=True).compile(dialect=dialect)
    return [f"ALTER TABLE messages ADD COLUMN stop_requested_at {column}"]


def _budget_totals(dialect: sa.engine.Dialect) -> list[str]:
    """Running totals of `budget_reservations.amount_picousd` per user and UTC day, per user
    and month, and for everyone per day, kept by triggers on every insert, change of amount and
    delete, in the same transaction (app/storage/budgets.py).

    Why: a turn's check summed every reservation of the period, so its cost grew with the
    user's turns that day and, under a global cap, with everyone's (`python -m bench --variants
    budgets`: +24% CPU per reply with budgets on at 50 streams, after a few thousand turns of one
    user; docs/benchmarks.md, seventh round). Reading
    three rows by primary key costs the same on the millionth turn as on the first.

    The global row is locked first on PostgreSQL (the rows of one trigger in the order listed,
    everywhere): a statement settling several users' reservations and a turn of one of them
    then never wait for each other in a cycle. It also means writes of reservations take turns
    on that row, as SQLite's writes always do."""
    totals = (
        "CREATE TABLE budget_totals ("
        " scope VARCHAR(16) NOT NULL, subject VARCHAR(64) NOT NULL, period VARCHAR(10) NOT NULL,"
        " amount_picousd BIGINT NOT NULL, PRIMARY KEY (scope, subject, period))"
    )
    backfill = [
        "INSERT INTO budget_totals (scope, subject, period, amount_picousd)"
        f" SELECT '{scope}', {subject}, {period}, SUM(amount_picousd) FROM budget_reservations"
        f" GROUP BY {group}"
        for scope, subject, period, group in (
            ("global_day", "''", "day", "day"),
            ("user_day", "user_id", "day", "user_id, day"),
            ("user_month", "user_id", "month", "user_id, month"),
        )
    ]
    if dialect.name == "postgresql":
        return [
            totals,
            *backfill,
            "CREATE FUNCTION budget_totals_add(p_user text, p_day text, p_month text,"
            " p_delta bigint) RETURNS void LANGUAGE sql AS $$"
            " INSERT INTO budget_totals (scope, subject, period, amount_picousd) VALUES"
            " ('global_day', '', p_day, p_delta), ('user_day', p_user, p_day, p_delta),"
            " ('user_month', p_user, p_month, p_delta)"
            " ON CONFLICT (scope, subject, period) DO UPDATE"
            " SET amount_picousd = budget_totals.amount_picousd + EXCLUDED.amount_picousd $$",
            "CREATE FUNCTION budget_totals_track() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF TG_OP = 'INSERT' THEN"
            " PERFORM budget_totals_add(NEW.user_id, NEW.day, NEW.month, NEW.amount_picousd);"
            " ELSIF TG_OP = 'DELETE' THEN"
            " PERFORM budget_totals_add(OLD.user_id, OLD.day, OLD.month, -OLD.amount_picousd);"
            " ELSE PERFORM budget_totals_add(NEW.user_id, NEW.day, NEW.month,"
            " NEW.amount_picousd - OLD.amount_picousd);"
            " END IF; RETURN NULL; END $$",
            "CREATE TRIGGER budget_totals_insert_delete AFTER INSERT OR DELETE"
            " ON budget_reservations FOR EACH ROW EXECUTE FUNCTION budget_totals_track()",
            "CREATE TRIGGER budget_totals_update AFTER UPDATE OF amount_picousd"
            " ON budget_reservations FOR EACH ROW"
            " WHEN (OLD.amount_picousd IS DISTINCT FROM NEW.amount_picousd)"
            " EXECUTE FUNCTION budget_totals_track()",
        ]

    def add(row: str, sign: str) -> str:
        return " ".join(
            "INSERT INTO budget_totals (scope, subject, period, amount_picousd)"
            f" VALUES ('{scope}', {subject}, {row}.{period}, {sign})"
            " ON CONFLICT (scope, subject, period) DO UPDATE"
            " SET amount_picousd = amount_picousd + excluded.amount_picousd;"
            for scope, subject, period in (
                ("global_day", "''", "day"),
                ("user_day", f"{row}.user_id", "day"),
                ("user_month", f"{row}.user_id", "month"),
            )
        )

    return [
        totals,
        *backfill,
        "CREATE TRIGGER budget_totals_insert AFTER INSERT ON budget_reservations BEGIN"
        f" {add('new', 'new.amount_picousd')} END",
        "CREATE TRIGGER budget_totals_delete AFTER DELETE ON budget_reservations BEGIN"
        f" {add('old', '-old.amount_picousd')} END",
        "CREATE TRIGGER budget_totals_update AFTER UPDATE OF amount_picousd"
        " ON budget_reservations WHEN old.amount_picousd IS NOT new.amount_picousd BEGIN"
        f" {add('new', 'new.amount_picousd - old.amount_picousd')} END",
    ]


# The report's covering index (migration 8) as of migration 11: `user_id` in place of
# `conversation_id`, which reports no longer read (they group and filter by the ledger's own
# user). Frozen here; a later change to it is a later migration.
_REPORT_INCLUDE_11 = (
    "agent, model, requested_model, attempt, status, cost_source, cost_picousd, user_id, "
    "prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cache_write_tokens"
)


def _generation_users(dialect: sa.engine.Dialect) -> list[str]:
    """Each generation's user on its own row, so a report counts a deleted conversation's
    spend for its user (app/billing/reports.py); `app/storage/ledger.py` writes it from now on.

    Rows already there take the user of their conversation, or, when it was deleted, of their
    budget reservation (whose id is the reply's message id, or a title's own generation id: the
    generation's `message_id` either way; every turn and title writes one, limits or not, and
    none is ever deleted). Rows with neither keep none: `python -m app check` pings, and those
    of conversations deleted before reservations existed (migration 7). Every row is rewritten
    once, in the migration's transaction (on PostgreSQL the covering index is dropped first and
    built again after, with `user_id` in it): measured by `python -m bench.reports`
    (docs/operations.md, "Measured").
    """
    statements = ["ALTER TABLE generations ADD COLUMN user_id VARCHAR(64)"]
    if dialect.name == "postgresql":
        # Joins (hashed) rather than a subquery per row: one pass over each table.
        return [
            "DROP INDEX ix_generations_started_at",
            *statements,
            "UPDATE generations SET user_id = c.user_id FROM conversations c"
            " WHERE c.id = generations.conversation_id",
            "UPDATE generations SET user_id = r.user_id FROM budget_reservations r"
            " WHERE r.id = generations.message_id AND generations.user_id IS NULL",
            "CREATE INDEX ix_generations_started_at ON generations (started_at, id)"
            f" INCLUDE ({_REPORT_INCLUDE_11})",
        ]
    # A primary-key lookup per row (UPDATE ... FROM needs SQLite 3.33).
    return [
        *statements,
        "UPDATE generations SET user_id = (SELECT c.user_id FROM conversations c"
        " WHERE c.id = generations.conversation_id)",
        "UPDATE generations SET user_id = (SELECT r.user_id FROM budget_reservations r"
        " WHERE r.id = generations.message_id) WHERE user_id IS NULL",
    ]


def _report_group_statistics(dialect: sa.engine.Dialect) -> list[str]:
    """What PostgreSQL's planner needs to know to aggregate a report by hashing: how many
    groups its keys make (app/billing/reports.py groups by these very expressions).

    Without it, the planner takes a report's day, `date(timezone('UTC', started_at))`, to have as
    many values as `started_at` (one per row), so a year of 1M generations looks like 1M groups: too
    many to hash in `work_mem`, it sorted all 1M rows instead, on disk. With statistics on the keys
    (ndistinct of each and of their combinations), it knows a year has 365 days and ~2,000 (day,
    model) pairs and hashes them in a few MB: measured by `python -m bench.reports`
    (docs/operations.md, "Measured"). Expression statistics need PostgreSQL 14; on an older server
    this does nothing (and reports sort, as before). ANALYZE fills them now rather than whenever
    autovacuum next analyzes a big table (a sample of its rows: under a second for 1M). SQLite has
    no such planner choice: nothing to do.
    """
    if dialect.name != "postgresql":
        return []
    create = (
        "CREATE STATISTICS generations_report_groups (ndistinct) ON"
        " (date(timezone('UTC'::text, started_at))), (COALESCE(model, requested_model)),"
        " agent, user_id FROM generations"
    )
    return [
        "DO $$ BEGIN IF current_setting('server_version_num')::int >= 140000 THEN"
        f" EXECUTE $sql${create}$sql$; END IF; END $$",
        "ANALYZE generations",
    ]


# The columns a report reads besides the user's: the user index below carries them on PostgreSQL.
_REPORT_INCLUDE_14 = (
    "agent, model, requested_model, attempt, status, cost_source, cost_picousd, "
    "prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cache_write_tokens"
)


def _titled_conversations(dialect: sa.engine.Dialect) -> list[str]:
    """Whether a conversation's title is settled (the titler's, or its user's): the titler ran
    only after a complete first reply, so a conversation whose first reply was stopped or
    failed kept the question's first words for good; now the first complete reply, whenever
    it comes, gets it a title, and a rename settles it. The conversations already there with a
    complete reply had their one chance (or are renamed): settled; the others get a title with
    their next complete reply."""
    column = sa.Boolean().compile(dialect=dialect)
    # Feedback on replies (thumbs and a comment), per reply and user: its primary key is how
    # it is read, by reply (a conversation's, a report's).
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    feedback = sa.Table(
        "feedback",
        md,
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    # Read-only links to a branch as it was: read by token, revoked by conversation.
    shares = sa.Table(
        "shares",
        md,
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("conversation_id", sa.String(36), nullable=False, index=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("leaf_id", sa.String(36), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("revoked_at", ts),
    )
    return [
        f"ALTER TABLE conversations ADD COLUMN titled {column} NOT NULL DEFAULT false",
        "UPDATE conversations SET titled = true WHERE EXISTS (SELECT 1 FROM messages"
        " WHERE messages.conversation_id = conversations.id"
        " AND messages.role = 'assistant' AND messages.status = 'complete')",
        str(CreateTable(feedback).compile(dialect=dialect)),
        str(CreateTable(shares).compile(dialect=dialect)),
        *(str(CreateIndex(index).compile(dialect=dialect)) for index in shares.indexes),
    ]


def _generations_by_user(dialect: sa.engine.Dialect) -> list[str]:
    """A user's generations by start time: what `/api/me/costs` reads (app/billing/reports.py
    filters the ledger's `user_id` within a range of `started_at`).

    Without it the report read its whole range, everyone's rows, from `ix_generations_started_at`
    and kept the caller's: on a ledger of 500,000 generations in a month, 121 ms p50 on SQLite
    (115 on PostgreSQL) for a user with 15 of them; with it 5.7 ms (6.6), as on an empty ledger
    (`python -m bench.growth`, docs/benchmarks.md, "Growth"). It reads the caller's own rows
    and no others. On PostgreSQL the index carries every column a report reads (INCLUDE), as the
    admins' index does, so it is an index-only scan; `id` keeps a user's line items
    (`group_by=generation`, keyset over `(started_at, id)`) in index order. Built in the
    migration's transaction: on a big ledger, writes to `generations` wait for it."""
    columns = "generations (user_id, started_at, id)"
    if dialect.name == "postgresql":
        return [
            f"CREATE INDEX ix_generations_user_started ON {columns} INCLUDE ({_REPORT_INCLUDE_14})"
        ]
    return [f"CREATE INDEX ix_generations_user_started ON {columns}"]


def _service_keys(dialect: sa.engine.Dialect) -> list[str]:
    """The host app's service keys and its jobs in the ledger (issue 32, docs/jobs.md).

    A job's generation row names its key and job tag (`group_by=key,job` in cost reports), and
    carries `touched_at`, the heartbeat of the process running it: the sweep reads the live
    jobs through a partial index of their own, so it never scans the ledger. A key is kept as
    its SHA-256 only, looked up by it on every request (`ix_service_keys_hash`, unique)."""
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "service_keys",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("daily_picousd", sa.BigInteger, nullable=True),
        sa.Column("monthly_picousd", sa.BigInteger, nullable=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=True),
        sa.Column("store_content", sa.Boolean, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
        sa.Index("ix_service_keys_hash", "key_hash", unique=True),
    )
    sa.Table(
        "job_contents",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    column = sa.DateTime(timezone=True).compile(dialect=dialect)
    return [
        *_ddl(md, dialect),
        "ALTER TABLE generations ADD COLUMN key_id VARCHAR(32)",
        "ALTER TABLE generations ADD COLUMN job VARCHAR(100)",
        f"ALTER TABLE generations ADD COLUMN touched_at {column}",
        "CREATE INDEX ix_generations_live_jobs ON generations (touched_at)"
        " WHERE key_id IS NOT NULL AND status = 'streaming'",
    ]


def _chosen_models(dialect: sa.engine.Dialect) -> list[str]:
    """The model each conversation last used, so its next turn uses it again (a user's choice
    is per conversation), the models an agent's run-time override lets users choose, and what
    a reply's history left out to fit its model.

    Conversations already there get the model their latest reply asked for (the agent's model
    then): plain SQL that SQLite and PostgreSQL read alike. One with no reply keeps null, which
    means the agent's default."""
    return [
        "ALTER TABLE conversations ADD COLUMN model VARCHAR(200)",
        "ALTER TABLE agent_overrides ADD COLUMN allowed_models TEXT",
        # A reply whose history was cut to fit its model's window says so, on replay too.
        "ALTER TABLE messages ADD COLUMN history TEXT",
        "UPDATE conversations SET model = (SELECT m.requested_model FROM messages m"
        " WHERE m.conversation_id = conversations.id AND m.role = 'assistant'"
        " AND m.requested_model IS NOT NULL ORDER BY m.seq DESC LIMIT 1)",
    ]


# The report's covering indexes as of migration 18: what caching saved is summed beside the cost.
_CACHE_SAVED = "cache_saved_picousd"


def _prompt_caching(dialect: sa.engine.Dialect) -> list[str]:
    """What prompt caching saved, per generation, and the switch that turns it off per agent.

    `cache_saved_picousd` is written with each generation's usage from now on (rows already
    there keep null, "not known": their saving was never computed, and the prices of then are
    not kept); `cache_discount_picousd` is OpenRouter's own figure when the generation record is
    read. Cost reports sum the saving beside the cost: on PostgreSQL both covering indexes are
    built again with it (an index-only scan stays one), in the migration's transaction."""
    statements = [
        "ALTER TABLE generations ADD COLUMN cache_saved_picousd BIGINT",
        "ALTER TABLE generations ADD COLUMN cache_discount_picousd BIGINT",
        "ALTER TABLE agent_overrides ADD COLUMN prompt_caching BOOLEAN",
    ]
    if dialect.name != "postgresql":
        return statements
    return [
        *statements,
        "DROP INDEX ix_generations_started_at",
        "CREATE INDEX ix_generations_started_at ON generations (started_at, id)"
        f" INCLUDE ({_REPORT_INCLUDE_11}, {_CACHE_SAVED})",
        "DROP INDEX ix_generations_user_started",
        "CREATE INDEX ix_generations_user_started ON generations (user_id, started_at, id)"
        f" INCLUDE ({_REPORT_INCLUDE_14}, {_CACHE_SAVED})",
    ]


def _uploads(dialect: sa.engine.Dialect) -> list[str]:
    """Attachments (issue 35, app/storage/uploads.py): uploads, their bytes in 256 KiB rows
    (BLOB on SQLite, BYTEA on PostgreSQL: streamed in and out a row at a time), and the
    messages that carry them. Indexed for what reads them: a user's stored bytes (the quota),
    the sweep of old unused uploads (by age), and an upload's messages (is it used; deleting a
    conversation deletes its uploads)."""
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "uploads",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("pages", sa.Integer, nullable=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("stored_at", ts, nullable=True),
        sa.Index("ix_uploads_user", "user_id"),
        sa.Index("ix_uploads_created", "created_at"),
    )
    sa.Table(
        "upload_chunks",
        md,
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "message_attachments",
        md,
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("position", sa.SmallInteger, primary_key=True),
        sa.Column("upload_id", sa.String(32), nullable=False),
        sa.Index("ix_message_attachments_upload", "upload_id"),
    )
    # A count on the message itself: the history's read (a walk of the branch) learns which
    # messages carry any without a probe of `message_attachments` per message.
    return [*_ddl(md, dialect), "ALTER TABLE messages ADD COLUMN attachment_count SMALLINT"]


MIGRATIONS: list[Migration] = [
    Migration(1, "conversations, messages and generations", _initial_schema),
    Migration(2, "model catalog copy and agent overrides", _catalog_tables),
    Migration(3, "conversations paged by (updated_at, id)", _conversation_pages),
    Migration(4, "reasoning, citations and usage details", _reasoning_columns),
    Migration(5, "idempotency keys of turns", _idempotency_keys),
    Migration(6, "full-text search of messages", _message_search),
    Migration(7, "budget reservations and overrides", _budget_tables),
    Migration(8, "generations by start time, for cost reports", _generations_by_start),
    Migration(9, "messages as a tree, the branch each conversation shows", _message_tree),
    Migration(10, "stop requests of streaming replies", _stop_requests),
    Migration(11, "generations' own user id, for cost reports", _generation_users),
    Migration(12, "statistics of cost reports' groups", _report_group_statistics),
    Migration(13, "running totals of budget reservations", _budget_totals),
    Migration(14, "generations by user and start time, for a user's costs", _generations_by_user),
    Migration(15, "titled conversations, feedback on replies, shared links", _titled_conversations),
    Migration(16, "service keys, and jobs in the ledger", _service_keys),
    Migration(17, "conversations' models, models agents allow, history notes", _chosen_models),
    Migration(18, "what prompt caching saved, per generation; caching per agent", _prompt_caching),
    Migration(19, "uploads, their chunks, and the messages that carry them", _uploads),
]

_schema_migrations = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


@asynccontextmanager
async def _locked(connection: Connection, sqlite_db: bool):
    if sqlite_db:
        await connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await connection.execute("ROLLBACK")
            raise
        await connection.execute("COMMIT")
    else:
        async with connection.transaction():
            await connection.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
            yield


async def migrate(database: Database, *, url: str) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied now."""
    sqlite_db = is_sqlite(url)
    dialect = sqlite.dialect() if sqlite_db else postgresql.dialect()
    create = str(CreateTable(_schema_migrations, if_not_exists=True).compile(dialect=dialect))
    applied_now: list[int] = []
    # Said before waiting, so a release phase stuck behind another process's migration shows why.
    log.info("taking the migration lock")
    async with database.connection() as connection, _locked(connection, sqlite_db):
        await connection.execute(create)
        done = {
            row[0] for row in await connection.fetch_all(sa.select(_schema_migrations.c.version))
        }
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements(dialect):
                await connection.execute(statement)
            await connection.execute(
                _schema_migrations.insert().values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
                )
            )
            applied_now.append(migration.version)
            log.info("applied migration %d: %s", migration.version, migration.name)
    return applied_now


async def pending_migrations(database: Database, *, url: str) -> list[Migration]:
    """The migrations this database lacks, in order; reads only, takes no lock."""
    exists = (
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        if is_sqlite(url)
        else "SELECT to_regclass('schema_migrations') IS NOT NULL"
    )
    done: set[int] = set()
    if await database.fetch_val(exists):
        done = {row[0] for row in await database.fetch_all(sa.select(_schema_migrations.c.version))}
    return [migration for migration in MIGRATIONS if migration.version not in done]


async def require_migrated(database: Database, *, url: str) -> None:
    """Refuse to serve a schema older than this code: every query would fail on it later."""
    pending = await pending_migrations(database, url=url)
    if pending:
        missing = ", ".join(f"{m.version} ({m.name})" for m in pending)
        raise MigrationsPending(
            f"the database lacks migration(s) {missing}: run `{MIGRATE_COMMAND}` first "
            "(on Heroku the Procfile's release phase runs it on every deploy), "
            "or set MIGRATE_ON_START=true"
        )
