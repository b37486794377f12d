"""Bad input: a 4xx JSON error with a stable code before anything starts.

Each rejection is checked on the wire (status, `{"error": {"code", "message"}}`) and by its
absence of effects: no new row in the database, no request to the upstream. The cases share one
server and database (starting one per case would make this file slow), so "no new row" is
counted before and after each request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.dev.threaded_server import ThreadedServer
from app.main import create_app
from app.settings import Settings
from tests.support import DatabaseHandle, local_client, make_database, read_sse

# One database for the module (`shared`), not the `database` fixture's: marked by hand.
pytestmark = pytest.mark.db

LIMIT = 50  # max_message_chars of the server under test: small, so a query string can exceed it
TOO_LONG = "x" * (LIMIT + 1)
UNKNOWN_ID = "0" * 32  # the form of our ids (uuid4 hex), naming nothing


@pytest.fixture(scope="module")
def shared(fake_server, tmp_path_factory) -> Iterator[tuple[httpx.Client, DatabaseHandle]]:
    _, upstream = fake_server
    with make_database(tmp_path_factory.mktemp("input")) as database:
        settings = Settings(
            _env_file=None,
            app_env="test",
            openrouter_api_key="sk-or-test-secret-key",
            openrouter_model="openai/gpt-4o",
            openrouter_base_url=f"{upstream.url}/api/v1",
            database_url=database.url,
            max_message_chars=LIMIT,
            # Room for the bodies below that are bad in other ways than size (test_body_limit).
            max_body_bytes=1_000_000,
            # A title's upstream call after a first reply would land in a later test's requests.
            auto_titles=False,
        )
        with (
            ThreadedServer(create_app(settings)) as server,
            local_client(server.url) as http,
        ):
            yield http, database


@pytest.fixture
def database(shared) -> DatabaseHandle:
    return shared[1]


@pytest.fixture
def client(shared, fake) -> httpx.Client:
    return shared[0]


@pytest.fixture
def unchanged(database, fake) -> Iterator[None]:
    """The test must leave no new row and send nothing upstream."""
    before = counts(database)
    yield
    assert counts(database) == before and fake.requests == []


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {"error": {"code": code, "message": body["error"]["message"]}}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def counts(database) -> dict[str, int]:
    [row] = database.query(
        "SELECT (SELECT COUNT(*) FROM conversations) AS conversations,"
        " (SELECT COUNT(*) FROM messages) AS messages,"
        " (SELECT COUNT(*) FROM generations) AS generations"
    )
    return row


# (raw body, status, code) for every JSON-body endpoint
BAD_BODIES = [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"null", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'"hello"', 400, "invalid_json"),
    (b"42", 400, "invalid_json"),
    (b'{"message": "caf\xe9"}', 400, "invalid_json"),  # Latin-1, not UTF-8
    (b"[" * 100_000, 400, "invalid_json"),  # nesting deeper than the decoder's recursion limit
]
CHAT_FIELDS: list[tuple[dict[str, Any], int, str]] = [
    ({}, 422, "message_required"),
    ({"message": ""}, 422, "message_required"),
    ({"message": "  \n "}, 422, "message_required"),
    ({"message": None}, 422, "message_required"),
    ({"message": 5}, 422, "invalid_field"),
    ({"message": ["hi"]}, 422, "invalid_field"),
    ({"message": "a\x00b"}, 422, "invalid_field"),  # PostgreSQL cannot store NUL in text
    ({"message": TOO_LONG}, 413, "message_too_long"),
    ({"message": "hi", "conversation_id": ["c1"]}, 422, "invalid_field"),
    ({"message": "hi", "conversation_id": 7}, 422, "invalid_field"),
    ({"message": "hi", "conversation_id": "no-such-conversation"}, 422, "invalid_field"),
    ({"message": "hi", "conversation_id": "AB" * 16}, 422, "invalid_field"),
    ({"message": "hi", "conversation_id": UNKNOWN_ID}, 404, "conversation_not_found"),
    ({"message": "hi", "stream": "maybe"}, 422, "invalid_field"),
    ({"message": "hi", "stream": 1}, 422, "invalid_field"),
]
COACH_FIELDS: list[tuple[dict[str, Any], int, str]] = [
    ({}, 422, "coach_input_required"),
    ({"question": "", "context": " "}, 422, "coach_input_required"),
    ({"question": 5}, 422, "invalid_field"),
    ({"context": {"text": "hi"}}, 422, "invalid_field"),
    ({"question": TOO_LONG}, 413, "question_too_long"),
    ({"context": TOO_LONG, "question": "hi"}, 413, "context_too_long"),
    ({"question": "hi", "conversation_id": ["c1"]}, 422, "invalid_field"),
    ({"question": "hi", "conversation_id": "no-such-conversation"}, 422, "invalid_field"),
    ({"question": "hi", "conversation_id": UNKNOWN_ID}, 404, "conversation_not_found"),
    ({"question": "hi", "stream": "maybe"}, 422, "invalid_field"),
]


def json_cases(paths: list[str], fields: list[tuple[dict[str, Any], int, str]]):
    return [
        pytest.param(path, body, status, code, id=f"{path}:{code}:{i}")
        for path in paths
        for i, (body, status, code) in enumerate(fields)
    ]


@pytest.mark.parametrize(
    ("path", "raw", "status", "code"),
    [
        pytest.param(path, raw, status, code, id=f"{path}:{i}")
        for path in ["/api/chat", "/api/chat/messages", "/api/coach", "/api/coach/messages"]
        for i, (raw, status, code) in enumerate(BAD_BODIES)
    ],
)
def test_a_body_that_is_not_a_json_object_is_rejected(client, unchanged, path, raw, status, code):
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(response, status, code)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    json_cases(["/api/chat", "/api/chat/messages"], CHAT_FIELDS)
    + json_cases(["/api/coach", "/api/coach/messages"], COACH_FIELDS),
)
def test_bad_fields_are_rejected(client, unchanged, path, body, status, code):
    assert_error(client.post(path, json=body), status, code)


def query_cases(path: str, fields: list[tuple[dict[str, Any], int, str]]):
    # A query string carries only strings: the cases whose values are strings (or absent).
    return [
        pytest.param(path, params, status, code, id=f"{path}:{code}:{i}")
        for i, (params, status, code) in enumerate(fields)
        if all(isinstance(v, str) for v in params.values())
    ]


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    query_cases("/api/chat/stream", CHAT_FIELDS) + query_cases("/api/coach/stream", COACH_FIELDS),
)
def test_bad_query_parameters_are_rejected(client, unchanged, path, params, status, code):
    assert_error(client.get(path, params=params), status, code)


def test_a_message_at_the_limit_is_accepted(client, fake):
    events = read_sse(client, "POST", "/api/chat", json={"message": "y" * LIMIT})
    assert events[-1].event == "done"


def test_a_coach_conversation_is_not_a_chat_conversation(client, fake, database):
    coach = read_sse(client, "POST", "/api/coach", json={"question": "How?"})[0].data
    before, requests = counts(database), len(fake.requests)

    for path, body in [
        ("/api/chat", {"message": "hi"}),
        ("/api/chat/messages", {"message": "hi"}),
        ("/api/coach", {"question": "hi"}),  # the coach reviews chat conversations only
        ("/api/coach/messages", {"question": "hi"}),
    ]:
        response = client.post(path, json={**body, "conversation_id": coach["conversation_id"]})
        assert_error(response, 404, "conversation_not_found")
    assert_error(
        client.get(
            "/api/chat/stream",
            params={"message": "hi", "conversation_id": coach["conversation_id"]},
        ),
        404,
        "conversation_not_found",
    )

    assert counts(database) == before and len(fake.requests) == requests


def test_unknown_messages_are_404(client, fake, database):
    meta = read_sse(client, "POST", "/api/chat", json={"message": "hi"})[0].data

    for message_id in [UNKNOWN_ID, meta["user_message_id"]]:  # a user message has no reply
        assert_error(client.get(f"/api/messages/{message_id}/stream"), 404, "message_not_found")
        assert_error(client.post(f"/api/messages/{message_id}/stop"), 404, "message_not_found")
    assert_error(client.get(f"/api/conversations/{UNKNOWN_ID}"), 404, "conversation_not_found")
    assert_error(client.delete(f"/api/conversations/{UNKNOWN_ID}"), 404, "conversation_not_found")


@pytest.mark.parametrize("bad_id", ["no-such-id", "%00", "a%00b", "ABCDEF" * 5 + "AB", "0" * 33])
def test_a_path_id_that_is_not_an_id_is_refused_before_any_query(client, unchanged, bad_id):
    # Refused by its form, the same on every database: PostgreSQL cannot even compare a NUL.
    for method, path in [
        ("GET", f"/api/messages/{bad_id}/stream"),
        ("POST", f"/api/messages/{bad_id}/stop"),
        ("GET", f"/api/conversations/{bad_id}"),
        ("DELETE", f"/api/conversations/{bad_id}"),
    ]:
        assert_error(client.request(method, path), 422, "invalid_field")


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Last-Event-ID": "abc"}, {}),
        ({"Last-Event-ID": "-1"}, {}),
        ({"Last-Event-ID": "1.5"}, {}),
        ({}, {"last_event_id": "x"}),
    ],
)
def test_a_bad_last_event_id_is_rejected(client, fake, headers, params):
    message_id = read_sse(client, "POST", "/api/chat", json={"message": "hi"})[0].data["message_id"]
    response = client.get(f"/api/messages/{message_id}/stream", headers=headers, params=params)
    assert_error(response, 400, "invalid_last_event_id")


def test_unknown_path_and_wrong_method_are_json_errors(client, unchanged):
    assert_error(client.get("/api/nothing-here"), 404, "not_found")
    assert_error(client.post("/api/messages/x/nothing"), 404, "not_found")
    for method, path in [
        ("GET", "/api/chat"),
        ("PUT", "/api/chat/messages"),
        ("GET", "/api/coach/messages"),
        ("POST", "/api/chat/stream"),
        ("DELETE", "/api/messages/x/stop"),
    ]:
        response = client.request(method, path)
        assert_error(response, 405, "method_not_allowed")
        assert method not in response.headers["allow"]
