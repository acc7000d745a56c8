"""Batcher: jobs that arrive together run as one batch; a failed batch runs each job alone."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import pytest

from corral import hostcmd
from corral.batching import Batcher
from tests.hostcmds import nice_of_a_command


class Recorder:
    def __init__(self, *, bad: set[int] | None = None, delay: float = 0.0) -> None:
        self.bad = bad or set()
        self.delay = delay
        self.calls: list[tuple[str, list[int]]] = []
        self.done: list[int] = []

    async def many(self, jobs: Sequence[int]) -> None:
        self.calls.append(("many", list(jobs)))
        await asyncio.sleep(self.delay)
        if self.bad & set(jobs):
            raise RuntimeError("a bad job in the batch")
        self.done += jobs

    async def one(self, job: int) -> None:
        self.calls.append(("one", [job]))
        await asyncio.sleep(self.delay)
        if job in self.bad:
            raise ValueError(f"job {job} is bad")
        self.done.append(job)

    def batcher(self) -> Batcher[int]:
        return Batcher(self.many, self.one)


def test_jobs_started_together_run_as_one_batch() -> None:
    rec = Recorder()

    async def scenario() -> None:
        batcher = rec.batcher()
        await asyncio.gather(*(batcher.run(i) for i in range(10)))

    asyncio.run(scenario())
    assert rec.calls == [("many", list(range(10)))]
    assert sorted(rec.done) == list(range(10))


def test_a_job_alone_runs_alone() -> None:
    rec = Recorder()
    asyncio.run(rec.batcher().run(7))
    assert rec.calls == [("one", [7])]


def test_jobs_arriving_during_a_batch_make_the_next_batch() -> None:
    rec = Recorder(delay=0.05)

    async def scenario() -> None:
        batcher = rec.batcher()
        first = asyncio.create_task(batcher.run(0))
        await asyncio.sleep(0.01)  # the first batch is running
        await asyncio.gather(first, *(batcher.run(i) for i in (1, 2, 3)))

    asyncio.run(scenario())
    assert rec.calls == [("one", [0]), ("many", [1, 2, 3])]


def test_a_bad_job_fails_only_its_own_caller() -> None:
    rec = Recorder(bad={2})

    async def scenario() -> list[object]:
        batcher = rec.batcher()
        return await asyncio.gather(*(batcher.run(i) for i in range(4)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert outcomes[:2] == [None, None] and outcomes[3] is None
    assert isinstance(outcomes[2], ValueError) and "job 2" in str(outcomes[2])
    assert rec.calls[0] == ("many", [0, 1, 2, 3])
    assert [c for c in rec.calls[1:]] == [("one", [i]) for i in range(4)]
    assert sorted(rec.done) == [0, 1, 3]


def test_a_cancelled_caller_returns_only_once_its_job_is_done() -> None:
    rec = Recorder(delay=0.1)

    async def scenario() -> None:
        batcher = rec.batcher()
        task = asyncio.create_task(batcher.run(5))
        other = asyncio.create_task(batcher.run(6))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert 5 in rec.done  # its undo may follow: the job is not still running
        await other

    asyncio.run(scenario())
    assert sorted(rec.done) == [5, 6]


def test_a_batch_started_by_background_work_runs_its_commands_at_normal_priority() -> None:
    """A create's job that joins a batch begun by a spare's must not run niced with it."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    async def many(jobs: Sequence[int]) -> None:
        seen.append(await nice_of_a_command())

    async def one(job: int) -> None:
        await many([job])

    async def scenario() -> None:
        batcher = Batcher(many, one)
        with hostcmd.in_the_background():
            spare = asyncio.create_task(batcher.run(1))
        await asyncio.sleep(0.05)  # the spare's batch runs
        await asyncio.gather(spare, batcher.run(2))  # the create's job: the next batch

    asyncio.run(scenario())
    assert seen == [own, own]
