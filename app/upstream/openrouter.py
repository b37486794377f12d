"""The OpenRouter client: one chat call in, typed events out, streaming or not.

Events, in the order a stream yields them (`complete` returns the same, without Opened)::

    Opened(generation_id)          HTTP 200 arrived; id from the X-Generation-Id header
    Delta(content) / Reasoning(text)   any number, content relayed as it arrives
    Finish(reason, native_reason, model, generation_id)
    Usage(tokens..., cost)         exactly once when the upstream sends it, after Finish

Failures are raised, never yielded, so no caller can mistake one for a short answer::

    UpstreamError                  code, message, retryable, retry_after
    ├── UpstreamStatusError        HTTP error before the stream (status: 400, 401, 402, 429, 5xx…)
    ├── UpstreamStreamError        an `error` chunk inside a 200 stream, any time (.usage if it had)
    ├── UpstreamProtocolError      a data line that is not a chunk we can read
    ├── UpstreamTimeout            no connection, or no bytes, within the timeout
    └── UpstreamConnectionError    refused, reset, or ended before `finish_reason`/[DONE]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from app.billing.money import parse_amount
from app.upstream.pool import ClientPool

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
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
    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(
            message,
            code=f"upstream_{status}",
            retryable=status in RETRYABLE_STATUSES,
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


@dataclass(frozen=True, slots=True)
class Delta:
    content: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


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
    cost: Decimal | None
    model: str | None
    generation_id: str | None


Event = Opened | Delta | Reasoning | Finish | Usage


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


_TRANSPORT_ERRORS = _TransportErrors()


async def _status_error(response: httpx.Response) -> UpstreamStatusError:
    await response.aread()
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    _, message = _error_message(payload, f"OpenRouter answered HTTP {response.status_code}")
    return UpstreamStatusError(response.status_code, message, retry_after=_retry_after(response))


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


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_usage(usage: dict[str, Any], *, model: str | None, generation_id: str | None) -> Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_int(usage.get("total_tokens")) or prompt + completion,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")),
        cost=parse_amount(usage.get("cost")),
        model=model,
        generation_id=generation_id,
    )


def _decode_chunk(data: str) -> list[Event]:
    # Decoded here, not in stream_chat: its frame stays suspended between chunks, and a
    # decoded chunk held there is ~1.5 KB of every idle stream.
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UpstreamProtocolError("OpenRouter sent a data line that is not JSON") from exc
    return parse_chunk(chunk)


def parse_chunk(chunk: Any) -> list[Event]:
    """Turn one decoded `data:` payload into events; raise on an in-band error."""
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("OpenRouter sent a chunk that is not a JSON object")
    model, generation_id = chunk.get("model"), chunk.get("id")
    usage = _chunk_usage(chunk, model=model, generation_id=generation_id)
    if chunk.get("error") is not None:
        # An error is an error whenever it comes, after finish_reason too.
        raise _in_band_error(chunk, "OpenRouter reported an error mid-stream", usage=usage)
    events: list[Event] = []
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events.append(Reasoning(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(Delta(content))
        reason = choice.get("finish_reason")
        if reason == "error":
            raise UpstreamStreamError("OpenRouter ended the generation with an error", usage=usage)
        if isinstance(reason, str):
            events.append(Finish(reason, choice.get("native_finish_reason"), model, generation_id))
    if usage is not None:
        events.append(usage)
    return events


def _chunk_usage(
    payload: dict[str, Any], *, model: str | None, generation_id: str | None
) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return parse_usage(usage, model=model, generation_id=generation_id)


def parse_completion(payload: dict[str, Any]) -> list[Event]:
    """A non-streaming completion body as events: Reasoning and Delta (each whole, if any),
    Finish, and Usage when the body carries it; raise on an error body."""
    model, generation_id = payload.get("model"), payload.get("id")
    usage = _chunk_usage(payload, model=model, generation_id=generation_id)
    if payload.get("error") is not None:
        raise _in_band_error(payload, "OpenRouter reported an error", usage=usage)
    choices = payload.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        choice = {}
    events: list[Event] = []
    message = choice.get("message")
    if isinstance(message, dict):
        reasoning, content = message.get("reasoning"), message.get("content")
        if isinstance(reasoning, str) and reasoning:
            events.append(Reasoning(reasoning))
        if isinstance(content, str) and content:
            events.append(Delta(content))
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
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._headers = {
            "HTTP-Referer": app_url,
            "X-OpenRouter-Title": app_title,
            "X-Title": app_title,
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[Event]:
        """Yield the events of one streaming completion; the response is closed on every exit."""
        finished = False
        with _TRANSPORT_ERRORS:
            async with aconnect_sse(
                self._http,
                "POST",
                f"{self.base_url}/chat/completions",
                json={**body, "stream": True},
                headers=self._headers,
            ) as source:
                response = source.response
                if response.status_code != 200:
                    raise await _status_error(response)
                yield Opened(response.headers.get("x-generation-id"))
                events = source.aiter_sse()
                async for sse in events:
                    data = sse.data
                    if data == "[DONE]":
                        await _read_to_the_end(events)
                        break
                    if not data:
                        continue
                    for event in _decode_chunk(data):
                        if isinstance(event, Finish):
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

    async def _json(
        self, method: str, path: str, *, none_if_404: bool = False, **kwargs: Any
    ) -> dict[str, Any] | None:
        """One non-streaming call: errors mapped into the tree, the body a JSON object."""
        with _TRANSPORT_ERRORS:
            response = await self._http.request(
                method, f"{self.base_url}{path}", headers=self._headers, **kwargs
            )
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
        payload = await self._json("POST", "/chat/completions", json={**body, "stream": False})
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
