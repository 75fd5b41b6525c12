"""How the ingress talks to the JobStore: typed async calls with a timeout on every remote wait,
to the store actor (`connect_store`) or, in tests, to a JobStore in the same event loop."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from serve_app.queue.messages import CancelOutcome, JobUpdate, Outcome, PollResult, ResultView, WatchResult
from serve_app.queue.settings import QueueSettings
from serve_app.queue.state import Job
from serve_app.queue.store import STORE_NAMESPACE, JobStore


class StoreClient:
    """Calls a JobStore, local (`target` is a JobStore) or remote (a Ray actor handle)."""

    def __init__(self, target: Any, timeout_s: float) -> None:
        self._target = target
        self._local = isinstance(target, JobStore)
        self.timeout_s = timeout_s

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        fn = getattr(self._target, method)
        awaitable = fn(*args) if self._local else fn.remote(*args)
        return await asyncio.wait_for(awaitable, timeout_s or self.timeout_s)

    async def configure(self, settings: QueueSettings) -> None:
        await self._call("configure", settings)

    async def submit(self, job: Job) -> int:
        return int(await self._call("submit", job))

    async def status(self, request_id: str, with_logs: bool) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call("status", request_id, with_logs)
        return result

    async def result(self, request_id: str) -> ResultView | None:
        result: ResultView | None = await self._call("result", request_id)
        return result

    async def cancel(self, request_id: str) -> CancelOutcome:
        result: CancelOutcome = await self._call("cancel", request_id)
        return result

    async def watch(self, request_id: str, version: int, timeout_s: float, event_seq: int, log_total: int,
                    with_logs: bool) -> WatchResult | None:
        result: WatchResult | None = await self._call(
            "watch", request_id, version, timeout_s, event_seq, log_total, with_logs,
            timeout_s=timeout_s + self.timeout_s)
        return result

    async def poll(self, worker_id: str, wait_s: float) -> PollResult:
        result: PollResult = await self._call("poll", worker_id, wait_s, timeout_s=wait_s + self.timeout_s)
        return result

    async def report(self, worker_id: str, updates: list[JobUpdate], outcomes: list[Outcome]) -> None:
        await self._call("report", worker_id, updates, outcomes)

    async def finish(self, worker_id: str, outcome: Outcome) -> bool:
        return bool(await self._call("finish", worker_id, outcome))

    async def release(self, worker_id: str) -> int:
        return int(await self._call("release", worker_id))

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("stats")
        return result


def store_actor_name(app_name: str) -> str:
    """The store actor's name for a Serve application (namespace `STORE_NAMESPACE`)."""
    return "queue:" + re.sub(r"[^A-Za-z0-9_.-]", "_", app_name)


def _get_or_create_actor(app_name: str, settings: QueueSettings) -> Any:
    import ray

    actor_cls: Any = ray.remote(JobStore)
    return actor_cls.options(
        name=store_actor_name(app_name),
        namespace=STORE_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        num_cpus=0,
        max_concurrency=5000,
    ).remote(settings, app_name)


async def connect_store(app_name: str, settings: QueueSettings) -> StoreClient:
    """The store actor of `app_name`, created on first use (detached: it outlives the ingress),
    configured with `settings`. Actor lookup talks to the GCS, so it runs in a thread."""
    handle = await asyncio.to_thread(_get_or_create_actor, app_name, settings)
    client = StoreClient(handle, settings.rpc_timeout_s)
    await client.configure(settings)
    return client
