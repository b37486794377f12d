"""`python -m app [serve|migrate|check]`: run the server, apply the migrations, or check the set-up.

The one way to start the server, in development (`scripts/serve`) and in production (the
Procfile): it owns what uvicorn's command line would otherwise hold (host, port, workers,
the graceful-shutdown timeout), all read from the settings. Configuration errors end the
process with one clear line naming the setting, never a traceback and never a setting's value
(one of them is the API key).
"""

from __future__ import annotations

import argparse
import asyncio

from app.commands.migrate import migrate_database
from app.commands.serve import serve
from app.ops.logging import configure_logging
from app.settings import ConfigError, DatabaseSettings, load_settings, refuse_to_start


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
    try:
        if args.command == "migrate":
            configure_logging()
            asyncio.run(migrate_database(load_settings(DatabaseSettings)))
            return 0
        settings = load_settings()
        # After the settings, which say the format (LOG_FORMAT); a refusal prints its one line.
        configure_logging(json_lines=settings.logs_as_json)
        if args.command == "check":
            from app.commands.check import run_checks

            return asyncio.run(run_checks(settings, ping=args.ping))
        serve(settings)  # a bad agents file is a ConfigError too
    except ConfigError as exc:
        refuse_to_start(exc)
    return 0
