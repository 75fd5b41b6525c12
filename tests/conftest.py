"""Shared test settings: Ray on loopback without auth or telemetry, and the `gpu` marker."""

import os

# Before Ray is imported anywhere: keep every Ray port on 127.0.0.1, no token auth, no usage stats.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# The session's dev app (tests/app/conftest.py) keeps a few dozen Ray actors alive until the session
# ends; on a 2-core machine their idle work slows every test that runs beside it, most of all the
# ones that start a cluster or an app of their own (two nodes, the browser pages, the benches).
DEV_APP_FIXTURE = "serve_url"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tests that use the dev app run last (in their usual order), so it is up only while they run.
    items[:] = sorted(items, key=lambda item: DEV_APP_FIXTURE in getattr(item, "fixturenames", ()))
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run tests/gpu on the device machines)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
