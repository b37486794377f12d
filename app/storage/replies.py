"""Replies: the messages of a conversation, and the writes a reply makes over its life.

A conversation's messages form a tree: each names the one it follows (`parent_id`; None for a
first message). A reply regenerated is a sibling of the first under the same user message; a
user message edited is a sibling of the old one under the same parent, with its own reply;
whatever followed the old ones stays on their branch. The conversation shows one branch: the
path from the first message down to its `active_leaf_id` (a leaf names its whole path, as each
message has one parent; a pointer per message to its shown child would need a write on every
level to switch). A new turn continues from that leaf and becomes the new one; switching to a
message shows the latest branch through it (`show`). Only the shown path goes upstream as
history. `seq` still counts a conversation's messages in the order they were written, so a
child always comes after its parent.

Write pattern, chosen so no token ever waits for the database:
- a turn starts with one transaction: the user message and a `streaming` assistant row (and
  the conversation's row, new or touched);
- while a reply streams, its content is checkpointed every few seconds (not per token), with
  its generation rows as they stand;
- it ends with one transaction: the final message row and all its generation (cost) rows.
Live replies are heartbeaten (`touch`), so any process can tell another's live reply from the
orphan of a process that died (`interrupt_orphans`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.core.attachments import Attachment, with_attachments
from app.core.states import MessageStatus
from app.storage.conversations import (
    NEW_CONVERSATION,
    TOUCH_CONVERSATION,
    TURN_IN_CONVERSATION,
)
from app.storage.ledger import GenerationRecord, Ledger, cancel_streaming, usage_by_message
from app.storage.tables import conversations, messages, new_id, now
from app.storage.uploads import attachment_steps, carried
from app.storage.writer import Step, Writer, binds

# A message takes the next `seq` of its conversation, computed by the insert itself.
NEW_MESSAGE = messages.insert().values(
    seq=sa.select(sa.func.coalesce(sa.func.max(messages.c.seq), 0) + 1)
    # Not the `conversation_id` of the values: one parameter in two places gets two types
    # deduced on PostgreSQL, which asyncpg refuses.
    .where(messages.c.conversation_id == sa.bindparam("seq_of"))
    .scalar_subquery(),
    **binds(
        "id",
        "conversation_id",
        "role",
        "content",
        "status",
        "agent",
        "requested_model",
        "temperature",
        "event_lengths",
        "created_at",
        "updated_at",
        "parent_id",
        "history",
        "attachment_count",
    ),
)
CHECKPOINT_MESSAGE = (
    messages.update()
    .where(
        messages.c.id == sa.bindparam("message_id"), messages.c.status == MessageStatus.STREAMING
    )
    .values(binds("content", "event_lengths", "reasoning", "annotations", "updated_at"))
)
FINISH_MESSAGE = (
    messages.update()
    .where(messages.c.id == sa.bindparam("message_id"))
    .values(
        binds(
            "status",
            "content",
            "event_lengths",
            "reasoning",
            "reasoning_details",
            "annotations",
            "model",
            "finish_reason",
            "error_code",
            "error_message",
            "updated_at",
        )
    )
)


def path_to(leaf_id: str, *columns: str) -> sa.CTE:
    """The messages from the first down to `leaf_id` (their ids and `columns`), walked up
    parent by parent: the path's own rows, by primary key."""
    path = (
        sa.select(messages.c.id, messages.c.parent_id, *(messages.c[c] for c in columns))
        .where(messages.c.id == leaf_id)
        .cte("path", recursive=True)
    )
    parent = messages.alias("parent")
    return path.union_all(
        sa.select(parent.c.id, parent.c.parent_id, *(parent.c[c] for c in columns)).where(
            parent.c.id == path.c.parent_id
        )
    )


