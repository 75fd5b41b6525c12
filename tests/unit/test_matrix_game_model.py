"""Matrix-Game 2.0 model pieces on the tiny preset (CPU): causal masking, the rolling KV cache against
recomputing the window, the VAE as a stream, the sampler's published timesteps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from deployments.matrix_game.attention import block_causal_frame_mask
from deployments.matrix_game.configs import MODES, VAE_CONFIGS, Mode, SamplerConfig, preset_spec
from deployments.matrix_game.dit import ActionInputs, CausalWanDiT
from deployments.matrix_game.rope import dit_axis_dims
from deployments.matrix_game.sampler import FewStepSampler
from deployments.matrix_game.vae import ConditionEncoder, StreamingDecoder

H, W = 4, 8  # tiny latent frame (32x64 pixels)
TOKENS = (H // 2) * (W // 2)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two cores shared with other jobs: more intra-op threads only make tiny kernels slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(mode: Mode) -> CausalWanDiT:
    torch.manual_seed(0)
    return CausalWanDiT(preset_spec("tiny").modes[mode].dit).eval()


def _inputs(model: CausalWanDiT, frames: int, seed: int = 1) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    a = model.cfg.action
    return {
        "clean": torch.randn(1, 16, frames, H, W, generator=g),
        "noisy": torch.randn(1, 16, frames, H, W, generator=g),
        "cond": torch.randn(1, 20, frames, H, W, generator=g),
        "clip": torch.randn(1, 5, model.cfg.image_dim, generator=g),
        "keyboard": torch.randn(1, frames, a.window_frames, a.keyboard_dim_in, generator=g),
        "mouse": torch.randn(1, frames, a.window_frames, 2, generator=g) if a.enable_mouse else None,
    }


def _actions(x: dict[str, torch.Tensor | None], frames: slice) -> ActionInputs:
    keyboard, mouse = x["keyboard"], x["mouse"]
    assert keyboard is not None
    return ActionInputs(keyboard[:, frames], mouse[:, frames] if mouse is not None else None)


def test_frame_mask_is_block_causal_with_a_local_window() -> None:
    mask = block_causal_frame_mask(12, block=3, window=6)
    for q in range(12):
        block_end = (q // 3 + 1) * 3
        expected = [block_end - 6 <= k < block_end for k in range(12)]
        assert mask[q].tolist() == expected
    assert not mask[0, 3]  # a block never sees a later block
    assert mask[0, 2] and mask[2, 0]  # inside a block attention is bidirectional


@pytest.mark.parametrize("mode", ["universal", "templerun"])
def test_a_block_never_sees_later_blocks(mode: Mode) -> None:
    model, frames = _model(mode), 9
    x = _inputs(model, frames)
    t = torch.full((1, frames), 500.0)

    def run(latents: torch.Tensor, keyboard: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.forward_sequence(latents, x["cond"], t, x["clip"],  # type: ignore[arg-type]
                                          ActionInputs(keyboard, x["mouse"]))

    base = run(x["noisy"], x["keyboard"])  # type: ignore[arg-type]
    later = x["noisy"].clone()  # type: ignore[union-attr]
    later[:, :, 6:] += 3.0  # change block 2 only
    keyboard = x["keyboard"].clone()  # type: ignore[union-attr]
    keyboard[:, 6:] += 3.0  # and its actions
    changed = run(later, keyboard)
    assert torch.equal(changed[:, :, :6], base[:, :, :6])
    assert not torch.allclose(changed[:, :, 6:], base[:, :, 6:])
    earlier = x["noisy"].clone()  # type: ignore[union-attr]
    earlier[:, :, :3] += 3.0  # block 0 does reach the blocks after it
    assert not torch.allclose(run(earlier, x["keyboard"])[:, :, 3:6], base[:, :, 3:6])  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_gives_the_output_of_recomputing_the_window(mode: Mode) -> None:
    """Streaming block by block (noisy block, then its clean context pass) equals one masked pass over
    [clean earlier blocks, noisy current block]: the rolling caches hold exactly the window's keys."""
    model, blocks = _model(mode), 4  # 4 blocks: the 6- and 4-frame windows both roll over
    frames = 3 * blocks
    x = _inputs(model, frames)
    clean, noisy, cond, clip = x["clean"], x["noisy"], x["cond"], x["clip"]
    assert clean is not None and noisy is not None and cond is not None and clip is not None
    t_noisy = 700.0
    with torch.no_grad():
        stream = model.new_stream(clip, TOKENS)
        for b in range(blocks):
            now = slice(3 * b, 3 * b + 3)
            stream.begin_block()
            assert stream.start_frame == 3 * b
            assert stream.valid_frames == min(model.cfg.local_attn_size, 3 * (b + 1))
            streamed = model.forward_block(noisy[:, :, now], cond[:, :, now], torch.tensor([t_noisy]),
                                           _actions(x, now), stream)
            model.forward_block(clean[:, :, now], cond[:, :, now], torch.tensor([0.0]), _actions(x, now), stream)

            upto = slice(0, 3 * b + 3)
            latents = torch.cat([clean[:, :, : 3 * b], noisy[:, :, now]], dim=2)
            t = torch.tensor([[0.0] * (3 * b) + [t_noisy] * 3])
            recomputed = model.forward_sequence(latents, cond[:, :, upto], t, clip, _actions(x, upto))
            torch.testing.assert_close(streamed, recomputed[:, :, now], rtol=1e-4, atol=1e-5)


