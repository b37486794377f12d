"""`python -m app [serve|migrate|check|token]`: run the server, apply the migrations, check the
set-up, or make a user token for trying the page under AUTH_MODE=jwt.

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

from app.commands.migrate import migrate_database
from app.commands.serve import serve
from app.core.version import VERSION
from app.ops.logging import configure_logging
from app.settings import ConfigError, DatabaseSettings, load_settings, refuse_to_start
from app.storage.database import DatabaseUnreachable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"streamchat {VERSION}")
    parser.add_argument(
        "command", nargs="?", default="serve", choices=["serve", "migrate", "check", "token"]
    )
    parser.add_argument("--user", help="token: the user id the token is for")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="token: seconds it lasts (default 3600)"
    )
    parser.add_argument(
        "--admin", action="store_true", help="token: with the admin claim (AUTH_ADMIN_CLAIM)"
    )
    parser.add_argument(
        "--ping",
        action="store_true",
        help="check: also ask each model for one token (recorded in the ledger as agent `check`)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            configure_logging()
            database_settings = load_settings(DatabaseSettings)
            database_settings.require_database_for_release()
            asyncio.run(migrate_database(database_settings))
            return 0
        settings = load_settings()
        # After the settings, which say the format (LOG_FORMAT); a refusal prints its one line.
        configure_logging(json_lines=settings.logs_as_json)
        if args.command == "token":
            from app.commands.token import mint_token

            if not args.user:
                raise ConfigError("`token` needs --user <user id>")
            print(mint_token(settings, user=args.user, ttl=args.ttl, admin=args.admin))
            if settings.auth == "dev":
                print("note: AUTH_MODE is dev here: this server takes no token", file=sys.stderr)
            return 0
        if args.command == "check":
            from app.commands.check import run_checks

            return asyncio.run(run_checks(settings, ping=args.ping))
        serve(settings)  # a bad agents file is a ConfigError too
    except ConfigError as exc:
        refuse_to_start(exc)
    except DatabaseUnreachable as exc:
        # One line, as for a configuration error: the release phase or the dyno's log says
        # what is wrong, and a platform sees the nonzero exit.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
