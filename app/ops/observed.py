"""What the reply observers (logging, metrics) read of a reply, without knowing the Run.

`app.replies.runs.Run` has these attributes; naming them here keeps `ops` below `replies`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from app.core.run_request import RunRequest
from app.core.states import MessageStatus
from app.storage.ledger import GenerationRecord


class ObservedReply(Protocol):
    @property
    def message_id(self) -> str: ...
    @property
    def request(self) -> RunRequest: ...
    @property
    def records(self) -> list[GenerationRecord]: ...
    @property
    def status(self) -> MessageStatus: ...
    @property
    def created_at(self) -> datetime: ...
