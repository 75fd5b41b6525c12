"""JobStore: the queue's single source of truth, run as a detached named Ray actor per application.

One FIFO per service; runners (one per ingress replica) long-poll `poll()` and get jobs claimed for
them up to the service's `max_running`, across all replicas. A runner that stops polling for
`worker_lease_s` is presumed dead: its running jobs go back to the front of their queue (or, after
`max_attempts`, complete with 503 `runner_disconnected`; a job with a pending cancel is cancelled).
With `journal_dir` set, every state change is journaled and replayed when the store starts again.

All methods run on the actor's event loop, one at a time between awaits, so no locks are needed.
Plain class: unit tests drive it directly with asyncio; `connect_store()` makes it an actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from serve_app.errors import ServiceError
from serve_app.queue.feed import ChangeFeed
from serve_app.queue.journal import Journal, replay
from serve_app.queue.messages import (
    CancelOutcome,
    Claim,
    JobUpdate,
    Outcome,
    PayloadTooLarge,
    PollResult,
    QueueFull,
    ResultView,
    WatchResult,
)
from serve_app.queue.queues import ServiceQueues
from serve_app.queue.settings import QueueSettings
from serve_app.queue.state import Job, JobState, log_entry
from serve_app.queue.webhooks import WebhookRefused, WebhookSender

logger = logging.getLogger("ray.serve")

STORE_NAMESPACE = "serve_app_queue"


def _json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (what a result costs the store to hold)."""
    if value is None:
        return 0
    try:
        return len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        return 0


