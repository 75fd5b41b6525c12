"""The Wan service class on CPU, tiny preset, no Ray: the MP4 it returns, fal's fields, seeds, steps,
progress, cancellation, the default negative prompt, and the demo's LLM rules (safety fails closed,
expansion fails open) with stand-in LLMs."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest

from components import wan
from deployments.wan import WanConfig, WanService, WanT2VInput, WanT2VOutput, billable_units
from deployments.wan.engine import WanJob
from deployments.wan.prompts import EXPANSION_SYSTEM_PROMPT, NSFW_MESSAGE, SAFETY_SYSTEM_PROMPT
from serve_app.errors import FieldError, RequestCancelled
from serve_app.events import Progress
from serve_app.service import RunContext

TINY: dict[str, Any] = {"model": {"preset": "tiny"}, "device": "cpu", "landscape": [64, 32], "portrait": [32, 64],
                        "num_frames": 9, "warmup_steps": 1, "mp4": {"preset": "ultrafast"},
                        "llm": {"safety_timeout_s": 0.5, "expansion_timeout_s": 0.5}}


class FakeLLM:
    """Answers by system prompt; records calls. `answer` may be a string, an exception or "slow"."""

    def __init__(self) -> None:
        self.safety: Any = "no"
        self.expansion: Any = "A fluffy cat on a sofa, high resolution 4k"
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(self, prompt: str, system_prompt: str, max_tokens: int) -> str:
        self.calls.append((prompt, system_prompt, max_tokens))
        answer = self.safety if system_prompt == SAFETY_SYSTEM_PROMPT else self.expansion
        if answer == "slow":
            await asyncio.sleep(5)
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)


@pytest.fixture(scope="module")
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture(scope="module")
def service(llm: FakeLLM) -> WanService:
    return WanService(WanConfig.model_validate(TINY), ask=llm)


@pytest.fixture
def jobs(service: WanService, monkeypatch: pytest.MonkeyPatch, llm: FakeLLM) -> list[WanJob]:
    """The jobs the engine is given (and a fresh LLM script)."""
    seen: list[WanJob] = []
    denoise = service.engine.denoise

    def spy(job: WanJob, on_step: Any = None) -> Any:
        seen.append(job)
        return denoise(job, on_step)

    monkeypatch.setattr(service.engine, "denoise", spy)
    llm.safety, llm.expansion, llm.calls[:] = "no", "A fluffy cat on a sofa, high resolution 4k", []
    return seen


UNSET = object()


def run(service: WanService, ctx: RunContext | None = None, **fields: Any) -> WanT2VOutput:
    """One request (2 steps unless said; a field set to UNSET is left out)."""
    body = {"prompt": "a cat", "inference_steps": 2, **fields}
    request = WanT2VInput.model_validate({k: v for k, v in body.items() if v is not UNSET})
    return asyncio.run(service.text_to_video(request, ctx))


def frames_of(output: WanT2VOutput) -> list[np.ndarray]:
    import av

    assert output.video.data is not None
    return [f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(output.video.data)).decode(video=0)]


@pytest.mark.parametrize(("ratio", "size"), [("16:9", (64, 32)), ("9:16", (32, 64))])
def test_returns_an_mp4_of_the_configured_size_frames_and_fps(service: WanService, ratio: str,
                                                            size: tuple[int, int]) -> None:
    out = run(service, aspect_ratio=ratio, seed=1)
    video = out.video
    assert video.content_type == "video/mp4" and video.file_name and video.file_name.endswith(".mp4")
    assert (video.width, video.height, video.fps, video.num_frames) == (*size, 16, 9)
    assert video.duration == pytest.approx(9 / 16) and video.file_size == len(video.data or b"")
    frames = frames_of(out)
    assert len(frames) == 9 and frames[0].shape == (size[1], size[0], 3)
    assert out.seed == 1 and out.prompt is None
    assert billable_units(WanT2VInput(prompt="x")) == 1


def test_seeds_reproduce_zero_is_a_seed_and_random_seeds_are_returned(service: WanService) -> None:
    a, b, c = run(service, seed=0), run(service, seed=0), run(service, seed=7)
    assert a.seed == 0 and [f.tobytes() for f in frames_of(a)] == [f.tobytes() for f in frames_of(b)]
    assert [f.tobytes() for f in frames_of(a)] != [f.tobytes() for f in frames_of(c)]
    assert 0 <= run(service).seed < 2**32


def test_fal_defaults_and_the_step_alias(service: WanService, jobs: list[WanJob]) -> None:
    request = WanT2VInput(prompt="a cat")
    assert (request.steps, request.guidance_scale, request.shift, request.sampler) == (30, 5.0, 5.0, "unipc")
    assert (request.aspect_ratio, request.enable_safety_checker, request.enable_prompt_expansion) == \
        ("16:9", False, False)
    assert WanT2VInput(prompt="x", num_inference_steps=12).steps == 12  # the demo's unused field works
    assert WanT2VInput(prompt="x", num_inference_steps=12, inference_steps=3).steps == 3
    run(service, inference_steps=UNSET, num_inference_steps=3, seed=2, guidance_scale=3.5, shift=2.0,
        sampler="dpm++", negative_prompt="blurry")
    (job,) = jobs
    assert (job.num_inference_steps, job.guidance_scale, job.shift, job.sampler) == (3, 3.5, 2.0, "dpm++")
    assert job.negative_prompt == "blurry" and job.num_frames == 9


def test_an_empty_negative_prompt_means_wans_default(service: WanService, jobs: list[WanJob]) -> None:
    run(service, seed=1)
    assert jobs[0].negative_prompt == wan.DEFAULT_NEGATIVE_PROMPT
    assert jobs[0].negative_prompt.startswith("色调艳丽") and jobs[0].negative_prompt.endswith("倒着走")


@pytest.mark.parametrize("patch", [{"inference_steps": 1}, {"inference_steps": 41}, {"guidance_scale": 21},
                                   {"shift": -1}, {"aspect_ratio": "1:1"}, {"sampler": "euler"}, {"seed": -1}])
def test_out_of_range_fields_are_rejected(patch: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(patch))):
        WanT2VInput.model_validate({"prompt": "a cat", **patch})


def test_stream_reports_every_step(service: WanService) -> None:
    events: list[Any] = []
    run(service, RunContext("r", emit=events.append), inference_steps=3)
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(1, 3), (2, 3), (3, 3)]


def test_a_cancelled_request_stops_within_a_step(service: WanService) -> None:
    ctx = RunContext("r")
    steps: list[int] = []

    def emit(event: Any) -> None:
        steps.append(event.step)
        ctx._cancel.set()  # the caller leaves after the first step

    ctx._emit = emit
    with pytest.raises(RequestCancelled):
        run(service, ctx, inference_steps=10)
    assert steps in ([1], [1, 2])  # progress reaches the loop asynchronously: the flag is seen within a step


def test_expansion_replaces_the_prompt_and_is_returned(service: WanService, jobs: list[WanJob],
                                                       llm: FakeLLM) -> None:
    llm.expansion = "  A fluffy cat on a sofa, high resolution 4k \n"
    out = run(service, enable_prompt_expansion=True, seed=1)
    assert out.prompt == jobs[0].prompt == "A fluffy cat on a sofa, high resolution 4k"
    assert llm.calls == [("a cat", EXPANSION_SYSTEM_PROMPT, 256)]


@pytest.mark.parametrize("failure", [RuntimeError("LLM down"), "", "   ", "slow"])
def test_expansion_fails_open(service: WanService, jobs: list[WanJob], llm: FakeLLM, failure: Any) -> None:
    llm.expansion = failure
    out = run(service, enable_prompt_expansion=True, seed=1)
    assert out.prompt is None and jobs[0].prompt == "a cat"


@pytest.mark.parametrize("answer", ["yes", "Yes.", "YES, it is"])
def test_an_unsafe_prompt_is_a_422_on_prompt(service: WanService, jobs: list[WanJob], llm: FakeLLM,
                                            answer: str) -> None:
    llm.safety = answer
    with pytest.raises(FieldError) as e:
        run(service, enable_safety_checker=True, enable_prompt_expansion=True)
    assert (e.value.field, e.value.message) == ("prompt", NSFW_MESSAGE)
    assert jobs == [] and [c[1] for c in llm.calls] == [SAFETY_SYSTEM_PROMPT]  # nothing rendered, not expanded


@pytest.mark.parametrize("failure", [RuntimeError("LLM down"), "slow"])
def test_safety_fails_closed(service: WanService, jobs: list[WanJob], llm: FakeLLM, failure: Any) -> None:
    llm.safety = failure
    with pytest.raises(FieldError) as e:
        run(service, enable_safety_checker=True)
    assert e.value.field == "prompt" and jobs == []


def test_a_safe_prompt_renders_and_the_llm_is_not_asked_unless_enabled(service: WanService, jobs: list[WanJob],
                                                                       llm: FakeLLM) -> None:
    run(service, seed=1)
    assert llm.calls == []
    llm.safety = "No."
    run(service, enable_safety_checker=True, seed=1)
    assert [c[1:] for c in llm.calls] == [(SAFETY_SYSTEM_PROMPT, 8)] and len(jobs) == 2


@pytest.mark.parametrize(("patch", "message"), [
    ({"num_frames": 80}, "4k\\+1"),
    ({"landscape": [100, 64]}, "multiples of 16"),
    ({"world_size": 2, "ring_degree": 3}, "ulysses_degree x ring_degree"),
    ({"world_size": 3, "landscape": [48, 48], "portrait": [48, 48]}, "attention heads"),  # tiny has 2 heads
    ({"world_size": 2, "ring_degree": 2, "resources": {"use_gpu": False}}, "GPUs only"),
    ({"world_size": 4, "num_frames": 1, "landscape": [48, 16]}, "cannot share evenly"),
])
def test_config_errors_name_the_problem(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WanConfig.model_validate({**TINY, **patch})


def test_parallel_layouts_and_deployment_options() -> None:
    full = WanConfig.model_validate({"world_size": 2})
    assert (full.ulysses, full.engine_spec().ulysses_degree, full.engine_spec().attention_backend) == (2, 2, None)
    ring = WanConfig.model_validate({"world_size": 4, "ring_degree": 2})
    assert (ring.engine_spec().ulysses_degree, ring.engine_spec().ring_degree) == (2, 2)
    assert ring.engine_spec().attention_backend == "_native_flash"  # Ring needs the log-sum-exp
    assert WanService.deployment_defaults(WanConfig()) == {"max_ongoing_requests": 1}
    options = WanService.deployment_defaults(ring)
    assert len(options["placement_group_bundles"]) == 5 and options["placement_group_strategy"] == "STRICT_PACK"
