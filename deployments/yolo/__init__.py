"""YOLO webcam detection over WebRTC (see `service.py`; the model and drawing in `detector.py`, a
Python client in `client.py`, the browser page in `static/`)."""

from deployments.yolo.service import STATIC_DIR, YoloConfig, YoloService, build

__all__ = ["STATIC_DIR", "YoloConfig", "YoloService", "build"]
