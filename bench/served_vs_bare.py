"""Served vs bare, for every GPU service, side by side in one run.

For each case, with the same inputs and seeds:
  bare    the library call alone in this process (a diffusers pipeline, the training loop);
  method  the service's code in this process (its endpoint method, or its ranks through the runner);
  served  the full HTTP request through Ray Serve, including the download of every output file.
Each of method, served (and actor, below) is timed in rounds that alternate with the bare call
(bare first on even rounds, second on odd ones), so the host's drift, which moved the bare call by
up to 80 % between minutes on the GPU machine, moves both sides of a ratio alike: `served/bare` is
the median of the rounds' own ratios, `added` the median of their differences.
The parts of the difference are measured on their own (safety checker, encoding, storage, the
download), and the replica says where the served request's time went (its `Server-Timing` header):
`run` (the endpoint method on the replica), `store`, `handle` (the Ray handle call around them,
from the ingress) and `http` (the proxy and HTTP around the ingress's route). `--smoke` runs every
case with tiny presets on the CPU (the README's test command runs it, so the script can't rot).

Where the served path runs in Ray processes, the host can cost as much as our code: launch-bound
pipelines (Sana, SDXL's UNet) run at the speed of one CPU core. So the Sana and SDXL cases also time
the bare call inside a plain Ray actor with a replica's resources (`actor`: at Ray's worker niceness,
then `actor@0` after renicing its threads to 0 where allowed). Each timing carries `cpu_ms`, a fixed
pure-Python loop timed just before its rounds in the same process: when it moves, the host moved.

`--proxy` picks Ray Serve's ingress path for the served column (bench/proxy_modes.py; `haproxy`
puts HAProxy in front of the ingress replica's own HTTP server).

Usage: python bench/served_vs_bare.py [--cases sana sprint sdxl sdxl-n xfuser train wan] [--runs 5]
                                      [--proxy default|haproxy|...]
       python bench/served_vs_bare.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_modes import PROXY_MODES, reexec_from_argv


@dataclass
class Row:
    case: str
    what: str
    bare: float
    method: float | None = None
    served: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    actor: float | None = None  # the bare call in a Ray actor, at Ray's worker niceness
    actor_nice0: float | None = None  # ... after renicing the actor's threads to 0
    cpu_ms: dict[str, float] = field(default_factory=dict)  # `cpu_probe()` before each timing
    facts: dict[str, Any] = field(default_factory=dict)  # the processes: niceness, threads, CPUs
    ratios: dict[str, float] = field(default_factory=dict)  # median of X_i / bare_i over alternating rounds
    added: dict[str, float] = field(default_factory=dict)  # median of X_i - bare_i
    served_parts: dict[str, float] = field(default_factory=dict)  # the replica's Server-Timing, medians (s)
    method_parts: dict[str, float] = field(default_factory=dict)  # the method's own split (ctx.timings), medians
    bare_runs: list[float] = field(default_factory=list)  # every bare timing of the case

    def finish(self) -> Row:
        """`bare` is the median of every bare timing of the case (all rounds of all pairings)."""
        if self.bare_runs:
            self.bare = statistics.median(self.bare_runs)
        return self


def cpu_probe() -> float:
    """Milliseconds for a fixed pure-Python loop: this process's one-core speed right now."""
    start = time.perf_counter()
    x = 0
    for i in range(1_000_000):
        x += i
    return (time.perf_counter() - start) * 1000


def process_facts() -> dict[str, Any]:
    import torch

    return {"niceness": os.getpriority(os.PRIO_PROCESS, 0), "torch_threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"), "cpus": len(os.sched_getaffinity(0)),
            "load1": round(os.getloadavg()[0], 2)}


