"""What prompt caching saves on a long conversation (issue #34), at the simulator's prices.

    .venv/bin/python -m bench.caching                  # 30 turns, the whole history sent
    .venv/bin/python -m bench.caching --history 20     # the agents file's default window

A conversation of `--turns` turns of realistic messages (a person's question of 50-90 words, a
reply of 180-260) on `anthropic/claude-sonnet-4` (the simulator's model that caches where a
request marks breakpoints: input $3/M, cache reads $0.30/M, writes $3.75/M, output $15/M), once
with prompt caching on and once off (`prompt_caching = false`), each against a real server of
ours (a thread, SQLite) in front of the simulator, which caches as Anthropic does
(app/dev/simulator.py: a 1,024-token minimum, reads at breakpoints it has seen).

The prompt cost of each turn is what its prompt tokens cost: at the input price, less what the
simulator's cache discount says (reads at the read price, writes at the write price). The
ledger's own figures (the cost, `cache_saved_picousd`) are read back beside it: the saving the
server reports must equal the difference the prices make, to the pico-dollar. Last, what
marking the breakpoints costs per reply: `with_breakpoints` on the last turn's request, timed.
No timing is a verdict here: docs/caching.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import timeit
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from app.core.money import PICOS
from app.dev.simulator import Behaviour, FakeOpenRouter
from app.dev.threaded_server import ThreadedServer
from app.main import create_app
from app.replies.breakpoints import with_breakpoints
from app.settings import Settings

MODEL = "anthropic/claude-sonnet-4"
INPUT = Decimal("0.000003")  # the simulator's input price of MODEL, USD per token
SYSTEM_PROMPT = (
    "You are a helpful, concise assistant. Answer in plain language and say so when you are unsure."
)
# Sentences a person and a model might write, drawn from at random (seeded): plain prose of
# the lengths real turns have, not a word repeated to length.
ASKED = [
    "I have been trying to plan the next release of our small web service.",
    "The team is four people and two of them are new this month.",
    "We keep missing the dates we set, usually by a week or two.",
    "Part of the problem is that reviews wait for days before anyone looks at them.",
    "I would like a process that does not feel like bureaucracy to the new people.",
    "Last time you suggested shorter iterations, and that helped a little.",
    "What worries me is the database migration we have to run in production.",
    "Could you say what you would check first, and what you would leave for later?",
    "I am also unsure how much to tell the customers before it is done.",
    "Please keep it practical: we have no time for a big change of tools.",
]
ANSWERED = [
    "A release that slips by a week or two usually slips at the same place every time.",
    "Look at the last three releases and write down where the waiting happened.",
    "Reviews that wait for days are a queue problem more than a people problem.",
    "One rule that works for small teams is that nobody starts new work while a review waits.",
    "New people learn the code fastest by reviewing, so pair each of them with a regular.",
    "For the migration, rehearse it on a copy of production data, and time it.",
    "Write the rollback before the migration, and try the rollback too.",
    "Tell customers what will change for them and when, not how it works inside.",
    "Keep the iteration short enough that a missed date costs days, not weeks.",
    "If one thing must wait, let it be the dashboard: the data matters more than its picture.",
    "Check that the backups restore, not only that they run.",
    "A short written plan that everyone has read beats a long one that nobody has.",
]


def sentences(rng: random.Random, pool: list[str], words: tuple[int, int]) -> str:
    target = rng.randint(*words)
    chosen: list[str] = []
    while sum(len(s.split()) for s in chosen) < target:
        chosen.append(rng.choice(pool))
    return " ".join(chosen)


def agents_file(directory: Path, *, caching: bool, history: int) -> Path:
    path = directory / "agents.toml"
    path.write_text(
        f"""
[chat]
model = "{MODEL}"
max_tokens = 1024
history_messages = {history}
prompt_caching = {"true" if caching else "false"}
system_prompt = "{SYSTEM_PROMPT}"

