"""Regenerate and edit as a tree: new replies and questions beside the old ones, the branch a
conversation shows, the history that goes upstream (the fake records each request's body), the
branches' costs, renaming, and another user's messages answering as unknown ones."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from app.dev.simulator import Behaviour
from app.storage.replies import TurnIds
from tests.support import accepted as without_token
from tests.support import content_of, migrated_store, read_sse, run_async


def said(text: str, cost: str = "0.000010") -> Behaviour:
    return Behaviour(tokens=[text], cost=Decimal(cost))


def turn(client: httpx.Client, message: str, conversation_id: str | None = None) -> dict:
    """A two-step chat turn, its reply read to the end."""
    body = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    accepted = client.post("/api/chat/messages", json=body)
    assert accepted.status_code == 202, accepted.text
    return finished(client, accepted)


def finished(client: httpx.Client, accepted: httpx.Response) -> dict:
    assert accepted.status_code == 202, accepted.text
    answer = accepted.json()
    events = read_sse(client, "GET", answer["stream_url"])
    assert events[-1].event == "done", events[-1]
    return {**answer, "content": content_of(events)}


def shown(client: httpx.Client, conversation_id: str) -> list[tuple[str, str, int, int]]:
    """The branch shown: each message's content, role, sibling count and 1-based index."""
    conversation = client.get(f"/api/conversations/{conversation_id}").json()
    return [
        (m["content"], m["role"], m["siblings"], m["sibling_index"])
        for m in conversation["messages"]
    ]


def sent(fake) -> list[tuple[str, str]]:
    """What the last upstream request carried, after the system prompt."""
    return [(m["role"], m["content"]) for m in fake.requests[-1]["body"]["messages"][1:]]


def test_regenerate_adds_a_reply_beside_the_first_and_the_branches_switch(client, fake):
    fake.enqueue(said("A1"), said("A1 again"), said("A2"), said("A3"))
    first = turn(client, "Q1")
    conversation_id = first["conversation_id"]

    again = finished(client, client.post(f"/api/messages/{first['message_id']}/regenerate"))
    assert again["content"] == "A1 again"
    assert again["user_message_id"] == first["user_message_id"]
    assert sent(fake) == [("user", "Q1")]  # the question again, not the first answer
    assert shown(client, conversation_id) == [
        ("Q1", "user", 1, 1),
        ("A1 again", "assistant", 2, 2),
    ]
    reply = client.get(f"/api/conversations/{conversation_id}").json()["messages"][1]
    assert reply["sibling_ids"] == [first["message_id"], again["message_id"]]
    assert reply["parent_id"] == first["user_message_id"]

    # A new turn continues the branch shown, and only it goes upstream.
    turn(client, "Q2", conversation_id)
    assert sent(fake) == [("user", "Q1"), ("assistant", "A1 again"), ("user", "Q2")]

    # Back to the first answer: its branch has nothing after it.
    switched = client.post(f"/api/messages/{first['message_id']}/activate")
    assert switched.status_code == 200, switched.text
    assert [(m["content"], m["sibling_index"]) for m in switched.json()["messages"]] == [
        ("Q1", 1),
        ("A1", 1),
    ]
    turn(client, "Q3", conversation_id)
    assert sent(fake) == [("user", "Q1"), ("assistant", "A1"), ("user", "Q3")]

    # Back to the second answer: its branch as it was left, down to its last message.
    client.post(f"/api/messages/{again['message_id']}/activate").raise_for_status()
    assert shown(client, conversation_id) == [
        ("Q1", "user", 1, 1),
        ("A1 again", "assistant", 2, 2),
        ("Q2", "user", 1, 1),
        ("A2", "assistant", 1, 1),
    ]
    # Every branch's replies keep their cost, and the conversation counts them all.
    conversation = client.get(f"/api/conversations/{conversation_id}").json()
    assert Decimal(str(conversation["total_cost_usd"])) == Decimal("0.000040")
    [listed] = client.get("/api/conversations").json()["conversations"]
    assert Decimal(str(listed["total_cost_usd"])) == Decimal("0.000040")


