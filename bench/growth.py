"""How cost grows with the work (issue #23, "Growth"): a long conversation, a long reply, a big
database, each measured small and big against a real server, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.growth                 # 200 turns, 4,000 tokens, 1,000,000 messages
    .venv/bin/python -m bench.growth --quick         # 30 turns, 1,000 tokens, 20,000 messages
    .venv/bin/python -m bench.growth --databases sqlite
    .venv/bin/python -m bench.growth --postgres-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.growth --cases small-context --databases sqlite --turns 200

Every server is its own process, started as `python -m bench` starts ours (bench/run.py's
`Processes.ours`: migrated with `python -m app migrate`, then `python -m app serve`), with
AUTH_MODE=jwt (this driver signs each user's HS256 token) and ADMIN_TOKEN, in front of
`bench.fake_upstream --directives` (a reply as long as the message's `[[sim tokens=N]]` asks).
PostgreSQL is a throwaway server (bench/postgres.py) unless `--postgres-url` names one, where a
database `bench_growth_*` of its own is created and dropped. One server per database, and in turn:

1. A conversation of `--turns` turns, one at a time (`POST /api/chat` with its id): time to
   first delta and the server's CPU per turn, the first `--window` turns against the last; the
   list and the conversation's `GET` after the first window and at the end; the history the
   last request sent upstream (`GET /bench/last-request` on the fake upstream).
2. A reply of `--tokens` chunks `--delay` s apart: the gaps between deltas and the server's CPU
   per token in the reply's first tenth against its last; peak RSS over the reply (VmHWM, reset
   first); its replay (`GET /api/messages/{id}/stream`) and its conversation's `GET` against a
   short reply's.
3. A conversation of `--turns` turns on a small-context model (`gryphe/mythomax-l2-13b`, 4,096
   tokens in the simulator's catalog; the chat agent allows it, the turn names it), each turn a
   message and a reply long enough that the history fills the model's window within the first
   turns: from then on every turn's history is cut to fit (app/replies/fitting.py). Time to
   first delta and the server's CPU per turn, the first `--window` turns against the last: the
   fitting reads at most `history_messages` and is linear in what is sent, so turn 200 costs
   what turn 10 does. The history the last request sent upstream, and `meta`'s `history`
   (`{sent, left_out}`), after the first window and at the end.
4. A database of `--messages` messages, written by the database itself (recursive CTEs, after
   the real migrations): ten messages a conversation, a generation per reply, all in November
   2026; a tenth of the conversations a heavy user's, the rest over 1,000 users; a light user
   with 3 conversations written before. Measured for the light user on the database before the
   fill ("empty") and after, and for the heavy one: the list (first page, and a page 100 pages
   in), a conversation's `GET`, a finished reply's replay, `/api/me/costs` and
   `/api/admin/costs` (November by day). Then `/api/me/costs` again without migration 14's
   index (dropped for the turn, then built again): before and after.

Time is the driver's (httpx; the response read to its end); CPU is utime+stime of the server's
threads from `/proc/<pid>/task/*/schedstat` (nanoseconds: `/proc/<pid>/stat`'s ticks are 10
ms, coarser than a turn). Then, for each query behind a case, `EXPLAIN QUERY PLAN` (SQLite) or
`EXPLAIN` (PostgreSQL) on the big database: the indexes it reads and any table read whole.

The verdict compares p50s: `flat` within x1.5 (or 1 ms); `grows`; or `grows with its answer`
where the answer itself is longer (a conversation of 400 messages, a reply of 4,000 events, a
report of more rows) and time grew no faster than it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects import postgresql, sqlite

from app.billing.reports import ReportRange, report_query
from app.settings import DEFAULT_AGENTS_FILE
from app.storage import migrations
from app.storage.conversations import Position, conversations_page
from app.storage.database import is_sqlite, open_database
from app.storage.replies import history_query, messages_with_usage, reply_with_usage
from app.storage.tables import metadata
from bench.postgres import fresh_database, throwaway_postgres
from bench.run import ADMIN_TOKEN, AUTH_JWT_SECRET, HOST, Processes, Server, _cpu_model, quantile

DATABASES = ("sqlite", "postgresql")
CASES = ("conversation", "reply", "small-context", "database")
# A model of the simulator's catalog with a 4,096-token window (app/dev/simulator_models.py).
SMALL_CONTEXT_MODEL = "gryphe/mythomax-l2-13b"
# A small-context turn: a message of ~60 words and a reply of 80 chunks (~400 bytes each), so
# the history's bound (bytes, app/billing/budgets.py) fills the window left after the reply's
# max_tokens (4,096 - 1,024) within the first four turns.
SMALL_CONTEXT_WORDS = 60
SMALL_CONTEXT_REPLY = 80
TABLES = set(metadata.tables)
NOVEMBER = {"from": "2026-11-01", "to": "2026-11-30", "group_by": "day"}
MESSAGES_PER_CONVERSATION = 10  # 5 turns: a user message and its reply each
OTHER_USERS = 1000
LIGHT_CONVERSATIONS = 3
FLAT = 1.5  # a p50 within x1.5 of the small case's (or within FLAT_MS of it) is flat
FLAT_MS = 1.0
DELTA = re.compile(rb"^event: delta")
META_IDS = re.compile(r'"(conversation_id|message_id)": ?"([0-9a-zA-Z_-]+)"')


# --- the result table ---------------------------------------------------------------------------


@dataclass
class Row:
    """One case on one database: its small and big ends' samples (ms), and how much longer the
    big end's answer is (1: the same answer, so time should not grow)."""

    case: str
    database: str
    small: str  # what the small end is, e.g. "turns 1-10"
    big: str
    small_ms: list[float]
    big_ms: list[float]
    answer_scale: float = 1.0

    def p(self, which: str, q: float) -> float:
        return quantile(self.small_ms if which == "small" else self.big_ms, q)

    @property
    def verdict(self) -> str:
        small, big = self.p("small", 0.5), self.p("big", 0.5)
        if big <= FLAT * small or big - small < FLAT_MS:
            return "flat"
        if self.answer_scale > 1 and big <= FLAT * small * self.answer_scale:
            return f"grows with its answer (x{self.answer_scale:.0f})"
        return "grows"


