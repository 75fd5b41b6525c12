"""Where one Flux.1-dev image's time goes on one GPU: bare diffusers vs the xFuser service's levers.

Builds the `full` preset FluxPipeline once (FLUX.1-dev's architecture, random weights, bf16; the
service's own builder) and, in one process, for the same request (1024², 28 steps, guidance 3.5,
512 T5 tokens, seed 0):

  eager     the bare pipeline: the call as the service's 1-GPU `diffusers` backend makes it
            (`output_type="pt"`, then the uint8 image on the CPU), and its stages timed alone:
            encode  `pipe.encode_prompt` (CLIP + T5),
            denoise the pipeline from those embeddings to latents (`output_type="latent"`),
            decode  unpack + VAE decode + postprocess + uint8 on the CPU;
  compiled  the same after the service's levers, applied by the service's own code
            (`engine.prepare`: fused QKV, then torch.compile in `--mode`, `--regional` blocks),
            with the first call's time (compile + warm-up + one image).

Times are medians of `--runs` calls after a warm-up, with the device synchronised. Then one transformer
forward at the benchmark shapes (its inputs caught from a real pipeline call) is timed alone (wall ms,
median of 5) and traced by torch.profiler (CUDA kernels; CPU ops in `--smoke`): kernel time summed by
category (GEMM, attention, other: elementwise, norms, RoPE, Triton fused kernels, copies), idle =
wall - kernel busy time, kernels and CPU launch calls per step, the top kernels, and achieved TFLOP/s
of the GEMMs and of attention against an analytic FLOP count from the built transformer's config
(cross-checked against torch's FlopCounterMode on the eager forward). Prints the tables last;
`--json PATH` writes every number (rewritten as each row finishes).

    python bench/flux_profile.py [--mode reduce-overhead] [--regional] [--runs 2] [--json out.json]
    python bench/flux_profile.py --mode max-autotune-no-cudagraphs --regional --attention _native_cudnn
    python bench/flux_profile.py --smoke --json /tmp/p.json   # CPU, tiny preset, 64², 2 steps, no compile
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "an astronaut riding a horse on the moon"
MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
SHORT = {"none": "no compile", "default": "c", "max-autotune-no-cudagraphs": "ma", "reduce-overhead": "ro",
         "max-autotune": "mag"}
MLP_RATIO = 4  # diffusers' Flux blocks: FeedForward(mult=4) in the double blocks, mlp_ratio=4.0 in the single ones

# --- analytic FLOPs -------------------------------------------------------------------------------


def analytic_flops(config: dict[str, Any], n_img: int, n_txt: int) -> dict[str, float]:
    """FLOPs of one FluxTransformer2DModel forward (batch 1) from its config, per kind of work.

    With D = heads x head dim and S = n_img + n_txt tokens, every block does 12·D² multiply-adds per token:
    a double block per stream q, k, v, out (4·D²) and the MLP D -> 4D -> D (8·D²); a single block
    q, k, v (3·D²), its MLP input D -> 4D (4·D²) and proj_out 5D -> D (5·D²). Attention is QKᵀ and PV
    over the joint sequence, 2·2·S²·D per block. Plus the input embedders (image and text tokens) and
    the output projection; the modulation linears act on one vector and are left out.
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + config["num_single_layers"]
    s = n_img + n_txt
    out_channels = config.get("out_channels") or config["in_channels"]
    per_token = 2 * (4 + 2 * MLP_RATIO) * d * d  # double: 4 + 2·4 per stream; single: 3 + 4 + 5; = 24·D² FLOPs
    blocks_linear = blocks * per_token * s
    embed_out = 2 * d * (n_img * config["in_channels"] + n_txt * config["joint_attention_dim"]
                         + n_img * config["patch_size"] ** 2 * out_channels)
    attention = blocks * 4 * s * s * d
    linear = blocks_linear + embed_out
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention),
            "blocks_linear": float(blocks_linear), "embed_out_linear": float(embed_out)}


