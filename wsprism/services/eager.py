"""Start a coroutine at once, and pay for a task only if it suspends.

A service's `async def on_message` often never awaits (game logic on in-memory state).
Running each call as an asyncio Task would cost a task, a loop turn and a wake-up per
message; Python 3.12 has eager tasks for this, 3.11 does not. `EagerStarter.start`
gives the same behaviour:

- the coroutine's first step runs now, in a fresh copy of the context, with a spare Task
  entered as the current task (so `asyncio.current_task()`, `asyncio.timeout()` and
  TaskGroups work as they would inside a task);
- if it finishes there, `start` returns its result (or raises its exception): no task
  ran, and the spare stays spare;
- if it suspends, the spare becomes its task: it is handed `finish(rest)`, where `rest`
  finishes the coroutine from where it stopped (every later step in the same context,
  cancellation thrown into it), and a new spare is made. A timeout taken in the first
  step was taken on that very task, so it cancels the right one.

When a task is already current (a call from inside a task), there is no eager step: the
whole call runs as `finish(coro)` in a new task.

It relies on asyncio's `_enter_task`/`_leave_task` (what 3.12's eager tasks use).
"""
import asyncio
import contextvars
from asyncio.tasks import _enter_task, _leave_task


class _Yield:
    """Hands a value the coroutine yielded (a future to wait for, or None for a bare
    yield) to the task running us, and returns when the task resumes us."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def __await__(self):
        yield self.value


async def _rest(coro, yielded, ctx: contextvars.Context):
    """Drive `coro` (which yielded `yielded` last) to its end, each step in `ctx`."""
    run = ctx.run
    while True:
        try:
            await _Yield(yielded)
        except BaseException as exc:        # cancelled (a timeout), or a bad yield: into the coroutine
            try:
                yielded = run(coro.throw, exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = run(coro.send, None)
        except StopIteration as stop:
            return stop.value


async def _carry(slot: asyncio.Future):
    """A spare task: waits for the one piece of work it will ever get, then runs it."""
    work = await slot
    await work


class EagerStarter:
    """`done, value = start(coro)`: when done, `value` is the result; when not, call
    `hand_over(finish(value))` at once: `value` is an awaitable that finishes `coro`, and
    `finish` runs as the task the coroutine started in."""

    __slots__ = ("_spawn", "_spare", "_slot", "_handoff")

    def __init__(self, spawn) -> None:
        self._spawn = spawn           # spawn(coro) -> Task, tracked for cancellation at stop
        self._spare = None
        self._slot = None
        self._handoff = None

    def start(self, coro):
        loop = asyncio.get_running_loop()
        self._handoff = None
        if self._spare is None:
            self._slot = loop.create_future()
            self._spare = self._spawn(_carry(self._slot))
        carrier = self._spare
        try:
            _enter_task(loop, carrier)
        except RuntimeError:                        # a task is running: no eager step inside it
            return False, coro
        ctx = contextvars.copy_context()
        try:
            yielded = ctx.run(coro.send, None)
        except StopIteration as stop:
            return True, stop.value
        finally:
            _leave_task(loop, carrier)
        self._handoff = self._slot
        self._spare = self._slot = None
        return False, _rest(coro, yielded, ctx)

    def hand_over(self, work) -> None:
        slot, self._handoff = self._handoff, None
        if slot is None:
            self._spawn(work)
        else:
            slot.set_result(work)
