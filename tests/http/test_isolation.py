"""Every conversation its owner's alone, through a real server in AUTH_MODE=jwt.

User B calls every route that takes a conversation or message id with user A's ids (reading,
exporting, renaming, streaming, resuming with Last-Event-ID, stopping, regenerating, editing,
switching branches, deleting, the coach reviewing, a stream token of B's for A's reply, rating
and unrating, reading ratings, sharing and unsharing) and gets exactly what the same call with
an id that does not exist gets. Afterwards every table is as it was, and A's live reply went on
to its end. The routes come from the app itself: a new route fails here until it is put in the
corpus or said to hold no user's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from app.dev.simulator import Behaviour
from app.http.auth.stream_tokens import StreamTokens, derive_key
from app.main import create_app
from app.storage.tables import metadata, new_id
from tests.http.identity_support import JWT_SETTINGS, SECRET, bearer, token
from tests.support import (
    SHARED_STREAM_SECRET,
    DatabaseHandle,
    content_of,
    local_client,
    read_sse,
    reply_row,
)

A, B, ADMIN = "user-a", "user-b", "user-admin"
SETTINGS = {
    **JWT_SETTINGS,
    "auth_admin_claim": "role",
    "auth_admin_value": "service_role",
    "stream_token_secret": SHARED_STREAM_SECRET,
}
LIVE_TOKENS = [f" live{i}" for i in range(100)]  # 6 s at 0.06 s each: live through B's calls

# Routes that hold no user's conversation or message ids (or, for the list, are checked below).
NOT_ABOUT_IDS = {
    ("GET", "/"),
    # Uploads hold no conversation or message ids; another user's upload id answers as one
    # that does not exist on each of them and in every turn form:
    # tests/http/test_uploads.py::test_another_users_upload_is_not_found_anywhere.
    ("POST", "/api/uploads"),
    ("GET", "/api/uploads/{upload_id}"),
    ("GET", "/api/uploads/{upload_id}/content"),
    ("DELETE", "/api/uploads/{upload_id}"),
    ("GET", "/healthz"),
    ("GET", "/api/me"),
    ("GET", "/api/models"),
    ("GET", "/api/catalog"),
    ("PUT", "/api/catalog/agents/{agent}"),
    ("DELETE", "/api/catalog/agents/{agent}"),
    # The caller's own choices, no ids: tests/billing/test_budget_models.py (its budgets).
    ("GET", "/api/agents/{agent}/models"),
    ("GET", "/openapi.json"),  # the API's description: no ids, no user's data
    ("GET", "/api/conversations"),  # test_the_list_is_the_callers_and_admins_may_list_anyones
    ("GET", "/api/me/usage"),  # the caller's own: tests/billing/test_budget_turns.py
    # Admins only, about user ids: tests/billing/test_budget_turns.py (403 for anyone else)
    ("GET", "/api/admin/users/{user_id}/budget"),
    ("PUT", "/api/admin/users/{user_id}/budget"),
    ("*", "/static"),
    # Operations (issue 21): no ids in their paths. The cost reports are scoped by the caller
    # (test_cost_reports_are_the_callers_and_everyones_is_for_admins); /metrics and /readyz
    # hold no user's data; /admin/costs is a static page.
    ("GET", "/api/me/costs"),
    ("GET", "/api/admin/costs"),
    ("GET", "/admin/costs"),
    ("GET", "/metrics"),
    ("GET", "/readyz"),
    # The stage probe's timings: no ids, no user's data, admins only (tests/ops/test_stages.py).
    ("GET", "/api/admin/stages"),
    ("DELETE", "/api/admin/stages"),
    # Service keys are no user's: admins only (a user's token: 403, checked below).
    ("POST", "/api/admin/keys"),
    ("GET", "/api/admin/keys"),
    ("DELETE", "/api/admin/keys/{key_id}"),
    # OpenAI's API for jobs: a service key's only (a user's token: 401, checked below).
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id:path}"),
    # A shared link: no sign-in, the unguessable token is the key (tests/http/test_shares.py).
    ("GET", "/api/shared/{token}"),
    ("GET", "/shared/{token}"),
}


def jwt_of(user: str, **claims: Any) -> str:
    return token(SECRET, "HS256", sub=user, **claims)


def stream_token(message_id: str, user: str) -> str:
    """A stream token as the server signs them (the test knows STREAM_TOKEN_SECRET)."""
    return StreamTokens(derive_key(SHARED_STREAM_SECRET.encode()), ttl=600).issue(message_id, user)


@dataclass(frozen=True)
class Probe:
    """One way of calling one route with an id: `call(http, id)` as user B."""

    method: str
    path: str
    name: str
    call: Callable[[httpx.Client, str], httpx.Response]
    kind: str  # which of A's ids it takes: "conversation" or "message"
    status: int = 404


def corpus(b_stream_token: Callable[[], str]) -> list[Probe]:
    as_b = bearer(B)

    def probe(method, path, name, kind, call, status=404):
        return Probe(method, path, name, call, kind, status)

    def turn(path: str, field: str = "conversation_id", **extra: Any):
        return lambda http, cid: http.post(path, headers=as_b, json={field: cid, **extra})

    def stream(http: httpx.Client, mid: str, **kwargs: Any) -> httpx.Response:
        return http.get(f"/api/messages/{mid}/stream", **kwargs)

    return [
        probe("GET", "/api/conversations/{conversation_id}", "read", "conversation",
              lambda http, cid: http.get(f"/api/conversations/{cid}", headers=as_b)),
        probe("GET", "/api/conversations/{conversation_id}/export", "export", "conversation",
              lambda http, cid: http.get(f"/api/conversations/{cid}/export", headers=as_b)),
        probe("GET", "/api/conversations/{conversation_id}/export", "export json", "conversation",
              lambda http, cid: http.get(
                  f"/api/conversations/{cid}/export?format=json", headers=as_b)),
        probe("PATCH", "/api/conversations/{conversation_id}", "rename", "conversation",
              lambda http, cid: http.patch(
                  f"/api/conversations/{cid}", headers=as_b, json={"title": "B's now"})),
        probe("DELETE", "/api/conversations/{conversation_id}", "delete", "conversation",
              lambda http, cid: http.delete(f"/api/conversations/{cid}", headers=as_b)),
        probe("POST", "/api/chat", "chat turn", "conversation",
              turn("/api/chat", message="hi")),
        probe("POST", "/api/chat", "chat turn, stream false", "conversation",
              turn("/api/chat", message="hi", stream=False)),
        probe("GET", "/api/chat/stream", "chat EventSource, access_token", "conversation",
              lambda http, cid: http.get("/api/chat/stream", params={
                  "message": "hi", "conversation_id": cid, "access_token": jwt_of(B)})),
        probe("POST", "/api/chat/messages", "chat two-step", "conversation",
              turn("/api/chat/messages", message="hi")),
        probe("POST", "/api/coach", "coach review", "conversation", turn("/api/coach")),
        probe("GET", "/api/coach/stream", "coach EventSource", "conversation",
              lambda http, cid: http.get("/api/coach/stream", headers=as_b,
                                         params={"conversation_id": cid})),
        probe("POST", "/api/coach/messages", "coach two-step", "conversation",
              turn("/api/coach/messages", question="?")),
        probe("GET", "/api/messages/{message_id}/stream", "stream, header", "message",
              lambda http, mid: stream(http, mid, headers=as_b)),
        probe("GET", "/api/messages/{message_id}/stream", "stream, access_token", "message",
              lambda http, mid: stream(http, mid, params={"access_token": jwt_of(B)})),
        probe("GET", "/api/messages/{message_id}/stream", "resume, Last-Event-ID", "message",
              lambda http, mid: stream(http, mid, headers={**as_b, "Last-Event-ID": "2"})),
        probe("GET", "/api/messages/{message_id}/stream", "resume, ?last_event_id", "message",
              lambda http, mid: stream(http, mid, headers=as_b, params={"last_event_id": "1"})),
        # A stream token naming A's reply but issued to B: it verifies, and B owns no such reply.
        probe("GET", "/api/messages/{message_id}/stream", "stream token of B's for it", "message",
              lambda http, mid: stream(http, mid, headers={"Last-Event-ID": "1"},
                                       params={"stream_token": stream_token(mid, B)})),
        # B's real stream_url token, from B's own two-step turn, on A's reply: for another reply.
        probe("GET", "/api/messages/{message_id}/stream", "B's own stream_url token", "message",
              lambda http, mid: stream(http, mid, params={"stream_token": b_stream_token()}),
              status=401),
        probe("POST", "/api/messages/{message_id}/stop", "stop", "message",
              lambda http, mid: http.post(f"/api/messages/{mid}/stop", headers=as_b)),
        probe("POST", "/api/messages/{message_id}/regenerate", "regenerate", "message",
              lambda http, mid: http.post(f"/api/messages/{mid}/regenerate", headers=as_b)),
        probe("POST", "/api/messages/{message_id}/edit", "edit", "message",
              lambda http, mid: http.post(
                  f"/api/messages/{mid}/edit", headers=as_b, json={"message": "B says"})),
        probe("POST", "/api/messages/{message_id}/activate", "activate", "message",
              lambda http, mid: http.post(f"/api/messages/{mid}/activate", headers=as_b)),
        probe("PUT", "/api/messages/{message_id}/feedback", "rate", "message",
              lambda http, mid: http.put(
                  f"/api/messages/{mid}/feedback", headers=as_b, json={"rating": "down"})),
        probe("DELETE", "/api/messages/{message_id}/feedback", "unrate", "message",
              lambda http, mid: http.delete(f"/api/messages/{mid}/feedback", headers=as_b)),
        probe("GET", "/api/conversations/{conversation_id}/feedback", "ratings", "conversation",
              lambda http, cid: http.get(f"/api/conversations/{cid}/feedback", headers=as_b)),
        probe("POST", "/api/conversations/{conversation_id}/share", "share", "conversation",
              lambda http, cid: http.post(f"/api/conversations/{cid}/share", headers=as_b)),
        probe("DELETE", "/api/conversations/{conversation_id}/share", "unshare", "conversation",
              lambda http, cid: http.delete(f"/api/conversations/{cid}/share", headers=as_b)),
    ]  # fmt: skip


def app_routes(settings) -> set[tuple[str, str]]:
    found = set()
    for route in create_app(settings).routes:
        if isinstance(route, Mount):
            found.add(("*", route.path))
        elif isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return found


def snapshot(database: DatabaseHandle) -> dict[str, list[dict[str, Any]]]:
    return {
        table.name: database.query(f"SELECT * FROM {table.name} ORDER BY 1")
        for table in metadata.sorted_tables
    }


def same_as_a_random_id(probe: Probe, http: httpx.Client, own_id: str) -> int:
    """Call `probe` with A's id and with a random one: the answers must be the same."""
    random_id = new_id()
    theirs, nobodys = probe.call(http, own_id), probe.call(http, random_id)
    label = f"{probe.method} {probe.path} ({probe.name})"
    assert theirs.status_code == probe.status, (label, theirs.text)
    assert nobodys.status_code == probe.status, (label, nobodys.text)
    # Bodies name the id asked for; apart from it, not a byte differs.
    assert theirs.text.replace(own_id, "ID") == nobodys.text.replace(random_id, "ID"), label
    assert theirs.headers.get("content-type") == nobodys.headers.get("content-type"), label
    return 1


