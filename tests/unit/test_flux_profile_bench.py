"""bench/flux_profile.py: its `--smoke` run (tiny preset, CPU) end to end, so the GPU run's script can't rot,
the analytic FLOP count against a hand computation, and the kernel categories on a GPU-shaped trace."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "flux_profile.py"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("flux_profile", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_writes_both_rows_with_consistent_profiles(tmp_path: Path) -> None:
    out = tmp_path / "flux_profile.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {"eager", "compiled"}
    for row in rows.values():
        assert all(row[k] > 0 for k in ("total_s", "encode_s", "denoise_s", "step_s", "decode_s", "warmup_s"))
        p = row["profile"]
        assert p["wall_ms"] > 0 and p["kernel_ms"] > 0 and p["kernels"] > 0 and p["top"]
        assert abs(p["gemm_ms"] + p["attention_ms"] + p["other_ms"] - p["kernel_ms"]) < 1e-6 * p["kernel_ms"]
        assert p["gemm_ms"] > 0  # aten::addmm on CPU
        assert abs(p["idle_ms"] - (p["wall_ms"] - p["busy_ms"])) < 1e-9
    assert rows["compiled"]["levers"] == "qkv (no compile)"

    # the tiny transformer (deployments/xfuser/presets.py FLUX_TINY_TRANSFORMER): 2 double + 2 single blocks,
    # 4 heads x 16 = D 64, 16 latent channels, T5 width 32, patch 1; 64² -> (64 / 8 / 2)² = 16 image tokens,
    # the T5 tokenizer pads to 512
    cfg = result["transformer_config"]
    assert (cfg["num_layers"], cfg["num_single_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"],
            cfg["in_channels"], cfg["joint_attention_dim"], cfg["patch_size"]) == (2, 2, 4, 16, 16, 32, 1)
    assert result["shape"]["n_img"] == 16 and result["shape"]["n_txt"] == 512
    d, s = 64, 16 + 512
    blocks = 4 * s * 2 * (3 * d * d + d * d + 2 * 4 * d * d)  # q, k, v, out and the 4x MLP: 12·D² MACs a token
    embed_out = 2 * 16 * 16 * d + 2 * 512 * 32 * d + 2 * 16 * d * 16  # x_embedder, context_embedder, proj_out
    assert result["flops"]["linear"] == blocks + embed_out == 209_780_736
    assert result["flops"]["attention"] == 4 * 4 * s * s * d == 285_474_816
    # torch's own count of the eager forward's matmuls: the same plus the modulation linears (one vector each)
    counted = sum(v for k, v in result["flops_counted"].items() if "mm" in k)
    assert blocks + embed_out <= counted < 1.01 * (blocks + embed_out)
    assert "GEMM TF/s" in run.stdout and run.stdout.rstrip().splitlines()[-1].startswith("compiled")


def test_kernel_categories_and_a_gpu_trace() -> None:
    fp = load_script()
    names = {
        "nvjet_tst_256x128_64x4_2x1_v_bz_coopB_TNT": "gemm",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64": "gemm",
        "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm>(Params)": "gemm",
        "triton_tem_fused_addmm_gelu_3": "gemm",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, cutlass::bfloat16_t>>": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3": "attention",
        "fmha_cutlassF_bf16_aligned_64x128_rf_sm80": "attention",
        "triton_poi_fused_add_mul_native_layer_norm_0": "other",
        "triton_red_fused__to_copy_mean_pow_rsqrt_1": "other",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>": "other",
        "Memcpy DtoD (Device -> Device)": "other",
    }
    assert {n: fp.category(n) for n in names} == names

    def ev(cat: str, name: str, ts: float, dur: float) -> dict[str, Any]:
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 7}

    trace = [
        ev("kernel", "nvjet_tst_256x128", 0, 100), ev("kernel", "nvjet_tst_256x128", 100, 100),
        ev("kernel", "pytorch_flash::flash_fwd_kernel", 250, 50), ev("kernel", "triton_poi_fused_0", 320, 10),
        ev("gpu_memcpy", "Memcpy DtoD (Device -> Device)", 330, 5),
        ev("cuda_runtime", "cudaLaunchKernel", 0, 1), ev("cuda_driver", "cuLaunchKernel", 2, 1),
        ev("cuda_runtime", "cudaGraphLaunch", 3, 1), ev("cuda_runtime", "cudaMemcpyAsync", 4, 1),
        ev("cpu_op", "aten::mm", 0, 3),
    ]
    p = fp.summarize_trace(trace, cuda=True)
    assert (p["gemm_ms"], p["attention_ms"], p["other_ms"]) == pytest.approx((0.2, 0.05, 0.015))
    assert (p["kernel_ms"], p["busy_ms"], p["kernels"]) == pytest.approx((0.265, 0.265, 5))
    assert (p["cpu_launches"], p["graph_launches"]) == (2, 1)
    assert p["top"][0] == {"name": "nvjet_tst_256x128", "category": "gemm", "count": 2, "ms": pytest.approx(0.2)}

    # CPU: nested ops count once (self time)
    cpu = [ev("cpu_op", "aten::linear", 0, 10), ev("cpu_op", "aten::addmm", 1, 8), ev("cpu_op", "aten::gelu", 12, 3)]
    p = fp.summarize_trace(cpu, cuda=False)
    assert (p["gemm_ms"], p["other_ms"], p["kernel_ms"]) == pytest.approx((0.008, 0.005, 0.013))