def table(rows: list[Row]) -> str:
    head = (
        f"{'case':<44} {'db':<10} {'small':<16} {'p50':>9} {'p99':>9}  {'big':<18} "
        f"{'p50':>9} {'p99':>9} {'x p50':>7}  verdict"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        ratio = row.p("big", 0.5) / row.p("small", 0.5) if row.p("small", 0.5) else float("nan")
        lines.append(
            f"{row.case:<44} {row.database:<10} {row.small:<16} {row.p('small', 0.5):>9.2f} "
            f"{row.p('small', 0.99):>9.2f}  {row.big:<18} {row.p('big', 0.5):>9.2f} "
            f"{row.p('big', 0.99):>9.2f} {ratio:>7.2f}  {row.verdict}"
        )
    return "\n".join(lines)


@dataclass
class Findings:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)


# --- the server's side --------------------------------------------------------------------------


def cpu_ns(server: Server) -> int:
    """CPU time of all the server's threads so far (utime+stime), in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def reset_peak_rss(server: Server) -> None:
    """Start VmHWM again from the current RSS (clear_refs 5: ours, a child of this process)."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


def token(user: str) -> dict[str, str]:
    claims = {"sub": user, "exp": int(time.time()) + 86400}
    return {"Authorization": f"Bearer {jwt.encode(claims, AUTH_JWT_SECRET, algorithm='HS256')}"}


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def timed_gets(
    http: httpx.AsyncClient, path: str, *, headers: dict[str, str], count: int, params=None
) -> list[float]:
    """`count` GETs of `path` one after another, each read to its end, after one to warm up: ms."""
    times = []
    for i in range(count + 1):
        started = time.perf_counter()
        response = await http.get(path, headers=headers, params=params)
        await response.aread()
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        if i:
            times.append(1000 * (time.perf_counter() - started))
    return times


@dataclass
class Turn:
    conversation_id: str
    message_id: str
    first_delta_ms: float
    cpu_ms: float
    delta_times: list[float]  # perf_counter of each delta's arrival
    cpu_marks: list[tuple[int, int]]  # (deltas so far, server CPU ns) at each tenth
    history: dict[str, int] | None = None  # meta's `history`: {sent, left_out}, when cut


