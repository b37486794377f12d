"""A local simulator of OpenRouter's API: the fake upstream of the tests, benchmarks and dev mode.

It speaks the wire format in `docs/openrouter.md` (comment lines, reasoning and its details of
each type, citations, a finish chunk, a usage chunk after it, `[DONE]`, `X-Generation-Id` or
not, every error shape) and can be told to misbehave in every way the real one does. Each
`/chat/completions` request takes the next queued `Behaviour` (or the default one); the
simulator records the requests it received and the generations it served, so tests can check
what went upstream and what was billed.

Its replies say that they come from the simulator, so nobody mistakes it for a model.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from io import BytesIO
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.dev.simulator_models import simulated_models

# In the last user message, asks for a long reply at a pace (`[[sim tokens=300 delay=0.1]]`):
# how a person tries stop and resume by hand against `scripts/serve`. Replies a test or the
# benchmark scripted (Behaviour.tokens) ignore it.
# `think=K` adds K reasoning chunks before the answer, to watch the page's thinking block.
DIRECTIVE = re.compile(
    r"\[\[sim(?:\s+tokens=(?P<tokens>\d{1,5}))?(?:\s+delay=(?P<delay>\d+(?:\.\d+)?))?"
    r"(?:\s+think=(?P<think>\d{1,4}))?\s*\]\]"
)

# Per-token prices the simulator bills at (USD) for a model its catalog does not price (each
# model it lists is billed at its own prices), so costs look like real ones.
PROMPT_PRICE = Decimal("0.00000015")
COMPLETION_PRICE = Decimal("0.0000006")
# What the simulator counts as one token when it checks a context window: a word or a single
# other character, as a BPE tokenizer would at least. Never more than a byte each, so a request
# the server fitted with its byte bound (app/billing/budgets.py) always fits here.
TOKEN = re.compile(r"\w+|[^\w\s]")
TOKENS_PER_MESSAGE = 4
# What an attachment counts in the prompt's tokens here: an image (OpenAI's 512-pixel-tile
# count for a mid-sized one), a PDF page (its text, parsed or read natively).
IMAGE_TOKENS = 765
PDF_PAGE_TOKENS = 500
# OpenRouter's file-parser engines, USD a page: its default for a model that does not read
# files (no plugin in the request) is mistral-ocr.
PARSER_PRICES = {"cloudflare-ai": Decimal(0), "mistral-ocr": Decimal("0.002"), "native": None}
DEFAULT_PARSER = "mistral-ocr"


# What `GET /key` answers, in OpenRouter's shape (USD; `limit` null would mean no limit).
KEY_DATA: dict[str, Any] = {
    "label": "sk-or-v1-sim...ator",
    "limit": 100.0,
    "usage": 12.5,
    "limit_remaining": 87.5,
    "is_free_tier": False,
    "rate_limit": {"requests": 1000, "interval": "10s"},
}


@dataclass
class Behaviour:
    """How the simulator answers one chat completion request."""

    tokens: list[str] | None = None  # None: a reply derived from the last user message
    delay: float = 0.0  # seconds between chunks
    headers_delay: float = 0.0  # seconds before the response starts
    gate: threading.Event | None = None  # if set: the response starts once it opens (30 s at most)
    status: int = 200  # non-200: an error response before any stream
    error_body: dict[str, Any] | None = None  # overrides the standard error body
    retry_after: str | None = None
    error_after: int | None = None  # in-band error chunk after this many content chunks
    error_code: int | str = 502
    error_with_choices: bool = True
    malformed_after: int | None = None  # a data line that is not JSON
    drop_after: int | None = None  # close the connection abruptly
    stall_after: int | None = None  # stop sending, keep the connection open
    # Stop sending after this many content chunks until `resume` is set, then carry on: a test
    # acts mid-reply (kills a process, a Redis) with no timing to hope on.
    pause_after: int | None = None
    resume: threading.Event | None = None
    no_usage: bool = False  # end without a usage chunk (and without [DONE])
    usage_in_choice_chunk: bool = False  # usage inside a chunk that still has a choice
    # What follows the content, in this order, instead of finish, usage, [DONE]: any of
    # "finish", "usage", "error", "error+usage" (an error chunk carrying usage, as a free model
    # at its token limit sends it), "done" ([DONE]). The stream closes after the last one.
    ending: tuple[str, ...] | None = None
    comments: bool = True  # ": OPENROUTER PROCESSING" lines between chunks
    # Seconds of ": OPENROUTER PROCESSING" comments, one each `processing_interval`, before the
    # first data chunk (a long queue, a reasoning model thinking out of sight).
    processing: float = 0.0
    processing_interval: float = 0.5
    generation_header: bool = True  # False: no X-Generation-Id, as most recorded streams
    # Reasoning chunks before the content, as Claude streams them: `delta.reasoning` and a
    # `reasoning.text` fragment of block 0 (the last fragment carries the signature).
    reasoning: list[str] = field(default_factory=list)
    reasoning_at: dict[int, list[str]] = field(default_factory=dict)  # before content chunk i
    # Details sent as they are in one chunk of their own after `reasoning`, with no readable
    # `delta.reasoning` (o3's `reasoning.encrypted`, a `reasoning.summary`).
    reasoning_details: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)  # with the last content
    model: str | None = None  # the answering model; default: the first requested one
    cost: Decimal | None = None  # default: priced from the token counts
    finish_reason: str = "stop"
    is_byok: bool = False
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    upstream_cost: Decimal | None = None  # cost_details.upstream_inference_cost


def error_behaviour(kind: str) -> Behaviour:
    """An error response before the stream, in the shape OpenRouter sends for `kind`."""
    shapes: dict[str, tuple[int, str, dict[str, Any], str | None]] = {
        "in_flight_budget": (
            402,
            "Too many requests in flight for this key's remaining credits",
            {"limit_source": "openrouter_in_flight_budget"},
            "1",
        ),
        "insufficient_credits": (
            402,
            "Insufficient credits. Add more using https://openrouter.ai/credits",
            {},
            None,
        ),
        "moderation": (
            403,
            'openai/gpt-4o requires moderation. Your input was flagged for "violence": '
            "SECRET FLAGGED TEXT",
            {
                "reasons": ["violence", "harassment"],
                "flagged_input": "SECRET FLAGGED TEXT",
                "provider_name": "OpenAI",
                "model_slug": "openai/gpt-4o",
            },
            None,
        ),
        "timeout": (408, "Request timed out", {}, None),
        "provider_down": (
            502,
            "Provider returned error",
            {"provider_name": "Simulator", "raw": "upstream connect error"},
            None,
        ),
        "no_provider": (
            503,
            "No allowed providers are available for the selected model",
            {"provider_name": "Simulator"},
            None,
        ),
    }
    status, message, metadata, retry_after = shapes[kind]
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        error["metadata"] = metadata
    return Behaviour(status=status, error_body={"error": error}, retry_after=retry_after)


def context_error(window: int, requested: int, text: int, output: int) -> Behaviour:
    """OpenRouter's 400 for a request over the model's context window, word for word."""
    message = (
        f"This endpoint's maximum context length is {window} tokens. However, you requested "
        f"about {requested} tokens ({text} of text input, {output} in the output). Please "
        'reduce the length of either one, or use the "middle-out" transform to compress your '
        "prompt automatically."
    )
    error = {"code": 400, "message": message, "metadata": {"provider_name": "Simulator"}}
    return Behaviour(status=400, error_body={"error": error})


def text_of(content: Any) -> str:
    """A message's text: its content, or its text parts' joined (a part's `cache_control` is
    no token of the prompt)."""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


@dataclass(frozen=True)
class Media:
    """What a request's images and PDFs count: prompt tokens, and USD beside them."""

    tokens: int = 0
    cost: Decimal = Decimal(0)
    images: int = 0
    pages: int = 0


