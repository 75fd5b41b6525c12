"""21.13: a failed or timed-out call no longer takes a multi-GPU replica out of service. The runner
aborts the process group, forms a fresh one among the same rank actors and keeps the models; fal's
API: timeouts raise TimeoutError, a failing worker RuntimeError, `invoke()` defaults to `{}`."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist

from serve_app.distributed import DistributedRunner, DistributedWorker
from serve_app.errors import RequestCancelled


class LoadedOnceWorker(DistributedWorker):
    """Records when its "model" was loaded; `fail_rank` raises there before a collective (the other
    rank waits in it), `stall_rank` keeps that rank out of the collective until cancelled, then
    returns without it."""

    def setup(self, **kwargs: Any) -> None:
        self.loaded_at = time.time_ns()
        self.calls = 0
        self.threads = {threading.get_ident()}

    def regroup(self) -> None:
        self.threads.add(threading.get_ident())

    def __call__(self, streaming: bool = False, fail_rank: int | None = None, stall_rank: int | None = None,
                 threads: bool = False, **payload: Any) -> Any:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if threads:
            return len(self.threads)
        if self.rank == fail_rank:
            raise ValueError("a bug reached by an unusual input")
        if self.rank == stall_rank:
            while not self.cancelled:
                time.sleep(0.02)
            return None  # leaves the other rank alone in the collective below
        facts = torch.tensor([float(os.getpid()), float(self.loaded_at % 10**9)])
        gathered = [torch.zeros(2) for _ in range(self.world_size)]
        dist.all_gather(gathered, facts)
        return [(int(t[0]), int(t[1])) for t in gathered]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_same_ranks_serve_again_after_a_failure_and_a_timeout(ray_cluster: None,
                                                                   loop: asyncio.AbstractEventLoop) -> None:
    runner = DistributedRunner(LoadedOnceWorker, 2, use_gpu=False, num_cpus_per_rank=0.05, stop_grace_s=2.0)

    async def scenario() -> None:
        await runner.start(timeout=120)
        before = await runner.invoke()  # the payload defaults to {}
        with pytest.raises(RuntimeError, match="rank 1 failed: ValueError"):
            await runner.invoke({"fail_rank": 1})  # rank 0 is left in all_gather
        started = time.monotonic()
        assert await runner.invoke({}) == before  # same processes, same load time: no reload
        assert time.monotonic() - started < 10 and runner.is_alive() and runner.regroups == 1
        with pytest.raises(TimeoutError):
            await runner.invoke({"stall_rank": 1}, timeout=1.0)
        started = time.monotonic()
        assert await runner.invoke({}) == before
        assert time.monotonic() - started < 10 and runner.regroups == 2
        items = [item async for item in runner.stream({})]
        assert items[-1] == before
        await runner.check_health()
        # setup, every call and both regroups ran on one thread (torch keeps CUDA state per thread)
        assert await asyncio.gather(*[runner.invoke({"threads": True}) for _ in range(4)]) == [1] * 4
        await runner.stop()

    loop.run_until_complete(scenario())


class SubgroupPerCallWorker(DistributedWorker):
    """Makes a subgroup in a call (as xfuser does per layout), has no `regroup()`; rank 1 can fail."""

    def __call__(self, streaming: bool = False, fail_rank: int | None = None, **payload: Any) -> Any:
        if not hasattr(self, "group"):
            self.group = dist.new_group([0, 1])
        if fail_rank is not None:  # the failing rank raises, the others return: none is left waiting
            if self.rank == fail_rank:
                raise ValueError("a bug reached by an unusual input")
            return 0.0
        t = torch.ones(1)
        dist.all_reduce(t, group=self.group)
        return float(t.item())


def test_a_worker_with_subgroups_made_in_a_call_is_not_regrouped_blindly(ray_cluster: None,
                                                                         loop: asyncio.AbstractEventLoop) -> None:
    """Its subgroup died with the old group: re-forming the default group alone would leave it dead
    (the next call fails with "Invalid process group"), so the runner replaces the group instead."""
    runner = DistributedRunner(SubgroupPerCallWorker, 2, use_gpu=False, num_cpus_per_rank=0.05, stop_grace_s=2.0)

    async def scenario() -> None:
        await runner.start(timeout=120)
        assert await runner.invoke() == 2.0
        with pytest.raises(RuntimeError, match="rank 1 failed: ValueError"):
            await runner.invoke({"fail_rank": 1})
        assert runner.regroups == 0 and not runner.is_alive()
        assert "1 subgroup(s)" in str(runner.broken) and "no regroup()" in str(runner.broken)
        await runner.stop()

    loop.run_until_complete(scenario())


class EmitsOnceWorker(DistributedWorker):
    def __call__(self, streaming: bool = False, fail: bool = False, hold: Any = None, **payload: Any) -> Any:
        self.progress(1, 1, "step")
        if hold is not None:
            hold.wait(10)
        if fail:
            raise ValueError("failed after its progress")
        return "done"


def test_a_drain_returns_at_once_after_the_call_ended() -> None:
    """The runner's streaming loop long-polls rank 0's `drain(0.25, call_id)` until the call's result
    arrives; a drain that waited its full timeout after the call ended added up to 0.25 s to every
    streamed request. The rank marks the end of each call (returned or raised), and a drain for that
    call returns at once; a drain for the next call is not fooled by the old mark."""
    from serve_app.distributed.rank import RankActor, RankFailed

    actor = RankActor(EmitsOnceWorker, 0, 1)
    actor.worker = EmitsOnceWorker(0, 1)
    for call_id, fail in ((1, False), (2, True)):
        if fail:
            with pytest.raises(RankFailed, match="failed after its progress"):
                actor.call({"fail": True}, True, call_id=call_id)
        else:
            assert actor.call({}, True, call_id=call_id) == "done"
        start = time.monotonic()
        assert [(i.step, i.total) for i in actor.drain(5.0, call_id)] == [(1, 1)]
        assert actor.drain(5.0, call_id) == [] and actor.drain(5.0, call_id) == []  # ended: no wait
        assert time.monotonic() - start < 2.0
    # call 3 has not started yet: its drain waits (the queue still holds call 2's mark), then its item comes
    hold = threading.Event()
    start = time.monotonic()
    assert actor.drain(0.5, 3) == []
    assert time.monotonic() - start >= 0.45
    running = threading.Thread(target=actor.call, args=({"hold": hold}, True, False, 3))
    running.start()
    try:
        assert [i.step for i in actor.drain(5.0, 3)] == [1]
        start = time.monotonic()
        assert actor.drain(0.5, 3) == []  # call 3 runs: this drain waits its timeout
        assert time.monotonic() - start >= 0.45
    finally:
        hold.set()
        running.join(10)
    start = time.monotonic()
    assert actor.drain(5.0, 3) == [] and time.monotonic() - start < 2.0


class SlowStepWorker(DistributedWorker):
    """Long steps; the cancel is checked between them with a collective, so the ranks stop at the same
    step. A subgroup made at setup and no `regroup()`: an abort would end the runner."""

    def setup(self, **kwargs: Any) -> None:
        self.group = dist.new_group([0, 1])

    def __call__(self, streaming: bool = False, steps: int = 50, step_s: float = 1.6, **payload: Any) -> Any:
        for i in range(steps):
            self.progress(i + 1, steps)
            time.sleep(step_s)
            if self.cancelled_everywhere():
                raise RequestCancelled()
            dist.all_reduce(torch.ones(1), group=self.group)
        return "done"


def test_ranks_that_stop_late_but_together_keep_their_group(ray_cluster: None,
                                                            loop: asyncio.AbstractEventLoop) -> None:
    """A cancel lands early in a 1.6 s step: the ranks stop together at its end, after the 1 s grace.
    They left no collective half done, so the runner keeps the group (no abort, no regroup); it used
    to abort it and, for a worker holding a subgroup or a DDP wrapper, end the replica (seen in CI:
    the Flux trainer's slow CPU steps)."""
    runner = DistributedRunner(SlowStepWorker, 2, use_gpu=False, num_cpus_per_rank=0.05, stop_grace_s=1.0)

    async def scenario() -> None:
        await runner.start(timeout=120)
        try:
            first = asyncio.Event()
            task = asyncio.ensure_future(runner.invoke({}, on_event=lambda event: first.set()))
            await asyncio.wait_for(first.wait(), 60)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started > 1.0  # past the grace: the recovery path decided
            assert runner.is_alive() and runner.regroups == 0, runner.broken
            assert await runner.invoke({"steps": 2, "step_s": 0.01}) == "done"
        finally:
            await runner.stop()

    loop.run_until_complete(scenario())
