"""The Ray actor that hosts one rank: process-group set-up, calls, the stream buffer, cancellation.

It is a threaded actor, so `drain`, `cancel` and `ping` answer while a long `call` runs.
"""

from __future__ import annotations

import os
import queue
import socket
import traceback
from datetime import timedelta
from typing import Any

from serve_app.distributed.worker import DistributedWorker, to_text_event_json
from serve_app.errors import ServiceError


class RankFailed(RuntimeError):
    """A rank raised: the message names the rank, `remote_traceback` holds its traceback."""

    def __init__(self, rank: int, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_rank_failed, (self.rank, str(self), self.remote_traceback))


def _rebuild_rank_failed(rank: int, text: str, tb: str) -> RankFailed:
    err = RankFailed.__new__(RankFailed)
    RuntimeError.__init__(err, text)
    err.rank, err.remote_traceback = rank, tb
    return err


class RankActor:
    """Hosts `worker_cls(rank, world_size)`; CUDA is touched only in `setup`."""

    def __init__(self, worker_cls: type[DistributedWorker], rank: int, world_size: int) -> None:
        self.worker_cls = worker_cls
        self.rank = rank
        self.world_size = world_size
        self.worker: DistributedWorker | None = None

    def node_info(self) -> tuple[str, list[str]]:
        """This rank's node address and the GPU ids Ray assigned it."""
        import ray

        return ray.util.get_node_ip_address(), [str(g) for g in ray.get_gpu_ids()]

    def free_port(self) -> int:
        """A free TCP port on this node for the rendezvous (one per runner: no fixed 29500)."""
        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def setup(self, master_addr: str, master_port: int, backend: str, timeout_s: float,
              visible_devices: list[str] | None, setup_kwargs: dict[str, Any]) -> int:
        """Join the process group, build the worker and run its `setup(**setup_kwargs)`."""
        import torch
        import torch.distributed as dist

        device: Any = torch.device("cpu")
        if backend == "nccl":
            import ray

            own = str(ray.get_gpu_ids()[0])
            if visible_devices:
                # Like Ray Train: every rank sees every rank's GPU, so NCCL can use P2P/NVLink.
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible_devices)
                index = visible_devices.index(own)
            else:
                index = 0
            device = torch.device("cuda", index)
            torch.cuda.set_device(device)
        init_kwargs: dict[str, Any] = {}
        if backend == "nccl" and getattr(self.worker_cls, "bind_device_at_init", True):
            init_kwargs["device_id"] = device
        dist.init_process_group(
            backend=backend, init_method=f"tcp://{master_addr}:{master_port}", rank=self.rank,
            world_size=self.world_size, timeout=timedelta(seconds=timeout_s), **init_kwargs,
        )
        worker = self.worker_cls(self.rank, self.world_size)
        worker.device = device
        self.worker = worker
        self._guard(worker.setup, **setup_kwargs)
        return self.rank

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServiceError:
            raise  # already an HTTP-ready error (field errors, cancellation): keep its type
        except Exception as e:
            raise RankFailed(self.rank, f"{type(e).__name__}: {e}", traceback.format_exc()) from None

    def call(self, payload: dict[str, Any], streaming: bool, as_text_events: bool = False) -> Any:
        """Run one request on this rank. Rank 0's return value (text-encoded when asked) is the
        runner's result."""
        worker = self._worker()
        if worker.device is not None and getattr(worker.device, "type", "") == "cuda":
            import torch

            # Calls run on the actor's threads, which don't inherit the device set in setup().
            torch.cuda.set_device(worker.device)
        worker._cancel.clear()
        while not worker._stream.empty():  # items a cancelled request left behind
            worker._stream.get_nowait()
        result = self._guard(worker, streaming=streaming, **payload)
        if as_text_events and self.rank == 0:
            return to_text_event_json(result)
        return result

    def drain(self, wait_s: float) -> list[Any]:
        """Intermediate results queued by rank 0's `add_streaming_result` (waits up to `wait_s`
        for the first one)."""
        worker = self._worker()
        items = []
        try:
            items.append(worker._stream.get(timeout=wait_s))
            while True:
                items.append(worker._stream.get_nowait())
        except queue.Empty:
            pass
        return items

    def cancel(self) -> None:
        """Ask the running call to stop (the worker checks `cancelled` between steps)."""
        if self.worker is not None:
            self.worker._cancel.set()

    def ping(self) -> int:
        return self.rank

    def teardown(self) -> None:
        import torch.distributed as dist

        if self.worker is not None:
            self.worker.teardown()
        if dist.is_initialized():
            dist.destroy_process_group()

    def _worker(self) -> DistributedWorker:
        if self.worker is None:
            raise RuntimeError(f"rank {self.rank} was not set up")
        return self.worker
