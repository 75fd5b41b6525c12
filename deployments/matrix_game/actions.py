"""Player actions: fal's `"<move> <look>"` strings, their per-mode vectors, and the per-frame history.

Protocol (fal's Matrix-Game demo): `{"type": "action", "action": "<move> <look>"}` with move in
w a s d q and look in i j k l u; `"q u"` is idle. The published key maps (CAM_VALUE = 0.1):
- universal: keyboard one-hot [forward, back, left, right] from w s a d (q: none); mouse
  [pitch, yaw] from i (+0.1, 0), k (-0.1, 0), j (0, -0.1), l (0, +0.1), u (0, 0).
- gta_drive: keyboard [forward, back] from w s; steering is the mouse yaw: a or j = -0.1,
  d or l = +0.1 (look wins when both are given); no pitch.
- templerun: keyboard one-hot [nomove, jump, slide, turnleft, turnright, leftside, rightside]: q is
  nomove, w jump, s slide, a leftside, d rightside, and with move q the look keys j / l turn left /
  right; no mouse. (Mapping the 2-key protocol onto gta_drive and templerun is ours: fal's demo only
  drives universal.)

`ActionHistory` keeps one action vector per video frame. Generating latent frames s..s+F-1 first sets
their video frames (frame 0 for s = 0, else 4s-3 .. 4(s+F-1)) to the latest action, as the published
streaming loop does, then gives each latent frame j the actions of video frames 4j-12 .. 4j-1
(before frame 0: frame 0's), the window the action modules read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from deployments.matrix_game.configs import ActionConfig, Mode

MOVES = ("w", "a", "s", "d", "q")
LOOKS = ("i", "j", "k", "l", "u")
CAM_VALUE = 0.1


class ActionError(ValueError):
    """A client action that does not follow the `"<move> <look>"` grammar."""


@dataclass(frozen=True)
class Action:
    move: str = "q"
    look: str = "u"

    def __str__(self) -> str:
        return f"{self.move} {self.look}"


IDLE = Action()


def parse_action(text: Any) -> Action:
    """`"w l"` -> Action("w", "l").

    Raises:
        ActionError: not a string of one move key (w a s d q) and one look key (i j k l u).
    """
    if not isinstance(text, str):
        raise ActionError(f"action must be a string like 'w l', got {type(text).__name__}")
    parts = text.strip().lower().split()
    if len(parts) != 2:
        raise ActionError(f"action must be '<move> <look>' (e.g. 'w l', idle 'q u'), got {text!r}")
    move, look = parts
    if move not in MOVES:
        raise ActionError(f"move must be one of {' '.join(MOVES)}, got {move!r}")
    if look not in LOOKS:
        raise ActionError(f"look must be one of {' '.join(LOOKS)}, got {look!r}")
    return Action(move, look)


def parse_action_message(message: dict[str, Any]) -> Action:
    """`{"type": "action", "action": "w l"}` -> Action. Raises ActionError."""
    if message.get("type") != "action":
        raise ActionError(f"not an action message: type {message.get('type')!r}")
    if "action" not in message:
        raise ActionError("action message without an 'action' field")
    return parse_action(message["action"])


@dataclass(frozen=True)
class ActionVectors:
    """One video frame's conditioning: keyboard one-hot and mouse [pitch, yaw] (None: no mouse path)."""

    keyboard: tuple[float, ...]
    mouse: tuple[float, float] | None


_UNIVERSAL_KEYS = {"w": 0, "s": 1, "a": 2, "d": 3}
_CAMERA = {"i": (CAM_VALUE, 0.0), "k": (-CAM_VALUE, 0.0), "j": (0.0, -CAM_VALUE), "l": (0.0, CAM_VALUE),
           "u": (0.0, 0.0)}
_TEMPLERUN_MOVES = {"q": 0, "w": 1, "s": 2, "a": 5, "d": 6}
_TEMPLERUN_TURNS = {"j": 3, "l": 4}


def _one_hot(size: int, index: int | None) -> tuple[float, ...]:
    return tuple(1.0 if i == index else 0.0 for i in range(size))


def action_vectors(action: Action, mode: Mode) -> ActionVectors:
    """The published conditioning vectors of an action in a mode."""
    if mode == "universal":
        return ActionVectors(_one_hot(4, _UNIVERSAL_KEYS.get(action.move)), _CAMERA[action.look])
    if mode == "gta_drive":
        steer = {"a": -CAM_VALUE, "d": CAM_VALUE, "j": -CAM_VALUE, "l": CAM_VALUE}
        yaw = steer.get(action.look, steer.get(action.move, 0.0))
        return ActionVectors(_one_hot(2, {"w": 0, "s": 1}.get(action.move)), (0.0, yaw))
    index = _TEMPLERUN_MOVES[action.move]
    if action.move == "q" and action.look in _TEMPLERUN_TURNS:
        index = _TEMPLERUN_TURNS[action.look]
    return ActionVectors(_one_hot(7, index), None)


class ActionHistory:
    """Per-video-frame action vectors of one stream and the windows the model reads."""

    def __init__(self, cfg: ActionConfig, mode: Mode) -> None:
        self.cfg = cfg
        self.mode = mode
        self._keyboard: list[tuple[float, ...]] = []
        self._mouse: list[tuple[float, float]] = []

    def apply(self, action: Action, start: int, frames: int) -> None:
        """Give the video frames of latent frames start .. start+frames-1 the action's vectors."""
        ratio = self.cfg.vae_time_compression_ratio
        first = 0 if start == 0 else ratio * (start - 1) + 1
        last = ratio * (start + frames - 1)  # inclusive
        if first != len(self._keyboard):
            raise RuntimeError(f"blocks must be generated in order (expected video frame {len(self._keyboard)})")
        vectors = action_vectors(action, self.mode)
        count = last - first + 1
        self._keyboard.extend([vectors.keyboard] * count)
        if vectors.mouse is not None:
            self._mouse.extend([vectors.mouse] * count)

    def windows(self, start: int, frames: int, device: Any = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(keyboard [1, frames, window, keys], mouse [1, frames, window, 2] or None) for these latent frames."""
        ratio, window = self.cfg.vae_time_compression_ratio, self.cfg.window_frames
        rows = [[max(0, ratio * j - window + m) for m in range(window)] for j in range(start, start + frames)]
        keyboard = torch.tensor([[self._keyboard[i] for i in row] for row in rows], dtype=dtype, device=device)
        mouse = None
        if self._mouse:
            mouse = torch.tensor([[self._mouse[i] for i in row] for row in rows], dtype=dtype, device=device)[None]
        return keyboard[None], mouse
