"""Kokoro text-to-speech (Kokoro-82M): `/` and `/american-english`, `/british-english`, `/japanese`,
as fal's Kokoro demo defines them. Outputs a 24 kHz WAV; `/stream` sends each sentence's audio as
soon as it is synthesised (`audio_chunk` frames), then the whole file.

Batching: KModel's forward has no batch dimension (durations become a per-utterance alignment), so
`@serve.batch` could only queue calls one after another; on CPU, concurrent calls just share the
same cores (bench/kokoro_rtf.py measures it). One request at a time per replica; scale replicas.
"""

from __future__ import annotations

import io
import logging
import re
import wave
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from deployments.kokoro.presets import KOKORO_ID, SAMPLE_RATE, WEIGHTS_FILE
from serve_app.endpoints import endpoint
from serve_app.errors import FieldError
from serve_app.io import Audio
from serve_app.models.source import DeviceName, ModelSource, resolve_device
from serve_app.service import RunContext, Service

logger = logging.getLogger("ray.serve")

MAX_PROMPT_CHARS = 20_000  # fal's bound: a prompt this long or longer is a 422
# Sentence ends (whitespace after . ! ?; right after the ideographic full stop and the full-width ! ?
# in Japanese) and newlines.
SENTENCES = r"\n+|(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])"

AmericanVoice = Literal[
    "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova",
    "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael",
    "am_onyx", "am_puck", "am_santa",
]
BritishVoice = Literal["bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george",
                       "bm_lewis"]