def test_edit_adds_a_question_beside_the_old_one_and_keeps_what_followed_it(client, fake):
    fake.enqueue(said("A1"), said("A2"), said("A1 edited"), said("A2 edited"))
    first = turn(client, "Q1")
    conversation_id = first["conversation_id"]
    second = turn(client, "Q2", conversation_id)

    edited = finished(
        client,
        client.post(f"/api/messages/{first['user_message_id']}/edit", json={"message": "Q1'"}),
    )
    assert edited["content"] == "A1 edited"
    assert edited["user_message_id"] != first["user_message_id"]
    assert sent(fake) == [("user", "Q1'")]
    assert shown(client, conversation_id) == [
        ("Q1'", "user", 2, 2),
        ("A1 edited", "assistant", 1, 1),
    ]

    # The old question's branch is still there, all of it.
    client.post(f"/api/messages/{first['user_message_id']}/activate").raise_for_status()
    assert shown(client, conversation_id) == [
        ("Q1", "user", 2, 1),
        ("A1", "assistant", 1, 1),
        ("Q2", "user", 1, 1),
        ("A2", "assistant", 1, 1),
    ]
    # Editing a later question keeps what came before it as history.
    finished(
        client,
        client.post(f"/api/messages/{second['user_message_id']}/edit", json={"message": "Q2'"}),
    )
    assert sent(fake) == [("user", "Q1"), ("assistant", "A1"), ("user", "Q2'")]
    assert [c for c, *_ in shown(client, conversation_id)] == ["Q1", "A1", "Q2'", "A2 edited"]


def test_a_retried_regenerate_with_its_idempotency_key_starts_one_reply(client, fake):
    fake.enqueue(said("A1"), said("A1 again"))
    first = turn(client, "Q1")
    url = f"/api/messages/{first['message_id']}/regenerate"
    headers = {"Idempotency-Key": "regenerate-1"}

    accepted = client.post(url, headers=headers)
    again = client.post(url, headers=headers)

    assert again.status_code == 202
    assert without_token(again.json()) == without_token(accepted.json())
    finished(client, accepted)
    assert len(fake.requests) == 2


def test_edit_needs_a_message(client, fake):
    first = turn(client, "Q1")
    url = f"/api/messages/{first['user_message_id']}/edit"
    for body in ({}, {"message": "   "}):
        refused = client.post(url, json=body)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "message_required"
    assert len(fake.requests) == 1


def _someone_elses(database) -> TurnIds:
    """A turn of another user's, written as a run would."""

    async def write() -> TurnIds:
        async with migrated_store(database.url) as store:
            ids = TurnIds.allocate(None)
            await store.replies.start_turn(
                ids=ids,
                user_id="someone-else",
                agent="chat",
                title="theirs",
                user_content="their question",
                requested_model="openai/gpt-4o",
                temperature=0.7,
            )
            return ids

    return run_async(write())


def test_another_users_messages_answer_as_unknown_ones(client, fake, database):
    theirs = _someone_elses(database)
    mine = turn(client, "Q1")
    unknown = "0" * 32
    calls = [
        ("POST", f"/api/messages/{theirs.message_id}/regenerate", None),
        ("POST", f"/api/messages/{unknown}/regenerate", None),
        # The wrong role is no such message either: a reply is regenerated, a question edited.
        ("POST", f"/api/messages/{mine['user_message_id']}/regenerate", None),
        ("POST", f"/api/messages/{theirs.user_message_id}/edit", {"message": "x"}),
        ("POST", f"/api/messages/{unknown}/edit", {"message": "x"}),
        ("POST", f"/api/messages/{mine['message_id']}/edit", {"message": "x"}),
        ("POST", f"/api/messages/{theirs.message_id}/activate", None),
        ("POST", f"/api/messages/{unknown}/activate", None),
    ]
    for method, url, body in calls:
        answer = client.request(method, url, json=body)
        assert answer.status_code == 404, (url, answer.text)
        assert answer.json()["error"]["code"] == "message_not_found", url
    renamed = client.patch(f"/api/conversations/{theirs.conversation_id}", json={"title": "x"})
    assert renamed.status_code == 404
    assert renamed.json()["error"]["code"] == "conversation_not_found"
    assert len(fake.requests) == 1  # mine; nothing of theirs went upstream
    [their_title] = database.query(
        "SELECT title FROM conversations WHERE id = :id", id=theirs.conversation_id
    )
    assert their_title == {"title": "theirs"}


