"""Hand a received video frame to the decoder as soon as its last packet arrives.

aiortc's jitter buffer (1.16) knows a video frame is complete only when the first packet of the
next frame arrives, so every received frame waits one frame interval: 33 ms at 30 fps, 200 ms when
a CPU server sends back 5 frames a second. RTP marks the last packet of a video frame (the marker
bit; browsers' own receivers rely on it), so a frame whose packets are all there up to a marked one
is complete. `MarkerJitterBuffer` emits it then and otherwise behaves as aiortc's buffer does;
`install_marker_jitter_buffer()` makes aiortc's receivers use it in this process.
"""

from __future__ import annotations

import logging

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

logger = logging.getLogger("ray.serve")

_AIORTC_JITTER_BUFFER = aiortc.rtcrtpreceiver.JitterBuffer


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, plus: a video frame ends at its marked packet."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._is_video and self._origin is not None:
            packets: list[RtpPacket] = []
            for count in range(self.capacity):
                packet = self._packets[(self._origin + count) % self.capacity]
                if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                    break  # a gap, or a frame without a marked end: aiortc's own rule decides
                packets.append(packet)
                if packet.marker:
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(p._data for p in packets),  # type: ignore[attr-defined]
                                       timestamp=packets[0].timestamp)
        return super()._remove_frame(sequence_number)


def install_marker_jitter_buffer(enabled: bool = True) -> None:
    """Make aiortc's receivers created from now on in this process use `MarkerJitterBuffer`
    (or aiortc's own buffer again with `enabled=False`)."""
    aiortc.rtcrtpreceiver.JitterBuffer = MarkerJitterBuffer if enabled else _AIORTC_JITTER_BUFFER  # type: ignore[misc]