@pytest.fixture
def jwt_server(start_server):
    return start_server(**SETTINGS)


@pytest.fixture
def http(jwt_server) -> Iterator[httpx.Client]:
    with local_client(jwt_server.url, timeout=15) as client:
        yield client


def two_step(http: httpx.Client, user: str, path: str = "/api/chat/messages", **body) -> dict:
    response = http.post(path, headers=bearer(user), json=body or {"message": "hi"})
    assert response.status_code == 202, response.text
    return response.json()


def finished(http: httpx.Client, started: dict) -> list:
    events = read_sse(http, "GET", started["stream_url"])
    assert events[-1].event == "done", events[-1]
    return events


def test_another_users_ids_answer_as_ids_that_do_not_exist(jwt_server, http, fake, database):
    covered = {(p.method, p.path) for p in corpus(lambda: "")}
    uncovered = app_routes(jwt_server.settings) - covered - NOT_ABOUT_IDS
    assert not uncovered, (
        f"routes neither in the isolation corpus nor in NOT_ABOUT_IDS: {uncovered}"
    )

    # A's rows: a chat of two turns, and a coach call that reviewed it. B's: one turn, for the
    # stream token its stream_url carries.
    first = two_step(http, A)
    finished(http, first)
    second = two_step(http, A, message="again", conversation_id=first["conversation_id"])
    finished(http, second)
    coach = two_step(http, A, "/api/coach/messages", conversation_id=first["conversation_id"])
    finished(http, coach)
    b_turn = two_step(http, B)
    finished(http, b_turn)
    b_stream_token = b_turn["stream_url"].split("stream_token=", 1)[1]
    probes = corpus(lambda: b_stream_token)
    ids = {
        "conversation": [first["conversation_id"], coach["conversation_id"]],
        "message": [first["message_id"], second["message_id"], coach["message_id"]],
    }
    # A user message's id is no assistant message for anyone: it answers the same way too.
    ids["message"].append(second["user_message_id"])
    # A's rating and live link: B's unrate and unshare would have something to take away.
    rated = http.put(
        f"/api/messages/{first['message_id']}/feedback", headers=bearer(A), json={"rating": "up"}
    )
    assert rated.status_code == 200, rated.text
    shared = http.post(f"/api/conversations/{first['conversation_id']}/share", headers=bearer(A))
    assert shared.status_code == 201, shared.text

    before = snapshot(database)
    calls = sum(
        same_as_a_random_id(probe, http, own_id) for probe in probes for own_id in ids[probe.kind]
    )
    assert snapshot(database) == before, "a call of B's changed a row"
    assert calls == 2 * 15 + 4 * 12  # every probe, with each of A's ids of its kind

    # A live reply of A's: B's stop, delete, stream and resume change nothing of it.
    fake.enqueue(Behaviour(tokens=LIVE_TOKENS, delay=0.06))
    live = two_step(http, A)
    targets = {"conversation": live["conversation_id"], "message": live["message_id"]}
    for probe in probes:
        same_as_a_random_id(probe, http, targets[probe.kind])
    assert reply_row(database, live["message_id"])["status"] == "streaming", "still live"
    events = finished(http, live)
    assert events[-1].data["status"] == "complete"
    assert content_of(events) == "".join(LIVE_TOKENS)
    assert reply_row(database, live["message_id"])["status"] == "complete"
    assert http.get(f"/api/conversations/{live['conversation_id']}", headers=bearer(A)).is_success
    assert http.get(f"/api/shared/{shared.json()['token']}").is_success, "A's link still lives"