def renice_threads(value: int) -> str:
    """Set every thread of this process to niceness `value` (lowering it needs CAP_SYS_NICE)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
    except (PermissionError, OSError) as e:
        return f"not reniced: {e}"
    return "ok"


@dataclass
class Elapsed:
    """What a timed call returns when it times itself (a call into another process)."""

    seconds: float


class InActor:
    """A plain Ray actor that builds `factory(*args)` (a zero-argument call) and times it."""

    def __init__(self, factory: Callable[..., Callable[[], Any]], *args: Any) -> None:
        self.fn = factory(*args)

    def facts(self, niceness: int | None = None) -> dict[str, Any]:
        reniced = renice_threads(niceness) if niceness is not None else None
        return {"cpu_ms": cpu_probe(), "reniced": reniced, **process_facts()}

    def once(self) -> Elapsed:
        return Elapsed(once(self.fn))


def in_actor(row: Row, args: argparse.Namespace, bare: Callable[[], Any],
             factory: Callable[..., Callable[[], Any]], *fargs: Any) -> None:
    """Time `factory(*fargs)` in a Ray actor with a replica's resources, at Ray's niceness then at 0,
    each in rounds alternating with `bare` here."""
    import ray

    actor = ray.remote(InActor).options(num_cpus=1 if args.gpu else 0.2, num_gpus=1 if args.gpu else 0).remote(
        factory, *fargs)

    def call() -> Elapsed:
        return ray.get(actor.once.remote())  # type: ignore[no-any-return]

    first = ray.get(actor.facts.remote())
    row.actor = paired(row, "actor", call, bare, args.runs)
    row.cpu_ms["actor"] = first["cpu_ms"]
    second = ray.get(actor.facts.remote(0))
    row.actor_nice0 = paired(row, "actor@0", call, bare, args.runs)
    row.cpu_ms["actor@0"] = second["cpu_ms"]
    row.facts["actor"] = {k: v for k, v in first.items() if k not in ("cpu_ms", "reniced")}
    row.facts["actor@0"] = {"niceness": second["niceness"], "reniced": second["reniced"]}
    ray.kill(actor)
    free()


def paired(row: Row, key: str, fn: Callable[[], Any], bare: Callable[[], Any], runs: int) -> float:
    """Median seconds of `fn` over `runs` rounds after one warm-up, each round also timing `bare`
    (before `fn` on even rounds, after it on odd ones). Records the rounds' median ratio and
    difference to bare, every bare timing, and the CPU probe before the rounds."""
    row.cpu_ms[key] = cpu_probe()
    fn()
    mine: list[float] = []
    ratios: list[float] = []
    diffs: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            b, t = once(bare), once(fn)
        else:
            t, b = once(fn), once(bare)
        row.bare_runs.append(b)
        mine.append(t)
        ratios.append(t / b)
        diffs.append(t - b)
    row.ratios[key], row.added[key] = statistics.median(ratios), statistics.median(diffs)
    return statistics.median(mine)


def once(fn: Callable[[], Any]) -> float:
    """Seconds of one call, the GPU's queue drained on both sides (or the call's own figure)."""
    sync()
    t = time.perf_counter()
    result = fn()
    sync()
    return result.seconds if isinstance(result, Elapsed) else time.perf_counter() - t


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], runs: int) -> float:
    """Median seconds of `runs` calls after one warm-up."""
    fn()
    return statistics.median(once(fn) for _ in range(runs))


def file_urls(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("url"), str) and "content_type" in value:
            yield value["url"]
        for v in value.values():
            yield from file_urls(v)
    elif isinstance(value, list):
        for v in value:
            yield from file_urls(v)


class Served:
    """One Serve app with one service; POSTs a body and downloads every file of the output."""

    def __init__(self, name: str, module: str, config: dict[str, Any], deployment: dict[str, Any],
                 port: int, files: str) -> None:
        import httpx
        from ray import serve

        from serve_app.app import build_app

        app = build_app({"ingress": {"storage": {"kind": "local", "directory": files}},
                         "services": {name: {"module": module, "config": config, "deployment": deployment}}})
        serve.run(app, name="bench", route_prefix="/")
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1800)
        self.download_s: list[float] = []
        self.timings: list[dict[str, float]] = []  # per request: the Server-Timing parts and the POST (s)

    def parts(self) -> dict[str, float]:
        """Where the served requests' time went (medians, s): the replica's `dispatch`, `run` and
        `store`, `handle` (the rest of the ingress's handle call), `http` (the rest of the POST
        around the ingress's route), `download`, and the parts the method timed itself inside `run`
        (`ctx.time_part`: a multi-GPU service's `ranks`, a rank's `pipe`). The warm-up request is
        left out."""
        rows = self.timings[1:] or self.timings
        out: dict[str, float] = {}
        if rows and "call" in rows[0]:
            for name in ("dispatch", "run", "store"):
                out[name] = statistics.median(r[name] for r in rows)
            out["handle"] = statistics.median(r["call"] - r["dispatch"] - r["run"] - r["store"] for r in rows)
            out["http"] = statistics.median(r["post"] - r["ingress"] for r in rows)
            framework = {"dispatch", "run", "store", "call", "ingress", "post"}
            for name in [k for k in rows[0] if k not in framework]:  # the method's own split (ctx.time_part)
                out[name] = statistics.median(r.get(name, 0.0) for r in rows)
        if self.download_s:
            out["download"] = statistics.median(self.download_s)
        return out

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from serve_app.http import parse_server_timing

        t = time.perf_counter()
        r = self.client.post(path, json=body)
        r.raise_for_status()
        post_s = time.perf_counter() - t
        self.timings.append({**parse_server_timing(r.headers.get("server-timing", "")), "post": post_s})
        out = r.json()
        for url in file_urls(out):
            t = time.perf_counter()
            self.client.get(url).raise_for_status()
            self.download_s.append(time.perf_counter() - t)
        return out  # type: ignore[no-any-return]

    def close(self) -> None:
        from ray import serve

        self.client.close()
        serve.delete("bench")


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def image_parts(images: Any, safety: Any, store_dir: str, runs: int) -> dict[str, float]:
    """The serving work around a pipeline's `[N, 3, H, W]` output, each timed on its own."""
    from serve_app.imaging import encode_images, fit
    from serve_app.storage import LocalStore

    store = LocalStore(store_dir)
    h, w = images.shape[-2:]
    encoded = encode_images(images)
    parts = {"fit": timed(lambda: fit(images, w, h), runs),
             "encode": timed(lambda: encode_images(images), runs),
             "store": timed(lambda: asyncio.run(store.put(encoded[0].read_bytes(), "image/jpeg", None, "http://x/")),
                            runs)}
    if safety is not None:
        parts["safety"] = timed(lambda: safety.apply_tensor(images), runs)
    return parts


def sana_request(size: int, sprint: bool, smoke: bool) -> Any:
    from deployments.sana import SprintInput, TextToImageInput

    steps = 2 if sprint else (2 if smoke else 18)
    return (SprintInput if sprint else TextToImageInput)(prompt="a photo of a cat", num_inference_steps=steps,
                                                         image_size={"width": size, "height": size}, seed=0)


def sana_bare(service: Any, size: int, sprint: bool, smoke: bool, device: str) -> Callable[..., Any]:
    """The bare diffusers call of the service's own pipeline (same request, seed and size)."""
    import torch

    request = sana_request(size, sprint, smoke)
    pipe = service.sprint if sprint else service.base
    extra: dict[str, Any] = {"intermediate_timesteps": 1.3} if sprint else {"negative_prompt": ""}

    def bare(output_type: str = "pil") -> Any:
        with torch.inference_mode():
            return pipe(prompt=request.prompt, width=size, height=size, use_resolution_binning=False,
                        num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                        generator=torch.Generator(device).manual_seed(0), output_type=output_type, **extra)

    return bare


def sana_in_actor(config: dict[str, Any], size: int, sprint: bool, smoke: bool, device: str) -> Callable[[], Any]:
    from deployments.sana import SanaConfig, SanaService

    return sana_bare(SanaService(SanaConfig.model_validate(config)), size, sprint, smoke, device)


def case_sana(args: argparse.Namespace, port: int, files: str, sprint: bool) -> Row:
    from deployments.sana import SanaConfig, SanaService
    from serve_app.service import RunContext

    config = {"model": {"preset": args.preset}, "sprint_model": {"preset": args.preset},
              "safety_checker": {"preset": args.preset}, "device": args.device, "warmup": {"enabled": False}}
    request = sana_request(args.size, sprint, args.smoke)
    steps = request.num_inference_steps
    service = SanaService(SanaConfig.model_validate(config))
    bare = sana_bare(service, args.size, sprint, args.smoke, args.device)
    method = service.sprint_generate if sprint else service.generate  # type: ignore[attr-defined]
    row = Row("sana-sprint" if sprint else "sana", f"{steps} steps, {args.size}²", 0.0)
    bare()  # warm-up
    row.facts["here"] = process_facts()
    if not (args.smoke and sprint):  # the smoke run times the actor once (Sana's): the same code
        in_actor(row, args, bare, sana_in_actor, config, args.size, sprint, args.smoke, args.device)
    row.method = paired(row, "method", lambda: method(request, RunContext()), bare, args.runs)
    row.parts = image_parts(bare("pt").images, service.safety, files, args.runs)
    served = Served("sana", "deployments.sana", config, {"ray_actor_options": {"num_gpus": int(args.gpu)}}, port,
                    files)
    path = "/sana/sprint" if sprint else "/sana"
    row.served = paired(row, "served", lambda: served.call(path, request.model_dump(mode="json")), bare, args.runs)
    row.served_parts = served.parts()
    row.parts["download"] = row.served_parts.pop("download")
    served.close()
    return row.finish()


def sdxl_bare(preset: str, device: str, size: int, steps: int) -> Callable[[], Any]:
    import torch

    from components import sdxl
    from deployments.parallel_sdxl.service import ParallelSDXLInput

    request = ParallelSDXLInput(prompt="an astronaut riding a horse on the moon", width=size, height=size,
                                num_inference_steps=steps, seed=0)
    pipe = sdxl.build_pipeline(preset, device, torch.bfloat16 if device == "cuda" else torch.float32)

    def bare() -> Any:
        with torch.inference_mode():
            return pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, width=size, height=size,
                        num_inference_steps=steps, guidance_scale=request.guidance_scale,
                        generator=torch.Generator(device).manual_seed(0), output_type="pil").images

    return bare


