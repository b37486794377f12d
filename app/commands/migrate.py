"""`python -m app migrate`: apply the migrations, with a connection of its own."""

from __future__ import annotations

from app.settings import DatabaseSettings


async def migrate_database(settings: DatabaseSettings) -> None:
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
