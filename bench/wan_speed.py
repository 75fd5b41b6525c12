"""Wan 2.1 T2V 1.3B speed on one GPU: seconds per video and peak memory, bare vs service method.

Builds the `full` preset (the published architecture with random weights; bf16, the VAE in float32)
and times, for the same request and seed:
  1. bare:    `WanPipeline(...)` to numpy frames, diffusers alone;
  2. method:  the service method in this process (prompt, scheduler, denoise, decode, MP4 encoding);
  3. encode:  the MP4 encoding of the bare frames alone (random weights give noise frames, the worst
              case for H.264; a real video encodes several times faster);
  4. decode:  the VAE decoding alone (float32), part of both rows above;
and, with `--compile`, the method again with the transformer blocks compiled (the service's warm-up
video compiles; `--fuse-qkv` adds a row with fused Q/K/V projections).
`--layouts u2 r2 c2` adds the service's engine on 2 spawned ranks, one GPU each (Ulysses-2, Ring-2,
`uNrM` for both; `c2`: CFG parallel, one guidance branch per rank), built from the service's own
config and timed on rank 0 (frames, no MP4), eager and with `--compile` compiled: the speed-up over
the bare one-GPU pipeline. Prints a table and the method/bare ratio; `--json PATH` writes the
numbers as each row finishes.

    python bench/wan_speed.py                     # GPU: 832x480, 81 frames, 30 steps, bf16
    python bench/wan_speed.py --compile --runs 2
    python bench/wan_speed.py --layouts 1 u2 r2 c2 --compile --runs 2   # 2 GPUs: every row in one run
    python bench/wan_speed.py --layouts u2 c2 --compile --compiled-only --runs 1   # short: compiled 2-GPU rows
    python bench/wan_speed.py --smoke             # CPU, tiny preset, 160x96, 17 frames, 2 steps
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import statistics
import time
from collections.abc import Callable
from typing import Any


def measure(fn: Callable[[], Any], runs: int, cuda: bool, warm_up: bool = True) -> tuple[list[float], float]:
    """Seconds of each of `runs` calls after one warm-up call, and the peak GPU memory (GiB) of a call."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if warm_up:
        fn()
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return times, peak


def config(args: argparse.Namespace, compile_: bool, ulysses: int = 1, ring: int = 1, cfg: int = 1,
           fuse_qkv: bool = False) -> Any:
    """The service's config for this run: the ranks of a layout get its `engine_spec()`, as the service's do."""
    from deployments.wan import WanConfig

    return WanConfig.model_validate({
        "model": {"preset": args.preset}, "device": args.device, "dtype": args.dtype,
        "landscape": [args.width, args.height], "portrait": [args.height, args.width], "num_frames": args.frames,
        "warmup_steps": 2, "torch_compile": compile_, "fuse_qkv": fuse_qkv, "attention_backend": args.attention,
        "world_size": cfg * ulysses * ring, "ulysses_degree": ulysses, "ring_degree": ring, "cfg_parallel": cfg > 1,
        "resources": {"use_gpu": args.device == "cuda"},
    })


def build(args: argparse.Namespace, compile_: bool, fuse_qkv: bool = False) -> Any:
    from deployments.wan import WanService

    async def no_llm(prompt: str, system_prompt: str, max_tokens: int) -> str:
        raise RuntimeError("the benchmark asks no LLM")

    return WanService(config(args, compile_, fuse_qkv=fuse_qkv), ask=no_llm)


def time_layout(rank: int, world_size: int, spec: dict[str, Any], request: dict[str, Any], runs: int,
                device: str) -> dict[str, Any]:
    """On each spawned rank: build the engine of `spec` (the service's own), warm up (compiles, when
    asked), then time `runs` videos; rank 0's figures come back."""
    from deployments.wan.engine import EngineSpec, WanEngine, WanJob

    rank_device = f"cuda:{rank}" if device == "cuda" else "cpu"
    start = time.perf_counter()
    engine = WanEngine(EngineSpec.model_validate(spec), rank_device)
    load_s = time.perf_counter() - start
    wan_job = WanJob.model_validate(request)
    start = time.perf_counter()
    engine.generate(wan_job)
    first_s = time.perf_counter() - start
    times, peak = measure(lambda: engine.generate(wan_job), runs, device == "cuda", warm_up=False)
    return {"load_s": load_s, "first_s": first_s, "times": times, "peak_gib": peak}