def case_sdxl(args: argparse.Namespace, port: int, files: str, ranks: int) -> Row:
    from deployments.parallel_sdxl.service import ParallelSDXLConfig, ParallelSDXLInput, ParallelSDXLService
    from serve_app.service import RunContext

    steps = 2 if args.smoke else 20
    request = ParallelSDXLInput(prompt="an astronaut riding a horse on the moon", width=args.size,
                                height=args.size, num_inference_steps=steps, seed=0)
    bare = sdxl_bare(args.preset, args.device, args.size, steps)
    row = Row(f"parallel-sdxl x{ranks}", f"{steps} steps CFG, {args.size}², {ranks} image(s)", 0.0)
    bare()  # warm-up
    row.facts["here"] = process_facts()
    if ranks == 1 and not args.smoke:
        in_actor(row, args, bare, sdxl_bare, args.preset, args.device, args.size, steps)
    resources = {"use_gpu": args.gpu, "num_cpus_per_rank": 1 if args.gpu else 0.2, "replica_num_cpus": 0.1,
                 "stop_grace_s": 5}
    config = {"model": {"preset": args.preset}, "preview_vae": {"preset": args.preset}, "world_size": ranks,
              "resources": resources, "warmup": False}
    # The ranks of `method` and of the served replica each hold the GPU(s) in Ray's accounting, so
    # they take turns, each beside the bare call in this process.
    method = ParallelSDXLService(ParallelSDXLConfig.model_validate(config))
    method_splits: list[dict[str, float]] = []

    def call_method() -> Any:
        ctx = RunContext()
        out = asyncio.run(method.generate(request, ctx))
        method_splits.append(ctx.timings)
        return out

    row.method = paired(row, "method", call_method, bare, args.runs)
    row.method_parts = {k: statistics.median(t[k] for t in method_splits[1:]) for k in method_splits[-1]}
    asyncio.run(method.runner.stop())
    served = Served("parallel-sdxl", "deployments.parallel_sdxl", config, {}, port, files)
    row.served = paired(row, "served", lambda: served.call("/parallel-sdxl", request.model_dump(mode="json")), bare,
                        args.runs)
    row.served_parts = served.parts()
    row.parts["download"] = row.served_parts.pop("download")
    served.close()
    return row.finish()


