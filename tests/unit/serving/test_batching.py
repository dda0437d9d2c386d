"""The batcher: straight through at low load, full batches when more requests are on their way."""

import asyncio
import time

import pytest

from facemask.serving.batching import Batcher


def batcher(calls: list, max_size=8, max_wait_s=1.0, on_the_way=lambda: 0, delay=0.0) -> Batcher:
    async def run(items):
        calls.append(list(items))
        await asyncio.sleep(delay)
        if "boom" in items:
            raise ValueError("boom")
        return [f"answer {i}" for i in items]

    return Batcher(run, max_size, max_wait_s, on_the_way)


def test_a_lone_request_does_not_wait_for_company():
    async def main():
        calls = []
        b = batcher(calls, max_wait_s=1.0)
        started = time.perf_counter()
        assert await b.submit(1) == "answer 1"
        return calls, time.perf_counter() - started

    calls, seconds = asyncio.run(main())
    assert calls == [[1]] and seconds < 0.1


def test_requests_on_their_way_join_the_batch_and_the_wait_is_bounded():
    async def main():
        calls, coming = [], [2]
        b = batcher(calls, max_wait_s=1.0, on_the_way=lambda: coming[0])

        async def later(i):
            await asyncio.sleep(0.05)
            coming[0] -= 1
            return await b.submit(i)

        started = time.perf_counter()
        answers = await asyncio.gather(b.submit(0), later(1), later(2))
        joined = time.perf_counter() - started
        coming[0] = 5  # announced, never arriving: the batch goes after max_wait_s
        b.max_wait_s = 0.1
        started = time.perf_counter()
        await b.submit(3)
        return calls, answers, joined, time.perf_counter() - started

    calls, answers, joined, waited = asyncio.run(main())
    assert calls[0] == [0, 1, 2] and answers == ["answer 0", "answer 1", "answer 2"]
    assert joined < 0.5 and 0.09 < waited < 0.5
    assert calls[1] == [3]


def test_batches_are_at_most_max_size_and_run_one_at_a_time():
    async def main():
        calls = []
        b = batcher(calls, max_size=3, max_wait_s=0.0, delay=0.01)
        return calls, await asyncio.gather(*(b.submit(i) for i in range(7)))

    calls, answers = asyncio.run(main())
    assert answers == [f"answer {i}" for i in range(7)]
    assert all(len(c) <= 3 for c in calls) and sorted(i for c in calls for i in c) == list(range(7))


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs():
    async def main():
        calls = []
        b = batcher(calls, max_wait_s=0.0)
        results = await asyncio.gather(b.submit("boom"), b.submit("x"), return_exceptions=True)
        return results, await b.submit("after")

    results, after = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in results) and after == "answer after"


def test_a_cancelled_caller_is_left_out():
    async def main():
        calls = []
        b = batcher(calls, max_wait_s=0.2, on_the_way=lambda: 1)
        gone = asyncio.ensure_future(b.submit("gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return calls, await b.submit("kept")

    calls, kept = asyncio.run(main())
    assert kept == "answer kept" and all("gone" not in c for c in calls)
