"""Batching across requests (gateway.batching.Coalescer): who shares a batch, what each caller gets back."""

import asyncio

import pytest

from gateway.batching import Coalescer

LONG_WINDOW_S = 60.0  # never reached in these tests: batches close on their size, or the test fails on its budget
BUDGET_S = 5.0


class Doubler:
    """A batch call that doubles each query and records the batches it was sent."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_with = fail_with

    async def __call__(self, queries: list[int]) -> list[int]:
        self.batches.append(queries)
        await asyncio.sleep(0)
        if self.fail_with:
            raise self.fail_with
        return [2 * query for query in queries]


async def test_without_a_window_every_call_is_its_own_batch():
    call, sizes = Doubler(), list[int]()
    coalescer = Coalescer(call, 0.0, sizes.append)
    answers = await asyncio.gather(coalescer([1, 2]), coalescer([3]))
    assert list(answers) == [[2, 4], [6]]
    assert call.batches == [[1, 2], [3]]
    assert sizes == [2, 1]


async def test_calls_within_the_window_share_one_batch_and_get_their_own_answers():
    call, sizes = Doubler(), list[int]()
    coalescer = Coalescer(call, 0.05, sizes.append)
    answers = await asyncio.wait_for(asyncio.gather(coalescer([1, 2]), coalescer([3]), coalescer([4, 5, 6])),
                                     BUDGET_S)
    assert list(answers) == [[2, 4], [6], [8, 10, 12]]
    assert call.batches == [[1, 2, 3, 4, 5, 6]]
    assert sizes == [6]


async def test_a_full_batch_goes_without_waiting_for_the_window():
    call = Doubler()
    coalescer = Coalescer(call, LONG_WINDOW_S, max_queries=4)
    answers = await asyncio.wait_for(asyncio.gather(coalescer([1, 2]), coalescer([3, 4])), BUDGET_S)
    assert list(answers) == [[2, 4], [6, 8]]
    assert call.batches == [[1, 2, 3, 4]]


async def test_a_single_caller_is_answered_when_its_window_closes():
    call = Doubler()
    coalescer = Coalescer(call, 0.01)
    assert await asyncio.wait_for(coalescer([7]), BUDGET_S) == [14]
    assert await asyncio.wait_for(coalescer([8]), BUDGET_S) == [16], "a new window opens after a batch"
    assert call.batches == [[7], [8]]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_works():
    call = Doubler(RuntimeError("engine down"))
    coalescer = Coalescer(call, 0.01)
    results = await asyncio.wait_for(asyncio.gather(coalescer([1]), coalescer([2]), return_exceptions=True),
                                     BUDGET_S)
    assert [str(result) for result in results] == ["engine down", "engine down"]
    call.fail_with = None
    assert await asyncio.wait_for(coalescer([3]), BUDGET_S) == [6]


async def test_a_caller_that_gives_up_leaves_the_others_their_answers():
    call = Doubler()
    coalescer = Coalescer(call, 0.05)
    impatient = asyncio.create_task(coalescer([1]))
    patient = asyncio.create_task(coalescer([2]))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await asyncio.wait_for(patient, BUDGET_S) == [4]
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert call.batches == [[1, 2]], "its query stayed in the batch"