def counted_flops(fn: Callable[[], Any]) -> dict[str, float]:
    """torch's own count (FlopCounterMode) of one call, by aten op: the cross-check of `analytic_flops`
    (it also counts the modulation linears; attention only where it knows the SDPA kernel, not on CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


# --- kernel categories and the trace --------------------------------------------------------------

ATTENTION_RE = re.compile(r"flash|fmha|cudnn|sdpa|attention|attn")
GEMM_RE = re.compile(r"gemm|cutlass|cublas|nvjet|xmma|matmul|splitkreduce|aten::(add|b)?mm\b")
LAUNCH_RE = re.compile(r"LaunchKernel|LaunchCooperativeKernel")
GRAPH_LAUNCH_RE = re.compile(r"GraphLaunch")


def category(name: str) -> str:
    """`gemm`, `attention` or `other` for a kernel (or, on CPU, an aten op) name."""
    n = name.lower()
    if n.startswith("triton_tem"):  # inductor's templates: matmuls (max-autotune), or flex attention
        return "gemm" if "mm" in n else ("attention" if ATTENTION_RE.search(n) else "other")
    if n.startswith("triton_"):  # inductor's fused pointwise / reduction kernels
        return "other"
    if ATTENTION_RE.search(n):  # first: flash and cuDNN attention kernels carry cutlass/xmma in their names
        return "attention"
    return "gemm" if GEMM_RE.search(n) else "other"


def cpu_self_times(events: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(name, self µs) of every CPU op of a trace: its time minus its nested ops' (so nothing counts twice)."""
    out: list[tuple[str, float]] = []
    threads: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("ph") == "X":
            threads.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    for ops in threads.values():
        ops.sort(key=lambda e: (e["ts"], -e["dur"]))
        selfs = [float(e["dur"]) for e in ops]
        stack: list[int] = []
        for i, e in enumerate(ops):
            while stack and ops[stack[-1]]["ts"] + ops[stack[-1]]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                selfs[stack[-1]] -= float(e["dur"])
            stack.append(i)
        out.extend((e["name"], max(s, 0.0)) for e, s in zip(ops, selfs, strict=True))
    return out


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (kernels that overlap count once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarize_trace(events: list[dict[str, Any]], cuda: bool, steps: int = 1) -> dict[str, Any]:
    """Per-step kernel time by category, busy time, counts and the kernels by total time, from a chrome trace."""
    per_name: dict[str, list[float]] = {}
    if cuda:
        gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("ph") == "X"]
        for e in gpu:
            per_name.setdefault(e["name"], []).append(float(e["dur"]))
        busy = busy_us([(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in gpu])
        runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
        launches = sum(1 for e in runtime if LAUNCH_RE.search(e["name"]))
        graph_launches = sum(1 for e in runtime if GRAPH_LAUNCH_RE.search(e["name"]))
    else:  # CPU: aten ops by self time stand in for kernels
        for name, us in cpu_self_times(events):
            if us > 0:
                per_name.setdefault(name, []).append(us)
        busy = sum(sum(v) for v in per_name.values())
        launches = graph_launches = 0
    by_cat = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for name, durs in per_name.items():
        by_cat[category(name)] += sum(durs)
    top = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))
    return {
        "kernel_ms": sum(by_cat.values()) / 1e3 / steps, "busy_ms": busy / 1e3 / steps,
        "gemm_ms": by_cat["gemm"] / 1e3 / steps, "attention_ms": by_cat["attention"] / 1e3 / steps,
        "other_ms": by_cat["other"] / 1e3 / steps,
        "kernels": sum(len(v) for v in per_name.values()) / steps,
        "cpu_launches": launches / steps, "graph_launches": graph_launches / steps,
        "top": [{"name": name[:300], "category": category(name), "count": len(durs) / steps,
                 "ms": sum(durs) / 1e3 / steps} for name, durs in top[:40]],
    }


def profile_forward(fn: Callable[[], Any], sync: Callable[[], None], cuda: bool, trace_path: str) -> dict[str, Any]:
    """Trace one call of `fn` (after one traced-and-dropped warm-up call) and summarize it."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
        with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=1),
                     on_trace_ready=lambda p: p.export_chrome_trace(trace_path)) as prof:
            for _ in range(2):
                fn()
                sync()
                prof.step()
    with open(trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return summarize_trace(events, cuda)


# --- timing --------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def dynamo_counts() -> dict[str, int]:
    """Graphs torch.compile built and graph breaks so far in this process (0 and 0 when nothing compiled)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # a torch without dynamo's counters: nothing to report
        return {}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


