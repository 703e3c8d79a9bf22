"""Batching across requests: the catalog queries of concurrent requests go to the engine as one batch call.

A `Coalescer` wraps a batch call (a list of queries in, one answer per query out). With a window of 0 it calls
straight through. Otherwise queries go at once while no batch of theirs is running, so a request alone never waits;
queries that arrive while one runs wait for it to finish, or for the window to pass, whichever comes first, and go
together as the next batch (earlier once `max_queries` wait). Each caller gets the answers to its own queries, or
the call's error. A caller that gives up (its deadline) leaves its queries in the batch; nobody waits for its
answers.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")
# At most this many queries go in one engine batch (qdrant's own batch endpoints take any number).
MAX_BATCHED_QUERIES = 64



class Coalescer(Generic[Q, A]):
    """Combines the calls of `call` that arrive while a batch runs (for at most `window_s`) into one call."""

    def __init__(self, call: Callable[[list[Q]], Awaitable[list[A]]], window_s: float,
                 observe_size: Callable[[int], None] = lambda size: None,
                 max_queries: int = MAX_BATCHED_QUERIES) -> None:
        self._call = call
        self._window_s = window_s
        self._observe_size = observe_size
        self._max_queries = max_queries
        self._waiting: list[tuple[Sequence[Q], asyncio.Future[list[A]]]] = []
        self._queries = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, queries: Sequence[Q]) -> list[A]:
        """The answers to `queries`, in order, from the batch they joined."""
        if self._window_s <= 0:
            self._observe_size(len(queries))
            return await self._call(list(queries))
        loop = asyncio.get_running_loop()
        answers: asyncio.Future[list[A]] = loop.create_future()
        self._waiting.append((queries, answers))
        self._queries += len(queries)
        if self._queries >= self._max_queries or not self._running:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return await answers

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting, self._queries = self._waiting, [], 0
        self._running += 1
        task = asyncio.create_task(self._run(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, waiting: list[tuple[Sequence[Q], "asyncio.Future[list[A]]"]]) -> None:
        queries = [query for batch, _ in waiting for query in batch]
        self._observe_size(len(queries))
        try:
            answers = await self._call(queries)
        except asyncio.CancelledError:  # the gateway is closing
            for _, future in waiting:
                future.cancel()
            raise
        except Exception as error:  # every caller of the batch gets the failure
            for _, future in waiting:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self._running -= 1
            if self._waiting and not self._running:
                self._flush()
        start = 0
        for batch, future in waiting:
            if not future.done():  # not cancelled by its caller's deadline
                future.set_result(answers[start:start + len(batch)])
            start += len(batch)