def read_media(body: dict[str, Any], listed: dict[str, Any]) -> Media | Response:
    """The request's `image_url` and `file` parts as OpenRouter bills them: an image in the
    prompt's tokens and at the model's per-image price; a PDF's pages in the prompt's tokens,
    and, for a model that does not read files, its parser's price a page (the `file-parser`
    plugin's engine, else OpenRouter's default). An image for a model without image input is
    OpenRouter's 404; a part it cannot decode, its 400."""
    modalities = (listed.get("architecture") or {}).get("input_modalities") or [
        "text",
        "image",
        "file",
    ]
    images = pages = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                if "image" not in modalities:
                    return JSONResponse(
                        {
                            "error": {
                                "code": 404,
                                "message": "No endpoints found that support image input",
                            }
                        },
                        status_code=404,
                    )
                images += 1
            elif kind == "file":
                counted = _pdf_pages(part.get("file") or {})
                if counted is None:
                    message = "the file part is not a base64 PDF data URL"
                    return JSONResponse(
                        {"error": {"code": 400, "message": message}}, status_code=400
                    )
                pages += counted
    engine = next(
        (
            (p.get("pdf") or {}).get("engine")
            for p in body.get("plugins") or []
            if isinstance(p, dict) and p.get("id") == "file-parser"
        ),
        None,
    )
    parser_price = None if "file" in modalities else PARSER_PRICES.get(engine or DEFAULT_PARSER)
    image_price = Decimal(str((listed.get("pricing") or {}).get("image") or 0))
    return Media(
        tokens=images * IMAGE_TOKENS + pages * PDF_PAGE_TOKENS,
        cost=images * image_price + pages * (parser_price or Decimal(0)),
        images=images,
        pages=pages,
    )


