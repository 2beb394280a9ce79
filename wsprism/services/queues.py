"""Per-session order for services that answer later (webhook forwarders, Python services).

Per session, a service's entries run one at a time, in the order they arrived; a task per
session drains its queue while it is non-empty and ends with it, so an idle session
costs nothing and one session's slow call never holds up another's. (Webhook forwarders
keep the same per-session order without a task: services/webhook.py.)
"""
import asyncio
import logging
from collections import deque

log = logging.getLogger("wsprism.services")


class TaskSet:
    """Tasks held until they end, so a stop can cancel the ones still running."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class SessionQueues:
    """Base of a service with per-session queues; subclasses define `async run(session, entry)`
    (which handles its own errors) and say how tasks are started (`spawn`)."""

    __slots__ = ("queues", "spawn")

    def __init__(self, spawn) -> None:
        self.queues: dict = {}        # Session -> deque of entries (the running one first)
        self.spawn = spawn

    def pending(self, session) -> int:
        queue = self.queues.get(session)
        return 0 if queue is None else len(queue)

    def push(self, session, entry) -> None:
        queue = self.queues.get(session)
        if queue is None:
            queue = self.queues[session] = deque((entry,))
            self.spawn(self._drain(session, queue))
        else:
            queue.append(entry)

    async def run(self, session, entry) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def _drain(self, session, queue: deque) -> None:
        try:
            while queue:
                try:
                    await self.run(session, queue[0])
                except Exception:             # a bug must not stop the queue or leak out
                    log.exception("%r: handling a queued message failed", self)
                queue.popleft()
        finally:
            if self.queues.get(session) is queue:
                del self.queues[session]