class JobStore:
    """Jobs, queues, claims and leases (see the module docstring)."""

    def __init__(self, settings: QueueSettings | dict[str, Any], name: str = "default",
                 sender: WebhookSender | None = None) -> None:
        self.settings = settings if isinstance(settings, QueueSettings) else QueueSettings.model_validate(settings)
        self.name = name
        self.sender = sender or WebhookSender(self.settings.webhook)
        self._jobs: dict[str, Job] = {}
        self._queues = ServiceQueues()
        self._by_worker: dict[str, set[str]] = {}
        self._workers: dict[str, float] = {}
        self._cancels: dict[str, list[str]] = {}
        self._feed = ChangeFeed()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._bytes = 0  # payload and result bytes held, against `max_total_bytes`
        self.journal: Journal | None = None
        if self.settings.journal_dir is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            path = Path(self.settings.journal_dir).expanduser() / f"{safe}.jsonl"
            self._restore(replay(path))
            self.journal = Journal(path, fsync=self.settings.journal_fsync)

    # ----------------------------------------------------------------- life cycle
    def _restore(self, records: dict[str, dict[str, Any]]) -> None:
        now = time.time()
        for record in sorted(records.values(), key=lambda r: r["created_at"]):
            job = Job.from_record(record)
            self._jobs[job.request_id] = job
            self._bytes += job.payload_bytes + job.result_bytes
            if job.state == JobState.QUEUED:
                self._queues.push(job.service, job.request_id)
            elif job.state == JobState.RUNNING and job.worker_id is not None:
                # Its runner gets one lease to show it is alive (the store restarted, not the ingress).
                self._queues.add_running(job.service)
                self._by_worker.setdefault(job.worker_id, set()).add(job.request_id)
                self._workers[job.worker_id] = now
        logger.info("queue store %s: restored %d jobs", self.name, len(self._jobs))

    def _ensure_started(self) -> None:
        if self._started:
            return
        self._started = True
        if self.journal is not None:
            self.journal.start()
        self._spawn(self._maintenance_loop())
        for job in self._jobs.values():
            if job.done and job.webhook_url and not job.webhook_done:
                self._spawn(self._deliver_webhook(job.request_id, 0.0))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def configure(self, settings: QueueSettings | dict[str, Any]) -> None:
        """Apply new limits and timings (the newest ingress deployment's settings win). The journal
        and webhook settings stay those the store was created with."""
        new = settings if isinstance(settings, QueueSettings) else QueueSettings.model_validate(settings)
        self.settings = self.settings.model_copy(update={k: getattr(new, k) for k in (
            "defaults", "services", "retry_after_s", "max_attempts", "worker_lease_s", "result_ttl_s", "max_logs",
            "max_payload_bytes", "max_total_bytes", "capacity")})
        self._ensure_started()
        self._notify_work()

    async def close(self) -> None:
        """Stop background work and write the journal out (tests and orderly shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.journal is not None:
            await self.journal.close()
        await self.sender.aclose()

    # ----------------------------------------------------------------- client API
    async def submit(self, job: Job) -> int:
        """Queue `job`; returns its queue position. Raises `QueueFull` past `max_queued` or past
        `max_total_bytes`, `PayloadTooLarge` past `max_payload_bytes`."""
        position = self._admit(job)
        await self._commit()
        return position

    async def submit_many(self, jobs: list[Job]) -> list[int | ServiceError]:
        """Queue several jobs with one journal commit (the ingress batches concurrent submissions
        into one call); each gets its queue position or the error that refused it."""
        out: list[int | ServiceError] = []
        for job in jobs:
            try:
                out.append(self._admit(job))
            except ServiceError as exc:
                out.append(exc)
        await self._commit()
        return out

    def _admit(self, job: Job) -> int:
        self._ensure_started()
        if job.payload_bytes > self.settings.max_payload_bytes:
            raise PayloadTooLarge(self.settings.max_payload_bytes)
        if self._queues.length(job.service) >= self.settings.limits(job.service).max_queued or \
                self._bytes + job.payload_bytes > self.settings.max_total_bytes:
            raise QueueFull(job.service, self.settings.retry_after_s)
        if job.request_id in self._jobs:
            raise ValueError(f"duplicate request id {job.request_id}")
        self._jobs[job.request_id] = job
        self._bytes += job.payload_bytes
        position = self._queues.push(job.service, job.request_id)
        self._save(job)
        self._notify_work()
        return position

    def _visible(self, request_id: str, owner: str | None) -> Job | None:
        """The job, unless another key submitted it (then it does not exist for this caller, as
        on fal: 404). `owner` None is the server itself."""
        job = self._jobs.get(request_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    async def status(self, request_id: str, with_logs: bool = False, owner: str | None = None,
                     ) -> dict[str, Any] | None:
        """fal's status body, or None for an unknown id (or another owner's job)."""
        job = self._visible(request_id, owner)
        return None if job is None else job.status_view(with_logs, self._position(job))

    async def result(self, request_id: str, owner: str | None = None) -> ResultView | None:
        """The result URL's answer, or None for an unknown id (or another owner's job)."""
        job = self._visible(request_id, owner)
        if job is None:
            return None
        if not job.done:
            return ResultView(False, 400, "Request is still in progress")
        return ResultView(True, job.status_code or 500, job.result, job.billable_units)

    async def cancel(self, request_id: str, owner: str | None = None) -> CancelOutcome:
        """Remove a queued job (OK), or ask a running one's runner to stop (CANCELLATION_REQUESTED)."""
        self._ensure_started()
        job = self._visible(request_id, owner)
        if job is None:
            return "NOT_FOUND"
        if job.done:
            return "ALREADY_COMPLETED"
        now = time.time()
        if job.state == JobState.QUEUED:
            self._queues.remove(job.service, request_id)
            job.cancel(None, now)
            self._finished(job)
            self._feed.queue_moved(job.service)
            await self._commit()
            return "OK"
        if not job.cancel_requested:
            job.cancel_requested = True
            job.add_logs([log_entry("Cancellation requested", now, "INFO", "queue")], self.settings.max_logs)
            if job.worker_id is not None:
                self._cancels.setdefault(job.worker_id, []).append(request_id)
            self._save(job)
            self._notify_work()
        return "CANCELLATION_REQUESTED"

    async def watch(self, request_id: str, version: int, timeout_s: float, event_seq: int = 0,
                    log_total: int = 0, with_logs: bool = False, owner: str | None = None) -> WatchResult | None:
        """Wait (up to `timeout_s`) until the job changes from `version`, then describe it; events
        and logs are those after the caller's marks. None for an unknown id (or another owner's)."""
        job = self._visible(request_id, owner)
        if job is None:
            return None
        if self._feed.version(request_id) == version and not job.done:
            await self._feed.wait(request_id, job.service if job.state == JobState.QUEUED else None, timeout_s)
            job = self._jobs.get(request_id)
            if job is None:
                return None
        events, last_seq = self._feed.events_after(request_id, event_seq)
        total = job.log_total
        new_logs: list[dict[str, Any]] = []
        if with_logs and total > log_total:
            new_logs = job.logs[-min(total - log_total, len(job.logs)):]
        return WatchResult(self._feed.version(request_id), job.status_view(False, self._position(job)),
                           events, last_seq, new_logs, total)

    # ----------------------------------------------------------------- runner API
    async def poll(self, worker_id: str, wait_s: float) -> PollResult:
        """Claim jobs for `worker_id` (and hand it cancel requests). Jobs are only claimed at the
        start of a call, never after waiting, so a dead runner's pending poll claims nothing."""
        self._ensure_started()
        self._workers[worker_id] = time.time()
        result = self._take(worker_id)
        if result.jobs or result.cancel:
            return result
        wake = self._wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait_s)
        self._workers[worker_id] = time.time()
        return PollResult(cancel=self._cancels.pop(worker_id, []))

    async def report(self, worker_id: str, updates: list[JobUpdate], outcomes: list[Outcome] | None = None) -> None:
        """Record progress of running jobs, then how attempts ended (stale attempts are ignored)."""
        self._workers[worker_id] = time.time()
        for update in updates:
            job = self._jobs.get(update.request_id)
            if job is not None and job.state == JobState.RUNNING and \
                    job.gateway_request_id == update.gateway_request_id:
                self._apply(job, update)
                self._feed.changed(job.request_id)
        for outcome in outcomes or ():
            self._finish(outcome)
        if outcomes:
            await self._commit()

    async def finish(self, worker_id: str, outcome: Outcome) -> bool:
        """Record how an attempt ended; False when the attempt is stale (the job moved on)."""
        self._workers[worker_id] = time.time()
        done = self._finish(outcome)
        await self._commit()
        return done

    def _finish(self, outcome: Outcome) -> bool:
        job = self._jobs.get(outcome.request_id)
        if job is None or job.state != JobState.RUNNING or job.gateway_request_id != outcome.gateway_request_id:
            return False
        if outcome.update is not None:
            self._apply(job, outcome.update)
        self._release_slot(job)
        now = time.time()
        if outcome.kind == "requeue":
            job.requeue("The service was busy", now)
            job.attempt -= 1  # it never ran
            self._queues.push_front(job.service, job.request_id)
            self._save(job)
            self._feed.changed(job.request_id)
            self._notify_work()
            return True
        if outcome.kind == "succeeded":
            job.succeed(outcome.body, outcome.billable_units, outcome.inference_time, now)
        elif outcome.kind == "cancelled":
            job.cancel(outcome.inference_time, now)
        else:
            job.fail(outcome.status_code, outcome.body, outcome.error_type or "internal_error",
                     outcome.inference_time, now)
        self._finished(job)
        return True

    async def release(self, worker_id: str) -> int:
        """A runner stopping in order gives its running jobs back (they are queued again)."""
        self._workers.pop(worker_id, None)
        lost = self._lose_worker(worker_id, "The ingress replica running this request stopped")
        await self._commit()
        return lost

    async def stats(self) -> dict[str, Any]:
        """Counts for monitoring and tests."""
        states: dict[str, int] = {}
        for job in self._jobs.values():
            states[job.state.value] = states.get(job.state.value, 0) + 1
        return {"jobs": states, **self._queues.counts(), "workers": len(self._workers), "bytes": self._bytes}

    # ----------------------------------------------------------------- internals
    def _position(self, job: Job) -> int | None:
        return self._queues.position(job.service, job.request_id) if job.state == JobState.QUEUED else None

    def _take(self, worker_id: str) -> PollResult:
        result = PollResult(cancel=self._cancels.pop(worker_id, []))
        now = time.time()
        for service in self._queues.services():
            free = self.settings.max_running(service) - self._queues.running(service)
            if free <= 0:
                continue
            for request_id in self._queues.take(service, free):
                job = self._jobs[request_id]
                gateway = request_id if job.attempt == 0 else str(uuid.uuid4())
                job.start(worker_id, gateway, now)
                self._by_worker.setdefault(worker_id, set()).add(request_id)
                self._save(job)
                self._feed.changed(request_id)
                result.jobs.append(Claim(request_id, gateway, job.path, job.payload, job.base_url, job.attempt))
            self._feed.queue_moved(service)
        return result

    def _apply(self, job: Job, update: JobUpdate) -> None:
        if update.logs:
            job.add_logs(update.logs, self.settings.max_logs)
        if update.events:
            self._feed.add_events(job.request_id, update.events)

    def _release_slot(self, job: Job) -> None:
        self._queues.add_running(job.service, -1)
        if job.worker_id is not None:
            self._by_worker.get(job.worker_id, set()).discard(job.request_id)

    def _lose_worker(self, worker_id: str, reason: str) -> int:
        """Requeue (front, original order), cancel or fail the running jobs of a lost runner."""
        lost = [self._jobs[r] for r in self._by_worker.pop(worker_id, set()) if r in self._jobs]
        self._cancels.pop(worker_id, None)
        now = time.time()
        for job in sorted(lost, key=lambda j: j.created_at, reverse=True):
            if job.state != JobState.RUNNING:
                continue
            self._queues.add_running(job.service, -1)
            if job.cancel_requested:
                job.cancel(None, now)
            elif job.attempt >= self.settings.max_attempts:
                job.fail(503, "The ingress replica running this request was lost.", "runner_disconnected", None, now)
            else:
                job.requeue(reason, now)
                self._queues.push_front(job.service, job.request_id)
            if job.done:
                self._finished(job)
            else:
                self._save(job)
                self._feed.changed(job.request_id)
        if lost:
            logger.warning("queue store %s: runner %s lost; %d running jobs handled", self.name, worker_id, len(lost))
            self._notify_work()
        return len(lost)

    def _finished(self, job: Job) -> None:
        """Bookkeeping common to every terminal transition (the caller commits the journal)."""
        self._bytes -= job.payload_bytes  # the job dropped its input
        job.payload_bytes = 0
        job.result_bytes = _json_size(job.result)
        self._bytes += job.result_bytes
        self._feed.finished(job.request_id)
        self._save(job)
        self._feed.changed(job.request_id)
        self._notify_work()
        if job.webhook_url:
            self._spawn(self._deliver_webhook(job.request_id, 0.0))

    async def _commit(self) -> None:
        if self.journal is not None:
            await self.journal.commit()

    async def _deliver_webhook(self, request_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        job = self._jobs.get(request_id)
        if job is None or job.webhook_done:
            return
        try:
            ok = await self.sender.deliver(job)
        except WebhookRefused as exc:
            logger.warning("webhook for %s refused by the URL policy: %s", request_id, exc)
            job.webhook_done = True
            self._save(job)
            return
        job.webhook_attempts += 1
        if ok or job.webhook_attempts >= self.settings.webhook.max_attempts:
            job.webhook_done = True
            if not ok:
                logger.error("webhook for %s given up after %d attempts", request_id, job.webhook_attempts)
        else:
            self._spawn(self._deliver_webhook(request_id, self.sender.backoff(job.webhook_attempts)))
        self._save(job)

    def _save(self, job: Job) -> None:
        if self.journal is not None:
            self.journal.append(job.to_record())

    def _notify_work(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _maintenance_loop(self) -> None:
        """Reap runners whose lease expired, forget old finished jobs, compact the journal."""
        while True:
            await asyncio.sleep(min(self.settings.worker_lease_s / 3, 5.0))
            now = time.time()
            for worker_id, seen in list(self._workers.items()):
                if now - seen > self.settings.worker_lease_s:
                    del self._workers[worker_id]
                    self._lose_worker(worker_id, "The ingress replica running this request was lost")
            expired = [j for j in self._jobs.values() if j.done and (j.webhook_done or not j.webhook_url)
                       and now - (j.finished_at or now) > self.settings.result_ttl_s]
            for job in expired:
                self._forget(job.request_id)
            if self.journal is not None and self.journal.lines_written > max(1000, 4 * len(self._jobs)):
                self.journal.request_compaction(lambda: [j.to_record() for j in self._jobs.values()])

    def _forget(self, request_id: str) -> None:
        job = self._jobs.pop(request_id, None)
        if job is not None:
            self._bytes -= job.payload_bytes + job.result_bytes
        self._feed.forget(request_id)
        if self.journal is not None:
            self.journal.delete(request_id)
