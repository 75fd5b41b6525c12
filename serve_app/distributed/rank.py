"""The Ray actor that hosts one rank: process-group set-up, calls, the stream buffer, cancellation.

It is a threaded actor, so `drain`, `cancel`, `abort` and `ping` answer while a long `call` runs.
Ray runs a threaded actor's calls on any of its threads; the worker's own code (`setup`, every
`call`, `regroup`, `teardown`) runs on one thread of its own instead, because torch keeps state per
thread: the current CUDA device, and the CUDA graph trees of `reduce-overhead` compilation (replayed
from another thread they fail an assertion in torch's thread-local lookup; seen on 2 x H200).

The process group's sockets listen on the rendezvous address only: loopback when every rank is on
one node (STRICT_PACK), else the node's cluster address, never all interfaces. Rank 0 binds the
store's socket itself and hands it to torch's TCPStore; gloo and NCCL are pinned to the interface of
that address (`GLOO_SOCKET_IFNAME` / `NCCL_SOCKET_IFNAME`, unless the operator set them).

After a failed or timed-out call the runner can re-form the group in place: `abort()` ends what is
pending in the process group (a rank stuck in a collective returns with an error), `regroup()`
joins a fresh group on a fresh rendezvous. The worker and its weights stay; a worker that made
subgroups of its own rebuilds them in its `regroup()` hook.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import os
import queue
import socket
import time
import traceback
from datetime import timedelta
from typing import Any

from serve_app.distributed.worker import DistributedWorker, to_text_event_json
from serve_app.errors import ServiceError

logger = logging.getLogger("ray.serve")


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


class _CallEnded:
    """Put in the stream when call `call_id` ends (returned or raised): a `drain` for that call
    returns at once instead of at its timeout (the runner's streaming loop would otherwise add up to
    its 0.25 s poll to every request). Drains for another call skip it."""

    def __init__(self, call_id: int | None) -> None:
        self.call_id = call_id


class RankActor:
    """Hosts `worker_cls(rank, world_size)`; CUDA is touched only in `setup`."""

    def __init__(self, worker_cls: type[DistributedWorker], rank: int, world_size: int) -> None:
        self.worker_cls = worker_cls
        self.rank = rank
        self.world_size = world_size
        self.worker: DistributedWorker | None = None
        self._listener: socket.socket | None = None
        self._store: Any = None
        self._device: Any = None
        self._groups_at_abort = 0  # process groups this process knew when `abort` dropped them all
        self._ended_call: int | None = None  # the id of the last call that ended (see `_CallEnded`)
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"rank{rank}-model")

    def _on_model_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the thread that runs all of the worker's code (see the module docstring)."""
        return self._model_thread.submit(fn, *args, **kwargs).result()

    def node_info(self) -> tuple[str, list[str]]:
        """This rank's node address and the GPU ids Ray assigned it."""
        import ray

        return ray.util.get_node_ip_address(), [str(g) for g in ray.get_gpu_ids()]

    def free_port(self) -> int:
        """A free TCP port on this node (kept for callers of the older API; `open_rendezvous` is
        what the runner uses)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def open_rendezvous(self, bind_addr: str) -> int:
        """Bind and listen on a free port of `bind_addr` for the group's store (rank 0); the socket
        is handed to torch at `setup` / `regroup`, so nothing else can take the port meanwhile."""
        self._close_listener()
        family = socket.AF_INET6 if ":" in bind_addr else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind_addr, 0))
        listener.listen(128)
        self._listener = listener
        return int(listener.getsockname()[1])

    def _close_listener(self) -> None:
        listener = self._listener
        if listener is not None:
            listener.close()
            self._listener = None

    def setup(self, master_addr: str, master_port: int, backend: str, timeout_s: float,
              visible_devices: list[str] | None, setup_kwargs: dict[str, Any]) -> int:
        """Join the process group, build the worker and run its `setup(**setup_kwargs)`."""
        return int(self._on_model_thread(self._setup, master_addr, master_port, backend, timeout_s,
                                         visible_devices, setup_kwargs))

    def _setup(self, master_addr: str, master_port: int, backend: str, timeout_s: float,
               visible_devices: list[str] | None, setup_kwargs: dict[str, Any]) -> int:
        import torch

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
        self._device = device
        self._join(master_addr, master_port, backend, timeout_s)
        worker = self.worker_cls(self.rank, self.world_size)
        worker.device = device
        self.worker = worker
        self._guard(worker.setup, **setup_kwargs)
        return self.rank

    def _join(self, master_addr: str, master_port: int, backend: str, timeout_s: float) -> None:
        """Join a process group whose store listens on `master_addr:master_port`."""
        import torch.distributed as dist

        pin_interfaces(master_addr)
        is_master = self.rank == 0
        listener = self._listener if is_master else None
        store = dist.TCPStore(master_addr, master_port, self.world_size, is_master,
                              timeout=timedelta(seconds=timeout_s),
                              master_listen_fd=listener.fileno() if listener is not None else None)
        if listener is not None:
            listener.detach()  # the store owns (and closes) the socket now
            self._listener = None
        init_kwargs: dict[str, Any] = {}
        if backend == "nccl" and getattr(self.worker_cls, "bind_device_at_init", True):
            init_kwargs["device_id"] = self._device
        dist.init_process_group(backend=backend, store=store, rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(seconds=timeout_s), **init_kwargs)
        self._store = store  # the store (and the socket it serves on) live as long as the group

    def abort(self) -> None:
        """End every pending collective of this rank's process group (they raise) and drop the group.
        Called from another actor thread while a call may be stuck in a collective."""
        import torch.distributed as dist

        if self.worker is not None:
            self.worker._cancel.set()
        self._groups_at_abort = _group_count()  # the abort forgets every group, subgroups included
        if dist.is_initialized():
            try:
                dist.distributed_c10d._abort_process_group()
            except Exception as e:  # already torn down by a peer's failure
                logger.warning("rank %d: aborting the process group: %r", self.rank, e)

    def regroup(self, master_addr: str, master_port: int, backend: str, timeout_s: float) -> int:
        """Join a fresh process group (after `abort`), keeping the worker and its models; then the
        worker's own `regroup()` rebuilds what it derived from the old group."""
        return int(self._on_model_thread(self._regroup, master_addr, master_port, backend, timeout_s))

    def _regroup(self, master_addr: str, master_port: int, backend: str, timeout_s: float) -> int:
        import torch.distributed as dist

        worker = self._worker()
        # Counted at the abort, not after setup: a worker may make subgroups in a call too (a
        # model-parallel library may make them per layout it loads).
        bound = bound_to_group(worker, max(self._groups_at_abort, _group_count()))
        if bound:
            raise RuntimeError(f"rank {self.rank}: the worker holds {bound} made from the old process group "
                               "and has no regroup() to rebuild it; the replica must be replaced")
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # half torn down: abort it
                dist.distributed_c10d._abort_process_group()
        self._join(master_addr, master_port, backend, timeout_s)
        worker._agreement = None
        worker._cancel.clear()
        self._guard(worker.regroup)
        return self.rank

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServiceError:
            raise  # already an HTTP-ready error (field errors, cancellation): keep its type
        except Exception as e:
            raise RankFailed(self.rank, f"{type(e).__name__}: {e}", traceback.format_exc()) from None

    def call(self, payload: dict[str, Any], streaming: bool, as_text_events: bool = False,
             call_id: int | None = None) -> Any:
        """Run one request on this rank. Rank 0's return value (text-encoded when asked) is the
        runner's result. `call_id` names the call for `drain`."""
        return self._on_model_thread(self._call, payload, streaming, as_text_events, call_id)

    def _call(self, payload: dict[str, Any], streaming: bool, as_text_events: bool, call_id: int | None) -> Any:
        worker = self._worker()
        worker._cancel.clear()
        worker._agreement = None
        while not worker._stream.empty():  # items a cancelled request left behind
            worker._stream.get_nowait()
        try:
            result = self._guard(worker, streaming=streaming, **payload)
        finally:
            worker._stream.put(_CallEnded(call_id))
        if as_text_events and self.rank == 0:
            return to_text_event_json(result)
        return result

    def drain(self, wait_s: float, call_id: int | None = None) -> list[Any]:
        """Intermediate results queued by rank 0's `add_streaming_result`: waits up to `wait_s` for
        the first one, and not at all once call `call_id` has ended."""
        worker = self._worker()
        items: list[Any] = []
        deadline = time.monotonic() + wait_s
        while True:
            if call_id is not None and self._ended_call == call_id:
                wait: float | None = None  # ended: take what is queued, wait for nothing
            else:
                wait = max(0.0, deadline - time.monotonic())
            try:
                item = worker._stream.get(timeout=wait) if wait and not items else worker._stream.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, _CallEnded):
                self._ended_call = item.call_id  # a stale mark (an older call) changes nothing for this one
            else:
                items.append(item)

    def cancel(self) -> None:
        """Ask the running call to stop (the worker checks `cancelled` between steps)."""
        if self.worker is not None:
            self.worker._cancel.set()

    def ping(self) -> int:
        return self.rank

    def teardown(self) -> None:
        self._on_model_thread(self._teardown)

    def _teardown(self) -> None:
        import torch.distributed as dist

        if self.worker is not None:
            self.worker.teardown()
        if dist.is_initialized():
            dist.destroy_process_group()
        self._close_listener()

    def _worker(self) -> DistributedWorker:
        if self.worker is None:
            raise RuntimeError(f"rank {self.rank} was not set up")
        return self.worker


