"""`python -m app [serve|migrate]`: run the server, or apply the database migrations.

Configuration errors end the process with one clear line naming the setting, never a
traceback and never a setting's value (one of them is the API key).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from app.settings import ConfigError, Settings


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request it makes at INFO: a second line per reply beside the access
    # log, saying only that OpenRouter answered (our own lines say when it did not), and ~2%
    # of the server's CPU under load (py-spy, bench/).
    logging.getLogger("httpx").setLevel(logging.WARNING)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']).upper() or 'settings'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


async def _migrate(settings: Settings) -> None:
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


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.main import create_app

    app = create_app(settings)  # a bad agents file fails here, with its message
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
        log_config=None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = load_settings()
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        else:
            _serve(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
