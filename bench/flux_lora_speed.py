"""Flux LoRA serving speed on one GPU: base vs one vs three LoRAs, cold load, switch; eager and compiled.

Builds the Flux service with the `full` preset (FLUX.1-dev's architecture, random weights, bf16) and
rank-16 LoRAs on `/flux-train`'s 418 target modules (random matrices, diffusers' file format,
served over loopback HTTP as URLs), then times at 1024², 28 steps, same prompt and seed:

  bare        FluxPipeline alone, before any adapter code touched it: the baseline
  base        the service method (`/flux-lora` without LoRAs: pipeline, safety checker, JPEG)
  1 LoRA      the same with one loaded LoRA;   3 LoRAs: three, merged
  cold load   a LoRA the replica has not seen: download, checks, load (the request's `lora_loading`)
  switch      from one loaded LoRA to another (the adapter state change alone, device synced)

for two modes in one run: `eager` (one peft adapter per LoRA, `set_adapters`) and `compiled`
(`torch.compile` of the transformer with hotswap slots; also counts graph compilations while LoRAs
change: every hotswap is a recompilation avoided). Usage:
  python bench/flux_lora_speed.py [--runs 3] [--modes eager compiled] [--json out.json]
  python bench/flux_lora_speed.py --smoke      # tiny preset on CPU, 64², 2 steps: checks the script
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.server
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (after one warm-up)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--slots", type=int, default=3, help="hotswap slots (compiled mode)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny preset on CPU, 64², 2 steps, 1 run")
    args = parser.parse_args(argv)
    args.preset, args.device, args.backend = "full", "cuda", "inductor"
    if args.smoke:
        args.preset, args.device, args.backend = "tiny", "cpu", "eager"
        args.size, args.steps, args.rank, args.runs = 64, 2, 4, 1
    return args


@contextmanager
def file_server(files: dict[str, bytes]) -> Iterator[Callable[[str], str]]:
    """Serve `files` on a free loopback port; yields name -> URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files[self.path.lstrip("/")]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_lora(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> bytes:
    """A rank-`rank` LoRA on the trainer's modules, in the trainer's file format."""
    import torch
    from safetensors.torch import save

    from deployments.flux_lora.lora import target_modules

    layers = sum(1 for name in shapes if name.startswith("transformer_blocks.") and name.endswith("attn.to_q"))
    singles = sum(1 for name in shapes if name.startswith("single_transformer_blocks.") and name.endswith("attn.to_q"))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in target_modules(layers, singles):
        in_features, out_features = shapes[module]
        for key, shape in (("lora_A", (rank, in_features)), ("lora_B", (out_features, rank))):
            tensors[f"transformer.{module}.{key}.weight"] = (torch.randn(shape, generator=g) * 0.01).bfloat16()
    return save(tensors)


class Bench:
    """One service in one mode, and the timings taken from it."""

    def __init__(self, mode: str, args: argparse.Namespace, url: Callable[[str], str], files: dict[str, bytes]) -> None:
        import hashlib

        import torch

        from deployments.flux import FluxConfig, FluxService

        self.torch, self.args, self.url, self.mode = torch, args, url, mode
        self.sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}  # content addresses
        config: dict[str, Any] = {
            "model": {"preset": args.preset}, "safety_checker": {"preset": args.preset}, "device": args.device,
            "warmup": {"width": args.size, "height": args.size, "num_inference_steps": 2},
            "loras": {"allow": ["127.0.0.1"], "max_adapters": 8},
        }
        if mode == "compiled":
            config |= {"compile": {"enabled": True, "backend": args.backend},
                       "hotswap": {"enabled": True, "slots": args.slots, "target_rank": args.rank}}
        start = time.perf_counter()
        self.service = FluxService(FluxConfig.model_validate(config))
        self.startup_s = time.perf_counter() - start  # includes the compilation in compiled mode
        self.results: dict[str, Any] = {"mode": mode, "startup_s": self.startup_s}

    def sync(self) -> None:
        if self.args.device == "cuda":
            self.torch.cuda.synchronize()

    def request(self, loras: list[str]) -> Any:
        from deployments.flux import FluxLoraInput
        from serve_app.service import RunContext

        req = FluxLoraInput(prompt="a photo of a cat", image_size={"width": self.args.size, "height": self.args.size},
                            num_inference_steps=self.args.steps, seed=0,
                            loras=[{"path": self.url(name), "scale": 1.0} for name in loras])
        return asyncio.run(self.service.generate_with_loras(req, RunContext()))

    def timed(self, fn: Callable[[], Any], runs: int, warmup: bool = True) -> float:
        """Median seconds of `runs` calls (after one warm-up)."""
        if warmup:
            fn()
        times = []
        for _ in range(runs):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def bare(self) -> None:
        pipe, torch, a = self.service.pipe, self.torch, self.args

        def call() -> Any:
            with torch.inference_mode():
                return pipe(prompt="a photo of a cat", width=a.size, height=a.size, num_inference_steps=a.steps,
                            generator=torch.Generator(a.device).manual_seed(0), output_type="pil")

        self.results["bare_s"] = self.timed(call, a.runs)

    def requests(self) -> None:
        runs, r = self.args.runs, self.results
        r["base_s"] = self.timed(lambda: self.request([]), runs)
        r["cold_load_s"] = [self.request([name]).timings["lora_loading"] for name in ("l1", "l2", "l3")]
        r["one_lora_s"] = self.timed(lambda: self.request(["l1"]), runs)
        r["three_loras_s"] = self.timed(lambda: self.request(["l1", "l2", "l3"]), runs)
        r["base_after_s"] = self.timed(lambda: self.request([]), runs)

    def switches(self) -> None:
        """Between two loaded LoRAs; in compiled mode also a switch that copies a snapshot into a slot."""
        adapters, stats = self.service.adapters, self.service.lora_stats
        flip = [[(self.sha["l1"], 1.0)], [(self.sha["l2"], 1.0)]]
        self.results["switch_ms"] = 1000 * self.timed(lambda: [adapters.activate(w) for w in flip], 10) / 2
        if self.mode == "compiled":  # l1-l3 fill the slots, l4 takes l1's; then l1 and l4 take turns: a copy each
            self.request(["l4"])
            swaps = stats()["hotswaps"]
            others = [(self.sha["l2"], 1.0), (self.sha["l3"], 1.0)]
            flip = [[(self.sha["l1"], 1.0), *others], [(self.sha["l4"], 1.0), *others]]
            self.results["switch_with_copy_ms"] = 1000 * self.timed(lambda: [adapters.activate(w) for w in flip],
                                                                    10) / 2
            self.results["copies"] = stats()["hotswaps"] - swaps

    def run(self) -> dict[str, Any]:
        if self.mode == "eager":
            self.bare()
        compiles = self.service.compiles
        self.requests()
        self.switches()
        self.results |= {"stats": self.service.lora_stats(), "compiles_at_start": compiles,
                         "recompiles": self.service.compiles - compiles}
        if self.args.device == "cuda":
            self.results["peak_gib"] = self.torch.cuda.max_memory_allocated() / 2**30
        return self.results