def test_a_users_token_opens_no_service_key_route_and_no_job(http, fake, database):
    """Service keys and /v1 hold no user's ids: a user's JWT is refused by both, writes nothing
    and goes nowhere (a service key on the user routes: tests/jobs/test_keys.py)."""
    as_b = bearer(B)
    for method, path in (
        ("POST", "/api/admin/keys"),
        ("GET", "/api/admin/keys"),
        ("DELETE", f"/api/admin/keys/{new_id()}"),
    ):
        body = {"label": "B's", "models": "*"} if method == "POST" else None
        response = http.request(method, path, headers=as_b, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden")
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/openai/gpt-4o"),
    ):
        body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        response = http.request(method, path, headers=as_b, json=body if method == "POST" else None)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["type"] == "authentication_error", path
    assert database.query("SELECT * FROM service_keys") == []
    assert fake.requests == []


def test_the_list_is_the_callers_and_admins_may_list_anyones(http, fake):
    mine = two_step(http, A)
    finished(http, mine)
    theirs = two_step(http, B)
    finished(http, theirs)

    def listed(user: str, **params: str) -> list[str]:
        response = http.get("/api/conversations", headers=bearer(user), params=params)
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()["conversations"]]

    assert listed(A) == [mine["conversation_id"]]
    assert listed(B) == [theirs["conversation_id"]]
    # Search reads the caller's own messages only: both said "hi".
    assert listed(A, q="hi") == [mine["conversation_id"]]
    assert listed(B, q="hi") == [theirs["conversation_id"]]
    assert listed(B, user_id=B) == [theirs["conversation_id"]]
    # A non-admin naming another user is refused, not quietly shown their own list.
    refused = http.get("/api/conversations", headers=bearer(B), params={"user_id": A})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")

    as_admin = bearer(ADMIN, role="service_role")
    admin_list = http.get("/api/conversations", headers=as_admin, params={"user_id": A})
    assert [c["id"] for c in admin_list.json()["conversations"]] == [mine["conversation_id"]]
    assert http.get("/api/conversations", headers=as_admin).json()["conversations"] == []
    bad = http.get("/api/conversations", headers=as_admin, params={"user_id": "a\x01b"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_field")

    read = http.get(f"/api/conversations/{mine['conversation_id']}", headers=as_admin)
    assert read.status_code == 200 and len(read.json()["messages"]) == 2
    # Reading is all: an admin's turns, coach reviews, renames, branch switches and deletes are
    # their own user's.
    path = f"/api/conversations/{mine['conversation_id']}"
    assert http.delete(path, headers=as_admin).status_code == 404
    assert http.patch(path, headers=as_admin, json={"title": "admin's"}).status_code == 404
    for action in ("regenerate", "activate"):
        response = http.post(f"/api/messages/{mine['message_id']}/{action}", headers=as_admin)
        assert response.status_code == 404, action
    coach = http.post(
        "/api/coach/messages", headers=as_admin, json={"conversation_id": mine["conversation_id"]}
    )
    assert coach.status_code == 404
    assert http.get(path, headers=bearer(A)).status_code == 200


def test_cost_reports_are_the_callers_and_everyones_is_for_admins(http, fake):
    for user, turns in ((A, 2), (B, 1)):
        for _ in range(turns):
            finished(http, two_step(http, user))

    def generations(user: str, path: str = "/api/me/costs", **claims: str) -> int:
        response = http.get(path, headers=bearer(user, **claims))
        assert response.status_code == 200, response.text
        return response.json()["totals"]["generations"]

    assert (generations(A), generations(B), generations(ADMIN, role="service_role")) == (2, 1, 0)
    assert generations(ADMIN, "/api/admin/costs", role="service_role") == 3
    refused = http.get("/api/admin/costs", headers=bearer(B))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    assert http.get("/api/me/costs").json()["error"]["code"] == "unauthorized"


def test_every_route_with_ids_needs_a_token(http):
    for probe in corpus(lambda: ""):
        if probe.name in ("chat EventSource, access_token", "stream, access_token"):
            continue  # these carry their token in the query: checked below without it
        if "stream token" in probe.name or "stream_url" in probe.name:
            continue
        path = probe.path.format(conversation_id=new_id(), message_id=new_id())
        response = http.request(probe.method, path, json={"message": "hi"})
        assert (response.status_code, response.json()["error"]["code"]) == (
            401,
            "unauthorized",
        ), (probe.method, probe.path)
    for path in ("/api/chat/stream?message=hi", f"/api/messages/{new_id()}/stream"):
        assert http.get(path).json()["error"]["code"] == "unauthorized", path
