"""Kokoro's real-time factor on this machine's CPU, and what concurrency does for short requests.

Builds the Kokoro service with the `full` preset (Kokoro-82M's published config, random weights,
durations pinned to a natural 75 ms per phoneme so the audio is as long as real speech) and times:
  1. RTF: seconds of compute per second of audio for a 1,000-character English text, through the
     service method (G2P, one forward pass per sentence, WAV encoding); the median of `--runs`.
  2. Short requests: `--short` one-sentence requests one after another, then the same requests from
     `--threads` threads at once (KModel has no batch dimension, so `@serve.batch` could do no
     better than the threads); prints the throughput ratio concurrent / sequential.
Published anchor: RTF about 0.5 on a 4-vCPU server. English G2P uses the blank spaCy tokenizer
(`spacy_model: null`) unless `--spacy-model` names an installed pipeline.
Usage: python bench/kokoro_rtf.py [--runs 3] [--short 8] [--threads 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import wave
from concurrent.futures import ThreadPoolExecutor

SENTENCES = [
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of storms.",
    "Every evening the keeper climbed the spiral stairs, counting the steps as his father had taught him.",
    "Ships passing in the night never knew his name, but they trusted the steady beam he kept alive.",
    "One winter the lamp failed, and he stayed awake until dawn, turning a lantern by hand.",
    "Years later, the town built a museum in his honor, and children still read his careful logbooks.",
    "They describe the weather, the birds, and the boats, in small, patient handwriting.",
    "Nothing in them is remarkable, and yet together they tell the story of a life spent keeping watch.",
    "Visitors often ask whether he was lonely, and the guides always answer that he had the sea.",
    "On quiet afternoons you can still hear the waves below, folding over the rocks like pages.",
    "Perhaps that is why people keep coming back, long after the light itself went dark.",
    "They come for the view, and leave with a story.",
]


def text_of(chars: int) -> str:
    text = ""
    i = 0
    while len(text) < chars:
        text += ("" if not text else " ") + SENTENCES[i % len(SENTENCES)]
        i += 1
    return text[:chars].rsplit(" ", 1)[0] + "."


def audio_seconds(wav_bytes: bytes) -> float:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        return w.getnframes() / w.getframerate()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chars", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--preset", default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spacy-model", default=None)
    args = parser.parse_args()

    import torch

    from deployments.kokoro import AmEnglishRequest, KokoroConfig, KokoroService
    from serve_app.service import RunContext

    started = time.perf_counter()
    service = KokoroService(KokoroConfig.model_validate({
        "model": {"preset": args.preset}, "device": args.device, "spacy_model": args.spacy_model, "warmup": True}))
    params = sum(p.numel() for p in service.model.parameters()) / 1e6
    print(f"kokoro preset={args.preset} ({params:.1f}M params) device={args.device} "
          f"torch threads={torch.get_num_threads()}; built and warmed up in {time.perf_counter() - started:.1f} s")

    request = AmEnglishRequest(prompt=text_of(args.chars))
    rtfs, cpu_rtfs = [], []
    for _ in range(args.runs):
        t, cpu = time.perf_counter(), time.process_time()
        out = service.generate(request, RunContext("bench"))
        compute, cpu = time.perf_counter() - t, time.process_time() - cpu
        seconds = audio_seconds(out.audio.data or b"")
        rtfs.append(compute / seconds)
        cpu_rtfs.append(cpu / seconds)
        print(f"  {len(request.prompt)} chars -> {seconds:.1f} s of audio in {compute:.1f} s "
              f"(RTF {rtfs[-1]:.3f}; {cpu_rtfs[-1]:.3f} CPU-s per audio-s)")
    print(f"RTF (compute s / audio s, median of {args.runs}): {statistics.median(rtfs):.3f}   "
          "[published anchor: ~0.5 on a 4-vCPU server]")
    # Wall time suffers when other processes share the cores; CPU time does much less.
    print(f"CPU-seconds per audio second (median): {statistics.median(cpu_rtfs):.3f} "
          f"-> RTF with {torch.get_num_threads()} cores to itself ~ "
          f"{statistics.median(cpu_rtfs) / torch.get_num_threads():.3f}")

    short = [AmEnglishRequest(prompt=SENTENCES[i % len(SENTENCES)]) for i in range(args.short)]

    def speak(req: AmEnglishRequest) -> None:
        service._speak("american-english", req, RunContext("bench"))  # no per-replica lock: raw concurrency

    t, cpu = time.perf_counter(), time.process_time()
    for req in short:
        speak(req)
    sequential, sequential_cpu = time.perf_counter() - t, time.process_time() - cpu
    t, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(speak, short))
    concurrent, concurrent_cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"{args.short} short requests: sequential {sequential:.1f} s wall / {sequential_cpu:.1f} CPU-s "
          f"({sequential / args.short:.2f} s each); {args.threads} threads {concurrent:.1f} s wall / "
          f"{concurrent_cpu:.1f} CPU-s; throughput concurrent/sequential = {sequential / concurrent:.2f}")


if __name__ == "__main__":
    main()
