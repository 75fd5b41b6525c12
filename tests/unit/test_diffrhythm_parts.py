"""DiffRhythm's other parts: the TorchScript VAE and its windowed decode, MuQ-MuLan (published
layout, key handling, mel front end), reference audio decoding, and the negative style."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from deployments.diffrhythm import audio_io, mulan, muq, negative_style, vae, weights
from serve_app.models.source import ModelSource


@pytest.fixture(scope="module")
def tiny_vae() -> Any:
    return weights.load_vae(ModelSource(preset="tiny", seed=3), "cpu", torch.float32)


def test_vae_preset_is_torchscript_and_round_trips_through_the_published_loader(tiny_vae: Any, tmp_path: Path) -> None:
    assert isinstance(tiny_vae, torch.jit.ScriptModule)
    latents = torch.randn(1, 64, 5)
    audio = tiny_vae.decode_export(latents)
    assert audio.shape == (1, 2, 5 * 2048)  # 44.1 kHz stereo, 2048 samples per latent frame
    assert tiny_vae.encode_export(audio).shape == (1, 128, 5)  # mean and scale of 64 channels
    torch.jit.save(tiny_vae, str(tmp_path / "vae_model.pt"))
    loaded = weights.load_vae(ModelSource(id=str(tmp_path)), "cpu", torch.float32)
    assert torch.equal(loaded.decode_export(latents), audio)
    again = weights.load_vae(ModelSource(preset="tiny", seed=3), "cpu", torch.float32)
    assert torch.equal(again.decode_export(latents), audio)  # presets are seeded


@pytest.mark.parametrize(("total", "chunk", "overlap"), [(6136, 128, 32), (2048, 128, 32), (130, 128, 32),
                                                          (100, 128, 32), (40, 16, 4)])
def test_decode_windows_tile_the_song_exactly_once(total: int, chunk: int, overlap: int) -> None:
    covered: list[int] = []
    for start, stop, keep_from, keep_to in vae.windows(total, chunk, overlap):
        assert stop - start <= chunk and start <= keep_from < keep_to <= stop
        covered += range(keep_from, keep_to)
    assert covered == list(range(total))


class Repeat(torch.nn.Module):
    """A position-wise stand-in for the VAE: each latent frame becomes 2048 samples of its mean."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # decode reads the device and dtype off a parameter

    def decode_export(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.mean(1, keepdim=True).repeat_interleave(2048, -1).expand(-1, 2, -1)


def test_windowed_decode_equals_a_whole_decode_for_a_local_decoder() -> None:
    model = Repeat()
    latents = torch.randn(1, 64, 300)
    whole = model.decode_export(latents)
    assert torch.allclose(vae.decode(model, latents, chunk=128, overlap=32), whole, rtol=0, atol=1e-6)
    assert not torch.allclose(vae.decode(model, latents.roll(1, -1), chunk=128, overlap=32), whole, atol=1e-3)


def test_windowed_decode_of_the_tiny_vae_is_close_to_a_whole_decode(tiny_vae: Any) -> None:
    latents = torch.randn(1, 64, 40)
    whole = tiny_vae.decode_export(latents)
    chunked = vae.decode(tiny_vae, latents, chunk=16, overlap=8)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().mean() < 0.1 * whole.abs().mean()


@pytest.fixture(scope="module")
def tiny_mulan() -> mulan.MuQMuLan:
    return weights.load_mulan(ModelSource(preset="tiny"), "cpu", torch.float32)


def test_mulan_embeds_text_and_audio_as_unit_512_vectors(tiny_mulan: mulan.MuQMuLan) -> None:
    text = tiny_mulan.embed_text(["pop, upbeat", "jazz piano"])
    clip = torch.from_numpy(np.random.default_rng(0).standard_normal(240_000).astype(np.float32) * 0.1)
    audio = tiny_mulan.embed_audio(clip)
    assert text.shape == (2, 512) and audio.shape == (1, 512)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2)) and torch.allclose(audio.norm(), torch.tensor(1.0))
    assert not torch.allclose(text[0], text[1])


def test_mulan_round_trips_through_the_published_layout(tiny_mulan: mulan.MuQMuLan, tmp_path: Path) -> None:
    weights.save_mulan(tiny_mulan, muq.MUQ_TINY, str(tmp_path))
    loaded = weights.load_mulan(ModelSource(id=str(tmp_path)), "cpu", torch.float32,
                                audio_config=str(tmp_path / "muq"), text_model=str(tmp_path / "text"))
    assert torch.equal(loaded.embed_text(["rock ballad"]), tiny_mulan.embed_text(["rock ballad"]))
    clip = torch.linspace(-0.5, 0.5, 240_000)
    assert torch.allclose(loaded.embed_audio(clip), tiny_mulan.embed_audio(clip), atol=1e-6)


