"""Sana text-to-image service (see `service.py`)."""

from deployments.sana.service import (
    SanaConfig,
    SanaOutput,
    SanaService,
    SprintInput,
    TextToImageInput,
    billable_units,
    build,
)

__all__ = ["SanaConfig", "SanaOutput", "SanaService", "SprintInput", "TextToImageInput", "billable_units", "build"]
