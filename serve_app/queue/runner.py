"""QueueRunner: runs queued jobs from inside an ingress replica.

It long-polls the store for claims, runs each job as an asyncio task that consumes
`Dispatcher.stream` (so the call goes through the service's deployment handle: Serve spreads it
over replicas and autoscaling sees it), buffers progress events and log lines and sends them to
the store every `progress_interval_s`, and reports the outcome. A cancel request cancels the
job's task; the cancellation travels through Serve to the replica, whose `ctx.cancelled` turns
true. Stopping the runner cancels its jobs and gives them back to the store, which queues them
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, Literal

from serve_app.errors import ServiceError, to_http, unwrap_remote_error
from serve_app.events import Output, Progress, StreamEvent
from serve_app.queue.client import StoreClient
from serve_app.queue.dispatch import Dispatch
from serve_app.queue.messages import Claim, JobUpdate, Outcome
from serve_app.queue.settings import QueueSettings
from serve_app.queue.state import log_entry
from serve_app.tracing import bind_request_id

logger = logging.getLogger("ray.serve")

MAX_REPORT_TRIES = 10
BUSY_RETRY_S = 0.5


def error_type_for(exc: BaseException, status_code: int) -> str:
    """fal-style `error_type` of a failed job."""
    cause = unwrap_remote_error(exc)
    if isinstance(cause, ServiceError):
        return cause.error_type
    return {422: "validation_error", 499: "request_cancelled", 503: "runner_unavailable",
            504: "request_timeout"}.get(status_code, "internal_error")


def progress_message(event: StreamEvent) -> str | None:
    """The log line for a progress event (other events are not logged: they may be large)."""
    if not isinstance(event, Progress):
        return None
    return f"{event.message or 'progress'} {event.step}/{event.total}"


class QueueRunner:
    """One per ingress replica; `start()` and `stop()` are tied to the ASGI lifespan."""

    def __init__(self, store: StoreClient, dispatcher: Dispatch, settings: QueueSettings) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.worker_id = uuid.uuid4().hex
        self._jobs: dict[str, tuple[Claim, asyncio.Task[Outcome]]] = {}
        self._cancel_requested: set[str] = set()
        self._pending: dict[str, JobUpdate] = {}
        self._outcomes: list[tuple[Outcome, int]] = []
        self._report_now = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._poll_loop()), loop.create_task(self._report_loop())]

    async def stop(self) -> None:
        """Cancel running jobs and give them back to the store (they run again elsewhere)."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        jobs = [job_task for _, job_task in self._jobs.values()]
        for job_task in jobs:
            job_task.cancel()
        await asyncio.gather(*self._loops, *jobs, return_exceptions=True)
        with contextlib.suppress(Exception):  # best effort: otherwise the lease expires
            if self._outcomes:
                await self.store.report(self.worker_id, [], [o for o, _ in self._outcomes])
            await self.store.release(self.worker_id)

    async def _poll_loop(self) -> None:
        wait_s = self.settings.worker_lease_s / 3
        backoff = 0.1
        while True:
            try:
                result = await self.store.poll(self.worker_id, wait_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("queue runner: polling the store failed (%r); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for claim in result.jobs:
                self._start_job(claim)
            for request_id in result.cancel:
                self._cancel_job(request_id)

    def _start_job(self, claim: Claim) -> None:
        self._pending[claim.request_id] = JobUpdate(
            claim.request_id, claim.gateway_request_id,
            logs=[log_entry(f"Running {claim.path} (attempt {claim.attempt})", time.time(), source="queue")])
        task = asyncio.get_running_loop().create_task(self._run(claim))
        self._jobs[claim.request_id] = (claim, task)
        task.add_done_callback(lambda t: self._job_done(claim, t))

    def _cancel_job(self, request_id: str) -> None:
        entry = self._jobs.get(request_id)
        if entry is not None:
            self._cancel_requested.add(request_id)
            entry[1].cancel()

    async def _run(self, claim: Claim) -> Outcome:
        """One attempt: stream the endpoint, buffer its events, return the outcome. A service whose
        Serve queue is full (load shedding) gives the job back to the store: it runs later."""
        try:
            return await self._attempt(claim)
        except Exception as exc:
            if type(unwrap_remote_error(exc)).__name__ != "BackPressureError":
                raise
            await asyncio.sleep(BUSY_RETRY_S)
            return Outcome(claim.request_id, claim.gateway_request_id, "requeue", status_code=503)

    async def _attempt(self, claim: Claim) -> Outcome:
        bind_request_id(claim.request_id, claim.path)
        started = time.monotonic()
        _, spec = self.dispatcher.lookup(claim.path)
        if not spec.stream:  # no progress to report: one unary handle call
            body, units, _ = await self.dispatcher.run(claim.path, claim.payload, claim.request_id, claim.base_url,
                                                    queued=True)
            return Outcome(claim.request_id, claim.gateway_request_id, "succeeded", body, 200, None, units,
                           time.monotonic() - started)
        items, units = await self.dispatcher.stream(claim.path, claim.payload, claim.request_id, claim.base_url,
                                                    queued=True)
        output: dict[str, Any] | None = None
        async for item in items:
            if isinstance(item, Output):
                output = item.to_json()
            else:
                self._buffer_event(claim, item)
        return Outcome(claim.request_id, claim.gateway_request_id, "succeeded", output, 200, None, units,
                       time.monotonic() - started)

    def _buffer_event(self, claim: Claim, event: StreamEvent) -> None:
        update = self._pending.get(claim.request_id)
        if update is None:
            update = self._pending[claim.request_id] = JobUpdate(claim.request_id, claim.gateway_request_id)
        update.events.append(event.to_json())
        message = progress_message(event)
        if message is not None:
            update.logs.append(log_entry(message, time.time()))

    def _job_done(self, claim: Claim, task: asyncio.Task[Outcome]) -> None:
        self._jobs.pop(claim.request_id, None)
        cancel_requested = claim.request_id in self._cancel_requested
        self._cancel_requested.discard(claim.request_id)
        update = self._pending.pop(claim.request_id, None)
        if task.cancelled():
            if self._stopping and not cancel_requested:
                return  # given back to the store by stop()
            outcome = Outcome(claim.request_id, claim.gateway_request_id, "cancelled", status_code=499,
                              error_type="request_cancelled")
        elif (exc := task.exception()) is not None:
            status, detail = to_http(exc)
            if status >= 500:
                logger.error("queued request %s failed", claim.request_id, exc_info=exc)
            kind: Literal["failed", "cancelled"] = "cancelled" if status == 499 and cancel_requested else "failed"
            outcome = Outcome(claim.request_id, claim.gateway_request_id, kind, detail, status,
                              error_type_for(exc, status))
        else:
            outcome = task.result()
        outcome.update = update
        self._outcomes.append((outcome, 0))
        self._report_now.set()

    async def _report_loop(self) -> None:
        """Send progress every `progress_interval_s` and outcomes as soon as possible, in one call:
        outcomes that finish while a call is in flight go together in the next one, and an outcome
        never overtakes the progress sent before it."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.settings.progress_interval_s)
            self._report_now.clear()
            updates = [u for u in self._pending.values() if u.logs or u.events]
            for u in updates:
                self._pending[u.request_id] = JobUpdate(u.request_id, u.gateway_request_id)
            sending, self._outcomes = self._outcomes, []
            if not updates and not sending:
                continue
            try:
                await self.store.report(self.worker_id, updates, [o for o, _ in sending])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retry = [(o, n + 1) for o, n in sending if n + 1 < MAX_REPORT_TRIES]
                logger.warning("queue runner: reporting to the store failed (%r); %d outcomes kept", exc, len(retry))
                self._outcomes = retry + self._outcomes
                await asyncio.sleep(0.5)
