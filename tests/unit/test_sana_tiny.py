"""The Sana service class on CPU with tiny presets (no Ray): sizes, seeds, progress, Sprint steps,
the safety checker, cancellation, billing, and the prod loading path on a saved tiny model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from deployments.sana import SanaConfig, SanaService, SprintInput, TextToImageInput, billable_units
from serve_app.errors import FieldError, RequestCancelled
from serve_app.events import Progress
from serve_app.service import RunContext

TINY = {"model": {"preset": "tiny"}, "sprint_model": {"preset": "tiny"}, "safety_checker": {"preset": "tiny"},
        "device": "cpu", "complex_human_instruction": False, "warmup": {"enabled": False}}


@pytest.fixture(scope="module")
def service() -> SanaService:
    return SanaService(SanaConfig.model_validate(TINY))


def pixels(output) -> list[bytes]:  # type: ignore[no-untyped-def]
    import io

    return [PILImage.open(io.BytesIO(im.data)).tobytes() for im in output.images]


def test_billing_units() -> None:
    assert billable_units(TextToImageInput(prompt="x")) == 8  # 3840x2160 default
    assert billable_units(TextToImageInput(prompt="x", image_size="square_hd")) == 1
    assert billable_units(TextToImageInput(prompt="x", image_size={"width": 1025, "height": 1024})) == 2
    assert billable_units(SprintInput(prompt="x", image_size="square", num_images=4)) == 4


@pytest.mark.parametrize("size", [(512, 512), (640, 480), (576, 1024), (333, 77)])
def test_images_have_the_requested_size(service: SanaService, size: tuple[int, int]) -> None:
    out = service.generate(TextToImageInput(prompt="a cat", image_size={"width": size[0], "height": size[1]},
                                            num_inference_steps=1, seed=1, num_images=2))
    assert [(im.width, im.height) for im in out.images] == [size, size]
    assert out.has_nsfw_concepts == [False, False]


def test_seeds_reproduce_and_differ(service: SanaService) -> None:
    req = TextToImageInput(prompt="a cat", image_size="square", num_inference_steps=2, seed=0, output_format="png")
    a, b = service.generate(req), service.generate(req)
    c = service.generate(req.model_copy(update={"seed": 1}))
    assert a.seed == 0 and pixels(a) == pixels(b) != pixels(c)
    rand = service.generate(req.model_copy(update={"seed": None}))
    assert 0 <= rand.seed < 2**32


def test_progress_reports_every_step(service: SanaService) -> None:
    events: list[Progress] = []
    service.generate(TextToImageInput(prompt="a cat", image_size="square", num_inference_steps=4),
                     RunContext("r", emit=events.append))
    assert [(e.step, e.total) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("steps", [1, 2, 3, 20])
def test_sprint_runs_any_allowed_step_count(service: SanaService, steps: int) -> None:
    events: list[Progress] = []
    out = service.sprint_generate(SprintInput(prompt="a dog", image_size="square", num_inference_steps=steps),
                                  RunContext("r", emit=events.append))
    assert len(events) == steps and out.images[0].width == 512


def test_what_the_sprint_scheduler_rejects_is_a_field_error(service: SanaService) -> None:
    from diffusers import SCMScheduler

    original = service.sprint.scheduler
    service.sprint.scheduler = SCMScheduler(num_train_timesteps=10)
    try:
        with pytest.raises(FieldError) as e:
            service.sprint_generate(SprintInput(prompt="a dog", image_size="square", num_inference_steps=11))
        assert e.value.field == "num_inference_steps"
    finally:
        service.sprint.scheduler = original


def test_safety_checker_blacks_out_flagged_images(service: SanaService) -> None:
    threshold = service.safety.threshold
    service.safety.threshold = 0.0  # every probability is above 0: everything is flagged
    try:
        req = TextToImageInput(prompt="a cat", image_size="square", num_inference_steps=1, output_format="png")
        flagged = service.generate(req)
        unchecked = service.generate(req.model_copy(update={"enable_safety_checker": False}))
    finally:
        service.safety.threshold = threshold
    assert flagged.has_nsfw_concepts == [True] and unchecked.has_nsfw_concepts == [False]
    assert set(pixels(flagged)[0]) == {0}
    assert len(set(pixels(unchecked)[0])) > 1


def test_cancel_interrupts_at_the_next_step(service: SanaService) -> None:
    cancel = threading.Event()
    events: list[Progress] = []

    def emit(event: Progress) -> None:
        events.append(event)
        cancel.set()  # the caller hangs up after the first step

    with pytest.raises(RequestCancelled):
        service.generate(TextToImageInput(prompt="a cat", image_size="square", num_inference_steps=10),
                         RunContext("r", emit=emit, cancel_event=cancel))
    assert len(events) < 10


def test_prod_loading_path_round_trip(service: SanaService, tmp_path: Path) -> None:
    """Save the tiny pipelines with save_pretrained and load them through the config's `id` path."""
    service.base.save_pretrained(tmp_path / "base")
    service.sprint.save_pretrained(tmp_path / "sprint")
    service.safety.model.save_pretrained(tmp_path / "nsfw")
    service.safety.processor.save_pretrained(tmp_path / "nsfw")
    config = SanaConfig.model_validate({
        **TINY,
        "model": {"id": str(tmp_path / "base")}, "sprint_model": {"id": str(tmp_path / "sprint")},
        "safety_checker": {"id": str(tmp_path / "nsfw")},
    })
    loaded = SanaService(config)
    assert loaded.sprint.text_encoder is loaded.base.text_encoder  # shared, loaded once
    req = TextToImageInput(prompt="a cat", image_size="square", num_inference_steps=2, seed=3, output_format="png")
    sreq = SprintInput(prompt="a cat", image_size="square", seed=3, output_format="png")
    for a, b in ((loaded.generate(req), service.generate(req)),
                 (loaded.sprint_generate(sreq), service.sprint_generate(sreq))):
        # Same weights and seed; reloaded modules may take other float kernels: 1 level of 255 at most.
        diff = np.abs(array(a).astype(int) - array(b).astype(int))
        assert array(a).shape == (512, 512, 3) and diff.max() <= 1


def array(output) -> np.ndarray:  # type: ignore[no-untyped-def]
    import io

    return np.asarray(PILImage.open(io.BytesIO(output.images[0].data)))


def test_config_rejects_mixed_sources() -> None:
    with pytest.raises(ValueError, match="both"):
        SanaConfig.model_validate({**TINY, "sprint_model": {"id": "some/repo"}})
    with pytest.raises(ValueError, match="exactly one"):
        SanaConfig.model_validate({**TINY, "model": {"id": "a/b", "preset": "tiny"}})
