"""Hotswap slots for compiled transformers (tiny preset, CPU, torch.compile with the tracing-only `eager`
backend): the same images as one-adapter-per-LoRA, no leak between requests, no recompilation when
LoRAs change (where the adapter API recompiles), switches back from device snapshots, and the 422s
that the slots impose (rank above the target rank, more LoRAs than slots)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deployments.flux import FluxConfig, FluxService
from serve_app.errors import FieldError
from tests.unit.test_flux_lora_t2i import TINY, generate, lora_request, pixels, trainer_lora

COMPILED = {**TINY, "compile": {"enabled": True, "backend": "eager"}}


@pytest.fixture(scope="module")
def services() -> dict[str, FluxService]:
    import torch

    torch._dynamo.reset()  # compiled code is cached per process: count this module's compilations only
    hotswap = {"enabled": True, "slots": 2, "target_rank": 8}
    return {
        "reference": FluxService(FluxConfig.model_validate(TINY)),
        "hotswap": FluxService(FluxConfig.model_validate({**COMPILED, "hotswap": hotswap,
                                                          "loras": {"max_adapters": 4}})),
        "adapters": FluxService(FluxConfig.model_validate(COMPILED)),
    }


def sequence() -> list[tuple[tuple[bytes, float], ...]]:
    a, b = trainer_lora(1), trainer_lora(2, rank=8)
    return [(), ((a, 1.0),), ((b, 1.0),), ((a, 0.5), (b, 1.0)), (), ((a, 1.0),), ((b, 0.3),)]


def images(service: FluxService) -> list[Any]:
    return [pixels(generate(service, lora_request(*loras))) for loras in sequence()]


def test_hotswap_gives_the_adapter_api_images_without_recompiling(services: dict[str, FluxService]) -> None:
    reference = images(services["reference"])
    hot = services["hotswap"]
    generate(hot, lora_request())  # the first call compiles
    compiled_once = hot.compiles
    swapped = images(hot)
    for got, want in zip(swapped, reference, strict=True):
        assert np.abs(got.astype(int) - want).max() <= 1  # padded ranks may sum in another order
    assert np.array_equal(swapped[0], swapped[4])  # a, b and a+b came and went: exactly the base image again
    assert len({x.tobytes() for x in swapped[:4]}) == 4
    stats = hot.lora_stats()
    assert compiled_once >= 1 and stats["compiles"] == compiled_once  # the graph survived every LoRA change
    assert stats["loads"] == stats["hotswaps"] == 2  # a and b hotswapped in once; two slots kept them since
    adapters = services["adapters"]
    generate(adapters, lora_request())
    first = adapters.compiles
    images(adapters)
    assert adapters.compiles > first  # the adapter API changes the module graph: dynamo recompiles


def test_switching_back_copies_a_snapshot(services: dict[str, FluxService]) -> None:
    hot = services["hotswap"]
    a, b, c = trainer_lora(1), trainer_lora(2, rank=8), trainer_lora(3)
    first = pixels(generate(hot, lora_request((c, 1.0))))  # c goes into a slot: a or b leaves it
    before = hot.lora_stats()
    for loras in (((a, 1.0),), ((b, 1.0),), ((c, 1.0),)):
        generate(hot, lora_request(*loras))
    after = hot.lora_stats()
    assert after["loads"] == before["loads"] and after["hotswaps"] > before["hotswaps"]
    assert np.array_equal(pixels(generate(hot, lora_request((c, 1.0)))), first)


def test_slots_bound_what_a_request_may_ask(services: dict[str, FluxService]) -> None:
    hot = services["hotswap"]
    with pytest.raises(FieldError, match="rank 16 is above") as e:
        generate(hot, lora_request((trainer_lora(4, rank=16), 1.0)))
    assert e.value.field == "loras"
    with pytest.raises(FieldError, match="at most 2 LoRAs"):
        generate(hot, lora_request((trainer_lora(1), 1.0), (trainer_lora(2, rank=8), 1.0), (trainer_lora(3), 1.0)))
    base = pixels(generate(services["reference"], lora_request()))
    assert np.abs(pixels(generate(hot, lora_request())).astype(int) - base).max() <= 1
