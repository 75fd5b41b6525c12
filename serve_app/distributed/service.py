"""`DistributedService`: a service whose replica owns one DistributedRunner of its worker's ranks.

It gathers what every multi-GPU service repeats: the placement-group deployment options, building
and starting the runner from the config, one request at a time (the runner serialises itself),
running a request with its events forwarded (`run_on_ranks`), and a health check that fails when a
rank is gone. The config must have `world_size`, `resources`
(`RankResources`) and `start_timeout_s` fields.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from serve_app.context import RunContext
from serve_app.distributed.placement import RankResources, placement_options
from serve_app.distributed.runner import DistributedRunner
from serve_app.distributed.worker import DistributedWorker
from serve_app.service import Service


def _layout(config: BaseModel) -> tuple[int, RankResources]:
    world_size, resources = getattr(config, "world_size", None), getattr(config, "resources", None)
    if not isinstance(world_size, int) or not isinstance(resources, RankResources):
        raise TypeError(f"{type(config).__name__} needs `world_size: int` and `resources: RankResources` fields")
    return world_size, resources


class DistributedService(Service):
    """Subclasses call `start_runner(worker_cls, **setup_kwargs)` in `__init__` and use `self.runner`."""

    concurrency_safe = True  # the runner takes one request at a time itself
    runner: DistributedRunner

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        world_size, resources = _layout(config)
        return {"max_ongoing_requests": 1, **placement_options(world_size, resources)}

    def start_runner(self, worker_cls: type[DistributedWorker], config: BaseModel,
                     **setup_kwargs: Any) -> DistributedRunner:
        """Build the runner that `config` describes, start every rank with `setup(**setup_kwargs)`
        (blocking: this runs in the replica's constructor) and keep it as `self.runner`."""
        world_size, res = _layout(config)
        self.runner = DistributedRunner(
            worker_cls, world_size, use_gpu=res.use_gpu, num_cpus_per_rank=res.num_cpus_per_rank,
            collective_timeout_s=res.collective_timeout_s, stop_grace_s=res.stop_grace_s,
        )
        self.runner.start_blocking(timeout=float(getattr(config, "start_timeout_s", 1800)), **setup_kwargs)
        return self.runner

    async def run_on_ranks(self, payload: dict[str, Any], ctx: RunContext, timeout: float | None = None) -> Any:
        """Run one request on every rank and return rank 0's result; when the caller streams, rank
        0's typed events are forwarded to it as they come. Cancellation and failures are raised.

        The call's time goes to `ctx.timings` as `ranks`, with rank 0's own split when its result
        is a dict with `timings` (seconds by name), which is taken out of the result."""
        started = time.perf_counter()
        result = await self.runner.invoke(payload, timeout=timeout, on_event=ctx.emit if ctx.streaming else None)
        ctx.time_part("ranks", time.perf_counter() - started)
        if isinstance(result, dict) and isinstance(result.get("timings"), dict):  # rank 0's own split
            for name, seconds in result.pop("timings").items():
                ctx.time_part(name, seconds)
        return result

    async def check_health(self) -> None:  # type: ignore[override]
        await self.runner.check_health()