def _pdf_pages(file: dict[str, Any]) -> int | None:
    # Imported here: app.main imports the simulator, and pypdf (with the Pillow it imports)
    # would add to every process's memory at start-up (app/http/media.py says how much).
    from pypdf import PdfReader

    data = file.get("file_data")
    prefix = "data:application/pdf;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        return None
    try:
        return len(PdfReader(BytesIO(base64.b64decode(data[len(prefix) :], validate=True))).pages)
    except Exception:  # pypdf raises many kinds on a malformed file; base64 a ValueError
        return None


def prompt_tokens_of(messages: list[dict[str, Any]]) -> int:
    """The simulator's token count of a request's messages (see TOKEN)."""
    return sum(
        len(TOKEN.findall(json.dumps(text_of(m.get("content")), ensure_ascii=False)))
        + TOKENS_PER_MESSAGE
        for m in messages
        if isinstance(m, dict)
    )


def _marked(message: Any) -> bool:
    """Whether a message carries a `cache_control` breakpoint on one of its content parts."""
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("cache_control") for part in content
    )


@dataclass(frozen=True)
class CacheUse:
    """What a request read from and wrote to the prompt cache, in billed prompt tokens."""

    read: int = 0
    written: int = 0


class PromptCache:
    """Anthropic's prompt caching as the wire doc describes it, for models with a cache-read
    price: a request's prefix up to each of its `cache_control` breakpoints (at most
    MAX_BREAKPOINTS) is cached once it has at least `min_tokens` tokens, for `ttl` seconds
    (refreshed when read); the longest cached one is read, and the rest up to the last
    breakpoint written. No breakpoint, no caching (the 20-block lookback is not modelled)."""

    MAX_BREAKPOINTS = 4

    def __init__(self, *, min_tokens: int = 1024, ttl: float = 300.0) -> None:
        self.min_tokens = min_tokens
        self.ttl = ttl
        self._entries: dict[tuple[str, str], float] = {}  # (model, prefix digest) -> expiry
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def use(self, model: str, messages: list[dict[str, Any]]) -> CacheUse:
        digest = hashlib.sha256()
        used = 0
        prefixes: list[tuple[str, int]] = []  # (digest, tokens) at each breakpoint
        for message in messages:
            if not isinstance(message, dict):
                continue
            text = text_of(message.get("content"))
            digest.update(json.dumps([message.get("role"), text]).encode())
            used += len(_words(text))
            if _marked(message):
                prefixes.append((digest.hexdigest(), used))
        now = time.monotonic()
        with self._lock:
            read = 0
            for key, tokens in prefixes:
                expiry = self._entries.get((model, key))
                if expiry is not None and expiry > now:
                    read = max(read, tokens)
            for key, tokens in prefixes:
                if tokens >= self.min_tokens:
                    self._entries[(model, key)] = now + self.ttl
        last = prefixes[-1][1] if prefixes else 0
        written = last - read if last >= self.min_tokens else 0
        return CacheUse(read=read, written=max(0, written))


