"""`python -m app [serve|migrate|check]`: run the server, apply the migrations, or check the set-up.

The one way to start the server, in development (`scripts/serve`) and in production (the
Procfile): it owns what uvicorn's command line would otherwise hold (host, port, workers,
the graceful-shutdown timeout), all read from the settings. Configuration errors end the
process with one clear line naming the setting, never a traceback and never a setting's value
(one of them is the API key); so does a database that cannot be reached (where and why, never
its password).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from app.ops.logging import configure_logging
from app.settings import ConfigError, DatabaseSettings, Settings, load_settings, refuse_to_start


async def _migrate(settings: DatabaseSettings) -> None:
    from app.storage.database import open_database
    from app.storage.migrations import migrate

    # One connection is all migrating needs, and no statement timeout: DDL on a big table, or
    # waiting for another process's migration to finish, may take longer than a query should.
    database = await open_database(
        settings.database_url, max_size=1, connect_timeout=settings.database_connect_timeout
    )
    try:
        applied = await migrate(database, url=settings.database_url)
    finally:
        await database.disconnect()
    print(f"migrations applied: {applied or 'none, the schema is up to date'}")


async def _reachable(settings: Settings) -> None:
    """Connect once before serving: an unreachable database is then one line (DatabaseUnreachable)
    instead of uvicorn's report of a failed start-up, a traceback."""
    from app.storage.database import open_database

    database = await open_database(
        settings.database_url, max_size=1, connect_timeout=settings.database_connect_timeout
    )
    await database.disconnect()


def _serve(settings: Settings) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", nargs="?", default="serve", choices=["serve", "migrate", "check"]
    )
    parser.add_argument(
        "--ping",
        action="store_true",
        help="check: also ask each model for one token (recorded in the ledger as agent `check`)",
    )
    args = parser.parse_args(argv)
    from app.storage.database import DatabaseUnreachable

    try:
        if args.command == "migrate":
            configure_logging()
            database_settings = load_settings(DatabaseSettings)
            database_settings.require_database_for_release()
            asyncio.run(_migrate(database_settings))
            return 0
        settings = load_settings()
        # After the settings, which say the format (LOG_FORMAT); a refusal prints its one line.
        configure_logging(json_lines=settings.logs_as_json)
        if args.command == "check":
            from app.ops.check import run_checks

            return asyncio.run(run_checks(settings, ping=args.ping))
        _serve(settings)  # a bad agents file is a ConfigError too
    except ConfigError as exc:
        refuse_to_start(exc)
    except DatabaseUnreachable as exc:
        # One line, as for a configuration error: the release phase or the dyno's log says
        # what is wrong, and a platform sees the nonzero exit.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
