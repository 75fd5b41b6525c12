"""Kokoro text-to-speech service (see `service.py`; weights and presets in `presets.py`, G2P in `g2p.py`)."""

from deployments.kokoro.service import (
    AmEnglishRequest,
    AudioChunk,
    BrEnglishRequest,
    JapaneseRequest,
    KokoroConfig,
    KokoroService,
    TTSOutput,
    billable_units,
    build,
)

__all__ = ["AmEnglishRequest", "AudioChunk", "BrEnglishRequest", "JapaneseRequest", "KokoroConfig",
           "KokoroService", "TTSOutput", "billable_units", "build"]
