"""Matrix-Game 2.0 generation speed on one GPU: sustained frames per second and first-block latency.

Builds the `full` preset (the published architecture with random weights, bf16), compiles it
(torch.compile of every DiT block and of the VAE decoder; shapes settle after the first blocks) and
measures, in one run:
  1. bare:     the model loop alone, the baseline: per block 3 distilled DiT steps + the clean context
               pass + the streaming VAE decode, with the condition latents and actions made once;
  2. session:  `WorldSession.next_block()` back to back (action windows, condition latents from the seed
               image, noise, uint8 frames copied to the host);
  3. producer: `BlockProducer` rendering ahead into its 24-frame queue, a consumer taking frames as fast
               as they come (what the WebRTC track reads).
Each runs for --seconds (20 by default). First-block latency: `start()` (CLIP features, caches) plus the
first `next_block()` (9 frames) on warm models, what a client waits for after connecting. Prints a
table with the ratios to the bare loop; the published figure is 25 fps on one H100.

    python bench/matrix_game_fps.py                       # GPU, full preset, compiled
    python bench/matrix_game_fps.py --no-compile          # eager
    python bench/matrix_game_fps.py --smoke               # CPU, tiny preset, a few blocks
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(models: Any, mode: str, seconds: float, max_blocks: int, warmup: int = 3) -> dict[str, float]:
    """The model loop with prepared inputs: frames/s overall, and the DiT and VAE shares (timed apart).

    The first `warmup` blocks are not timed.
    """
    import torch

    from deployments.matrix_game.dit import ActionInputs
    from deployments.matrix_game.sampler import FewStepSampler
    from deployments.matrix_game.vae import StreamingDecoder

    dit, device, dtype = models.dits[mode], models.device, models.dtype
    spec, (h, w) = models.specs[mode], models.geometry.latent_hw
    a = dit.cfg.action
    tokens = (h // 2) * (w // 2)
    sampler = FewStepSampler(spec.sampler)
    frames, dit_s, vae_s, blocks = 0, 0.0, 0.0, 0
    # Everything under inference mode, as in the session: compiled graphs guard on it.
    with torch.inference_mode():
        clip = torch.randn(1, 257 if models.geometry.height > 100 else 5, dit.cfg.image_dim, device=device,
                           dtype=dtype)
        stream = dit.new_stream(clip, tokens)
        decoder = StreamingDecoder(models.vae)
        cond = torch.randn(1, 20, 3, h, w, device=device, dtype=dtype)
        keyboard = torch.zeros(1, 3, a.window_frames, a.keyboard_dim_in, device=device, dtype=dtype)
        mouse = torch.zeros(1, 3, a.window_frames, 2, device=device, dtype=dtype) if a.enable_mouse else None
        actions = ActionInputs(keyboard, mouse)
        steps = [torch.tensor([t], device=device) for t in sampler.timesteps]
        zero = torch.tensor([sampler.context_timestep], device=device)

        def block() -> tuple[int, float, float]:
            t_block = time.perf_counter()
            stream.begin_block()
            x = torch.randn(1, 16, 3, h, w, device=device, dtype=dtype)
            x0 = x
            for i, t in enumerate(steps):
                x0 = sampler.to_x0(x, dit.forward_block(x, cond, t, actions, stream), sampler.timesteps[i])
                if i + 1 < len(steps):
                    x = sampler.renoise(x0, torch.randn_like(x0), sampler.timesteps[i + 1])
            dit.forward_block(x0, cond, zero, actions, stream)
            _sync(device)
            t_vae = time.perf_counter()
            n = decoder.decode(x0).shape[2]
            _sync(device)
            return n, t_vae - t_block, time.perf_counter() - t_vae

        for _ in range(warmup):  # the first blocks of a stream fill the window (other shapes): not timed
            block()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds and blocks < max_blocks:
            n, d, v = block()
            frames, dit_s, vae_s, blocks = frames + n, dit_s + d, vae_s + v, blocks + 1
    elapsed = time.perf_counter() - t0
    return {"fps": frames / elapsed, "blocks": blocks, "frames": frames, "seconds": elapsed,
            "dit_ms": 1000 * dit_s / blocks, "vae_ms": 1000 * vae_s / blocks}


def session_loop(models: Any, mode: Any, seconds: float, image: Any) -> dict[str, float]:
    from deployments.matrix_game.session import WorldSession

    session = WorldSession(models, max_latent_frames=1020)
    t0 = time.perf_counter()
    session.start(image, mode, seed=0)
    first = session.next_block()
    first_block_s = time.perf_counter() - t0
    frames, blocks, moves = first.shape[0], 1, ["w u", "w l", "a u", "q i", "d j", "s k"]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.set_action(moves[blocks % len(moves)])
        frames += session.next_block().shape[0]
        blocks += 1
    elapsed = time.perf_counter() - t0
    return {"fps": (frames - first.shape[0]) / elapsed, "blocks": blocks, "frames": frames, "seconds": elapsed,
            "first_block_s": first_block_s}


def producer_loop(models: Any, mode: Any, seconds: float, image: Any) -> dict[str, float]:
    from deployments.matrix_game.producer import BlockProducer
    from deployments.matrix_game.session import WorldSession

    session = WorldSession(models, max_latent_frames=1020)
    t0 = time.perf_counter()
    session.start(image, mode, seed=1)
    producer = BlockProducer(session, max_frames=24)
    producer.start()
    frames = 0
    first_frame_s = None
    while time.perf_counter() - t0 < seconds:
        frame = producer.get_frame(timeout=1.0)
        if frame is not None:
            frames += 1
            first_frame_s = first_frame_s or time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    producer.stop()
    return {"fps": frames / elapsed, "blocks": producer.blocks, "frames": frames, "seconds": elapsed,
            "first_frame_s": first_frame_s or float("nan")}


def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    print(f"  {label}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny preset, a few blocks")
    parser.add_argument("--mode", default="universal", choices=["universal", "gta_drive", "templerun"])
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each sustained measurement")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: inductor's default)")
    parser.add_argument("--eager-seconds", type=float, default=4.0, help="eager bare loop before compiling (0: skip)")
    parser.add_argument("--warmup-blocks", type=int, default=4)
    args = parser.parse_args()

    import numpy as np
    import torch

    from deployments.matrix_game.models import build_world_models
    from deployments.matrix_game.session import WorldSession

    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    seconds = 2.0 if smoke else args.seconds
    if smoke:
        torch.set_num_threads(1)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0) if not smoke else 'cpu'}", flush=True)
    models = timed("build", lambda: build_world_models("tiny" if smoke else "full", [args.mode], device, dtype))
    image = (np.random.default_rng(0).random((480, 854, 3)) * 255).astype(np.uint8)
    results: dict[str, dict[str, float]] = {}
    if args.eager_seconds > 0 and not args.no_compile and not smoke:
        results["bare (eager)"] = timed("bare eager", lambda: bare_loop(models, args.mode, args.eager_seconds, 1000))
    if not args.no_compile and not smoke:
        models.compile(args.compile_mode)

    def warm() -> None:
        warm_session = WorldSession(models)
        warm_session.start(image, args.mode, seed=0)
        for _ in range(args.warmup_blocks):
            warm_session.next_block()

    timed("warm-up" + (" (compiles)" if models.compiled else ""), warm)
    label = "compiled" if models.compiled else "eager"
    results[f"bare ({label})"] = timed("bare", lambda: bare_loop(models, args.mode, seconds, 1000))
    results["session"] = timed("session", lambda: session_loop(models, args.mode, seconds, image))
    results["producer"] = timed("producer", lambda: producer_loop(models, args.mode, seconds, image))

    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    g = models.geometry
    print(f"\nMatrix-Game 2.0 {'tiny' if smoke else 'full'} preset, mode {args.mode}, {g.height}x{g.width}, "
          f"{str(dtype).replace('torch.', '')}, {label}; {seconds:.0f} s per row; peak GPU memory {peak:.1f} GiB")
    base = results[f"bare ({label})"]["fps"]
    print(f"{'loop':16} {'fps':>7} {'x bare':>7} {'blocks':>7} {'frames':>7}  notes")
    for name, r in results.items():
        notes = []
        if "dit_ms" in r:
            notes.append(f"per block: DiT {r['dit_ms']:.0f} ms, VAE decode {r['vae_ms']:.0f} ms")
        if "first_block_s" in r:
            notes.append(f"first block (start + 9 frames) {1000 * r['first_block_s']:.0f} ms")
        if "first_frame_s" in r:
            notes.append(f"first frame after start {1000 * r['first_frame_s']:.0f} ms")
        print(f"{name:16} {r['fps']:7.1f} {r['fps'] / base:7.2f} {r['blocks']:7.0f} {r['frames']:7.0f}  "
              + "; ".join(notes))
    if os.environ.get("OUT"):
        import json

        Path(os.environ["OUT"], "matrix_game_fps.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