async def turn(
    http: httpx.AsyncClient,
    server: Server,
    *,
    user: str,
    message: str,
    conversation_id: str | None = None,
    expect_deltas: int = 0,
    model: str | None = None,
) -> Turn:
    """One `POST /api/chat`, read to its `done`; with `expect_deltas`, the server's CPU is read
    at each tenth of them too."""
    body: dict[str, Any] = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    if model is not None:
        body["model"] = model
    marks = [(0, cpu_ns(server))]
    every = max(1, expect_deltas // 10) if expect_deltas else 0
    ids: dict[str, str] = {}
    history: dict[str, int] | None = None
    deltas: list[float] = []
    started = time.perf_counter()
    async with http.stream("POST", "/api/chat", json=body, headers=token(user)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"POST /api/chat: {response.status_code} {await response.aread()}")
        async for line in response.aiter_lines():
            if line.startswith("event: delta"):
                deltas.append(time.perf_counter())
                if every and len(deltas) % every == 0:
                    marks.append((len(deltas), cpu_ns(server)))
            elif not ids and line.startswith("data: "):
                ids = dict(META_IDS.findall(line))
                if '"history"' in line:  # meta's: only a turn whose history was cut has it
                    history = json.loads(line[len("data: ") :]).get("history")
            elif line.startswith(("event: done", "event: error")):
                if line != "event: done":
                    raise RuntimeError("the reply ended in an error")
                break
    marks.append((len(deltas), cpu_ns(server)))
    if not deltas:
        raise RuntimeError("a reply without a delta")
    return Turn(
        conversation_id=ids["conversation_id"],
        message_id=ids["message_id"],
        first_delta_ms=1000 * (deltas[0] - started),
        cpu_ms=(marks[-1][1] - marks[0][1]) / 1e6,
        delta_times=deltas,
        cpu_marks=marks,
        history=history,
    )


async def upstream_request_size(upstream: Server) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{upstream.port}") as http:
        return (await http.get("/bench/last-request")).json()


# --- 1. a long conversation ---------------------------------------------------------------------


async def long_conversation(
    http: httpx.AsyncClient, server: Server, upstream: Server, args: argparse.Namespace, db: str
) -> Findings:
    """`--turns` turns in one conversation."""
    found = Findings()
    user, window = "long-conversation", args.window
    turns: list[Turn] = []
    at: dict[str, dict[str, Any]] = {}
    conversation_id = None
    for i in range(1, args.turns + 1):
        done = await turn(
            http,
            server,
            user=user,
            message=f"turn {i}: tell me more",
            conversation_id=conversation_id,
        )
        conversation_id = done.conversation_id
        turns.append(done)
        if i in (window, args.turns):
            at[str(i)] = {
                "list": await timed_gets(
                    http, "/api/conversations", headers=token(user), count=args.requests
                ),
                "get": await timed_gets(
                    http,
                    f"/api/conversations/{conversation_id}",
                    headers=token(user),
                    count=args.requests,
                ),
                "upstream": await upstream_request_size(upstream),
            }
    first, last = turns[:window], turns[-window:]
    small, big = f"turns 1-{window}", f"turns {args.turns - window + 1}-{args.turns}"
    early, late = at[str(window)], at[str(args.turns)]
    found.rows += [
        *(
            Row(
                f"conversation: {case}",
                db,
                small,
                big,
                [of(t) for t in first],
                [of(t) for t in last],
            )
            for case, of in (
                ("time to first delta", lambda turn: turn.first_delta_ms),
                ("server CPU per turn", lambda turn: turn.cpu_ms),
            )
        ),
        Row(
            "conversation: list (GET)",
            db,
            f"after {window}",
            f"after {args.turns}",
            early["list"],
            late["list"],
        ),
        Row(
            "conversation: replay (GET /{id})",
            db,
            f"{2 * window} messages",
            f"{2 * args.turns} messages",
            early["get"],
            late["get"],
            args.turns / window,
        ),
    ]
    found.notes.append(
        f"{db}: history sent upstream: after {window} turns {early['upstream']['messages']} "
        f"messages, {early['upstream']['bytes']:,} bytes; after {args.turns} turns "
        f"{late['upstream']['messages']} messages, {late['upstream']['bytes']:,} bytes"
    )
    return found


# --- 2. a long reply ----------------------------------------------------------------------------


def _gaps_ms(times: list[float]) -> list[float]:
    return [1000 * (b - a) for a, b in itertools.pairwise(times)]


async def long_reply(
    http: httpx.AsyncClient, server: Server, args: argparse.Namespace, db: str
) -> Findings:
    found = Findings()
    user = "long-reply"
    short_tokens = 40
    short = await turn(
        http, server, user=user, message=f"short [[sim tokens={short_tokens} delay={args.delay}]]"
    )
    reset_peak_rss(server)
    rss_before = server.memory_kb("VmRSS")
    long = await turn(
        http,
        server,
        user=user,
        message=f"long [[sim tokens={args.tokens} delay={args.delay}]]",
        expect_deltas=args.tokens,
    )
    peak = server.memory_kb("VmHWM")
    tenth = max(2, len(long.delta_times) // 10)
    marks = long.cpu_marks

    def per_token_us(a: tuple[int, int], b: tuple[int, int]) -> float:
        return (b[1] - a[1]) / 1e3 / max(1, b[0] - a[0])

    # The second tenth against the last, not the first: that one has the turn's start in it
    # (the first tokens arrive together while the turn's rows are written).
    second = slice(tenth, 2 * tenth)
    found.rows += [
        Row(
            "reply: gap between deltas",
            db,
            "second tenth",
            "last tenth",
            _gaps_ms(long.delta_times[second]),
            _gaps_ms(long.delta_times[-tenth:]),
        ),
        # A tenth's CPU is one number: us per token, in the ms columns' place.
        Row(
            "reply: server CPU per token (us)",
            db,
            "second tenth",
            "last tenth",
            [per_token_us(marks[1], marks[2])],
            [per_token_us(marks[-3], marks[-2])],
        ),
    ]
    for label, path in (
        ("reply: replay (GET stream)", "/api/messages/{}/stream"),
        ("reply: its conversation (GET)", "/api/conversations/{}"),
    ):
        ids = (
            (short.message_id, long.message_id)
            if "stream" in path
            else (short.conversation_id, long.conversation_id)
        )
        found.rows.append(
            Row(
                label,
                db,
                f"{short_tokens} tokens",
                f"{args.tokens} tokens",
                *[
                    await timed_gets(http, path.format(i), headers=token(user), count=args.requests)
                    for i in ids
                ],
                args.tokens / short_tokens,
            )
        )
    found.notes.append(
        f"{db}: a reply of {args.tokens} tokens {1000 * args.delay:.0f} ms apart: server CPU "
        f"{long.cpu_ms:.0f} ms ({1000 * long.cpu_ms / args.tokens:.0f} us per token; "
        f"{short.cpu_ms:.1f} ms for {short_tokens} tokens); RSS {rss_before / 1024:.1f} MB before,"
        f" peak {peak / 1024:.1f} MB during it (+{(peak - rss_before) / 1024:.1f} MB)"
    )
    return found


# --- 3. a small-context model ------------------------------------------------------------------


def small_context_message(turn: int) -> str:
    """A turn's message: ~60 words, and the directive for a reply of 80 chunks."""
    words = " ".join(f"word{turn}-{w}" for w in range(SMALL_CONTEXT_WORDS))
    return f"turn {turn}: {words} [[sim tokens={SMALL_CONTEXT_REPLY}]]"


async def small_context(
    http: httpx.AsyncClient, server: Server, upstream: Server, args: argparse.Namespace, db: str
) -> Findings:
    """`--turns` turns in one conversation on a model whose window the history outgrows."""
    found = Findings()
    user, window = "small-context", args.window
    turns: list[Turn] = []
    sent: dict[int, dict[str, int]] = {}
    conversation_id = None
    for i in range(1, args.turns + 1):
        done = await turn(
            http,
            server,
            user=user,
            message=small_context_message(i),
            conversation_id=conversation_id,
            model=SMALL_CONTEXT_MODEL,
        )
        conversation_id = done.conversation_id
        turns.append(done)
        if i in (window, args.turns):
            sent[i] = await upstream_request_size(upstream)
    first, last = turns[:window], turns[-window:]
    small, big = f"turns 1-{window}", f"turns {args.turns - window + 1}-{args.turns}"
    found.rows += [
        Row(f"small context: {case}", db, small, big, [of(t) for t in first], [of(t) for t in last])
        for case, of in (
            ("time to first delta", lambda turn: turn.first_delta_ms),
            ("server CPU per turn", lambda turn: turn.cpu_ms),
        )
    ]
    cut = sum(1 for t in turns if t.history)

    def at(i: int) -> str:
        note = turns[i - 1].history or {"sent": "all", "left_out": 0}
        return (
            f"turn {i} sent {sent[i]['messages']} messages, {sent[i]['bytes']:,} bytes "
            f"(history: {note['sent']} sent, {note['left_out']} left out)"
        )

    found.notes.append(
        f"{db}: small context ({SMALL_CONTEXT_MODEL}, 4,096 tokens): {at(window)}; "
        f"{at(args.turns)}; {cut} of {args.turns} turns cut to fit"
    )
    return found


# --- 4. a big database --------------------------------------------------------------------------


def _stamp(url: str, seconds: str) -> str:
    """A timestamp `seconds` into November 2026 (UTC), as the app stores one."""
    if is_sqlite(url):
        # Whole seconds, as text: no strftime, whose `%` `databases` may take for a parameter.
        seconds = f"CAST({seconds} AS INTEGER)"
        return f"datetime('2026-11-01', '+' || {seconds} || ' seconds') || '.000000'"
    return f"timestamptz '2026-11-01 00:00:00+00' + ({seconds}) * interval '1 second'"


def _mod(a: str, b: int) -> str:
    return f"({a} - ({a} / {b}) * {b})"  # `%` on both, without their differences in syntax


def _pad(url: str, number: str, width: int) -> str:
    """`number` as `width` decimal digits, zero-padded: ids are 32 hex digits, and digits are."""
    if is_sqlite(url):
        return f"substr('{'0' * width}' || ({number}), -{width})"
    return f"lpad(({number})::text, {width}, '0')"


async def fill(database: Database, url: str, *, prefix: str, conversations: int, user: str) -> None:
    """`conversations` conversations of 10 messages, spread over November 2026, each with a
    generation per reply; `user` is the SQL of each one's user, of `i`. Ids are 32 hex digits,
    as the app's: `<prefix>c<i>` for a conversation, `<prefix>e<i><j>` for its j-th message
    (`prefix`: one hex digit per fill). Written by the database, one statement a table; the
    full-text index's triggers (SQLite) and GIN index (PostgreSQL) are kept as the app's writes
    keep them."""
    step = 29 * 86400 / max(1, conversations)
    last = MESSAGES_PER_CONVERSATION
    numbers = (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {conversations})"
    )
    at = _stamp(url, f"i * {step!r}")
    # Not LIKE '<prefix>%': `databases` may format SQLite's SQL with `%`. Nor the prefix alone:
    # a conversation the app made earlier in this database (a random hex id) starts with these
    # two characters once in 256, and its messages' seqs would then collide with the fill's.
    # Ours are the prefix and 30 decimal digits, which a random hex id almost never is.
    mine = f"c.id BETWEEN '{prefix}c{'0' * 30}' AND '{prefix}c{'9' * 30}'"

    def message(j: str) -> str:  # the j-th message of conversation `c`
        return f"'{prefix}e' || substr(c.id, 5) || {_pad(url, j, 2)}"

    await database.execute(
        "INSERT INTO conversations (id, user_id, agent, title, created_at, updated_at,"
        f" active_leaf_id) {numbers} SELECT '{prefix}c' || {_pad(url, 'i', 30)}, {user}, 'chat',"
        f" 'a conversation', {at}, {at}, '{prefix}e' || {_pad(url, 'i', 28)} || '{last}' FROM n"
    )
    await database.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, status, agent,"
        " requested_model, model, finish_reason, event_lengths, created_at, updated_at,"
        f" parent_id) WITH RECURSIVE s(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM s WHERE j < "
        f"{last}) SELECT {message('j')}, c.id, j,"
        f" CASE WHEN {_mod('j', 2)} = 1 THEN 'user' ELSE 'assistant' END,"
        f" CASE WHEN {_mod('j', 2)} = 1 THEN 'question ' || j || ' of ' || c.id"
        "   ELSE 'hello world' END,"
        " 'complete', 'chat', 'openai/gpt-4o',"
        f" CASE WHEN {_mod('j', 2)} = 0 THEN 'openai/gpt-4o' END,"
        f" CASE WHEN {_mod('j', 2)} = 0 THEN 'stop' END,"
        f" CASE WHEN {_mod('j', 2)} = 0 THEN '[5, 6]' END,"  # "hello", " world": two deltas
        f" c.created_at, c.updated_at, CASE WHEN j > 1 THEN {message('j - 1')} END"
        f" FROM conversations c CROSS JOIN s WHERE {mine}"
    )
    await database.execute(
        "INSERT INTO generations (id, generation_id, message_id, conversation_id, agent,"
        " attempt, requested_model, model, status, prompt_tokens, completion_tokens,"
        " reasoning_tokens, cached_tokens, cost_picousd, cost_source, started_at, ended_at,"
        " user_id) SELECT 'f' || substr(m.id, 1, 1) || substr(m.id, 3), 'gen-' || m.id, m.id,"
        " m.conversation_id, 'chat', 1, 'openai/gpt-4o', 'openai/gpt-4o', 'complete', 100, 2,"
        " 0, 0, 5000000, 'usage', m.created_at, m.created_at, c.user_id"
        " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        f" WHERE {mine} AND m.role = 'assistant'"
    )
    if not is_sqlite(url):
        # As autovacuum would have by now; SQLite is left as production leaves it.
        await database.execute("VACUUM ANALYZE")