def test_rename_validates_the_title(client, fake):
    conversation_id = turn(client, "Q1")["conversation_id"]
    url = f"/api/conversations/{conversation_id}"

    renamed = client.patch(url, json={"title": "  Trip   to Lisbon "})
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Trip to Lisbon"
    assert client.get(url).json()["title"] == "Trip to Lisbon"
    for title in ("", "   ", "x" * 201, "a\u0000b", 7, None):
        refused = client.patch(url, json={"title": title})
        assert refused.status_code == 422, title
        assert refused.json()["error"]["code"] == "invalid_field"
    assert client.patch(url, json={"title": "x" * 200}).status_code == 200


@pytest.mark.parametrize("reviews", [1, 2])
def test_coach_calls_on_a_conversation_count_in_its_total(client, fake, reviews):
    fake.enqueue(said("A1", "0.000100"), *[said("Advice", "0.000020")] * reviews)
    conversation_id = turn(client, "Q1")["conversation_id"]
    for _ in range(reviews):
        events = read_sse(client, "POST", "/api/coach", json={"conversation_id": conversation_id})
        assert events[-1].event == "done"

    expected = Decimal("0.000100") + reviews * Decimal("0.000020")
    total = client.get(f"/api/conversations/{conversation_id}").json()["total_cost_usd"]
    assert Decimal(str(total)) == expected
    listed = client.get("/api/conversations?agent=chat").json()["conversations"]
    assert [Decimal(str(c["total_cost_usd"])) for c in listed] == [expected]


def test_search_finds_every_branch_and_export_follows_the_one_shown(client, fake):
    fake.enqueue(said("Lisbon in spring"), said("Porto by train"))
    first = turn(client, "Where to go")
    conversation_id = first["conversation_id"]
    again = finished(client, client.post(f"/api/messages/{first['message_id']}/regenerate"))

    def found(q: str) -> list[tuple[str, str]]:
        answer = client.get("/api/conversations", params={"q": q})
        assert answer.status_code == 200, answer.text
        return [(c["id"], c["message_id"]) for c in answer.json()["conversations"]]

    # Both replies are in the full-text index (written under the tree columns' triggers).
    assert found("Lisbon") == [(conversation_id, first["message_id"])]
    assert found("Porto") == [(conversation_id, again["message_id"])]

    def exported() -> dict:
        answer = client.get(f"/api/conversations/{conversation_id}/export?format=json")
        assert answer.status_code == 200, answer.text
        return answer.json()

    # The export is the branch shown, as GET gives it, with GET's total (both replies').
    whole = client.get(f"/api/conversations/{conversation_id}").json()
    export = exported()
    assert [m["content"] for m in export["messages"]] == ["Where to go", "Porto by train"]
    assert [m["id"] for m in export["messages"]] == [m["id"] for m in whole["messages"]]
    assert Decimal(export["total_cost_usd"]) == Decimal(str(whole["total_cost_usd"]))
    assert Decimal(export["total_cost_usd"]) == Decimal("0.000020")
    markdown = client.get(f"/api/conversations/{conversation_id}/export").text
    assert "Porto by train" in markdown and "Lisbon" not in markdown

    client.post(f"/api/messages/{first['message_id']}/activate").raise_for_status()
    assert [m["content"] for m in exported()["messages"]] == ["Where to go", "Lisbon in spring"]
