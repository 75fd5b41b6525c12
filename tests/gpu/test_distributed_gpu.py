"""DistributedRunner on NCCL: the CPU (gloo) scenarios again, one GPU per rank."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_app.distributed import DistributedRunner, RankFailed, RunnerBroken
from tests.app.fixtures.workers import FailingWorker, SlowWorker, SumWorker

pytestmark = pytest.mark.gpu


def gpu_runner(worker: type, world_size: int = 2) -> DistributedRunner:
    return DistributedRunner(worker, world_size, use_gpu=True, num_cpus_per_rank=1, stop_grace_s=5.0)


@contextlib.asynccontextmanager
async def running(worker: type, world_size: int = 2, **setup: Any) -> AsyncIterator[DistributedRunner]:
    """A started GPU runner, stopped however the block ends: a failed assertion must not leave its
    ranks holding the GPUs (the next test would wait for them until its timeout)."""
    runner = gpu_runner(worker, world_size)
    try:
        await runner.start(timeout=300, **setup)
        yield runner
    finally:
        await runner.stop()


@pytest.fixture
def two_gpus(ray_gpus: int) -> None:
    if ray_gpus < 2:
        pytest.skip("needs 2 GPUs")


def test_nccl_invoke_stream_and_side_by_side(two_gpus: None) -> None:
    async def scenario() -> None:
        async with running(SumWorker, offset=1.0) as runner:
            result = await runner.invoke({"x": 0.5})
            assert result["sum"] == 4.0 and result["device"].startswith("cuda:")
            items = [x async for x in runner.stream({"x": 0.0})]
            assert len(items) == 4 and items[-1]["sum"] == 3.0
        # two runners at once (one GPU each): separate rendezvous ports, no collision
        async with running(SumWorker, 1) as a, running(SumWorker, 1) as b:
            assert [r["sum"] for r in await asyncio.gather(a.invoke({"x": 1}), b.invoke({"x": 2}))] == [1.0, 2.0]

    asyncio.run(scenario())


def test_nccl_errors_dead_ranks_and_cancel(two_gpus: None) -> None:
    async def scenario() -> None:
        async with running(FailingWorker) as failing:
            with pytest.raises(RankFailed, match="rank 1 failed: ValueError"):
                await failing.invoke({})
            assert failing.is_alive() and failing.regroups == 1  # an unexpected error: re-formed in place
            started = time.monotonic()
            with pytest.raises(RankFailed, match="rank 1"):
                await failing.invoke({"before_collective": True})  # rank 0 would wait in NCCL forever
            # the NCCL group was aborted (rank 0's all_reduce returned) and re-formed in place
            assert time.monotonic() - started < 30
            assert failing.is_alive() and failing.regroups == 2
            assert (await failing.invoke({"reduce": True}))["sum"] == 2.0  # the new group's collectives work
            await failing.check_health()

        async with running(SlowWorker) as slow:
            task = asyncio.ensure_future(slow.invoke({"steps": 400}))
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await slow.invoke({"steps": 2}) == {"done": 2}
            started = time.monotonic()
            with pytest.raises(RunnerBroken, match="rank 1"):  # a dead rank: nothing to re-form
                async for _ in slow.stream({"steps": 400, "die_at": 3}):
                    pass
            assert time.monotonic() - started < 30
            with pytest.raises(RunnerBroken):
                await slow.check_health()

    asyncio.run(scenario())


def test_nccl_typed_events_and_lagged_cancel_agreement(two_gpus: None) -> None:
    from serve_app.events import Progress
    from tests.app.fixtures.workers import StepWorker

    async def scenario() -> None:
        async with running(StepWorker) as runner:
            events: list[object] = []
            result = await runner.invoke({"steps": 6}, on_event=events.append)
            assert result == {"steps": 6, "polls": 6, "lag": 2}  # NCCL: read two steps late, after its CUDA event
            assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3, 4, 5, 6]
            seen: list[object] = []
            task = asyncio.ensure_future(runner.invoke({"steps": 100_000, "step_s": 0.005}, on_event=seen.append))
            while len(seen) < 3:
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert runner.is_alive()  # both ranks stopped at the same step
            assert (await runner.invoke({"steps": 2}))["steps"] == 2

    asyncio.run(scenario())
