"""The OpenRouter client: one chat call in, typed events out, streaming or not.

Events, in the order a stream yields them (`complete` returns the same, without Opened)::

    Opened(generation_id, model)   at HTTP 200 when the X-Generation-Id header names the id, and
                                   again at the first data chunk with the chunk's id and model
                                   (recorded streams mostly carry no header: the chunk is sure)
    Reasoning(text, details) / Delta(content) / Citation(...)   any number, in stream order
    Finish(reason, native_reason, model, generation_id)
    Usage(tokens..., cost)         exactly once when the upstream sends it, after Finish

Failures are raised, never yielded, so no caller can mistake one for a short answer::

    UpstreamError                  code, message, retryable, retry_after
    ├── UpstreamStatusError        HTTP error before the stream (status: 400, 401, 402, 429, 5xx…;
    │                              code `insufficient_credits` for a 402 that is not the in-flight
    │                              budget, `moderation` for a 403 with reasons,
    │                              `context_length_exceeded` for a 400 over the context window)
    ├── UpstreamStreamError        an `error` chunk inside a 200 stream, any time (.usage if it had)
    ├── UpstreamProtocolError      a data line that is not a chunk we can read
    ├── UpstreamTimeout            no connection, or no bytes, within the timeout
    └── UpstreamConnectionError    refused, reset, or ended before `finish_reason`/[DONE]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
from httpx_sse import SSEError, aconnect_sse

from app.core.money import parse_amount
from app.core.stages import Stage, mark
from app.upstream.attachment_body import AttachmentMissing, ReadAttachment, encode, has_attachments
from app.upstream.pool import ClientPool

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# How OpenRouter's 400 says a request is over the model's context window ("This endpoint's
# maximum context length is N tokens. However, you requested about M tokens …"; providers'
# own wordings passed on say "context length" or "context window" too).
CONTEXT_LENGTH = re.compile(r"context[ _-](length|window)", re.IGNORECASE)
# Seconds a stream may take to end after [DONE] before its connection is given up instead.
AFTER_DONE_GRACE = 1.0


# --- errors -------------------------------------------------------------------------------------


class UpstreamError(Exception):
    code = "upstream_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after


class UpstreamStatusError(UpstreamError):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code or f"upstream_{status}",
            retryable=status in RETRYABLE_STATUSES if retryable is None else retryable,
            retry_after=retry_after,
        )
        self.status = status


class UpstreamStreamError(UpstreamError):
    code = "upstream_stream_error"

    def __init__(self, message: str, *, usage: Usage | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # What the failed generation used, when the error's own chunk says: recorded, OpenRouter
        # bills it (a free model at its token limit sends usage with the error, then [DONE]).
        self.usage = usage


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    retryable = True


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"
    retryable = True


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    generation_id: str | None
    model: str | None = None  # known from the first data chunk, not from the headers


@dataclass(frozen=True, slots=True)
class Delta:
    content: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Thinking as it streams: `text` is what a person may read (`delta.reasoning`, else the
    readable details' text or summary; never encrypted data), `details` the chunk's
    `reasoning_details` as they came, to be sent back with the assistant turn."""

    text: str
    details: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Citation:
    """One `url_citation` annotation (web search), flattened."""

    url: str
    title: str | None = None
    content: str | None = None
    start_index: int | None = None
    end_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "title": self.title,
            "content": self.content,
            "start_index": self.start_index,
            "end_index": self.end_index,
        }


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str
    native_reason: str | None
    model: str | None
    generation_id: str | None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost: Decimal | None  # `usage.cost`: what OpenRouter bills, BYOK or not
    model: str | None
    generation_id: str | None
    cache_write_tokens: int = 0
    is_byok: bool = False
    # `cost_details.upstream_inference_cost`: what the provider charged a BYOK key (informative)
    upstream_cost: Decimal | None = None


Event = Opened | Delta | Reasoning | Citation | Finish | Usage


# --- parsing helpers ----------------------------------------------------------------------------


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; rare enough upstream that backoff alone is fine


