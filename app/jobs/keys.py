"""Service keys: what the host app's servers send to `/v1` (`Authorization: Bearer sc-…`).

A key is 32 random bytes (256 bits) shown once, at creation; only its SHA-256 is kept. A plain
hash, not a slow password hash: a slow hash protects guessable secrets, and a key drawn from
256 bits is not guessable, while every job request looks its key up (one unique-index read).

Every request reads its key's row, so a key revoked (`revoked_at`) is refused at once by every
process: there is no cache to invalidate. Each key carries its own limits: the models it may
ask for (`*`: any), daily and monthly budgets, requests per minute, jobs at once, and whether
what its jobs send and get is kept (`store_content`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import new_id, now, service_keys
from app.storage.writer import Writer

PREFIX = "sc-"
ANY_MODEL = "*"
HINT_CHARS = 6  # of the key after its prefix: enough to tell keys apart in a list

_k = service_keys
BY_HASH = sa.select(_k).where(_k.c.key_hash == sa.bindparam("key_hash"), _k.c.revoked_at.is_(None))


def key_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def is_service_key(token: str) -> bool:
    """Whether a bearer token is one of ours by its look: a user route refuses it unread."""
    return token.startswith(PREFIX)


@dataclass(frozen=True)
class ServiceKey:
    id: str
    label: str
    hint: str
    models: tuple[str, ...] | None  # None: any model
    daily_picousd: int | None
    monthly_picousd: int | None
    rpm: int | None
    concurrency: int | None
    store_content: bool
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def subject(self) -> str:
        """Whose spend its jobs are in the budget reservations (their `user_id`): a name no
        JWT's user id of the host app is expected to take."""
        return f"key:{self.id}"

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    @classmethod
    def from_row(cls, row: Any) -> ServiceKey:
        models = json.loads(row["models"])
        return cls(
            id=row["id"],
            label=row["label"],
            hint=row["hint"],
            models=None if models == ANY_MODEL else tuple(models),
            daily_picousd=row["daily_picousd"],
            monthly_picousd=row["monthly_picousd"],
            rpm=row["rpm"],
            concurrency=row["concurrency"],
            store_content=bool(row["store_content"]),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )


class ServiceKeys:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer

    async def create(
        self,
        *,
        label: str,
        models: tuple[str, ...] | None,
        daily_picousd: int | None,
        monthly_picousd: int | None,
        rpm: int | None,
        concurrency: int | None,
        store_content: bool,
    ) -> tuple[ServiceKey, str]:
        """A new key and its secret, which is never to be seen again."""
        token = PREFIX + secrets.token_urlsafe(32)
        values = {
            "id": new_id(),
            "label": label,
            "key_hash": key_hash(token),
            "hint": token[: len(PREFIX) + HINT_CHARS],
            "models": json.dumps(ANY_MODEL if models is None else list(models)),
            "daily_picousd": daily_picousd,
            "monthly_picousd": monthly_picousd,
            "rpm": rpm,
            "concurrency": concurrency,
            "store_content": store_content,
            "created_at": now(),
            "revoked_at": None,
        }
        await self._writer.write([_k.insert().values(**values)])
        return ServiceKey.from_row(values), token

    async def find(self, token: str) -> ServiceKey | None:
        """The live key `token` is (None: no such key, or revoked)."""
        row = await self._writer.read_row(BY_HASH, {"key_hash": key_hash(token)})
        return None if row is None else ServiceKey.from_row(row)

    async def list(self) -> list[ServiceKey]:
        rows = await self._database.fetch_all(sa.select(_k).order_by(_k.c.created_at, _k.c.id))
        return [ServiceKey.from_row(row._mapping) for row in rows]

    async def revoke(self, *, key_id: str) -> ServiceKey | None:
        """Revoke the key (once: a revoked key keeps its first revocation time); None: none."""
        await self._writer.write(
            [
                _k.update()
                .where(_k.c.id == key_id, _k.c.revoked_at.is_(None))
                .values(revoked_at=now())
            ]
        )
        row = await self._database.fetch_one(sa.select(_k).where(_k.c.id == key_id))
        return None if row is None else ServiceKey.from_row(row._mapping)
