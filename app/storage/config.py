"""Configuration kept in the database: agents' run-time overrides and the model catalog's
last good copy (so a restart with OpenRouter unreachable still knows the models).

Both are read at start-up and kept in memory by their owners (`app/agents/overrides.py`,
`app/upstream/models_catalog.py`); this is only where they are saved.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import agent_overrides, model_catalog, now
from app.storage.writer import Writer


class Config:
    def __init__(self, *, database: Database, writer: Writer) -> None:
        self._database = database
        self._writer = writer

    async def load_model_catalog(self, *, source: str) -> tuple[list[Any], datetime] | None:
        """The catalog's last good copy from `source` (its raw models) and when it was fetched."""
        row = await self._database.fetch_one(
            sa.select(model_catalog.c.payload, model_catalog.c.fetched_at).where(
                model_catalog.c.source == source
            )
        )
        return (json.loads(row[0]), row[1]) if row else None

    async def save_model_catalog(
        self, *, source: str, models: list[Any], fetched_at: datetime
    ) -> None:
        values = {"payload": json.dumps(models), "fetched_at": fetched_at}
        await self._writer.write(
            [
                self._writer.insert(model_catalog)
                .values(source=source, **values)
                .on_conflict_do_update(index_elements=[model_catalog.c.source], set_=values)
            ]
        )

    async def agent_overrides(self) -> list[dict[str, Any]]:
        """Every agent's override row, `fallback_models`, `reasoning` and `allowed_models`
        decoded (None: as in the agents file)."""
        rows = await self._database.fetch_all(agent_overrides.select())
        return [
            {
                **row._mapping,
                "fallback_models": None
                if row.fallback_models is None
                else json.loads(row.fallback_models),
                "reasoning": None if row.reasoning is None else json.loads(row.reasoning),
                "allowed_models": None
                if row.allowed_models is None
                else json.loads(row.allowed_models),
            }
            for row in rows
        ]

    async def save_agent_override(
        self,
        *,
        agent: str,
        model: str | None,
        fallback_models: list[str] | None,
        temperature: float | None,
        max_tokens: int | None,
        reasoning: dict[str, Any] | None = None,
        allowed_models: list[str] | str | None = None,
        prompt_caching: bool | None = None,
    ) -> datetime:
        """Replace the agent's override (None fields follow the agents file); return its time."""
        stamp = now()
        values = {
            "model": model,
            "fallback_models": None if fallback_models is None else json.dumps(fallback_models),
            "temperature": temperature,
            "max_tokens": max_tokens,
            "reasoning": None if reasoning is None else json.dumps(reasoning),
            "allowed_models": None if allowed_models is None else json.dumps(allowed_models),
            "prompt_caching": prompt_caching,
            "updated_at": stamp,
        }
        await self._writer.write(
            [
                self._writer.insert(agent_overrides)
                .values(agent=agent, **values)
                .on_conflict_do_update(index_elements=[agent_overrides.c.agent], set_=values)
            ]
        )
        return stamp

    async def delete_agent_override(self, *, agent: str) -> bool:
        """Back to the agents file; False if the agent had no override."""
        (deleted,) = await self._writer.write(
            [
                agent_overrides.delete()
                .where(agent_overrides.c.agent == agent)
                .returning(agent_overrides.c.agent)
            ]
        )
        return bool(deleted)