def history_query(leaf_id: str, limit: int, max_chars: int | None = None) -> sa.Select[Any]:
    """The last `limit` messages with content of the branch ending at `leaf_id`, latest first,
    read off the walk itself (joined back to `messages`, PostgreSQL read all of it).

    The walk up stops at the `limit`-th message with content (`kept` counts them), so a turn
    reads what its history sends, however long the conversation. Walked to the first message,
    it read the whole branch: on PostgreSQL, where the planner takes each step through a small
    table as a scan of it, 24 ms for a branch of 400 messages against 1.2 ms for 20, and the
    200th turn's first token 2.3 times as late as the 10th's (`python -m bench.growth`,
    docs/benchmarks.md, "Growth").

    With `max_chars` (the model's context window), it also stops once the messages walked hold
    that many characters: each character is at least a token of the fitting's bound
    (app/replies/fitting.py), so no message further up could be sent, and a long conversation
    of long messages is read as far as its window, not `limit` messages of it."""
    has_content = sa.case(
        (messages.c.content != "", sa.literal_column("1")), else_=sa.literal_column("0")
    )
    columns = ("parent_id", "seq", "role", "content", "reasoning_details", "attachment_count")
    path = (
        sa.select(
            messages.c.id,
            *(messages.c[c] for c in columns),
            has_content.label("kept"),
            sa.func.length(messages.c.content).label("chars"),
        )
        .where(messages.c.id == leaf_id)
        .cte("path", recursive=True)
    )
    parent = messages.alias("parent")
    parent_has_content = sa.case(
        (parent.c.content != "", sa.literal_column("1")), else_=sa.literal_column("0")
    )
    walk = [parent.c.id == path.c.parent_id, path.c.kept < limit]
    if max_chars is not None:
        walk.append(path.c.chars < max_chars)
    path = path.union_all(
        sa.select(
            parent.c.id,
            *(parent.c[c] for c in columns),
            path.c.kept + parent_has_content,
            path.c.chars + sa.func.length(parent.c.content),
        ).where(*walk)
    )
    return (
        sa.select(
            path.c.role,
            path.c.content,
            path.c.reasoning_details,
            path.c.seq,
            path.c.id,
            path.c.attachment_count,  # only messages that carry any have theirs read
        )
        .where(path.c.content != "")
        .order_by(path.c.seq.desc())
        .limit(limit)
    )


def messages_with_usage(conversation_id: str, leaf_id: str) -> sa.Select[Any]:
    """The messages of the conversation's branch ending at `leaf_id`, in order, with their
    generations' sums: this conversation's only, through the primary key, the `(conversation_id,
    seq)` and `ix_generations_conversation` indexes."""
    usage = usage_by_message(conversation_id=conversation_id)
    path = path_to(leaf_id)
    return (
        sa.select(
            messages,
            usage.c.prompt_tokens,
            usage.c.completion_tokens,
            usage.c.reasoning_tokens,
            usage.c.cost_picousd,
            usage.c.cache_saved_picousd,
            usage.c.generation_count,
        )
        .select_from(
            messages.join(path, path.c.id == messages.c.id).outerjoin(
                usage, usage.c.message_id == messages.c.id
            )
        )
        # Redundant for the result, not for the plan: PostgreSQL cannot tell how few rows the
        # recursive walk gives and would read all of `messages` to join them.
        .where(messages.c.conversation_id == conversation_id)
        .order_by(messages.c.seq)
    )


def reply_with_usage(message_id: str, user_id: str) -> sa.Select[Any]:
    """One assistant message of the user's, with its user message's id and its generations'
    sums (a finished reply's replay reads it): by primary key, and the message's generations
    through `ix_generations_message`."""
    user_message = messages.alias("user_message")
    usage = usage_by_message(message_id=message_id)
    return (
        sa.select(
            messages,
            user_message.c.id.label("user_message_id"),
            usage.c.prompt_tokens,
            usage.c.completion_tokens,
            usage.c.reasoning_tokens,
            usage.c.cost_picousd,
            usage.c.cache_saved_picousd,
        )
        .select_from(
            messages.join(conversations, conversations.c.id == messages.c.conversation_id)
            .outerjoin(user_message, user_message.c.id == messages.c.parent_id)
            .outerjoin(usage, usage.c.message_id == messages.c.id)
        )
        .where(
            messages.c.id == message_id,
            messages.c.role == "assistant",
            conversations.c.user_id == user_id,
        )
    )


def _json_or_null(items: list[dict[str, Any]] | None) -> str | None:
    return json.dumps(items, ensure_ascii=False) if items else None


