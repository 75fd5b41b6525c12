"""Flux LoRA training without Ray: targets, checkpoints that diffusers loads, the loss, batches, inputs."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from components import flux as presets
from deployments.flux_lora import lora
from deployments.flux_lora.synthetic import synthetic_preprocessed, synthetic_tensors
from deployments.flux_lora.train import FluxTrainConfig, FluxTrainFromPreprocessedInput, FluxTrainInput
from deployments.flux_lora.training import TrainingParams, TrainingSet, batch_indices, train_loop

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _few_threads() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 cores, shared
    yield
    torch.set_num_threads(previous)


def tiny_set(n: int = 4, res: int = 256, seed: int = 0) -> TrainingSet:
    return TrainingSet(**synthetic_tensors(presets.TINY["transformer"], n, res, seed=seed))


def test_418_target_modules_on_flux_dev() -> None:
    transformer = presets.build_transformer("full", "meta", torch.bfloat16)  # the real architecture, no memory
    names = lora.target_modules(transformer.config.num_layers, transformer.config.num_single_layers)
    assert len(names) == len(set(names)) == 418 == 19 * 12 + 38 * 5
    modules = dict(transformer.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in names)
    lora.add_lora(transformer)
    assert len(lora.lora_layers(transformer)) == 418
    trainable = lora.trainable_parameters(transformer)
    assert len(trainable) == 2 * 418 and all(p.dtype == torch.float32 for _, p in trainable)
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in trainable)
    assert not any(p.requires_grad for n, p in transformer.named_parameters() if ".lora_" not in n)


def test_checkpoint_loads_into_a_flux_pipeline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pipe = presets.build_pipeline("tiny", "cpu", torch.float32)
    transformer = copy.deepcopy(pipe.transformer)
    lora.add_lora(transformer)
    train_loop(transformer, transformer, tiny_set(res=64), TrainingParams(steps=5, learning_rate=1e-2, batch_size=2))
    data = lora.save_checkpoint(transformer)
    path = tmp_path / lora.CHECKPOINT_NAME
    path.write_bytes(data)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        assert "lora_adapter_metadata" in (f.metadata() or {})
    assert len(keys) == 2 * len(lora.target_modules(1, 1))
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)

    def render() -> Any:
        return pipe("a photo of a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=16,
                    generator=torch.Generator().manual_seed(3), output_type="np").images

    base = render()
    pipe.load_lora_weights(str(tmp_path), weight_name=lora.CHECKPOINT_NAME, adapter_name="trained")
    assert np.abs(render() - base).max() > 1e-3
    pipe.set_adapters(["trained"], [0.0])
    np.testing.assert_allclose(render(), base, atol=1e-6)


@pytest.mark.parametrize("fixed_timestep", [0.5, None])
def test_loss_falls_on_a_fixed_dataset(fixed_timestep: float | None) -> None:
    torch.manual_seed(0)
    transformer = presets.build_transformer("tiny", "cpu", torch.float32)
    lora.add_lora(transformer)
    losses: list[float] = []
    result = train_loop(transformer, transformer, tiny_set(),
                        TrainingParams(steps=30, learning_rate=1e-2, batch_size=4, fixed_timestep=fixed_timestep),
                        on_step=lambda report: losses.append(report.loss))
    assert result.num_steps == 30 and not result.cancelled
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert result.final_loss == pytest.approx(np.mean(losses))


def test_stop_and_reset() -> None:
    torch.manual_seed(0)
    transformer = presets.build_transformer("tiny", "cpu", torch.float32)
    lora.add_lora(transformer)
    fresh = lora.lora_digest(transformer)
    calls = iter([False, False, True])
    result = train_loop(transformer, transformer, tiny_set(res=64), TrainingParams(steps=10, batch_size=2),
                        should_stop=lambda: next(calls))
    assert result.cancelled and result.num_steps == 2
    assert lora.lora_digest(transformer) != fresh
    lora.reset_lora(transformer, seed=7)
    once = lora.lora_digest(transformer)
    lora.reset_lora(transformer, seed=7)
    assert lora.lora_digest(transformer) == once
    assert all(not layer.lora_B["default"].weight.any() for layer in lora.lora_layers(transformer))


def test_bfloat16_base_trains_a_float32_adapter_under_autocast() -> None:
    torch.manual_seed(0)
    transformer = presets.build_transformer("tiny", "cpu", torch.bfloat16)
    lora.add_lora(transformer)
    data = TrainingSet(**synthetic_tensors(presets.TINY["transformer"], 2, 64, dtype=torch.bfloat16))
    result = train_loop(transformer, transformer, data, TrainingParams(steps=2, batch_size=2), dtype=torch.bfloat16)
    assert np.isfinite(result.final_loss)
    assert all(p.dtype == torch.float32 for _, p in lora.trainable_parameters(transformer))
    state = lora.lora_state_dict(transformer, torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in state.values())


def test_batches_are_disjoint_across_ranks_and_change_every_step() -> None:
    first = [batch_indices(42, 0, 10, 4, rank, 2) for rank in range(2)]
    assert not set(first[0]) & set(first[1]) and all(len(b) == 4 for b in first)
    assert first == [batch_indices(42, 0, 10, 4, rank, 2) for rank in range(2)]  # same on every rank
    assert batch_indices(42, 1, 10, 4, 0, 2) != first[0] or batch_indices(42, 1, 10, 4, 1, 2) != first[1]
    few = [batch_indices(1, 3, 3, 2, rank, 2) for rank in range(2)]  # N < B * world: repeats, every image used
    assert set(few[0] + few[1]) == {0, 1, 2} and all(len(set(b)) == 2 for b in few)


def test_inputs_follow_fal_names_defaults_and_bounds() -> None:
    req = FluxTrainInput(images_data_url="https://x/y.zip")
    assert (req.trigger_word, req.steps, req.learning_rate, req.b_up_factor, req.batch_size, req.resolution,
            req.seed, req.lr_scheduler, req.guidance_scale) == ("ohwx", 250, 5e-4, 3.0, 4, 512, 42, "constant", 1.0)
    pre = FluxTrainFromPreprocessedInput.model_validate({"training_data_url": "data:,", "max_train_steps": 300})
    assert pre.steps == 300 and pre.lr_scheduler == "linear"
    for bad in ({"steps": 99}, {"steps": 10001}, {"resolution": 520}, {"resolution": 1040}, {"lr_scheduler": "x"},
                {"steps": 100, "lr_warmup_steps": 101}):
        with pytest.raises(ValidationError) as e:
            FluxTrainInput.model_validate({"images_data_url": "https://x/y.zip", **bad})
        assert e.value.errors()[0]["loc"][0] in bad
    with pytest.raises(ValidationError):
        FluxTrainConfig.model_validate({"model": {"preset": "tiny"}, "unknown": 1})


def test_synthetic_file_matches_the_preprocessed_format() -> None:
    from deployments.flux_lora.data import decode_preprocessed

    decoded = decode_preprocessed(synthetic_preprocessed(presets.TINY["transformer"], 3, 256))
    assert decoded.num_images == 3 and decoded.resolution == 256
    assert tuple(decoded.latents.shape) == (3, 4, 32, 32) and tuple(decoded.text_embeddings.shape) == (3, 512, 32)


def test_benchmark_imports_and_parses_its_arguments() -> None:
    spec = importlib.util.spec_from_file_location("flux_lora_scaling", ROOT / "bench" / "flux_lora_scaling.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("flux_lora_scaling", bench)
    spec.loader.exec_module(bench)
    args = bench.parse_args([])
    assert (args.world_sizes, args.preset, args.resolution, args.batch_size, args.device) == ([1, 2], "full", 512, 4,
                                                                                               "cuda")
    tiny = bench.parse_args(["--preset", "tiny", "--device", "cpu", "--resolution", "256", "--steps", "3"])
    assert (tiny.preset, tiny.device, tiny.steps) == ("tiny", "cpu", 3)