def _error_message(payload: Any, fallback: str) -> tuple[str | None, str]:
    """(code, message) from either error shape OpenRouter uses; never raises."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message") or error.get("error_type") or fallback
        return (str(code) if code is not None else None), str(message)
    if isinstance(error, str):
        return None, error
    return None, fallback


class _TransportErrors:
    """httpx's (and httpx-sse's) failures as our error tree: the one mapping for every call.

    Stateless and shared (`with _TRANSPORT_ERRORS:`), not a `@contextmanager` generator: the
    streaming call keeps it entered for the whole stream, and an idle stream should not carry
    a generator frame for it.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        name = type(exc).__name__
        if isinstance(exc, SSEError):  # a 200 that is not text/event-stream (a TransportError)
            raise UpstreamProtocolError("OpenRouter answered without an event stream") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise UpstreamTimeout(f"OpenRouter did not answer in time ({name})") from exc
        if isinstance(exc, httpx.ConnectError):
            raise UpstreamConnectionError(f"could not reach OpenRouter ({name})") from exc
        if isinstance(exc, httpx.TransportError):
            raise UpstreamConnectionError(f"lost the connection to OpenRouter ({name})") from exc
        if isinstance(exc, AttachmentMissing):  # deleted while its request was being sent
            raise UpstreamError(str(exc), code="attachment_missing") from exc


_TRANSPORT_ERRORS = _TransportErrors()


