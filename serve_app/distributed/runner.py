"""`DistributedRunner`: fal's multi-GPU runner API on Ray actors and placement groups.

One Ray actor per rank (one GPU each), placed in the serving replica's placement group (bundle 0 is
the replica, bundle r + 1 is rank r); torch.distributed inside (NCCL on GPUs, gloo on CPU) with a
free rendezvous port per runner. Payloads reach every rank through Ray; rank 0's result comes back.

Where fal's runner returns errors as data or hangs, this one:
- raises a rank's exception with the rank named and its traceback (`RankFailed`, a RuntimeError),
  keeping HTTP-ready errors (field errors, cancellation) as they are; a call past its timeout
  raises `RunnerTimeout` (a TimeoutError);
- recovers in place after a failed or timed-out call: it aborts what is pending in the process
  group (ranks stuck in a collective return), forms a fresh group among the same rank actors on a
  fresh rendezvous, and keeps the models, so the next request runs within seconds;
- kills the group only when a rank's process died (or ranks stay stuck even after the abort):
  `check_health` then raises and Serve replaces the replica;
- stops a request when its caller goes away (cancel flag on every rank) and stays usable.

Results travel as the typed events of `serve_app.events`: `invoke(payload, on_event=...)` forwards
rank 0's events as they come and returns its final result; workers raise `RequestCancelled`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
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


class RunnerTimeout(RequestTimeout, TimeoutError):
    """A call did not finish in its `timeout` (fal's runner raises TimeoutError too): 504."""


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
        self.regroups = 0  # process groups re-formed in place after a failed call
        self._rendezvous_addr = "127.0.0.1"
        self._lock: asyncio.Lock | None = None
        self._call_ids = itertools.count(1)  # numbers the calls, so rank 0's drain knows when one ended

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
            same_node = len({ip for ip, _ in infos}) == 1
            # All ranks on one node (STRICT_PACK): the group's sockets listen on loopback only.
            self._rendezvous_addr = "127.0.0.1" if same_node else infos[0][0]
            port = await asyncio.wait_for(_await(self.actors[0].open_rendezvous.remote(self._rendezvous_addr)),
                                          timeout)
            visible = sorted({g for _, gpus in infos for g in gpus}, key=lambda g: (len(g), g)) \
                if self.use_gpu and same_node else None
            await self._run_all([
                a.setup.remote(self._rendezvous_addr, port, self.backend, self.collective_timeout_s, visible,
                               setup_kwargs)
                for a in self.actors], timeout)
        except BaseException:
            self._kill("start failed")
            raise
        self.broken = None
        logger.info("runner for %s started: %d ranks, %s, rendezvous %s:%d", self.worker_cls.__name__,
                    self.world_size, self.backend, self._rendezvous_addr, port)

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

    def _launch(self, payload: dict[str, Any], streaming: bool, as_text_events: bool) -> tuple[int, list[Any]]:
        """Start the call on every rank: its id (for rank 0's `drain`) and one ref per rank."""
        import ray

        call_id = next(self._call_ids)
        payload_ref = ray.put(payload)  # one copy in the object store, read by every rank
        return call_id, [a.call.remote(payload_ref, streaming, as_text_events, call_id) for a in self.actors]

    async def invoke(self, payload: dict[str, Any] | None = None, timeout: float | None = None,
                     on_event: Callable[[Any], None] | None = None) -> Any:
        """Run `__call__(streaming=False, **payload)` on every rank; return rank 0's result.

        With `on_event`, the ranks run with `streaming=True` and every intermediate item rank 0
        emits (typed `Progress` / `Partial` events, or what a fal worker passes to
        `add_streaming_result`) is handed to `on_event` as it arrives: the one "forward the events,
        keep the final result" loop that every multi-GPU service uses. Cancellation and rank
        failures are raised.
        """
        payload = {} if payload is None else payload
        if on_event is not None:
            async for is_final, item in self._items(payload, timeout, None, as_text_events=False):
                if is_final:
                    return item
                on_event(item)
            raise RuntimeError("the ranks returned no result")  # pragma: no cover - _items ends in one
        async with self._call_lock():
            self._ensure_alive()
            _, refs = self._launch(payload, streaming=False, as_text_events=False)
            try:
                results = await self._run_all(refs, timeout, recover=True)
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
        """Yield what rank 0 emits (events, `add_streaming_result` items), then the final result (as
        SSE `data:` frames when `as_text_events`). `timeout` bounds the whole call,
        `streaming_timeout` the silence between two items."""
        async for _, item in self._items(payload, timeout, streaming_timeout, as_text_events):
            yield _frame(item) if as_text_events else item

    async def _items(self, payload: dict[str, Any], timeout: float | None, streaming_timeout: float | None,
                     as_text_events: bool) -> AsyncIterator[tuple[bool, Any]]:
        """`(False, intermediate item)` as rank 0 emits them, then `(True, rank 0's result)`."""
        loop = asyncio.get_running_loop()
        async with self._call_lock():
            self._ensure_alive()
            call_id, refs = self._launch(payload, streaming=True, as_text_events=as_text_events)
            everything = asyncio.ensure_future(self._run_all(refs, timeout, recover=True))
            rank0 = self.actors[0]
            last_item = loop.time()
            try:
                while True:
                    drain = asyncio.ensure_future(_await(rank0.drain.remote(0.25, call_id)))
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
                        yield False, item
                    if everything.done():
                        break
                    if streaming_timeout is not None and loop.time() - last_item > streaming_timeout:
                        raise RequestTimeout(f"no streaming result for {streaming_timeout:g} s")
                results = everything.result()  # raises the ranks' error, if any
                if self.is_alive():
                    for item in await _await(rank0.drain.remote(0.0, call_id)):
                        yield False, item
                yield True, results[0]
            except BaseException:
                if not everything.done():
                    await self._cancel_ranks(refs)
                    everything.cancel()
                raise

    # --- internals ------------------------------------------------------------------------------
    async def _cancel_ranks(self, refs: list[Any]) -> None:
        """Set every rank's cancel flag and give the call `stop_grace_s` to end; ranks that do not
        stop in time (stuck in a collective) are aborted and regrouped in place."""
        for actor in self.actors:
            actor.cancel.remote()
        waiters = [asyncio.ensure_future(_await(r)) for r in refs]
        _, pending = await asyncio.shield(asyncio.wait(waiters, timeout=self.stop_grace_s))
        for w in waiters:
            if w.done() and not w.cancelled():
                w.exception()  # retrieved: the cancelled call's own error is not news
        if pending:
            await asyncio.shield(self._recover(waiters, "ranks did not stop after a cancelled request"))

    async def _run_all(self, refs: list[Any], timeout: float | None, recover: bool = False) -> list[Any]:
        """Await one call per rank. On the first failure, wait `stop_grace_s` for the others. A dead
        rank kills the group; with `recover`, any other failure, or ranks still running (stuck in
        a collective, or past `timeout`), aborts and re-forms the group in place (`_recover`)."""
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
        dead = bool(failures) and _is_death(failures[0][1])  # type: ignore[arg-type]
        reason = f"rank {failures[0][0]} failed" if failures else f"timed out after {timeout} s"
        suspect = bool(pending) or any(not isinstance(unwrap_remote_error(e), ServiceError)  # type: ignore[arg-type]
                                       for _, e in failures)
        if dead or (pending and not recover):
            for w in pending:
                w.cancel()
            self._kill(reason + "; the group cannot continue")
        elif recover and suspect:
            await self._recover(waiters, reason)
        if not failures:
            raise RunnerTimeout(f"distributed call timed out after {timeout} s")
        rank, exc = failures[0]
        err = _rank_error(rank, exc)  # type: ignore[arg-type]
        if isinstance(err, RunnerBroken):
            self.broken = self.broken or str(err)
        if isinstance(err, RankFailed) and err.remote_traceback:
            logger.error("rank %d traceback:\n%s", rank, err.remote_traceback)
        raise err

    async def _recover(self, waiters: Sequence[asyncio.Future[Any]], reason: str) -> None:
        """Re-form the process group among the same rank actors after a failed call: ask the ranks
        to stop, abort their process groups (collectives that wait on a peer return with an
        error), wait for every call to end, then join a fresh group on a fresh rendezvous. Models
        stay loaded. Ranks that still don't return, or a regroup that fails, kill the group."""
        if not self.actors:
            return
        pending = {w for w in waiters if not w.done()}
        if pending:
            for actor in self.actors:
                actor.cancel.remote()
            _, pending = await asyncio.wait(pending, timeout=self.stop_grace_s)
            if not pending and _stopped_together(waiters):
                # Late, but every rank left at the step they agreed on (`cancel_agreed`): no collective
                # was left half done, so the group is sound and needs no abort (a worker's DDP wrapper
                # or subgroups stay valid). Slow steps on shared CPUs got here.
                logger.warning("runner for %s: %s, then stopped together within %.0f s more; group kept",
                               self.worker_cls.__name__, reason, self.stop_grace_s)
                return
        try:
            await self._run_all([a.abort.remote() for a in self.actors], self.stop_grace_s)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=self.stop_grace_s)
            if pending:
                raise RuntimeError("ranks still running after the abort")
            for w in waiters:
                if not w.cancelled():
                    w.exception()  # retrieved: the aborted collectives' errors are not news
            rendezvous_s = max(30.0, 4 * self.stop_grace_s)
            port = await asyncio.wait_for(_await(self.actors[0].open_rendezvous.remote(self._rendezvous_addr)),
                                          rendezvous_s)
            await self._run_all([a.regroup.remote(self._rendezvous_addr, port, self.backend, rendezvous_s)
                                 for a in self.actors], rendezvous_s + self.stop_grace_s)
        except Exception as e:
            for w in pending:
                w.cancel()
            self._kill(f"{reason}; re-forming the group failed ({type(e).__name__}: {e})")
            return
        self.regroups += 1
        logger.warning("runner for %s: %s; process group re-formed in place on port %d (models kept)",
                       self.worker_cls.__name__, reason, port)


def _stopped_together(waiters: Sequence[asyncio.Future[Any]]) -> bool:
    """Every rank's call raised `RequestCancelled` (ranks agree on the step they stop at: see
    `DistributedWorker.cancel_agreed`), or every one returned."""
    from serve_app.errors import RequestCancelled

    if any(w.cancelled() for w in waiters):
        return False
    errors = [w.exception() for w in waiters]
    if all(e is None for e in errors):
        return True
    return all(e is not None and isinstance(unwrap_remote_error(e), RequestCancelled) for e in errors)


def run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code, on a private event loop in a thread
    (safe even when the calling thread already runs a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _await(ref: Any) -> Any:
    return await ref


def _frame(item: Any) -> bytes:
    return sse_frame(to_text_event_json(item)).encode()

