"""Parallel SDXL scaling: images per second with 1 and N ranks, measured side by side in one run.

Each rank runs the `full` SDXL preset (real architecture, random weights, bf16) at 1024², 20
steps with CFG, through DistributedRunner (one GPU per rank, NCCL gather to rank 0). Prints the
throughput per world size and the scaling efficiency ips(N) / (N * ips(1)).
Usage: python bench/parallel_sdxl_scaling.py [--world-sizes 1 2] [--runs 3] [--steps 20] [--size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


async def measure(world_size: int, args: argparse.Namespace) -> tuple[list[float], float]:
    from deployments.parallel_sdxl.worker import SDXLWorker
    from serve_app.distributed import DistributedRunner

    runner = DistributedRunner(SDXLWorker, world_size, use_gpu=True, num_cpus_per_rank=2)
    started = time.perf_counter()
    await runner.start(timeout=1200, model={"preset": args.preset}, preview_vae={"preset": args.preset},
                       dtype="bfloat16")
    load_s = time.perf_counter() - started
    payload = {"prompt": "an astronaut riding a horse on the moon", "negative_prompt": "blurry, low quality",
               "num_inference_steps": args.steps, "width": args.size, "height": args.size, "seed": 0}
    await runner.invoke(payload)  # warm-up
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        result = await runner.invoke(payload)
        times.append(time.perf_counter() - t)
    if result["image"].height < args.size:
        raise RuntimeError(f"unexpected grid size {result['image'].size}")
    await runner.stop()
    return times, load_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--preset", default="full")
    args = parser.parse_args()

    import ray
    import torch

    ray.init(address="local", num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    for ws in args.world_sizes:
        times, load_s = asyncio.run(measure(ws, args))
        med = statistics.median(times)
        rows.append((ws, med, ws / med, load_s))
    ray.shutdown()
    base = rows[0][2] / rows[0][0]
    print(f"\nParallel SDXL ({args.preset} preset, {args.size}², {args.steps} steps, CFG, bf16) on "
          f"{torch.cuda.get_device_name(0)}; median of {args.runs} requests after a warm-up")
    print(f"{'ranks':>5} {'s/request':>10} {'images/s':>9} {'efficiency':>11} {'load s':>7}")
    for ws, med, ips, load_s in rows:
        print(f"{ws:>5} {med:>10.3f} {ips:>9.3f} {ips / (ws * base):>11.3f} {load_s:>7.1f}")


if __name__ == "__main__":
    main()
