"""DistributedRunner / DistributedWorker on real Ray actors with gloo (world_size 2, CPU)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from serve_app.distributed import DistributedRunner, RankFailed, RunnerBroken
from serve_app.errors import FieldError, RequestTimeout
from tests.app.fixtures.workers import FailingWorker, SlowWorker, SumWorker


def cpu_runner(worker: type, **kw: Any) -> DistributedRunner:
    return DistributedRunner(worker, 2, use_gpu=False, num_cpus_per_rank=0.1, stop_grace_s=2.0, **kw)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_start_invoke_stream_stop_and_two_runners_side_by_side(ray_cluster: None,
                                                                loop: asyncio.AbstractEventLoop) -> None:
    a, b = cpu_runner(SumWorker), cpu_runner(SumWorker)

    async def scenario() -> None:
        await asyncio.gather(a.start(timeout=60, offset=1.0), b.start(timeout=60, offset=10.0))
        ra, rb = await asyncio.gather(a.invoke({"x": 0.5}), b.invoke({"x": 0.5}))
        assert ra == {"sum": 0.5 + 1.5 + 2.0, "world_size": 2, "rank": 0, "device": "cpu"}  # (0+.5+1)+(1+.5+1)
        assert rb["sum"] == 0.5 + 1.5 + 20.0
        items = [x async for x in a.stream({"x": 0.0})]
        assert items[:3] == [{"i": 0, "rank": 0}, {"i": 1, "rank": 0}, {"i": 2, "rank": 0}]  # rank 0's only
        assert items[3]["sum"] == 3.0 and len(items) == 4
        frames = [x async for x in a.stream({"x": 0.0}, as_text_events=True)]
        assert all(f.startswith(b"data: ") and f.endswith(b"\n\n") for f in frames)
        assert json.loads(frames[-1][6:])["sum"] == 3.0
        await a.check_health()
        await asyncio.gather(a.stop(), b.stop())
        assert not a.is_alive()
        with pytest.raises(RunnerBroken):
            await a.invoke({})

    loop.run_until_complete(scenario())


def test_rank_errors_are_raised_with_the_rank_named(ray_cluster: None, loop: asyncio.AbstractEventLoop) -> None:
    runner = cpu_runner(FailingWorker)

    async def scenario() -> None:
        await runner.start(timeout=60)
        with pytest.raises(RankFailed, match="rank 1 failed: ValueError: rank one exploded") as e:
            await runner.invoke({})
        assert "Traceback" in e.value.remote_traceback and "rank one exploded" in e.value.remote_traceback
        assert runner.is_alive()  # rank 0 finished on its own: the group is still usable
        with pytest.raises(FieldError):  # HTTP-ready errors keep their type (a 422, not a 500)
            await runner.invoke({"field": True})
        started = time.monotonic()
        with pytest.raises(RankFailed, match="rank 1"):
            await runner.invoke({"before_collective": True})  # rank 0 is stuck in all_reduce
        assert time.monotonic() - started < 15
        assert runner.is_alive()  # the group was aborted and re-formed in place (issue 21.13)
        assert (await runner.invoke({"reduce": True}))["sum"] == 2.0  # and its collectives work
        await runner.check_health()

    loop.run_until_complete(scenario())


def test_dead_rank_fails_invoke_and_stream_fast(ray_cluster: None, loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        for streaming in (False, True):
            runner = cpu_runner(SlowWorker)
            await runner.start(timeout=60)
            started = time.monotonic()
            with pytest.raises(RunnerBroken, match="rank 1"):
                if streaming:
                    async for _ in runner.stream({"steps": 200, "die_at": 3}):
                        pass
                else:
                    await runner.invoke({"steps": 200, "die_at": 3})
            assert time.monotonic() - started < 20
            with pytest.raises(RunnerBroken):
                await runner.check_health()
            await runner.stop()

    loop.run_until_complete(scenario())


def test_cancel_stops_the_ranks_and_the_runner_stays_usable(ray_cluster: None,
                                                            loop: asyncio.AbstractEventLoop) -> None:
    runner = cpu_runner(SlowWorker)

    async def scenario() -> None:
        await runner.start(timeout=60)
        task = asyncio.ensure_future(runner.invoke({"steps": 400}))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runner.is_alive()
        stream = runner.stream({"steps": 400, "image": True}, as_text_events=True)
        first = json.loads((await stream.__anext__())[6:])
        assert first["image"]["url"].startswith("data:image/jpeg;base64,")  # images become data URLs
        await stream.aclose()  # the client went away mid-stream
        assert runner.is_alive()
        assert await runner.invoke({"steps": 2}) == {"done": 2}
        with pytest.raises(RequestTimeout):
            async for _ in runner.stream({"steps": 400, "step_s": 0.5}, streaming_timeout=0.2):
                pass
        assert await runner.invoke({"steps": 1}) == {"done": 1}
        await runner.stop()

    loop.run_until_complete(scenario())


def test_typed_events_and_agreed_cancellation(ray_cluster: None, loop: asyncio.AbstractEventLoop) -> None:
    from serve_app.events import Progress
    from tests.app.fixtures.workers import StepWorker

    async def scenario() -> None:
        runner = cpu_runner(StepWorker)
        await runner.start(timeout=120)
        events: list[object] = []
        result = await runner.invoke({"steps": 5}, timeout=60, on_event=events.append)
        assert result == {"steps": 5, "polls": 5, "lag": 0}  # gloo: the agreement is read at once
        assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(i, 5) for i in range(1, 6)]
        assert all(isinstance(e, Progress) for e in events)
        seen: list[object] = []
        task = asyncio.ensure_future(runner.invoke({"steps": 10_000, "step_s": 0.01}, on_event=seen.append))
        while not seen:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Every rank raised RequestCancelled at the same step within the grace period (a rank left
        # behind in a collective would have made the runner kill the group).
        assert runner.is_alive()
        assert (await runner.invoke({"steps": 2}, timeout=60))["steps"] == 2
        await runner.stop()

    loop.run_until_complete(scenario())
