"""The DiffRhythm service class on tiny presets, without Ray: fal's fields and bounds, the song it
returns, per-step progress, reproducible seeds, billing, and every 422."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import numpy as np
import pydantic
import pytest
import soundfile

from deployments.diffrhythm import DiffRhythmConfig, DiffRhythmInput, DiffRhythmService, billable_units
from serve_app.errors import FieldError, RequestCancelled
from serve_app.events import Progress
from serve_app.service import RunContext

FRAMES = 24
LYRICS = "[00:00.10]Hello world\n[00:00.60]你好"


@pytest.fixture(scope="module")
def service() -> DiffRhythmService:
    config = DiffRhythmConfig.model_validate({
        "model": {"preset": "tiny"}, "vae": {"preset": "tiny"}, "mulan": {"preset": "tiny"}, "device": "cpu",
        "frames_95s": FRAMES, "frames_285s": 2 * FRAMES, "decode_chunk": 16, "decode_overlap": 4, "warmup": False,
    })
    return DiffRhythmService(config)


def data_url(data: bytes, content_type: str = "audio/wav") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def wav_of(seconds: float, rate: int = 32_000) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).standard_normal((int(seconds * rate), 2)).astype(np.float32) * 0.1
    soundfile.write(buf, noise, rate, format="WAV")
    return buf.getvalue()


def request(**fields: Any) -> DiffRhythmInput:
    return DiffRhythmInput(**{"lyrics": LYRICS, "style_prompt": "pop", "num_inference_steps": 10, "seed": 5} | fields)


def decoded(output: Any) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(output.audio.data), always_2d=True)
    return samples, rate


def test_fal_fields_defaults_and_bounds() -> None:
    r = DiffRhythmInput(lyrics="[00:01.00]hi")
    assert (r.music_duration, r.cfg_strength, r.scheduler, r.num_inference_steps, r.max_frames) == \
        ("95s", 4.0, "euler", 32, 2048)
    assert r.style_prompt is None and r.reference_audio_url is None and r.seed is None and r.num_candidates == 1
    schema = DiffRhythmInput.model_json_schema()["properties"]
    assert schema["lyrics"]["ui"] == {"field": "textarea"}
    for bad in ({"cfg_strength": 0.5}, {"cfg_strength": 11}, {"num_inference_steps": 9},
                {"num_inference_steps": 101}, {"music_duration": "60s"}, {"scheduler": "dpm"}, {"max_frames": 99}):
        with pytest.raises(pydantic.ValidationError):
            DiffRhythmInput(lyrics="x", **bad)


def test_billing_is_one_unit_per_10_seconds_of_the_published_length() -> None:
    assert billable_units(DiffRhythmInput(lyrics="x")) == 9  # 2048 * 2048 samples // 441,000
    assert billable_units(DiffRhythmInput(lyrics="x", music_duration="285s")) == 28  # 6136 * 2048 // 441,000


def test_song_is_a_44khz_stereo_wav_of_the_configured_length(service: DiffRhythmService) -> None:
    events: list[Any] = []
    out = service.generate(request(), RunContext("t", emit=events.append))
    samples, rate = decoded(out)
    assert rate == 44_100 and samples.shape == (FRAMES * 2048, 2)
    assert out.audio.content_type == "audio/wav" and out.audio.duration == pytest.approx(FRAMES * 2048 / 44_100)
    assert out.seed == 5
    progress = [e for e in events if isinstance(e, Progress)]
    assert [(p.step, p.total) for p in progress] == [(i, 9) for i in range(1, 10)]  # one event per ODE step


def test_same_seed_same_song_and_max_frames_is_ignored(service: DiffRhythmService) -> None:
    first = service.generate(request(max_frames=100), RunContext())
    assert first.audio.data == service.generate(request(max_frames=8192), RunContext()).audio.data
    other = service.generate(request(seed=6), RunContext())
    assert other.audio.data != first.audio.data


def test_285s_uses_its_own_length_and_a_random_seed_is_returned(service: DiffRhythmService) -> None:
    out = service.generate(request(music_duration="285s", seed=None, scheduler="midpoint"), RunContext())
    assert decoded(out)[0].shape == (2 * FRAMES * 2048, 2) and 0 <= out.seed < 2**32


def test_reference_audio_sets_the_style(service: DiffRhythmService) -> None:
    by_audio = service.generate(request(style_prompt=None, reference_audio_url=data_url(wav_of(12))), RunContext())
    assert decoded(by_audio)[0].shape == (FRAMES * 2048, 2)
    # the reference wins over a style prompt, as in fal's demo
    both = service.generate(request(reference_audio_url=data_url(wav_of(12))), RunContext())
    assert both.audio.data == by_audio.audio.data


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"style_prompt": None}, "style_prompt", "Either style_prompt or reference_audio_url"),
    ({"style_prompt": "  "}, "style_prompt", "Either style_prompt or reference_audio_url"),
    ({"lyrics": "[00:01.00]안녕하세요"}, "lyrics", "Unsupported language in lyrics."),
    ({"lyrics": "[00:01.00]hello\n[00:40.00]Привет"}, "lyrics", "Unsupported language in lyrics."),
    ({"lyrics": "hello without timestamps"}, "lyrics", "No timed lines"),
    ({"reference_audio_url": data_url(b"definitely not audio")}, "reference_audio_url", "could not decode"),
    ({"reference_audio_url": data_url(wav_of(3))}, "reference_audio_url", "at least 10"),
    ({"reference_audio_url": "ftp://example.invalid/a.wav"}, "reference_audio_url", "unsupported URL scheme"),
    ({"num_candidates": 2}, "num_candidates", "SongEval"),
])
def test_bad_inputs_are_422_naming_the_field(service: DiffRhythmService, fields: dict[str, Any], field: str,
                                             message: str) -> None:
    with pytest.raises(FieldError) as info:
        service.generate(request(**fields), RunContext())
    assert info.value.field == field and message in info.value.message and info.value.status_code == 422


def test_cancel_stops_between_steps(service: DiffRhythmService) -> None:
    cancel = threading.Event()
    steps: list[int] = []

    def emit(event: Any) -> None:
        if isinstance(event, Progress):
            steps.append(event.step)
            if event.step == 2:
                cancel.set()

    with pytest.raises(RequestCancelled):
        service.generate(request(), RunContext("c", emit=emit, cancel_event=cancel))
    assert steps == [1, 2]
