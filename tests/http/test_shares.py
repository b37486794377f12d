"""Shared links over HTTP: the owner makes and revokes a read-only link; anyone with it reads
the branch as it was then, without costs or other branches, and no sign-in; another user's
conversation answers 404 and nothing is written."""

from __future__ import annotations

import httpx
import pytest

from app.dev.simulator import Behaviour
from tests.http.identity_support import JWT_SETTINGS, signed_in
from tests.support import chat_turn


@pytest.fixture
def server(start_server):
    return start_server(**JWT_SETTINGS)


def share_rows(database) -> list[dict]:
    return database.query("SELECT conversation_id, user_id, revoked_at FROM shares")


def test_a_link_shows_the_branch_as_it_was_to_anyone_until_revoked(server, fake, database):
    fake.enqueue(
        Behaviour(tokens=["**Yes.**"]), Behaviour(tokens=["Later."]), Behaviour(tokens=["Other."])
    )
    with signed_in(server.url, "ann") as ann:
        conversation_id = chat_turn(ann, "Shall we?")["conversation_id"]
        made = ann.post(f"/api/conversations/{conversation_id}/share")
        assert made.status_code == 201
        link = made.json()
        assert link["url"] == f"/shared/{link['token']}" and len(link["token"]) >= 43
        # What comes after the link was made is not in it: a later turn, another branch.
        later = chat_turn(ann, "And then?", conversation_id)
        ann.post(f"/api/messages/{later['message_id']}/regenerate")

        anyone = httpx.get(f"{server.url}/api/shared/{link['token']}", timeout=5)
        assert anyone.status_code == 200
        shared = anyone.json()
        assert shared["title"] == "Shall we?"
        assert [(m["role"], m["content"]) for m in shared["messages"]] == [
            ("user", "Shall we?"),
            ("assistant", "**Yes.**"),
        ]
        assert set(shared["messages"][1]) == {"role", "content", "status", "created_at"}
        assert "cost" not in anyone.text and conversation_id not in anyone.text
        page = httpx.get(f"{server.url}{link['url']}", timeout=5)
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]

        assert ann.delete(f"/api/conversations/{conversation_id}/share").status_code == 204
        gone = httpx.get(f"{server.url}/api/shared/{link['token']}", timeout=5)
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "share_not_found"


def test_a_new_link_revokes_the_one_before_and_deleting_the_conversation_ends_both(
    server, fake, database
):
    fake.enqueue(Behaviour(tokens=["Yes."]))
    with signed_in(server.url, "ann") as ann:
        conversation_id = chat_turn(ann, "Shall we?")["conversation_id"]
        first = ann.post(f"/api/conversations/{conversation_id}/share").json()["token"]
        second = ann.post(f"/api/conversations/{conversation_id}/share").json()["token"]
        assert httpx.get(f"{server.url}/api/shared/{first}", timeout=5).status_code == 404
        assert httpx.get(f"{server.url}/api/shared/{second}", timeout=5).status_code == 200
        assert ann.delete(f"/api/conversations/{conversation_id}").status_code == 204
        assert httpx.get(f"{server.url}/api/shared/{second}", timeout=5).status_code == 404
        assert share_rows(database) == []


def test_another_users_conversation_is_404_and_nothing_is_written(server, fake, database):
    fake.enqueue(Behaviour(tokens=["Yes."]))
    with signed_in(server.url, "ann") as ann, signed_in(server.url, "bob") as bob:
        conversation_id = chat_turn(ann, "Shall we?")["conversation_id"]
        ann.post(f"/api/conversations/{conversation_id}/share")
        before = share_rows(database)
        for answer in (
            bob.post(f"/api/conversations/{conversation_id}/share"),
            bob.delete(f"/api/conversations/{conversation_id}/share"),
            bob.post("/api/conversations/0123456789abcdef0123456789abcdef/share"),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["code"] == "conversation_not_found"
        assert share_rows(database) == before
        # Without a sign-in, making a link is refused too.
        assert (
            httpx.post(f"{server.url}/api/conversations/{conversation_id}/share").status_code == 401
        )
        assert share_rows(database) == before


@pytest.mark.parametrize("bad", ["nope", "a" * 65, "%2E%2E", "x" * 43])
def test_an_unknown_or_malformed_token_is_404(server, bad):
    answer = httpx.get(f"{server.url}/api/shared/{bad}", timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "share_not_found"