class Bench:
    """The pipeline, the request, and the measurements of its rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from deployments.xfuser.engine import EngineSpec, build_pipeline
        from deployments.xfuser.families import FAMILIES

        self.args, self.torch = args, torch
        self.cuda = args.device == "cuda"
        self.sync: Callable[[], None] = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.family = FAMILIES["flux"]
        self.spec = EngineSpec.model_validate({"family": "flux", "model": {"preset": args.preset},
                                               "backend": "diffusers"})
        start = time.perf_counter()
        self.pipe = build_pipeline(self.spec, args.device, self.dtype)
        self.sync()
        self.build_s = time.perf_counter() - start
        self.pipe.set_progress_bar_config(disable=True)
        self.inputs: dict[str, Any] = {}  # one transformer call's kwargs, caught from a pipeline call
        self.embeds: tuple[Any, ...] = ()
        self.latents: Any = None

    # the request, as the service's worker builds it (XFuserWorker.pipeline_kwargs)
    def call_kwargs(self) -> dict[str, Any]:
        a = self.args
        kwargs: dict[str, Any] = {
            "num_inference_steps": a.steps, "guidance_scale": self.family.default_guidance, "height": a.size,
            "width": a.size, "generator": self.torch.Generator(device=a.device).manual_seed(0),
        }
        if a.preset != "tiny":
            kwargs["max_sequence_length"] = self.family.max_sequence_length
        return kwargs

    def to_image(self, images: Any) -> Any:
        """What the worker does with the pipeline's output: uint8 [3, H, W] on the CPU (waits for the GPU)."""
        return (images[0].float().clamp(0, 1) * 255).round().to(self.torch.uint8).cpu()

    def total(self) -> Any:
        return self.to_image(self.pipe(prompt=PROMPT, output_type="pt", **self.call_kwargs()).images)

    def encode(self) -> None:
        kw = self.call_kwargs()
        self.embeds = self.pipe.encode_prompt(prompt=PROMPT, prompt_2=None, device=self.args.device,
                                              max_sequence_length=kw.get("max_sequence_length", 512))

    def denoise(self) -> None:
        prompt_embeds, pooled, _ = self.embeds
        self.latents = self.pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, output_type="latent",
                                 **self.call_kwargs()).images

    def decode(self) -> Any:
        pipe, a = self.pipe, self.args
        latents = pipe._unpack_latents(self.latents, a.size, a.size, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return self.to_image(pipe.image_processor.postprocess(image, output_type="pt"))

    def catch_inputs(self) -> Any:
        """A pre-hook that keeps the first transformer call's kwargs (the benchmark's shapes)."""

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not self.inputs:
                self.inputs = dict(kwargs)

        return self.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)

    def forward(self) -> Any:
        return self.pipe.transformer(**self.inputs)

    # --- one row ---------------------------------------------------------------------------------
    def stages(self, first_call: bool) -> dict[str, Any]:
        """The warm-up call, then `runs` x (whole call, encode, denoise, decode)."""
        torch = self.torch
        row: dict[str, Any] = {}
        with torch.inference_mode():
            hook = self.catch_inputs() if first_call else None
            row["warmup_s"] = timed(self.total, self.sync)
            if hook is not None:
                hook.remove()
            times: dict[str, list[float]] = {"total": [], "encode": [], "denoise": [], "decode": []}
            for _ in range(self.args.runs):
                for name, fn in (("total", self.total), ("encode", self.encode), ("denoise", self.denoise),
                                 ("decode", self.decode)):
                    times[name].append(timed(fn, self.sync))
        row["times"] = times
        for name, values in times.items():
            row[f"{name}_s"] = statistics.median(values)
        row["step_s"] = row["denoise_s"] / self.args.steps
        return row

    def profile(self, label: str, flops: dict[str, float]) -> dict[str, Any]:
        """One transformer forward: wall time alone (median of 5), then traced."""
        with self.torch.inference_mode():
            self.forward()
            walls = [timed(self.forward, self.sync) for _ in range(5)]
            trace_dir = self.args.trace_dir or tempfile.mkdtemp(prefix="flux_profile_")
            os.makedirs(trace_dir, exist_ok=True)
            prof = profile_forward(self.forward, self.sync, self.cuda, os.path.join(trace_dir, f"{label}.json"))
        prof["wall_ms"] = statistics.median(walls) * 1e3
        prof["walls_ms"] = [w * 1e3 for w in walls]
        prof["idle_ms"] = prof["wall_ms"] - prof["busy_ms"]
        prof["gemm_tflops"] = flops["linear"] / (prof["gemm_ms"] / 1e3) / 1e12 if prof["gemm_ms"] else 0.0
        prof["attention_tflops"] = (flops["attention"] / (prof["attention_ms"] / 1e3) / 1e12
                                    if prof["attention_ms"] else 0.0)
        if self.cuda and prof["kernel_ms"] < 0.1 * prof["wall_ms"]:
            print(f"warning: the {label} trace holds {prof['kernel_ms']:.1f} ms of kernels for a "
                  f"{prof['wall_ms']:.1f} ms step: the profiler may not see kernels inside CUDA graphs here",
                  flush=True)
        return prof


