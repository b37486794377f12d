"""Logging: the same set-up whichever way the server is started, and the lines on-call reads.

The Procfile and `scripts/serve` run `python -m app serve`; `uvicorn --factory
app.main:create_app` (and each worker process uvicorn spawns under `WEB_CONCURRENCY`) enters
through `create_app()`. Both call `configure_logging()`, so retries, migrations and the drain
on shutdown log at INFO with time and level in every case.

LOG_FORMAT=json (the default in production) writes one JSON object per line, each record's
`extra` fields as keys. Two kinds of lines are ours:
- `app.access`: one per request, when its response has ended (an SSE stream: when it closes),
  with method, path (token parameters redacted), status, duration and request id. It replaces
  uvicorn's access log, which `python -m app serve` turns off.
- `app.reply`: one per reply, when it has ended (`ReplyLog`, a reply observer of the runs).
Every line carries the request id of the request it was logged under (a reply's too: its run
was started in that request's context), from `X-Request-ID` or made here.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.redact import redact
from app.core.states import CostSource
from app.storage.tables import now

if TYPE_CHECKING:
    from app.ops.observed import ObservedReply
    from app.storage.ledger import LateCost

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 200

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("app.access")
reply_log = logging.getLogger("app.reply")


class RequestIdFilter(logging.Filter):
    """Gives every record the request id it was logged under (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


# Characters a terminal or a log viewer takes as a line break or a command: C0 and C1 controls
# (NEL, U+0085, breaks a line in some viewers), DEL, and Unicode's line and paragraph separators.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _escaped(value: Any) -> Any:
    # Numbers stay numbers (`%d`, `%.1f`); anything else is text once formatted.
    if isinstance(value, int | float | Decimal):
        return value
    return str(value).translate(_CONTROLS)


class TextFormatter(logging.Formatter):
    """Text lines no logged value can break: a request path with an encoded newline (`%0a`,
    decoded by the server) would otherwise start a line of its own, forging any log line the
    attacker likes. The values put into a message (its `args`: every value our code logs is
    one, no message is an f-string) have their control characters written escaped, as Python
    writes them; the message's own template is the code's, and may span lines (the simulator's
    banner). A traceback keeps its lines. (JSON lines escape everything anyway.)"""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if args:
            escaped = (
                {key: _escaped(value) for key, value in args.items()}
                if isinstance(args, Mapping)
                else tuple(_escaped(value) for value in args)
            )
            # A copy: other handlers (a test's capture) see the record as it was logged.
            record = logging.makeLogRecord({**record.__dict__, "args": escaped})
        return super().format(record)


def configure_logging(*, json_lines: bool = False) -> None:
    """INFO and up to stderr, as text or JSON lines, unless the process's logging is set up.

    A root logger with handlers belongs to a host that chose its own (pytest's capture,
    `uvicorn --log-config`, an app embedding ours): it is left alone. Calling it twice is a no-op.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS,
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                # uvicorn passes its message again with terminal colours (ANSI escapes) as the
                # `color_message` extra: noise in a JSON line, which has the plain one.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
                json_default=_json_default,
            )
        )
    else:
        handler.setFormatter(TextFormatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # httpx logs every request it makes at INFO: a second line per reply beside the access
    # log, saying only that OpenRouter answered (our own lines say when it did not), and ~2%
    # of the server's CPU under load (py-spy on `python -m bench --levels 50`'s server,
    # docs/benchmarks.md step 10).
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _json_default(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else repr(value)


def valid_request_id(value: str | None) -> bool:
    """A router's id we pass on: 1 to 200 printable ASCII characters (Heroku's is a UUID)."""
    return bool(value) and len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable()


class RequestLog:
    """Pure ASGI (no per-response task, see app/http/middleware.py): takes the router's
    X-Request-ID or makes one, returns it on the response, logs the request's line at its end,
    and counts the SSE responses open (`open_streams`, the app's metrics gauge when it has one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if valid_request_id(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # if the app raises, the server's error handler answers 500
        streams = _open_streams(scope)
        counted = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, counted
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                if streams is not None and headers.get("content-type", "").startswith(
                    "text/event-stream"
                ):
                    streams.inc()
                    counted = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                streams.dec()
            query = scope.get("query_string", b"").decode("latin-1")
            path = redact(f"{scope['path']}?{query}") if query else scope["path"]
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                duration_ms,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                },
            )
            request_id.reset(token)


def _open_streams(scope: Scope) -> Any:
    """The metrics gauge of this app, from the lifespan's state (none before it has started)."""
    state = scope.get("state") or {}
    app = state.get("app")
    return app.metrics.open_streams if app is not None and app.metrics is not None else None


def _ms_since(start: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else round((moment - start).total_seconds() * 1000, 1)


class ReplyLog:
    """A reply observer (app/replies/registry.py): one line when a reply has ended, and one
    when a cost it ended without is learnt (a stopped or interrupted reply's, say)."""

    def reply_started(self, run: ObservedReply) -> None:
        pass  # the request's own line says a turn was asked for

    def reply_ended(self, run: ObservedReply) -> None:
        records = run.records
        known = [r.cost for r in records if r.cost is not None]
        first = next((r.first_token_at for r in records if r.first_token_at), None)
        # A reasoning model's answer may start long after its thinking did: only the two
        # together say where the wait was.
        thought = next((r.first_reasoning_at for r in records if r.first_reasoning_at), None)
        sources = sorted({str(r.cost_source) for r in records})
        fields = {
            "message_id": run.message_id,
            "conversation_id": run.request.conversation_id,
            "user_id": run.request.user_id,
            "agent": run.request.agent,
            "requested_model": run.request.model,
            "model": next((r.model for r in reversed(records) if r.model), None),
            "generation_ids": [r.generation_id for r in records if r.generation_id],
            "attempts": len(records),
            "status": str(run.status),
            "time_to_first_token_ms": _ms_since(run.created_at, first),
            "time_to_first_reasoning_ms": _ms_since(run.created_at, thought),
            "duration_ms": round((now() - run.created_at).total_seconds() * 1000, 1),
            "prompt_tokens": sum(r.prompt_tokens for r in records),
            "completion_tokens": sum(r.completion_tokens for r in records),
            "reasoning_tokens": sum(r.reasoning_tokens for r in records),
            "cost_usd": str(sum(known, Decimal(0))) if known else None,
            "cost_source": sources[0] if len(sources) == 1 else ",".join(sources),
            "cost_pending": any(r.cost_source == CostSource.PENDING for r in records),
        }
        reply_log.info(
            "reply %s %s in %sms, %s tokens, $%s",
            run.message_id,
            run.status,
            fields["duration_ms"],
            fields["completion_tokens"],
            fields["cost_usd"] or "?",
            extra=fields,
        )

    def cost_learnt(self, late: LateCost) -> None:
        reply_log.info(
            "reply %s: cost learnt later, $%s (%s)",
            late.message_id,
            late.cost if late.cost is not None else "?",
            late.source,
            extra={
                "message_id": late.message_id,
                "agent": late.agent,
                "model": late.model,
                "cost_usd": None if late.cost is None else str(late.cost),
                "cost_source": str(late.source),
            },
        )