def report(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    lines = [f"Flux {args.preset} preset, {args.size}², {args.steps} steps, rank-{args.rank} LoRAs, {device}; "
             f"median of {args.runs} after a warm-up",
             f"{'mode':9} {'bare s':>7} {'base s':>7} {'1 LoRA s':>9} {'3 LoRAs s':>10} {'1/base':>7} "
             f"{'cold load s':>12} {'switch ms':>10} {'recompiles':>11}"]
    for r in rows:
        bare = f"{r['bare_s']:.3f}" if "bare_s" in r else "-"
        cold = statistics.median(r["cold_load_s"])
        lines.append(f"{r['mode']:9} {bare:>7} {r['base_s']:7.3f} {r['one_lora_s']:9.3f} {r['three_loras_s']:10.3f} "
                     f"{r['one_lora_s'] / r['base_s']:7.3f} {cold:12.3f} {r['switch_ms']:10.2f} {r['recompiles']:11d}")
    for r in rows:
        extra = f", switch with a slot copy {r['switch_with_copy_ms']:.2f} ms" if "switch_with_copy_ms" in r else ""
        lines.append(f"{r['mode']}: start-up {r['startup_s']:.1f} s, base after LoRAs {r['base_after_s']:.3f} s, "
                     f"cold loads {', '.join(f'{x:.3f}' for x in r['cold_load_s'])} s{extra}; {r['stats']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    import torch

    from components import flux
    from deployments.flux.lora_files import linear_shapes

    with torch.device("meta"):
        from diffusers import FluxTransformer2DModel

        shapes = linear_shapes(FluxTransformer2DModel(**flux.configs(args.preset)["transformer"]))
    files = {f"l{i}": make_lora(shapes, args.rank, seed=i) for i in range(1, 5)}
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    rows = []
    with file_server(files) as url:
        for mode in args.modes:
            bench = Bench(mode, args, url, files)
            rows.append(bench.run())
            print(json.dumps(rows[-1]), flush=True)
            if args.json:  # after each mode: a run cut short still leaves what it measured
                with open(args.json, "w") as f:
                    json.dump({"device": device, "args": vars(args), "rows": rows}, f, indent=1)
            del bench
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(report(rows, args, device))
    return rows


if __name__ == "__main__":
    main()
