"""The dev app started the way a new user starts it, in its own processes, for the first-hour tests.

`DevServer` runs `serve run` (over HTTPS: `python -m serve_app.tls serve`) on a copy of
configs/dev.yaml with only the Sana service (the CPU is shared), on a free loopback port, in a fresh
environment: its own HOME and Ray temp dir, Ray's default token auth left on (the test suite's
`RAY_AUTH_MODE=disabled` is not passed on), as `make run` does. Clients then run as separate
processes from a clean environment (`fresh_env`), like a second shell.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.app.conftest import ROOT, free_port, load_dev_app

API_KEY = "first-hour:key"
STOP_WAIT_S = 30  # `serve run` stops in about 7 s after Ctrl-C; then the process group is killed
KEY_ENV = "FIRST_HOUR_API_KEYS"
RAY_START_FAILURES = ("Failed to get node info", "timed out during startup", "Failed to connect to GCS")
_DASHBOARD = re.compile(r"View the dashboard at \S*?(?:http://)?(127\.0\.0\.1:\d+)")


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    """A new shell's environment: PATH (with the venv's bin), HOME, the repo importable; nothing of
    Ray's or fal's unless given."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    return {"PATH": path, "HOME": str(home), "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", **extra}


def dev_config(port: int, files_dir: Path, api_keys: bool) -> dict[str, Any]:
    """configs/dev.yaml with only Sana, on `port`, one queued job at a time (so jobs wait in the queue)."""
    config = yaml.safe_load((ROOT / "configs" / "dev.yaml").read_text())
    app = load_dev_app()
    app["args"]["services"] = {"sana": app["args"]["services"]["sana"]}
    ingress = app["args"].setdefault("ingress", {})
    ingress["storage"] = {"kind": "local", "directory": str(files_dir)}
    ingress["queue"] = {"services": {"sana": {"max_running": 1}}}
    if api_keys:
        ingress["api_key_env"] = [KEY_ENV]
    config["applications"] = [app]
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    config["logging_config"] = {"log_level": "WARNING", "enable_access_log": False}
    return config


class DevServer:
    """`serve run` of the Sana-only dev app in its own process group (stopped by that group's id)."""

    def __init__(self, tls: bool, api_keys: bool = False) -> None:
        self.tls = tls
        self.api_keys = api_keys
        # Short: Ray's unix sockets live under the temp dir and their paths are limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="fh", dir="/tmp"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.port = free_port()
        self.log = self.root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.tls_dir = self.root / "tls"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def bundle(self) -> Path:
        return self.tls_dir / "ca-bundle.pem"

    def client(self, **kwargs: Any) -> httpx.Client:
        verify: Any = str(self.bundle) if self.tls else True
        headers = {"Authorization": f"Key {API_KEY}"} if self.api_keys else {}
        return httpx.Client(base_url=self.url, verify=verify, headers=headers, timeout=120, **kwargs)

    def start(self, timeout_s: float = 420.0, attempts: int = 3) -> None:
        """Start and wait for /ready. Ray gives its raylet 30 s to register, which a loaded 2-core machine
        can miss: such a start is retried."""
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return
            except RuntimeError:
                log = self.tail(20_000)
                self._kill_group()
                if attempt + 1 == attempts or not any(s in log for s in RAY_START_FAILURES):
                    raise

    def _start_once(self, timeout_s: float) -> None:
        config = self.root / "dev.yaml"
        config.write_text(yaml.safe_dump(dev_config(self.port, self.root / "files", self.api_keys)))
        env = fresh_env(self.home, RAY_TMPDIR=str(self.root), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                        RAY_USAGE_STATS_ENABLED="0", SERVE_APP_TLS_DIR=str(self.tls_dir), HF_HUB_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        if self.api_keys:
            env[KEY_ENV] = API_KEY
        if self.tls:  # the README's command, as `make run-https` runs it
            command = [sys.executable, "-m", "serve_app.tls", "serve", str(config), "--port", str(self.port)]
        else:
            command = [str(Path(sys.executable).parent / "serve"), "run", str(config)]
        with self.log.open("wb") as log:
            # Ctrl-C's default action: a shell running the suite in the background (CI's `nohup ... &`)
            # starts it with SIGINT ignored, which children inherit, and Python then never raises
            # KeyboardInterrupt (serve run ignored the stop below for 20 s, twice, in CI).
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_default_sigint)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited ({self.process.returncode}):\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError, OSError), self.client() as http:
                if http.get("/ready", timeout=5).status_code == 200:
                    return
            time.sleep(1.0)
        raise RuntimeError(f"the dev app did not get ready in {timeout_s} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def dashboard_url(self) -> str:
        """The Ray dashboard of this cluster, as `serve run` printed it."""
        found = _DASHBOARD.search(self.log.read_text(errors="replace"))
        if found is None:
            raise RuntimeError(f"no dashboard address in the log:\n{self.tail()}")
        return f"http://{found.group(1)}"

    def gcs_address(self) -> str:
        """The cluster's GCS address (from its session directory)."""
        ports = list((self.root / "ray" / "session_latest").glob("gcs_server_port_*"))
        if not ports:
            raise RuntimeError("no GCS port file in the Ray session directory")
        return f"127.0.0.1:{ports[0].read_text().strip()}"

    def _kill_group(self) -> None:
        """Stop our `serve run` and whatever its process group still holds (ours alone: it was started
        in a new session, so the group's id is our child's pid)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C: serve run shuts the app and its Ray down
            try:
                self.process.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:  # seen in CI (not here: 7 s), so say what it was doing
                warnings.warn(f"serve run was still stopping {STOP_WAIT_S} s after Ctrl-C; killed. Its log ends:\n"
                              f"{self.tail(1500)}", stacklevel=2)
                self.process.kill()
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def stop(self) -> None:
        self._kill_group()
        shutil.rmtree(self.root, ignore_errors=True)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_python(code: str, env: dict[str, str], timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new Python process (a second shell's `python -c`)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
