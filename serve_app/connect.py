"""Python handles to a running app from another process (a notebook, a script, a fresh shell).

    from serve_app.connect import connect

    ingress = connect()                                   # the "default" application's ingress
    ingress.run.remote("/my-model", {"prompt": "a cat"}).result()

Two things stop a plain `ray.init(address="auto")` there, and importing this module sets both (the
variables win when already set; import it before Ray, as above):

- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: the dev cluster keeps its ports on 127.0.0.1, but a process
  without this variable swaps 127.0.0.1 for the machine's network address and retries it for minutes;
- `RAY_AUTH_MODE=token` when a token exists (`~/.ray/auth_token`, which `serve run` / `ray start`
  make): Ray 2.60 clusters require it, and a new process does not send it unless told to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _token_exists() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).expanduser().is_file()


def ray_client_env() -> dict[str, str]:
    """The variables a process on the app's machine needs to reach its Ray cluster."""
    env = {LOOPBACK_ENV: "0"}
    if _token_exists():
        env[AUTH_MODE_ENV] = "token"
    return env


def prepare_environment() -> None:
    """Set `ray_client_env()` in this process (without overriding what is already set). When Ray was
    imported first, it already read the variables: its cached values are refreshed."""
    changed = False
    for name, value in ray_client_env().items():
        changed |= name not in os.environ
        os.environ.setdefault(name, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ[LOOPBACK_ENV] == "0":
        # Ray's address resolution looks the flag up at call time, so this keeps 127.0.0.1 as it is.
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    if changed and "ray._raylet" in sys.modules:
        from ray._raylet import Config  # type: ignore[attr-defined]  # read from the environment at load

        Config.initialize("")


prepare_environment()


def connect(app_name: str = "default", address: str | None = None) -> Any:
    """Connect this process to the running Ray cluster (once) and return the app's ingress handle.

    Args:
        app_name: the Serve application (`name` in the config; dev.yaml's is "default").
        address: the cluster's GCS address; default `$RAY_ADDRESS`, else the local cluster.

    Returns:
        The ingress's `DeploymentHandle`: `run.remote(path, arguments)` and, with
        `.options(stream=True)`, `stream.remote(path, arguments)`, like fal_client's run and stream.
    """
    prepare_environment()
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    return serve.get_app_handle(app_name)
