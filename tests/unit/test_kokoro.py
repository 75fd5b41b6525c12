"""The Kokoro service on CPU with the tiny preset (no Ray): inputs and billing, WAV output, sentence
chunks, field errors, offline G2P, cancellation, and the prod loading path on a saved tiny model.

Each forward pass of even the tiny model costs about a second here, so inputs stay a few words long.
"""

from __future__ import annotations

import io
import threading
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.kokoro import (
    AmEnglishRequest,
    BrEnglishRequest,
    JapaneseRequest,
    KokoroConfig,
    KokoroService,
    billable_units,
)
from deployments.kokoro.service import VOICES
from serve_app.errors import FieldError, RequestCancelled
from serve_app.events import Partial, Progress
from serve_app.io import File
from serve_app.service import RunContext

TINY = {"model": {"preset": "tiny"}, "device": "cpu", "spacy_model": None, "warmup": False}


@pytest.fixture(scope="module")
def service() -> KokoroService:
    return KokoroService(KokoroConfig.model_validate(TINY))


def read_wav(file: File) -> np.ndarray:
    assert file.content_type == "audio/wav" and file.data is not None and file.file_name.endswith(".wav")
    with wave.open(io.BytesIO(file.data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_inputs_voices_and_billing_follow_fal() -> None:
    assert {k: len(v) for k, v in VOICES.items()} == {"american-english": 20, "british-english": 8, "japanese": 5}
    default = AmEnglishRequest()
    assert (default.prompt, default.text, default.voice, default.speed) == ("", "", "af_heart", 1.0)
    for bad in ({"voice": "bf_emma"}, {"speed": 0.05}, {"speed": 5.1}):
        with pytest.raises(ValidationError):
            AmEnglishRequest.model_validate({"prompt": "x", **bad})
    with pytest.raises(ValidationError):
        BrEnglishRequest.model_validate({"prompt": "x"})  # fal: the voice is required here
    with pytest.raises(ValidationError):
        JapaneseRequest.model_validate({"prompt": "x", "voice": "af_heart"})
    assert [billable_units(AmEnglishRequest(prompt="x" * n)) for n in (1, 999, 1000, 2999)] == [1, 1, 1, 2]
    assert billable_units(AmEnglishRequest(text="x" * 3000)) == 3
    with pytest.raises(ValidationError):
        KokoroConfig.model_validate({**TINY, "split": "."})


def test_empty_and_too_long_prompts_are_422_on_prompt(service: KokoroService) -> None:
    cases = [(service.generate, AmEnglishRequest()), (service.american_english, AmEnglishRequest(text=" \n ")),
             (service.british_english, BrEnglishRequest(prompt="", voice="bf_emma")),
             (service.japanese, JapaneseRequest(prompt="x" * 20_000, voice="jf_alpha")),
             (service.generate, AmEnglishRequest(text="x" * 20_000))]
    for method, request in cases:
        with pytest.raises(FieldError) as e:
            method(request)
        assert e.value.field == "prompt" and e.value.status_code == 422


def test_american_streams_each_sentence_then_the_whole_file(service: KokoroService) -> None:
    events: list[Any] = []
    out = service.generate(AmEnglishRequest(text="Hi there. Bye!"), RunContext("r", emit=events.append))
    chunks = [e.data for e in events if isinstance(e, Partial)]
    assert [e.kind for e in events if isinstance(e, Partial)] == ["audio_chunk", "audio_chunk"]
    assert [(c.index, c.text) for c in chunks] == [(0, "Hi there."), (1, "Bye!")]
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(1, 2), (2, 2)]
    whole = read_wav(out.audio)
    parts = [read_wav(c.audio) for c in chunks]
    assert np.array_equal(whole, np.concatenate(parts)) and np.abs(whole).max() > 0
    # Durations are pinned to 3 frames (75 ms) per phoneme token: "Hi there." is about a second.
    assert 0.5 < len(parts[0]) / 24_000 < 2.0


def test_speed_shortens_the_audio(service: KokoroService) -> None:
    normal = read_wav(service.generate(AmEnglishRequest(prompt="Hi.")).audio)
    fast = read_wav(service.generate(AmEnglishRequest(prompt="Hi.", speed=3.0)).audio)
    assert len(fast) * 3 == len(normal)  # 1 frame per token instead of 3


def test_british_and_japanese(service: KokoroService) -> None:
    events: list[Any] = []
    british = service.british_english(BrEnglishRequest(prompt="Good day.", voice="bm_george"))
    japanese = service.japanese(JapaneseRequest(prompt="こんにちは。元気\uff1f", voice="jm_kumo"),
                                RunContext("r", emit=events.append))
    assert len(read_wav(british.audio)) > 0 and len(read_wav(japanese.audio)) > 0
    assert [e.data.text for e in events if isinstance(e, Partial)] == ["こんにちは。", "元気\uff1f"]


def test_offline_english_g2p_keeps_punctuation(service: KokoroService) -> None:
    phonemes, _ = service.pipelines["american-english"].g2p("Hello, world. Read it!")
    assert phonemes.count(",") == 1 and "." in phonemes and phonemes.endswith("!")
    british, _ = service.pipelines["british-english"].g2p("tomato")
    american, _ = service.pipelines["american-english"].g2p("tomato")
    assert british != american


def test_a_named_spacy_model_is_never_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy.cli

    from deployments.kokoro.g2p import english_nlp

    def download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(spacy.cli, "download", download)
    with pytest.raises(RuntimeError, match="not installed"):
        english_nlp("en_core_web_not_installed")


def test_cancel_stops_before_the_next_chunk(service: KokoroService) -> None:
    cancel = threading.Event()
    chunks: list[Any] = []

    def emit(event: Any) -> None:
        if isinstance(event, Partial):
            chunks.append(event)
            cancel.set()  # the caller hangs up after the first chunk

    with pytest.raises(RequestCancelled):
        service.generate(AmEnglishRequest(prompt="One. Two. Three."), RunContext("r", emit=emit, cancel_event=cancel))
    assert len(chunks) == 1


def save_published_layout(service: KokoroService, directory: Path) -> None:
    """What hexgrad/Kokoro-82M holds: config.json, kokoro-v1_0.pth (torch.save of one state dict per
    part, the format kokoro reads), voices/<name>.pt."""
    import json

    import torch

    from deployments.kokoro.presets import MODEL_PARTS, TINY_CONFIG

    (directory / "voices").mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG, ensure_ascii=False), encoding="utf-8")
    torch.save({part: getattr(service.model, part).state_dict() for part in MODEL_PARTS},
               directory / "kokoro-v1_0.pth")
    for pipeline in service.pipelines.values():
        for name, pack in pipeline.voices.items():
            torch.save(pack, directory / "voices" / f"{name}.pt")


def test_prod_loading_path_round_trip(service: KokoroService, tmp_path: Path) -> None:
    """Save the tiny model in the published layout and load it through the config's `id` path."""
    from deployments.kokoro.presets import fetch

    save_published_layout(service, tmp_path)
    loaded = KokoroService(KokoroConfig.model_validate({**TINY, "model": {"id": str(tmp_path)}}))
    import torch

    request = BrEnglishRequest(prompt="Hi.", voice="bf_lily")
    outputs = []
    for svc in (loaded, service):
        torch.manual_seed(0)  # the decoder's harmonic source adds random noise and phase
        outputs.append(read_wav(svc.british_english(request).audio))
    assert np.array_equal(*outputs)
    with pytest.raises(FileNotFoundError, match="voices"):
        fetch(KokoroConfig.model_validate({**TINY, "model": {"id": str(tmp_path)}}).model, "missing.pth")
