"""DiffRhythm music service (see `service.py`). Model parts: `dit.py` + `cfm.py` (DiT and flow-matching
sampler), `mulan.py` + `muq.py` (MuQ-MuLan styles), `vae.py`, lyrics in `lyrics.py`, `g2p.py`,
`pinyin.py`, `vocab.py`; published files and presets in `weights.py`."""

from deployments.diffrhythm.service import (
    DiffRhythmConfig,
    DiffRhythmInput,
    DiffRhythmOutput,
    DiffRhythmService,
    SongAudio,
    billable_units,
    build,
)

__all__ = ["DiffRhythmConfig", "DiffRhythmInput", "DiffRhythmOutput", "DiffRhythmService", "SongAudio",
           "billable_units", "build"]
