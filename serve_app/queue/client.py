"""How the ingress talks to the JobStore: typed async calls with a timeout on every remote wait,
to the store actor (`connect_store`) or, in tests, to a JobStore in the same event loop."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from typing import Any

from serve_app.errors import ServiceError
from serve_app.queue.messages import CancelOutcome, JobUpdate, Outcome, PollResult, ResultView, WatchResult
from serve_app.queue.settings import QueueSettings
from serve_app.queue.state import Job
from serve_app.queue.store import STORE_NAMESPACE, JobStore

MAX_BATCH = 256
STATUS_CACHE_SIZE = 10_000


class StoreClient:
    """Calls a JobStore, local (`target` is a JobStore) or remote (a Ray actor handle)."""

    def __init__(self, target: Any, timeout_s: float) -> None:
        self._target = target
        self._local = isinstance(target, JobStore)
        self.timeout_s = timeout_s
        self._batcher: _SubmitBatcher | None = None
        self._done: OrderedDict[tuple[str, bool, str | None], dict[str, Any]] = OrderedDict()

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        fn = getattr(self._target, method)
        awaitable = fn(*args) if self._local else fn.remote(*args)
        return await asyncio.wait_for(awaitable, timeout_s or self.timeout_s)

    async def configure(self, settings: QueueSettings) -> None:
        await self._call("configure", settings)

    async def submit(self, job: Job) -> int:
        """Queue `job` (batched with the submissions of the same moment: one store call carries them
        all); its queue position, or the store's error raised."""
        if self._batcher is None:
            self._batcher = _SubmitBatcher(self)
        return await self._batcher.submit(job)

    async def submit_many(self, jobs: list[Job]) -> list[int | ServiceError]:
        result: list[int | ServiceError] = await self._call("submit_many", jobs)
        return result

    async def status(self, request_id: str, with_logs: bool, owner: str | None = None) -> dict[str, Any] | None:
        """fal's status body (None: no such job for this owner). Finished jobs' answers come from a
        cache in this replica: they no longer change."""
        key = (request_id, with_logs, owner)
        cached = self._done.get(key)
        if cached is not None:
            self._done.move_to_end(key)
            return cached
        result: dict[str, Any] | None = await self._call("status", request_id, with_logs, owner)
        if result is not None and result.get("status") == "COMPLETED":
            self._done[key] = result
            if len(self._done) > STATUS_CACHE_SIZE:
                self._done.popitem(last=False)
        return result

    async def result(self, request_id: str, owner: str | None = None) -> ResultView | None:
        result: ResultView | None = await self._call("result", request_id, owner)
        return result

    async def cancel(self, request_id: str, owner: str | None = None) -> CancelOutcome:
        result: CancelOutcome = await self._call("cancel", request_id, owner)
        return result

    async def watch(self, request_id: str, version: int, timeout_s: float, event_seq: int, log_total: int,
                    with_logs: bool, owner: str | None = None) -> WatchResult | None:
        result: WatchResult | None = await self._call(
            "watch", request_id, version, timeout_s, event_seq, log_total, with_logs, owner,
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


class _SubmitBatcher:
    """Group commit for submissions: while one `submit_many` call is in flight, the submissions
    that arrive wait together for the next one, so under load one store call carries many jobs
    (and one journal write), and alone a submission costs one call as before."""

    def __init__(self, client: StoreClient) -> None:
        self.client = client
        self._pending: list[tuple[Job, asyncio.Future[int]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, job: Job) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                answers = await self.client.submit_many([job for job, _ in batch])
            except Exception as exc:  # the store is unreachable: every submission of the batch fails
                answers = [exc] * len(batch)  # type: ignore[list-item]
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(int(answer))


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