@dataclass
class Sizes:
    """What a user's requests in the big-database case ask for."""

    user: str
    conversation_id: str
    message_id: str
    later_page: str | None = None  # a `next` URL 100 pages in, for a user with that many


async def get_json(http: httpx.AsyncClient, path: str, *, user: str) -> Any:
    response = await http.get(path, headers=token(user))
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return response.json()


async def user_sizes(http: httpx.AsyncClient, user: str, *, deep: int) -> Sizes:
    first = await get_json(http, "/api/conversations", user=user)
    conversation_id = first["conversations"][0]["id"]
    shown = await get_json(http, f"/api/conversations/{conversation_id}", user=user)
    reply = next(m for m in reversed(shown["messages"]) if m["role"] == "assistant")
    later, page = None, first
    for _ in range(deep):
        if not page["next"]:
            break
        later = page["next"]
        page = await get_json(http, later, user=user)
    return Sizes(user, conversation_id, reply["id"], later)


async def user_requests(
    http: httpx.AsyncClient, sizes: Sizes, *, count: int
) -> dict[str, list[float]]:
    """Each request of the big-database case, timed for one user: ms."""
    auth = token(sizes.user)
    found = {
        "list, first page": await timed_gets(http, "/api/conversations", headers=auth, count=count),
        "conversation (GET /{id})": await timed_gets(
            http, f"/api/conversations/{sizes.conversation_id}", headers=auth, count=count
        ),
        "replay of a finished reply": await timed_gets(
            http, f"/api/messages/{sizes.message_id}/stream", headers=auth, count=count
        ),
        "/api/me/costs": await timed_gets(
            http, "/api/me/costs", headers=auth, params=NOVEMBER, count=count
        ),
    }
    if sizes.later_page:
        found["list, a page 100 in"] = await timed_gets(
            http, sizes.later_page, headers=auth, count=count
        )
    return found