# --- output --------------------------------------------------------------------------------------


def top_table(label: str, prof: dict[str, Any], n: int = 12) -> str:
    lines = [f"{label}: top {n} kernels of one forward", f"{'kernel':<60} {'cat':<9} {'count':>6} {'ms':>9}"]
    for k in prof["top"][:n]:
        lines.append(f"{k['name'][:60]:<60} {k['category']:<9} {k['count']:>6.0f} {k['ms']:>9.3f}")
    return "\n".join(lines)


def tables(result: dict[str, Any]) -> str:
    a, rows = result["args"], result["rows"]
    flops = result["flops"]
    lines = [f"Flux.1-dev `{a['preset']}` preset, {a['size']}², {a['steps']} steps, {result['dtype']}, "
             f"{result['device']}; median of {a['runs']} after a warm-up; {result['shape']['n_img']} image + "
             f"{result['shape']['n_txt']} text tokens; analytic TFLOP/step: linear {flops['linear'] / 1e12:.4g}, "
             f"attention {flops['attention'] / 1e12:.4g}",
             f"{'row':<9} {'levers':<22} {'total s':>8} {'encode s':>9} {'denoise s':>10} {'s/step':>8} "
             f"{'decode s':>9} {'warm-up s':>10}"]
    for name, r in rows.items():
        lines.append(f"{name:<9} {r['levers']:<22} {r['total_s']:>8.3f} {r['encode_s']:>9.3f} {r['denoise_s']:>10.3f} "
                     f"{r['step_s']:>8.4f} {r['decode_s']:>9.3f} {r['warmup_s']:>10.1f}")
    unit = "kernels" if result["cuda"] else "CPU ops (self time)"
    lines += ["", f"one transformer forward, profiled ({unit}); idle = wall - busy; ms per step",
              f"{'row':<9} {'wall':>8} {'kernel':>8} {'GEMM':>8} {'attn':>8} {'other':>8} {'idle':>8} "
              f"{'kernels':>8} {'launches':>9} {'GEMM TF/s':>10} {'attn TF/s':>10}"]
    for name, r in rows.items():
        p = r.get("profile")
        if p:
            lines.append(f"{name:<9} {p['wall_ms']:>8.2f} {p['kernel_ms']:>8.2f} {p['gemm_ms']:>8.2f} "
                         f"{p['attention_ms']:>8.2f} {p['other_ms']:>8.2f} {p['idle_ms']:>8.2f} {p['kernels']:>8.0f} "
                         f"{p['cpu_launches'] + p['graph_launches']:>9.0f} {p['gemm_tflops']:>10.3g} "
                         f"{p['attention_tflops']:>10.3g}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--preset", choices=["tiny", "full"], default=None, help="default: full (tiny with --smoke)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--runs", type=int, default=2, help="timed calls of each stage, after one warm-up call")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="torch.compile mode of the compiled row (default reduce-overhead; none: fused QKV "
                             "only, no compile; --smoke's default)")
    parser.add_argument("--regional", action="store_true", help="compile the repeated blocks, not the whole forward")
    parser.add_argument("--no-qkv", action="store_true", help="leave the QKV projections unfused in the compiled row")
    parser.add_argument("--attention", default=None,
                        help="diffusers attention backend of the compiled row, as the service's attention_backend "
                             "(e.g. _native_cudnn); default: the service's (diffusers' native SDPA)")
    parser.add_argument("--cache-dir", default=None, help="inductor/Triton cache directory (the service's "
                        "compile.cache_dir); default: torch's own")
    parser.add_argument("--trace-dir", default=None, help="keep the chrome traces (eager.json, compiled.json) here")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny preset, 64², 2 steps, 1 run, no compile")
    args = parser.parse_args(argv)
    import torch

    if args.smoke:
        args.device = args.device or "cpu"
        args.preset = args.preset or "tiny"
        args.size, args.steps, args.runs = 64, 2, 1
        args.mode = args.mode or "none"
    args.preset = args.preset or "full"
    args.mode = args.mode or "reduce-overhead"
    if args.device is None:
        if not torch.cuda.is_available():
            parser.error("no GPU (torch.cuda.is_available() is False): run on a GPU machine, or --smoke for the "
                         "CPU check of the script")
        args.device = "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False (no GPU or no CUDA build of torch)")
    if args.size % 16:
        parser.error("--size must be a multiple of 16 (8x VAE, 2x2 packing)")
    if args.mode != "none":
        from pydantic import ValidationError

        from deployments.xfuser.speed import CompileSpec

        try:
            CompileSpec(mode=args.mode, regional=args.regional)
        except ValidationError as e:
            parser.error(str(e.errors()[0]["msg"]))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import diffusers
    import torch

    from deployments.xfuser import speed
    from deployments.xfuser.engine import EngineSpec, prepare
    from deployments.xfuser.families import SINGLE

    bench = Bench(args)
    cuda = bench.cuda
    transformer_config = {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in dict(bench.pipe.transformer.config).items() if not k.startswith("_")}
    result: dict[str, Any] = {
        "args": vars(args), "cuda": cuda, "dtype": str(bench.dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(0) if cuda else "CPU",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}, "build_s": bench.build_s,
        "transformer_config": transformer_config, "rows": {},
    }

    def save(name: str | None = None, row: dict[str, Any] | None = None) -> None:
        if name is not None:
            result["rows"][name] = row
            print(json.dumps({"row": name, **{k: v for k, v in (row or {}).items() if k != "profile"}}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    # eager: the bare pipeline
    row = {"levers": "eager", **bench.stages(first_call=True)}
    n_img, n_txt = bench.inputs["hidden_states"].shape[1], bench.inputs["encoder_hidden_states"].shape[1]
    result["shape"] = {"n_img": int(n_img), "n_txt": int(n_txt), "size": args.size, "steps": args.steps}
    flops = analytic_flops(transformer_config, int(n_img), int(n_txt))
    result["flops"] = flops
    with torch.inference_mode():
        result["flops_counted"] = counted_flops(bench.forward)
    row["profile"] = bench.profile("eager", flops)
    save("eager", row)

    # compiled: the service's levers, by the service's code (fused QKV, then torch.compile), in place
    compiled = args.mode != "none"
    spec = EngineSpec.model_validate({
        "family": "flux", "model": {"preset": args.preset}, "backend": "diffusers", "fuse_qkv": not args.no_qkv,
        "use_torch_compile": compiled, "attention_backend": args.attention,
        "compile": {"mode": args.mode if compiled else "default", "regional": args.regional,
                    "cache_dir": args.cache_dir},
    })
    speed.use_compile_cache(spec.compile.cache_dir if compiled else None)
    levers = "+".join(filter(None, [
        "qkv" if spec.fuse_qkv else "", (SHORT[args.mode] + ("+rg" if args.regional else "")) if compiled else "",
        args.attention or ""])) or "eager"
    if not compiled:
        levers += " (no compile)"
    before = dynamo_counts()
    start = time.perf_counter()
    prepare(bench.pipe, spec, SINGLE, 0, 1, torch.device(args.device), bench.dtype)
    prepare_s = time.perf_counter() - start
    row = {"levers": levers, "prepare_s": prepare_s, **bench.stages(first_call=False)}
    after = dynamo_counts()
    row.update({k: after[k] - before.get(k, 0) for k in after})
    row["profile"] = bench.profile("compiled", flops)
    save("compiled", row)

    for name, r in result["rows"].items():
        print("\n" + top_table(f"{name} ({r['levers']})", r["profile"]))
    counted = result["flops_counted"]
    linear_counted = sum(v for k, v in counted.items() if re.search(r"\b(add)?mm\b", k))
    print(f"\nanalytic FLOPs per forward: linear {flops['linear']:.4g} (torch's count of mm/addmm "
          f"{linear_counted:.4g}, modulation included), attention {flops['attention']:.4g}; torch's count by op: "
          + ", ".join(f"{k} {v:.4g}" for k, v in counted.items()))
    print("\n" + tables(result))
    save()


if __name__ == "__main__":
    main()