def interface_of(address: str) -> str | None:
    """The name of this host's network interface that holds `address` (`lo` for loopback)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_loopback:
        return "lo"
    try:
        import psutil
    except ImportError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == str(ip) for a in addresses):
            return name
    return None


def pin_interfaces(address: str) -> None:
    """Make gloo and NCCL listen on the interface of `address` only (unless the operator chose)."""
    name = interface_of(address)
    if name is None:
        return
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        os.environ.setdefault(var, name)


def _group_count() -> int:
    """Process groups this process knows (the default one, plus subgroups from `new_group`)."""
    import torch.distributed as dist

    return len(dist.distributed_c10d._world.pg_map) if dist.is_initialized() else 0


def bound_to_group(worker: DistributedWorker, groups: int) -> str | None:
    """What in `worker` still refers to the old process group, when its class has no `regroup()` of
    its own to rebuild it: subgroups it made (`new_group`; `groups` counts the default one too), or
    a DistributedDataParallel wrapper."""
    if type(worker).regroup is not DistributedWorker.regroup:
        return None
    if groups > 1:
        return f"{groups - 1} subgroup(s)"
    from torch.nn.parallel import DistributedDataParallel

    if any(isinstance(value, DistributedDataParallel) for value in vars(worker).values()):
        return "a DistributedDataParallel wrapper"
    return None