def case_xfuser(args: argparse.Namespace, port: int, files: str) -> Row:
    import torch

    from deployments.xfuser import presets

    steps = 2 if args.smoke else 28
    dtype = torch.bfloat16 if args.gpu else torch.float32
    pipe = presets.build_pipeline("sd3", args.preset, args.device, dtype)
    body = {"prompt": "an astronaut riding a horse on the moon", "height": args.size, "width": args.size,
            "num_inference_steps": steps, "seed": 0}

    def bare() -> Any:
        with torch.inference_mode():
            return pipe(prompt=body["prompt"], negative_prompt="", height=args.size, width=args.size,
                        num_inference_steps=steps, guidance_scale=7.0, output_type="pil",
                        generator=torch.Generator(args.device).manual_seed(0)).images

    row = Row("xfuser 1 GPU", f"SD3-medium diffusers backend, {steps} steps, {args.size}²", 0.0)
    bare()  # warm-up
    resources = {"use_gpu": args.gpu, "num_cpus_per_rank": 1 if args.gpu else 0.2, "replica_num_cpus": 0.1,
                 "stop_grace_s": 5}
    config = {"model": {"preset": args.preset}, "family": "sd3", "backend": "diffusers", "world_size": 1,
              "resources": resources, "default_height": args.size, "default_width": args.size,
              "warmup": {"height": args.size, "width": args.size, "num_inference_steps": 2}}
    served = Served("xfuser", "deployments.xfuser", config, {}, port, files)
    inference: list[float] = []

    def call() -> None:
        inference.append(served.call("/xfuser", body)["timings"]["inference"])

    row.served = paired(row, "served", call, bare, args.runs)
    row.method = statistics.median(inference[1:])  # the ranks' own time, as the service reports it
    row.served_parts = served.parts()
    row.parts["download"] = row.served_parts.pop("download")
    served.close()
    return row.finish()


