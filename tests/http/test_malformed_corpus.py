"""A seeded corpus of malformed requests over every route the app has.

The routes are listed from the app itself, so a new route is fuzzed without anyone adding it
here. Each case is one valid base request (probed per route: the first base the route accepts)
with one input poisoned: a body field, a body key, the whole body, a query parameter, a path
parameter or a header. Path parameters are real: the seeded conversation and reply, a live
shared link's token, a live service key's id (and the key itself as /v1's bearer). Every answer
must be below 500; a 4xx must be the JSON error shape (OpenAI's on /v1) and must have changed
nothing: the database is compared row by row, table by table, and the fake
OpenRouter must have received nothing. An accepted request (the poison sat somewhere the route
does not read) is read to its end and must not end in an `event: error`.

`CORPUS_SEED=<n>` draws another corpus; the default one is what CI runs.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from PIL import Image
from starlette.routing import Mount, Route

from app.main import create_app
from app.storage.database import is_sqlite, open_database, sqlite_path
from tests.support import run_async

SEED = int(os.environ.get("CORPUS_SEED", "16"))
SIZE = 600
# The corpus in this many tests, each with a server and database of its own, so that parallel
# test processes share it out (one case in SHARDS each, the whole corpus between them). Six:
# about 480 cases each, what four shards had before /v1, keys, shares and feedback came.
SHARDS = 6
LIMIT = 200  # max_message_chars of the server under test
ADMIN = "corpus-admin-token"
MODEL = "openai/gpt-4o"  # in the fake OpenRouter's catalog
OPENAI_ERROR = {"message", "type", "code", "param"}  # /v1's error shape
# What the app answers around a /v1 handler, in its own shape there too (app/http/openapi.py):
# the body limit's 413 for a declared Content-Length, before any route is reached.
AROUND_V1 = {"body_too_large", "method_not_allowed", "database_unavailable"}

# Every name the app reads from a JSON body or a query string. A new field belongs here; the
# routes themselves come from the app.
BODY_FIELDS = [
    "message",
    "question",
    "context",
    "conversation_id",
    "stream",
    "model",
    "fallback_models",
    "temperature",
    "max_tokens",
    "rating",  # feedback
    "comment",
    "label",  # service keys
    "models",
    "store_content",
    "messages",  # /v1/chat/completions
    "metadata",
    "attachments",  # upload ids on a turn
    "unknown_field",
]
QUERY_NAMES = [
    "attachments",
    "message",
    "question",
    "context",
    "conversation_id",
    "stream",
    "agent",
    "sort",
    "capability",
    "max_price",
    "q",
    "last_event_id",
]
HEADERS = ["last-event-id", "authorization", "idempotency-key", "content-type", "x-job"]


@dataclass(frozen=True)
class Poison:
    """One bad value, in each form it can take: a JSON text, a URL part, a header value.

    `json` is raw bytes so that what a JSON encoder would never write (lone surrogates, UTF-8
    encoded surrogates, 4,301-digit integers, NaN) can be sent anyway. None: not expressible.
    """

    name: str
    json: bytes | None
    url: str | None
    header: str | None
    key: str | None = None  # as a JSON object key (a JSON string literal, without quotes)


def _pct(text: str) -> str:
    return quote(text, safe="")


HUGE = "1" + "0" * 4300
POISONS = [
    Poison("lone_high_surrogate", rb'"a\ud800b"', None, None, key=r"\ud800"),
    Poison("lone_low_surrogate", rb'"\udfff"', None, None, key=r"x\udfff"),
    Poison("reversed_surrogates", rb'"\udc00\ud800"', None, None),
    Poison("utf8_encoded_surrogate", b'"\xed\xa0\x80"', "%ED%A0%80", None),
    Poison("nul", rb'"a\u0000b"', "a%00b", None, key=r"\u0000"),
    Poison("only_nul", rb'"\u0000"', "%00", None),
    Poison("huge_int", HUGE.encode(), HUGE, HUGE),
    Poison("huge_negative_int", b"-" + HUGE.encode(), "-" + HUGE, "-" + HUGE),
    Poison("huge_int_in_list", b"[" + HUGE.encode() + b"]", None, None),
    Poison("nan", b"NaN", "NaN", "NaN"),
    Poison("infinity", b"-Infinity", "-Infinity", "Infinity"),
    Poison("huge_float", b"1e400", "1e400", "1e400"),
    Poison("deep_nesting", b"[" * 500 + b"]" * 500, None, None),
    Poison("too_deep_nesting", b"[" * 100_000, None, None),
    Poison("long_string", b'"' + b"x" * 100_000 + b'"', "x" * 8_000, "x" * 4_000),
    Poison("invalid_utf8", b'"\xff\xfe"', "%FF%FE", "\xff\xfe"),
    Poison("control_chars", rb'"\u0001\u001f\u007f"', "%01%1F%7F", None),
    Poison("unicode", '"日本語 🎉 \u202e"'.encode(), _pct("日本語 🎉 \u202e"), None),
    Poison("path_traversal", b'"../../etc/passwd"', "..%2F..%2Fetc%2Fpasswd", "../x"),
    Poison("uppercase_id", b'"' + b"AB" * 16 + b'"', "AB" * 16, "AB" * 16),
    Poison("unknown_id", b'"' + b"0" * 32 + b'"', "0" * 32, "0" * 32),
    Poison("list", b'["a"]', None, None),
    Poison("object", b'{"a": {}}', None, None),
    Poison("true", b"true", "true", "true"),
    Poison("null", b"null", None, None),
    Poison("negative", b"-1", "-1", "-1"),
    Poison("fraction", b"1.5", "1.5", "1.5"),
    Poison("empty", b'""', "", ""),
    Poison("whitespace", b'" \\t\\n "', "%20%09%0A", None),
    Poison("latin1_header", None, None, "caf\xe9"),
    Poison("not_json", b"{nope", None, None),
]


@dataclass(frozen=True)
class Slot:
    kind: str  # "field", "key", "body", "query", "path", "header"
    name: str = ""

    def accepts(self, poison: Poison) -> bool:
        if self.kind == "key":
            return poison.key is not None
        if self.kind in ("field", "body"):
            return poison.json is not None
        if self.kind in ("query", "path"):
            return poison.url is not None
        return poison.header is not None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with {param} placeholders
    params: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    endpoint: Endpoint
    slot: Slot
    poison: Poison

    def __str__(self) -> str:
        where = f"{self.slot.kind}:{self.slot.name}" if self.slot.name else self.slot.kind
        return f"{self.endpoint.method} {self.endpoint.path} [{where}={self.poison.name}]"


def endpoints(app) -> list[Endpoint]:
    """Every method of every route the app serves; a mount counts as `GET <mount>/{path}`."""
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            params = tuple(re.findall(r"{(\w+)", route.path))
            for method in sorted(route.methods - {"HEAD"}):
                found.append(Endpoint(method, route.path, params))
        elif isinstance(route, Mount):
            found.append(Endpoint("GET", f"{route.path}/{{path}}", ("path",)))
        else:
            raise AssertionError(f"a route of a kind the corpus does not know: {route!r}")
    return found


def openai_shaped(endpoint: Endpoint) -> bool:
    """/v1 is OpenAI's API: called with a service key, refusing in OpenAI's error shape."""
    return endpoint.path.startswith("/v1/")


def slots(endpoint: Endpoint) -> list[Slot]:
    found = [Slot("path", name) for name in endpoint.params]
    found += [Slot("query", name) for name in QUERY_NAMES]
    found += [Slot("header", name) for name in HEADERS]
    if endpoint.method in ("POST", "PUT", "PATCH", "DELETE"):
        found += [Slot("field", name) for name in BODY_FIELDS]
        found += [Slot("key"), Slot("body")]
    return found


def corpus(app, rng: random.Random) -> list[Case]:
    """Every (endpoint, slot) and every (endpoint, poison) at least once, then random ones."""
    cases = []
    routes = endpoints(app)
    for endpoint in routes:
        for slot in slots(endpoint):
            fitting = [p for p in POISONS if slot.accepts(p)]
            # A path parameter gets every poison: ids reach the database first.
            for poison in fitting if slot.kind == "path" else [rng.choice(fitting)]:
                cases.append(Case(endpoint, slot, poison))
        for poison in POISONS:
            fitting = [s for s in slots(endpoint) if s.accepts(poison)]
            if fitting:
                cases.append(Case(endpoint, rng.choice(fitting), poison))
    while len(cases) < SIZE:
        endpoint = rng.choice(routes)
        slot = rng.choice(slots(endpoint))
        cases.append(Case(endpoint, slot, rng.choice([p for p in POISONS if slot.accepts(p)])))
    rng.shuffle(cases)
    return cases


def _tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


TINY_PNG = _tiny_png()  # the seeded upload: `/api/uploads/{upload_id}`'s valid value

# Bases tried in turn; a route's base is the first it accepts, so a poison is what trips it.
BODY_BASES: list[dict[str, Any]] = [
    {"message": "hi"},
    {"question": "hi"},
    {"temperature": 0.5},
    {"rating": "up"},
    {"label": "corpus", "models": "*"},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    {},
]
QUERY_BASES: list[dict[str, str]] = [{"message": "hi"}, {"question": "hi"}, {}]


class Runner:
    def __init__(self, http: httpx.AsyncClient, database, fake) -> None:
        self.http, self.database, self.fake = http, database, fake
        self.ids: dict[str, str] = {}
        self.service_key = ""  # `sc-…`: /v1's bearer
        self.bases: dict[Endpoint, tuple[dict[str, Any], dict[str, str]]] = {}
        self.digest: str | None = None  # PostgreSQL: one query digesting every table

    async def seed(self) -> None:
        """A finished chat turn, a live link to it, a live service key and an upload: their ids
        are the path parameters' valid values, so a poison is tried on a route that would
        answer."""
        response = await self.http.post("/api/chat", json={"message": "seed", "stream": False})
        assert response.status_code == 200, response.text
        seeded = response.json()
        self.ids = {
            **self.ids,
            "conversation_id": seeded["conversation_id"],
            "message_id": seeded["message_id"],
            "agent": "chat",
            "user_id": "dev",
            "path": "style.css",
            "model_id": MODEL,
        }
        await self.share()
        if "key_id" not in self.ids:
            await self.make_key()
        if "upload_id" not in self.ids:
            await self.upload()

    async def share(self) -> None:
        path = f"/api/conversations/{self.ids['conversation_id']}/share"
        response = await self.http.post(path, headers=self.as_admin)
        assert response.status_code == 201, response.text
        self.ids["token"] = response.json()["token"]

    async def make_key(self) -> None:
        body = {"label": "corpus", "models": "*"}
        response = await self.http.post("/api/admin/keys", json=body, headers=self.as_admin)
        assert response.status_code == 201, response.text
        self.ids["key_id"], self.service_key = response.json()["id"], response.json()["key"]

    async def upload(self) -> None:
        files = {"file": ("seed.png", TINY_PNG, "image/png")}
        response = await self.http.post("/api/uploads", files=files, headers=self.as_admin)
        assert response.status_code == 201, response.text
        self.ids["upload_id"] = response.json()["id"]

    async def restore(self) -> None:
        """Put back what an accepted request took away: the seeded conversation (a DELETE
        whose poison sat where it is not read), its link (revoked, or replaced by a new one),
        the service key (revoked), the upload (deleted)."""
        conversation = await self.http.get(
            f"/api/conversations/{self.ids['conversation_id']}", headers=self.as_admin
        )
        if conversation.status_code != 200:
            await self.seed()
        elif (await self.http.get(f"/api/shared/{self.ids['token']}")).status_code != 200:
            await self.share()
        key = await self.http.get("/v1/models", headers=self.as_service)
        if key.status_code != 200:
            await self.make_key()
        upload = await self.http.get(f"/api/uploads/{self.ids['upload_id']}", headers=self.as_admin)
        if upload.status_code != 200:
            await self.upload()

    @property
    def as_admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN}"}

    @property
    def as_service(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.service_key}"}

    def path(self, endpoint: Endpoint, poisoned: tuple[str, str] | None = None) -> str:
        path = endpoint.path
        for name in endpoint.params:
            value = poisoned[1] if poisoned and poisoned[0] == name else self.ids[name]
            path = path.replace(f"{{{name}}}", value).replace(f"{{{name}:path}}", value)
        return path

    async def send(
        self,
        endpoint: Endpoint,
        *,
        body: bytes | None,
        query: str,
        path: str,
        headers: dict[str, str],
    ) -> httpx.Response:
        url = path + (f"?{query}" if query else "")
        bearer = self.service_key if openai_shaped(endpoint) else ADMIN
        # As bytes: httpx would refuse a non-ASCII str, and HTTP carries Latin-1 anyway.
        all_headers = {"authorization": f"Bearer {bearer}".encode()} | {
            name: value.encode("latin-1") for name, value in headers.items()
        }
        if body is not None:
            all_headers.setdefault("content-type", b"application/json")
        return await self.http.request(endpoint.method, url, content=body, headers=all_headers)

    async def probe(self, endpoint: Endpoint) -> None:
        has_body = "field" in {slot.kind for slot in slots(endpoint)}
        bodies = BODY_BASES if has_body else [{}]
        for body in bodies:
            for query in QUERY_BASES:
                response = await self.send(
                    endpoint,
                    body=json.dumps(body).encode() if has_body else None,
                    query=urlencode(query),
                    path=self.path(endpoint),
                    headers={},
                )
                await self.settle(response)
                if response.is_success:
                    self.bases[endpoint] = (body, query)
                    return
        self.bases[endpoint] = (bodies[0], QUERY_BASES[0])

    async def settle(self, response: httpx.Response) -> str | None:
        """Read an accepted request to its end: what it failed with, if it did; re-seed if the
        seeded conversation is gone (a DELETE whose poison sat where it is not read)."""
        problem = None
        if response.is_success:
            text = response.text
            if response.status_code == 202 and "stream_url" in text:
                text = (await self.http.get(response.json()["stream_url"])).text
            if "event: error" in text:
                problem = f"accepted, then ended with an error event: {text[-300:]!r}"
            request = response.request
            if request.method == "DELETE" or request.url.path.endswith("/share"):
                await self.restore()
        return problem

    def request_parts(self, case: Case) -> dict[str, Any]:
        base_body, base_query = self.bases[case.endpoint]
        slot, poison = case.slot, case.poison
        body = None
        if "field" in {s.kind for s in slots(case.endpoint)}:
            rest = {k: v for k, v in base_body.items() if k != slot.name}
            encoded = json.dumps(rest).encode()
            if slot.kind == "field":
                assert poison.json is not None
                field = json.dumps(slot.name).encode() + b": " + poison.json
                body = encoded[:-1] + (b", " if rest else b"") + field + b"}"
            elif slot.kind == "key":
                key = b'"' + (poison.key or "").encode() + b'": 1'
                body = encoded[:-1] + (b", " if rest else b"") + key + b"}"
            elif slot.kind == "body":
                body = poison.json
            else:
                body = encoded
        query = urlencode({k: v for k, v in base_query.items() if k != slot.name})
        if slot.kind == "query":
            query = (query + "&" if query else "") + f"{slot.name}={poison.url}"
        poisoned_path = (slot.name, poison.url or "") if slot.kind == "path" else None
        headers = {slot.name: poison.header or ""} if slot.kind == "header" else {}
        return {
            "body": body,
            "query": query,
            "path": self.path(case.endpoint, poisoned_path),
            "headers": headers,
        }

    async def snapshot(self) -> dict[str, Any]:
        """Every row of every table: a refused request must leave it all as it was. Digested
        where the rows are (the tables grow with the accepted cases; fetching every row twice
        per case through `databases` was most of this test's time)."""
        url = str(self.database.url)
        if is_sqlite(url):
            with sqlite3.connect(sqlite_path(url)) as connection:
                listing = "SELECT name FROM sqlite_master WHERE type = 'table'"
                return {
                    table: sorted(map(repr, connection.execute(f'SELECT * FROM "{table}"')))
                    for (table,) in connection.execute(listing).fetchall()
                }
        if self.digest is None:
            listing = (
                "SELECT table_name AS name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
            self.digest = " UNION ALL ".join(
                f"SELECT '{table}' AS name,"
                f" md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS digest"
                f' FROM "{table}" AS t'
                for table in [
                    row._mapping["name"] for row in await self.database.fetch_all(listing)
                ]
            )
        rows = await self.database.fetch_all(self.digest)
        return {row._mapping["name"]: row._mapping["digest"] for row in rows}

    async def check(self, case: Case) -> list[str]:
        before, upstream = await self.snapshot(), len(self.fake.requests)
        response = await self.send(case.endpoint, **self.request_parts(case))
        problems = []
        if response.status_code >= 500:
            problems.append(f"5xx: {response.status_code} {response.text[:200]!r}")
        elif response.status_code >= 400:
            try:
                error = response.json()["error"]
                ours = {"code", "message"}
                if openai_shaped(case.endpoint) and error["code"] not in AROUND_V1:
                    ours = OPENAI_ERROR
                assert set(error) == ours, error
            except Exception:
                problems.append(f"not a JSON error: {response.status_code} {response.text[:200]!r}")
        failed_after_start = await self.settle(response)
        if failed_after_start:
            problems.append(failed_after_start)
        if response.status_code >= 400 or failed_after_start:
            after = await self.snapshot()
            changed = [table for table in before if before[table] != after.get(table)]
            if changed:
                problems.append(f"refused ({response.status_code}) but wrote to {changed}")
            if len(self.fake.requests) != upstream:
                problems.append(f"refused ({response.status_code}) but went upstream")
        return [f"{case}: {p}" for p in problems]


async def run_corpus(server_url: str, database_url: str, fake, cases: list[Case], app) -> list[str]:
    database = await open_database(database_url, max_size=1)
    try:
        # A connection per request: after a 500 uvicorn closes the connection it came on.
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server_url, timeout=30, limits=no_reuse) as http:
            runner = Runner(http, database, fake)
            await runner.seed()
            # The catalog is fetched (and cached in the database) before the corpus, so that no
            # background refresh lands in a case's before/after comparison.
            assert (await http.get("/api/models")).status_code == 200
            for endpoint in endpoints(app):
                await runner.probe(endpoint)
            problems = []
            for case in cases:
                problems += await runner.check(case)
            return problems
    finally:
        await database.disconnect()


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS), ids=lambda shard: f"shard{shard}")
def test_no_malformed_request_gets_a_5xx_or_changes_anything(start_server, fake, database, shard):
    server = start_server(max_message_chars=LIMIT, admin_token=ADMIN)
    every_case = corpus(create_app(server.settings), random.Random(SEED))
    assert len(every_case) >= SIZE
    cases = every_case[shard::SHARDS]
    problems = run_async(
        run_corpus(server.url, database.url, fake, cases, create_app(server.settings))
    )
    kinds = {
        kind: sum(kind in problem for problem in problems)
        for kind in ("5xx", "not a JSON error", "wrote to", "went upstream", "error event")
    }
    summary = "\n".join(problems[:40])
    assert not problems, (
        f"{len(problems)} problems in {len(cases)} cases (seed {SEED}): {kinds}\n{summary}"
    )
