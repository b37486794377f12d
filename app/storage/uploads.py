"""Uploads: a user's images and PDFs, kept in the database on either backend, and the messages
that carry them.

A file's bytes are rows of `upload_chunks`, `CHUNK_BYTES` each, written a few at a time and read
one at a time: neither way is a file ever held whole (a 10 MB PDF is 40 rows; PostgreSQL keeps
each BYTEA out of line, TOASTed; SQLite a BLOB in overflow pages). The upload's row is written
first, without `stored_at`, so the sweep can tell an upload a process died writing from one in
progress; its last write sets `stored_at`, guarded by the user's quota (the stored bytes of
theirs, this one's included, at most `quota`), and only then does it exist for its owner.

An upload is its owner's alone: every read and delete is by (id, user), and another user's
id answers as one that is not there. It goes with the conversation whose messages carry it
(unless a message of another conversation carries it too), and the sweep deletes uploads no
message carries a day after they were made, and those left unfinished an hour after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import message_attachments, now, upload_chunks, uploads
from app.storage.writer import Guard, Step, Writer, WriteRefused, binds

CHUNK_BYTES = 256 * 1024
# Chunks a write carries: 1 MiB a transaction, so an upload's write never holds the file.
CHUNKS_PER_WRITE = 4
UNUSED_FOR = timedelta(days=1)
UNFINISHED_FOR = timedelta(hours=1)

NEW_CHUNK = upload_chunks.insert().values(binds("upload_id", "seq", "data"))
NEW_ATTACHMENT = message_attachments.insert().values(binds("message_id", "position", "upload_id"))
METADATA = (
    uploads.c.id,
    uploads.c.type,
    uploads.c.name,
    uploads.c.size,
    uploads.c.width,
    uploads.c.height,
    uploads.c.pages,
)


class QuotaExceeded(Exception):
    """The upload would take the user's stored bytes over their quota: nothing of it is kept."""


def attachment_steps(message_id: str, upload_ids: Sequence[str]) -> list[Step]:
    """The rows that say message `message_id` carries `upload_ids`, in order (in its turn's
    write)."""
    return [
        (NEW_ATTACHMENT, {"message_id": message_id, "position": i, "upload_id": upload_id})
        for i, upload_id in enumerate(upload_ids)
    ]


def conversation_upload_steps(owned_conversation: sa.Select[Any], messages: sa.Table) -> list[Step]:
    """What deleting a conversation (`owned_conversation` selects its id) deletes of uploads:
    those its messages carry that no message elsewhere does, their chunks, and its messages'
    attachment rows. Before the messages themselves, in the same write."""
    its_messages = sa.select(messages.c.id).where(
        messages.c.conversation_id.in_(owned_conversation)
    )
    elsewhere = message_attachments.alias("elsewhere")
    doomed = sa.select(uploads.c.id).where(
        uploads.c.id.in_(
            sa.select(message_attachments.c.upload_id).where(
                message_attachments.c.message_id.in_(its_messages)
            )
        ),
        ~sa.exists().where(
            elsewhere.c.upload_id == uploads.c.id, elsewhere.c.message_id.not_in(its_messages)
        ),
    )
    return [
        upload_chunks.delete().where(upload_chunks.c.upload_id.in_(doomed)),
        uploads.delete().where(uploads.c.id.in_(doomed)),
        message_attachments.delete().where(message_attachments.c.message_id.in_(its_messages)),
    ]


