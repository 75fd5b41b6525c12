"""Matrix-Game 2.0 (Skywork): an interactive, action-conditioned world streamed over WebRTC.

`service.py` is the realtime service (`/matrix-game/realtime`; one client's session in `protocol.py`,
its video track in `track.py`, the browser page in `static/`). The model, written from the published
facts (`configs.py` says where they come from): the causal Wan DiT with rolling KV caches and action
modules (`dit.py`, `action_module.py`, `kv_cache.py`, `rope.py`, `attention.py`), the few-step sampler
(`sampler.py`), the Wan VAE as a stream (`vae.py`), the CLIP image tower (`clip_vision.py`), loading and
presets (`models.py`); the transport-free session and its render-ahead producer (`session.py`,
`producer.py`) and the action grammar (`actions.py`).
"""


from __future__ import annotations

from typing import Any

__all__ = ["MatrixGameConfig", "MatrixGameService", "build"]


def build(name: str, args: Any) -> Any:
    """The service's builder (imported lazily: the model modules run without the serving framework,
    e.g. in the GPU benchmark's bare environment)."""
    from deployments.matrix_game.service import build as build_service

    return build_service(name, args)


def __getattr__(name: str) -> Any:
    if name in ("MatrixGameConfig", "MatrixGameService"):
        from deployments.matrix_game import service

        return getattr(service, name)
    raise AttributeError(name)
