"""Served vs bare Sana latency on one GPU, measured side by side in one run.

Builds Sana with the `full` preset (real architecture, random weights, bf16) and times, for the
same inputs and seeds:
  1. bare:    the diffusers pipeline call alone, in this process;
  2. method:  the service method in this process (pipeline + safety checker + JPEG encoding);
  3. served:  POST /sana over HTTP through Ray Serve (ingress -> handle -> replica -> store).
Prints a table and the served/bare ratio. Usage: python bench/sana_latency.py [--steps 18] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up
    out = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--sprint-steps", type=int, default=2)
    parser.add_argument("--size", default="square_hd")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script with --preset tiny")
    args = parser.parse_args()

    import httpx
    import ray
    import torch
    from ray import serve

    from deployments.sana import SanaConfig, SanaService, SprintInput, TextToImageInput
    from serve_app.app import build_app
    from serve_app.io import resolve_image_size

    service_config = {
        "model": {"preset": args.preset}, "sprint_model": {"preset": args.preset},
        "safety_checker": {"preset": args.preset}, "device": args.device, "warmup": {"enabled": True},
    }
    results: dict[str, dict[str, list[float]]] = {}
    cases = {
        "sana": (TextToImageInput(prompt="a photo of a cat", image_size=args.size,
                                  num_inference_steps=args.steps, seed=0), "/sana"),
        "sprint": (SprintInput(prompt="a photo of a cat", image_size=args.size,
                               num_inference_steps=args.sprint_steps, seed=0), "/sana/sprint"),
    }

    service = SanaService(SanaConfig.model_validate(service_config))
    for name, (req, _) in cases.items():
        width, height = resolve_image_size(req.image_size)
        pipe = service.base if name == "sana" else service.sprint
        gen_w, gen_h = service._binned_size(pipe, width, height)
        if name == "sana":
            extra: dict[str, Any] = {"negative_prompt": ""}
        else:
            extra = {"intermediate_timesteps": 1.3 if req.num_inference_steps == 2 else None}

        def bare(pipe: Any = pipe, req: Any = req, gen_w: int = gen_w, gen_h: int = gen_h, extra: Any = extra) -> Any:
            with torch.inference_mode():
                return pipe(prompt=req.prompt, width=gen_w, height=gen_h, use_resolution_binning=False,
                            num_inference_steps=req.num_inference_steps, guidance_scale=req.guidance_scale,
                            generator=torch.Generator(args.device).manual_seed(0), output_type="pil", **extra)

        method = service.generate if name == "sana" else service.sprint_generate
        results[name] = {"bare": timed(bare, args.runs), "method": timed(lambda m=method, r=req: m(r), args.runs)}
    cuda = args.device == "cuda"
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    del service
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    ray.init(address="local", num_gpus=1 if cuda else 0, num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    actor = {"num_gpus": int(cuda), "num_cpus": 1}
    app = build_app({"services": {"sana": {"module": "deployments.sana", "config": service_config,
                                           "deployment": {"ray_actor_options": actor}}}})
    serve.run(app, name="default", route_prefix="/")
    with httpx.Client(base_url="http://127.0.0.1:8000", timeout=600) as client:
        for name, (req, path) in cases.items():
            body = req.model_dump(mode="json")

            def call(body: Any = body, path: str = path) -> None:
                r = client.post(path, json=body)
                r.raise_for_status()
                client.get(r.json()["images"][0]["url"]).raise_for_status()  # the download too

            results[name]["served"] = timed(call, args.runs)
    serve.shutdown()
    ray.shutdown()

    gpu = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\nSana {args.preset} preset, {args.size}, bf16, {gpu}; median of {args.runs} runs after one warm-up")
    print(f"peak GPU memory in-process (both pipelines + checker): {peak_gib:.1f} GiB")
    print(f"{'endpoint':8} {'steps':>5} {'bare s':>8} {'method s':>9} {'served s':>9} "
          f"{'served/bare':>12} {'overhead s':>11}")
    for name, (req, _) in cases.items():
        med = {k: statistics.median(v) for k, v in results[name].items()}
        print(f"{name:8} {req.num_inference_steps:>5} {med['bare']:>8.3f} {med['method']:>9.3f} {med['served']:>9.3f} "
              f"{med['served'] / med['bare']:>12.3f} {med['served'] - med['bare']:>11.3f}")


if __name__ == "__main__":
    main()
