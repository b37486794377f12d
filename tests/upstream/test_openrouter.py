"""The OpenRouter client on its own: typed events out of every stream shape in
`docs/openrouter.md`, and one exception type for every way a call can fail.

Two upstreams, both over real HTTP: the fake OpenRouter (`fake`, `fake_url`) for whole calls,
and `RawUpstream`, which sends exactly the bytes a test scripts, for framing and faults the fake
cannot produce (line endings, splits at any byte, content types, stalls, drops).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.dev.simulator import Behaviour, error_behaviour
from app.dev.threaded_server import ThreadedServer, free_port
from app.upstream.openrouter import (
    Citation,
    Delta,
    Event,
    Finish,
    Opened,
    OpenRouterClient,
    Reasoning,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeout,
    Usage,
    merge_reasoning_details,
)

GEN = "gen-1"
MODEL = "x/m"
# The read timeout of the tests that stall on purpose; the others wait as long as a loaded
# machine needs (0.3 s for every test made a 503 from the fake a ReadTimeout at load 20).
STALL_TIMEOUT = 0.3
READ_TIMEOUT = 10.0
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def chunk(choices: list[dict[str, Any]] | None = None, **extra: Any) -> str:
    payload = {"id": GEN, "model": MODEL, "choices": choices if choices is not None else []}
    return "data: " + json.dumps({**payload, **extra}, ensure_ascii=False, separators=(",", ":"))


def choice(content: str | None = None, finish: str | None = None, **delta: Any) -> dict:
    if content is not None:
        delta["content"] = content
    if finish is None:
        return {"delta": delta, "finish_reason": None}
    return {"delta": delta, "finish_reason": finish, "native_finish_reason": finish}


USAGE = {
    "prompt_tokens": 17,
    "completion_tokens": 3,
    "total_tokens": 20,
    "cost": 0.00046,
    "prompt_tokens_details": {"cached_tokens": 5},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
EXPECTED_USAGE = Usage(17, 3, 20, 2, 5, Decimal("0.00046"), MODEL, GEN)
REASONING_FRAGMENT = {
    "type": "reasoning.text",
    "text": "hmm",
    "signature": None,
    "id": None,
    "format": "anthropic-claude-v1",
    "index": 0,
}
# With an X-Generation-Id header: its id at HTTP 200, then the first chunk's id and model.
OPENED = [Opened(GEN), Opened(GEN, MODEL)]


def frames(*lines: str, newline: str = "\n") -> bytes:
    """SSE frames: each item is one line, and an empty item ends an event."""
    return "".join(line + newline for line in lines).encode()


# A representative stream: comments before, between and inside events, a role chunk, content
# with multi-byte characters (so some splits fall inside a character), a reasoning delta, the
# finish chunk, a debug chunk with empty choices, the usage chunk after finish, then [DONE].
REPRESENTATIVE = [
    ": OPENROUTER PROCESSING",
    "",
    chunk([choice("", role="assistant")]),
    "",
    chunk([choice(reasoning="think")]),
    "",
    ": OPENROUTER PROCESSING",
    chunk([choice("Hél")]),
    "",
    chunk([choice("lo 👋")]),
    "",
    chunk([choice("", "stop")]),
    "",
    chunk(),
    "",
    ": OPENROUTER PROCESSING",
    "",
    chunk(usage=USAGE),
    "",
    "data: [DONE]",
    "",
]
REPRESENTATIVE_EVENTS = [
    *OPENED,
    Reasoning("think"),
    Delta("Hél"),
    Delta("lo 👋"),
    Finish("stop", "stop", MODEL, GEN),
    EXPECTED_USAGE,
]


# --- a raw upstream: the bytes a test scripts, nothing else -------------------------------------


@dataclass
class Script:
    parts: list[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=lambda: {"x-generation-id": GEN})
    ending: str = "close"  # close | stall (keep the connection open) | drop (abort it)


class RawUpstream:
    def __init__(self) -> None:
        self.script = Script(parts=[])
        self.requests = 0

    async def __call__(self, scope, receive, send) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        script = self.script
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", script.content_type.encode())]
        headers += [(k.encode(), v.encode()) for k, v in script.headers.items()]
        await send({"type": "http.response.start", "status": script.status, "headers": headers})
        for part in script.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        if script.ending == "stall":
            await receive()  # returns once the client has gone
        elif script.ending == "drop":
            raise ConnectionAbortedError("scripted drop")  # uvicorn aborts the connection
        else:
            await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def raw_server() -> Iterator[tuple[RawUpstream, str]]:
    raw = RawUpstream()
    with ThreadedServer(raw, lifespan="off", log_level="critical") as server:
        yield raw, server.url


@pytest.fixture
def raw(raw_server) -> RawUpstream:
    upstream, _ = raw_server
    upstream.script, upstream.requests = Script(parts=[]), 0
    return upstream


@pytest.fixture
def raw_url(raw_server) -> str:
    return raw_server[1]


def client_for(http: httpx.AsyncClient, base_url: str) -> OpenRouterClient:
    return OpenRouterClient(
        http, base_url=base_url, api_key="sk-or-test", app_url="http://test", app_title="test"
    )


def http_client(read_timeout: float = READ_TIMEOUT) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=read_timeout))


async def stream(
    base_url: str, *, read_timeout: float = READ_TIMEOUT
) -> tuple[list[Event], UpstreamError | None]:
    """The events of one streaming call, and the error that ended it (None: it ended well)."""
    events: list[Event] = []
    async with http_client(read_timeout) as http:
        try:
            async for event in client_for(http, base_url).stream_chat(BODY):
                events.append(event)
        except UpstreamError as exc:
            return events, exc
    return events, None


def run_raw(raw: RawUpstream, raw_url: str, script: Script):
    raw.script = script
    read_timeout = STALL_TIMEOUT if script.ending == "stall" else READ_TIMEOUT
    return asyncio.run(stream(raw_url, read_timeout=read_timeout))


# --- framing ------------------------------------------------------------------------------------


def events_from_parts(parts: list[bytes]) -> list[Event]:
    """The events decoded from a 200 stream delivered in exactly these parts.

    Served in-process so every cut reaches the decoder as it is: over a socket, the kernel may
    merge the parts, and sweeping hundreds of cuts over HTTP would be slow.
    """

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "x-generation-id": GEN}
        return httpx.Response(200, headers=headers, content=body())

    async def collect() -> list[Event]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return [event async for event in client_for(http, "http://upstream").stream_chat(BODY)]

    return asyncio.run(collect())


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"], ids=["LF", "CR", "CRLF"])
def test_the_same_events_come_out_whatever_the_chunking_and_line_endings(raw, raw_url, newline):
    data = frames(*REPRESENTATIVE, newline=newline)

    cuts_that_differ = [
        offset
        for offset in range(1, len(data))
        if events_from_parts([data[:offset], data[offset:]]) != REPRESENTATIVE_EVENTS
    ]

    assert cuts_that_differ == []
    assert events_from_parts([bytes([b]) for b in data]) == REPRESENTATIVE_EVENTS
    # And over a real socket: all at once, then one byte per write.
    assert run_raw(raw, raw_url, Script(parts=[data])) == (REPRESENTATIVE_EVENTS, None)
    byte_by_byte = Script(parts=[bytes([b]) for b in data])
    assert run_raw(raw, raw_url, byte_by_byte) == (REPRESENTATIVE_EVENTS, None)


@pytest.mark.parametrize("finish", [None, "stop"], ids=["no-finish-repeat", "finish-repeated"])
def test_usage_inside_a_chunk_that_still_has_a_choice_is_read(raw, raw_url, finish):
    data = frames(
        chunk([choice("Hi")]),
        "",
        chunk([choice("", "stop")]),
        "",
        chunk([choice("", finish)], usage=USAGE),
        "",
        "data: [DONE]",
        "",
    )
    events, error = run_raw(raw, raw_url, Script(parts=[data]))
    assert error is None
    assert events == [*OPENED, Delta("Hi"), Finish("stop", "stop", MODEL, GEN), EXPECTED_USAGE]


def test_a_stream_cut_after_finish_reason_without_usage_or_done_ends_quietly(raw, raw_url):
    # The reply is whole; the cost then comes from the generation record.
    data = frames(chunk([choice("Hi")]), "", chunk([choice("", "length")]), "")
    events, error = run_raw(raw, raw_url, Script(parts=[data]))
    assert error is None
    assert events == [*OPENED, Delta("Hi"), Finish("length", "length", MODEL, GEN)]


@pytest.mark.parametrize(
    ("error", "with_choices", "code", "retryable"),
    [
        ({"code": 502, "message": "provider down"}, True, "upstream_502", True),
        ({"code": 502, "message": "provider down"}, False, "upstream_502", True),
        (
            {"code": "server_error", "message": "provider down"},
            True,
            "upstream_server_error",
            False,
        ),
        (
            {"code": "server_error", "message": "provider down"},
            False,
            "upstream_server_error",
            False,
        ),
        ({"code": 400, "message": "provider down"}, True, "upstream_400", False),
    ],
)
def test_an_error_chunk_mid_stream_raises_stream_error(
    raw, raw_url, error, with_choices, code, retryable
):
    choices = [choice("", "error")] if with_choices else []
    data = frames(chunk([choice("Hi")]), "", chunk(choices, error=error), "", "data: [DONE]", "")
    events, exc = run_raw(raw, raw_url, Script(parts=[data]))
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamStreamError
    assert (exc.code, exc.message, exc.retryable) == (code, "provider down", retryable)


def test_finish_reason_error_without_an_error_object_is_an_error(raw, raw_url):
    data = frames(chunk([choice("Hi")]), "", chunk([choice("", "error")]), "", "data: [DONE]", "")
    events, exc = run_raw(raw, raw_url, Script(parts=[data]))
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamStreamError and exc.code == "upstream_stream_error"


@pytest.mark.parametrize(
    "line",
    [
        "data: {not json",
        "data: 42",
        'data: "text"',
        "data: [1, 2]",
        # Half a surrogate pair is no character: no UTF-8 text, no SSE frame, can hold it.
        'data: {"id":"gen-1","choices":[{"delta":{"content":"\\ud800"}}]}',
    ],
)
def test_a_malformed_data_line_raises_protocol_error(raw, raw_url, line):
    data = frames(chunk([choice("Hi")]), "", line, "", chunk([choice("", "stop")]), "")
    events, exc = run_raw(raw, raw_url, Script(parts=[data]))
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamProtocolError and exc.retryable is False


def test_text_escaped_or_not_decodes_as_the_stdlib_decodes_it():
    """The chunks are decoded with orjson: the same text as the stdlib's json gives, whether
    the upstream escapes it (`\\u00e9`, a surrogate pair for an emoji) or sends it raw."""
    texts = [
        "h\\u00e9llo",
        "\\ud83d\\ude00 raw: 😀 é 中",
        'tab\\t line\\n \\"q\\" \\\\ \\/',
        "\\u2028\\u0000\\u001f",
    ]
    lines = [
        f'data: {{"id":"{GEN}","model":"{MODEL}","choices":[{{"delta":{{"content":"{text}"}}}}]}}'
        for text in texts
    ]
    data = frames(*[part for line in lines for part in (line, "")], chunk([choice("", "stop")]), "")
    events = events_from_parts([data])
    assert events == [
        *OPENED,
        *(Delta(json.loads(f'"{text}"')) for text in texts),
        Finish("stop", "stop", MODEL, GEN),
    ]


@pytest.mark.parametrize("ending", ["stall", "drop"])
def test_a_stall_or_drop_after_done_does_not_spoil_a_finished_reply(raw, raw_url, ending):
    # What follows [DONE] is read only to give the connection back to the pool.
    script = Script(parts=[frames(*REPRESENTATIVE)], ending=ending)
    assert run_raw(raw, raw_url, script) == (REPRESENTATIVE_EVENTS, None)


def test_done_before_any_finish_reason_is_not_a_short_answer(raw, raw_url):
    data = frames(chunk([choice("Hi")]), "", "data: [DONE]", "")
    events, exc = run_raw(raw, raw_url, Script(parts=[data]))
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamConnectionError


def test_a_stream_ending_before_finish_without_done_is_an_error(raw, raw_url):
    events, exc = run_raw(raw, raw_url, Script(parts=[frames(chunk([choice("Hi")]), "")]))
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamConnectionError and exc.retryable is True


def test_a_dropped_connection_raises_connection_error(raw, raw_url):
    script = Script(parts=[frames(chunk([choice("Hi")]), "")], ending="drop")
    events, exc = run_raw(raw, raw_url, script)
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamConnectionError and exc.code == "upstream_connection_error"


def test_a_stall_past_the_read_timeout_raises_timeout(raw, raw_url):
    script = Script(parts=[frames(": OPENROUTER PROCESSING", "", chunk([choice("Hi")]), "")])
    script.ending = "stall"
    events, exc = run_raw(raw, raw_url, script)
    assert events == [*OPENED, Delta("Hi")]
    assert type(exc) is UpstreamTimeout and exc.retryable is True


def test_a_200_that_is_not_an_event_stream_is_a_protocol_error(raw, raw_url):
    script = Script(parts=[b'{"choices": []}'], content_type="application/json")
    events, exc = run_raw(raw, raw_url, script)
    assert type(exc) is UpstreamProtocolError
    assert not any(isinstance(e, Delta | Finish) for e in events)


def test_nothing_listening_is_a_connection_error():
    events, exc = asyncio.run(stream(f"http://127.0.0.1:{free_port()}"))
    assert events == [] and type(exc) is UpstreamConnectionError


# --- errors before the stream -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (429, {"error": {"code": 429, "message": "slow down", "metadata": {}}}, "slow down"),
        (
            503,
            {"error": {"message": "no provider", "error_type": "unavailable", "http_status": 503}},
            "no provider",
        ),
        (503, {"error": {"error_type": "provider_unavailable", "http_status": 503}}, None),
        (502, "<html>Bad Gateway</html>", None),
        (401, {"error": {"code": 401, "message": "No auth credentials found"}}, None),
    ],
    ids=["code-shape", "availability-shape", "no-message", "not-json", "unauthorized"],
)
def test_errors_before_the_stream_raise_status_error(raw, raw_url, status, body, message):
    text = body if isinstance(body, str) else json.dumps(body)
    script = Script(parts=[text.encode()], status=status, content_type="application/json")
    script.headers = {"retry-after": "3"} if status == 429 else {}
    events, exc = run_raw(raw, raw_url, script)
    assert events == []
    assert type(exc) is UpstreamStatusError
    assert (exc.status, exc.code) == (status, f"upstream_{status}")
    assert exc.retryable is (status in (429, 502, 503))
    assert exc.retry_after == (3.0 if status == 429 else None)
    assert exc.message  # always something to show, whatever the body
    if message is not None:
        assert exc.message == message
    assert raw.requests == 1


@pytest.mark.parametrize(
    ("header", "expected"), [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("Wed, 21 Oct 2015", None)]
)
def test_retry_after_is_parsed_from_the_fake(fake, fake_url, header, expected):
    fake.enqueue(Behaviour(status=429, retry_after=header))
    events, exc = asyncio.run(stream(fake_url))
    assert events == [] and type(exc) is UpstreamStatusError
    assert (exc.status, exc.retryable, exc.retry_after) == (429, True, expected)


# --- against the fake OpenRouter ----------------------------------------------------------------


def test_a_whole_stream_from_the_fake(fake, fake_url):
    fake.enqueue(
        Behaviour(tokens=["Hel", "lo"], reasoning=["hmm"], cost=Decimal("0.0002"), model=MODEL)
    )
    events, error = asyncio.run(stream(fake_url))
    assert error is None
    [generation] = fake.generations.values()
    assert events[:6] == [
        Opened(generation.id),
        Opened(generation.id, MODEL),
        Reasoning("hmm", (REASONING_FRAGMENT | {"signature": f"sig-{generation.id}-0"},)),
        Delta("Hel"),
        Delta("lo"),
        Finish("stop", "stop", MODEL, generation.id),
    ]
    [usage] = events[6:]
    assert isinstance(usage, Usage) and usage.cost == Decimal("0.0002")
    assert (usage.completion_tokens, usage.reasoning_tokens) == (3, 1)  # reasoning is output
    sent = fake.requests[0]
    assert sent["body"]["stream"] is True and sent["body"]["model"] == MODEL
    assert sent["headers"]["authorization"] == "Bearer sk-or-test"
    assert sent["headers"]["x-openrouter-title"] == "test"


def test_replies_one_after_another_reuse_the_upstream_connection(fake, fake_url):
    # A connection closed before its response's last bytes is not reused: each reply would
    # pay a new TCP and TLS handshake on its way to the first token.
    async def three_replies() -> None:
        async with http_client() as http:
            client = client_for(http, fake_url)
            for _ in range(3):
                assert [e async for e in client.stream_chat(BODY)][-1].cost is not None

    asyncio.run(three_replies())
    assert len({request["client"] for request in fake.requests}) == 1
    assert len(fake.requests) == 3


def test_complete_returns_the_events_a_stream_would_have_carried(fake, fake_url):
    fake.enqueue(Behaviour(tokens=["Hel", "lo"], cost=Decimal("0.0001"), model="openai/gpt-4o"))

    async def call() -> list[Event]:
        async with http_client() as http:
            return await client_for(http, fake_url).complete(BODY)

    delta, finish, usage = asyncio.run(call())
    [generation_id] = fake.generations
    assert delta == Delta("Hello")
    assert finish == Finish("stop", None, "openai/gpt-4o", generation_id)
    assert (usage.completion_tokens, usage.cost) == (2, Decimal("0.0001"))
    assert (usage.model, usage.generation_id) == ("openai/gpt-4o", generation_id)
    assert fake.requests[0]["body"]["stream"] is False


@pytest.mark.parametrize(
    ("status", "code"),
    # A 402 without the in-flight budget's `limit_source` is out of credits.
    [(400, "upstream_400"), (402, "insufficient_credits"), (503, "upstream_503")],
)
def test_complete_raises_status_error(fake, fake_url, status, code):
    fake.enqueue(Behaviour(status=status))

    async def call() -> list[Event]:
        async with http_client() as http:
            return await client_for(http, fake_url).complete(BODY)

    with pytest.raises(UpstreamStatusError) as caught:
        asyncio.run(call())
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.message == f"simulated upstream error {status}"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"error": {"code": 502, "message": "boom"}}', UpstreamStreamError),
        ("not json", UpstreamProtocolError),
        ("[1, 2]", UpstreamProtocolError),
    ],
)
def test_complete_raises_on_a_200_that_is_not_a_completion(raw, raw_url, body, error):
    raw.script = Script(parts=[body.encode()], content_type="application/json")

    async def call() -> list[Event]:
        async with http_client() as http:
            return await client_for(http, raw_url).complete(BODY)

    with pytest.raises(error):
        asyncio.run(call())


def test_get_generation_returns_the_record_or_none_while_unknown(fake, fake_url):
    fake.enqueue(Behaviour(tokens=["a", "b"], cost=Decimal("0.0003")))
    fake.generation_404s = 1

    async def lookups() -> tuple[Any, Any, Any]:
        async with http_client() as http:
            client = client_for(http, fake_url)
            [event async for event in client.stream_chat(BODY)]
            [generation_id] = fake.generations
            return (
                await client.get_generation("gen-unknown"),
                await client.get_generation(generation_id),  # the first lookup: still 404
                await client.get_generation(generation_id),
            )

    unknown, first, record = asyncio.run(lookups())
    assert unknown is None and first is None
    assert record["total_cost"] == 0.0003 and record["tokens_completion"] == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [("not json", UpstreamProtocolError), ("[1]", UpstreamProtocolError), ('{"data": 3}', None)],
)
def test_get_generation_with_an_unreadable_body(raw, raw_url, body, expected):
    raw.script = Script(parts=[body.encode()], content_type="application/json")

    async def call() -> Any:
        async with http_client() as http:
            return await client_for(http, raw_url).get_generation(GEN)

    if expected is None:
        assert asyncio.run(call()) is None
    else:
        with pytest.raises(expected):
            asyncio.run(call())


# --- reasoning, citations, usage details, the first chunk ------------------------------------

TEXT_1 = {"type": "reasoning.text", "text": "Let me ", "signature": None, "format": "f", "index": 0}
TEXT_2 = {"type": "reasoning.text", "text": "think.", "signature": "sig", "format": "f", "index": 0}
SUMMARY = {"type": "reasoning.summary", "summary": "Weighed both.", "format": "f", "index": 1}
ENCRYPTED = {"type": "reasoning.encrypted", "data": "gAAAA-opaque", "id": "rs_1", "format": "f"}


def test_without_a_generation_id_header_the_first_chunk_names_generation_and_model(raw, raw_url):
    # Recorded streams mostly carry no X-Generation-Id: the first chunk's `id` is the id.
    data = frames(
        ": OPENROUTER PROCESSING", "", chunk([choice("Hi")]), "", chunk([choice("", "stop")]), ""
    )
    events, error = run_raw(raw, raw_url, Script(parts=[data], headers={}))
    assert error is None
    assert events == [Opened(GEN, MODEL), Delta("Hi"), Finish("stop", "stop", MODEL, GEN)]


def test_reasoning_details_of_each_type_come_out_with_only_readable_text_shown(raw, raw_url):
    data = frames(
        chunk([choice(reasoning="Let me ", reasoning_details=[TEXT_1])]),
        "",
        chunk([choice(reasoning="think.", reasoning_details=[TEXT_2])]),
        "",
        # A summary with no `reasoning` string: its summary is what a person reads.
        chunk([choice(reasoning=None, reasoning_details=[SUMMARY])]),
        "",
        # o3: only an encrypted block, nothing readable.
        chunk([choice(reasoning=None, reasoning_details=[ENCRYPTED])]),
        "",
        chunk([choice("Yes.", reasoning=None, reasoning_details=[])]),
        "",
        chunk([choice("", "stop")]),
        "",
    )
    events, error = run_raw(raw, raw_url, Script(parts=[data], headers={}))
    assert error is None
    assert events[1:6] == [
        Reasoning("Let me ", (TEXT_1,)),
        Reasoning("think.", (TEXT_2,)),
        Reasoning("Weighed both.", (SUMMARY,)),
        Reasoning("", (ENCRYPTED,)),
        Delta("Yes."),
    ]
    fragments = [
        detail for event in events if isinstance(event, Reasoning) for detail in event.details
    ]
    # Sent back upstream whole: the text block's fragments joined, signature kept, order kept.
    assert merge_reasoning_details(fragments) == [
        {
            "type": "reasoning.text",
            "text": "Let me think.",
            "signature": "sig",
            "format": "f",
            "index": 0,
        },
        SUMMARY,
        ENCRYPTED,
    ]


def test_url_citations_come_out_as_citations(raw, raw_url):
    cited = {
        "type": "url_citation",
        "url_citation": {
            "url": "https://example.org/a",
            "title": "A",
            "content": "about a",
            "start_index": 0,
            "end_index": 4,
        },
    }
    other = {"type": "file_citation", "file": "x"}
    data = frames(
        chunk([choice("Yes. [a]", annotations=[cited, other])]), "", chunk([choice("", "stop")]), ""
    )
    events, error = run_raw(raw, raw_url, Script(parts=[data]))
    assert error is None
    assert events[2:4] == [
        Delta("Yes. [a]"),
        Citation("https://example.org/a", "A", "about a", 0, 4),
    ]


def test_usage_details_byok_cache_writes_and_upstream_cost_are_read(raw, raw_url):
    usage = {
        **USAGE,
        "is_byok": True,
        "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 7},
        "cost_details": {"upstream_inference_cost": 0.0019},
    }
    data = frames(chunk([choice("Hi", "stop")]), "", chunk(usage=usage), "", "data: [DONE]", "")
    events, error = run_raw(raw, raw_url, Script(parts=[data]))
    assert error is None
    found = events[-1]
    assert isinstance(found, Usage)
    assert (found.cached_tokens, found.cache_write_tokens, found.is_byok) == (5, 7, True)
    # The cost billed is always usage.cost; the provider's BYOK charge is recorded apart.
    assert (found.cost, found.upstream_cost) == (Decimal("0.00046"), Decimal("0.0019"))


@pytest.mark.parametrize(
    ("kind", "status", "code", "retryable", "retry_after"),
    [
        ("in_flight_budget", 402, "upstream_402", True, 1.0),
        ("insufficient_credits", 402, "insufficient_credits", False, None),
        ("moderation", 403, "moderation", False, None),
        ("timeout", 408, "upstream_408", True, None),
        ("provider_down", 502, "upstream_502", True, None),
        ("no_provider", 503, "upstream_503", True, None),
    ],
)
def test_each_error_shape_before_the_stream(
    fake, fake_url, caplog, kind, status, code, retryable, retry_after
):
    fake.enqueue(error_behaviour(kind))
    with caplog.at_level("WARNING", logger="app.upstream.openrouter"):
        events, exc = asyncio.run(stream(fake_url))
    assert events == [] and type(exc) is UpstreamStatusError
    assert (exc.status, exc.code, exc.retryable, exc.retry_after) == (
        status,
        code,
        retryable,
        retry_after,
    )
    if kind == "moderation":
        assert "violence" in exc.message and "harassment" in exc.message
        assert "SECRET FLAGGED TEXT" not in exc.message
    if status in (502, 503):
        assert "provider Simulator" in caplog.text