def case_wan(args: argparse.Namespace, port: int, files: str) -> Row:
    """Wan 2.1 T2V 1.3B at 10 steps (not 30: ~3 min for the case, and the fixed costs, the VAE decoding
    and the MP4, weigh more, so the ratio is conservative). No `actor`: it needs the pipeline rebuilt."""
    import av  # noqa: F401 (PyAV, the MP4 encoder: a missing package fails here, before any timing)
    import torch
    from wan_bare import bare_video

    from deployments.wan import WanConfig, WanService, WanT2VInput
    from deployments.wan.video import encode_mp4
    from serve_app.service import RunContext

    width, height, frames = (160, 96, 17) if args.smoke else (832, 480, 81)
    steps = 2 if args.smoke else 10
    dtype = "bfloat16" if args.gpu else "float32"
    # world_size 1: the video renders in the replica, whose GPU and CPUs are its ray_actor_options
    # (`resources` is per rank, read when world_size > 1)
    config: dict[str, Any] = {"model": {"preset": args.preset}, "device": args.device, "dtype": dtype,
                              "landscape": [width, height], "portrait": [height, width], "num_frames": frames,
                              "warmup_steps": 1 if args.smoke else 2, "resources": {"use_gpu": args.gpu}}
    if args.smoke:
        config["mp4"] = {"preset": "veryfast"}  # as dev.yaml; on GPU the service's default, as prod
    request = WanT2VInput(prompt="a photo of a cat", inference_steps=steps, seed=0)

    async def no_llm(prompt: str, system_prompt: str, max_tokens: int) -> str:
        raise RuntimeError("the benchmark asks no LLM")

    service = WanService(WanConfig.model_validate(config), ask=no_llm)
    pipe = service.engine.pipe
    out: list[Any] = []

    def bare() -> None:
        """The service's own WanPipeline and scheduler, as the service's defaults, to numpy frames."""
        with torch.inference_mode():
            out[:] = [bare_video(pipe, service.engine.base_scheduler, request.prompt, width=width, height=height,
                                 frames=frames, steps=steps, device=args.device)]

    row = Row("wan", f"T2V 1.3B, {steps} steps, {width}x{height}, {frames} frames, {dtype}", 0.0)
    bare()  # warm-up
    row.facts["here"] = process_facts()
    row.method = paired(row, "method", lambda: asyncio.run(service.text_to_video(request, RunContext("bench"))),
                        bare, args.runs)
    fps, mp4 = service.config.fps, service.config.mp4
    row.parts["encode"] = timed(lambda: encode_mp4(out[0], fps, mp4), args.runs)
    served = Served("wan", "deployments.wan", config,
                    {"ray_actor_options": {"num_gpus": int(args.gpu), "num_cpus": 1 if args.gpu else 0.1}}, port,
                    files)
    row.served = paired(row, "served", lambda: served.call("/wan/v2.1/1.3b/text-to-video",
                                                           request.model_dump(mode="json")), bare, args.runs)
    row.served_parts = served.parts()
    row.parts["download"] = row.served_parts.pop("download")
    served.close()
    return row.finish()


