"""Audio in and out without torchaudio: libsndfile (soundfile) to decode, soxr to resample, WAV out.

The reference clip for the style is what MuQ-MuLan saw in training: 10 s of 24 kHz mono from the
middle of the song (the published code starts at `duration // 2 - 5` s). soundfile reads WAV,
FLAC, OGG/Vorbis, Opus and MP3 (libsndfile 1.1+ bundled in its wheels).
"""

from __future__ import annotations

import io
import math

import numpy as np

CLIP_SECONDS = 10
MULAN_RATE = 24_000


class UndecodableAudio(ValueError):
    """The bytes are not audio that libsndfile can read, or the clip is too short."""


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """`(samples [frames, channels] float32, sample_rate)`.

    Raises:
        UndecodableAudio: an unknown or corrupt format, or no samples.
    """
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise UndecodableAudio(f"could not decode the audio: {e}") from e
    if samples.size == 0 or not np.isfinite(samples).all():
        raise UndecodableAudio("the audio has no (finite) samples")
    return samples, int(rate)


def middle_clip(samples: np.ndarray, rate: int, min_seconds: float = CLIP_SECONDS) -> np.ndarray:
    """10 s of 24 kHz mono from the middle (whole seconds, as published), float32.

    Raises:
        UndecodableAudio: shorter than `min_seconds`.
    """
    import soxr

    seconds = samples.shape[0] / rate
    if seconds < min_seconds:
        raise UndecodableAudio(f"the reference audio is {seconds:.1f} s long; at least {min_seconds:g} s are needed")
    start = max(0, (math.floor(seconds) // 2 - CLIP_SECONDS // 2) * rate)
    mono = samples[start:start + CLIP_SECONDS * rate].mean(axis=1)
    clip = soxr.resample(mono, rate, MULAN_RATE, quality="HQ") if rate != MULAN_RATE else mono
    clip = np.asarray(clip, dtype=np.float32)[: CLIP_SECONDS * MULAN_RATE]
    return np.pad(clip, (0, CLIP_SECONDS * MULAN_RATE - clip.shape[0]))


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV of `[channels, samples]` float audio, peak-normalised as published."""
    import soundfile

    peak = float(np.abs(audio).max()) if audio.size else 0.0
    scaled = audio / peak if peak > 0 else audio
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(scaled, -1.0, 1.0).T, rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()
