"""The writer of a reply's rows, alone: a real database (SQLite, PostgreSQL), no server, no
upstream. Its draft is filled by hand, as the attempts would."""

from __future__ import annotations

import asyncio
from typing import Any

from app.admission.turn_write import TurnWrite
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.core.states import CostSource, GenerationStatus, MessageStatus
from app.replies.draft import Draft
from app.replies.log import ReplyLog
from app.replies.writer import ReplyWriter
from app.storage.ledger import GenerationRecord
from app.storage.replies import TurnIds
from app.storage.store import Store
from app.storage.tables import new_id, now
from tests.support import generation_rows, migrated_store, reply_row, turn_rows


def _request(ids: TurnIds) -> RunRequest:
    return RunRequest(
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        user_message_id=ids.user_message_id,
        user_id="dev",
        agent="chat",
        model="openai/gpt-4o",
        fallback_models=(),
        temperature=0.7,
        max_tokens=100,
        messages=[],
    )


def _writer(store: Store, ids: TurnIds, turn: TurnWrite, draft: Draft, **hooks: Any):
    log = ReplyLog(ping_interval=60)
    for part in draft.parts:
        log.append("delta", {"content": part})
    return ReplyWriter(
        _request(ids),
        turn=turn,
        draft=draft,
        log=log,
        store=store,
        spawn=asyncio.ensure_future,
        reconcile=hooks.get("reconcile", lambda **_: None),
        checkpoint_interval=3600,
        on_turn_lost=hooks.get("on_turn_lost", lambda: None),
        outage=Outage("checkpoints and final writes"),
        final_write_patience=0,
    )


def test_the_final_write_saves_the_reply_and_asks_later_for_a_pending_cost(database) -> None:
    ids = TurnIds.allocate(None)
    asked: list[dict[str, Any]] = []

    async def scenario() -> tuple[MessageStatus, str | None]:
        async with migrated_store(database.url) as store:
            draft = Draft()
            draft.parts.extend(["hel", "lo"])
            record = GenerationRecord(
                id=new_id(), attempt=1, requested_model="openai/gpt-4o", started_at=now()
            )
            record.status, record.generation_id = GenerationStatus.COMPLETE, "gen-1"
            draft.records.append(record)
            draft.finish_reason = "stop"
            writer = _writer(
                store,
                ids,
                TurnWrite(lambda: turn_rows(store, ids)),
                draft,
                reconcile=lambda **looked_up: asked.append(looked_up),
            )
            writer.begin_turn()
            status, _, finish_reason = await writer.finish(MessageStatus.COMPLETE, None)
            writer.reconcile_pending()
            return status, finish_reason

    status, finish_reason = asyncio.run(scenario())
    assert (status, finish_reason) == (MessageStatus.COMPLETE, "stop")
    row = reply_row(database, ids.message_id)
    assert (row["status"], row["content"], row["finish_reason"]) == ("complete", "hello", "stop")
    [generation] = generation_rows(database, ids.message_id)
    assert generation["generation_id"] == "gen-1"
    assert generation["cost_source"] == CostSource.PENDING
    assert [a["generation_id"] for a in asked] == ["gen-1"]


def test_a_turn_that_could_not_be_written_ends_the_reply_as_a_storage_error(database) -> None:
    ids = TurnIds.allocate(None)
    lost: list[bool] = []

    async def refused() -> None:
        raise ConnectionError("the database went away")

    async def scenario() -> tuple[MessageStatus, str | None]:
        async with migrated_store(database.url) as store:
            writer = _writer(
                store, ids, TurnWrite(refused), Draft(), on_turn_lost=lambda: lost.append(True)
            )
            writer.begin_turn()
            status, error, _ = await writer.finish(MessageStatus.COMPLETE, None)
            await asyncio.sleep(0)  # the write's done callback
            return status, error.code if error else None

    assert asyncio.run(scenario()) == (MessageStatus.ERROR, "storage_error")
    assert lost == [True]
    assert database.query("SELECT id FROM messages WHERE id = :id", id=ids.message_id) == []
