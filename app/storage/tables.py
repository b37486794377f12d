"""The tables' current shape: what the queries of every aggregate are written against.

Migrations (`app/storage/migrations.py`) create this shape; `tests/storage/test_migrations.py`
fails when the two disagree. Ids and timestamps are chosen in Python (`new_id`, `now`), never by
the database, so a run knows its rows' ids before they are written.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa


class UTCDateTime(sa.TypeDecorator):
    """Timestamps go in as UTC and come out timezone-aware, on SQLite as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("subject_conversation_id", sa.String(36)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The last message of the branch the conversation shows (see `app/storage/replies.py`).
    sa.Column("active_leaf_id", sa.String(36)),
    # Its title is no longer the question's first words: the titler named it, or its user did
    # (then the titler never will). Until then each complete chat reply asks for a title.
    sa.Column("titled", sa.Boolean, nullable=False, server_default=sa.false()),
    # The model of its last turn: the next turn's, unless that one names another.
    sa.Column("model", sa.String(200)),
)

# A user's thumbs up (1) or down (-1) on a reply, with an optional comment: one per reply and
# user, changed in place, removed on request or with the reply's conversation.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("message_id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("rating", sa.SmallInteger, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# A read-only link to a conversation's branch as it was when the link was made (`leaf_id`);
# revoked links stay, with the time they were revoked, and answer as if they never were.
shares = sa.Table(
    "shares",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("conversation_id", sa.String(36), nullable=False, index=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("leaf_id", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("requested_model", sa.String(200)),
    sa.Column("model", sa.String(200)),
    sa.Column("temperature", sa.Float),
    sa.Column("finish_reason", sa.String(32)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # JSON list, one entry per event between `meta` and the final one, in the order streamed,
    # so a reply replays from the database with the same event ids (resumption after a
    # restart): n > 0 a `delta` of the next n characters of `content`, -n a `reasoning` event
    # of the next n characters of `reasoning`, 0 an `annotation` (the next of `annotations`).
    sa.Column("event_lengths", sa.Text),
    sa.Column("reasoning", sa.Text, nullable=False, server_default=""),  # the thinking shown
    # JSON: the `reasoning_details` blocks, sent back upstream with this turn (may be encrypted:
    # never shown), and the citations (`annotation` events' payloads).
    sa.Column("reasoning_details", sa.Text),
    sa.Column("annotations", sa.Text),
    # JSON {"sent", "left_out"}: a reply whose history was cut to fit its model's window.
    sa.Column("history", sa.Text),
    # How many uploads a user message carries (`message_attachments`; migration 19): null for
    # none, so the history's read knows which messages to look their attachments up for.
    sa.Column("attachment_count", sa.SmallInteger),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The message this one follows in the conversation's tree; None for a first message.
    sa.Column("parent_id", sa.String(36)),
    # Set by a stop request that reached a process not generating the reply (migration 10).
    sa.Column("stop_requested_at", UTCDateTime),
)

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("generation_id", sa.String(200)),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("requested_model", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("cost_picousd", sa.BigInteger),
    sa.Column("cost_source", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("first_token_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("cache_write_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("is_byok", sa.Boolean, nullable=False, server_default=sa.false()),
    # What the provider charged a BYOK key (cost_details.upstream_inference_cost); the cost
    # billed is always `cost_picousd`.
    sa.Column("upstream_cost_picousd", sa.BigInteger),
    sa.Column("first_reasoning_at", UTCDateTime),
    # Whose spend it is, written with the row (migration 11): the ledger outlives a deleted
    # conversation, and so does its user. None: spent for no user (`python -m app check`).
    sa.Column("user_id", sa.String(64)),
    # A job's (migration 16): the service key that called `/v1/chat/completions` and the job
    # tag it sent; when the process running it last said it is alive (a crash is told by it).
    sa.Column("key_id", sa.String(32)),
    sa.Column("job", sa.String(100)),
    sa.Column("touched_at", UTCDateTime),
    # What prompt caching saved (migration 18), pico-dollars, negative when cache writes cost
    # more than reads saved: from the usage's cached and cache-write tokens and the answering
    # model's catalog prices when the row was written (app/core/caching.py), else the
    # generation record's `cache_discount`; None: not known (a cache was used, no price known).
    sa.Column("cache_saved_picousd", sa.BigInteger),
    # OpenRouter's own `cache_discount`, when the generation record was read (a stream without
    # its usage chunk); kept as it came, beside ours.
    sa.Column("cache_discount_picousd", sa.BigInteger),
)

model_catalog = sa.Table(
    "model_catalog",
    metadata,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("fetched_at", UTCDateTime, nullable=False),
)

agent_overrides = sa.Table(
    "agent_overrides",
    metadata,
    sa.Column("agent", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(200)),
    sa.Column("fallback_models", sa.Text),
    sa.Column("temperature", sa.Float),
    sa.Column("max_tokens", sa.Integer),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("reasoning", sa.Text),  # JSON: the agent's `reasoning` settings
    sa.Column("allowed_models", sa.Text),  # JSON: "*" or a list of model ids
    sa.Column("prompt_caching", sa.Boolean),  # None: as in the agents file (migration 18)
)


# A client's key for one turn (`Idempotency-Key`), per user: a retry with the same key gets the
# same reply. Written in the turn's own transaction, so a key names rows that exist.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("user_message_id", sa.String(36), nullable=False),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)


# Spend control (app/storage/budgets.py): one row per turn, written before its upstream call.
budget_reservations = sa.Table(
    "budget_reservations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # the reply's message id
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # UTC, 2026-11-22
    sa.Column("month", sa.String(7), nullable=False),  # UTC, 2026-11
    sa.Column("reserved_picousd", sa.BigInteger, nullable=False),
    sa.Column("amount_picousd", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("settled_at", UTCDateTime),
)

# Kept by triggers (migration 13): the sum of `budget_reservations.amount_picousd` per scope.
budget_totals = sa.Table(
    "budget_totals",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),  # global_day | user_day | user_month
    sa.Column("subject", sa.String(64), primary_key=True),  # the user id; '' for global_day
    sa.Column("period", sa.String(10), primary_key=True),  # the reservation's day or month
    sa.Column("amount_picousd", sa.BigInteger, nullable=False),
)

budget_overrides = sa.Table(
    "budget_overrides",
    metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("daily_overridden", sa.Boolean, nullable=False),
    sa.Column("daily_picousd", sa.BigInteger),
    sa.Column("monthly_overridden", sa.Boolean, nullable=False),
    sa.Column("monthly_picousd", sa.BigInteger),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


# The host app's service keys (migration 16, app/jobs/keys.py): only a hash of each is kept.
service_keys = sa.Table(
    "service_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("label", sa.String(100), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),  # SHA-256 of the key, hex
    sa.Column("hint", sa.String(16), nullable=False),  # the key's first characters, to tell it
    sa.Column("models", sa.Text, nullable=False),  # JSON: a list of model ids, or "*"
    sa.Column("daily_picousd", sa.BigInteger),
    sa.Column("monthly_picousd", sa.BigInteger),
    sa.Column("rpm", sa.Integer),
    sa.Column("concurrency", sa.Integer),
    sa.Column("store_content", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

# What a job sent and got, kept only for a key with `store_content` (migration 16).
job_contents = sa.Table(
    "job_contents",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the job's (its generation row's message)
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("request", sa.Text, nullable=False),  # the request body, JSON
    sa.Column("response", sa.Text, nullable=False),  # the answer: JSON, or a stream's data lines
    sa.Column("created_at", UTCDateTime, nullable=False),
)


# Attachments (migration 19, app/storage/uploads.py): a user's uploaded image or PDF, its bytes
# in `upload_chunks` (a row per 256 KiB, so none is read or written whole), and the messages
# that carry it, in order.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),  # its media type, from its bytes
    sa.Column("name", sa.String(255), nullable=False),  # the client's file name, cleaned
    sa.Column("size", sa.BigInteger, nullable=False),  # bytes stored
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("pages", sa.Integer),
    sa.Column("digest", sa.String(80), nullable=False),  # sha256:<hex> of the bytes stored
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("stored_at", UTCDateTime),  # null while its chunks are being written
)

upload_chunks = sa.Table(
    "upload_chunks",
    metadata,
    sa.Column("upload_id", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

message_attachments = sa.Table(
    "message_attachments",
    metadata,
    sa.Column("message_id", sa.String(36), primary_key=True),
    sa.Column("position", sa.SmallInteger, primary_key=True),
    sa.Column("upload_id", sa.String(32), nullable=False),
)


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex
