"""xFuser service latency: one image from 1, 2 and 4 GPUs, eager and compiled, each speed lever, in one run.

Each case deploys the xfuser service (`full` preset: the real architecture with random weights,
bf16) through Ray Serve, lets it warm up at the benchmark size, then times POST /xfuser over HTTP
(plus the image download). The 1-GPU case is plain diffusers through the same service
(`backend: diffusers`), so every number carries the same service overhead.

Cases are `[MODEL/]GPUS:LAYOUT[@FLAGS]`. LAYOUT is `diffusers`, `auto`, or `+`-joined `cfg`, `ppN`,
`uN` (Ulysses), `rN` (Ring), with `native` for diffusers' own context parallelism instead of xfuser.
FLAGS are `+`-joined: `c` torch.compile (default mode), `ro` reduce-overhead (CUDA graphs), `ma`
max-autotune-no-cudagraphs, `mag` max-autotune (CUDA graphs), `rg` regional (the repeated blocks),
`qkv` fused QKV projections, `attn=NAME` an attention backend. Compiled cases share one inductor
cache (`--cache-dir`): the first deploy of a configuration compiles ("cold"), a repeat of it loads
the cache ("warm"), and the startup table shows both (deploy to ready, including the warm-up).
The cases of a `--phase` are deployed side by side, so their warm-ups and compiles overlap, then
timed one at a time. Phases run in order until `--budget-s` is spent. Partial results are written
to $OUT as each case finishes.
Usage: python bench/xfuser_latency.py --phase 1:diffusers@c,1:diffusers@ro+rg+qkv --phase 2:u2@c \
           --phase 2:native+u2@ro+rg+qkv --phase sd3/2:cfg@ro+rg
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


MODES = {"c": "default", "ro": "reduce-overhead", "ma": "max-autotune-no-cudagraphs", "mag": "max-autotune"}


def parse_case(text: str, default_model: str) -> dict[str, Any]:
    model, _, rest = text.rpartition("/")
    gpus, _, rest = rest.partition(":")
    layout_text, _, flags = rest.partition("@")
    case: dict[str, Any] = {"name": text, "model": model or default_model, "gpus": int(gpus), "compile": False,
                            "mode": "default", "regional": False, "fuse_qkv": False, "attention": None,
                            "backend": "xfuser", "parallel": {}}
    for flag in filter(None, flags.split("+")):
        if flag in MODES:
            case["compile"], case["mode"] = True, MODES[flag]
        elif flag == "rg":
            case["compile"] = case["regional"] = True
        elif flag == "qkv":
            case["fuse_qkv"] = True
        elif flag.startswith("attn="):
            case["attention"] = flag[5:]
        else:
            raise ValueError(f"unknown flag {flag!r} in {text!r}")
    if layout_text == "diffusers":
        case["backend"] = "diffusers"
    elif layout_text != "auto":
        keys = {"pp": "pipefusion_parallel_degree", "u": "ulysses_degree", "r": "ring_degree"}
        for token in layout_text.split("+"):
            if token == "cfg":
                case["parallel"]["use_cfg_parallel"] = True
            elif token == "native":
                case["backend"] = "native"
            else:
                prefix = token.rstrip("0123456789")
                case["parallel"][keys[prefix]] = int(token[len(prefix):])
    return case


def levers(case: dict[str, Any]) -> str:
    """The case's speed levers in a few characters, for the tables."""
    out = []
    if case["compile"]:
        out.append({v: k for k, v in MODES.items()}[case["mode"]] + ("+rg" if case["regional"] else ""))
    if case["fuse_qkv"]:
        out.append("qkv")
    if case["attention"]:
        out.append(case["attention"])
    return "+".join(out) or "eager"


def service_config(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"preset": "full"}, "family": FAMILY[case["model"]], "world_size": case["gpus"],
        "backend": case["backend"], "parallel": case["parallel"], "dtype": "bfloat16",
        "use_torch_compile": case["compile"], "fuse_qkv": case["fuse_qkv"], "attention_backend": case["attention"],
        "resources": {"use_gpu": True, "num_cpus_per_rank": 2, "replica_num_cpus": 1, "stop_grace_s": 30},
        "default_height": args.size, "default_width": args.size, "call_timeout_s": 900, "start_timeout_s": 1500,
        "warmup": {"height": args.size, "width": args.size, "num_inference_steps": 2},
    }
    if case["compile"]:
        config["compile"] = {"mode": case["mode"], "regional": case["regional"], "cache_dir": args.cache_dir}
    return config


def deploy_phase(cases: list[dict[str, Any]], args: argparse.Namespace, deployed: set[str]) -> dict[str, str]:
    """Deploy the cases side by side (warm-ups and compiles overlap); wait until each is up or failed.

    `deployed` holds the compiled configurations deployed before in this run (their cache is warm).
    """
    from ray import serve
    from ray.serve.api import _run

    from serve_app.app import build_app

    for i, case in enumerate(cases):
        case["app"] = f"b{i}"
        config = service_config(case, args)
        key = json.dumps(config, sort_keys=True)
        case["cache"] = ("warm" if key in deployed else "cold") if case["compile"] else "-"
        deployed.add(key)
        app = build_app({"ingress": {"storage": {"kind": "local"}},
                         "services": {"xfuser": {"module": "deployments.xfuser", "config": config}}})
        case["deploy_started"] = time.perf_counter()
        _run(app, _blocking=False, name=case["app"], route_prefix=f"/{case['app']}")
    errors: dict[str, str] = {}
    pending = {c["app"]: c for c in cases}
    while pending:
        time.sleep(2)
        apps = serve.status().applications
        for name, case in list(pending.items()):
            status = apps.get(name)
            if status is None:
                continue
            if status.status == "RUNNING":
                case["startup_s"] = time.perf_counter() - case["deploy_started"]
                del pending[name]
            elif status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                errors[name] = f"{status.status}: {status.message} " + " ".join(
                    f"{d}: {ds.message}" for d, ds in status.deployments.items() if ds.message)
                del pending[name]
    return errors


def measure(case: dict[str, Any], args: argparse.Namespace, client: Any) -> dict[str, Any]:
    body = {"prompt": "an astronaut riding a horse on the moon", "num_inference_steps": args.steps, "seed": 0}
    walls, inference = [], []
    out: dict[str, Any] = {}
    for _ in range(args.runs + 1):  # the first call is a warm-up at the full step count
        t = time.perf_counter()
        r = client.post(f"/{case['app']}/xfuser", json=body)
        r.raise_for_status()
        out = r.json()
        client.get(out["images"][0]["url"]).raise_for_status()
        walls.append(time.perf_counter() - t)
        inference.append(out["timings"]["inference"])
    keep = {k: v for k, v in case.items() if k not in ("deploy_started", "app")}
    return {**keep, "median_s": statistics.median(walls[1:]), "min_s": min(walls[1:]),
            "inference_s": statistics.median(inference[1:]), "layout": out.get("parallelism", "")}


def table(results: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    lines = [f"`full` presets, {args.size}px, {args.steps} steps, bf16, {device}; median of {args.runs} HTTP "
             "requests after a warm-up; x eager / x 1c = speed-up over the same run's 1-GPU diffusers eager / "
             "compiled (default mode, whole forward)"]
    for model in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == model]
        one = [r for r in rows if r["gpus"] == 1 and r["backend"] == "diffusers"]
        base = {"eager": next((r["median_s"] for r in one if levers(r) == "eager"), None),
                "1c": next((r["median_s"] for r in one if levers(r) == "c"), None)}
        lines.append(f"{model:<6} {'GPUs':>4} {'backend':<9} {'layout':<38} {'levers':<14} {'start s':>8} "
                     f"{'median s':>9} {'GPU s':>7} {'x eager':>7} {'x 1c':>6}")
        for r in rows:
            ratio = {k: f"{v / r['median_s']:.2f}" if v else "-" for k, v in base.items()}
            lines.append(f"{'':<6} {r['gpus']:>4} {r['backend']:<9} {r['layout']:<38} {levers(r):<14} "
                         f"{r['startup_s']:>8.1f} {r['median_s']:>9.3f} {r['inference_s']:>7.3f} "
                         f"{ratio['eager']:>7} {ratio['1c']:>6}")
    return "\n".join(lines)


def startup_table(results: list[dict[str, Any]]) -> str:
    """Deploy-to-ready seconds of the compiled cases, first deploy (cold cache) and repeats (warm)."""
    lines = [f"{'startup (deploy to ready, warm-up included)':<44} {'cache':<5} {'seconds':>8}"]
    for r in results:
        if r["compile"]:
            lines.append(f"{r['name']:<44} {r['cache']:<5} {r['startup_s']:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(FAMILY), default="flux", help="model of cases without a prefix")
    parser.add_argument("--phase", action="append", default=[],
                        help="comma-separated cases deployed side by side (GPUs permitting); repeatable")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="start no new phase after this many seconds (what ran is still reported)")
    parser.add_argument("--cache-dir", default=f"/tmp/xfuser-bench-compile-cache-{os.getpid()}",
                        help="inductor/Triton cache shared by the compiled cases (fresh per run by default)")
    args = parser.parse_args()
    phases = args.phase or ["1:diffusers", "2:auto", "4:auto"]
    started = time.perf_counter()
    deployed: set[str] = set()

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
    results: list[dict[str, Any]] = []
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    with httpx.Client(base_url="http://127.0.0.1:8000", timeout=1800) as client:
        for phase in phases:
            if time.perf_counter() - started > args.budget_s:
                print(f"phase {phase} skipped: the {args.budget_s:.0f} s budget is spent", flush=True)
                continue
            cases = [parse_case(c, args.model) for c in phase.split(",")]
            errors = deploy_phase(cases, args, deployed)
            for case in cases:
                if case["app"] in errors:
                    # the cause is at the end of Serve's message (the rank's own traceback)
                    print(f"case {case['name']} failed to start: ...{errors[case['app']][-4000:]}", flush=True)
                    continue
                try:
                    results.append(measure(case, args, client))
                except Exception as e:
                    print(f"case {case['name']} failed: {type(e).__name__}: ...{str(e)[-2000:]}", flush=True)
                print(table(results, args, device), flush=True)
                if out_dir:
                    (out_dir / "xfuser_latency.json").write_text(json.dumps(results, indent=1))
            for case in cases:
                serve.delete(case["app"])
    serve.shutdown()
    ray.shutdown()
    text = table(results, args, device) + "\n\n" + startup_table(results)
    print("\n" + text)
    if out_dir:
        (out_dir / "xfuser_latency.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
