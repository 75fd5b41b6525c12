"""Flux LoRA DDP scaling: seconds per training step with 1 and N ranks, measured side by side in one run.

Each rank trains the `full` preset (FLUX.1-dev's 12B transformer, random weights, bf16 base, a
float32 rank-16 LoRA on its 418 modules) at 512², batch 4 per GPU, through DistributedRunner and
the service's own `FluxLoRATrainWorker` (DDP over NCCL), on a synthetic preprocessed dataset of the
right shapes (no preprocessor). Prints seconds per step (median after the warm-up steps), samples
per second, the scaling efficiency samples/s(N) / (N * samples/s(1)) and each rank's peak GPU memory.

Usage (2 GPUs): python bench/flux_lora_scaling.py [--world-sizes 1 2] [--steps 20] [--warmup-steps 5]
    [--resolution 512] [--batch-size 4] [--gradient-checkpointing]
CPU smoke run (gloo): python bench/flux_lora_scaling.py --preset tiny --device cpu --resolution 256 --steps 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass(frozen=True)
class Row:
    """One world size's measurements."""

    world_size: int
    step_s: float  # median seconds per optimizer step
    samples_per_s: float
    peak_gib: list[float]  # per rank; empty on CPU
    load_s: float
    final_loss: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2], help="Ranks per run, in order.")
    parser.add_argument("--steps", type=int, default=20, help="Measured steps (after the warm-up steps).")
    parser.add_argument("--warmup-steps", type=int, default=5, help="Steps run first and not measured.")
    parser.add_argument("--resolution", type=int, default=512, help="Training resolution (multiple of 16).")
    parser.add_argument("--batch-size", type=int, default=4, help="Images per rank per step.")
    parser.add_argument("--preset", choices=["full", "tiny"], default="full", help="Transformer preset.")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (NCCL) or cpu (gloo).")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Recompute activations in backward.")
    parser.add_argument("--num-cpus-per-rank", type=float, default=None, help="CPUs per rank (2 on cuda, 0.5 on cpu).")
    return parser.parse_args(argv)


def dataset(args: argparse.Namespace) -> bytes:
    """A synthetic preprocessed file with enough images for disjoint batches on the largest run."""
    import torch

    from components import flux as presets
    from deployments.flux_lora.synthetic import synthetic_preprocessed

    cfg = (presets.FULL if args.preset == "full" else presets.TINY)["transformer"]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    return synthetic_preprocessed(cfg, 2 * args.batch_size * max(args.world_sizes), args.resolution, dtype=dtype)


async def measure(world_size: int, args: argparse.Namespace, data: bytes) -> Row:
    """Start a runner of `world_size` ranks, train `warmup_steps + steps` steps, stop it."""
    from deployments.flux_lora.train_worker import FluxLoRATrainWorker
    from serve_app.distributed import DistributedRunner

    gpu = args.device == "cuda"
    cpus = args.num_cpus_per_rank or (2.0 if gpu else 0.5)
    runner = DistributedRunner(FluxLoRATrainWorker, world_size, use_gpu=gpu, num_cpus_per_rank=cpus)
    started = time.perf_counter()
    await runner.start(timeout=1800, model={"preset": args.preset}, dtype="bfloat16" if gpu else "float32",
                       gradient_checkpointing=args.gradient_checkpointing)
    load_s = time.perf_counter() - started
    try:
        result = await runner.invoke({"training_data": data, "steps": args.warmup_steps + args.steps,
                                      "batch_size": args.batch_size, "debug": True}, timeout=3600)
    finally:
        await runner.stop()
    ranks = result["debug"]
    if len({r["digest"] for r in ranks}) != 1:
        raise RuntimeError("the ranks' adapters differ after training: DDP is not synchronising")
    step_s = statistics.median(ranks[0]["step_seconds"][args.warmup_steps:])
    peak = [r["peak_memory_bytes"] / 2**30 for r in ranks if r["peak_memory_bytes"] is not None]
    return Row(world_size, step_s, world_size * args.batch_size / step_s, peak, load_s, result["final_loss"])


def report(rows: list[Row], args: argparse.Namespace, device_name: str) -> str:
    """The results table; efficiency is relative to the first row's per-rank throughput."""
    base = rows[0].samples_per_s / rows[0].world_size
    lines = [f"Flux LoRA DDP ({args.preset} preset, {args.resolution}², batch {args.batch_size} per rank, rank-16 "
             f"LoRA) on {device_name}; median of {args.steps} steps after {args.warmup_steps} warm-up steps",
             f"{'ranks':>5} {'s/step':>8} {'samples/s':>10} {'efficiency':>11} {'peak GiB/rank':>14} {'load s':>7}"]
    for r in rows:
        peak = "/".join(f"{g:.1f}" for g in r.peak_gib) or "-"
        lines.append(f"{r.world_size:>5} {r.step_s:>8.3f} {r.samples_per_s:>10.2f} "
                     f"{r.samples_per_s / (r.world_size * base):>11.3f} {peak:>14} {r.load_s:>7.1f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import ray
    import torch

    gpu = args.device == "cuda"
    ray.init(address="local", num_gpus=torch.cuda.device_count() if gpu else 0, include_dashboard=False,
             log_to_driver=False, **({} if gpu else {"num_cpus": 4, "object_store_memory": 300 * 1024**2}))
    data = dataset(args)
    rows = [asyncio.run(measure(ws, args, data)) for ws in args.world_sizes]
    ray.shutdown()
    print("\n" + report(rows, args, torch.cuda.get_device_name(0) if gpu else "CPU (gloo)"))


if __name__ == "__main__":
    main()
