"""Full-text search of a user's messages, on whichever database the suite runs on (FTS5 on
SQLite, the GIN index on PostgreSQL), through the store as the route calls it."""

from __future__ import annotations

import asyncio

import pytest

from app.storage.replies import TurnIds
from app.storage.search import fts5_query
from app.storage.store import Store
from tests.support import migrated_store

# Input that would be FTS5 syntax, or is odd for any parser, and how many of the one
# conversation ("where is the tide" / "by the shore") it finds: the same on both databases.
ODD_INPUT = [
    ('"', 0),
    ("*", 0),
    ("NEAR(", 0),
    ("-", 0),
    ("AND", 0),
    ("-tide", 0),  # only words to leave out: nothing to look for
    ("tide*", 1),
    ('"tide', 1),
    ("^tide", 1),
    ("((tide", 1),
    ("tide OR", 0),
    ("beach or tide", 1),
    ("tide -where", 0),
    ("tide -shore", 1),  # each message is searched on its own: the question has no "shore"
    ("tide -beach", 1),
    ('"the tide"', 1),
    ('"tide the"', 0),
    ("shore: tide", 0),
    ("or tide", 0),  # an `or` with no term before it is a word: "or" is in neither message
]


async def turn(
    store: Store, question: str, answer: str, *, user_id: str = "dev", conversation_id=None
) -> TurnIds:
    ids = TurnIds.allocate(conversation_id)
    await store.replies.start_turn(
        ids=ids,
        user_id=user_id,
        agent="chat",
        title=question[:20],
        user_content=question,
        requested_model="openai/gpt-4o",
        temperature=0.7,
    )
    await store.replies.finish(
        message_id=ids.message_id,
        conversation_id=ids.conversation_id,
        agent="chat",
        user_id=user_id,
        status="complete",
        content=answer,
        event_lengths=[len(answer)],
        model="openai/gpt-4o",
        finish_reason="stop",
        error_code=None,
        error_message=None,
        records=[],
    )
    return ids


def run(database, scenario):
    async def main():
        async with migrated_store(database.url) as store:
            return await scenario(store)

    return asyncio.run(main())


def test_results_are_ranked_one_per_conversation_with_the_match_marked(database):
    async def scenario(store: Store):
        once = await turn(store, "Tell me about the sea", "The Tide is one thing among many here.")
        often = await turn(store, "tides?", "Tide after tide after tide.")
        # Two matching messages in one conversation: the better one stands for it.
        both = await turn(store, "a tide question", "tide, tide and tide again, tide")
        await turn(store, "nothing to see", "no match in this one")
        return once, often, both, await store.search.find(user_id="dev", text="tide", limit=10)

    once, often, both, found = run(database, scenario)

    assert [r["conversation_id"] for r in found] == [
        both.conversation_id,
        often.conversation_id,
        once.conversation_id,
    ]
    assert found[0]["message_id"] == both.message_id
    assert found[2]["title"] == "Tell me about the se"
    pieces = found[2]["snippet"]
    # Plain text and matches alternate, plain first: the match as written (its case kept).
    assert pieces[1::2] == ["Tide"]
    assert "The Tide is one thing among many here" in "".join(pieces)


def test_another_users_messages_are_never_found(database):
    async def scenario(store: Store):
        await turn(store, "secret plans of the walrus", "walrus indeed", user_id="someone-else")
        mine = await turn(store, "a walrus of my own", "yes")
        return mine, await store.search.find(user_id="dev", text="walrus", limit=10)

    mine, found = run(database, scenario)
    assert [r["conversation_id"] for r in found] == [mine.conversation_id]


def test_a_limit_and_an_agent_narrow_the_results(database):
    async def scenario(store: Store):
        for n in range(3):
            await turn(store, f"kelp {n}", "kelp")
        return (
            await store.search.find(user_id="dev", text="kelp", limit=2),
            await store.search.find(user_id="dev", text="kelp", limit=10, agent="coach"),
        )

    limited, coach = run(database, scenario)
    assert len(limited) == 2 and coach == []


def test_edits_and_deletes_reach_the_index(database):
    async def scenario(store: Store):
        ids = await turn(store, "first words", "anemone")
        before = await store.search.find(user_id="dev", text="anemone", limit=10)
        await store.replies.finish(
            message_id=ids.message_id,
            conversation_id=ids.conversation_id,
            agent="chat",
            user_id="dev",
            status="complete",
            content="barnacle",
            event_lengths=[8],
            model=None,
            finish_reason="stop",
            error_code=None,
            error_message=None,
            records=[],
        )
        after = [
            await store.search.find(user_id="dev", text=word, limit=10)
            for word in ("anemone", "barnacle")
        ]
        await store.conversations.delete(conversation_id=ids.conversation_id, user_id="dev")
        deleted = await store.search.find(user_id="dev", text="barnacle", limit=10)
        return before, after, deleted

    before, (old, new), deleted = run(database, scenario)
    assert len(before) == 1 and old == [] and len(new) == 1 and deleted == []


@pytest.mark.parametrize(("text", "count"), ODD_INPUT)
def test_odd_input_is_searched_as_words_never_an_error(database, text, count):
    async def scenario(store: Store):
        await turn(store, "where is the tide", "by the shore")
        return await store.search.find(user_id="dev", text=text, limit=10)

    assert len(run(database, scenario)) == count


def test_fts5_queries_are_quoted_strings_and_our_operators_only():
    assert fts5_query('NEAR(a b) "x y" c* -d e:f') == '("NEAR a" "b" "x y" "c" "e f") NOT "d"'
    assert fts5_query("or a OR b or") == '("or" "a" OR "b" "or")'
    assert fts5_query('* - ( -a "') is None
    assert fts5_query('"unclosed phrase') == '("unclosed phrase")'
