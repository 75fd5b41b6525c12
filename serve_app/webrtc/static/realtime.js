"use strict";
// fal's realtime WebRTC signalling, for a service's page at /<service>/ beside /<service>/realtime
// (every service page loads it as `static/realtime.js`). A WebSocket carries JSON messages: the
// server's `ready` (with `ice_servers`), the page's `offer`, the server's `answer`, trickled
// `icecandidate`s both ways, and `error`s; the media flows over the RTCPeerConnection. A page adds
// its own media in `setup(pc)` and handles its own messages in `message(msg)`.
// `?endpoint=` overrides the WebSocket URL; `?key=` is sent as `fal_key` (a browser WebSocket
// cannot send an Authorization header).
(() => {
  function endpoint(params) {
    const base = location.pathname.replace(/\/(index\.html)?$/, "");
    const url = new URL(params.get("endpoint") || base + "/realtime", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (params.get("key")) url.searchParams.set("fal_key", params.get("key"));
    return url;
  }

  // Frames actually painted: `frame(video)` for each, `second(fps)` once a second. Returns a stop function.
  function countFrames(video, frame, second) {
    let last = performance.now(), seen = 0, handle = null, stopped = false;
    const tick = () => {
      if (stopped) return;
      seen++;
      frame(video);
      const now = performance.now();
      if (now - last >= 1000) { second(seen * 1000 / (now - last)); seen = 0; last = now; }
      handle = video.requestVideoFrameCallback(tick);
    };
    handle = video.requestVideoFrameCallback(tick);
    return () => {
      stopped = true;
      if (handle !== null && video.cancelVideoFrameCallback) video.cancelVideoFrameCallback(handle);
    };
  }

  // hooks: status(text), error(text), closed(code) (the socket closed), failed() (the peer connection
  // failed), ready(session) (before the offer: page messages such as a world choice), setup(pc) (add
  // tracks or transceivers), track(event), message(msg) (anything else the server sends).
  class Session {
    constructor(url, hooks) {
      this.hooks = hooks;
      this.pc = null;
      this.ws = new WebSocket(url);
      this.ws.onmessage = (event) => this.receive(JSON.parse(event.data)).catch((e) => hooks.error(String(e)));
      this.ws.onclose = (event) => hooks.closed(event.code);
      this.ws.onerror = () => hooks.error("the WebSocket failed");
    }

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    }

    async receive(message) {
      const hooks = this.hooks;
      if (message.type === "ready") {
        if (hooks.ready) hooks.ready(this);
        const pc = this.pc = new RTCPeerConnection({ iceServers: message.ice_servers || [] });
        const pending = [];
        let offered = false;
        pc.onicecandidate = (e) => {
          const candidate = e.candidate ? e.candidate.toJSON() : null;
          if (offered) this.send({ type: "icecandidate", candidate }); else pending.push(candidate);
        };
        pc.onconnectionstatechange = () => {
          hooks.status(pc.connectionState);
          if (pc.connectionState === "failed") {
            hooks.error("the peer connection failed (UDP blocked? set a TURN server)");
            hooks.failed();
          }
        };
        pc.ontrack = (e) => hooks.track(e);
        await hooks.setup(pc);
        await pc.setLocalDescription(await pc.createOffer());
        this.send({ type: "offer", sdp: pc.localDescription.sdp });
        offered = true;
        for (const candidate of pending) this.send({ type: "icecandidate", candidate });
        hooks.status("negotiating");
      } else if (message.type === "answer") {
        await this.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      } else if (message.type === "icecandidate") {
        try { await this.pc.addIceCandidate(message.candidate || undefined); } catch (e) { /* end of candidates: optional */ }
      } else if (message.type === "error") {
        hooks.error(`${message.error}${message.detail ? ": " + message.detail : ""}`);
      } else if (hooks.message) {
        hooks.message(message);
      }
    }

    close() {
      if (this.pc) this.pc.close();
      if (this.ws) this.ws.close();
      this.pc = this.ws = null;
    }
  }

  window.realtime = { endpoint, countFrames, Session };
})();
