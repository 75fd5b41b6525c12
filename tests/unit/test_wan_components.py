"""Wan 2.1 parts (components/wan.py) and MP4 encoding: the published sizes on the meta device, the
samplers, the prod loader on a saved tiny pipeline, the context-parallel checks, the MP4 format."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from components import context_parallel, wan
from deployments.wan.engine import EngineSpec, WanEngine, WanJob
from deployments.wan.video import Mp4Options, encode_mp4
from serve_app.errors import RequestCancelled
from serve_app.models.source import ModelSource

JOB = WanJob(prompt="a photo of a cat", negative_prompt=wan.DEFAULT_NEGATIVE_PROMPT, width=64, height=32,
             num_frames=9, num_inference_steps=2, guidance_scale=5.0, shift=5.0, sampler="unipc", seed=3)


def count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def decode_mp4(data: bytes) -> tuple[Any, list[np.ndarray]]:
    import av

    container = av.open(io.BytesIO(data))
    stream = container.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return stream, frames


def test_full_presets_have_the_published_sizes() -> None:
    """On the meta device: no memory, real shapes. Wan 2.1 T2V 1.3B's transformer is 1.42 B
    parameters, UMT5-XXL's encoder 5.68 B, Wan 2.1's VAE 127 M."""
    transformer = wan.build_transformer("full", "meta", torch.bfloat16)
    _, text_encoder = wan.build_text_encoder("full", "meta", torch.bfloat16)
    vae = wan.build_vae("full", "meta", torch.float32)
    assert count(transformer) == 1_418_996_800
    assert count(text_encoder) == 5_680_910_336
    assert count(vae) == 126_892_531
    assert transformer.config.num_attention_heads == wan.HEADS["full"] == 12
    assert text_encoder.get_input_embeddings().num_embeddings == 256384


@pytest.fixture(scope="module")
def engine() -> WanEngine:
    return WanEngine(EngineSpec(model=ModelSource(preset="tiny")), "cpu")


def test_samplers_map_to_flow_schedulers_at_the_shift() -> None:
    unipc = wan.make_scheduler(wan.SCHEDULER, "unipc", 5.0)
    dpm = wan.make_scheduler(wan.SCHEDULER, "dpm++", 7.0)
    assert type(unipc).__name__ == "UniPCMultistepScheduler" and unipc.config.flow_shift == 5.0
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler" and dpm.config.flow_shift == 7.0
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    for s in (unipc, dpm):
        assert s.config.prediction_type == "flow_prediction" and s.config.use_flow_sigmas
    with pytest.raises(ValueError, match="sampler"):
        wan.make_scheduler(wan.SCHEDULER, "euler", 5.0)  # type: ignore[arg-type]


def test_both_samplers_run_and_differ_and_the_seed_reproduces(engine: WanEngine) -> None:
    a = engine.generate(JOB)
    b = engine.generate(JOB)
    c = engine.generate(JOB.model_copy(update={"sampler": "dpm++"}))
    d = engine.generate(JOB.model_copy(update={"seed": 4}))
    assert a is not None and a.shape == (9, 32, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_decode_matches_the_pipelines_own_output(engine: WanEngine) -> None:
    pipe = engine.pipe
    pipe.scheduler = wan.make_scheduler(engine.base_scheduler, "unipc", JOB.shift)
    ref = pipe(prompt=JOB.prompt, negative_prompt=JOB.negative_prompt, width=64, height=32, num_frames=9,
               num_inference_steps=2, generator=torch.Generator().manual_seed(JOB.seed), output_type="np").frames[0]
    ours = engine.generate(JOB)
    assert np.abs(ours.astype(int) - (ref * 255).round().astype(int)).max() <= 1


def test_fused_qkv_projections_make_the_same_video(engine: WanEngine) -> None:
    """`fuse_qkv`: one GEMM with the concatenated weights, the same arithmetic (the same seeded
    weights; float32 on CPU may round a GEMM's sum differently: within 1/255)."""
    fused = WanEngine(EngineSpec(model=ModelSource(preset="tiny"), fuse_qkv=True), "cpu")
    attention = fused.pipe.transformer.blocks[0]
    assert attention.attn1.fused_projections and hasattr(attention.attn1, "to_qkv")
    assert attention.attn2.fused_projections and hasattr(attention.attn2, "to_kv")
    assert not engine.pipe.transformer.blocks[0].attn1.fused_projections
    ours, ref = fused.generate(JOB), engine.generate(JOB)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(fused.generate(JOB), ours)


def test_a_step_hook_can_stop_the_run(engine: WanEngine) -> None:
    seen: list[tuple[int, int]] = []

    def hook(step: int, total: int) -> None:
        seen.append((step, total))
        if step == 1:
            raise RequestCancelled()

    with pytest.raises(RequestCancelled):
        engine.generate(JOB.model_copy(update={"num_inference_steps": 4}), hook)
    assert seen == [(1, 4)]


def test_save_then_load_through_the_prod_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                engine: WanEngine) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine.pipe.save_pretrained(tmp_path)
    assert {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"} <= {p.name for p in tmp_path.iterdir()}
    loaded = WanEngine(EngineSpec(model=ModelSource(id=str(tmp_path))), "cpu")
    assert np.array_equal(loaded.generate(JOB), engine.generate(JOB))
    bf16 = wan.pipeline(ModelSource(id=str(tmp_path)), "cpu", torch.bfloat16)
    assert bf16.transformer.dtype == torch.bfloat16 and bf16.text_encoder.dtype == torch.bfloat16
    assert bf16.vae.dtype == torch.float32  # diffusers' advice for Wan's VAE


def test_context_parallel_layouts_are_checked() -> None:
    wan.check_context_parallel(12, 4, 1)
    wan.check_context_parallel(12, 1, 8)  # ring does not split heads
    with pytest.raises(ValueError, match=r"does not divide the model's 12 attention heads; use one of \[1, 2, 3, 4, 6"):
        wan.check_context_parallel(12, 5, 1)
    with pytest.raises(ValueError, match="at least 1"):
        wan.check_context_parallel(12, 0, 1)


def test_cpu_device_count_is_reported_as_one_only_while_resolving() -> None:
    original = torch.accelerator.device_count
    with context_parallel.one_device_when_none():
        assert torch.accelerator.device_count() == max(1, original())
    assert torch.accelerator.device_count is original


def test_mp4_is_h264_yuv420p_with_every_frame_at_the_fps() -> None:
    y, x = np.mgrid[0:48, 0:80]
    picture = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth: survives 4:2:0
    frames = np.repeat(picture[None], 17, axis=0)
    frames[:, :, :8] = np.arange(17, dtype=np.uint8)[:, None, None, None] * 15  # content that changes over time
    data = encode_mp4(frames, 16, Mp4Options(crf=10, preset="ultrafast"))
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # index first: plays while loading
    stream, decoded = decode_mp4(data)
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert (stream.width, stream.height, stream.average_rate) == (80, 48, 16)
    assert len(decoded) == 17 and decoded[0].shape == (48, 80, 3)
    for i in (0, 5, 16):  # lossy, but the same pictures in the same order
        assert np.abs(decoded[i].astype(int) - frames[i].astype(int)).mean() < 3


def test_mp4_lookahead_reaches_x264() -> None:
    """x264 writes its settings into the stream (an SEI message): the option is the one it used."""
    frames = np.zeros((9, 32, 64, 3), dtype=np.uint8)
    assert b"rc_lookahead=10 " in encode_mp4(frames, 16)  # the service's default
    assert b"rc_lookahead=3 " in encode_mp4(frames, 16, Mp4Options(lookahead=3))
    assert b"rc_lookahead=40 " in encode_mp4(frames, 16, Mp4Options(lookahead=None))  # medium's own

@pytest.mark.parametrize("bad", [np.zeros((3, 31, 64, 3), np.uint8), np.zeros((3, 32, 64, 3), np.float32),
                                 np.zeros((32, 64, 3), np.uint8)])
def test_mp4_rejects_what_yuv420p_cannot_hold(bad: Any) -> None:
    with pytest.raises(ValueError):
        encode_mp4(bad, 16)


def test_decoding_in_parts_overlapped_with_the_encoder_gives_the_same_video(engine: WanEngine) -> None:
    """`finish` decodes one latent frame at a time and encodes each part on a thread while the next
    decodes: the parts are exactly `decode`'s frames (1, then 4 per latent frame), and the MP4 is
    byte for byte the one encoded from the whole video."""
    from deployments.wan.worker import finish

    latents = engine.denoise(JOB)
    whole = engine.decode(latents)
    parts = list(engine.decode_chunks(latents))
    assert [len(p) for p in parts] == [1, 4, 4]  # 9 frames from 3 latent frames
    assert np.array_equal(np.concatenate(parts), whole)
    options = Mp4Options(crf=0, preset="ultrafast")
    out = finish(engine, latents, 0.0, 16, options)
    assert out["video"] == encode_mp4(whole, 16, options)
    assert (out["num_frames"], out["height"], out["width"]) == (9, 32, 64)
    assert out["inference_s"] > 0 and out["encode_s"] >= 0


def test_the_mp4_writer_takes_one_size_and_needs_frames() -> None:
    from deployments.wan.video import Mp4Writer

    with Mp4Writer(16) as writer:
        writer.write(np.zeros((2, 32, 64, 3), np.uint8))
        with pytest.raises(ValueError, match="frames of 32x32 in a 64x32 video"):
            writer.write(np.zeros((1, 32, 32, 3), np.uint8))
    with Mp4Writer(16) as empty, pytest.raises(ValueError, match="no frames"):
        empty.finish()
