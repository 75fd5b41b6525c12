"""The xFuser service's `native` backend on CPU: two `XFuserWorker` ranks running diffusers' context
parallelism (Ulysses-2 over gloo, tiny Flux) make the image one process makes. No Ray: the ranks
are two spawned processes that join a gloo group, as the DistributedRunner's rank actors do. The
same ranks also load the plain pipeline (the 1-process result) and a regional compile of it, and
re-form their process group as the runner does after a failed call (abort, a fresh group, the
worker's `regroup()`): the mesh made from the old group is rebuilt and the image is the same."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest

BASE = {"family": "flux", "model": {"preset": "tiny", "seed": 3}, "dtype": "float32"}
REQUEST = {"prompt": "a photo of a cat", "height": 256, "width": 256, "num_inference_steps": 2, "seed": 7}


def rank_main(rank: int, world_size: int, ports: tuple[int, int], results: Any) -> None:
    import torch
    import torch.distributed as dist

    from deployments.xfuser.worker import XFuserWorker

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", rank=rank, world_size=world_size)
    try:
        worker = XFuserWorker(rank, world_size)
        worker.device = torch.device("cpu")
        worker.setup(backend="diffusers", **BASE)
        single = worker(**REQUEST)
        other = worker(**{**REQUEST, "seed": 8})
        loaded = worker(op="load", backend="native", layout={"ulysses_degree": world_size}, **BASE)
        native = worker(**REQUEST)
        dist.distributed_c10d._abort_process_group()  # as RankActor.abort / regroup do
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=world_size)
        worker.regroup()
        regrouped = worker(**REQUEST)
        results.put((rank, {"single": single, "other": other, "native": native, "loaded": loaded,
                            "regrouped": regrouped}))
    except BaseException as e:
        results.put((rank, repr(e)))
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int) -> dict[int, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s, socket.socket() as t:
        s.bind(("127.0.0.1", 0))
        t.bind(("127.0.0.1", 0))
        ports = (int(s.getsockname()[1]), int(t.getsockname()[1]))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world_size, ports, results)) for r in range(world_size)]
    for p in procs:
        p.start()
    out = dict(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return out


def pixels(result: dict[str, Any]) -> np.ndarray:
    return np.asarray(result["image"], dtype=np.float32)


def test_native_ulysses_2_over_gloo_matches_one_process() -> None:
    out = run_ranks(2)
    assert isinstance(out[0], dict), out[0]
    first = out[0]
    assert out[1]["native"] is None  # rank 0 answers for the group
    assert first["loaded"] == {"layout": "pipefusion=1 ulysses=2 ring=1 cfg=off", "output_rank": 0,
                               "backend": "native"}
    assert first["native"]["layout"] == "pipefusion=1 ulysses=2 ring=1 cfg=off"
    error = np.abs(pixels(first["native"]) - pixels(first["single"])).mean() / 255
    unrelated = np.abs(pixels(first["other"]) - pixels(first["single"])).mean() / 255
    assert unrelated > 0.05  # the comparison can tell images apart
    assert error < 0.002, (error, unrelated)  # float32: the same sums in another order
    assert first["regrouped"]["layout"] == first["native"]["layout"]
    assert np.array_equal(pixels(first["regrouped"]), pixels(first["native"]))  # same weights, same group sums


def test_regional_compile_and_fused_qkv_keep_the_image() -> None:
    import torch

    from deployments.xfuser.worker import XFuserWorker

    torch.set_num_threads(2)
    worker = XFuserWorker(0, 1)
    worker.device = torch.device("cpu")
    worker.setup(backend="diffusers", **BASE)
    plain = pixels(worker(**REQUEST))
    pytest.importorskip("torch._inductor")
    worker(op="load", backend="diffusers", fuse_qkv=True, use_torch_compile=True,
           compile={"regional": True, "mode": "default"}, **BASE)
    transformer = worker.pipe.transformer
    assert transformer.transformer_blocks[0].attn.fused_projections  # one Q/K/V GEMM
    compiled = [b for b in transformer.transformer_blocks if getattr(b, "_compiled_call_impl", None) is not None]
    assert len(compiled) == len(transformer.transformer_blocks)  # every repeated block compiled on its own
    fast = pixels(worker(**REQUEST))
    assert np.abs(fast - plain).mean() / 255 < 0.002
