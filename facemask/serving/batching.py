"""Concurrent requests gathered into one model call, waiting for company only when company is on its way.

What `@serve.batch` does, with one difference that matters on an accelerator: a call of up
to 8 images costs about the same as a call of one (docs/performance.md), so a batch is worth
filling when more requests are already inside the replica (read or decoding) and about to
join. The next batch starts when the model is free and the batch is full, or nothing more
is on its way, or its oldest request has waited `max_wait_s`. At low load a request goes
straight to the model; under load batches fill up. It also skips the per-call signature
checks of `@serve.batch`, which cost the replica a few percent of its CPU per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class Batcher:
    """`await submit(item)` returns `run([... item ...])`'s answer for that item, or raises it when
    that answer is an exception; one `run` at a time. If `run` itself raises, every caller of the
    batch gets the error."""

    def __init__(
        self,
        run: Callable[[list[Any]], Awaitable[list[Any]]],
        max_size: int,
        max_wait_s: float,
        on_the_way: Callable[[], int] = lambda: 0,
    ) -> None:
        """on_the_way: how many requests will soon be submitted (admitted, not yet queued)."""
        self.run, self.max_size, self.max_wait_s, self.on_the_way = run, max_size, max_wait_s, on_the_way
        self.queue: list[tuple[Any, asyncio.Future, float]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.append((item, future, loop.time()))
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve())
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self.queue[0][2] + self.max_wait_s
            while len(self.queue) < self.max_size and self.on_the_way() > 0 and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            batch, self.queue = self.queue[: self.max_size], self.queue[self.max_size :]
            batch = [entry for entry in batch if not entry[1].done()]  # a caller that went away
            if not batch:
                continue
            try:
                answers = await self.run([item for item, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), answer in zip(batch, answers):
                if future.done():
                    continue
                # `run` may answer one item with an exception (its group's model call failed):
                # that caller alone gets it.
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
