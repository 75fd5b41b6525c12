"""The MP4's tail: what the H.264 encoding adds after the last frame is decoded, by x264 lookahead.

The Wan service encodes each latent frame's decoded frames on a thread while the VAE decodes the
next (`deployments/wan/worker.py:finish`). What the request still waits for after the last part is
the encoder's tail: x264 holds back `rc-lookahead` frames (and one per frame thread) until the end.
This feeds a video to the service's `Mp4Writer` in the same parts (1 frame, then 4 at a time) at a
decode pace (seconds per frame; 0.035 is the full Wan VAE's on an H200: 2.86 s for 81 frames), and
times, for each lookahead, the tail (last part handed over -> MP4 bytes), the file size and the
PSNR of the decoded MP4 against the frames. The content is synthetic but video-like (smooth moving
gradients, a moving disc, mild grain); x264 runs on the CPU, so the tail depends on the host's cores.

    python bench/mp4_overlap.py                      # 832x480, 81 frames, lookahead 40 (x264's medium) vs 20 vs 10
    python bench/mp4_overlap.py --pace 0.1 --runs 3
    python bench/mp4_overlap.py --smoke              # tiny, fast: checks the script
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_video(frames: int, height: int, width: int) -> Any:
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        picture = np.stack([128 + 100 * np.sin(xx / 60 + t / 5), 128 + 100 * np.cos(yy / 40 - t / 7),
                            (xx + yy + 3 * t) % 256], axis=-1)
        disc = (xx - (width / 4 + 6 * t)) ** 2 + (yy - height / 2) ** 2 < (height / 8) ** 2
        picture[disc] = (250, 240, 30)
        picture += np.random.default_rng(t).normal(0, 3, picture.shape)
        out[t] = np.clip(picture, 0, 255)
    return out


def one_run(video: Any, lookahead: int | None, pace: float, preset: str) -> dict[str, float]:
    """Feed `video` in the service's parts at `pace` s/frame; the tail, the size and the PSNR."""
    import av
    import numpy as np

    from deployments.wan.video import Mp4Options, Mp4Writer

    parts = [video[:1]] + [video[i:i + 4] for i in range(1, len(video), 4)]
    start = time.perf_counter()
    with Mp4Writer(16, Mp4Options(lookahead=lookahead, preset=preset)) as writer, \
            concurrent.futures.ThreadPoolExecutor(1, "mp4") as encoder:
        pending: concurrent.futures.Future[None] | None = None
        for part in parts:
            time.sleep(pace * len(part))  # the VAE decoding this part
            if pending is not None:
                pending.result()
            pending = encoder.submit(writer.write, part)
        last_part = time.perf_counter()
        assert pending is not None
        pending.result()
        data = writer.finish()
    end = time.perf_counter()
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(data)).decode(video=0)])
    mse = float(np.mean((decoded.astype(np.float64) - video) ** 2))
    return {"tail_s": end - last_part, "total_s": end - start, "kib": len(data) / 1024,
            "psnr_db": 10 * np.log10(255**2 / max(mse, 1e-10))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--pace", type=float, default=0.035, help="seconds of VAE decoding per frame")
    parser.add_argument("--lookahead", nargs="+", default=["40", "20", "10"],
                        help="rc-lookahead values (`none`: the preset's own)")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="64x32, 9 frames, no pace, one run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.width, args.height, args.pace, args.runs = 9, 64, 32, 0.0, 1
    video = synthetic_video(args.frames, args.height, args.width)
    rows: dict[str, dict[str, float]] = {}
    for text in args.lookahead:
        lookahead = None if text == "none" else int(text)
        runs = [one_run(video, lookahead, args.pace, args.preset) for _ in range(args.runs)]
        rows[text] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"x264 {args.preset}, crf 18, {args.width}x{args.height}, {args.frames} frames at a decode pace of "
          f"{args.pace * 1000:.0f} ms/frame, {os.cpu_count()} CPUs; median of {args.runs}")
    print(f"{'rc-lookahead':<13} {'tail s':>7} {'total s':>8} {'KiB':>7} {'PSNR dB':>8}")
    for name, row in rows.items():
        print(f"{name:<13} {row['tail_s']:>7.3f} {row['total_s']:>8.3f} {row['kib']:>7.0f} {row['psnr_db']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