def test_stream_cache_rolls_by_whole_blocks() -> None:
    model = _model("gta_drive")  # window 4 latent frames, blocks of 3
    x = _inputs(model, 3)
    stream = model.new_stream(x["clip"], TOKENS)  # type: ignore[arg-type]
    seen = []
    for _ in range(3):
        stream.begin_block()
        seen.append((stream.start_frame, stream.valid_frames))
    assert seen == [(0, 3), (3, 4), (6, 4)]
    cache = stream.layers[0].self_attn
    assert cache.keys.shape[2] == 4 * TOKENS


def test_dit_rope_split_matches_the_published_one() -> None:
    assert dit_axis_dims(128) == (44, 42, 42)  # Wan 2.1 1.3B head
    assert sum(dit_axis_dims(32)) == 32


def test_sampler_warps_the_published_steps() -> None:
    steps = FewStepSampler(SamplerConfig()).timesteps
    assert steps[0] == 1000.0
    assert steps[1] == pytest.approx(1000 * 5 * 0.666 / (1 + 4 * 0.666))  # sigma 0.666 shifted by 5
    assert steps[2] == pytest.approx(1000 * 5 * 0.333 / (1 + 4 * 0.333))
    templerun = FewStepSampler(SamplerConfig(denoising_steps=(1000, 750, 500, 250))).timesteps
    assert len(templerun) == 4 and templerun[-1] == pytest.approx(625.0)
    s = FewStepSampler(SamplerConfig())
    x_t, flow = torch.randn(2, 3), torch.randn(2, 3)
    x0 = s.to_x0(x_t, flow, 500.0)
    torch.testing.assert_close(x0, x_t - 0.5 * flow)
    torch.testing.assert_close(s.renoise(x0, flow, 250.0), 0.75 * x0 + 0.25 * flow)


@pytest.fixture(scope="module")
def tiny_vae() -> object:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae: Any = AutoencoderKLWan(**VAE_CONFIGS["tiny"])
    return vae.eval()


def _normalise(vae: object, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = vae.config  # type: ignore[attr-defined]
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    return (mu - mean) / std, mean, std


def test_streaming_decode_equals_decoding_the_whole_clip(tiny_vae: object) -> None:
    z = torch.randn(1, 16, 6, H, W)
    _, mean, std = _normalise(tiny_vae, z)
    with torch.no_grad():
        whole = tiny_vae.decode(z * std + mean).sample  # type: ignore[attr-defined]
        decoder = StreamingDecoder(tiny_vae)
        first, second = decoder.decode(z[:, :, :3]), decoder.decode(z[:, :, 3:])
    assert first.shape[2] == 9 and second.shape[2] == 12  # 1 + 4 + 4, then 4 per latent frame
    torch.testing.assert_close(torch.cat([first, second], dim=2), whole, rtol=1e-5, atol=1e-5)


def test_condition_encoder_equals_encoding_image_then_black_frames(tiny_vae: object) -> None:
    image = torch.rand(1, 3, 32, 64) * 2 - 1
    latent_frames = 4
    video = torch.cat([image[:, :, None], torch.zeros(1, 3, 4 * (latent_frames - 1), 32, 64)], dim=2)
    with torch.no_grad():
        expected, _, _ = _normalise(tiny_vae, tiny_vae.encode(video).latent_dist.mode())  # type: ignore[attr-defined]
        encoder = ConditionEncoder(tiny_vae, image)
        first, second = encoder.latents(0, 3), encoder.latents(3, 1)
    assert first.shape == (1, 20, 3, H, W)
    assert first[:, :4, 0].eq(1).all() and first[:, :4, 1:].eq(0).all() and second[:, :4].eq(0).all()
    torch.testing.assert_close(torch.cat([first[:, 4:], second[:, 4:]], dim=2), expected, rtol=1e-5, atol=1e-5)


def test_condition_encoder_reuses_the_settled_latent(tiny_vae: object) -> None:
    encoder = ConditionEncoder(tiny_vae, torch.zeros(1, 3, 32, 64), max_encoded_frames=5)
    with torch.no_grad():
        late = encoder.latents(20, 2)
    assert encoder.settled and encoder.encoded_frames <= 5
    torch.testing.assert_close(late[:, :, 0], late[:, :, 1])
