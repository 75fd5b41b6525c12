"""`DistributedRunner`: fal's multi-GPU runner API on Ray actors and placement groups.

One Ray actor per rank (one GPU each), placed in the serving replica's placement group (bundle 0 is
the replica, bundle r + 1 is rank r); torch.distributed inside (NCCL on GPUs, gloo on CPU) with a
free rendezvous port per runner. Payloads reach every rank through Ray; rank 0's result comes back.

Where fal's runner returns errors as data or hangs, this one:
- raises a rank's exception with the rank named and its traceback (`RankFailed`), keeping
  HTTP-ready errors (field errors, cancellation) as they are;
- fails `invoke` and `stream` within `stop_grace_s` when a rank dies or the others stay stuck in a
  collective, kills the group and makes `check_health` raise, so Serve replaces the replica;
- stops a request when its caller goes away (cancel flag on every rank) and stays usable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from serve_app.distributed.rank import RankActor, RankFailed
from serve_app.distributed.worker import DistributedWorker, to_text_event_json
from serve_app.errors import RequestTimeout, ServiceError, unwrap_remote_error
from serve_app.streaming import sse_frame

logger = logging.getLogger("ray.serve")


class RunnerBroken(ServiceError):
    """The rank group is gone (a rank died or wedged); the replica must be replaced."""

    status_code = 503
    error_type = "runner_disconnected"


def _is_death(exc: BaseException) -> bool:
    name = type(unwrap_remote_error(exc)).__name__
    return "ActorDied" in name or "ActorError" in name or "ActorUnavailable" in name


def _rank_error(rank: int, exc: BaseException) -> BaseException:
    cause = unwrap_remote_error(exc)
    if isinstance(cause, (ServiceError, RankFailed)):
        return cause
    if _is_death(exc):
        return RunnerBroken(f"rank {rank}'s process died ({type(cause).__name__}); the replica will be replaced")
    return RankFailed(rank, f"{type(cause).__name__}: {cause}")


class DistributedRunner:
    """Runs `worker_cls` on `world_size` ranks. Use `start`, then `invoke` / `stream`, then `stop`."""

    def __init__(
        self,
        worker_cls: type[DistributedWorker],
        world_size: int,
        *,
        use_gpu: bool = True,
        num_cpus_per_rank: float = 1.0,
        collective_timeout_s: float = 600.0,
        stop_grace_s: float = 5.0,
        first_bundle_index: int = 1,
    ) -> None:
        if world_size < 1:
            raise ValueError("world_size must be at least 1")
        self.worker_cls = worker_cls
        self.world_size = world_size
        self.use_gpu = use_gpu
        self.num_cpus_per_rank = num_cpus_per_rank
        self.collective_timeout_s = collective_timeout_s
        self.stop_grace_s = stop_grace_s
        self.first_bundle_index = first_bundle_index
        self.backend = "nccl" if use_gpu else "gloo"
        self.actors: list[Any] = []
        self.broken: str | None = None
        self._lock: asyncio.Lock | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def _create_actors(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.get_current_placement_group()
        if pg is not None and len(pg.bundle_specs) < self.first_bundle_index + self.world_size:
            raise ValueError(f"the replica's placement group has {len(pg.bundle_specs)} bundles; "
                             f"{self.world_size} ranks need {self.first_bundle_index + self.world_size} "
                             "(bundle 0 for the replica, one per rank)")
        remote_cls: Any = ray.remote(RankActor)
        self.actors = []
        group = uuid.uuid4().hex[:8]
        for rank in range(self.world_size):
            # Named so the dashboard (and an operator) can tell the ranks of each group apart.
            options: dict[str, Any] = {"num_cpus": self.num_cpus_per_rank, "num_gpus": 1 if self.use_gpu else 0,
                                       "max_concurrency": 4, "name": f"{self.worker_cls.__name__}-{group}-rank{rank}"}
            if pg is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=self.first_bundle_index + rank)
            self.actors.append(remote_cls.options(**options).remote(self.worker_cls, rank, self.world_size))

    async def start(self, timeout: float = 1800, **setup_kwargs: Any) -> None:
        """Launch one actor per rank, form the process group and run each worker's `setup`."""
        if self.actors:
            raise RuntimeError("runner already started")
        self.broken = None
        self._create_actors()
        try:
            infos = await self._run_all([a.node_info.remote() for a in self.actors], timeout)
            master_addr = infos[0][0]
            port = await asyncio.wait_for(_await(self.actors[0].free_port.remote()), timeout)
            same_node = len({ip for ip, _ in infos}) == 1
            visible = sorted({g for _, gpus in infos for g in gpus}, key=lambda g: (len(g), g)) \
                if self.use_gpu and same_node else None
            await self._run_all([
                a.setup.remote(master_addr, port, self.backend, self.collective_timeout_s, visible, setup_kwargs)
                for a in self.actors], timeout)
        except BaseException:
            self._kill("start failed")
            raise
        self.broken = None
        logger.info("runner for %s started: %d ranks, %s, rendezvous %s:%d", self.worker_cls.__name__,
                    self.world_size, self.backend, master_addr, port)

    def start_blocking(self, timeout: float = 1800, **setup_kwargs: Any) -> None:
        """`start` for synchronous code (a replica constructor)."""
        run_blocking(self.start(timeout, **setup_kwargs))

    async def stop(self, timeout: float = 10) -> None:
        """Run every worker's `teardown`, then end the rank actors."""
        if self.actors and self.broken is None:
            try:
                await self._run_all([a.teardown.remote() for a in self.actors], timeout)
            except Exception as e:  # teardown problems must not keep the actors alive
                logger.warning("runner teardown failed: %s", e)
        self._kill("stopped")

    async def __aenter__(self) -> DistributedRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _kill(self, reason: str) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []
        self.broken = reason

    # --- health ---------------------------------------------------------------------------------
    def is_alive(self) -> bool:
        return bool(self.actors) and self.broken is None

    async def check_health(self, timeout: float = 10.0) -> None:
        """Raise `RunnerBroken` if the group is gone or a rank does not answer."""
        if not self.is_alive():
            raise RunnerBroken(f"distributed ranks are not running ({self.broken or 'not started'})")
        try:
            await self._run_all([a.ping.remote() for a in self.actors], timeout)
        except Exception as e:
            self._kill(f"health check failed: {e}")
            raise RunnerBroken(f"a rank did not answer its health check: {e}") from e

    # --- calls ------------------------------------------------------------------------------------
    def _call_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _ensure_alive(self) -> None:
        if not self.is_alive():
            raise RunnerBroken(f"distributed ranks are not running ({self.broken or 'not started'})")

    def _launch(self, payload: dict[str, Any], streaming: bool, as_text_events: bool) -> list[Any]:
        import ray

        payload_ref = ray.put(payload)  # one copy in the object store, read by every rank
        return [a.call.remote(payload_ref, streaming, as_text_events) for a in self.actors]

    async def invoke(self, payload: dict[str, Any], timeout: float | None = None) -> Any:
        """Run `__call__(streaming=False, **payload)` on every rank; return rank 0's result."""
        async with self._call_lock():
            self._ensure_alive()
            refs = self._launch(payload, streaming=False, as_text_events=False)
            try:
                results = await self._run_all(refs, timeout)
            except (asyncio.CancelledError, GeneratorExit):
                await self._cancel_ranks(refs)
                raise
            return results[0]

    async def stream(
        self,
        payload: dict[str, Any],
        timeout: float | None = None,
        streaming_timeout: float | None = None,
        as_text_events: bool = False,
    ) -> AsyncIterator[Any]:
        """Yield what rank 0 passes to `add_streaming_result`, then the final result (as SSE
        `data:` frames when `as_text_events`). `timeout` bounds the whole call,
        `streaming_timeout` the silence between two items."""
        loop = asyncio.get_running_loop()
        async with self._call_lock():
            self._ensure_alive()
            refs = self._launch(payload, streaming=True, as_text_events=as_text_events)
            everything = asyncio.ensure_future(self._run_all(refs, timeout))
            rank0 = self.actors[0]
            last_item = loop.time()
            try:
                while True:
                    drain = asyncio.ensure_future(_await(rank0.drain.remote(0.25)))
                    await asyncio.wait({drain, everything}, return_when=asyncio.FIRST_COMPLETED)
                    if not drain.done():
                        await asyncio.wait({drain})  # returns within its 0.25 s; its items count
                    try:
                        items = drain.result()
                    except Exception:  # rank 0 is gone: the failure surfaces through `everything`
                        items = []
                        await asyncio.sleep(0.05)
                    for item in items:
                        last_item = loop.time()
                        yield _frame(item) if as_text_events else item
                    if everything.done():
                        break
                    if streaming_timeout is not None and loop.time() - last_item > streaming_timeout:
                        raise RequestTimeout(f"no streaming result for {streaming_timeout:g} s")
                results = everything.result()  # raises the ranks' error, if any
                if self.is_alive():
                    for item in await _await(rank0.drain.remote(0.0)):
                        yield _frame(item) if as_text_events else item
                final = results[0]
                yield _frame(final) if as_text_events else final
            except BaseException:
                if not everything.done():
                    await self._cancel_ranks(refs)
                    everything.cancel()
                raise

    # --- internals ------------------------------------------------------------------------------
    async def _cancel_ranks(self, refs: list[Any]) -> None:
        """Set every rank's cancel flag and give the call `stop_grace_s` to end; a group that
        does not stop in time is killed (the replica's health check then fails)."""
        for actor in self.actors:
            actor.cancel.remote()
        waiters = [asyncio.ensure_future(_await(r)) for r in refs]
        _, pending = await asyncio.shield(asyncio.wait(waiters, timeout=self.stop_grace_s))
        for w in waiters:
            if w.done() and not w.cancelled():
                w.exception()  # retrieved: the cancelled call's own error is not news
        if pending:
            for w in pending:
                w.cancel()
            self._kill("ranks did not stop after a cancelled request")

    async def _run_all(self, refs: list[Any], timeout: float | None) -> list[Any]:
        """Await one call per rank. On the first failure, wait `stop_grace_s` for the others;
        if they are still running (dead peer, stuck collective), kill the group."""
        waiters = [asyncio.ensure_future(_await(r)) for r in refs]
        try:
            done, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for w in waiters:
                w.cancel()
            raise
        failures = [(rank, w.exception()) for rank, w in enumerate(waiters) if w in done and w.exception()]
        if not failures and not pending:
            return [w.result() for w in waiters]
        if pending and failures:
            _, pending = await asyncio.wait(pending, timeout=self.stop_grace_s)
            failures = [(rank, w.exception()) for rank, w in enumerate(waiters)
                        if w.done() and not w.cancelled() and w.exception()]
        # A dead rank is the root cause; the errors it caused in its peers are not.
        failures.sort(key=lambda f: (not _is_death(f[1]), f[0]))  # type: ignore[arg-type]
        if pending or (failures and _is_death(failures[0][1])):  # type: ignore[arg-type]
            for w in pending:
                w.cancel()
            reason = f"rank {failures[0][0]} failed" if failures else f"timed out after {timeout} s"
            self._kill(reason + "; the group cannot continue")
        if not failures:
            raise RequestTimeout(f"distributed call timed out after {timeout} s")
        rank, exc = failures[0]
        err = _rank_error(rank, exc)  # type: ignore[arg-type]
        if isinstance(err, RunnerBroken):
            self.broken = self.broken or str(err)
        if isinstance(err, RankFailed) and err.remote_traceback:
            logger.error("rank %d traceback:\n%s", rank, err.remote_traceback)
        raise err


def run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code, on a private event loop in a thread
    (safe even when the calling thread already runs a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _await(ref: Any) -> Any:
    return await ref


def _frame(item: Any) -> bytes:
    return sse_frame(to_text_event_json(item)).encode()

