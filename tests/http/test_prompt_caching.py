"""Prompt caching end to end, against the simulator's Anthropic-style cache: the breakpoints a
30-turn conversation sends, the reads and writes the ledger records, and what caching saved,
equal to what the prices say to the pico-dollar, per reply, per conversation and in the cost
reports; nothing for a model that caches by itself, nothing when the agent turns it off."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource

from app.agents.config import load_agents
from app.billing.budgets import prompt_token_bound, worst_case
from app.core.money import PICOS
from app.dev.simulator import Behaviour
from app.settings import ConfigError
from app.upstream.models_catalog import Pricing
from tests.support import SSE, local_client, read_sse, settled_generations

SONNET = "anthropic/claude-sonnet-4"
GPT4O = "openai/gpt-4o"
# Claude Sonnet 4's prices in the simulator's catalog, USD per token.
INPUT, READ, WRITE = Decimal("0.000003"), Decimal("0.0000003"), Decimal("0.00000375")
TOKEN = "admin-token-for-caching"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

# A coach's instructions, as long as real ones get: over the simulator's (and Claude's) minimum
# of 1,024 cacheable tokens by itself, so the first turn already writes the cache.
RULES = [
    "Listen first, and restate what the person asked before you answer it.",
    "Prefer one concrete next step to a list of ten possible ones.",
    "When you are unsure, say so plainly and say what would settle it.",
    "Keep examples short, specific and close to the person's own situation.",
    "Never invent facts about the person, their work or the people around them.",
    "If a question has a safety side, name it before anything else.",
    "Use plain words; explain a term of art the first time it comes up.",
    "Ask at most one clarifying question, and only when an answer depends on it.",
]
SYSTEM_PROMPT = " ".join(
    f"Rule {n}: {RULES[n % len(RULES)]} Apply it to every answer in this conversation."
    for n in range(1, 81)
)
TOPICS = [
    "how to give feedback to a colleague who keeps missing deadlines",
    "whether to take a new job with a longer commute but a better team",
    "preparing a short talk for a meetup about testing streaming servers",
    "a polite way to decline a meeting that has no agenda",
    "planning a week when two projects are both urgent",
]


def user_message(turn: int) -> str:
    """A realistic message: a few sentences about one of a handful of topics, each one new."""
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Turn {turn}. I keep thinking about {topic}. Last time you suggested something and I "
        "tried part of it, but it did not quite work the way I hoped, mostly because the other "
        f"people involved had their own plans. What would you do next, in my place, on day {turn}?"
    )


def agents_file(tmp_path: Path, *, model: str = SONNET, extra: str = "", history: int = 80) -> str:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[chat]
model = "{model}"
max_tokens = 400
history_messages = {history}
system_prompt = \"\"\"{SYSTEM_PROMPT}\"\"\"
{extra}

[coach]
model = "{model}"
max_tokens = 256
system_prompt = "Coach kindly."
""",
        encoding="utf-8",
    )
    return str(path)


def chat(http: httpx.Client, message: str, conversation_id: str | None) -> list[SSE]:
    body = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    return read_sse(http, "POST", "/api/chat", json=body)


def converse(http: httpx.Client, turns: int) -> tuple[str, list[list[SSE]]]:
    conversation_id, replies = None, []
    for turn in range(1, turns + 1):
        events = chat(http, user_message(turn), conversation_id)
        assert events[-1].event == "done", events[-1]
        conversation_id = events[0].data["conversation_id"]
        replies.append(events)
    assert conversation_id is not None
    return conversation_id, replies


def marked(body: dict) -> list[int]:
    """The indexes of a request's messages that carry a breakpoint; every one well formed."""
    found = []
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        if isinstance(content, list):
            controls = [part.get("cache_control") for part in content if "cache_control" in part]
            assert controls == [{"type": "ephemeral"}]
            found.append(index)
    return found


