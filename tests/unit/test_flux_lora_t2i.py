"""The Flux service on CPU with the tiny preset (no Ray): fal's schema, billing and routing key; LoRAs
loaded per request from `/flux-train`'s file format, per-request scales, no adapter leaking into the
next request, LRU eviction, 422s on `loras`, progress and cancellation, and the prod loading path.

Helpers here (`trainer_lora`, `data_url`, `lora_request`, `pixels`) are shared by the other
`test_flux_lora_t2i_*` modules.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from pydantic import ValidationError

from components import flux
from deployments.flux import FluxConfig, FluxDevInput, FluxLoraInput, FluxService, billable_units, lora_set_key
from serve_app.errors import FieldError, RequestCancelled
from serve_app.events import Progress
from serve_app.service import RunContext

TINY: dict[str, Any] = {"model": {"preset": "tiny"}, "safety_checker": {"preset": "tiny"}, "device": "cpu",
                        "max_sequence_length": 16, "warmup": {"enabled": False}, "loras": {"max_adapters": 2}}


@functools.cache
def trainer_lora(seed: int, rank: int = 4) -> bytes:
    """A LoRA file exactly as `/flux-train` writes it (diffusers keys, peft config in the metadata), with
    non-zero up-projections so it visibly changes the image."""
    from deployments.flux_lora.lora import ADAPTER, add_lora, lora_layers, save_checkpoint

    torch.manual_seed(seed)
    transformer = flux.build_transformer("tiny", "cpu", torch.float32)
    add_lora(transformer, rank=rank, alpha=rank)
    with torch.no_grad():
        for layer in lora_layers(transformer):
            layer.lora_B[ADAPTER].weight.normal_(0.0, 0.5)
    return save_checkpoint(transformer)


def data_url(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


def lora_request(*loras: tuple[bytes, float], **fields: Any) -> FluxLoraInput:
    base = {"prompt": "a photo of a cat", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2,
            "seed": 1, "output_format": "png", "enable_safety_checker": False}
    return FluxLoraInput.model_validate({**base, **fields,
                                         "loras": [{"path": data_url(d), "scale": s} for d, s in loras]})


def pixels(output: Any) -> np.ndarray:
    return np.stack([np.asarray(PILImage.open(io.BytesIO(im.data))) for im in output.images])


def generate(service: FluxService, request: FluxLoraInput, ctx: RunContext | None = None) -> Any:
    return asyncio.run(service.generate_with_loras(request, ctx or RunContext()))


@pytest.fixture(scope="module")
def service() -> FluxService:
    return FluxService(FluxConfig.model_validate(TINY))


def test_fal_fields_billing_and_routing_key() -> None:
    req = FluxLoraInput(prompt="x")
    assert (req.image_size, req.num_inference_steps, req.guidance_scale, req.num_images, req.loras) == \
        ("landscape_4_3", 28, 3.5, 1, [])
    assert billable_units(req) == 1 and billable_units(FluxDevInput(prompt="x", image_size="square_hd",
                                                                    num_images=3)) == 3
    assert billable_units(FluxDevInput(prompt="x", image_size={"width": 1024, "height": 1025})) == 2
    for bad in ({"loras": [{"path": "a", "scale": 4.5}]}, {"loras": [{"path": "a", "scale": -0.1}]},
                {"guidance_scale": 36}, {"num_inference_steps": 51}, {"num_images": 5}, {"loras": [{"path": ""}]}):
        with pytest.raises(ValidationError):
            FluxLoraInput.model_validate({"prompt": "x", **bad})
    with pytest.raises(ValidationError):
        FluxDevInput(prompt="x", guidance_scale=0.5)  # /flux/dev: 1-20
    a = lora_set_key(FluxLoraInput(prompt="x", loras=[{"path": "u1", "scale": 0.3}, {"path": "u2"}]))
    b = lora_set_key(FluxLoraInput(prompt="y", loras=[{"path": "u2", "scale": 2}, {"path": " u1"}]))
    assert a == b and a is not None  # order, scales and the prompt do not change the set
    assert lora_set_key(FluxLoraInput(prompt="x", loras=[{"path": "u1"}])) != a
    assert lora_set_key(req) is None


def test_a_lora_changes_the_image_and_nothing_is_left_behind(service: FluxService) -> None:
    base = pixels(generate(service, lora_request()))
    loads = service.lora_stats()["loads"]
    with_a = generate(service, lora_request((trainer_lora(1), 1.0)))
    assert np.abs(pixels(with_a).astype(int) - base).max() > 10
    assert np.array_equal(pixels(generate(service, lora_request())), base)  # exactly the base image again
    again = generate(service, lora_request((trainer_lora(1), 1.0)))
    assert np.array_equal(pixels(again), pixels(with_a))
    assert service.lora_stats()["loads"] == loads + 1  # loaded once, under its content address
    assert with_a.timings["inference"] > 0 and again.timings["lora_loading"] < with_a.timings["lora_loading"]
    dev = asyncio.run(service.generate(FluxDevInput.model_validate(lora_request().model_dump()), RunContext()))
    assert np.array_equal(pixels(dev), base)  # /flux/dev never sees an adapter


def test_scales_are_per_request_and_loras_merge(service: FluxService) -> None:
    a, b = trainer_lora(1), trainer_lora(2)
    base = pixels(generate(service, lora_request()))
    assert np.array_equal(pixels(generate(service, lora_request((a, 0.0)))), base)
    full, half = pixels(generate(service, lora_request((a, 1.0)))), pixels(generate(service, lora_request((a, 0.5))))
    both = pixels(generate(service, lora_request((a, 1.0), (b, 1.0))))
    only_b = pixels(generate(service, lora_request((b, 1.0))))
    assert len({x.tobytes() for x in (base, full, half, both, only_b)}) == 5
    assert np.array_equal(pixels(generate(service, lora_request((a, 1.0)))), full)  # b did not stay on
    twice = pixels(generate(service, lora_request((a, 0.5), (a, 0.5))))  # the same file twice: deltas add
    assert np.abs(twice.astype(int) - full).max() <= 1


def test_least_recently_used_adapters_go_past_the_budget(service: FluxService) -> None:
    a, b, c = trainer_lora(1), trainer_lora(2), trainer_lora(3)
    first_a = pixels(generate(service, lora_request((a, 1.0))))
    generate(service, lora_request((b, 1.0)))
    stats = service.lora_stats()
    generate(service, lora_request((c, 1.0)))  # 3 adapters, room for 2: a (least recently used) goes
    assert service.lora_stats()["evictions"] == stats["evictions"] + 1
    assert not service.adapters.has(_sha(a)) and f"lora_{_sha(a)[:16]}" not in service.pipe.get_list_adapters()[
        "transformer"]
    assert np.array_equal(pixels(generate(service, lora_request((a, 1.0)))), first_a)  # fetched and loaded again
    assert service.lora_stats()["loads"] == stats["loads"] + 2
    budget = service.adapters.max_bytes
    service.adapters.max_bytes = 1  # bytes budget: only the request's own adapters stay
    try:
        generate(service, lora_request((b, 1.0)))
        assert len(service.pipe.get_list_adapters()["transformer"]) == 1
    finally:
        service.adapters.max_bytes = budget


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_unusable_files_are_422_on_loras(service: FluxService) -> None:
    from safetensors.torch import save

    pickled = io.BytesIO()
    torch.save({"transformer.x_embedder.lora_A.weight": torch.zeros(4, 64)}, pickled)
    wider = save({"transformer.x_embedder.lora_A.weight": torch.zeros(4, 65),
                  "transformer.x_embedder.lora_B.weight": torch.zeros(32, 4)})
    sdxl_kohya = save({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                       "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)})
    cases = {pickled.getvalue(): "not a safetensors file", b"\x00" * 64: "not a safetensors file",
             wider: "does not fit", sdxl_kohya: "could not convert",
             save({"text_encoder.text_model.x.lora_A.weight": torch.zeros(2, 2)}): "text-encoder"}
    for data, message in cases.items():
        with pytest.raises(FieldError, match=message) as e:
            generate(service, lora_request((data, 1.0)))
        assert e.value.field == "loras"
    with pytest.raises(FieldError, match="at most 2 different LoRAs") as e:
        generate(service, lora_request((trainer_lora(1), 1.0), (trainer_lora(2), 1.0), (trainer_lora(3), 1.0)))
    with pytest.raises(FieldError, match="unsupported URL scheme"):
        generate(service, FluxLoraInput(prompt="x", loras=[{"path": "/etc/passwd"}]))
    limit = service.config.loras.max_file_bytes
    service.config.loras.max_file_bytes = 1000
    other_path = "data:;base64," + base64.b64encode(trainer_lora(1)).decode()  # a set not fetched before
    try:
        with pytest.raises(FieldError, match="larger than the limit"):
            generate(service, FluxLoraInput(prompt="x", loras=[{"path": other_path}]))
    finally:
        service.config.loras.max_file_bytes = limit


def test_sizes_seeds_and_the_safety_checker(service: FluxService) -> None:
    out = generate(service, lora_request(image_size={"width": 72, "height": 40}, num_images=2, seed=None))
    assert pixels(out).shape == (2, 40, 72, 3) and out.seed >= 0
    assert not np.array_equal(pixels(out)[0], pixels(out)[1])
    threshold = service.safety.threshold
    service.safety.threshold = 0.0  # every probability is above 0: everything is flagged
    try:
        flagged = generate(service, lora_request(enable_safety_checker=True))
    finally:
        service.safety.threshold = threshold
    assert flagged.has_nsfw_concepts == [True] and set(np.unique(pixels(flagged))) == {0}


def test_progress_then_cancel_at_the_next_step(service: FluxService) -> None:
    events: list[Any] = []
    generate(service, lora_request(num_inference_steps=3), RunContext("r", emit=events.append))
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(1, 3), (2, 3), (3, 3)]
    cancel = threading.Event()

    def hang_up(event: Any) -> None:
        cancel.set()

    with pytest.raises(RequestCancelled):
        generate(service, lora_request(num_inference_steps=10), RunContext("r", emit=hang_up, cancel_event=cancel))
    assert pixels(generate(service, lora_request())).shape == (1, 64, 64, 3)  # the pipeline is free again


def test_prod_loading_path_round_trip(service: FluxService, tmp_path: Path) -> None:
    """Save the tiny pipeline and classifier, then load them through the config's `id` path."""
    with torch.random.fork_rng(devices=[]):  # the preset's weights, as `build_or_load` seeds them
        torch.manual_seed(0)
        flux.build_pipeline("tiny", "cpu", torch.float32).save_pretrained(tmp_path / "flux")
    service.safety.model.save_pretrained(tmp_path / "nsfw")
    service.safety.processor.save_pretrained(tmp_path / "nsfw")
    loaded = FluxService(FluxConfig.model_validate({**TINY, "model": {"id": str(tmp_path / "flux")},
                                                    "safety_checker": {"id": str(tmp_path / "nsfw")}}))
    a = pixels(generate(loaded, lora_request((trainer_lora(1), 1.0))))
    b = pixels(generate(service, lora_request((trainer_lora(1), 1.0))))
    assert np.abs(a.astype(int) - b).max() <= 1


def test_full_preset_is_flux_dev_sized() -> None:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model: Any = FluxTransformer2DModel(**flux.FULL["transformer"])
    assert 11.8e9 < sum(p.numel() for p in model.parameters()) < 12.0e9  # FLUX.1-dev: 11.9B