async def _status_error(response: httpx.Response) -> UpstreamStatusError:
    await response.aread()
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    status = response.status_code
    _, message = _error_message(payload, f"OpenRouter answered HTTP {status}")
    error = payload.get("error") if isinstance(payload, dict) else None
    metadata = error.get("metadata") if isinstance(error, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    retry_after = _retry_after(response)
    if status == 402:
        # Only the in-flight budget clears by itself; any other 402 is out of credits, and
        # asking again before someone pays only bills nothing more slowly.
        if metadata.get("limit_source") == "openrouter_in_flight_budget":
            return UpstreamStatusError(status, message, retry_after=retry_after, retryable=True)
        return UpstreamStatusError(status, message, code="insufficient_credits", retryable=False)
    reasons = _strings(metadata.get("reasons"))
    if status == 403 and reasons:
        # Our own words around the reasons: OpenRouter's message may quote the flagged input,
        # which the person already has, and which must not travel into logs and replays.
        return UpstreamStatusError(
            status,
            f"the input was flagged by moderation ({', '.join(reasons)})",
            code="moderation",
            retryable=False,
        )
    if status == 400 and CONTEXT_LENGTH.search(message):
        # The request is over the model's context window. The server fits every request to it
        # (app/replies/fitting.py), so this is a provider counting otherwise: said as what it
        # is, not as any upstream error; asking again the same way cannot work.
        return UpstreamStatusError(
            status,
            "the conversation is longer than the model's context window as its provider "
            "counts it; send a shorter message, or choose a model with a larger window",
            code="context_length_exceeded",
            retryable=False,
        )
    if status in (502, 503):
        log.warning(
            "OpenRouter answered %d for provider %s: %s",
            status,
            metadata.get("provider_name") or "unknown",
            message,
        )
    return UpstreamStatusError(status, message, retry_after=retry_after)


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _in_band_error(
    payload: dict[str, Any], fallback: str, *, usage: Usage | None
) -> UpstreamStreamError:
    code, message = _error_message(payload, fallback)
    # A numeric code is an HTTP status and says whether asking again may work, as it does
    # before the stream; a string code ("server_error") does not say.
    retryable = code is not None and code.isdigit() and int(code) in RETRYABLE_STATUSES
    return UpstreamStreamError(
        message, code="upstream_" + code if code else None, retryable=retryable, usage=usage
    )


def token_count(value: object) -> int | None:
    """A token count as OpenRouter sends it (a JSON integer), or None for anything else: a
    missing field, null, a string, a float, or a bool (an int to Python, never a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_usage(usage: dict[str, Any], *, model: str | None, generation_id: str | None) -> Usage:
    prompt_details = _object(usage.get("prompt_tokens_details"))
    completion_details = _object(usage.get("completion_tokens_details"))
    cost_details = _object(usage.get("cost_details"))
    prompt = token_count(usage.get("prompt_tokens")) or 0
    completion = token_count(usage.get("completion_tokens")) or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=token_count(usage.get("total_tokens")) or prompt + completion,
        reasoning_tokens=token_count(completion_details.get("reasoning_tokens")) or 0,
        cached_tokens=token_count(prompt_details.get("cached_tokens")) or 0,
        cost=parse_amount(usage.get("cost")),
        model=model,
        generation_id=generation_id,
        cache_write_tokens=token_count(prompt_details.get("cache_write_tokens")) or 0,
        is_byok=usage.get("is_byok") is True,
        upstream_cost=parse_amount(cost_details.get("upstream_inference_cost")),
    )


# The readable part of each reasoning detail type; `reasoning.encrypted` has none, by design.
_READABLE_DETAIL = {"reasoning.text": "text", "reasoning.summary": "summary"}


def _reasoning(text: Any, details: Any) -> Reasoning | None:
    """A message's or a delta's reasoning, if it has any."""
    kept = tuple(d for d in details if isinstance(d, dict)) if isinstance(details, list) else ()
    if not isinstance(text, str) or not text:
        # Some providers send only details: show their readable text, never the encrypted data.
        text = "".join(
            d[field]
            for d in kept
            if (field := _READABLE_DETAIL.get(d.get("type"))) and isinstance(d.get(field), str)
        )
    return Reasoning(text, kept) if text or kept else None


def _citations(annotations: Any) -> list[Citation]:
    if not isinstance(annotations, list):
        return []
    citations = []
    for annotation in annotations:
        if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
            continue
        # OpenRouter nests the fields under `url_citation`; a flat one is read the same.
        cited = _object(annotation.get("url_citation")) or annotation
        url = cited.get("url")
        if not isinstance(url, str) or not url:
            continue
        start, end = cited.get("start_index"), cited.get("end_index")
        citations.append(
            Citation(
                url=url,
                title=cited.get("title") if isinstance(cited.get("title"), str) else None,
                content=cited.get("content") if isinstance(cited.get("content"), str) else None,
                start_index=start if isinstance(start, int) else None,
                end_index=end if isinstance(end, int) else None,
            )
        )
    return citations


def merge_reasoning_details(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The streamed fragments of `reasoning_details` as the whole blocks they make up.

    A stream sends each block in pieces (same `type` and `index`, the text split, the
    signature in the last one); the blocks go back upstream whole, in their order, as the
    non-streaming answer would have given them. Encrypted blocks come whole and stay as they are.
    """
    merged: list[dict[str, Any]] = []
    for detail in details:
        last = merged[-1] if merged else None
        field = _READABLE_DETAIL.get(detail.get("type"))
        if (
            field is not None
            and last is not None
            and last.get("type") == detail.get("type")
            and last.get("index") == detail.get("index")
        ):
            last[field] = (last.get(field) or "") + (detail.get(field) or "")
            for key, value in detail.items():
                if key != field and value is not None:
                    last[key] = value
        else:
            merged.append(dict(detail))
    return merged


def _decode_chunk(data: str) -> list[Event]:
    # orjson: the same objects as the stdlib's json for any chunk OpenRouter sends, at a third
    # of its cost per chunk (`python -m bench.pertoken`, docs/benchmarks.md "Per token"). What
    # the stdlib let through and no UTF-8 frame can carry (NaN, half a surrogate pair) is a
    # protocol error here.
    # Decoded here, not in stream_chat: its frame stays suspended between chunks, and a
    # decoded chunk held there is ~1.5 KB of every idle stream (python -m bench --idle 1000,
    # docs/benchmarks.md step 8).
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError("OpenRouter sent a data line that is not JSON") from exc
    return parse_chunk(chunk)


def _decode_first_chunk(data: str, header_id: str | None) -> list[Event]:
    """The first data chunk's events, after an Opened with its generation id and model: a
    reply stopped from now on knows both, header or not."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError("OpenRouter sent a data line that is not JSON") from exc
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("OpenRouter sent a chunk that is not a JSON object")
    generation_id, model = chunk.get("id"), chunk.get("model")
    opened = Opened(
        generation_id if isinstance(generation_id, str) and generation_id else header_id,
        model if isinstance(model, str) and model else None,
    )
    return [opened, *parse_chunk(chunk)]


def parse_chunk(chunk: Any) -> list[Event]:
    """Turn one decoded `data:` payload into events; raise on an in-band error."""
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("OpenRouter sent a chunk that is not a JSON object")
    usage = _chunk_usage(chunk)
    if chunk.get("error") is not None:
        # An error is an error whenever it comes, after finish_reason too.
        raise _in_band_error(chunk, "OpenRouter reported an error mid-stream", usage=usage)
    events: list[Event] = []
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning, details = delta.get("reasoning"), delta.get("reasoning_details")
            if reasoning or details:
                thought = _reasoning(reasoning, details)
                if thought is not None:
                    events.append(thought)
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(Delta(content))
            annotations = delta.get("annotations")
            if annotations:
                events.extend(_citations(annotations))
        reason = choice.get("finish_reason")
        if reason == "error":
            raise UpstreamStreamError("OpenRouter ended the generation with an error", usage=usage)
        if isinstance(reason, str):
            model, generation_id = chunk.get("model"), chunk.get("id")
            events.append(Finish(reason, choice.get("native_finish_reason"), model, generation_id))
    if usage is not None:
        events.append(usage)
    return events


def _chunk_usage(payload: dict[str, Any]) -> Usage | None:
    """A chunk's (or a body's) usage, named by its model and id: read only when it has one,
    not for every token's chunk."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return parse_usage(usage, model=payload.get("model"), generation_id=payload.get("id"))