[coach]
model = "{MODEL}"
system_prompt = "Coach kindly."
""",
        encoding="utf-8",
    )
    return path


def converse(*, caching: bool, turns: int, history: int, seed: int) -> dict[str, Any]:
    """One conversation against a server of ours: its prompt cost, cost and saving."""
    rng = random.Random(seed)
    fake = FakeOpenRouter()
    with tempfile.TemporaryDirectory() as tmp, ThreadedServer(fake.app) as upstream:
        directory = Path(tmp)
        settings = Settings(
            _env_file=None,
            app_env="test",
            openrouter_api_key="sk-or-bench",
            openrouter_base_url=f"{upstream.url}/api/v1",
            openrouter_model=MODEL,
            database_url=f"sqlite:///{directory / 'bench.db'}",
            agents_file=str(agents_file(directory, caching=caching, history=history)),
            auto_titles=False,
        )
        with (
            ThreadedServer(create_app(settings)) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            conversation_id = None
            for _ in range(turns):
                reply = sentences(rng, ANSWERED, (180, 260)).split(" ")
                fake.enqueue(Behaviour(tokens=[reply[0], *(" " + w for w in reply[1:])]))
                body: dict[str, Any] = {
                    "message": sentences(rng, ASKED, (50, 90)),
                    "stream": False,
                }
                if conversation_id:
                    body["conversation_id"] = conversation_id
                answer = http.post("/api/chat", json=body)
                answer.raise_for_status()
                conversation_id = answer.json()["conversation_id"]
            last_request = fake.requests[-1]["body"]
        with sqlite3.connect(directory / "bench.db") as db:
            cost, saved = db.execute(
                "SELECT SUM(cost_picousd), SUM(cache_saved_picousd) FROM generations"
            ).fetchone()
    generations = list(fake.generations.values())
    prompt_tokens = sum(g.prompt_tokens for g in generations)
    full = prompt_tokens * INPUT
    prompt_cost = full - sum((g.cache_discount for g in generations), Decimal(0))
    return {
        "caching": caching,
        "turns": turns,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": sum(g.cached_tokens for g in generations),
        "cache_write_tokens": sum(g.cache_write_tokens for g in generations),
        "prompt_cost_usd": str(prompt_cost),
        "prompt_cost_at_full_price_usd": str(full),
        "ledger_cost_usd": str(Decimal(cost) / PICOS),
        "ledger_cache_saved_usd": str(Decimal(saved or 0) / PICOS),
        "last_request": last_request,
    }


def marking_cost(request: dict[str, Any]) -> float:
    """Microseconds `with_breakpoints` takes on a request's messages (unmarked), best of 5."""
    plain = [
        {**m, "content": m["content"][0]["text"]} if isinstance(m["content"], list) else m
        for m in request["messages"]
    ]
    runs = 2000
    best = min(
        timeit.repeat(
            lambda: with_breakpoints(plain, reads=True, writes=True), number=runs, repeat=5
        )
    )
    return best / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--history", type=int, default=60, help="the agent's history_messages")
    parser.add_argument("--seed", type=int, default=34)
    args = parser.parse_args()
    on = converse(caching=True, turns=args.turns, history=args.history, seed=args.seed)
    off = converse(caching=False, turns=args.turns, history=args.history, seed=args.seed)
    assert on["prompt_tokens"] == off["prompt_tokens"], "the two conversations differ"
    on_cost, off_cost = Decimal(on["prompt_cost_usd"]), Decimal(off["prompt_cost_usd"])
    saved = off_cost - on_cost
    # The server's own figure: the sum of what each generation's prices say it saved.
    assert Decimal(on["ledger_cache_saved_usd"]) == saved, (on["ledger_cache_saved_usd"], saved)
    messages = len(on["last_request"]["messages"])
    result = {
        "model": MODEL,
        "turns": args.turns,
        "history_messages": args.history,
        "messages_in_last_request": messages,
        "prompt_tokens": on["prompt_tokens"],
        "cached_tokens": on["cached_tokens"],
        "cache_write_tokens": on["cache_write_tokens"],
        "prompt_cost_without_caching_usd": str(off_cost),
        "prompt_cost_with_caching_usd": str(on_cost),
        "prompt_cost_ratio": float(on_cost / off_cost),
        "total_cost_without_caching_usd": off["ledger_cost_usd"],
        "total_cost_with_caching_usd": on["ledger_cost_usd"],
        "cache_saved_usd_reported": on["ledger_cache_saved_usd"],
        "marking_us_per_reply": round(marking_cost(on["last_request"]), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
