"""The dev.yaml application over HTTP: DiffRhythm (tiny presets) with English and Chinese lyrics, a
text style and a reference clip made here, the stream's per-step progress, and each 422."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from tests.app.conftest import load_dev_app

STEPS = 10  # the minimum: 9 ODE steps


def frames_95s() -> int:
    return int(load_dev_app()["args"]["services"]["diffrhythm"]["config"]["frames_95s"])


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def song_samples(client: httpx.Client, audio: dict[str, Any]) -> np.ndarray:
    assert audio["content_type"] == "audio/wav" and audio["file_name"].endswith(".wav")
    r = client.get(audio["url"])
    assert r.status_code == 200 and int(audio["file_size"]) == len(r.content)
    info = soundfile.info(io.BytesIO(r.content))
    assert (info.samplerate, info.channels, info.subtype) == (44_100, 2, "PCM_16")
    samples, _ = soundfile.read(io.BytesIO(r.content), always_2d=True)
    assert audio["duration"] == pytest.approx(samples.shape[0] / 44_100)
    return samples


def reference_wav_url(seconds: float = 12.0) -> str:
    rate = 22_050
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, tone, rate, format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def test_english_lyrics_with_a_text_style(client: httpx.Client) -> None:
    body = {"lyrics": "[00:00.10]Moonlight spills through broken blinds\n[00:00.80]Hello.", "style_prompt": "pop",
            "num_inference_steps": STEPS, "seed": 1}
    r = client.post("/diffrhythm", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"audio", "seed"} and out["seed"] == 1
    assert song_samples(client, out["audio"]).shape == (frames_95s() * 2048, 2)
    assert r.headers["x-fal-billable-units"] == "9"  # max(1, samples // 441,000) at the published 95 s


def test_chinese_lyrics_with_a_reference_clip_streams_each_step(client: httpx.Client) -> None:
    body = {"lyrics": "[00:00.10]让我掉下眼泪的\n[00:00.90]不止昨夜的酒", "reference_audio_url": reference_wav_url(),
            "num_inference_steps": STEPS, "scheduler": "midpoint"}
    with client.stream("POST", "/diffrhythm/stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    progress = [(e["step"], e["total"]) for e in events if e.get("type") == "progress"]
    assert progress == [(i, STEPS - 1) for i in range(1, STEPS)]
    final = events[-1]
    assert set(final) == {"audio", "seed"}
    assert song_samples(client, final["audio"]).shape == (frames_95s() * 2048, 2)


@pytest.mark.parametrize(("path", "body", "field", "message"), [
    ("/diffrhythm", {"lyrics": "[00:00.10]hello"}, "style_prompt", "Either style_prompt or reference_audio_url"),
    ("/diffrhythm", {"lyrics": "[00:00.10]안녕하세요", "style_prompt": "pop"}, "lyrics",
     "Unsupported language in lyrics."),
    ("/diffrhythm/stream", {"lyrics": "[00:00.10]hello", "reference_audio_url": "data:audio/wav;base64,bm90IGF1ZGlv"},
     "reference_audio_url", "could not decode"),
    ("/diffrhythm", {"lyrics": "[00:00.10]hello", "style_prompt": "pop", "cfg_strength": 11}, "cfg_strength", ""),
])
def test_bad_inputs_are_422_naming_the_field(client: httpx.Client, path: str, body: dict[str, Any], field: str,
                                             message: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text  # also for /stream: a real 422 before any frame
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", field]] and message in detail[0]["msg"]
    assert r.headers["x-fal-billable-units"] == "0"


def test_diffrhythm_is_documented(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/diffrhythm" in paths and "/diffrhythm/stream" in paths
