"""Model weights without downloads: hub ids or local directories, and synthetic presets."""

from serve_app.models.source import ModelSource, build_or_load, resolve_device, resolve_dtype

__all__ = ["ModelSource", "build_or_load", "resolve_device", "resolve_dtype"]
