"""The named states of replies and of their upstream requests, as stored and as sent.

    MessageStatus      an assistant message:  streaming -> complete | stopped | error | interrupted
                       (a user message is `complete` from the start)
    GenerationStatus   one upstream request:  streaming -> complete | error | cancelled
    CostSource         where a generation's cost came from:
                       pending -> usage | generation | none;  not_billed when refused upstream

StrEnums, so they compare equal to the strings in the database and on the wire.
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    STREAMING = "streaming"
    COMPLETE = "complete"  # the upstream finished
    STOPPED = "stopped"  # POST /api/messages/{id}/stop
    ERROR = "error"  # an upstream fault, or ours
    INTERRUPTED = "interrupted"  # shutdown, DISCONNECT_POLICY=cancel, or an orphan swept up


class GenerationStatus(StrEnum):
    STREAMING = "streaming"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"  # the reply was stopped or interrupted while this request ran


class CostSource(StrEnum):
    PENDING = "pending"  # not known yet: a lookup of the generation record is under way
    USAGE = "usage"  # the stream's (or the response's) usage chunk
    GENERATION = "generation"  # OpenRouter's generation record (GET /generation)
    NOT_BILLED = "not_billed"  # refused before a generation existed: OpenRouter bills nothing
    NONE = "none"  # unknown, visibly: the operator's `cost_source = 'none'` query finds it
