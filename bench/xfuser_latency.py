"""xFuser service latency: one image from 1, 2 and 4 GPUs, eager and compiled, in one run.

Each case deploys the xfuser service (`full` preset: the real architecture with random weights,
bf16) through Ray Serve, lets it warm up at the benchmark size, then times POST /xfuser over HTTP
(plus the image download). The 1-GPU case is plain diffusers through the same service
(`backend: diffusers`), so every number carries the same service overhead.
Cases are `GPUS:LAYOUT[@c]`: LAYOUT is `diffusers`, `auto`, or `+`-joined `cfg`, `ppN`, `uN`
(Ulysses), `rN` (Ring); `@c` turns torch.compile on. `--compile-best` adds, for each GPU count, the
fastest eager layout compiled. Partial results are written to $OUT as each case finishes.
Usage: python bench/xfuser_latency.py --model flux --cases 1:diffusers 2:u2 2:r2 4:u4 --compile-best
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

FAMILY = {"flux": "flux", "sd3": "sd3", "pixart": "pixart_sigma", "hunyuandit": "hunyuandit"}


def parse_case(text: str) -> dict[str, Any]:
    gpus, _, rest = text.partition(":")
    layout_text, _, flag = rest.partition("@")
    case: dict[str, Any] = {"name": text, "gpus": int(gpus), "compile": flag == "c", "backend": "xfuser",
                            "parallel": {}}
    if layout_text == "diffusers":
        case["backend"] = "diffusers"
    elif layout_text != "auto":
        keys = {"pp": "pipefusion_parallel_degree", "u": "ulysses_degree", "r": "ring_degree"}
        for token in layout_text.split("+"):
            if token == "cfg":
                case["parallel"]["use_cfg_parallel"] = True
            else:
                prefix = token.rstrip("0123456789")
                case["parallel"][keys[prefix]] = int(token[len(prefix):])
    return case


def service_config(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": {"preset": "full"}, "family": FAMILY[args.model], "world_size": case["gpus"],
        "backend": case["backend"], "parallel": case["parallel"], "dtype": "bfloat16",
        "use_torch_compile": case["compile"], "compile_scope": args.compile_scope,
        "resources": {"use_gpu": True, "num_cpus_per_rank": 2, "replica_num_cpus": 1, "stop_grace_s": 30},
        "default_height": args.size, "default_width": args.size, "call_timeout_s": 900, "start_timeout_s": 1500,
        "warmup": {"height": args.size, "width": args.size, "num_inference_steps": 2},
    }


def run_case(case: dict[str, Any], args: argparse.Namespace, client: Any) -> dict[str, Any]:
    from ray import serve

    from serve_app.app import build_app

    app = build_app({"ingress": {"storage": {"kind": "local"}},
                     "services": {"xfuser": {"module": "deployments.xfuser", "config": service_config(case, args)}}})
    started = time.perf_counter()
    serve.run(app, name="bench", route_prefix="/")
    startup = time.perf_counter() - started
    body = {"prompt": "an astronaut riding a horse on the moon", "num_inference_steps": args.steps, "seed": 0,
            "output_format": "jpeg"}
    walls, inference = [], []
    out: dict[str, Any] = {}
    for _ in range(args.runs + 1):  # the first call is a warm-up at the full step count
        t = time.perf_counter()
        r = client.post("/xfuser", json=body)
        r.raise_for_status()
        out = r.json()
        client.get(out["images"][0]["url"]).raise_for_status()
        walls.append(time.perf_counter() - t)
        inference.append(out["timings"]["inference"])
    serve.delete("bench")
    return {**case, "startup_s": startup, "median_s": statistics.median(walls[1:]), "min_s": min(walls[1:]),
            "inference_s": statistics.median(inference[1:]), "layout": out.get("parallelism", "")}


def table(results: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    base = {c: next((r["median_s"] for r in results if r["gpus"] == 1 and r["compile"] == c), None)
            for c in (False, True)}
    lines = [f"{args.model} `full` preset, {args.size}px, {args.steps} steps, bf16, {device}; median of {args.runs} "
             f"HTTP requests after a warm-up (compile scope: {args.compile_scope})",
             f"{'case':<16} {'GPUs':>4} {'layout':<38} {'compile':>7} {'start s':>8} {'median s':>9} "
             f"{'GPU s':>7} {'x 1GPU eager':>12} {'x 1GPU same':>11}"]
    for r in results:
        eager = f"{base[False] / r['median_s']:.2f}" if base[False] else "-"
        same = f"{base[r['compile']] / r['median_s']:.2f}" if base[r["compile"]] else "-"
        lines.append(f"{r['name']:<16} {r['gpus']:>4} {r['layout']:<38} {r['compile']!s:>7} "
                     f"{r['startup_s']:>8.1f} {r['median_s']:>9.3f} {r['inference_s']:>7.3f} {eager:>12} {same:>11}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(FAMILY), default="flux")
    parser.add_argument("--cases", nargs="+", default=["1:diffusers", "2:auto", "4:auto"])
    parser.add_argument("--compile-best", action="store_true")
    parser.add_argument("--compile-scope", choices=["blocks", "whole"], default="blocks")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import httpx
    import ray
    import torch
    from ray import serve

    gpus = torch.cuda.device_count()
    device = f"{gpus} x {torch.cuda.get_device_name(0)}"
    ray.init(address="local", num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    serve.start(http_options={"host": "127.0.0.1", "port": 8000},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    cases = [parse_case(c) for c in args.cases]
    results: list[dict[str, Any]] = []
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    with httpx.Client(base_url="http://127.0.0.1:8000", timeout=1800) as client:
        for n in sorted({c["gpus"] for c in cases}):
            group = [c for c in cases if c["gpus"] == n]
            for case in group:
                try:
                    results.append(run_case(case, args, client))
                except Exception as e:
                    print(f"case {case['name']} failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
                    serve.delete("bench")
                print(table(results, args, device), flush=True)
                if out_dir:
                    (out_dir / f"xfuser_{args.model}.json").write_text(json.dumps(results, indent=1))
            eager = [r for r in results if r["gpus"] == n and not r["compile"]]
            if args.compile_best and eager and not any(c["compile"] for c in group):
                best = min(eager, key=lambda r: r["median_s"])
                case = {**best, "name": best["name"] + "@c", "compile": True}
                try:
                    results.append(run_case(case, args, client))
                except Exception as e:
                    print(f"case {case['name']} failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
                    serve.delete("bench")
                if out_dir:
                    (out_dir / f"xfuser_{args.model}.json").write_text(json.dumps(results, indent=1))
    serve.shutdown()
    ray.shutdown()
    text = table(results, args, device)
    print("\n" + text)
    if out_dir:
        (out_dir / f"xfuser_{args.model}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
