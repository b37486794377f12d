"""Keeps tokens out of the access log.

uvicorn's access log line carries the request's path *with its query string*, and the GET
stream forms take tokens there (`?access_token=`, `?stream_token=`). A filter on the
`uvicorn.access` logger rewrites those values to `[redacted]` before any handler formats the
record, whatever handlers and formats the logging setup gives it (`dictConfig` keeps a
logger's filters). Headers never reach the access log, so `Authorization` needs nothing.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

TOKEN_PARAMS = frozenset({"access_token", "stream_token"})


def redact(text: str) -> str:
    """`text` with the values of any token parameters in its query string replaced.

    Names are compared decoded, as Starlette reads them (`%61ccess_token` is `access_token`
    to the route, so it must be to the filter too); everything else is left byte for byte.
    """
    path, question, query = text.partition("?")
    if not question:
        return text
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and unquote_plus(name).lower() in TOKEN_PARAMS:
            part = f"{name}=[redacted]"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_access_log_redaction() -> None:
    """Idempotent: `create_app` runs once per app, and tests build many."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
