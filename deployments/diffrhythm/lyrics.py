"""LRC lyrics -> one token per latent frame, as DiffRhythm lays them out.

The VAE turns 2048 samples of 44.1 kHz audio into one latent frame (21.53 frames/s; 2048 frames
are 95.1 s, 6136 frames 285 s). Each timed line's phone tokens are written at the frame of its
timestamp, `int(seconds * 44100 / 2048)`: a period inside the line becomes a comma and a period
closes the line; a line never starts before the previous one ended, and tokens past the song's
last frame are cut. Frames with no lyric hold 0. Lines starting after the song ends are dropped.

Differences from the published `get_lrc_token`: timestamps are read with a pattern (`[m:ss]`,
`[mm:ss.xx]`, `[mm:ss.xxx]`) instead of fixed character positions; lines with no text (instrumental
markers) are skipped instead of failing; and the 95 s layout keeps its last line (the published code
drops it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from deployments.diffrhythm.vocab import COMMA_TOKEN, PERIOD_TOKEN

SAMPLE_RATE = 44_100
HOP = 2048  # samples per latent frame
FRAMES_PER_SECOND = SAMPLE_RATE / HOP
LINE = re.compile(r"^\s*\[(\d{1,3}):(\d{1,2}(?:\.\d{1,3})?)\](.*)$")


@dataclass(frozen=True)
class LyricLine:
    """One timed line of an LRC file."""

    seconds: float
    text: str


def parse_lrc(lrc: str) -> list[LyricLine]:
    """Timed lines in file order; lines without a `[mm:ss.xx]` stamp (tags, blanks) are ignored."""
    lines = []
    for raw in lrc.strip().splitlines():
        match = LINE.match(raw)
        if match:
            minutes, seconds, text = match.groups()
            lines.append(LyricLine(int(minutes) * 60 + float(seconds), text.strip()))
    return lines


def encode_lines(lines: list[LyricLine], encode: Callable[[str], list[int]]) -> list[tuple[float, list[int]]]:
    """`(seconds, tokens)` of every line with text; `encode` may raise for an unsupported language."""
    return [(line.seconds, encode(line.text)) for line in lines if line.text]


def layout(timed: list[tuple[float, list[int]]], frames: int) -> list[int]:
    """Frame-aligned tokens, `frames` long, from `encode_lines`' output."""
    out = [0] * frames
    end_seconds = frames / FRAMES_PER_SECOND
    last_end = 0
    for seconds, phones in timed:
        if seconds >= end_seconds:
            continue
        tokens = [COMMA_TOKEN if t == PERIOD_TOKEN else t for t in phones] + [PERIOD_TOKEN]
        start = max(int(seconds * FRAMES_PER_SECOND), last_end)
        count = min(len(tokens), frames - start)
        if count <= 0:
            continue
        out[start:start + count] = tokens[:count]
        last_end = start + count
    return out