@dataclass(frozen=True)
class TurnIds:
    """The ids of a turn's rows, chosen before they are written: the reply streams meanwhile."""

    conversation_id: str
    user_message_id: str
    message_id: str  # the assistant's reply
    new_conversation: bool
    parent_id: str | None = None  # what the user message follows (None: it comes first)

    @classmethod
    def allocate(
        cls,
        conversation_id: str | None,
        *,
        parent_id: str | None = None,
        user_message_id: str | None = None,
    ) -> TurnIds:
        """Ids for a turn in `conversation_id`, or in a new conversation when it is None;
        `user_message_id` names the user message a regenerated reply answers again."""
        return cls(
            conversation_id or new_id(),
            user_message_id or new_id(),
            new_id(),
            conversation_id is None,
            parent_id,
        )


class Replies:
    def __init__(self, *, database: Database, writer: Writer, ledger: Ledger) -> None:
        self._database = database
        self._writer = writer
        self._ledger = ledger

    async def in_conversation(
        self, *, conversation_id: str, leaf_id: str | None
    ) -> list[dict[str, Any]]:
        """The messages of the branch ending at `leaf_id`, in order, each with its usage and
        cost (the ledger's sums over its generations) and its siblings: `sibling_ids`, all
        the messages with its parent, itself included, oldest first."""
        if leaf_id is None:
            return []
        rows = await self._database.fetch_all(messages_with_usage(conversation_id, leaf_id))
        tree = await self._database.fetch_all(
            sa.select(messages.c.id, messages.c.parent_id)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.seq)
        )
        children: dict[str | None, list[str]] = {}
        for node in tree:
            children.setdefault(node[1], []).append(node[0])
        attached = await carried(
            self._database, [row._mapping["id"] for row in rows if row._mapping["role"] == "user"]
        )
        return [
            {
                **row._mapping,
                "sibling_ids": children[row._mapping["parent_id"]],
                "attachments": attached.get(row._mapping["id"], []),
            }
            for row in rows
        ]

    async def history(
        self, *, leaf_id: str | None, limit: int, max_chars: int | None = None
    ) -> list[dict[str, Any]]:
        """The last `limit` messages with content of the branch ending at `leaf_id`, oldest
        first, in OpenRouter's message shape: an assistant turn with the `reasoning_details`
        it was given, as OpenRouter asks, so the model continues from its own reasoning.
        `max_chars`: read no further up than that many characters (see `history_query`)."""
        rows = await self.history_with_seqs(leaf_id=leaf_id, limit=limit, max_chars=max_chars)
        return [message for _, message in rows]

    async def history_with_seqs(
        self, *, leaf_id: str | None, limit: int, max_chars: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """`history`, each message with its `seq`: where it sits in the conversation, which
        the history window's steps are counted in (app/replies/window.py)."""
        if limit <= 0 or leaf_id is None:
            return []
        rows = await self._database.fetch_all(history_query(leaf_id, limit, max_chars))
        # A user message's attachments go with it, as placeholders (app/core/attachments.py).
        attached = await carried(self._database, [row[4] for row in rows if row[5]])
        turns: list[tuple[int, dict[str, Any]]] = []
        for row in reversed(rows):
            files = [Attachment.from_json(a) for a in attached.get(row[4], ())]
            turn: dict[str, Any] = {"role": row[0], "content": with_attachments(row[1], files)}
            if row[2]:
                turn["reasoning_details"] = json.loads(row[2])
            turns.append((row[3], turn))
        return turns

    async def message(self, *, message_id: str) -> dict[str, Any] | None:
        """A message of any role, without its costs: where it sits in its conversation."""
        row = await self._database.fetch_one(
            sa.select(
                messages.c.id,
                messages.c.conversation_id,
                messages.c.parent_id,
                messages.c.role,
                messages.c.content,
                messages.c.agent,
            ).where(messages.c.id == message_id)
        )
        return dict(row._mapping) if row else None

    async def show(self, *, conversation_id: str, message_id: str) -> None:
        """Show the branch through `message_id`: the latest one, down to its descendant written
        last (the newest message under it has no children yet, so it is a leaf)."""
        below = (
            sa.select(messages.c.id, messages.c.seq)
            .where(messages.c.id == message_id)
            .cte("below", recursive=True)
        )
        child = messages.alias("child")
        below = below.union_all(
            sa.select(child.c.id, child.c.seq).where(child.c.parent_id == below.c.id)
        )
        leaf = await self._database.fetch_val(
            sa.select(below.c.id).order_by(below.c.seq.desc()).limit(1)
        )
        await self._writer.write(
            [
                conversations.update()
                .where(conversations.c.id == conversation_id)
                .values(active_leaf_id=leaf)
            ]
        )

    async def get(self, *, message_id: str, user_id: str) -> dict[str, Any] | None:
        """An assistant message of the user's with its user message's id (its parent) and its
        generations' sums (another user's answers as one that is not there: the owner is in
        the query)."""
        row = await self._database.fetch_one(reply_with_usage(message_id, user_id))
        return dict(row._mapping) if row else None

    async def start_turn(
        self,
        *,
        ids: TurnIds,
        user_id: str,
        agent: str,
        title: str,
        user_content: str | None,
        requested_model: str,
        temperature: float,
        subject_conversation_id: str | None = None,
        history: dict[str, int] | None = None,
        attachments: Sequence[str] = (),
        claim: Step | None = None,
        reservation: Sequence[Step] = (),
    ) -> None:
        """Save the user message and a `streaming` assistant row (and a new conversation's
        row) in one transaction, the reply becoming the leaf the conversation shows. `claim`
        (an idempotency key's, see `idempotency`) goes first, then `reservation` (the turn's
        budget reservation, see `budgets`), so if either fails or is refused, nothing of the
        turn is written. `user_content` None: a regenerated reply, under the user message
        `ids.user_message_id` already there. The conversation keeps `requested_model` as its
        model (the next turn's, unless that one names another). `history`: what the reply's
        history left out to fit its model's window, kept with the reply. `attachments`: the
        uploads the new user message carries, in order."""
        stamp = now()
        conversation_id = ids.conversation_id
        if ids.new_conversation:
            opening: Step = (
                NEW_CONVERSATION,
                {
                    "id": conversation_id,
                    "user_id": user_id,
                    "agent": agent,
                    "title": title,
                    "subject_conversation_id": subject_conversation_id,
                    "created_at": stamp,
                    "updated_at": stamp,
                    "active_leaf_id": ids.message_id,
                    "model": requested_model,
                },
            )
        else:
            opening = (
                TURN_IN_CONVERSATION,
                {
                    "conversation_id": conversation_id,
                    "updated_at": stamp,
                    "active_leaf_id": ids.message_id,
                    "model": requested_model,
                },
            )
        common = {
            "conversation_id": conversation_id,
            "seq_of": conversation_id,
            "agent": agent,
            "created_at": stamp,
            "updated_at": stamp,
        }
        asked: list[Step] = []
        if user_content is not None:
            asked.append(
                (
                    NEW_MESSAGE,
                    {
                        **common,
                        "id": ids.user_message_id,
                        "parent_id": ids.parent_id,
                        "role": "user",
                        "content": user_content,
                        "status": MessageStatus.COMPLETE,
                        "requested_model": None,
                        "temperature": None,
                        "event_lengths": None,
                        "history": None,
                        "attachment_count": len(attachments) or None,
                    },
                )
            )
            asked.extend(attachment_steps(ids.user_message_id, attachments))
        await self._writer.write(
            [
                *([claim] if claim is not None else []),
                *reservation,
                opening,
                *asked,
                (
                    NEW_MESSAGE,
                    {
                        **common,
                        "id": ids.message_id,
                        "parent_id": ids.user_message_id,
                        "role": "assistant",
                        "content": "",
                        "status": MessageStatus.STREAMING,
                        "requested_model": requested_model,
                        "temperature": temperature,
                        "event_lengths": "[]",
                        "history": None if history is None else json.dumps(history),
                        "attachment_count": None,
                    },
                ),
            ]
        )

    async def checkpoint(
        self,
        *,
        message_id: str,
        conversation_id: str,
        agent: str,
        user_id: str,
        content: str,
        event_lengths: list[int],
        records: list[GenerationRecord],
        reasoning: str = "",
        annotations: list[dict[str, Any]] | None = None,
    ) -> None:
        """A streaming reply's progress so far, with its generation rows: all its events' text,
        so a follower in another process replays them with their ids."""
        await self._writer.write(
            [
                (
                    CHECKPOINT_MESSAGE,
                    {
                        "message_id": message_id,
                        "content": content,
                        "event_lengths": json.dumps(event_lengths),
                        "reasoning": reasoning,
                        "annotations": _json_or_null(annotations),
                        "updated_at": now(),
                    },
                ),
                *self._ledger.generation_steps(
                    records=records,
                    message_id=message_id,
                    conversation_id=conversation_id,
                    agent=agent,
                    user_id=user_id,
                ),
            ]
        )

    async def finish(
        self,
        *,
        message_id: str,
        conversation_id: str,
        agent: str,
        user_id: str,
        status: MessageStatus,
        content: str,
        event_lengths: list[int],
        model: str | None,
        finish_reason: str | None,
        error_code: str | None,
        error_message: str | None,
        records: list[GenerationRecord],
        reasoning: str = "",
        reasoning_details: list[dict[str, Any]] | None = None,
        annotations: list[dict[str, Any]] | None = None,
        then: Sequence[Step] = (),
    ) -> None:
        """The reply's final state and all its generation rows, in one transaction, and `then`
        after them (the end of its budget reservation, which settles on those rows)."""
        stamp = now()
        await self._writer.write(
            [
                (
                    FINISH_MESSAGE,
                    {
                        "message_id": message_id,
                        "status": status,
                        "content": content,
                        "event_lengths": json.dumps(event_lengths),
                        "reasoning": reasoning,
                        "reasoning_details": _json_or_null(reasoning_details),
                        "annotations": _json_or_null(annotations),
                        "model": model,
                        "finish_reason": finish_reason,
                        "error_code": error_code,
                        "error_message": error_message,
                        "updated_at": stamp,
                    },
                ),
                (TOUCH_CONVERSATION, {"conversation_id": conversation_id, "updated_at": stamp}),
                *self._ledger.generation_steps(
                    records=records,
                    message_id=message_id,
                    conversation_id=conversation_id,
                    agent=agent,
                    user_id=user_id,
                ),
                *then,
            ]
        )

    async def touch(self, *, message_ids: list[str]) -> list[str]:
        """The heartbeat of live replies: a reply no process touches is an orphan. Returns
        those of them another process was asked to stop (`request_stop`)."""
        (touched,) = await self._writer.write(
            [
                messages.update()
                .where(messages.c.id.in_(message_ids), messages.c.status == MessageStatus.STREAMING)
                .values(updated_at=now())
                .returning(messages.c.id, messages.c.stop_requested_at)
            ]
        )
        return [row[0] for row in touched if row[1] is not None]

    async def request_stop(self, *, message_id: str) -> None:
        """Ask whichever process generates the reply to stop it, at its next heartbeat."""
        await self._writer.write(
            [
                messages.update()
                .where(messages.c.id == message_id, messages.c.status == MessageStatus.STREAMING)
                .values(stop_requested_at=now())
            ]
        )

    async def interrupt_orphans(self, *, idle_since: datetime) -> list[str]:
        """Mark replies left `streaming` by a dead process as interrupted; return their ids.

        A reply is an orphan when no process has touched it since `idle_since`: live runs
        heartbeat, so the replies other processes (other dynos) are streaming are left alone.
        """
        stamp = now()
        orphaned = sa.and_(
            messages.c.status == MessageStatus.STREAMING, messages.c.updated_at < idle_since
        )
        _, interrupted = await self._writer.write(
            [
                cancel_streaming(
                    message_ids=sa.select(messages.c.id).where(orphaned), ended_at=stamp
                ),
                messages.update()
                .where(orphaned)
                .values(
                    status=MessageStatus.INTERRUPTED,
                    error_code="interrupted",
                    error_message="the server stopped before the reply finished",
                    updated_at=stamp,
                )
                .returning(messages.c.id),
            ]
        )
        return [row[0] for row in interrupted]