def parse_completion(payload: dict[str, Any]) -> list[Event]:
    """A non-streaming completion body as events: Reasoning and Delta (each whole, if any),
    Citations, Finish, and Usage when the body carries it; raise on an error body."""
    model, generation_id = payload.get("model"), payload.get("id")
    usage = _chunk_usage(payload)
    if payload.get("error") is not None:
        raise _in_band_error(payload, "OpenRouter reported an error", usage=usage)
    choices = payload.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        choice = {}
    events: list[Event] = []
    message = choice.get("message")
    if isinstance(message, dict):
        thought = _reasoning(message.get("reasoning"), message.get("reasoning_details"))
        if thought is not None:
            events.append(thought)
        content = message.get("content")
        if isinstance(content, str) and content:
            events.append(Delta(content))
        events.extend(_citations(message.get("annotations")))
    reason = choice.get("finish_reason")
    events.append(
        Finish(
            reason if isinstance(reason, str) and reason else "stop",
            choice.get("native_finish_reason"),
            model,
            generation_id,
        )
    )
    if usage is not None:
        events.append(usage)
    return events


# --- the client ---------------------------------------------------------------------------------


def _when_sent(
    sent: asyncio.Future[None],
) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """An httpcore trace hook that resolves `sent` when the request's body is sent. Then it
    lets go of it: the request outlives the call in the connection pool, and what waits on
    `sent` should not be kept there for the cyclic collector to find."""
    pending = [sent]

    async def trace(event: str, info: dict[str, Any]) -> None:
        if pending and event.endswith("send_request_body.complete"):
            future = pending.pop()
            if not future.done():
                future.set_result(None)

    return trace


async def _read_to_the_end(events: AsyncIterator[Any]) -> None:
    """Read what follows [DONE], so the connection goes back to the pool for the next reply.

    httpx reuses a connection only once its response was read to the end; one closed after
    [DONE] but before the body's last bytes is discarded, and the next reply pays a new TCP
    and TLS handshake on its way to the first token. The reply is complete by then: a stall or
    a drop here costs the connection, never the reply.
    """
    with contextlib.suppress(TimeoutError, httpx.TransportError):
        async with asyncio.timeout(AFTER_DONE_GRACE):
            async for _ in events:
                pass


