"""xFuser (xDiT) model-parallel diffusion: one image split over several GPUs (see `service.py`)."""

from deployments.xfuser.service import XFuserConfig, XFuserInput, XFuserOutput, XFuserService, build

__all__ = ["XFuserConfig", "XFuserInput", "XFuserOutput", "XFuserService", "build"]
