"""CORS_ORIGINS: pages on the listed origins may call the API; no other origin, and none by
default. Preflights and actual requests, over a real socket."""

from __future__ import annotations

import httpx
import pytest

from app.settings import Settings
from tests.support import local_client

ALLOWED = "https://host.example"
WIDGET_HEADERS = "authorization, content-type, last-event-id, idempotency-key, accept"


def preflight(http: httpx.Client, origin: str, method: str = "POST") -> httpx.Response:
    return http.options(
        "/api/coach/messages",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": WIDGET_HEADERS,
        },
    )


@pytest.fixture
def http(start_server):
    server = start_server(cors_origins=f"{ALLOWED}, http://localhost:3000")
    with local_client(server.url) as client:
        yield client


def test_a_listed_origin_may_send_what_the_widget_sends(http):
    response = preflight(http, ALLOWED)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {h.strip() for h in WIDGET_HEADERS.split(",")} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    for method in ("GET", "PUT", "DELETE"):
        assert preflight(http, ALLOWED, method).status_code == 200


def test_a_listed_origin_can_read_answers_and_errors(http, fake):
    headers = {"Origin": ALLOWED}
    accepted = http.post("/api/coach/messages", json={"question": "hi"}, headers=headers)
    assert accepted.status_code == 202
    assert accepted.headers["access-control-allow-origin"] == ALLOWED
    stream = http.get(accepted.json()["stream_url"], headers=headers)
    assert stream.headers["access-control-allow-origin"] == ALLOWED
    assert "event: done" in stream.text
    # Errors too, the body limit's included (it sits inside CORS): the widget shows their code.
    for response in (
        http.post("/api/coach/messages", json={}, headers=headers),
        http.post("/api/coach/messages", content=b" " * 2_000_000, headers=headers),
    ):
        assert response.status_code in (413, 422)
        assert response.headers["access-control-allow-origin"] == ALLOWED


def test_another_origin_is_refused(http):
    for origin in ("https://evil.example", "https://host.example.evil.example", "null"):
        response = preflight(http, origin)
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        answer = http.get("/api/conversations", headers={"Origin": origin})
        assert "access-control-allow-origin" not in answer.headers


def test_no_origin_is_allowed_by_default(start_server):
    server = start_server()
    with local_client(server.url) as http:
        response = preflight(http, ALLOWED)
        assert response.status_code == 405  # no CORS at all: OPTIONS is just a method not served
        assert "access-control-allow-origin" not in response.headers
        answer = http.get("/api/conversations", headers={"Origin": ALLOWED})
        assert "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize("value", ["https://host.example/", "host.example", "*", "https://a b"])
def test_an_origin_that_could_never_match_is_a_configuration_error(value):
    with pytest.raises(ValueError, match="cors_origins"):
        Settings(_env_file=None, cors_origins=value)
