"""Run a function on N local processes joined in one `torch.distributed` group, without Ray.

For benchmarks and GPU tests that time or check the bare library's own multi-process layout (one
process per GPU, NCCL, rendezvous on loopback) beside what the services run through
`DistributedRunner`. `run_ranks(target, world_size, *args)` spawns the processes, each calls
`target(rank, world_size, *args)` inside the group, and rank 0's return value comes back.
`target` must be importable by name (a module-level function): the processes are spawned.
"""

from __future__ import annotations

import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world_size: int, port: int, backend: str, target: Callable[..., Any],
               args: tuple[Any, ...], results: Any) -> None:
    import torch
    import torch.distributed as dist

    device = None
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            device_id=device)
    try:
        value = target(rank, world_size, *args)
        if rank == 0:
            results.put(("ok", value))
    except BaseException:
        results.put(("error", f"rank {rank}: {traceback.format_exc()}"))
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(target: Callable[..., Any], world_size: int, *args: Any, backend: str = "nccl",
              timeout_s: float = 1800.0) -> Any:
    """Rank 0's return value of `target(rank, world_size, *args)` run on `world_size` spawned processes
    (rank r on GPU r with NCCL; `backend="gloo"` for CPU). A rank's exception is raised here as a
    RuntimeError carrying its traceback."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world_size, port, backend, target, args, results))
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        status, value = results.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"no result from the ranks within {timeout_s:g} s") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    if status != "ok":
        raise RuntimeError(value)
    codes = [p.exitcode for p in procs]
    if any(codes):
        raise RuntimeError(f"rank exit codes {codes}")
    return value