def test_mulan_loading_skips_training_keys_and_renames_old_weight_norm(tiny_mulan: mulan.MuQMuLan) -> None:
    state = {k: v.clone() for k, v in tiny_mulan.state_dict().items()}
    for k in [k for k in state if "parametrizations.weight.original" in k]:
        state[k.replace(".parametrizations.weight.original0", ".weight_g")
              .replace(".parametrizations.weight.original1", ".weight_v")] = state.pop(k)
    state["mulan.contrast.temperatures"] = torch.ones(1)
    state["mulan.audio.model.model.linear.weight"] = torch.ones(8, 32)
    state["mulan.audio.model.model.cls_token"] = torch.ones(32)
    state.pop("mulan.audio.model.model.conformer.embed_positions.inv_freq", None)
    weights.load_mulan_state(tiny_mulan, state)
    del state["mulan.text_to_latents.weight"]
    with pytest.raises(ValueError, match=r"missing.*text_to_latents"):
        weights.load_mulan_state(tiny_mulan, state)


def test_full_mulan_is_muq_mulan_large_sized() -> None:
    from transformers import XLMRobertaConfig

    config, muq_config, xlmr = mulan.PRESETS["full"]
    with torch.device("meta"):
        model = mulan.MuLanModel(config, muq_config, XLMRobertaConfig(**xlmr))
    total = sum(p.numel() for p in model.parameters())
    assert 600e6 < total < 720e6  # MuQ-MuLan-large is ~700M (MuQ-large ~300M + XLM-R base 278M + heads)
    assert len(model.text.transformer.layers) == 8 and len(model.audio.transformer.layers) == 0


def test_mel_front_end_puts_a_tone_in_its_mel_band() -> None:
    backbone = muq.MuQBackbone(muq.MUQ_TINY)
    t = torch.arange(24_000) / 24_000
    mel = backbone.melspec_db(torch.sin(2 * math.pi * 1000 * t)[None])
    assert mel.shape == (1, 128, 100)  # 24000 / 240 + 1 frames, the last one dropped
    peak = int(mel[0, :, 50].argmax())
    centres = np.linspace(0, 2595 * np.log10(1 + 12000 / 700), 130)[1:-1]  # HTK mel band centres
    assert abs(peak - int(np.argmin(np.abs(700 * (10 ** (centres / 2595) - 1) - 1000)))) <= 1


def wav(seconds: float, rate: int = 44_100, channels: int = 2) -> bytes:
    ramp = np.linspace(0, seconds, int(seconds * rate), endpoint=False, dtype=np.float32) / 100  # value = t / 100
    buf = io.BytesIO()
    soundfile.write(buf, np.repeat(ramp[:, None], channels, 1), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_reference_clip_is_the_middle_10_seconds_at_24khz() -> None:
    samples, rate = audio_io.decode(wav(31.5))
    clip = audio_io.middle_clip(samples, rate)
    assert clip.shape == (240_000,) and clip.dtype == np.float32
    # 31.5 s -> the published start, floor(31.5) // 2 - 5 = 10 s
    assert abs(clip[1000] * 100 - (10 + 1000 / 24_000)) < 1e-3 and abs(clip[-1000] * 100 - (20 - 1000 / 24_000)) < 1e-3


def test_short_or_broken_audio_is_undecodable() -> None:
    with pytest.raises(audio_io.UndecodableAudio, match="at least 10"):
        audio_io.middle_clip(*audio_io.decode(wav(4.0)))
    with pytest.raises(audio_io.UndecodableAudio):
        audio_io.decode(b"RIFF not really a wav file")
    with pytest.raises(audio_io.UndecodableAudio):
        audio_io.decode(b"")


def test_wav_output_is_16_bit_stereo_and_peak_normalised() -> None:
    audio = np.stack([np.linspace(-0.25, 0.5, 4410), np.zeros(4410)])
    data, rate = soundfile.read(io.BytesIO(audio_io.wav_bytes(audio, 44_100)), always_2d=True)
    info = soundfile.info(io.BytesIO(audio_io.wav_bytes(audio, 44_100)))
    assert (rate, info.channels, info.subtype, data.shape) == (44_100, 2, "PCM_16", (4410, 2))
    assert abs(data.max() - 1.0) < 1e-3


def test_negative_style_is_the_published_unit_vector() -> None:
    style = negative_style.load()
    assert style.shape == (1, 512) and style.dtype == torch.float32
    assert abs(float(style.norm()) - 1.0) < 1e-5
    assert torch.allclose(style[0, :3], torch.tensor([-0.04636734, -0.00029207, -0.07789268]))
