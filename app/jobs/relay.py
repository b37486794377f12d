"""One job: an OpenAI-shaped call relayed to OpenRouter, and its ledger row, however it ends.

Nothing of a job is kept but its generation row (model, tokens, cost, key, job tag, times)
and its budget reservation, unless its key says `store_content`. Its writes:

    start    the reservation and the row (`streaming`, cost `pending`): awaited before the
             upstream call when a limit applies (the check gates the call), else written
             beside it
    opened   a stream's generation id, once its first chunk names it: a crash after it still
             lets the cost be looked up (app/jobs/service.py's sweep)
    final    the row as it ended and the reservation's end (settled at once when the usage
             gave the cost); shielded from the cancellation that may have ended the job

A stream is relayed chunk by chunk as OpenRouter sent it (`data:` payloads unchanged: ids,
tool calls, `usage.cost`), each chunk read only for what the ledger needs. A client that
leaves mid-stream closes the upstream request (most providers stop generating, and billing,
then); the cost is then looked up in OpenRouter's generation record, as a stopped chat reply's
is, and the reservation settled to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from typing import Any, Protocol

from app.core.refusals import Refusal
from app.core.states import CostSource, GenerationStatus
from app.errors import ApiError
from app.jobs.errors import openai_error, upstream_refusal
from app.jobs.keys import ServiceKey
from app.jobs.request import JobRequest
from app.replies.draft import record_usage
from app.storage.ledger import GenerationRecord
from app.storage.store import Store
from app.storage.tables import job_contents, new_id, now
from app.storage.writer import Step, WriteRefused
from app.upstream.openrouter import (
    Finish,
    Opened,
    OpenRouterClient,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamError,
    Usage,
    parse_chunk,
    parse_completion,
)

log = logging.getLogger(__name__)

# A key `usage` or `error`, or a finish reason that is a string: what a chunk must show (in its
# JSON text, where a quote inside content is escaped) to be worth decoding.
MAY_MATTER = re.compile(r'"(?:usage|error)"|"finish_reason":\s*"')
AGENT = "jobs"  # the ledger's `agent` of every job's row
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def _error_chunk(message: str, code: str) -> bytes:
    """An error after the stream began, as OpenAI streams one (the SDK raises APIError)."""
    payload = {"error": {"message": message, "type": "server_error", "code": code, "param": None}}
    return f"data: {json.dumps(payload)}\n\n".encode()


class Host(Protocol):
    """What a job uses of `Jobs` (app/jobs/service.py), which admits it."""

    store: Store
    client: OpenRouterClient
    live: dict[str, Job]  # this process's live jobs, heartbeated
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]  # writes shutdown waits for
    reconcile: Callable[..., None]  # a cost looked up in the generation record, then settled


class Job:
    def __init__(
        self,
        jobs: Host,
        *,
        job_id: str,
        key: ServiceKey,
        request: JobRequest,
        reservation: list[Step],
        gated: bool,
        refusal: Callable[[], Awaitable[Refusal]],
    ) -> None:
        self.id = job_id  # its reservation's, and its generation row's `message_id`
        self._jobs = jobs
        self.key = key
        self.request = request
        self.record = GenerationRecord(
            id=new_id(), attempt=1, requested_model=request.model, started_at=now()
        )
        self._reservation = reservation
        self._gated = gated
        self._refusal = refusal
        self._writes: asyncio.Task[Any] | None = None  # the last write, each after the one before
        self._relayed: list[str] = []  # the stream's payloads, kept for `store_content` only
        self._answer: dict[str, Any] | None = None
        self._first_chunk = True  # the stream's first chunk is always read: the id, the model

    # -- writes -----------------------------------------------------------------------------------

    def _row(self) -> list[Step]:
        return self._jobs.store.ledger.generation_steps(
            records=[self.record],
            message_id=self.id,
            conversation_id="",
            agent=AGENT,
            user_id=None,
            key_id=self.key.id,
            job=self.request.job,
            touched_at=self.record.started_at,
        )

    def _then(self, write: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
        """Write after the writes before this one (an upsert landing before the row's first
        write would be overwritten by it), in the background shutdown waits for."""
        before = self._writes

        async def chained() -> Any:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            return await write()

        self._writes = self._jobs.spawn(chained())
        return self._writes

    async def begin(self) -> None:
        """The reservation and the row: awaited when a limit applies (402 or 429 when it does
        not fit, nothing saved), else written beside the upstream call."""
        steps = [*self._reservation, *self._row()]
        if not self._gated:
            self._then(lambda: self._jobs.store.writer.write(steps))
            return
        try:
            await self._jobs.store.writer.write(steps)
        except WriteRefused:
            raise await self._refusal() from None
        except Exception:
            log.exception("could not save job %s", self.id)
            raise ApiError(503, "storage_error", "the job could not be recorded") from None

    def _opened(self, generation_id: str | None) -> None:
        if generation_id and generation_id != self.record.generation_id:
            self.record.generation_id = generation_id
            row = self._row()
            self._then(lambda: self._jobs.store.writer.write(row))

    async def _finish(self) -> None:
        record = self.record
        if record.cost_source == CostSource.PENDING and record.generation_id is None:
            record.cost_source = CostSource.NONE  # nothing upstream to ask about it
        steps = [*self._row(), *self._jobs.store.budgets.end_steps(message_id=self.id)]
        if self.key.store_content:
            response = (
                json.dumps(self._answer) if self._answer is not None else "\n".join(self._relayed)
            )
            steps.append(
                job_contents.insert().values(
                    id=self.id,
                    key_id=self.key.id,
                    request=json.dumps(self.request.body),
                    response=response,
                    created_at=now(),
                )
            )
        try:
            await self._then(lambda: self._jobs.store.writer.write(steps))
        except Exception:
            # Left `streaming`, the row is swept up once its heartbeats stop, its cost looked up.
            log.exception("could not save job %s", self.id)
            return
        if record.cost_source == CostSource.PENDING:
            self._jobs.reconcile(record_id=record.id, generation_id=record.generation_id)

    def _ended(self, status: GenerationStatus, error: UpstreamError | None = None) -> None:
        record = self.record
        record.status, record.ended_at = status, now()
        if error is not None:
            record.error_code = error.code
            if isinstance(error, UpstreamStatusError):
                # Refused before any generation existed: OpenRouter bills nothing.
                record.cost, record.cost_source = Decimal(0), CostSource.NOT_BILLED
            elif isinstance(error, UpstreamStreamError) and error.usage is not None:
                record_usage(record, error.usage)

    # -- not streaming ----------------------------------------------------------------------------

    async def complete(self) -> dict[str, Any]:
        """The upstream's answer as it came (its id the generation's, `usage.cost` exact), or
        the refusal as an `ApiError`."""
        self._jobs.live[self.id] = self
        try:
            payload = await self._jobs.client.complete_payload(self.request.body)
            generation_id = payload.get("id")
            if isinstance(generation_id, str):
                self.record.generation_id = generation_id
            for event in parse_completion(payload):
                self._apply(event)
            self._answer = payload
            self._ended(GenerationStatus.COMPLETE)
            return payload
        except UpstreamError as exc:
            self._ended(GenerationStatus.ERROR, exc)
            raise upstream_refusal(exc) from None
        except Exception as exc:  # a bug of ours must still end the job and save it
            self._ended(GenerationStatus.ERROR, UpstreamError(str(exc), code="internal_error"))
            raise
        except BaseException:  # cancelled (shutdown): the call is cut, the cost looked up
            self._ended(GenerationStatus.CANCELLED)
            raise
        finally:
            self._jobs.live.pop(self.id, None)
            await asyncio.shield(self._jobs.spawn(self._finish()))

    def _apply(self, event: Any) -> None:
        if isinstance(event, Usage):
            record_usage(self.record, event)
        elif isinstance(event, Finish):
            self.record.model = event.model or self.record.model
            if self.record.first_token_at is None:
                self.record.first_token_at = now()

    # -- streaming --------------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        """The streaming answer, as an ASGI app: relayed until its end, or until the client
        leaves (then the upstream request is closed and the cost looked up)."""
        self._jobs.live[self.id] = self
        relay = asyncio.create_task(self._relay(send))

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(disconnected())
        try:
            await asyncio.wait([relay, watcher], return_when=asyncio.FIRST_COMPLETED)
        finally:
            relay.cancel()
            watcher.cancel()
            await asyncio.gather(relay, watcher, return_exceptions=True)
        if not relay.cancelled() and relay.exception() is not None:
            log.error("job %s failed", self.id, exc_info=relay.exception())

    async def _relay(self, send: Send) -> None:
        started = finished = False
        try:
            stream = self._jobs.client.stream_data(self.request.body)
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if isinstance(item, Opened):
                        await send(
                            {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
                        )
                        started = True
                        self._opened(item.generation_id)
                        continue
                    finished = self._read(item) or finished
                    if self.key.store_content:
                        self._relayed.append(item)
                    await send(
                        {
                            "type": "http.response.body",
                            "body": f"data: {item}\n\n".encode(),
                            "more_body": True,
                        }
                    )
                    if self.record.status == GenerationStatus.ERROR:
                        break  # an in-band error, relayed as it came: the stream ends with it
            if self.record.status != GenerationStatus.ERROR:
                if not finished:
                    raise UpstreamConnectionError(
                        "OpenRouter closed the stream before the reply finished"
                    )
                self._ended(GenerationStatus.COMPLETE)
                await send(
                    {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True}
                )
        except UpstreamError as exc:
            if self.record.status != GenerationStatus.ERROR:
                self._ended(GenerationStatus.ERROR, exc)
            if not started:
                refused = openai_error(upstream_refusal(exc))
                await send(
                    {
                        "type": "http.response.start",
                        "status": refused.status_code,
                        "headers": refused.raw_headers,
                    }
                )
                await send({"type": "http.response.body", "body": refused.body})
                return
            await send(
                {
                    "type": "http.response.body",
                    "body": _error_chunk(exc.message, exc.code),
                    "more_body": True,
                }
            )
        except BaseException:
            # The client left (the watcher cancelled us), or shutdown: the upstream request is
            # closed by now (aclosing), so the generation record has the cost.
            self._ended(GenerationStatus.CANCELLED)
            raise
        finally:
            self._jobs.live.pop(self.id, None)
            await asyncio.shield(self._jobs.spawn(self._finish()))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _read(self, data: str) -> bool:
        """What one chunk tells the ledger; whether it carried the finish. An in-band error
        ends the job (relayed as it came); a chunk we cannot read ends it too.

        Only a chunk that may matter is decoded: the first (its id, its model; its content is
        empty), and one whose text names
        `usage`, `error` or a finish reason (a string, not null). A content chunk is passed on
        undecoded: the relay's work per token is then the SSE line, as close to the
        pass-through's as a relay that reads the stream can be."""
        if not self._first_chunk and not MAY_MATTER.search(data):
            if self.record.first_token_at is None:
                self.record.first_token_at = now()
            return False
        self._first_chunk = False
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise UpstreamProtocolError("OpenRouter sent a data line that is not JSON") from None
        if self.record.generation_id is None and isinstance(chunk, dict):
            generation_id = chunk.get("id")
            if isinstance(generation_id, str) and generation_id:
                self._opened(generation_id)
        try:
            events = parse_chunk(chunk)
        except UpstreamStreamError as exc:
            self._ended(GenerationStatus.ERROR, exc)
            return False
        finished = False
        for event in events:
            if isinstance(event, Finish):
                finished = True
                self.record.model = event.model or self.record.model
            elif isinstance(event, Usage):
                record_usage(self.record, event)
            elif self.record.first_token_at is None:
                self.record.first_token_at = now()
        return finished
