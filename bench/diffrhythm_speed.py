"""DiffRhythm seconds per song and peak GPU memory: the bare model calls vs the service method, in one run.

Builds the service with the `full` presets (the published DiT, VAE and MuQ-MuLan architectures,
random weights) and times, for 95 s and 285 s songs at 32 euler steps, per DiT dtype:
  1. bare:   `cfm.sample` (the DiT under the ODE solver, both CFG branches) + the windowed VAE decode,
             from a precomputed style and token layout, split into its two parts;
  2. method: `DiffRhythmService.generate` (G2P and layout, MuQ-MuLan text style, the same sampling
             and decode, WAV encoding).
Peak memory is `torch.cuda.max_memory_allocated` over each case (weights included).

Usage: python bench/diffrhythm_speed.py [--dtypes bfloat16,float16] [--runs 3] [--compile]
       python bench/diffrhythm_speed.py --smoke     # CPU, tiny presets, short songs: checks the script
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

LYRICS = "\n".join(f"[{s // 60:02d}:{s % 60:02d}.00]{line}" for s, line in zip(
    range(10, 280, 6), ["Moonlight spills through broken blinds", "Your shadow dances on the dashboard shrine",
                        "Neon ghosts in gasoline rain", "让我掉下眼泪的 不止昨夜的酒"] * 12, strict=False))


def timed(fn: Callable[[], Any], runs: int, cuda: bool) -> list[float]:
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()  # warm-up (and compilation, with --compile)
    out = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


def measure(service: Any, request: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Bare (sample, decode) and method timings and peaks for one request."""
    import torch

    from deployments.diffrhythm import cfm, vae
    from serve_app.service import RunContext

    cuda = args.device == "cuda"
    frames = service.frames(request.music_duration)
    tokens = service.lyric_tokens(request, frames)
    song = cfm.SongConditions(tokens=torch.tensor([tokens]), style=service.style(request),
                              negative_style=service.negative_style, duration=frames / service.dit.config.max_frames)
    latents: list[Any] = []

    def sample() -> None:
        latents[:] = [cfm.sample(service.dit, song, steps=args.steps, cfg_strength=4.0, method="euler", seed=0)]

    def decode() -> None:
        vae.decode(service.vae, latents[0].transpose(1, 2), service.config.decode_chunk, service.config.decode_overlap)

    def method() -> None:
        service.generate(request, RunContext())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_sample, t_decode = timed(sample, args.runs, cuda), timed(decode, args.runs, cuda)
    bare_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_method = timed(method, args.runs, cuda)
    method_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return {"duration": request.music_duration, "frames": frames, "seconds": frames * 2048 / 44_100,
            "sample": statistics.median(t_sample), "decode": statistics.median(t_decode),
            "method": statistics.median(t_method), "bare_peak": bare_peak, "method_peak": method_peak}


def run_dtype(dtype: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from deployments.diffrhythm import DiffRhythmConfig, DiffRhythmInput, DiffRhythmService

    cuda = args.device == "cuda"
    config: dict[str, Any] = {"model": {"preset": args.preset}, "vae": {"preset": args.preset},
                              "mulan": {"preset": args.preset}, "device": args.device, "dtype": dtype,
                              "warmup": False, "compile": args.compile}
    if args.smoke:
        config |= {"frames_95s": 24, "frames_285s": 48, "decode_chunk": 16, "decode_overlap": 4}
    service = DiffRhythmService(DiffRhythmConfig.model_validate(config))
    rows = []
    for duration in ("95s", "285s"):
        request = DiffRhythmInput(lyrics=LYRICS, style_prompt="pop, upbeat, female vocal", music_duration=duration,
                                  num_inference_steps=args.steps, scheduler="euler", seed=0)
        rows.append({"dtype": dtype, **measure(service, request, args)})
    del service
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", default="bfloat16,float16", help="DiT dtypes, comma-separated")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny presets, short songs, one run")
    args = parser.parse_args()
    args.preset, args.device = ("tiny", "cpu") if args.smoke else ("full", "cuda")
    if args.smoke:
        args.dtypes, args.runs, args.steps = "float32", 1, 10

    import torch

    rows = [row for dtype in args.dtypes.split(",") for row in run_dtype(dtype, args)]
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"\nDiffRhythm {args.preset} presets, {args.steps} euler steps, CFG 4, {device}, "
          f"compile={args.compile}; median of {args.runs} after one warm-up")
    print(f"{'dtype':9} {'song':>5} {'frames':>6} {'audio s':>8} {'DiT s':>7} {'VAE s':>7} {'bare s':>7} "
          f"{'method s':>9} {'method/bare':>12} {'peak bare GiB':>14} {'peak method GiB':>16}")
    for r in rows:
        bare = r["sample"] + r["decode"]
        print(f"{r['dtype']:9} {r['duration']:>5} {r['frames']:>6} {r['seconds']:>8.1f} {r['sample']:>7.3f} "
              f"{r['decode']:>7.3f} {bare:>7.3f} {r['method']:>9.3f} {r['method'] / bare:>12.3f} "
              f"{r['bare_peak']:>14.2f} {r['method_peak']:>16.2f}")


if __name__ == "__main__":
    main()
