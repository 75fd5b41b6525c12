"""21.13: a failed or timed-out call no longer takes a multi-GPU replica out of service. The runner
aborts the process group, forms a fresh one among the same rank actors and keeps the models; fal's
API: timeouts raise TimeoutError, a failing worker RuntimeError, `invoke()` defaults to `{}`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist

from serve_app.distributed import DistributedRunner, DistributedWorker


class LoadedOnceWorker(DistributedWorker):
    """Records when its "model" was loaded; `fail_rank` raises there before a collective (the other
    rank waits in it), `stall_rank` keeps that rank out of the collective until cancelled."""

    def setup(self, **kwargs: Any) -> None:
        self.loaded_at = time.time_ns()
        self.calls = 0

    def __call__(self, streaming: bool = False, fail_rank: int | None = None, stall_rank: int | None = None,
                 **payload: Any) -> Any:
        self.calls += 1
        if self.rank == fail_rank:
            raise ValueError("a bug reached by an unusual input")
        if self.rank == stall_rank:
            while not self.cancelled:
                time.sleep(0.02)
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
        await runner.stop()

    loop.run_until_complete(scenario())
