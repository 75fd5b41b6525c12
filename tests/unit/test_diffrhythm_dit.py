"""DiffRhythm's DiT: key compatibility with the published `cfm_model.pt`, bidirectional blocks, the
save -> load round trip through the prod loader, and the flow-matching sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deployments.diffrhythm import cfm, dit, weights
from serve_app.models.source import ModelSource


def published_keys(max_frames: int) -> dict[str, tuple[int, ...]]:
    """The `cfm_model.pt` state dict of DiffRhythm 1.2 (`diffrhythm-1b.json`: dim 2048, depth 16,
    ff_mult 4, text_dim 512, conv_layers 4, mel_dim 64, 363 phones), written out from the
    published architecture: names under `transformer.`, shapes as stored."""
    keys: dict[str, tuple[int, ...]] = {}
    embeds = ["time_embed", "start_time_embed"] + (["duration_time_embed"] if max_frames == 6144 else [])
    for name in embeds:
        keys |= {f"{name}.time_mlp.0.weight": (512, 256), f"{name}.time_mlp.0.bias": (512,),
                 f"{name}.time_mlp.2.weight": (512, 512), f"{name}.time_mlp.2.bias": (512,)}
    keys["text_embed.text_embed.weight"] = (364, 512)
    for i in range(4):
        p = f"text_embed.text_blocks.{i}."
        keys |= {p + "dwconv.weight": (512, 1, 7), p + "dwconv.bias": (512,), p + "norm.weight": (512,),
                 p + "norm.bias": (512,), p + "pwconv1.weight": (1024, 512), p + "pwconv1.bias": (1024,),
                 p + "grn.gamma": (1, 1, 1024), p + "grn.beta": (1, 1, 1024), p + "pwconv2.weight": (512, 1024),
                 p + "pwconv2.bias": (512,)}
    keys |= {"input_embed.proj.weight": (2048, 64 * 2 + 512 + 512 * 2), "input_embed.proj.bias": (2048,)}
    for i in (0, 2):
        keys |= {f"input_embed.conv_pos_embed.conv1d.{i}.weight": (2048, 128, 31),
                 f"input_embed.conv_pos_embed.conv1d.{i}.bias": (2048,)}
    for i in range(16):
        p = f"transformer_blocks.{i}."
        keys |= {p + f"self_attn.{n}_proj.weight": (2048, 2048) for n in "qkvo"}
        keys |= {p + "mlp.gate_proj.weight": (8192, 2048), p + "mlp.up_proj.weight": (8192, 2048),
                 p + "mlp.down_proj.weight": (2048, 8192), p + "input_layernorm.weight": (2048,),
                 p + "post_attention_layernorm.weight": (2048,)}
    for i in range(8):
        keys |= {f"text_fusion_linears.{i}.0.weight": (2048, 512), f"text_fusion_linears.{i}.0.bias": (2048,)}
    keys |= {"norm_out.linear.weight": (4096, 512), "norm_out.linear.bias": (4096,), "proj_out.weight": (64, 2048),
             "proj_out.bias": (64,)}
    return keys


def meta_state(keys: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta", dtype=torch.float16) for k, shape in keys.items()}


@pytest.mark.parametrize("max_frames", [6144, 2048])
def test_published_key_list_loads_with_no_missing_or_unexpected_keys(max_frames: int) -> None:
    state = meta_state(published_keys(max_frames))
    state["rotary_emb.inv_freq"] = torch.empty(32, device="meta")  # a buffer some versions saved: recomputed
    config = cfm.config_for(state)
    assert config == dit.DiTConfig(max_frames=max_frames)  # the published config, read back from the shapes
    with torch.device("meta"):
        model = dit.DiT(config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published_keys(max_frames)
    cfm.load_state(model, state)


def test_full_preset_is_the_published_11b_model() -> None:
    with torch.device("meta"):
        model = dit.DiT(dit.FULL)
    assert sum(p.numel() for p in model.parameters()) == 1_109_709_888
    assert model.transformer_blocks[0].self_attn.head_dim == 64  # type: ignore[union-attr]


def test_load_state_names_what_does_not_match() -> None:
    with torch.device("meta"):
        model = dit.DiT(dit.FULL)
    state = meta_state(published_keys(6144))
    del state["proj_out.bias"]
    state["transformer_blocks.0.extra.weight"] = torch.empty(1, device="meta")
    state["input_embed.proj.weight"] = torch.empty(2048, 1000, device="meta")
    with pytest.raises(ValueError, match=r"missing \['proj_out.bias'\].*unexpected.*extra.*wrong shape.*proj"):
        cfm.load_state(model, state)


@pytest.fixture(scope="module")
def tiny() -> dit.DiT:
    return weights.load_dit(ModelSource(preset="tiny"), "cpu", torch.float32)


def test_blocks_attend_both_ways(tiny: dit.DiT) -> None:
    """Transformers 5 makes SDPA causal when no mask is given: frame 0 must still see the last frame."""
    torch.manual_seed(0)
    block = tiny.transformer_blocks[0]
    h = torch.randn(1, 100, tiny.dim)
    rope = tiny.rotary_emb(h, torch.arange(100)[None])
    changed = h.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        first = block(h, position_embeddings=rope)[:, 0]
        assert not torch.allclose(first, block(changed, position_embeddings=rope)[:, 0])
    # and through the whole model, far beyond the position convolutions' reach (60 frames)
    x, cond, text = torch.randn(1, 100, 64), torch.zeros(1, 100, 64), tiny.text_embed(torch.zeros(1, 100).long())
    style, c = torch.randn(1, 512), tiny.conditioning(torch.tensor([0.5]), torch.zeros(1), torch.tensor([0.1]))
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(tiny(x, cond, text, style, c)[:, 0], tiny(x2, cond, text, style, c)[:, 0])


def test_tiny_round_trip_through_the_published_file_format(tiny: dit.DiT, tmp_path: Path) -> None:
    weights.save_dit(tiny, str(tmp_path))
    raw = torch.load(tmp_path / "cfm_model.pt", weights_only=True)
    assert set(raw) == {"model_state_dict"} and all(k.startswith("transformer.") for k in raw["model_state_dict"])
    loaded = weights.load_dit(ModelSource(id=str(tmp_path)), "cpu", torch.float32)
    assert loaded.config == tiny.config
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def song(model: dit.DiT, frames: int = 12) -> cfm.SongConditions:
    generator = torch.Generator().manual_seed(0)
    style = torch.nn.functional.normalize(torch.randn(1, 512, generator=generator), dim=-1)
    return cfm.SongConditions(tokens=torch.randint(0, 364, (1, frames), generator=generator), style=style,
                              negative_style=-style, duration=frames / model.config.max_frames)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "implicit_adams"])
def test_sampler_reports_each_step_and_is_reproducible(tiny: dit.DiT, method: cfm.Solver) -> None:
    steps: list[tuple[int, int]] = []
    a = cfm.sample(tiny, song(tiny), steps=4, cfg_strength=4.0, method=method, seed=7,
                   on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    b = cfm.sample(tiny, song(tiny), steps=4, cfg_strength=4.0, method=method, seed=7)
    c = cfm.sample(tiny, song(tiny), steps=4, cfg_strength=4.0, method=method, seed=8)
    assert a.shape == (1, 12, 64) and torch.equal(a, b) and not torch.allclose(a, c)


def test_guidance_uses_the_negative_style(tiny: dit.DiT) -> None:
    base = song(tiny)
    other = cfm.SongConditions(base.tokens, base.style, -base.negative_style, base.duration)
    a = cfm.sample(tiny, base, steps=3, cfg_strength=4.0, method="euler", seed=1)
    assert not torch.allclose(a, cfm.sample(tiny, other, steps=3, cfg_strength=4.0, method="euler", seed=1))
    # with no guidance the null branch (and so the negative style) does not count
    a0 = cfm.sample(tiny, base, steps=3, cfg_strength=0.0, method="euler", seed=1)
    assert torch.allclose(a0, cfm.sample(tiny, other, steps=3, cfg_strength=0.0, method="euler", seed=1))


def test_a_raising_step_callback_stops_the_solver(tiny: dit.DiT) -> None:
    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        cfm.sample(tiny, song(tiny), steps=5, cfg_strength=4.0, method="euler", seed=1, on_step=stop)


def test_sway_grid_keeps_its_ends_and_order() -> None:
    grid = cfm.time_grid(16, -1.0, "cpu")
    assert grid[0] == 0 and torch.isclose(grid[-1], torch.tensor(1.0)) and bool((grid.diff() > 0).all())
    assert grid[1] < cfm.time_grid(16, None, "cpu")[1]  # coefficient -1 puts more steps at the start
