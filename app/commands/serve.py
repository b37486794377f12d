"""`python -m app serve`: the server, as uvicorn runs it (one process, or WEB_CONCURRENCY
workers each building their own app)."""

from __future__ import annotations

import asyncio

from app.settings import Settings


async def _reachable(settings: Settings) -> None:
    """Connect once before serving: an unreachable database is then one line (DatabaseUnreachable)
    instead of uvicorn's report of a failed start-up, a traceback."""
    from app.storage.database import open_database

    database = await open_database(
        settings.database_url, max_size=1, connect_timeout=settings.database_connect_timeout
    )
    await database.disconnect()


def serve(settings: Settings) -> None:
    import uvicorn

    from app.agents.config import load_agents
    from app.main import create_app

    if settings.web_concurrency > 1:
        # Each worker process builds its own app (uvicorn calls the factory); a bad agents
        # file fails here first, in one line, instead of once per worker.
        load_agents(settings.agents_file)
        app = "app.main:create_app"
    else:
        app = create_app(settings)  # a bad agents file fails here, with its message
    asyncio.run(_reachable(settings))
    uvicorn.run(
        app,
        factory=isinstance(app, str),
        workers=settings.web_concurrency,
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=settings.shutdown_timeout,
        # Ours (configure_logging): uvicorn's lines go through the same handler and format.
        log_config=None,
        # app.access (app/ops/logging.py) logs each request once, with its duration and id.
        access_log=False,
    )