async def carried(
    database: Database, message_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The uploads each of `message_ids` carries, in order (messages with none left out)."""
    if not message_ids:
        return {}
    rows = await database.fetch_all(
        sa.select(message_attachments.c.message_id, *METADATA)
        .select_from(
            message_attachments.join(uploads, uploads.c.id == message_attachments.c.upload_id)
        )
        .where(message_attachments.c.message_id.in_(list(message_ids)))
        .order_by(message_attachments.c.message_id, message_attachments.c.position)
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        values = dict(row._mapping)
        found.setdefault(values.pop("message_id"), []).append(values)
    return found


class Uploads:
    def __init__(self, *, database: Database, writer: Writer, postgres: bool) -> None:
        self._database = database
        self._writer = writer
        self._postgres = postgres

    async def stored_bytes(self, *, user_id: str) -> int:
        """What the user's uploads take now (the quota counts it)."""
        total = await self._database.fetch_val(
            sa.select(sa.func.coalesce(sa.func.sum(uploads.c.size), 0)).where(
                uploads.c.user_id == user_id, uploads.c.stored_at.is_not(None)
            )
        )
        return int(total or 0)

    async def store(
        self, *, upload: dict[str, Any], chunks: Iterable[bytes], quota: int
    ) -> datetime:
        """Keep `upload` (its row's values: id, user_id, type, name, size, width, height,
        pages, digest) with its bytes, `chunks` in order, each at most `CHUNK_BYTES`; its
        time of creation. `QuotaExceeded`, nothing kept, when it does not fit the quota."""
        created = now()
        await self._writer.write([uploads.insert().values(**upload, created_at=created)])
        try:
            batch: list[Step] = []
            for seq, data in enumerate(chunks):
                batch.append((NEW_CHUNK, {"upload_id": upload["id"], "seq": seq, "data": data}))
                if len(batch) == CHUNKS_PER_WRITE:
                    await self._writer.write(batch)
                    batch = []
            await self._writer.write([*batch, *self._finish(upload, quota)])
        except WriteRefused:
            await self._forget(upload["id"])
            raise QuotaExceeded(upload["user_id"]) from None
        except BaseException:
            await self._forget(upload["id"])
            raise
        return created

    def _finish(self, upload: dict[str, Any], quota: int) -> list[Step]:
        """Its `stored_at`, if the user's stored bytes and its own fit their quota. On
        PostgreSQL, two uploads of one user finish one after the other (an advisory lock on the
        user), or both could read the sum without the other."""
        others = (
            sa.select(sa.func.coalesce(sa.func.sum(uploads.c.size), 0))
            .where(uploads.c.user_id == upload["user_id"], uploads.c.stored_at.is_not(None))
            .scalar_subquery()
        )
        steps: list[Step] = []
        if self._postgres:
            lock = sa.func.pg_advisory_xact_lock(sa.func.hashtext("uploads:" + upload["user_id"]))
            steps.append(sa.select(lock))
        steps.append(
            Guard(
                uploads.update()
                .where(uploads.c.id == upload["id"], others + upload["size"] <= quota)
                .values(stored_at=now())
                .returning(uploads.c.id)
            )
        )
        return steps

    async def _forget(self, upload_id: str) -> None:
        await self._writer.write(
            [
                upload_chunks.delete().where(upload_chunks.c.upload_id == upload_id),
                uploads.delete().where(uploads.c.id == upload_id),
            ]
        )

    async def get(self, *, upload_id: str, user_id: str) -> dict[str, Any] | None:
        """The user's stored upload (another user's answers as none)."""
        row = await self._database.fetch_one(
            sa.select(uploads).where(
                uploads.c.id == upload_id,
                uploads.c.user_id == user_id,
                uploads.c.stored_at.is_not(None),
            )
        )
        return dict(row._mapping) if row else None

    async def owned(self, *, upload_ids: Sequence[str], user_id: str) -> dict[str, dict[str, Any]]:
        """Those of `upload_ids` the user has stored, by id (a turn's attachments)."""
        if not upload_ids:
            return {}
        rows = await self._database.fetch_all(
            sa.select(*METADATA).where(
                uploads.c.id.in_(list(upload_ids)),
                uploads.c.user_id == user_id,
                uploads.c.stored_at.is_not(None),
            )
        )
        return {row._mapping["id"]: dict(row._mapping) for row in rows}

    async def of_messages(self, *, message_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The uploads each of `message_ids` carries, in order (messages with none left out)."""
        return await carried(self._database, message_ids)

    async def chunks(self, upload_id: str) -> AsyncIterator[bytes]:
        """The upload's bytes, a chunk (one row) at a time."""
        seq = 0
        while True:
            data = await self._database.fetch_val(
                sa.select(upload_chunks.c.data).where(
                    upload_chunks.c.upload_id == upload_id, upload_chunks.c.seq == seq
                )
            )
            if data is None:
                return
            yield bytes(data)
            seq += 1

    async def delete(self, *, upload_id: str, user_id: str) -> bool:
        """Delete the user's upload, its bytes, and its place on the messages that carried it;
        False if there was no such upload of theirs."""
        owned = sa.and_(uploads.c.id == upload_id, uploads.c.user_id == user_id)
        _, _, deleted = await self._writer.write(
            [
                upload_chunks.delete().where(
                    upload_chunks.c.upload_id.in_(sa.select(uploads.c.id).where(owned))
                ),
                message_attachments.delete().where(
                    message_attachments.c.upload_id.in_(sa.select(uploads.c.id).where(owned))
                ),
                uploads.delete().where(owned).returning(uploads.c.id),
            ]
        )
        return bool(deleted)

    async def expire(self, *, at: datetime) -> int:
        """Delete the uploads no message carries a day after they were made, and those a
        process left unfinished; how many."""
        unused = ~sa.exists().where(message_attachments.c.upload_id == uploads.c.id)
        doomed = sa.select(uploads.c.id).where(
            sa.or_(
                sa.and_(uploads.c.created_at < at - UNUSED_FOR, unused),
                sa.and_(uploads.c.created_at < at - UNFINISHED_FOR, uploads.c.stored_at.is_(None)),
            )
        )
        _, deleted = await self._writer.write(
            [
                upload_chunks.delete().where(upload_chunks.c.upload_id.in_(doomed)),
                uploads.delete().where(uploads.c.id.in_(doomed)).returning(uploads.c.id),
            ]
        )
        return len(deleted)
