"""Where a reply's first token spends its time: a probe the benchmark switches on.

With STAGE_PROBE=true, every request is timed at the marks below, from the moment it reaches
the app to the moment its reply's first delta is handed to the client's socket. Each stage is
the time since the mark before it (a mark a request does not pass, `saved` when no limit
applies, is left out):

    identified    the caller is known (token verified)
    validated     body read, parsed and validated; the turn built (its history read, if any)
    admitted      rate limits counted, the worst case priced, the reservation built
    saved         the turn's rows and reservation written: only when a limit gates the call
    started       the run made (the upstream body built) and its task spawned
    upstream      the upstream's response headers: connect, send, and its own first wait
    first_chunk   the upstream's chunk with the first content (a role chunk, reasoning before
                  it): its time to first token, not ours
    first_delta   that chunk parsed into the first delta
    relayed       the delta appended to the reply's log, the request's follower woken, its
                  frame handed to the client's connection

`GET /api/admin/stages` gives each stage's samples in milliseconds, `DELETE` clears them
(`bench --stages`). The marks live in one list per request, shared by reference with the tasks
the request spawns (the run, the SSE sender), which inherit its context. Off, the default, a
mark is one context-variable read.
"""

from __future__ import annotations

import contextvars
import itertools
import time
from enum import StrEnum

from starlette.types import ASGIApp, Receive, Scope, Send


class Stage(StrEnum):
    RECEIVED = "received"
    IDENTIFIED = "identified"
    VALIDATED = "validated"
    ADMITTED = "admitted"
    SAVED = "saved"
    STARTED = "started"
    UPSTREAM = "upstream"
    FIRST_CHUNK = "first_chunk"
    FIRST_DELTA = "first_delta"
    RELAYED = "relayed"


Marks = list[tuple[Stage, float]]

_marks: contextvars.ContextVar[Marks | None] = contextvars.ContextVar("stage_marks", default=None)

# Per stage; past it, samples are dropped (a benchmark reads and clears them per measurement).
MAX_SAMPLES = 200_000


def mark(stage: Stage) -> None:
    """The current request reached `stage` (nothing when the probe is off); reached again
    right after, the later time counts (the upstream's chunks before the first content)."""
    marks = _marks.get()
    if marks is not None:
        if marks[-1][0] is stage:
            marks.pop()
        marks.append((stage, time.perf_counter()))


class StartMarks:
    """ASGI middleware, outermost: each HTTP request's marks start here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _marks.set([(Stage.RECEIVED, time.perf_counter())])
        await self.app(scope, receive, send)


class StageProbe:
    """The samples of every request that relayed a first delta it started."""

    def __init__(self) -> None:
        self.samples: dict[Stage, list[float]] = {stage: [] for stage in Stage}

    def relayed(self) -> None:
        """The current request's first delta is on its way to the client: its stages count."""
        marks = _marks.get()
        if marks is None or marks[-1][0] is not Stage.FIRST_DELTA:
            return
        marks.append((Stage.RELAYED, time.perf_counter()))
        if not any(stage is Stage.STARTED for stage, _ in marks):
            return  # a stream the request only followed: its turn was timed elsewhere
        for (_, before), (stage, at) in itertools.pairwise(marks):
            samples = self.samples[stage]
            if len(samples) < MAX_SAMPLES:
                samples.append(1000 * (at - before))

    def clear(self) -> None:
        for samples in self.samples.values():
            samples.clear()
