"""`DistributedWorker`: the per-rank base class, with the same names and meanings as fal's.

A fal user ports a worker by changing only the import:
`from serve_app.distributed import DistributedRunner, DistributedWorker`.
The worker runs inside a Ray actor with torch.distributed already initialised (NCCL on GPUs, gloo on
CPU); `self.device` is the rank's device.

Beyond fal's API, a worker reports with the typed events of `serve_app.events` (`self.progress`,
`self.partial`, from rank 0), returns its final result, and stops a cancelled request with
`self.raise_if_cancelled()` at the same point on every rank (agreed without a host sync per step).
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import threading
from typing import Any

from pydantic import BaseModel

from serve_app.distributed.cancel import CancelAgreement
from serve_app.errors import RequestCancelled
from serve_app.events import Output, Partial, Progress

logger = logging.getLogger("ray.serve")


def _image_json(image: Any, image_format: str, quality: int) -> dict[str, Any]:
    buf = io.BytesIO()
    fmt = image_format.lower()
    content_type = f"image/{'jpeg' if fmt in ('jpg', 'jpeg') else fmt}"
    if content_type == "image/jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt.upper())
    data = base64.b64encode(buf.getvalue()).decode()
    return {"content_type": content_type, "width": image.width, "height": image.height, "data": None,
            "url": f"data:{content_type};base64,{data}"}


def to_text_event_json(value: Any, image_format: str = "jpeg", quality: int = 95) -> Any:
    """JSON-ready form of a result: PIL images and tensors become data URLs, recursively.

    Tensors are carried as safetensors bytes (never pickle): `data:application/safetensors;...`.
    """
    from PIL.Image import Image as PILImage

    if isinstance(value, PILImage):
        return _image_json(value, image_format, quality)
    if isinstance(value, (Progress, Partial, Output)):
        return _inline_files(value.to_json(), value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        from safetensors.torch import save

        raw = save({"tensor": value.detach().cpu().contiguous()})
        return {"content_type": "application/safetensors", "shape": list(value.shape), "dtype": str(value.dtype),
                "url": "data:application/safetensors;base64," + base64.b64encode(raw).decode()}
    if isinstance(value, dict):
        return {k: to_text_event_json(v, image_format, quality) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_text_event_json(v, image_format, quality) for v in value]
    return value


def _inline_files(body: dict[str, Any], event: Any) -> dict[str, Any]:
    """An event's JSON with its not-yet-stored files inlined as data: URLs."""
    from serve_app.io import File

    if isinstance(event, Progress) and event.preview is not None and event.preview.data is not None:
        body["preview"]["url"] = _data_url(event.preview)
        return body
    model = event.data if isinstance(event, Partial) else event.value if isinstance(event, Output) else None
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, File) and value.data is not None and isinstance(body.get(name), dict):
                body[name]["url"] = _data_url(value)
    return body


def _data_url(file: Any) -> str:
    return f"data:{file.content_type};base64,{base64.b64encode(file.data).decode()}"


class DistributedWorker:
    """One rank. Subclasses implement `setup(**kwargs)` and `__call__(streaming=False, **payload)`.

    Every rank receives every payload; the runner returns rank 0's result. Inside `__call__`, use
    torch.distributed collectives freely: all ranks run the same call.
    """

    # Pass `device_id` to `init_process_group` (eager NCCL communicator). Libraries that create
    # their own subgroups with `new_group` (some model-parallel libraries) may need it off.
    bind_device_at_init = True

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device: Any = None  # set by the rank actor before setup()
        self._stream: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._agreement: CancelAgreement | None = None  # one per request (reset by the rank actor)

    # --- to implement -------------------------------------------------------------------------
    def setup(self, **kwargs: Any) -> None:
        """Load models onto `self.device`. Called once per rank by `DistributedRunner.start`."""

    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        """Handle one request on this rank; rank 0's return value is the runner's result."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release resources. Called by `DistributedRunner.stop`."""

    def regroup(self) -> None:
        """Called on every rank after the runner re-formed the default process group in place
        (after a failed or timed-out request): rebuild anything made from the old group (subgroups
        from `new_group`, a DDP wrapper). Models and weights stay as they are."""

    # --- helpers for subclasses ---------------------------------------------------------------
    def add_streaming_result(self, result: Any, image_format: str = "jpeg", as_text_event: bool = False) -> None:
        """Send an intermediate result to the caller of `DistributedRunner.stream` (rank 0 only;
        other ranks' results are dropped). Intermediate images are JPEG quality 60 as in fal."""
        if self.rank != 0:
            return
        item = to_text_event_json(result, image_format, quality=60) if as_text_event else result
        self._stream.put(item)

    def progress(self, step: int, total: int, message: str = "", preview: Any = None) -> None:
        """Report progress to the caller (rank 0 only; other ranks' calls are dropped). `preview` is
        a PIL image, sent as a JPEG of quality 60 as in fal."""
        if self.rank != 0:
            return
        from serve_app.io import Image

        image = Image.from_pil(preview, "jpeg", quality=60) if preview is not None else None
        self._stream.put(Progress(step, total, message, image))

    def partial(self, data: BaseModel, kind: str = "partial") -> None:
        """Send a partial output to the caller (rank 0 only)."""
        if self.rank == 0:
            self._stream.put(Partial(data, kind))

    def cancel_agreed(self) -> bool:
        """A collective: call it at the same point on every rank (e.g. each step). True on every rank
        at the same call once any rank saw the cancel flag. It does not block the host on the current
        step (see `serve_app.distributed.cancel`): a cancel takes effect within a step or two."""
        if self._agreement is None:
            self._agreement = CancelAgreement(self._collective_device(), self.world_size)
        return self._agreement.poll(self.cancelled)

    def raise_if_cancelled(self) -> None:
        """`cancel_agreed()`, raising `RequestCancelled` on every rank at the same step."""
        if self.cancel_agreed():
            raise RequestCancelled()

    def rank_print(self, message: str, debug: bool = False) -> None:
        """Log a message prefixed with this rank."""
        logger.log(logging.DEBUG if debug else logging.INFO, "[rank %d/%d] %s", self.rank, self.world_size, message)
        if not debug:
            print(f"[rank {self.rank}] {message}", flush=True)

    @property
    def cancelled(self) -> bool:
        """True once the caller has cancelled the current request (check it between steps).

        Ranks may see the flag at different steps: before leaving a loop that runs collectives,
        agree with `cancelled_everywhere()`.
        """
        return self._cancel.is_set()

    def cancelled_everywhere(self) -> bool:
        """A blocking collective: True on every rank if any rank saw the cancel flag now. It waits for
        the GPU; in a loop prefer `cancel_agreed()`."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.cancelled else 0.0], device=self._collective_device())
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _collective_device(self) -> Any:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_backend() == "nccl":
            return self.device
        return "cpu"
