"""WebRTC sessions over a realtime connection: fal's signalling, ICE settings, peer lifecycle.

fal's realtime WebRTC demos speak one signalling protocol over the WebSocket:
server `{"type": "ready"}` first; client `{"type": "offer", "sdp"}`, answered by
`{"type": "answer", "sdp"}`; `{"type": "icecandidate", "candidate": {candidate, sdpMid,
sdpMLineIndex} | null}` both ways (`null` ends the candidates). aiortc gathers every local
candidate before it answers, so the answer carries them all and the server then sends only the
`null` end-of-candidates. A bad message is answered with an error frame and the session goes on.

Media flows between the client and the replica directly (UDP), never through the WebSocket.

- `ice`: `WebRTCConfig` (STUN/TURN servers, transport policy, host addresses, timeouts).
- `session`: `WebRTCSession`, the signalling state machine and the peer connection's lifecycle.
- `tracks`: `LatestFrameTrack`, which processes the newest input frame and drops stale ones.
- `jitter`: aiortc's video jitter buffer, made to release a frame at its last packet.
"""

from serve_app.webrtc.ice import IceServer, WebRTCConfig, restrict_host_addresses
from serve_app.webrtc.jitter import MarkerJitterBuffer, install_marker_jitter_buffer
from serve_app.webrtc.session import (
    CandidateInit,
    IceCandidateMessage,
    MessageHandler,
    OfferMessage,
    SignallingChannel,
    TrackHandler,
    WebRTCSession,
    live_peer_connections,
    parse_candidate,
)
from serve_app.webrtc.tracks import FrameProcessor, LatestFrameTrack, TrackStats

__all__ = ["CandidateInit", "FrameProcessor", "IceCandidateMessage", "IceServer", "LatestFrameTrack",
           "MarkerJitterBuffer", "MessageHandler", "OfferMessage", "SignallingChannel", "TrackHandler", "TrackStats",
           "WebRTCConfig", "WebRTCSession", "install_marker_jitter_buffer", "live_peer_connections",
           "parse_candidate", "restrict_host_addresses"]