async def generations_count(database: Database, user: str | None) -> int:
    where = "" if user is None else f" WHERE user_id = '{user}'"
    return int(await database.fetch_val(f"SELECT count(*) FROM generations{where}"))


async def big_database(
    http: httpx.AsyncClient, url: str, args: argparse.Namespace, db: str
) -> Findings:
    found = Findings()
    count = args.requests
    database = await open_database(url, max_size=1, command_timeout=3600)
    try:
        await fill(database, url, prefix="a", conversations=LIGHT_CONVERSATIONS, user="'light'")
        light = await user_sizes(http, "light", deep=0)
        empty = await user_requests(http, light, count=count)
        empty_admin = await timed_gets(
            http, "/api/admin/costs", headers=ADMIN, params=NOVEMBER, count=count
        )
        ledger_small = await generations_count(database, None)
        conversations = args.messages // MESSAGES_PER_CONVERSATION
        heavy_share = max(1, conversations // 10)
        started = time.perf_counter()
        await fill(
            database,
            url,
            prefix="b",
            conversations=conversations,
            user=f"CASE WHEN i <= {heavy_share} THEN 'heavy'"
            f" ELSE 'user' || {_mod('i', OTHER_USERS)} END",
        )
        found.notes.append(
            f"{db}: filled {conversations * MESSAGES_PER_CONVERSATION:,} messages,"
            f" {conversations:,} conversations ({heavy_share:,} of them the heavy user's),"
            f" {await generations_count(database, None):,} generations in"
            f" {time.perf_counter() - started:.0f} s"
        )
        heavy = await user_sizes(http, "heavy", deep=args.deep)
        big_light = await user_requests(http, light, count=count)
        big_heavy = await user_requests(http, heavy, count=count)
        big_admin = await timed_gets(
            http, "/api/admin/costs", headers=ADMIN, params=NOVEMBER, count=count
        )
        ledger_big = await generations_count(database, None)
        heavy_rows = await generations_count(database, "heavy")
        light_rows = await generations_count(database, "light")
        big = f"{args.messages // 1000:,}k msgs"
        for name, samples in empty.items():
            found.rows.append(
                Row(f"db: {name}, light user", db, "empty db", big, samples, big_light[name])
            )
        for name, samples in big_light.items():
            scale = heavy_rows / light_rows if name == "/api/me/costs" else 1.0
            found.rows.append(
                Row(f"db: {name}", db, "light user", "heavy user", samples, big_heavy[name], scale)
            )
        if "list, a page 100 in" in big_heavy:
            found.rows.append(
                Row(
                    "db: list, heavy user",
                    db,
                    "first page",
                    "a page 100 in",
                    big_heavy["list, first page"],
                    big_heavy["list, a page 100 in"],
                )
            )
        found.rows.append(
            Row(
                "db: /api/admin/costs",
                db,
                "empty db",
                big,
                empty_admin,
                big_admin,
                ledger_big / max(1, ledger_small),
            )
        )
        found.rows += await without_user_index(
            http, database, url, light, heavy, big_light, big_heavy, count=count, db=db
        )
        found.plans += await plans(database, url, heavy, db=db)
    finally:
        await database.disconnect()
    return found


async def without_user_index(
    http: httpx.AsyncClient,
    database: Database,
    url: str,
    light: Sizes,
    heavy: Sizes,
    light_after: dict[str, list[float]],
    heavy_after: dict[str, list[float]],
    *,
    count: int,
    db: str,
) -> list[Row]:
    """`/api/me/costs` with migration 14's index dropped for the turn (before it), against the
    figures with it (after); the index is built again with the migration's own statements."""
    await database.execute("DROP INDEX ix_generations_user_started")
    try:
        before = {
            sizes.user: await timed_gets(
                http, "/api/me/costs", headers=token(sizes.user), params=NOVEMBER, count=count
            )
            for sizes in (light, heavy)
        }
    finally:
        dialect = sqlite.dialect() if is_sqlite(url) else postgresql.dialect()
        for statement in migrations._generations_by_user(dialect):
            await database.execute(statement)
    return [
        Row(
            f"db: /api/me/costs, {user} user",
            db,
            "before mig. 14",
            "after mig. 14",
            before[user],
            after["/api/me/costs"],
        )
        for user, after in (("light", light_after), ("heavy", heavy_after))
    ]


# --- the plans ----------------------------------------------------------------------------------


async def explain(database: Database, url: str, query: sa.Select[Any]) -> list[str]:
    """The plan's lines: `EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL."""
    if is_sqlite(url):
        compiled = query.compile(
            dialect=sqlite.dialect(paramstyle="named"),
            compile_kwargs={"render_postcompile": True},
        )
        params = {
            # As the app's UTCDateTime stores them.
            key: value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")
            if isinstance(value, datetime)
            else value
            for key, value in compiled.params.items()
        }
        rows = await database.fetch_all(f"EXPLAIN QUERY PLAN {compiled}", params)
        return [str(row[3]) for row in rows]
    compiled = query.compile(
        dialect=postgresql.dialect(), compile_kwargs={"render_postcompile": True}
    )
    sql = re.sub(r"%\((\w+)\)s", r":\1", str(compiled))
    rows = await database.fetch_all(f"EXPLAIN {sql}", dict(compiled.params))
    return [row[0] for row in rows]


def plan_summary(lines: list[str]) -> str:
    """The indexes a plan reads, and the tables it reads whole."""
    indexes = re.findall(
        r"(?:USING (?:COVERING )?INDEX|using|Index Scan on) (\w+)", "\n".join(lines)
    )
    # A table read whole: SQLite's SCAN (with an index too: it walks all of it), PostgreSQL's
    # Seq Scan. A SCAN of a subquery or CTE (the page, the path) reads only its own rows.
    whole = [
        m[1]
        for line in lines
        if (m := re.match(r"\s*(?:->\s*)?(?:SCAN|Seq Scan on) (\w+)", line)) and m[1] in TABLES
    ]
    text = ", ".join(dict.fromkeys(indexes)) or "none"
    if whole:
        text += "; reads whole: " + ", ".join(dict.fromkeys(whole))
    return text


async def plans(database: Database, url: str, heavy: Sizes, *, db: str) -> list[str]:
    shown = await database.fetch_one(
        "SELECT active_leaf_id, updated_at FROM conversations WHERE id = :id",
        {"id": heavy.conversation_id},
    )
    leaf = shown[0]
    month = (datetime(2026, 11, 1).date(), datetime(2026, 11, 30).date())
    middle = Position(datetime(2026, 11, 15, tzinfo=UTC), heavy.conversation_id)
    queries = {
        "list, first page": conversations_page(user_id="heavy", limit=51),
        "list, a later page": conversations_page(user_id="heavy", limit=51, after=middle),
        "conversation (GET /{id})": messages_with_usage(heavy.conversation_id, leaf),
        "replay of a finished reply": reply_with_usage(heavy.message_id, "heavy"),
        "history sent upstream": history_query(leaf, 20),
        "/api/me/costs": report_query(
            ReportRange(*month, ("day",), "heavy"),
            dialect=("sqlite" if is_sqlite(url) else "postgresql"),
        ),
        "/api/admin/costs": report_query(
            ReportRange(*month, ("day",)), dialect=("sqlite" if is_sqlite(url) else "postgresql")
        ),
    }
    found = []
    for name, query in queries.items():
        lines = await explain(database, url, query)
        found.append(f"{db:<10} {name:<28} {plan_summary(lines)}")
    return found


# --- the run ------------------------------------------------------------------------------------


def small_context_agents(workdir: Path) -> Path:
    """The shipped agents file, its chat agent allowing the small-context model too."""
    shipped = DEFAULT_AGENTS_FILE.read_text(encoding="utf-8")
    allowed = f'[chat]\nallowed_models = ["{SMALL_CONTEXT_MODEL}"]\n'
    path = workdir / "agents.toml"
    path.write_text(shipped.replace("[chat]\n", allowed, 1), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def database_url(kind: str, workdir: Path, admin_url: str | None) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'growth.db'}"
        return
    assert admin_url is not None
    async with fresh_database(admin_url, prefix="bench_growth") as url:
        yield url


async def one_database(kind: str, args: argparse.Namespace, admin_url: str | None) -> Findings:
    found = Findings()
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as workdir:
        procs = Processes(Path(workdir))
        try:
            async with database_url(kind, Path(workdir), admin_url) as url:
                upstream = procs.start(
                    "upstream", ["-m", "bench.fake_upstream", "--port", "{port}", "--directives"]
                )
                settings = {
                    "DATABASE_URL": url,
                    "ADMIN_TOKEN": ADMIN_TOKEN,
                    "LOG_FORMAT": "text",
                    "AGENTS_FILE": str(small_context_agents(Path(workdir))),
                }
                server = procs.ours(
                    f"ours-{kind}",
                    upstream,
                    auth=True,
                    settings=settings,
                )
                async with httpx.AsyncClient(
                    base_url=f"http://{HOST}:{server.port}", timeout=600
                ) as http:
                    cases = {
                        "conversation": lambda: long_conversation(
                            http, server, upstream, args, kind
                        ),
                        "reply": lambda: long_reply(http, server, args, kind),
                        "small-context": lambda: small_context(http, server, upstream, args, kind),
                        "database": lambda: big_database(http, url, args, kind),
                    }
                    for case in args.cases:
                        part = await cases[case]()
                        found.rows += part.rows
                        found.notes += part.notes
                        found.plans += part.plans
                        print(f"  {kind}: done {len(found.rows)} rows", file=sys.stderr, flush=True)
                procs.stop_all()  # before its database is dropped
        finally:
            procs.stop_all()
    return found


async def main_async(args: argparse.Namespace, admin_url: str | None) -> Findings:
    found = Findings()
    for kind in args.databases:
        part = await one_database(kind, args, admin_url)
        found.rows += part.rows
        found.notes += part.notes
        found.plans += part.plans
    return found


@contextlib.contextmanager
def postgres(args: argparse.Namespace) -> Iterator[str | None]:
    if "postgresql" not in args.databases:
        yield None
    elif args.postgres_url:
        yield args.postgres_url
    else:
        with throwaway_postgres() as (admin_url, version):
            print(f"growth: {version}", flush=True)
            yield admin_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.growth", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--turns", type=int, help="turns in one conversation (200)")
    parser.add_argument("--window", type=int, help="turns compared at each end (10)")
    parser.add_argument("--tokens", type=int, help="chunks of the long reply (4000)")
    parser.add_argument("--delay", type=float, default=0.001, help="s between its chunks (0.001)")
    parser.add_argument("--messages", type=int, help="messages in the big database (1,000,000)")
    parser.add_argument("--requests", type=int, help="timed requests per measurement (30)")
    parser.add_argument("--deep", type=int, default=100, help="pages in for the later page (100)")
    parser.add_argument(
        "--databases", default=",".join(DATABASES), help="sqlite, postgresql or both (both)"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"which cases, of {', '.join(CASES)} (all)"
    )
    parser.add_argument("--postgres-url", help="a PostgreSQL server instead of a throwaway one")
    parser.add_argument(
        "--quick", action="store_true", help="30 turns, 1,000 tokens, 20,000 messages, 10 requests"
    )
    args = parser.parse_args(argv)
    args.databases = [d for d in args.databases.split(",") if d]
    unknown = sorted(set(args.databases) - set(DATABASES))
    if unknown:
        parser.error(f"unknown database(s) {', '.join(unknown)}; use {', '.join(DATABASES)}")
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown or not args.cases:
        parser.error(f"unknown case(s) {', '.join(unknown)}; use {', '.join(CASES)}")
    defaults = (30, 10, 1000, 20_000, 10) if args.quick else (200, 10, 4000, 1_000_000, 30)
    for name, value in zip(
        ("turns", "window", "tokens", "messages", "requests"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.window = min(args.window, max(1, args.turns // 2))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain SIGTERM would skip the `finally` that stops the servers this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"growth: {', '.join(args.cases)}: {args.turns} turns, a reply of {args.tokens} tokens "
        f"{1000 * args.delay:.0f} ms apart, {args.messages:,} messages, {args.requests} requests "
        f"per measurement; {', '.join(args.databases)}; machine: "
        f"{os.cpu_count()} cores, {_cpu_model()}, "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    with postgres(args) as admin_url:
        found = asyncio.run(main_async(args, admin_url))
    print("\n" + table(found.rows))
    print("\n" + "\n".join(found.notes))
    if found.plans:  # the database case's
        print("\nplans (indexes read; tables read whole):")
        print("\n".join(found.plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
