"""YOLOv8n through ultralytics, offline: weights from a local file or built from `yolov8n.yaml`, boxes
drawn with OpenCV the way fal's demo draws them.

Ultralytics reaches for the network in three places, all switched off here before it is imported:
settings sync and analytics (`YOLO_OFFLINE=1`, `sync: False`), pip installs of missing extras
(`YOLO_AUTOINSTALL=False`), and the Arial font that its own plotting downloads (we draw with
OpenCV instead). A weight path that does not exist would be downloaded from GitHub by
`YOLO(path)`, so a missing file is an error here, before ultralytics sees the name.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.models.source import ModelSource, build_or_load

logger = logging.getLogger("ray.serve")

ARCHITECTURE = "yolov8n.yaml"  # shipped inside the ultralytics wheel
DEMO_WEIGHTS = "/data/yolov8n.pt"  # where fal's demo keeps the published checkpoint
BOX_COLOR = (0, 255, 0)  # BGR green, thickness 2, label font scale 0.5: as the demo draws


def configure_offline(config_dir: str | None = None) -> None:
    """Set ultralytics' offline switches (call before the first `import ultralytics` if you can;
    calling it later still turns sync and auto-install off)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    directory = config_dir or os.environ.get("YOLO_CONFIG_DIR") or str(Path(tempfile.gettempdir()) / "ultralytics")
    Path(directory).mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = directory
    import ultralytics.utils
    import ultralytics.utils.checks

    ultralytics.utils.AUTOINSTALL = False  # read once at import: cover an earlier import too
    ultralytics.utils.checks.AUTOINSTALL = False
    if ultralytics.utils.SETTINGS.get("sync"):
        ultralytics.utils.SETTINGS.update({"sync": False})


def load_yolo(source: ModelSource) -> Any:
    """A `ultralytics.YOLO` from a local weight file (`.pt`, or an exported `.onnx`/`.engine`) or a preset.

    Both presets build the published YOLOv8n architecture (3,157,200 parameters) with seeded random
    weights; YOLOv8n is small enough that `tiny` needs nothing smaller.
    """
    from ultralytics import YOLO

    def load(path: str, kwargs: dict[str, Any]) -> Any:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"YOLO weights not found at {file}: copy the checkpoint (e.g. yolov8n.pt from Ultralytics' "
                "releases) there, or use `preset: tiny`; nothing is downloaded")
        return YOLO(str(file), task="detect")

    def build() -> Any:
        return YOLO(ARCHITECTURE, task="detect")

    return build_or_load(source, load=load, presets={"tiny": build, "full": build})


@dataclass(frozen=True)
class Box:
    """One detection in pixel coordinates of the input image."""

    x1: int
    y1: int
    x2: int
    y2: int
    label: str
    score: float


class Detector:
    """A YOLO model plus its prediction settings; `annotate` draws the boxes on the frame.

    One prediction at a time: ultralytics' predictor is not thread-safe, and sessions of one
    replica share the model.
    """

    def __init__(self, model: Any, *, device: str, confidence: float, iou: float, max_det: int,
                 image_size: int, half: bool) -> None:
        self.model = model
        self.settings: dict[str, Any] = {"conf": confidence, "iou": iou, "max_det": max_det, "imgsz": image_size,
                                         "device": device, "half": half and device.startswith("cuda"),
                                         "verbose": False}
        self._lock = threading.Lock()

    def detect(self, image_bgr: Any) -> list[Box]:
        """Run the model on one BGR image (any size; ultralytics letterboxes it)."""
        with self._lock:
            result = self.model.predict(image_bgr, **self.settings)[0]
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return []
        xyxy = boxes.xyxy.cpu().numpy().round().astype(int).tolist()
        classes = boxes.cls.cpu().numpy().astype(int).tolist()
        scores = boxes.conf.cpu().numpy().tolist()
        return [Box(x1, y1, x2, y2, str(result.names[c]), float(s))
                for (x1, y1, x2, y2), c, s in zip(xyxy, classes, scores, strict=True)]

    def annotate(self, image_bgr: Any) -> tuple[Any, int]:
        """Detect and draw labelled boxes in place; returns the image and the number of boxes."""
        boxes = self.detect(image_bgr)
        draw_boxes(image_bgr, boxes)
        return image_bgr, len(boxes)


def draw_boxes(image_bgr: Any, boxes: list[Box]) -> None:
    """Green rectangles with `<label> <score>` above them (OpenCV; no font file needed)."""
    import cv2

    for box in boxes:
        cv2.rectangle(image_bgr, (box.x1, box.y1), (box.x2, box.y2), BOX_COLOR, 2)
        cv2.putText(image_bgr, f"{box.label} {box.score:.2f}", (box.x1, max(box.y1 - 5, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_COLOR, 2)
