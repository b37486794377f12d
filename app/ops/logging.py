"""Logging: the same set-up whichever way the server is started.

The Procfile and `scripts/serve` run `python -m app serve`; `uvicorn --factory
app.main:create_app` (and each worker process uvicorn spawns under `WEB_CONCURRENCY`) enters
through `create_app()`. Both call `configure_logging()`, so retries, migrations and the drain
on shutdown log at INFO with time and level in every case.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """INFO and up to stderr, unless the process's logging is already set up.

    A root logger with handlers belongs to a host that chose its own (pytest's capture,
    `uvicorn --log-config`, an app embedding ours): it is left alone. Calling it twice is a no-op.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    # httpx logs every request it makes at INFO: a second line per reply beside the access
    # log, saying only that OpenRouter answered (our own lines say when it did not), and ~2%
    # of the server's CPU under load (py-spy, bench/).
    logging.getLogger("httpx").setLevel(logging.WARNING)
