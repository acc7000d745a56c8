"""Jobs that arrive together, run as one host command or transaction.

A fork into ten, or a burst of creates, asks for ten nftables transactions
and ten ``ip -batch`` runs within milliseconds. Each ``ip`` is a process
start and each transaction a fetch of the whole ruleset, all fighting for
the same cores. A :class:`Batcher` runs the jobs that arrive while one batch
runs as the next batch: one command for all of them. If a batch fails, each of its jobs runs
again alone, so a bad job fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Runs jobs by batches: ``run_many`` for a batch, ``run_one`` for a job alone.

    ``run_one`` must cope with whatever a failed ``run_many`` left of its job
    half done (it is the retry). Batches never overlap.
    """

    def __init__(
        self,
        run_many: Callable[[Sequence[T]], Awaitable[None]],
        run_one: Callable[[T], Awaitable[None]],
    ) -> None:
        self._run_many = run_many
        self._run_one = run_one
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def run(self, job: T) -> None:
        """Run ``job`` in the next batch; return once it is done, raise its own error."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, done))
        if self._worker is None or self._worker.done():
            # A batch runs jobs of several callers: it takes on none of their context
            # (a job made ahead at low priority must not slow a create's that joins it).
            self._worker = asyncio.create_task(self._work(), context=contextvars.Context())
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            # A batch cannot drop one job: let it end, so the caller's undo comes after it.
            await asyncio.wait([done])
            if not done.cancelled():
                done.exception()  # seen: the caller is cancelled, not failed
            raise

    async def _work(self) -> None:
        await asyncio.sleep(0)  # the others started in the same moment join the first batch
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._run_batch(batch)
            except BaseException:  # cancelled with the loop: nobody may wait forever
                for _, done in batch + self._waiting:
                    done.cancel()
                raise

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        if len(batch) > 1:
            try:
                await self._run_many([job for job, _ in batch])
            except Exception:
                pass  # each alone, below, to find whose it was
            else:
                for _, done in batch:
                    done.set_result(None)
                return
        for job, done in batch:
            try:
                await self._run_one(job)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)
