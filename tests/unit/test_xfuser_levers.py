"""The xFuser service's speed levers and native backend in the config (no GPU), and the benchmark's
case syntax: every case the device command runs is a config the service accepts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.xfuser.families import FAMILIES, Layout, valid_layouts
from deployments.xfuser.native import DIFFUSERS_ATTENTION
from deployments.xfuser.service import XFuserConfig
from deployments.xfuser.speed import CompileSpec, repeated_blocks

FLUX = {"id": "black-forest-labs/FLUX.1-dev"}
GPU = {"use_gpu": True}
BENCH = Path(__file__).resolve().parents[2] / "bench" / "xfuser_latency.py"


def config(**kw: Any) -> XFuserConfig:
    return XFuserConfig.model_validate({"resources": GPU, **kw})


def bench() -> Any:
    spec = importlib.util.spec_from_file_location("xfuser_latency", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["xfuser_latency"] = module
    spec.loader.exec_module(module)
    return module


def test_native_backend_is_sequence_parallel_flux_only() -> None:
    cfg = config(model=FLUX, backend="native", parallel={"ulysses_degree": 2})
    assert cfg.layout() == Layout(pipefusion_parallel_degree=1, ulysses_degree=2, ring_degree=1,
                                  use_cfg_parallel=False)
    assert cfg.engine_spec().backend == "native"
    assert config(model=FLUX, backend="native", world_size=4).layout().ulysses == 4  # automatic: Ulysses first
    with pytest.raises(ValidationError, match="no PipeFusion, no CFG parallel"):
        config(model=FLUX, backend="native", parallel={"pipefusion_parallel_degree": 2})
    with pytest.raises(ValidationError, match="has no plan for sd3"):
        config(backend="native", parallel={"ulysses_degree": 2})
    assert [lay.describe() for lay in valid_layouts(FAMILIES["flux"], 4, 24, native=True)] == [
        "pipefusion=1 ulysses=4 ring=1 cfg=off", "pipefusion=1 ulysses=2 ring=2 cfg=off",
        "pipefusion=1 ulysses=1 ring=4 cfg=off"]


def test_native_attention_and_ring() -> None:
    config(model=FLUX, backend="native", parallel={"ring_degree": 2})  # default on GPUs: _native_cudnn
    config(model=FLUX, backend="native", parallel={"ring_degree": 2}, attention_backend="_native_flash")
    with pytest.raises(ValidationError, match="needs an attention backend that returns the log-sum-exp"):
        config(model=FLUX, backend="native", parallel={"ring_degree": 2}, attention_backend="native")
    with pytest.raises(ValidationError, match="is not one of diffusers' backends"):
        config(model=FLUX, backend="native", parallel={"ulysses_degree": 2}, attention_backend="CUDNN")
    # on CPU (gloo) native runs Ulysses with plain SDPA, in float32: the CPU test's configuration
    cpu = XFuserConfig.model_validate({"model": {"preset": "tiny"}, "family": "flux", "backend": "native",
                                       "dtype": "float32", "resources": {"use_gpu": False},
                                       "default_height": 256, "default_width": 256,
                                       "warmup": {"height": 256, "width": 256}})
    assert cpu.layout().ulysses == 2
    with pytest.raises(ValidationError, match="ring_degree > 1 needs GPUs"):
        XFuserConfig.model_validate({"model": {"preset": "tiny"}, "family": "flux", "backend": "native",
                                     "parallel": {"ring_degree": 2}, "resources": {"use_gpu": False},
                                     "attention_backend": "_native_cudnn"})


def test_diffusers_attention_names_exist_in_diffusers() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert set(DIFFUSERS_ATTENTION) <= {b.value for b in AttentionBackendName}


def test_attention_backend_is_checked_per_backend() -> None:
    assert config(model=FLUX, attention_backend="cudnn").attention_backend == "cudnn"  # xfuser upper-cases
    with pytest.raises(ValidationError, match="is not an xfuser backend"):
        config(model=FLUX, attention_backend="_native_cudnn")
    with pytest.raises(ValidationError, match="is not one of diffusers' backends"):
        config(model=FLUX, backend="diffusers", world_size=1, attention_backend="CUDNN")


def test_compile_and_fused_qkv_options() -> None:
    cfg = config(model=FLUX, use_torch_compile=True, fuse_qkv=True,
                 compile={"mode": "max-autotune-no-cudagraphs", "regional": True, "cache_dir": "/tmp/cache"})
    spec = cfg.engine_spec()
    assert spec.fuse_qkv and spec.compile == CompileSpec(mode="max-autotune-no-cudagraphs", regional=True,
                                                         cache_dir="/tmp/cache")
    assert config(model=FLUX, use_torch_compile=True, compile={"mode": "reduce-overhead"}).compile.mode == \
        "reduce-overhead"  # CUDA graphs of the whole transformer
    with pytest.raises(ValidationError, match=r"compile.regional with mode reduce-overhead \(CUDA graphs\) is not"):
        config(model=FLUX, use_torch_compile=True, compile={"mode": "reduce-overhead", "regional": True})
    with pytest.raises(ValidationError, match="`compile` settings need use_torch_compile: true"):
        config(model=FLUX, compile={"regional": True})
    with pytest.raises(ValidationError, match="mode"):
        config(model=FLUX, use_torch_compile=True, compile={"mode": "fastest"})
    with pytest.raises(ValidationError, match="fuse_qkv with sd3 needs backend diffusers"):
        config(fuse_qkv=True)
    config(backend="diffusers", world_size=1, fuse_qkv=True)


def test_compile_cache_dir_points_inductor_and_triton_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.xfuser.speed import use_compile_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.delenv(name, raising=False)
    use_compile_cache(str(tmp_path / "cache"))
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton")
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1" and (tmp_path / "cache").is_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(tmp_path / "cache")  # inductor reads it at compile time


def test_repeated_blocks_of_every_family() -> None:
    import torch

    from deployments.xfuser.presets import build_pipeline

    expected = {"sd3": 4, "flux": 4, "pixart_sigma": 4, "hunyuandit": 4}
    for family, count in expected.items():
        torch.manual_seed(0)
        pipe = build_pipeline(family, "tiny", "meta", torch.float32)
        assert len(repeated_blocks(pipe.transformer)) == count, family


def test_bench_cases_are_service_configs() -> None:
    import argparse

    module = bench()
    args = argparse.Namespace(size=1024, cache_dir="/tmp/c")
    for text, backend, levers in (
        ("1:diffusers@c", "diffusers", "c"),
        ("1:diffusers@ro+qkv", "diffusers", "ro+qkv"),
        ("2:u2@c", "xfuser", "c"),
        ("2:native+u2@ma+rg+qkv+attn=_native_cudnn", "native", "ma+rg+qkv+_native_cudnn"),
        ("sd3/2:cfg@ro", "xfuser", "ro"),
        ("hunyuandit/2:u2", "xfuser", "eager"),
    ):
        case = module.parse_case(text, "flux")
        assert case["backend"] == backend and module.levers(case) == levers, text
        cfg = XFuserConfig.model_validate(module.service_config(case, args))
        assert cfg.backend == backend and cfg.use_torch_compile == case["compile"]
        if case["compile"]:
            assert cfg.compile.cache_dir == "/tmp/c"
    with pytest.raises(ValueError, match="unknown flag"):
        module.parse_case("1:diffusers@turbo", "flux")
