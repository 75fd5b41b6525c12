"""DiffRhythm music generation: `POST /diffrhythm` (+ `/stream`), as fal's DiffRhythm demo defines it.

Timestamped lyrics (LRC) and a style (a text prompt or a reference clip) become a 95 s or 285 s
song, 44.1 kHz stereo WAV. One DiT (the 6144-frame `DiffRhythm-1_2-full`, with its duration
embedding) serves both lengths, as in fal's demo; MuQ-MuLan turns the style into 512 numbers; the
TorchScript VAE decodes in overlapping windows. The stream reports every ODE step.

Departures from the demo, on purpose: a request's `seed` is honoured (same seed, same song);
`max_frames` is accepted and ignored (the demo ignores it too); `num_candidates` above the
configured maximum is a 422, since picking among candidates needs SongEval (CC BY-NC-SA 4.0),
which this service does not ship; the duration embedding gets `frames / 6144`, the full model's
normalisation, also for 95 s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.endpoints import endpoint
from serve_app.errors import FieldError
from serve_app.inputs import FetchOptions, fetch_url
from serve_app.io import Audio
from serve_app.models.source import DeviceName, DtypeName, ModelSource, resolve_device, resolve_dtype
from serve_app.service import RunContext, Service

logger = logging.getLogger("ray.serve")

DIT_ID = "ASLP-lab/DiffRhythm-1_2-full"
VAE_ID = "ASLP-lab/DiffRhythm-vae"
MULAN_ID = "OpenMuQ/MuQ-MuLan-large"
SAMPLE_RATE = 44_100
HOP = 2048
PUBLISHED_FRAMES = {"95s": 2048, "285s": 6136}  # 95.1 s and int(285 * 44100 / 2048)
MAX_CANDIDATES = 1  # until a candidate selector (SongEval, CC BY-NC-SA 4.0) is added and enabled
Scheduler = Literal["euler", "midpoint", "rk4", "implicit_adams"]
MusicDuration = Literal["95s", "285s"]


class DiffRhythmConfig(BaseModel):
    """Configuration of the DiffRhythm service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=DIT_ID), description="The DiT (`cfm_model.pt`).")
    vae: ModelSource = Field(default=ModelSource(id=VAE_ID), description="The TorchScript VAE (`vae_model.pt`).")
    mulan: ModelSource = Field(default=ModelSource(id=MULAN_ID),
                               description="MuQ-MuLan (`config.json` + weights) for text and audio styles.")
    mulan_audio_config: str | None = Field(
        default=None, description="Hub id or directory of MuQ's config.json; default: the one MuQ-MuLan names.")
    mulan_text_model: str | None = Field(
        default=None, description="Hub id or directory of XLM-R's config and tokenizer; default: the one named.")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    dtype: DtypeName = Field(default="auto", description="DiT dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    frames_95s: int = Field(default=PUBLISHED_FRAMES["95s"], gt=0, description="Latent frames of a 95s song.")
    frames_285s: int = Field(default=PUBLISHED_FRAMES["285s"], gt=0, description="Latent frames of a 285s song.")
    decode_chunk: int = Field(default=128, gt=0, description="VAE decode window, in latent frames.")
    decode_overlap: int = Field(default=32, ge=0, description="Overlap of neighbouring VAE windows, in frames.")
    max_download_bytes: int = Field(default=100 * 1024 * 1024, gt=0, description="Reference audio size limit.")
    compile: bool = Field(default=False, description="torch.compile the DiT (one compilation per song length).")
    warmup: bool = Field(default=True, description="Generate one short song at start, before taking traffic.")


class DiffRhythmInput(BaseModel):
    """Input of `POST /diffrhythm`: fal's DiffRhythm fields."""

    lyrics: str = Field(description="Lyrics with LRC timestamps, one line each: `[mm:ss.xx]text`. English and "
                        "Chinese.", examples=["[00:10.00]Moonlight spills through broken blinds\n"
                                              "[00:13.20]Your shadow dances on the dashboard shrine"],
                        json_schema_extra={"ui": {"field": "textarea"}})
    reference_audio_url: str | None = Field(default=None, description="A song (10 s or longer) whose style to "
                                            "follow; its middle 10 s are used.", json_schema_extra={"ui": {
                                                "important": True}})
    style_prompt: str | None = Field(default=None, description="The style as text, used when there is no "
                                     "reference audio.", examples=["pop"])
    music_duration: MusicDuration = Field(default="95s", description="Length of the song.")
    cfg_strength: float = Field(default=4.0, ge=1, le=10, description="Classifier-free guidance strength.")
    scheduler: Scheduler = Field(default="euler", description="ODE solver.")
    num_inference_steps: int = Field(default=32, ge=10, le=100, description="Points of the ODE time grid.")
    max_frames: int = Field(default=2048, ge=100, le=8192, description="Accepted and ignored, as in fal's demo: "
                            "`music_duration` sets the length.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Same seed and inputs give the same "
                             "song. Omit for a random seed; the seed used is returned.")
    num_candidates: int = Field(default=1, ge=1, le=3, description="Songs to generate and choose from (needs a "
                                "candidate selector on the server).")


class SongAudio(Audio):
    """The generated song: a 44.1 kHz, 16-bit stereo WAV."""

    duration: float = Field(description="Length of the song in seconds.")


class DiffRhythmOutput(BaseModel):
    """Output of `POST /diffrhythm`."""

    audio: SongAudio = Field(description="The generated song.")
    seed: int = Field(description="The seed used.")


def billable_units(request: DiffRhythmInput) -> float:
    """fal's demo: `max(1, samples // 441000)` at the published length (95s: 9 units, 285s: 28)."""
    return max(1, PUBLISHED_FRAMES[request.music_duration] * HOP // 441_000)


class DiffRhythmService(Service):
    """DiT, VAE, MuQ-MuLan and G2P loaded once; one song at a time per replica."""

    def __init__(self, config: DiffRhythmConfig) -> None:
        import torch

        from deployments.diffrhythm import g2p, negative_style, weights

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._torch = torch
        self.dit: Any = weights.load_dit(config.model, self.device, self.dtype)
        if config.compile:
            self.dit = torch.compile(self.dit)
        self.vae = weights.load_vae(config.vae, self.device, torch.float32)
        self.mulan = weights.load_mulan(config.mulan, self.device, torch.float32, config.mulan_audio_config,
                                        config.mulan_text_model)
        self.negative_style = negative_style.load()
        self.g2p = g2p.G2P()
        logger.info("DiffRhythm loaded (%s, %s, %s) on %s/%s", config.model.describe(), config.vae.describe(),
                    config.mulan.describe(), self.device, self.dtype)
        if config.warmup:  # both lengths when compiling: each compiles the DiT once
            for duration in ("95s", "285s") if config.compile else ("95s",):
                self.generate(DiffRhythmInput(lyrics="[00:00.50]Hello.", style_prompt="pop", num_inference_steps=10,
                                              music_duration=duration, seed=0), RunContext("warmup"))

    def frames(self, duration: MusicDuration) -> int:
        return self.config.frames_95s if duration == "95s" else self.config.frames_285s

    def lyric_tokens(self, request: DiffRhythmInput, frames: int) -> list[int]:
        """Frame-aligned tokens; 422 on `lyrics` for unsupported scripts or LRC without timestamps."""
        from deployments.diffrhythm import lyrics
        from deployments.diffrhythm.g2p import UnsupportedLanguage

        lines = lyrics.parse_lrc(request.lyrics)
        if request.lyrics.strip() and not lines:
            raise FieldError("lyrics", "No timed lines: write one `[mm:ss.xx]text` line per lyric line.")
        try:
            timed = lyrics.encode_lines(lines, self.g2p.tokens)
        except UnsupportedLanguage as e:
            raise FieldError("lyrics", "Unsupported language in lyrics.") from e
        return lyrics.layout(timed, frames)

    def style(self, request: DiffRhythmInput) -> Any:
        """`[1, 512]` from the reference clip (preferred, as in the demo) or the style prompt."""
        from deployments.diffrhythm import audio_io

        if request.reference_audio_url:
            field = "reference_audio_url"
            options = FetchOptions(max_bytes=self.config.max_download_bytes)
            data = asyncio.run(fetch_url(request.reference_audio_url, field, options))
            try:
                samples, rate = audio_io.decode(data)
                clip = audio_io.middle_clip(samples, rate)
            except audio_io.UndecodableAudio as e:
                raise FieldError(field, str(e)) from e
            return self.mulan.embed_audio(self._torch.from_numpy(clip))
        if request.style_prompt and request.style_prompt.strip():
            return self.mulan.embed_text([request.style_prompt])
        raise FieldError("style_prompt", "Either style_prompt or reference_audio_url must be provided.")

    @endpoint("", input=DiffRhythmInput, output=DiffRhythmOutput, billing=billable_units)
    def generate(self, request: DiffRhythmInput, ctx: RunContext) -> DiffRhythmOutput:
        """Generate a song from LRC lyrics and a style prompt or reference audio."""
        from deployments.diffrhythm import audio_io, cfm, vae

        torch = self._torch
        if request.num_candidates > MAX_CANDIDATES:
            raise FieldError("num_candidates", f"At most {MAX_CANDIDATES} candidate here: choosing among candidates "
                             "needs SongEval, which is not enabled on this server.")
        frames = self.frames(request.music_duration)
        tokens = self.lyric_tokens(request, frames)
        style = self.style(request)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)

        def on_step(done: int, total: int) -> None:
            ctx.check_cancelled()
            ctx.progress(done, total, "denoising")

        song = cfm.SongConditions(tokens=torch.tensor([tokens]), style=style, negative_style=self.negative_style,
                                  duration=frames / self.dit.config.max_frames)
        latents = cfm.sample(self.dit, song, steps=request.num_inference_steps, cfg_strength=request.cfg_strength,
                             method=request.scheduler, seed=seed, on_step=on_step,
                             sway_coef=-1.0 if request.num_inference_steps < 32 else None)
        ctx.check_cancelled()
        audio = vae.decode(self.vae, latents.transpose(1, 2), self.config.decode_chunk, self.config.decode_overlap)
        samples = audio.shape[-1]
        wav = audio_io.wav_bytes(audio[0].cpu().numpy(), SAMPLE_RATE)
        return DiffRhythmOutput(audio=SongAudio.from_bytes(wav, "audio/wav", duration=samples / SAMPLE_RATE),
                                seed=seed)

    def check_health(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()  # raises when the CUDA context is broken


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(DiffRhythmService, DiffRhythmConfig.model_validate(args.config), name, args)
