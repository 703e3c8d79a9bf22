"""Batching across requests (gateway.batching.Coalescer): who shares a batch, what each caller gets back."""

import asyncio

import pytest

from gateway.batching import Coalescer

LONG_WINDOW_S = 60.0  # never reached in these tests: they fail on their budget first
BUDGET_S = 5.0


class Doubler:
    """A batch call that doubles each query, records the batches it was sent, and holds the first one until
    `release` is set."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_with = fail_with
        self.release = asyncio.Event()

    async def __call__(self, queries: list[int]) -> list[int]:
        self.batches.append(queries)
        if len(self.batches) == 1:
            await self.release.wait()
        if self.fail_with:
            raise self.fail_with
        return [2 * query for query in queries]


async def test_without_a_window_every_call_is_its_own_batch():
    call, sizes = Doubler(), list[int]()
    call.release.set()
    coalescer = Coalescer(call, 0.0, sizes.append)
    answers = await asyncio.gather(coalescer([1, 2]), coalescer([3]))
    assert list(answers) == [[2, 4], [6]]
    assert call.batches == [[1, 2], [3]]
    assert sizes == [2, 1]


async def test_a_call_goes_at_once_while_no_batch_runs():
    call = Doubler()
    call.release.set()
    coalescer = Coalescer(call, LONG_WINDOW_S)
    assert await asyncio.wait_for(coalescer([7]), BUDGET_S) == [14]
    assert await asyncio.wait_for(coalescer([8]), BUDGET_S) == [16]
    assert call.batches == [[7], [8]]


async def test_calls_that_arrive_while_a_batch_runs_go_together_once_it_finishes():
    call, sizes = Doubler(), list[int]()
    coalescer = Coalescer(call, LONG_WINDOW_S, sizes.append)
    first = asyncio.create_task(coalescer([1, 2]))
    await asyncio.sleep(0)
    waiting = asyncio.gather(coalescer([3]), coalescer([4, 5, 6]))
    await asyncio.sleep(0)
    call.release.set()
    assert await asyncio.wait_for(first, BUDGET_S) == [2, 4]
    assert list(await asyncio.wait_for(waiting, BUDGET_S)) == [[6], [8, 10, 12]]
    assert call.batches == [[1, 2], [3, 4, 5, 6]]
    assert sizes == [2, 4]


async def test_waiting_calls_go_when_the_window_passes_or_the_batch_is_full():
    call = Doubler()
    coalescer = Coalescer(call, 0.01)
    held = asyncio.create_task(coalescer([1]))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(coalescer([2]), BUDGET_S) == [4], "the window passed, the first batch still runs"
    full = Coalescer(call, LONG_WINDOW_S, max_queries=4)
    assert list(await asyncio.wait_for(asyncio.gather(full([3, 4]), full([5, 6])), BUDGET_S)) == [[6, 8], [10, 12]]
    assert call.batches == [[1], [2], [3, 4], [5, 6]], "the first of a new coalescer goes alone"
    call.release.set()
    assert await asyncio.wait_for(held, BUDGET_S) == [2]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_works():
    call = Doubler(RuntimeError("engine down"))
    coalescer = Coalescer(call, LONG_WINDOW_S)
    first = asyncio.create_task(coalescer([1]))
    await asyncio.sleep(0)
    together = asyncio.gather(coalescer([2]), coalescer([3]), return_exceptions=True)
    call.release.set()
    results = await asyncio.wait_for(together, BUDGET_S)
    assert [str(result) for result in results] == ["engine down", "engine down"]
    with pytest.raises(RuntimeError, match="engine down"):
        await first
    call.fail_with = None
    assert await asyncio.wait_for(coalescer([4]), BUDGET_S) == [8]


async def test_a_caller_that_gives_up_leaves_the_others_their_answers():
    call = Doubler()
    coalescer = Coalescer(call, LONG_WINDOW_S)
    first = asyncio.create_task(coalescer([1]))
    await asyncio.sleep(0)
    impatient = asyncio.create_task(coalescer([2]))
    patient = asyncio.create_task(coalescer([3]))
    await asyncio.sleep(0)
    impatient.cancel()
    call.release.set()
    assert await asyncio.wait_for(patient, BUDGET_S) == [6]
    assert await first == [2]
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert call.batches == [[1], [2, 3]], "its query stayed in the batch"
