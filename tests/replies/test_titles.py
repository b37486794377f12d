"""Titles: the `titler` agent names a chat after its first reply, off the reply's path, with a
cost row of its own; if it fails the first words stay; shutdown cancels it cleanly."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from app.dev.simulator import Behaviour
from tests.support import local_client, read_sse, wait_for


@pytest.fixture
def titled(start_server):
    return start_server(auto_titles=True)


def title_rows(database) -> list[dict]:
    return database.query("SELECT * FROM generations WHERE agent = 'titler'")


def title_of(client, conversation_id: str) -> str:
    return client.get(f"/api/conversations/{conversation_id}").json()["title"]


def test_the_first_reply_gets_a_title_without_waiting_for_it(titled, fake, database):

    gate = threading.Event()  # the titler's upstream call answers only once the test opens it
    fake.enqueue(
        Behaviour(tokens=["Lisbon in May is mild."], cost=Decimal("0.000100")),
        Behaviour(tokens=['"Weather in Lisbon."\nmore'], cost=Decimal("0.000002"), gate=gate),
        Behaviour(tokens=["Pack a jacket."], cost=Decimal("0.000100")),
    )
    with local_client(titled.url) as client:
        events = read_sse(
            client, "POST", "/api/chat", json={"message": "  What is   the weather in Lisbon?"}
        )
        # `done` is out while the titler's call is still held upstream.
        assert events[-1].event == "done"
        conversation_id = events[0].data["conversation_id"]
        wait_for(lambda: len(fake.requests) == 2, what="the titler's upstream call")
        assert title_of(client, conversation_id) == "What is the weather in Lisbon?"

        gate.set()
        wait_for(
            lambda: title_of(client, conversation_id) == "Weather in Lisbon",
            what="the titler's title",
        )
        [row] = title_rows(database)
        assert (row["status"], row["cost_source"], row["cost_picousd"], row["user_id"]) == (
            "complete",
            "usage",
            2_000_000,
            "dev",  # the title is its chat's user's spend
        )
        asked = fake.requests[1]["body"]
        assert (asked["model"], asked["stream"], asked["max_tokens"]) == (
            "openai/gpt-4o-mini",
            False,
            24,
        )
        assert "What is   the weather in Lisbon?" in asked["messages"][-1]["content"]
        assert "Lisbon in May is mild." in asked["messages"][-1]["content"]
        conversation = client.get(f"/api/conversations/{conversation_id}").json()
        assert Decimal(str(conversation["total_cost_usd"])) == Decimal("0.000102")

        # A later turn asks for no title.
        read_sse(
            client,
            "POST",
            "/api/chat",
            json={"message": "And in June?", "conversation_id": conversation_id},
        )
        assert len(fake.requests) == 3
        assert len(title_rows(database)) == 1


def test_a_failed_titler_leaves_the_first_words_and_a_row_that_says_so(titled, fake, database):

    fake.enqueue(Behaviour(tokens=["Hi."]), Behaviour(status=400))
    with local_client(titled.url) as client:
        events = read_sse(client, "POST", "/api/chat", json={"message": "Hello there"})
        conversation_id = events[0].data["conversation_id"]
        [row] = wait_for(lambda: title_rows(database), what="the titler's generation row")
        assert (row["status"], row["cost_source"]) == ("error", "not_billed")
        assert row["conversation_id"] == conversation_id
        assert title_of(client, conversation_id) == "Hello there"


def test_a_title_the_user_gave_meanwhile_is_kept(titled, fake, database):

    gate = threading.Event()
    fake.enqueue(Behaviour(tokens=["Hi."]), Behaviour(tokens=["Greetings"], gate=gate))
    with local_client(titled.url) as client:
        events = read_sse(client, "POST", "/api/chat", json={"message": "Hello there"})
        conversation_id = events[0].data["conversation_id"]
        wait_for(lambda: len(fake.requests) == 2, what="the titler's upstream call")
        renamed = client.patch(f"/api/conversations/{conversation_id}", json={"title": "Mine"})
        assert renamed.status_code == 200
        gate.set()
        wait_for(lambda: title_rows(database), what="the titler's generation row")
        assert title_of(client, conversation_id) == "Mine"


def test_shutdown_cancels_a_title_being_made(titled, fake, database):

    gate = threading.Event()
    fake.enqueue(Behaviour(tokens=["Hi."]), Behaviour(tokens=["Greetings"], gate=gate))
    try:
        with local_client(titled.url) as client:
            events = read_sse(client, "POST", "/api/chat", json={"message": "Hello there"})
            conversation_id = events[0].data["conversation_id"]
            wait_for(lambda: len(fake.requests) == 2, what="the titler's upstream call")
        titled.stop()  # returns once the lifespan's shutdown is over
        [row] = title_rows(database)
        assert (row["status"], row["cost_source"]) == ("cancelled", "none")
        [conversation] = database.query(
            "SELECT title FROM conversations WHERE id = :id", id=conversation_id
        )
        assert conversation == {"title": "Hello there"}
    finally:
        gate.set()  # the fake's handler thread stops waiting


def listed(client) -> dict:
    [conversation] = client.get("/api/conversations").json()["conversations"]
    return conversation


def test_a_first_reply_that_failed_gets_no_title_and_the_first_complete_one_does(
    titled, fake, database
):
    fake.enqueue(
        Behaviour(status=400),
        Behaviour(tokens=["One, two, three."]),
        Behaviour(tokens=["Counting to three"]),
    )
    with local_client(titled.url) as client:
        events = read_sse(client, "POST", "/api/chat", json={"message": "Please count for me"})
        assert events[-1].event == "error"
        conversation_id = events[0].data["conversation_id"]
        assert (listed(client)["title"], listed(client)["titled"]) == (
            "Please count for me",
            False,
        )

        events = read_sse(
            client,
            "POST",
            "/api/chat",
            json={"message": "Try again", "conversation_id": conversation_id},
        )
        assert events[-1].event == "done"
        wait_for(lambda: listed(client)["titled"], what="the titler's title")
        assert listed(client)["title"] == "Counting to three"
        # The titler was asked once, after the complete reply, about that exchange.
        [asked] = [r["body"] for r in fake.requests if r["body"]["model"] == "openai/gpt-4o-mini"]
        assert "Try again" in asked["messages"][-1]["content"]
        assert len(fake.requests) == 3


def test_a_conversation_renamed_before_its_first_complete_reply_is_never_titled(
    titled, fake, database
):
    fake.enqueue(Behaviour(status=400), Behaviour(tokens=["Done."]))
    with local_client(titled.url) as client:
        events = read_sse(client, "POST", "/api/chat", json={"message": "Hello there"})
        conversation_id = events[0].data["conversation_id"]
        renamed = client.patch(f"/api/conversations/{conversation_id}", json={"title": "Mine"})
        assert renamed.json()["titled"] is True
        events = read_sse(
            client,
            "POST",
            "/api/chat",
            json={"message": "Again", "conversation_id": conversation_id},
        )
        assert events[-1].event == "done"
    titled.stop()  # a title spawned would be cancelled by now, and its row saved as such
    assert title_rows(database) == []
    assert len(fake.requests) == 2
    [conversation] = database.query(
        "SELECT title FROM conversations WHERE id = :id", id=conversation_id
    )
    assert conversation == {"title": "Mine"}


def test_the_simulator_answers_the_titler_with_a_few_words(titled, fake, database):
    # No behaviour queued: the simulator's own answers, as in development.
    with local_client(titled.url) as client:
        read_sse(
            client, "POST", "/api/chat", json={"message": "please count for me [[sim tokens=50]]"}
        )
        wait_for(lambda: listed(client)["titled"], what="the titler's title")
        assert listed(client)["title"] == "Please count for me"
