"""Feedback on replies over HTTP: thumbs and an optional comment per reply and per user,
changed and removed; another user's reply answers 404 and nothing is written; bad input is a
422 that writes nothing; the cost report puts ratings beside cost per reply."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.dev.simulator import Behaviour
from tests.http.identity_support import JWT_SETTINGS, signed_in
from tests.support import chat_turn


@pytest.fixture
def server(start_server):
    return start_server(**JWT_SETTINGS)


def feedback_rows(database) -> list[dict]:
    return database.query("SELECT message_id, user_id, rating, comment FROM feedback")


def test_a_rating_is_set_changed_read_and_removed(server, fake, database):
    fake.enqueue(Behaviour(tokens=["Hello."]))
    with signed_in(server.url, "ann") as ann:
        turn = chat_turn(ann)
        conversation_id, reply_id = turn["conversation_id"], turn["message_id"]
        rated = ann.put(
            f"/api/messages/{reply_id}/feedback", json={"rating": "up", "comment": "  Clear. "}
        )
        assert rated.status_code == 200
        assert rated.json() == {"message_id": reply_id, "rating": "up", "comment": "Clear."}
        changed = ann.put(f"/api/messages/{reply_id}/feedback", json={"rating": "down"})
        assert changed.json()["rating"] == "down"
        assert feedback_rows(database) == [
            {"message_id": reply_id, "user_id": "ann", "rating": -1, "comment": None}
        ]
        read = ann.get(f"/api/conversations/{conversation_id}/feedback")
        assert read.json() == {"feedback": {reply_id: {"rating": "down", "comment": None}}}

        assert ann.delete(f"/api/messages/{reply_id}/feedback").status_code == 204
        assert feedback_rows(database) == []
        assert ann.get(f"/api/conversations/{conversation_id}/feedback").json() == {"feedback": {}}


def test_another_users_reply_is_404_and_nothing_is_written(server, fake, database):
    fake.enqueue(Behaviour(tokens=["Hello."]))
    with signed_in(server.url, "ann") as ann, signed_in(server.url, "bob") as bob:
        turn = chat_turn(ann)
        conversation_id, question_id = turn["conversation_id"], turn["user_message_id"]
        reply_id = turn["message_id"]
        ann.put(f"/api/messages/{reply_id}/feedback", json={"rating": "up"})
        before = feedback_rows(database)
        for answer in (
            bob.put(f"/api/messages/{reply_id}/feedback", json={"rating": "down"}),
            bob.delete(f"/api/messages/{reply_id}/feedback"),
            bob.get(f"/api/conversations/{conversation_id}/feedback"),
            # A user message is not a reply: rated by no one.
            ann.put(f"/api/messages/{question_id}/feedback", json={"rating": "up"}),
            ann.put(
                "/api/messages/0123456789abcdef0123456789abcdef/feedback", json={"rating": "up"}
            ),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["code"] in ("message_not_found", "conversation_not_found")
        assert feedback_rows(database) == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"rating": "meh"},
        {"rating": 1},
        {"rating": "up", "comment": 5},
        {"rating": "up", "comment": "x" * 2001},
    ],
)
def test_bad_feedback_is_422_and_writes_nothing(server, fake, database, body):
    fake.enqueue(Behaviour(tokens=["Hello."]))
    with signed_in(server.url, "ann") as ann:
        reply_id = chat_turn(ann)["message_id"]
        refused = ann.put(f"/api/messages/{reply_id}/feedback", json=body)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_field"
    assert feedback_rows(database) == []


def test_the_cost_report_shows_ratings_beside_cost_per_reply(server, fake, database):
    fake.enqueue(
        Behaviour(tokens=["A."], cost=Decimal("0.001"), model="openai/gpt-4o"),
        Behaviour(tokens=["B."], cost=Decimal("0.001"), model="openai/gpt-4o"),
        Behaviour(tokens=["C."], cost=Decimal("0.003"), model="openai/gpt-4o"),
    )
    with signed_in(server.url, "ann") as ann:
        replies = [chat_turn(ann, f"Q{i}")["message_id"] for i in range(3)]
        ann.put(f"/api/messages/{replies[0]}/feedback", json={"rating": "up"})
        ann.put(f"/api/messages/{replies[1]}/feedback", json={"rating": "down"})
        ann.put(f"/api/messages/{replies[2]}/feedback", json={"rating": "up"})
        report = ann.get("/api/me/costs", params={"group_by": "agent,model"}).json()
        [row] = report["rows"]
        assert (row["agent"], row["model"]) == ("chat", "openai/gpt-4o")
        assert (row["complete_replies"], row["cost_per_complete_reply_usd"]) == (
            3,
            "0.001666666667",
        )
        assert (row["rated_replies"], row["positive_share"]) == (3, "0.667")
        assert (report["totals"]["rated_replies"], report["totals"]["positive_share"]) == (
            3,
            "0.667",
        )

        sheet = ann.get("/api/me/costs", params={"group_by": "model", "format": "csv"}).text
        [line] = list(csv.DictReader(io.StringIO(sheet)))
        assert (line["rated_replies"], line["positive_share"]) == ("3", "0.667")


def test_metrics_show_rated_replies_and_their_positive_share_by_model_and_agent(
    start_server, fake, database
):
    metrics_token = "metrics-token-for-the-feedback-tests-0123456789"
    server = start_server(metrics_token=metrics_token, **JWT_SETTINGS)
    fake.enqueue(Behaviour(tokens=["A."]), Behaviour(tokens=["B."]))
    with signed_in(server.url, "ann") as ann:
        first, second = (chat_turn(ann, f"Q{i}")["message_id"] for i in range(2))
        ann.put(f"/api/messages/{first}/feedback", json={"rating": "up"})
        ann.put(f"/api/messages/{second}/feedback", json={"rating": "down", "comment": "Vague"})
    scraped = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=5
    )
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    labels = (("agent", "chat"), ("model", "openai/gpt-4o"))
    assert samples[("streamchat_rated_replies", labels)] == 2
    assert samples[("streamchat_rated_replies_positive_share", labels)] == 0.5