class OpenRouterClient:
    """Calls OpenRouter through the app's `ClientPool` (owned by the lifespan).

    A plain `httpx.AsyncClient` works too: only `stream`, `post` and `get` are used.
    """

    def __init__(
        self,
        http: httpx.AsyncClient | ClientPool,
        *,
        base_url: str,
        api_key: str | None,
        app_url: str,
        app_title: str,
        attachments: ReadAttachment | None = None,
    ) -> None:
        self._http = http
        # Reads an attachment's bytes for a request that carries its placeholder (the store's
        # `uploads.chunks`); None: no request carries any (the titler's check, bench clients).
        self._attachments = attachments
        self.base_url = base_url.rstrip("/")
        self._headers = {
            "HTTP-Referer": app_url,
            "X-OpenRouter-Title": app_title,
            "X-Title": app_title,
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments that send `body`: as JSON, or, with attachments, streamed
        with their files read in chunks (app/upstream/attachment_body.py)."""
        if self._attachments is None or not has_attachments(body):
            return {"json": body, "headers": dict(self._headers)}
        length, content = encode(body, self._attachments)
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Content-Length": str(length),
        }
        return {"content": content, "headers": headers}

    async def stream_chat(
        self, body: dict[str, Any], *, sent: asyncio.Future[None] | None = None
    ) -> AsyncIterator[Event]:
        """Yield the events of one streaming completion; the response is closed on every exit.
        `sent` is resolved once the request is on the wire (httpcore's trace), before its
        answer: what the caller does then is never in the request's way. A signal, not a
        callback: what happens on it is the caller's to decide, not run by the client."""
        finished = False
        extensions = {} if sent is None else {"trace": _when_sent(sent)}
        with _TRANSPORT_ERRORS:
            async with aconnect_sse(
                self._http,
                "POST",
                f"{self.base_url}/chat/completions",
                **self._body({**body, "stream": True}),
                extensions=extensions,
            ) as source:
                response = source.response
                mark(Stage.UPSTREAM)
                if response.status_code != 200:
                    raise await _status_error(response)
                header_id = response.headers.get("x-generation-id")
                if header_id:
                    # Known before any chunk: a reply stopped while the upstream still thinks
                    # (only `: OPENROUTER PROCESSING` so far) can look its cost up by it.
                    yield Opened(header_id)
                first = awaiting_content = True
                events = source.aiter_sse()
                async for sse in events:
                    data = sse.data
                    if data == "[DONE]":
                        await _read_to_the_end(events)
                        break
                    if not data:
                        continue
                    if first:
                        first = False
                        decoded = _decode_first_chunk(data, header_id)
                    else:
                        decoded = _decode_chunk(data)
                    if awaiting_content:
                        mark(Stage.FIRST_CHUNK)  # until the chunk with the first content
                        awaiting_content = not any(type(e) is Delta and e.content for e in decoded)
                    for event in decoded:
                        if type(event) is Finish:
                            if finished:
                                continue  # repeated in the usage chunk: the reply ended once
                            finished = True
                        yield event
                if not finished:
                    # With or without [DONE]: a stream that never said how the reply ended
                    # must not pass for a short answer.
                    raise UpstreamConnectionError(
                        "OpenRouter closed the stream before the reply finished"
                    )

    async def stream_data(
        self, body: dict[str, Any], *, on_sent: Callable[[], None] | None = None
    ) -> AsyncIterator[Opened | str]:
        """One streaming completion as it came, for a relay that passes chunks on unchanged
        (app/jobs/): `Opened` at HTTP 200 (the X-Generation-Id header's id, if any), then each
        `data:` payload, undecoded, until [DONE] (not yielded) or the stream's end. A non-200
        raises before anything is yielded; the response is closed on every exit."""
        extensions = {} if on_sent is None else {"trace": _when_sent(on_sent)}
        with _TRANSPORT_ERRORS:
            async with aconnect_sse(
                self._http,
                "POST",
                f"{self.base_url}/chat/completions",
                **self._body({**body, "stream": True}),
                extensions=extensions,
            ) as source:
                response = source.response
                if response.status_code != 200:
                    raise await _status_error(response)
                yield Opened(response.headers.get("x-generation-id"))
                events = source.aiter_sse()
                async for sse in events:
                    if sse.data == "[DONE]":
                        await _read_to_the_end(events)
                        return
                    if sse.data:
                        yield sse.data

    async def complete_payload(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming completion's body as OpenRouter sent it (errors raised as ever)."""
        payload = await self._json(
            "POST", "/chat/completions", **self._body({**body, "stream": False})
        )
        assert payload is not None
        return payload

    async def _json(
        self, method: str, path: str, *, none_if_404: bool = False, **kwargs: Any
    ) -> dict[str, Any] | None:
        """One non-streaming call: errors mapped into the tree, the body a JSON object."""
        with _TRANSPORT_ERRORS:
            kwargs.setdefault("headers", self._headers)
            response = await self._http.request(method, f"{self.base_url}{path}", **kwargs)
        if none_if_404 and response.status_code == 404:
            return None
        if response.status_code != 200:
            raise await _status_error(response)
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UpstreamProtocolError("OpenRouter answered with a body that is not JSON") from exc
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("OpenRouter answered with a body that is not an object")
        return payload

    async def complete(self, body: dict[str, Any]) -> list[Event]:
        """A non-streaming completion, as the events its stream would have carried."""
        payload = await self._json(
            "POST", "/chat/completions", **self._body({**body, "stream": False})
        )
        assert payload is not None
        return parse_completion(payload)

    async def get_generation(self, generation_id: str) -> dict[str, Any] | None:
        """The generation record, or None while OpenRouter does not know it yet (404)."""
        payload = await self._json(
            "GET", "/generation", params={"id": generation_id}, none_if_404=True
        )
        data = payload.get("data") if payload is not None else None
        return data if isinstance(data, dict) else None

    async def list_models(self) -> list[dict[str, Any]]:
        """The raw model list of `GET /models` (`data`); entries are not checked here."""
        payload = await self._json("GET", "/models")
        assert payload is not None
        data = payload.get("data")
        if not isinstance(data, list):
            raise UpstreamProtocolError("OpenRouter's model list has no `data` array")
        return data

    async def key_info(self) -> dict[str, Any]:
        """`GET /key`: the key's label, `limit`, `usage`, `limit_remaining` (USD; limit and
        limit_remaining null when the key has no limit). 401 for a key OpenRouter refuses."""
        payload = await self._json("GET", "/key")
        assert payload is not None
        data = payload.get("data")
        if not isinstance(data, dict):
            raise UpstreamProtocolError("OpenRouter's key answer has no `data` object")
        return data
