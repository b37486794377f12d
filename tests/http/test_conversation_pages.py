"""`GET /api/conversations` a page at a time: `limit`, an opaque `cursor`, and `next`, through a
real server on the suite's database."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from tests.support import DatabaseHandle, local_client, read_sse, save_conversations


def saved_conversations(database: DatabaseHandle, count: int) -> None:
    """`count` conversations of the dev user; a third of them share one `updated_at`, so pages
    must break ties by id."""
    save_conversations(database, count)
    database.execute(
        "UPDATE conversations SET updated_at = (SELECT MIN(updated_at) FROM conversations)"
        " WHERE id IN (SELECT id FROM conversations ORDER BY id LIMIT "
        f"{count // 3})"
    )


def newest_first(database: DatabaseHandle) -> list[str]:
    rows = database.query("SELECT id FROM conversations ORDER BY updated_at DESC, id DESC")
    return [row["id"] for row in rows]


def walk(http: httpx.Client, url: str, between_pages=lambda: None) -> Iterator[list[dict]]:
    """Each page's conversations, following `next` to the end."""
    while url is not None:
        response = http.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        yield body["conversations"]
        url = body["next"]
        between_pages()


@pytest.fixture
def http(start_server) -> Iterator[httpx.Client]:
    with local_client(start_server().url) as client:
        yield client


def test_pages_follow_next_to_the_end_without_a_duplicate_or_a_gap(database, start_server):
    saved_conversations(database, 23)
    with local_client(start_server().url) as http:
        pages = list(walk(http, "/api/conversations?limit=5"))

    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert [c["id"] for page in pages for c in page] == newest_first(database)
    assert pages[0][0]["message_count"] == 2


def test_a_page_is_50_unless_limit_says_otherwise_and_at_most_100(database, start_server):
    saved_conversations(database, 105)
    with local_client(start_server().url) as http:
        first = http.get("/api/conversations").json()
        assert len(first["conversations"]) == 50 and first["next"].startswith("/api/conversations?")
        assert "limit" not in first["next"]  # the default goes on being the default
        assert len(http.get("/api/conversations?limit=100").json()["conversations"]) == 100
        last = http.get("/api/conversations?limit=100&cursor=" + cursor_of(first["next"]))
    assert len(last.json()["conversations"]) == 55 and last.json()["next"] is None


def cursor_of(url: str) -> str:
    return httpx.URL(url).params["cursor"]


def test_conversations_created_while_paging_do_not_shift_the_older_ones(
    database, start_server, fake
):
    saved_conversations(database, 12)
    before = newest_first(database)
    with local_client(start_server().url) as http:

        def a_new_conversation() -> None:
            read_sse(http, "POST", "/api/chat", json={"message": "new while paging"})

        seen = [
            c["id"]
            for page in walk(http, "/api/conversations?limit=4", a_new_conversation)
            for c in page
        ]

    assert seen == before  # every older one once, in order; the new ones are on page one now
    assert len(newest_first(database)) == 12 + 3


def test_next_keeps_the_agent_filter(database, start_server):
    saved_conversations(database, 3)  # chat conversations
    with local_client(start_server().url) as http:
        pages = list(walk(http, "/api/conversations?agent=chat&limit=2"))
        coach = http.get("/api/conversations?agent=coach").json()
    assert [len(page) for page in pages] == [2, 1]
    assert coach == {"conversations": [], "next": None}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=ten",
        "limit=1.5",
        "limit=-1",
        "cursor=",
        "cursor=not-a-cursor!",
        "cursor=" + _b64(b"{}"),
        "cursor=" + _b64(b'["2026-01-01T00:00:00", "naive"]'),
        "cursor=" + _b64(b'["yesterday", "c1"]'),
        "cursor=" + _b64(b'["2026-01-01T00:00:00+00:00", 7]'),
        "cursor=" + _b64(b"\xff\xfe"),
        "cursor=" + _b64(b"[" * 3000),  # deeper than the JSON decoder's stack
    ],
)
def test_a_bad_limit_or_cursor_is_422_invalid_query(http, query):
    response = http.get(f"/api/conversations?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_query"