def case_train(args: argparse.Namespace) -> Row:
    """s/step of the trainer: the bare loop in this process vs the service's rank (runner)."""
    import torch

    from components import flux
    from deployments.flux_lora.data import decode_preprocessed
    from deployments.flux_lora.lora import add_lora
    from deployments.flux_lora.synthetic import synthetic_preprocessed
    from deployments.flux_lora.train_worker import FluxLoRATrainWorker
    from deployments.flux_lora.training import TrainingParams, TrainingSet, train_loop, use_attention_that_trains
    from serve_app.distributed import DistributedRunner

    res, batch, steps = (64, 2, 3) if args.smoke else (512, 4, 8)
    cfg = (flux.FULL if args.preset == "full" else flux.TINY)["transformer"]
    dtype = torch.bfloat16 if args.gpu else torch.float32
    data = synthetic_preprocessed(cfg, 2 * batch, res, dtype=dtype)
    params = TrainingParams(steps=steps, batch_size=batch)
    transformer = flux.build_transformer(args.preset, args.device, dtype)
    add_lora(transformer, 16, 16)
    pre = decode_preprocessed(data)
    tensors = TrainingSet(latents=pre.latents.to(args.device),
                          text_embeddings=pre.text_embeddings.to(args.device, dtype),
                          pooled_embeddings=pre.pooled_embeddings.to(args.device, dtype))
    use_attention_that_trains(args.device)  # as the trainer's ranks do (cuDNN's backward fails there)
    result = train_loop(transformer, transformer, tensors, params, dtype=dtype)
    row = Row("flux-lora train", f"{res}², batch {batch}, rank 16, s/step", statistics.median(result.step_seconds[2:]))
    del transformer
    free()
    runner = DistributedRunner(FluxLoRATrainWorker, 1, use_gpu=args.gpu, num_cpus_per_rank=1 if args.gpu else 0.5)
    asyncio.run(runner.start(model={"preset": args.preset}, dtype=str(dtype).removeprefix("torch."),
                             warmup_resolution=None))
    out = asyncio.run(runner.invoke({"training_data": data, "steps": steps, "batch_size": batch, "debug": True}))
    asyncio.run(runner.stop())
    row.method = statistics.median(out["debug"][0]["step_seconds"][2:])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["sana", "sprint", "sdxl", "sdxl-n", "xfuser", "train", "wan"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true", help="tiny presets on the CPU, one run each")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker-niceness", type=int, default=None,
                        help="niceness of the Ray workers this bench starts (Ray's default: 15; the bare process: 0)")
    parser.add_argument("--proxy", choices=sorted(PROXY_MODES), default="default",
                        help="Ray Serve's ingress path for the served column (bench/proxy_modes.py)")
    args = parser.parse_args()
    if args.worker_niceness is not None:  # read by the raylet that ray.init starts below
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112 (Ray reads this case)
    import ray
    import torch
    from ray import serve

    args.gpu = torch.cuda.is_available() and not args.smoke
    args.device = "cuda" if args.gpu else "cpu"
    args.preset = "full" if args.gpu else "tiny"
    if args.smoke:
        args.runs, args.size = 1, 64
    gpus = torch.cuda.device_count() if args.gpu else 0
    ray.init(address="local", num_gpus=gpus, num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, object_store_memory=300 * 1024**2)
    port = int(os.environ.get("BENCH_PORT", "8123"))
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    rows: list[Row] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as files:
        for case in args.cases:
            try:
                run_case(case, args, port, files, gpus, rows)
            except Exception:  # the other cases still run, and the table still prints
                failed.append(case)
                traceback.print_exc()
                print(f"failed: {case}", flush=True)
                free()
                continue
            print(f"done: {case}", flush=True)
            if args.json:  # after each case: a run cut short still leaves what it measured
                Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    serve.shutdown()
    ray.shutdown()
    print_table(args, rows)
    if failed:
        sys.exit(f"failed cases: {', '.join(failed)} (tracebacks above)")