def parse_layout(text: str) -> tuple[int, int, int]:
    """`u2` -> Ulysses 2, `r2` -> Ring 2, `u2r2` -> both, `c2` -> CFG parallel (ulysses, ring, cfg)."""
    if text == "c2":
        return 1, 1, 2
    match = re.fullmatch(r"(?:u(\d+))?(?:r(\d+))?", text)
    if not match or not text:
        raise argparse.ArgumentTypeError(f"layout {text!r}: use 1, uN, rN, uNrM or c2")
    return int(match.group(1) or 1), int(match.group(2) or 1), 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny preset, small video: checks the script")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also time each layout with torch.compile")
    parser.add_argument("--compiled-only", action="store_true",
                        help="with --compile: skip the eager rows (bare, method, encode, decode, and the uN / rN "
                             "layouts' eager rows): a short device run, without the same-run bare baseline")
    parser.add_argument("--fuse-qkv", action="store_true",
                        help="with --compile: the 1-GPU compiled method again with fused Q/K/V projections")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--attention", default=None,
                        help="diffusers attention backend (e.g. _native_cudnn); bare and method share one "
                             "pipeline, so it applies to both: compare with a run without it")
    parser.add_argument("--layouts", nargs="+", default=["1"],
                        help="1: one GPU (bare, method, MP4 encoding); uN / rN / uNrM: the service's engine on "
                             "N x M spawned ranks, one GPU each (Ulysses / Ring), frames without the MP4")
    args = parser.parse_args()
    layouts = {name: (1, 1, 1) if name == "1" else parse_layout(name) for name in args.layouts}
    if args.smoke:
        args.preset, args.device, args.dtype = "tiny", "cpu", "float32"
        args.width, args.height, args.frames, args.steps, args.runs = 160, 96, 17, 2, 1
    else:
        args.preset, args.device, args.dtype, args.width, args.height, args.frames = \
            "full", "cuda", "bfloat16", 832, 480, 81

    import torch

    from deployments.wan import WanT2VInput
    from deployments.wan.video import encode_mp4
    from serve_app.distributed.spawn import run_ranks
    from serve_app.service import RunContext

    cuda = args.device == "cuda"
    request = WanT2VInput(prompt="a photo of a cat", inference_steps=args.steps, seed=0)
    rows: dict[str, dict[str, Any]] = {}
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    load_s = 0.0

    def save(name: str, row: dict[str, Any]) -> None:
        """Keep a row, print it, and rewrite the JSON: a run cut short still leaves what it measured."""
        rows[name] = row
        print(json.dumps({"case": name, **row}), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "device": device, "load_s": load_s, "rows": rows}, f, indent=1)

    def method(svc: Any) -> Callable[[], None]:
        return lambda: asyncio.run(svc.text_to_video(request, RunContext("bench")))

    if "1" in layouts and not (args.compile and args.compiled_only):
        from wan_bare import bare_video

        start = time.perf_counter()
        service = build(args, compile_=False)
        load_s = time.perf_counter() - start
        pipe = service.engine.pipe
        frames: list[Any] = []

        def bare() -> None:
            frames[:] = [bare_video(pipe, service.engine.base_scheduler, request.prompt, width=args.width,
                                    height=args.height, frames=args.frames, steps=args.steps, device=args.device)]

        times, peak = measure(bare, args.runs, cuda)
        save("bare", {"times": times, "peak_gib": peak})
        times, peak = measure(method(service), args.runs, cuda)
        save("method", {"times": times, "peak_gib": peak})
        times, _ = measure(lambda: encode_mp4(frames[0], 16, service.config.mp4), args.runs, False)
        save("encode", {"times": times, "peak_gib": 0.0})
        # the VAE alone (float32): its time does not depend on the latents' values
        latents = torch.randn(1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8,
                              device=args.device)
        times, _ = measure(lambda: service.engine.decode(latents), args.runs, cuda)
        save("decode", {"times": times, "peak_gib": 0.0})
        del service, pipe
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    if "1" in layouts and args.compile:
        for fuse_qkv in ([False, True] if args.fuse_qkv else [False]):
            start = time.perf_counter()
            compiled = build(args, compile_=True, fuse_qkv=fuse_qkv)  # its warm-up video compiles
            load_and_compile_s = time.perf_counter() - start
            # no warm-up call of our own: the service's warm-up video (2 steps, same sizes) ran every kernel
            times, peak = measure(method(compiled), args.runs, cuda, warm_up=False)
            save("method_compiled" + ("+qkv" if fuse_qkv else ""),
                 {"load_and_compile_s": load_and_compile_s, "times": times, "peak_gib": peak})
            del compiled
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()

    for name, (ulysses, ring, cfg) in layouts.items():
        if name == "1":
            continue
        for compile_ in ([True] if args.compiled_only else [False, True]) if args.compile else [False]:
            layout_config = config(args, compile_, ulysses, ring, cfg)
            job = layout_config.job(request, request.prompt, 0).model_dump()  # the same request as the bare row
            row = run_ranks(time_layout, cfg * ulysses * ring, layout_config.engine_spec().model_dump(), job, args.runs,
                            args.device, backend="nccl" if cuda else "gloo")
            save(f"{name}" + (" compiled" if compile_ else ""), row)

    print(f"Wan 2.1 T2V 1.3B, {args.preset} preset, {args.width}x{args.height}, {args.frames} frames, "
          f"{args.steps} steps, {args.dtype}, attention {args.attention or 'default'}, {device}; "
          f"median of {args.runs}")
    bare_s = statistics.median(rows["bare"]["times"]) if "bare" in rows else None
    print(f"{'case':<20} {'s / video':>10} {'min':>8} {'peak GiB':>9} {'x bare':>7}")
    for name, row in rows.items():
        median = statistics.median(row["times"])
        speedup = f"{bare_s / median:>7.2f}" if bare_s and name not in ("encode", "decode") else f"{'-':>7}"
        print(f"{name:<20} {median:>10.2f} {min(row['times']):>8.2f} {row['peak_gib']:>9.1f} {speedup}")
    if "method" in rows and bare_s:
        print(f"method / bare: {statistics.median(rows['method']['times']) / bare_s:.3f}")


if __name__ == "__main__":
    main()
