"""The dev.yaml application over HTTP: Kokoro (tiny preset) sync, stream and field errors, and the
Hunyuan3D proxy's answer without FAL_KEY. (The proxy against a fake fal: test_hunyuan3d_http.py.)"""

from __future__ import annotations

import io
import json
import os
import wave
from typing import Any

import httpx
import pytest


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def wav_frames(client: httpx.Client, audio: dict[str, Any]) -> int:
    assert audio["content_type"] == "audio/wav" and audio["file_name"].endswith(".wav")
    r = client.get(audio["url"])
    assert r.status_code == 200 and int(audio["file_size"]) == len(r.content)
    with wave.open(io.BytesIO(r.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        return w.getnframes()


def test_kokoro_root_speaks_the_text_alias(client: httpx.Client) -> None:
    r = client.post("/kokoro", json={"text": "Hi.", "voice": "am_adam", "speed": 1.5})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"audio"} and wav_frames(client, r.json()["audio"]) > 0
    assert r.headers["x-fal-billable-units"] == "1"


def test_kokoro_stream_sends_each_sentence_then_the_file(client: httpx.Client) -> None:
    with client.stream("POST", "/kokoro/british-english/stream",
                       json={"prompt": "Hi. Bye.", "voice": "bf_emma"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    chunks = [e for e in events if e.get("type") == "audio_chunk"]
    assert [(c["index"], c["text"]) for c in chunks] == [(0, "Hi."), (1, "Bye.")]
    assert [e["step"] for e in events if e.get("type") == "progress"] == [1, 2]
    final = events[-1]
    assert set(final) == {"audio"}
    assert wav_frames(client, final["audio"]) == sum(wav_frames(client, c["audio"]) for c in chunks)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/kokoro/japanese", {"prompt": "", "voice": "jf_alpha"}, "prompt"),
    ("/kokoro/american-english", {"prompt": "x" * 20_000}, "prompt"),
    ("/kokoro/japanese/stream", {"prompt": "  ", "voice": "jm_kumo"}, "prompt"),
    ("/kokoro/british-english", {"prompt": "Hi.", "voice": "af_heart"}, "voice"),
    ("/kokoro", {"prompt": "Hi.", "speed": 9}, "speed"),
])
def test_kokoro_field_errors_are_422_naming_the_field(client: httpx.Client, path: str, body: dict[str, Any],
                                                      field: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text  # also for /stream: a real 422 before any frame
    assert [d["loc"] for d in r.json()["detail"]] == [["body", field]]
    assert r.headers["x-fal-billable-units"] == "0"


def test_kokoro_and_hunyuan3d_routes_are_documented(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/kokoro", "/kokoro/american-english", "/kokoro/british-english", "/kokoro/japanese",
                 "/hunyuan3d/v2/mini/turbo"):
        assert path in paths and f"{path}/stream" in paths


@pytest.mark.skipif(bool(os.environ.get("FAL_KEY")), reason="FAL_KEY is set: the dev proxy would call fal")
def test_hunyuan3d_without_a_key_is_503(client: httpx.Client) -> None:
    r = client.post("/hunyuan3d/v2/mini/turbo", json={"input_image_url": "https://images.example/a.png"})
    assert r.status_code == 503 and "FAL_KEY" in r.json()["detail"]