def run_case(case: str, args: argparse.Namespace, port: int, files: str, gpus: int, rows: list[Row]) -> None:
    """Run one case and append its row (`sdxl-n` needs 2 GPUs, or the smoke run)."""
    if case in ("sana", "sprint"):
        rows.append(case_sana(args, port, files, sprint=case == "sprint"))
    elif case == "sdxl":
        rows.append(case_sdxl(args, port, files, 1))
    elif case == "sdxl-n":
        if gpus > 1 or args.smoke:  # one GPU: nothing to spread over
            rows.append(case_sdxl(args, port, files, max(2, gpus)))
    elif case == "xfuser":
        rows.append(case_xfuser(args, port, files))
    elif case == "train":
        rows.append(case_train(args))
    elif case == "wan":
        rows.append(case_wan(args, port, files))
    else:
        raise ValueError(f"unknown case {case!r}")


def print_table(args: argparse.Namespace, rows: list[Row]) -> None:
    import torch

    device = torch.cuda.get_device_name(0) if args.gpu else "CPU (tiny presets, smoke)"
    print(f"\nServed vs bare on {device}, Serve's ingress path: {args.proxy}; medians of {args.runs} rounds after "
          "a warm-up, each round beside a bare call; seconds")
    print(f"{'case':18} {'bare':>8} {'actor':>8} {'actor@0':>8} {'method':>8} {'served':>8} "
          f"{'method/bare':>11} {'served/bare':>11} {'added':>8}  what")

    def cell(value: float | None) -> str:
        return f"{value:>8.4f}" if value is not None else f"{'-':>8}"

    def ratio(r: Row, key: str, value: float | None) -> str:
        if key in r.ratios:
            return f"{r.ratios[key]:>11.3f}"
        return f"{value / r.bare:>11.3f}" if value else f"{'-':>11}"

    for r in rows:
        key = "served" if r.served is not None else "method"
        value = r.served if r.served is not None else r.method
        added = r.added.get(key, value - r.bare if value else None)
        print(f"{r.case:18} {r.bare:>8.4f} {cell(r.actor)} {cell(r.actor_nice0)} {cell(r.method)} {cell(r.served)} "
              f"{ratio(r, 'method', r.method)} {ratio(r, 'served', r.served)} {cell(added)}  {r.what}")
    print("\nWhere the time goes (s): the service's parts timed alone; the served request's own split "
          "(Server-Timing)")
    for r in rows:
        parts = " ".join(f"{k}={v:.4f}" for k, v in r.parts.items())
        split = " ".join(f"{k}={v:.4f}" for k, v in r.served_parts.items())
        own = " ".join(f"{k}={v:.4f}" for k, v in r.method_parts.items())
        print(f"{r.case:18} {parts}" + (f" | method: {own}" if own else "") + (f" | served: {split}" if split else ""))
    print("\nCPU probe (ms for a fixed Python loop, before each pairing, in the process that timed it):")
    for r in rows:
        if r.cpu_ms:
            print(f"{r.case:18} " + " ".join(f"{k}={v:.1f}" for k, v in r.cpu_ms.items()))
    for r in rows:
        if r.facts:
            print(f"{r.case:18} processes: {json.dumps(r.facts)}")


if __name__ == "__main__":
    reexec_from_argv()  # before Ray is imported: Serve's processes read the mode's variables
    main()