@dataclass
class Generation:
    id: str
    model: str
    prompt_tokens: int
    prices: tuple[Decimal, Decimal] = (PROMPT_PRICE, COMPLETION_PRICE)  # USD per token
    # USD per token read from and written to the prompt cache (the prompt price when the
    # catalog has none), and what this generation read and wrote.
    cache_prices: tuple[Decimal, Decimal] | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    # What its images (at the model's per-image price) and its PDFs' parsing cost, USD.
    media_cost: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    finish_reason: str | None = None
    cancelled: bool = False
    streamed_usage: bool = False
    # Like OpenRouter's, the record is only served (else 404) once the generation is over: a
    # lookup never sees a cost still growing.
    ended: bool = False

    @property
    def cache_discount(self) -> Decimal:
        """OpenRouter's `cache_discount`: what the cache saved, negative on writes."""
        prompt = self.prices[0]
        read, write = self.cache_prices or (prompt, prompt)
        return self.cached_tokens * (prompt - read) - self.cache_write_tokens * (write - prompt)


def _prices(listed: dict[str, Any]) -> tuple[Decimal, Decimal]:
    """A listed model's (prompt, completion) prices per token; the simulator's own for one
    it does not list or price (free, unknown, the router's "-1")."""
    pricing = listed.get("pricing") or {}
    try:
        prompt, completion = Decimal(pricing["prompt"]), Decimal(pricing["completion"])
    except (KeyError, TypeError, ArithmeticError):
        return PROMPT_PRICE, COMPLETION_PRICE
    if prompt < 0 or completion < 0 or not (prompt.is_finite() and completion.is_finite()):
        return PROMPT_PRICE, COMPLETION_PRICE
    return prompt, completion


def _cache_prices(listed: dict[str, Any]) -> tuple[Decimal, Decimal] | None:
    """A listed model's (cache read, cache write) prices per token, None when it has no cache
    read price; a missing write price is the prompt price."""
    pricing = listed.get("pricing") or {}
    try:
        read = Decimal(pricing["input_cache_read"])
        write = Decimal(pricing.get("input_cache_write") or pricing["prompt"])
    except (KeyError, TypeError, ArithmeticError):
        return None
    return (read, write) if read >= 0 and write >= 0 else None


def _reasoning_tokens(behaviour: Behaviour) -> int:
    """One token per reasoning chunk: billed as output, counted apart in the usage details."""
    return len(behaviour.reasoning) + sum(len(texts) for texts in behaviour.reasoning_at.values())


def _text_detail(
    text: str, generation: Generation, *, signed: bool = True, index: int = 0
) -> dict[str, Any]:
    return {
        "type": "reasoning.text",
        "text": text,
        "signature": f"sig-{generation.id}-{index}" if signed else None,
        "id": None,
        "format": "anthropic-claude-v1",
        "index": index,
    }


def _words(text: str) -> list[str]:
    return [word for word in text.split() if word]


