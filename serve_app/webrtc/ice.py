"""ICE settings of a WebRTC service: STUN/TURN servers, transport policy, host addresses.

By default a server offers host candidates on every interface but loopback (aioice's choice) and
contacts no STUN server. `host_addresses` pins the host candidates (tests and dev: 127.0.0.1);
behind NAT, give a TURN server (coturn, say) to both sides, or open the replica's UDP ports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from pydantic import BaseModel, ConfigDict, Field, field_validator

_ORIGINAL_HOST_ADDRESSES: Callable[[bool, bool], list[str]] | None = None


class IceServer(BaseModel):
    """A STUN or TURN server (the browser's `RTCIceServer`)."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(description="stun:, turn: or turns: URLs, e.g. turn:turn.example.org:3478?transport=udp.")
    username: str | None = Field(default=None, description="TURN user name.")
    credential: str | None = Field(default=None, description="TURN password.")

    @field_validator("urls")
    @classmethod
    def _schemes(cls, urls: list[str]) -> list[str]:
        bad = [u for u in urls if not u.startswith(("stun:", "turn:", "turns:"))]
        if bad or not urls:
            raise ValueError(f"ICE server URLs must start with stun:, turn: or turns: (got {bad or urls})")
        return urls


class WebRTCConfig(BaseModel):
    """ICE and session settings of a WebRTC service."""

    model_config = ConfigDict(extra="forbid")

    ice_servers: list[IceServer] = Field(
        default_factory=list,
        description="STUN/TURN servers this server uses (aiortc takes the first STUN and the first TURN). "
        "None by default: host candidates only, and no public STUN is ever contacted.")
    client_ice_servers: list[IceServer] = Field(
        default_factory=list,
        description="STUN/TURN servers announced to clients in the `ready` message (`ice_servers`), "
        "for browsers behind NAT; omitted when empty.")
    transport_policy: Literal["all", "relay"] = Field(
        default="all", description="`relay`: only TURN-relayed candidates (needs a TURN server).")
    host_addresses: list[str] | None = Field(
        default=None,
        description="Offer host candidates on these local addresses only (e.g. [127.0.0.1] for tests and "
        "dev: aioice skips loopback by default). Applies to the whole process. null: every interface.")
    connect_timeout_s: float = Field(
        default=30.0, gt=0, description="End a session whose peer connection is not up this long after `ready`.")
    frame_on_marker: bool = Field(
        default=True,
        description="Decode a received video frame as soon as its last (RTP-marked) packet arrives, instead of "
        "when the next frame starts (aiortc's rule: one frame interval more latency). Applies to the whole process.")

    def rtc_configuration(self) -> RTCConfiguration:
        """The aiortc configuration of a new peer connection."""
        servers = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in self.ice_servers]
        policy = RTCIceTransportPolicy.RELAY if self.transport_policy == "relay" else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)

    def apply_to_process(self) -> None:
        """Install the process-wide parts of this config: host addresses and the jitter-buffer rule."""
        from serve_app.webrtc.jitter import install_marker_jitter_buffer

        restrict_host_addresses(self.host_addresses)
        install_marker_jitter_buffer(self.frame_on_marker)


def restrict_host_addresses(addresses: Sequence[str] | None) -> None:
    """Make aioice gather host candidates on `addresses` only; `None` restores its own choice."""
    import aioice.ice

    global _ORIGINAL_HOST_ADDRESSES
    if _ORIGINAL_HOST_ADDRESSES is None:
        _ORIGINAL_HOST_ADDRESSES = aioice.ice.get_host_addresses
    if addresses is None:
        aioice.ice.get_host_addresses = _ORIGINAL_HOST_ADDRESSES  # type: ignore[assignment]
        return
    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses  # type: ignore[assignment]