def text(message: dict) -> str:
    """A message's text, marked (a list of parts) or not."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def saved(cached: int, written: int) -> int:
    amount = cached * (INPUT - READ) - written * (WRITE - INPUT)
    assert amount * PICOS == int(amount * PICOS)  # exact: no rounding hides a difference
    return int(amount * PICOS)


def usd(picos: int) -> float:
    return float(Decimal(picos) / PICOS)


def test_thirty_turns_send_breakpoints_record_reads_and_writes_and_what_they_saved(
    start_server, fake, database, tmp_path
):
    server = start_server(agents_file=agents_file(tmp_path), admin_token=TOKEN)
    with local_client(server.url, timeout=30) as http:
        conversation_id, replies = converse(http, 30)
        conversation = http.get(f"/api/conversations/{conversation_id}").json()
        today = datetime.now(UTC).date().isoformat()
        params = {"from": today, "to": today, "group_by": "day,model"}
        report = http.get("/api/admin/costs", params=params, headers=ADMIN).json()
        report_csv = http.get(
            "/api/admin/costs", params={**params, "format": "csv"}, headers=ADMIN
        ).text

    bodies = [request["body"] for request in fake.requests]
    assert len(bodies) == 30
    for turn, body in enumerate(bodies, 1):
        count = len(body["messages"])
        assert count == 2 * turn  # the whole history went: nothing cut
        # The system prompt, the message the last turn ended with, and the new message.
        assert marked(body) == ([0, 1] if turn == 1 else [0, count - 3, count - 1])
        # What reaches the model is the same text: only the marks are new.
        assert body["messages"][-1]["content"][0]["text"] == user_message(turn)

    generations = sorted(fake.generations.values(), key=lambda g: int(g.id.rsplit("-", 1)[1]))
    first = generations[0]
    assert (first.cached_tokens, first.cache_write_tokens) == (0, first.prompt_tokens)
    for before, after in itertools.pairwise(generations):
        # Each turn reads exactly what the turn before it wrote, and writes the rest.
        assert after.cached_tokens == before.cached_tokens + before.cache_write_tokens
        assert after.cached_tokens + after.cache_write_tokens == after.prompt_tokens

    total = 0
    pricing = Pricing(input=INPUT * 10**6, output=Decimal(15), request=None, image=None)
    for events, generation, body in zip(replies, generations, bodies, strict=True):
        message_id = events[0].data["message_id"]
        [row] = settled_generations(database, message_id)
        assert (row["cached_tokens"], row["cache_write_tokens"]) == (
            generation.cached_tokens,
            generation.cache_write_tokens,
        )
        expected = saved(generation.cached_tokens, generation.cache_write_tokens)
        assert row["cache_saved_picousd"] == expected
        assert events[-1].data["cache_saved_usd"] == usd(expected)
        total += expected
        # The budget's worst case is a cold cache: every prompt token at the full input price.
        sent = {key: value for key, value in body.items() if key != "stream"}
        [reservation] = database.query(
            "SELECT reserved_picousd FROM budget_reservations WHERE id = :id", id=message_id
        )
        assert reservation["reserved_picousd"] == worst_case(
            prompt_tokens=prompt_token_bound(sent), max_tokens=400, pricing=pricing
        )
    assert saved(generations[0].cached_tokens, generations[0].cache_write_tokens) < 0
    assert total > 0

    assert conversation["total_cache_saved_usd"] == usd(total)
    replies_saved = [
        m["cache_saved_usd"] for m in conversation["messages"] if m["role"] == "assistant"
    ]
    assert replies_saved == [r[-1].data["cache_saved_usd"] for r in replies]
    assert all(
        m["cache_saved_usd"] is None for m in conversation["messages"] if m["role"] == "user"
    )

    exact = str((Decimal(total) / PICOS).quantize(Decimal("0.000000000001")))
    [row] = [r for r in report["rows"] if r["model"] == SONNET]
    assert row["cache_saved_usd"] == exact and report["totals"]["cache_saved_usd"] == exact
    table = list(csv.DictReader(io.StringIO(report_csv, newline="")))
    assert [r["cache_saved_usd"] for r in table if r["model"] == SONNET] == [exact]


def test_once_the_oldest_turns_are_left_out_they_go_in_steps_and_the_prefix_is_still_read(
    start_server, fake, database, tmp_path
):
    """With `history_messages = 6`, the history's start moves two turns at once (turns 5 and
    7: app/replies/window.py), never one turn per turn. The turn that moves it reads only the
    system prompt and writes its whole prompt; the turn after reads that (a breakpoint is
    written only where the next turn sends the same prefix, read only where the last one did)."""
    server = start_server(agents_file=agents_file(tmp_path, history=6))
    with local_client(server.url, timeout=30) as http:
        _, replies = converse(http, 8)
    sent = [[m["role"] for m in r["body"]["messages"]] for r in fake.requests]
    assert [len(roles) - 2 for roles in sent] == [0, 2, 4, 6, 4, 6, 4, 6]  # history: <= 6
    assert all(roles[1] == "user" for roles in sent)  # whole turns
    firsts = [text(r["body"]["messages"][1]) for r in fake.requests]
    assert firsts[4] == firsts[5] == text(fake.requests[2]["body"]["messages"][-1])  # turn 3's
    assert firsts[6] == firsts[7] == text(fake.requests[4]["body"]["messages"][-1])  # turn 5's
    assert [marked(r["body"]) for r in fake.requests] == [
        [0, 1],  # writes the system prompt and its message
        [0, 1, 3],  # reads turn 1's, writes its own
        [0, 3, 5],
        [0, 5],  # reads turn 3's; the next turn's start moves: nothing written
        [0, 5],  # the start moved: reads the system prompt, writes its own
        [0, 5],  # reads turn 5's
        [0, 5],
        [0, 5],
    ]
    generations = sorted(fake.generations.values(), key=lambda g: int(g.id.rsplit("-", 1)[1]))
    system = generations[0].cache_write_tokens - len(user_message(1).split())
    for before, after in ((2, 3), (4, 5), (6, 7)):
        assert generations[after].cached_tokens == generations[before].prompt_tokens
        assert generations[after].cache_write_tokens == 0
    for moved in (4, 6):
        assert generations[moved].cached_tokens == system
        assert generations[moved].cache_write_tokens == generations[moved].prompt_tokens - system
    for events, generation in zip(replies, generations, strict=True):
        [row] = settled_generations(database, events[0].data["message_id"])
        assert row["cache_saved_picousd"] == saved(
            generation.cached_tokens, generation.cache_write_tokens
        )


def test_a_reply_stopped_before_its_usage_takes_the_saving_from_the_generation_record(
    start_server, fake, database, tmp_path
):
    """No usage chunk (stopped): the cost and OpenRouter's `cache_discount` come from the
    generation record, and the discount is the saving (a first turn: a write, negative)."""
    server = start_server(agents_file=agents_file(tmp_path))
    fake.enqueue(Behaviour(tokens=["word "] * 300, delay=0.02))
    with local_client(server.url, timeout=30) as http:
        reply = http.post("/api/chat/messages", json={"message": user_message(1)}).json()
        with http.stream("GET", reply["stream_url"]) as response:
            for sse in EventSource(response).iter_sse():
                if sse.event == "delta":
                    http.post(f"/api/messages/{reply['message_id']}/stop")
                    break
    [row] = settled_generations(database, reply["message_id"])
    [generation] = fake.generations.values()
    assert row["cost_source"] == "generation" and generation.cache_write_tokens > 0
    discount = int(generation.cache_discount * PICOS)
    assert discount == saved(0, generation.cache_write_tokens) < 0
    assert row["cache_discount_picousd"] == row["cache_saved_picousd"] == discount


def test_a_model_that_caches_by_itself_gets_no_breakpoints(start_server, fake, database, tmp_path):
    server = start_server(agents_file=agents_file(tmp_path, model=GPT4O))
    with local_client(server.url, timeout=30) as http:
        _, replies = converse(http, 3)
    assert [marked(request["body"]) for request in fake.requests] == [[], [], []]
    assert all(isinstance(m["content"], str) for r in fake.requests for m in r["body"]["messages"])
    for events in replies:
        [row] = settled_generations(database, events[0].data["message_id"])
        assert (row["cached_tokens"], row["cache_saved_picousd"]) == (0, 0)
        assert events[-1].data["cache_saved_usd"] == 0.0


def test_turned_off_in_the_agents_file_no_breakpoints_are_sent(
    start_server, fake, database, tmp_path
):
    server = start_server(agents_file=agents_file(tmp_path, extra="prompt_caching = false"))
    with local_client(server.url, timeout=30) as http:
        _, replies = converse(http, 3)
    assert [marked(request["body"]) for request in fake.requests] == [[], [], []]
    for events in replies:
        [row] = settled_generations(database, events[0].data["message_id"])
        assert (row["cached_tokens"], row["cache_write_tokens"]) == (0, 0)
        assert row["cache_saved_picousd"] == 0


def test_turned_off_by_the_agents_override_no_breakpoints_are_sent(start_server, fake, tmp_path):
    server = start_server(agents_file=agents_file(tmp_path), admin_token=TOKEN)
    with local_client(server.url, timeout=30) as http:
        converse(http, 2)
        assert [marked(r["body"]) for r in fake.requests] == [[0, 1], [0, 1, 3]]
        refused = http.put("/api/catalog/agents/chat", json={"prompt_caching": "no"}, headers=ADMIN)
        assert refused.status_code == 422
        assert refused.json()["error"]["message"] == "`prompt_caching` must be true or false"
        changed = http.put(
            "/api/catalog/agents/chat", json={"prompt_caching": False}, headers=ADMIN
        )
        assert changed.status_code == 200, changed.text
        fake.reset()
        converse(http, 2)
        assert [marked(r["body"]) for r in fake.requests] == [[], []]


@pytest.mark.parametrize("extra", ["prompt_caching = 0", 'prompt_caching = "false"'])
def test_the_agents_file_takes_true_or_false_only(tmp_path, extra):
    with pytest.raises(ConfigError, match="prompt_caching"):
        load_agents(Path(agents_file(tmp_path, extra=extra)))


def test_a_model_that_caches_by_itself_gets_the_steps_too(start_server, fake, tmp_path):
    """No breakpoints, but the same stable history start: a provider that caches prefixes by
    itself reads it as well."""
    server = start_server(agents_file=agents_file(tmp_path, model=GPT4O, history=6))
    with local_client(server.url, timeout=30) as http:
        converse(http, 8)
    assert [len(r["body"]["messages"]) - 2 for r in fake.requests] == [0, 2, 4, 6, 4, 6, 4, 6]
    assert [marked(request["body"]) for request in fake.requests] == [[]] * 8