def default_reply(messages: list[dict[str, Any]]) -> list[str]:
    last_user = next(
        (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
    )
    said = " ".join(_words(text_of(last_user))[:40]) or "nothing"
    text = (
        "[simulated reply] This answer comes from the local OpenRouter simulator, not a model. "
        f"You said: {said}"
    )
    parts = text.split(" ")
    return [parts[0], *(" " + part for part in parts[1:])]


def sample(schema: Any) -> Any:
    """A value that satisfies a JSON schema of the usual kinds (what structured outputs and tool
    parameters use): every property of an object, the first of an enum, anyOf or oneOf."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return sample(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {name: sample(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"})]
    return {
        "string": "simulated",
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "null": None,
    }.get(kind, "simulated")


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


def tool_call(body: dict[str, Any], number: int) -> ToolCall | None:
    """The call a request with `tools` gets, unless it says `tool_choice: none` or its last
    message is a tool's result (then the reply is text that quotes it): the tool `tool_choice`
    names, else the first, with arguments that satisfy its parameters' schema."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    messages = body.get("messages") or []
    choice = body.get("tool_choice")
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    tool = next((t for t in tools if t.get("function", {}).get("name") == named), tools[0])
    function = tool.get("function") or {}
    arguments = json.dumps(sample(function.get("parameters") or {"type": "object"}))
    return ToolCall(id=f"call_sim_{number}", name=str(function.get("name")), arguments=arguments)


def structured_reply(body: dict[str, Any]) -> list[str] | None:
    """A reply that is JSON when `response_format` asks for it (an instance of its schema)."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return _pieces(json.dumps(sample(schema)))
    if response_format.get("type") == "json_object":
        return _pieces(json.dumps({"simulated": True}))
    return None


def tool_result_reply(messages: list[dict[str, Any]]) -> list[str] | None:
    """After a tool's result, a reply that says what the tool returned."""
    if not messages or messages[-1].get("role") != "tool":
        return None
    text = f"[simulated reply] The tool returned: {messages[-1].get('content')}"
    parts = text.split(" ")
    return [parts[0], *(" " + part for part in parts[1:])]


TITLE_WORDS = 5


def asks_for_a_title(messages: list[dict[str, Any]]) -> bool:
    """The titler's request (`app/replies/titles.py`): a system prompt about a title, and the
    exchange to name as one user message, "User: …\n\nAssistant: …"."""
    system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    return "title" in system.lower() and len(users) == 1 and users[0].startswith("User: ")


def title_reply(messages: list[dict[str, Any]]) -> list[str]:
    """What a titler model answers, in spirit: a few words, here the question's first ones
    (without a `[[sim …]]` directive), not a simulated reply of the question's length."""
    exchange = next(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    question = exchange.removeprefix("User: ").split("\n\nAssistant:", 1)[0]
    words = _words(DIRECTIVE.sub(" ", question))[:TITLE_WORDS] or ["Untitled", "chat"]
    words[0] = words[0][:1].upper() + words[0][1:]
    return [words[0], *(" " + word for word in words[1:])]


def directed(behaviour: Behaviour, messages: list[dict[str, Any]]) -> Behaviour:
    """The behaviour a `[[sim tokens=N delay=S]]` directive asks for: N chunks, S s apart."""
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    if behaviour.tokens is None and asks_for_a_title(messages):
        return replace(behaviour, tokens=title_reply(messages))
    found = DIRECTIVE.search(text_of(last_user.get("content", "")))
    if behaviour.tokens is not None or found is None:
        return behaviour
    count = int(found["tokens"] or 100)
    tokens = ["[simulated reply]", *(f" {i}" for i in range(2, count + 1))][:count]
    delay = float(found["delay"]) if found["delay"] else behaviour.delay
    think = int(found["think"] or 0)
    reasoning = [f"[simulated thinking {i}] " for i in range(1, think + 1)]
    return replace(behaviour, tokens=tokens, delay=delay, reasoning=reasoning)


class FakeOpenRouter:
    """The simulator's state and its Starlette app (`.app`); thread-safe to drive from tests."""

    def __init__(self, *, default: Behaviour | None = None, generation_404s: int = 0) -> None:
        self.default = default or Behaviour()
        self.generation_404s = generation_404s
        self.models_payload: dict[str, Any] = simulated_models()
        self.models_status = 200  # non-200: `/models` fails with this status
        self.models_delay = 0.0  # seconds before `/models` answers
        self.models_gate: threading.Event | None = None  # if set: `/models` waits until it opens
        self.models_calls = 0
        self.key_status = 200  # non-200: `/key` fails with this status (401: a refused key)
        self.key_data: dict[str, Any] = dict(KEY_DATA)
        self.key_calls = 0
        self.key_delay = 0.0  # seconds before `/key` answers
        self.requests: list[dict[str, Any]] = []
        self.generations: dict[str, Generation] = {}
        self.generation_lookups: collections.Counter[str] = collections.Counter()
        self.prompt_cache = PromptCache()
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/api/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/api/v1/generation", self._generation, methods=["GET"]),
                Route("/api/v1/models", self._models, methods=["GET"]),
                Route("/api/v1/key", self._key, methods=["GET"]),
            ]
        )

    # -- driving it from a test --

    def enqueue(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.generations.clear()
            self.generation_lookups.clear()
            self.prompt_cache.clear()
            self.models_calls = 0
            self.key_calls = 0
        self.default = Behaviour()
        self.generation_404s = 0
        self.models_payload = simulated_models()
        self.models_status = 200
        self.models_delay = 0.0
        self.models_gate = None
        self.key_status = 200
        self.key_data = dict(KEY_DATA)
        self.key_delay = 0.0

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else replace(self.default)

    # -- endpoints --

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse(
                {"error": {"code": 400, "message": "invalid JSON"}}, status_code=400
            )
        with self._lock:
            self.requests.append(
                {
                    "body": body,
                    "headers": dict(request.headers),
                    "at": time.monotonic(),
                    # Which connection it came on: tests check that connections are reused.
                    "client": request.client and (request.client.host, request.client.port),
                }
            )
        behaviour = directed(self._next(), body.get("messages") or [])
        if behaviour.headers_delay:
            await asyncio.sleep(behaviour.headers_delay)
        if behaviour.gate is not None:
            await asyncio.to_thread(behaviour.gate.wait, 30)
        if behaviour.status != 200:
            headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            payload = behaviour.error_body or {
                "error": {
                    "code": behaviour.status,
                    "message": f"simulated upstream error {behaviour.status}",
                }
            }
            return JSONResponse(payload, status_code=behaviour.status, headers=headers)

        messages = body.get("messages") or []
        model = (
            behaviour.model
            or (body.get("models") or [None])[0]
            or body.get("model")
            or "simulator/echo"
        )
        listed = self._listed(model)
        too_long = self._over_window(listed, body, messages)
        if too_long is not None:
            return too_long
        if sum(1 for m in messages if _marked(m)) > PromptCache.MAX_BREAKPOINTS:
            message = f"A maximum of {PromptCache.MAX_BREAKPOINTS} blocks with cache_control"
            return JSONResponse({"error": {"code": 400, "message": message}}, status_code=400)
        media = read_media(body, listed)
        if isinstance(media, Response):
            return media
        number = next(self._ids)
        call = None
        if behaviour.tokens is not None:
            tokens = behaviour.tokens
        else:
            call = tool_call(body, number)
            tokens = (
                []
                if call is not None
                else structured_reply(body)
                or tool_result_reply(messages)
                or default_reply(messages)
            )
            if call is not None:
                behaviour = replace(behaviour, finish_reason="tool_calls")
        prompt_tokens = media.tokens + sum(
            len(_words(text_of(m.get("content")))) for m in messages if isinstance(m, dict)
        )
        cache_prices = _cache_prices(listed)
        cache = CacheUse()
        if behaviour.cached_tokens or behaviour.cache_write_tokens:
            cache = CacheUse(behaviour.cached_tokens, behaviour.cache_write_tokens)
        elif cache_prices is not None:
            cache = self.prompt_cache.use(model, messages)
        generation = Generation(
            id=f"gen-sim-{number}",
            model=model,
            prompt_tokens=prompt_tokens,
            prices=_prices(listed),
            cache_prices=cache_prices,
            cached_tokens=cache.read,
            cache_write_tokens=cache.written,
            media_cost=media.cost,
        )
        with self._lock:
            self.generations[generation.id] = generation

        if not body.get("stream"):
            return self._complete(generation, tokens, behaviour, call)
        headers = {"Cache-Control": "no-cache"}
        if behaviour.generation_header:
            headers["X-Generation-Id"] = generation.id
        return StreamingResponse(
            self._stream(generation, tokens, behaviour, call),
            media_type="text/event-stream",
            headers=headers,
        )

    def _listed(self, model: str) -> dict[str, Any]:
        """The model's entry in the simulator's catalog ({} when it lists no such model)."""
        entries = self.models_payload.get("data") if isinstance(self.models_payload, dict) else []
        return next((e for e in entries or [] if isinstance(e, dict) and e.get("id") == model), {})

    def _over_window(
        self, listed: dict[str, Any], body: dict[str, Any], messages: list[dict[str, Any]]
    ) -> Response | None:
        """OpenRouter's 400 for a request over the model's context window, if it is; as there,
        `max_tokens` counts in what is requested (without it, the model's whole output)."""
        window = listed.get("context_length")
        if not isinstance(window, int):
            return None
        text = prompt_tokens_of(messages)
        top = listed.get("top_provider") or {}
        output = body.get("max_tokens") or top.get("max_completion_tokens") or window
        if text + output <= window:
            return None
        behaviour = context_error(window, text + output, text, output)
        return JSONResponse(behaviour.error_body, status_code=400)

    def _price(self, generation: Generation, behaviour: Behaviour) -> Decimal:
        if behaviour.cost is not None:
            return behaviour.cost
        prompt, completion = generation.prices
        # Cache reads and writes at their prices, the rest of the prompt at the input price:
        # the full price less what the cache saved.
        full = generation.prompt_tokens * prompt + generation.completion_tokens * completion
        return full - generation.cache_discount + generation.media_cost

    def _usage(self, generation: Generation, behaviour: Behaviour) -> dict[str, Any]:
        return {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            "cost": float(generation.cost),
            "is_byok": behaviour.is_byok,
            "prompt_tokens_details": {
                "cached_tokens": generation.cached_tokens,
                "cache_write_tokens": generation.cache_write_tokens,
            },
            "completion_tokens_details": {"reasoning_tokens": _reasoning_tokens(behaviour)},
            "cost_details": {
                "upstream_inference_cost": None
                if behaviour.upstream_cost is None
                else float(behaviour.upstream_cost)
            },
        }

    def _complete(
        self,
        generation: Generation,
        tokens: list[str],
        behaviour: Behaviour,
        call: ToolCall | None = None,
    ) -> Response:
        pieces = _pieces(call.arguments) if call is not None else []
        generation.completion_tokens = len(tokens) + len(pieces) + _reasoning_tokens(behaviour)
        generation.cost = self._price(generation, behaviour)
        generation.finish_reason = behaviour.finish_reason
        generation.ended = True
        thoughts = [*behaviour.reasoning, *itertools.chain(*behaviour.reasoning_at.values())]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
        if call is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ]
        if thoughts:
            message["reasoning"] = "".join(thoughts)
        details = [_text_detail("".join(thoughts), generation)] if thoughts else []
        if details or behaviour.reasoning_details:
            message["reasoning_details"] = [*details, *behaviour.reasoning_details]
        if behaviour.annotations:
            message["annotations"] = behaviour.annotations
        return JSONResponse(
            {
                "id": generation.id,
                "model": generation.model,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": message, "finish_reason": behaviour.finish_reason}
                ],
                "usage": self._usage(generation, behaviour),
            },
            headers={"X-Generation-Id": generation.id},
        )

    async def _stream(
        self,
        generation: Generation,
        tokens: list[str],
        behaviour: Behaviour,
        call: ToolCall | None = None,
    ):
        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            payload: dict[str, Any] = {
                "id": generation.id,
                "provider": "Simulator",
                "model": generation.model,
                "object": "chat.completion.chunk",
                "created": 0,
                "choices": []
                if delta is None
                else [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": finish,
                        "native_finish_reason": finish,
                    }
                ],
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        def thinking(texts: list[str], block: int) -> list[bytes]:
            """One thinking block's chunks: the text, and the same as a fragment of detail
            block `block`, the last fragment signed (as Claude's are)."""
            out = []
            for number, text in enumerate(texts, 1):
                fragment = _text_detail(text, generation, signed=number == len(texts), index=block)
                generation.completion_tokens += 1
                out.append(chunk({"reasoning": text, "reasoning_details": [fragment]}))
            return out

        comment = b": OPENROUTER PROCESSING\n\n" if behaviour.comments else b""
        completed = False
        try:
            waited = 0.0
            while waited < behaviour.processing:
                yield b": OPENROUTER PROCESSING\n\n"
                await asyncio.sleep(behaviour.processing_interval)
                waited += behaviour.processing_interval
            yield comment + chunk({"role": "assistant", "content": ""})
            for piece in thinking(behaviour.reasoning, 0):
                yield piece
            if behaviour.reasoning_details:
                yield chunk({"reasoning": None, "reasoning_details": behaviour.reasoning_details})
            for index, text in enumerate(tokens):
                if index in behaviour.reasoning_at:
                    for piece in thinking(behaviour.reasoning_at[index], index + 1):
                        yield piece
                if index == behaviour.error_after:
                    error = {
                        "code": behaviour.error_code,
                        "message": "simulated mid-stream failure",
                    }
                    if behaviour.error_with_choices:
                        yield chunk({"content": ""}, "error", error=error)
                    else:
                        yield chunk(None, error=error)
                    completed = True
                    return
                if index == behaviour.malformed_after:
                    yield b"data: {this is not json\n\n"
                    return
                if index == behaviour.drop_after:
                    raise ConnectionAbortedError("simulated dropped connection")
                if index == behaviour.stall_after:
                    await asyncio.Event().wait()
                if index == behaviour.pause_after and behaviour.resume is not None:
                    await asyncio.to_thread(behaviour.resume.wait, 60)
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                generation.completion_tokens += 1
                delta: dict[str, Any] = {"content": text}
                if behaviour.annotations and index == len(tokens) - 1:
                    delta["annotations"] = behaviour.annotations
                yield chunk(delta) + (comment if index % 8 == 7 else b"")
            if call is not None:  # as OpenAI streams one: id and name first, then arguments
                opening = {"index": 0, "id": call.id, "type": "function"}
                opening["function"] = {"name": call.name, "arguments": ""}
                yield chunk({"tool_calls": [opening]})
                for piece in _pieces(call.arguments):
                    if behaviour.delay:
                        await asyncio.sleep(behaviour.delay)
                    generation.completion_tokens += 1
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            generation.cost = self._price(generation, behaviour)
            generation.finish_reason = behaviour.finish_reason
            if behaviour.ending is not None:
                for piece in behaviour.ending:
                    yield self._ending_piece(piece, generation, behaviour, chunk)
                generation.streamed_usage = any("usage" in piece for piece in behaviour.ending)
                completed = True
                return
            if behaviour.no_usage:
                yield chunk({"content": ""}, behaviour.finish_reason)
                completed = True
                return
            usage = self._usage(generation, behaviour)
            if behaviour.usage_in_choice_chunk:
                yield chunk({"content": ""}, behaviour.finish_reason, usage=usage)
            else:
                yield chunk({"content": ""}, behaviour.finish_reason)
                yield comment + chunk(None, usage=usage)
            generation.streamed_usage = True
            yield b"data: [DONE]\n\n"
            completed = True
        finally:
            if not completed:
                # The client went away (or we dropped it): like most providers, billing stops
                # at what was generated, and only the generation record will tell.
                generation.cancelled = True
                generation.cost = self._price(generation, behaviour)
            generation.ended = True

    def _ending_piece(
        self,
        piece: str,
        generation: Generation,
        behaviour: Behaviour,
        chunk: Callable[..., bytes],
    ) -> bytes:
        error = {"code": behaviour.error_code, "message": "simulated mid-stream failure"}
        if piece == "finish":
            return chunk({"content": ""}, behaviour.finish_reason)
        if piece == "usage":
            return chunk(None, usage=self._usage(generation, behaviour))
        if piece == "error":
            return chunk(None, error=error)
        if piece == "error+usage":
            return chunk(None, error=error, usage=self._usage(generation, behaviour))
        if piece == "done":
            return b"data: [DONE]\n\n"
        raise ValueError(f"unknown ending piece {piece!r}")

    async def _generation(self, request: Request) -> Response:
        generation_id = request.query_params.get("id", "")
        with self._lock:
            self.generation_lookups[generation_id] += 1
            lookups = self.generation_lookups[generation_id]
            generation = self.generations.get(generation_id)
        if generation is None or not generation.ended or lookups <= self.generation_404s:
            return JSONResponse(
                {"error": {"code": 404, "message": "Generation not found"}}, status_code=404
            )
        return JSONResponse(
            {
                "data": {
                    "id": generation.id,
                    "model": generation.model,
                    "provider_name": "Simulator",
                    "total_cost": float(generation.cost),
                    "tokens_prompt": generation.prompt_tokens,
                    "tokens_completion": generation.completion_tokens,
                    "native_tokens_prompt": generation.prompt_tokens,
                    "native_tokens_completion": generation.completion_tokens,
                    "native_tokens_reasoning": 0,
                    "native_tokens_cached": generation.cached_tokens,
                    "cache_discount": float(generation.cache_discount),
                    "cancelled": generation.cancelled,
                    "finish_reason": generation.finish_reason,
                }
            }
        )

    async def _models(self, request: Request) -> Response:
        with self._lock:
            self.models_calls += 1
        if self.models_delay:
            await asyncio.sleep(self.models_delay)
        if self.models_gate is not None:
            await asyncio.to_thread(self.models_gate.wait, 30)
        if self.models_status != 200:
            return JSONResponse(
                {"error": {"code": self.models_status, "message": "simulated /models failure"}},
                status_code=self.models_status,
            )
        return JSONResponse(self.models_payload)

    async def _key(self, request: Request) -> Response:
        with self._lock:
            self.key_calls += 1
        if self.key_delay:
            await asyncio.sleep(self.key_delay)
        if self.key_status != 200:
            message = "No auth credentials found" if self.key_status == 401 else "simulated"
            return JSONResponse(
                {"error": {"code": self.key_status, "message": message}},
                status_code=self.key_status,
            )
        return JSONResponse({"data": self.key_data})
