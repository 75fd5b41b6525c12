"""Two `WanWorker` ranks on CPU (gloo, tiny preset) make the same video as one process: with context
parallelism (Ulysses-2; compiled too) and with CFG parallelism (one guidance branch per rank). No
Ray: the ranks are two spawned processes that join a gloo group, as the DistributedRunner's rank
actors do. Ring needs a GPU (tests/gpu)."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest
import torch

from deployments.wan.engine import EngineSpec, WanEngine, WanJob
from deployments.wan.video import Mp4Options, encode_mp4
from serve_app.models.source import ModelSource

JOB = WanJob(prompt="a photo of a cat", negative_prompt="blurry, low quality", width=64, height=32, num_frames=9,
             num_inference_steps=3, guidance_scale=5.0, shift=5.0, sampler="unipc", seed=11)
MP4 = Mp4Options(crf=0, preset="ultrafast")


def rank_main(rank: int, world_size: int, port: int, results: Any, layout: dict[str, Any]) -> None:
    import torch.distributed as dist

    from deployments.wan.worker import WanWorker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        worker = WanWorker(rank, world_size)
        worker.device = torch.device("cpu")
        spec = EngineSpec(model=ModelSource(preset="tiny"), compile_backend="eager", **layout)
        worker.setup(spec=spec.model_dump(), fps=16, mp4=MP4.model_dump())
        result = worker(streaming=True, job=JOB.model_dump())
        events = []  # the typed Progress events rank 0 queued for the runner
        while not worker._stream.empty():
            event = worker._stream.get_nowait()
            events.append({"step": event.step, "total": event.total})
        cfg_calls = worker.engine.cfg.calls if worker.engine.cfg is not None else None
        results.put((rank, result, [*events, {"cfg_calls": cfg_calls}]))
    except BaseException as e:
        results.put((rank, repr(e), []))
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, layout: dict[str, Any]) -> dict[int, tuple[Any, list[Any]]]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world_size, port, results, layout)) for r in range(world_size)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        rank, result, events = results.get(timeout=600)
        out[rank] = (result, events)
    for p in procs:
        p.join(timeout=60)
    return out


LAYOUTS = {"ulysses-2": {"ulysses_degree": 2},
           "ulysses-2 compiled": {"ulysses_degree": 2, "torch_compile": True},
           "cfg-parallel": {"cfg_parallel": True}}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_ranks_over_gloo_equal_one_process(layout: str) -> None:
    """Compiled: the repeated blocks traced by dynamo in one graph each (its `eager` backend: the same
    arithmetic), with diffusers' parallel hooks around Wan's first block. CFG parallel: each rank
    computes one branch of guidance, one forward per step instead of two."""
    single = WanEngine(EngineSpec(model=ModelSource(preset="tiny")), "cpu")
    frames = single.generate(JOB)
    assert frames is not None
    ranks = run_ranks(2, LAYOUTS[layout])
    (video, events), (other, other_events) = ranks[0], ranks[1]
    cfg_calls = events.pop()["cfg_calls"]
    if layout == "cfg-parallel":
        assert cfg_calls == other_events[-1]["cfg_calls"] == JOB.num_inference_steps
    assert isinstance(video, dict), video
    assert other is None  # only rank 0 decodes and encodes
    assert (video["width"], video["height"], video["num_frames"]) == (64, 32, 9)
    assert [(e["step"], e["total"]) for e in events] == [(1, 3), (2, 3), (3, 3)]
    # Same frames in, same encoder settings: byte-identical MP4 (the split attention is exact on CPU).
    assert video["video"] == encode_mp4(frames, 16, MP4)
    other_seed = single.generate(JOB.model_copy(update={"seed": 12}))
    assert not np.array_equal(frames, other_seed)  # the comparison can tell videos apart
