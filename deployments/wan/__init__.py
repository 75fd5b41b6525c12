"""Wan 2.1 text-to-video with prompt safety and expansion from the any-llm service (see `service.py`)."""

from deployments.wan.service import WanConfig, WanService, WanT2VInput, WanT2VOutput, WanVideo, billable_units, build

__all__ = ["WanConfig", "WanService", "WanT2VInput", "WanT2VOutput", "WanVideo", "billable_units", "build"]
