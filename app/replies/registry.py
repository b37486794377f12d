"""`Runs`: the live runs of this process, the background work they leave behind, and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from app.admission.turn_write import TurnWrite
from app.agents.overrides import Agents
from app.billing.budgets import SpendControl
from app.core.outage import Outage
from app.core.run_request import RunRequest
from app.core.states import MessageStatus
from app.replies.recovery import Recovery
from app.replies.redis_log import Outbox
from app.replies.runs import Run, RunConfig
from app.replies.titles import AGENT as TITLER
from app.replies.titles import Titler
from app.settings import Settings
from app.storage.ledger import LateCost
from app.storage.store import Store
from app.upstream.openrouter import OpenRouterClient

log = logging.getLogger(__name__)


class ReplyObserver(Protocol):
    """Told when a run starts and when it has ended (its final event out), and when a cost
    still unknown then is learnt: metrics, the reply's log lines. Called on the event loop,
    never per token: keep it cheap and never raise."""

    def reply_started(self, run: Run) -> None: ...

    def reply_ended(self, run: Run) -> None: ...

    def cost_learnt(self, late: LateCost) -> None: ...


class Runs:
    def __init__(
        self,
        *,
        store: Store,
        client: OpenRouterClient,
        settings: Settings,
        agents: Agents,
        spend: SpendControl,
        observers: Sequence[ReplyObserver] = (),
        outbox: Outbox | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self._run_config = RunConfig.of(settings)
        self.observers = observers
        self.outbox = outbox  # where live replies are published for other processes (Redis)
        self.live: dict[str, Run] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._titling: set[asyncio.Task[Any]] = set()  # background too, but cut at shutdown
        self._drain: asyncio.Task[None] | None = None
        # Live replies' checkpoints and final writes, and the background writes, while the
        # database is away: told once, not once per reply and beat.
        self.writes = Outage("live replies' checkpoints and final writes")
        self.recovery = Recovery(
            store=store,
            client=client,
            settings=settings,
            spawn=self.spawn,
            live=self._live_ids,
            stop=self.stop,
            learnt=lambda late: self._tell("cost_learnt", late),
        )
        self.titler = (
            Titler(
                store=store,
                client=client,
                agents=agents,
                settings=settings,
                spend=spend,
                reconcile=self.recovery.reconcile,
            )
            if settings.auto_titles and TITLER in agents
            else None
        )

    def start(self, request: RunRequest, *, turn: TurnWrite) -> Run:
        """Start generating; the run begins the turn's write, unless admission wrote it."""
        run = Run(
            request,
            turn=turn,
            store=self.store,
            client=self.client,
            config=self._run_config,
            spawn=self.spawn,
            reconcile=self.recovery.reconcile,
            on_deserted=self._on_deserted,
            on_finished=self._on_finished,
            outbox=self.outbox,
            outage=self.writes,
        )
        self.live[run.message_id] = run
        run.start()
        self._tell("reply_started", run)
        return run

    def get(self, message_id: str) -> Run | None:
        return self.live.get(message_id)

    def _live_ids(self) -> list[str]:
        return list(self.live)

    def stop(self, message_ids: list[str]) -> None:
        """Stop these replies if they are live here: a stop request that reached another
        process (through Redis, or the database at the next heartbeat)."""
        for message_id in message_ids:
            if (run := self.live.get(message_id)) is not None:
                run.cancel(MessageStatus.STOPPED)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Background work that shutdown waits for (database writes)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._log_failure)
        return task

    def _on_deserted(self, run: Run) -> None:
        """The last follower left: under DISCONNECT_POLICY=cancel, cancel unless one returns."""
        if self.settings.disconnect_policy != "cancel" or self._drain is not None:
            return
        run.cancel_unless_followed(self.settings.disconnect_cancel_delay)

    def _on_finished(self, run: Run) -> None:
        self.live.pop(run.message_id, None)
        self._tell("reply_ended", run)
        # After the final event, so a title never delays a reply; not once shutdown began.
        if (
            self.titler is not None
            and run.request.wants_title
            and run.status == MessageStatus.COMPLETE
            and self._drain is None
        ):
            task = self.spawn(self.titler.title(run.request, answer=run.content))
            self._titling.add(task)
            task.add_done_callback(self._titling.discard)

    def _tell(self, event: str, subject: Run | LateCost) -> None:
        # A failing observer (a metrics or logging bug) must not cost a reply anything: it is
        # told inside the run's final steps, before the lookups of its pending costs.
        for observer in self.observers:
            try:
                getattr(observer, event)(subject)
            except Exception:
                log.exception("reply observer %r failed on %s", observer, event)

    def begin_drain(self) -> None:
        """Shutdown has begun (SIGTERM): live runs get SHUTDOWN_GRACE seconds to finish.

        Called as soon as the signal is seen, not at lifespan shutdown: uvicorn only gets there
        after open connections close, and followers should receive each run's final event.
        """
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_runs(), name="drain-runs")

    async def _drain_runs(self) -> None:
        tasks = [run.task for run in self.live.values() if run.task]
        if tasks:
            log.info(
                "waiting up to %.0fs for %d live replies", self.settings.shutdown_grace, len(tasks)
            )
            await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        remaining = [run for run in self.live.values() if run.task]
        for run in remaining:
            run.cancel(MessageStatus.INTERRUPTED)
        if remaining:
            log.warning("interrupted %d replies still streaming at shutdown", len(remaining))
            await asyncio.wait([run.task for run in remaining if run.task])

    async def shutdown(self) -> None:
        """Drain the runs, finish every write, cancel titles being made; unfinished cost
        lookups wait for the next start."""
        self.begin_drain()
        assert self._drain is not None
        await self._drain
        await self.recovery.stop()
        # A title is a nicety: not worth holding shutdown up for a slow upstream.
        for task in self._titling:
            task.cancel()
        while self._background:
            await asyncio.wait(list(self._background))

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or (failure := task.exception()) is None:
            return
        if not self.writes.failed(failure):
            log.error("background task failed", exc_info=failure)