JapaneseVoice = Literal["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
VOICES: dict[str, tuple[str, ...]] = {
    "american-english": get_args(AmericanVoice),
    "british-english": get_args(BritishVoice),
    "japanese": get_args(JapaneseVoice),
}


class KokoroConfig(BaseModel):
    """Configuration of the Kokoro service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=KOKORO_ID),
                               description="Kokoro weights and voice packs (config.json, weights, voices/*.pt).")
    weights_file: str = Field(default=WEIGHTS_FILE, description="Weight file name inside `model`.")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    spacy_model: str | None = Field(
        default="en_core_web_sm",
        description="Installed spaCy pipeline for English G2P (never downloaded); null: a blank tokenizer "
        "with punctuation rules (no part-of-speech tags for homographs).")
    split_pattern: str = Field(default=SENTENCES,
                               description="Regex splitting the prompt into the chunks synthesised and streamed.")
    warmup: bool = Field(default=True, description="Synthesise a short phrase at start, before taking traffic.")


class AmEnglishRequest(BaseModel):
    """Input of `/kokoro` and `/kokoro/american-english`."""

    prompt: str = Field(default="", description="The text to speak (fewer than 20,000 characters).",
                        examples=["The future belongs to those who believe in the beauty of their dreams."],
                        json_schema_extra={"ui": {"field": "textarea", "important": True}})
    text: str = Field(default="", description="Alias of `prompt`, used when `prompt` is empty.")
    voice: AmericanVoice = Field(default="af_heart", description="Voice for the generated speech.")
    speed: float = Field(default=1.0, ge=0.1, le=5.0, description="Speed of the generated audio.")


class BrEnglishRequest(BaseModel):
    """Input of `/kokoro/british-english`."""

    prompt: str = Field(description="The text to speak (fewer than 20,000 characters).",
                        examples=["Ladies and gentlemen, welcome aboard."],
                        json_schema_extra={"ui": {"field": "textarea", "important": True}})
    voice: BritishVoice = Field(description="Voice for the generated speech.")
    speed: float = Field(default=1.0, ge=0.1, le=5.0, description="Speed of the generated audio.")


class JapaneseRequest(BaseModel):
    """Input of `/kokoro/japanese`."""

    prompt: str = Field(description="The text to speak (fewer than 20,000 characters).",
                        examples=["夢を追いかけることを恐れないでください。"],
                        json_schema_extra={"ui": {"field": "textarea", "important": True}})
    voice: JapaneseVoice = Field(description="Voice for the generated speech.")
    speed: float = Field(default=1.0, ge=0.1, le=5.0, description="Speed of the generated audio.")


TTSRequest = AmEnglishRequest | BrEnglishRequest | JapaneseRequest


class TTSOutput(BaseModel):
    """Output of every Kokoro endpoint."""

    audio: Audio = Field(description="The generated speech, a 24 kHz mono WAV file.")


class AudioChunk(BaseModel):
    """A stream frame (`type: audio_chunk`): one chunk's audio, in order."""

    index: int = Field(description="Position of the chunk, from 0.")
    text: str = Field(description="The text this chunk speaks.")
    audio: Audio = Field(description="The chunk as a 24 kHz mono WAV file.")


def prompt_of(request: TTSRequest) -> str:
    """The text to speak (`prompt`, or the American endpoint's `text` alias)."""
    return request.prompt or getattr(request, "text", "")


def billable_units(request: TTSRequest) -> float:
    """fal's demo: one unit per started 1,000 characters, floor, at least 1."""
    return max(1, len(prompt_of(request)) // 1000)


def wav_bytes(samples: Any, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV of float samples in [-1, 1] (clipped)."""
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


class KokoroService(Service):
    """One Kokoro model shared by three language pipelines, voice packs loaded at start."""

    def __init__(self, config: KokoroConfig) -> None:
        from deployments.kokoro import g2p, presets

        self.config = config
        self._split = re.compile(config.split_pattern)
        self.device = resolve_device(config.device)
        self.model = presets.load_model(config.model, config.weights_file, self.device)
        self.pipelines = g2p.build_pipelines(self.model, config.spacy_model)
        voices = presets.load_voices(config.model, [v for names in VOICES.values() for v in names])
        for language, pipeline in self.pipelines.items():
            pipeline.voices.update({name: voices[name] for name in VOICES[language]})
        logger.info("Kokoro loaded (%s) on %s", config.model.describe(), self.device)
        if config.warmup:
            self.american_english(AmEnglishRequest(prompt="Hello."), RunContext("warmup"))

    @endpoint("", input=AmEnglishRequest, output=TTSOutput, billing=billable_units)
    def generate(self, request: AmEnglishRequest, ctx: RunContext) -> TTSOutput:
        """Speak American English text."""
        return self._speak("american-english", request, ctx)

    @endpoint("/american-english", input=AmEnglishRequest, output=TTSOutput, billing=billable_units)
    def american_english(self, request: AmEnglishRequest, ctx: RunContext) -> TTSOutput:
        """Speak American English text."""
        return self._speak("american-english", request, ctx)

    @endpoint("/british-english", input=BrEnglishRequest, output=TTSOutput, billing=billable_units)
    def british_english(self, request: BrEnglishRequest, ctx: RunContext) -> TTSOutput:
        """Speak British English text."""
        return self._speak("british-english", request, ctx)

    @endpoint("/japanese", input=JapaneseRequest, output=TTSOutput, billing=billable_units)
    def japanese(self, request: JapaneseRequest, ctx: RunContext) -> TTSOutput:
        """Speak Japanese text."""
        return self._speak("japanese", request, ctx)

    def _speak(self, language: str, request: TTSRequest, ctx: RunContext) -> TTSOutput:
        """Synthesise chunk by chunk (streaming each one), then return the whole WAV."""
        import numpy as np

        text = prompt_of(request)
        if len(text) >= MAX_PROMPT_CHARS:
            raise FieldError("prompt", f"Prompt must be less than {MAX_PROMPT_CHARS} characters.")
        segments = [s for s in self._split.split(text) if s and s.strip()]
        if not segments:
            raise FieldError("prompt", "Prompt must not be empty.")
        pipeline = self.pipelines[language]
        chunks: list[Any] = []
        for done, segment in enumerate(segments, start=1):
            for result in pipeline(segment, voice=request.voice, speed=request.speed, split_pattern=None):
                if result.audio is None:
                    continue
                samples = result.audio.numpy()
                chunks.append(samples)
                if ctx.streaming:
                    chunk = AudioChunk(index=len(chunks) - 1, text=result.graphemes,
                                       audio=Audio.from_bytes(wav_bytes(samples), "audio/wav"))
                    ctx.partial(chunk, kind="audio_chunk")
                ctx.check_cancelled()  # before the next chunk's forward pass
            ctx.progress(done, len(segments), "synthesising")
        if not chunks:
            raise FieldError("prompt", "Prompt has nothing to speak.")
        return TTSOutput(audio=Audio.from_bytes(wav_bytes(np.concatenate(chunks)), "audio/wav"))

    def check_health(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()  # raises when the CUDA context is broken


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(KokoroService, KokoroConfig.model_validate(args.config), name, args)
