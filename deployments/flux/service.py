"""Flux text-to-image (FLUX.1 [dev]): `/flux-lora`, with LoRAs loaded per request as fal's
`fal-ai/flux-lora` takes them, and plain `/flux/dev`.

A request's LoRA files are fetched (http(s), data:, this server's file URLs), checked
(`lora_files`) and loaded once per replica under names taken from their content; each request then
switches on exactly its own adapters and scales (`adapters`). Requests carry a routing key, a hash
of their LoRA paths, that the ingress passes to Serve as the multiplexed model id: the replica that
loaded a set reports it (`serve.multiplexed`) and Serve sends the next requests for it there.
The pipeline runs in a worker thread, one request at a time; progress, cancellation and the
safety checker work as in the other image services.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from deployments.flux.config import FluxConfig
from deployments.flux.schema import FluxDevInput, FluxLoraInput, FluxOutput, billable_units, lora_set_key
from serve_app.endpoints import endpoint
from serve_app.errors import RequestCancelled
from serve_app.inputs import FetchOptions, fetch_url
from serve_app.io import Image, resolve_image_size
from serve_app.models.source import build_or_load, resolve_device, resolve_dtype
from serve_app.service import RunContext, Service

logger = logging.getLogger("ray.serve")

LoraSet = dict[str, str]
"""What a replica holds for a multiplexed LoRA set: the sha256 of the file behind each path."""
Notify = Callable[[int, int], None]


def _multiple_of_16(side: int) -> int:
    """Flux's latents are 8x smaller and packed 2x2: sides must be multiples of 16."""
    return max(16, round(side / 16) * 16)


class FluxService(Service):
    """Loads the pipeline, the safety checker and the adapter strategy, warms up, then serves."""

    def __init__(self, config: FluxConfig) -> None:
        import torch

        from components import flux
        from components.safety import SafetyChecker
        from deployments.flux.adapters import AdapterCache, HotswapSlots
        from deployments.flux.lora_files import linear_shapes

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self._torch = torch
        self.pipe = build_or_load(config.model, load=self._load, presets={
            "tiny": lambda: flux.build_pipeline("tiny", self.device, self.dtype),
            "full": lambda: flux.build_pipeline("full", self.device, self.dtype),
        })
        self.pipe.set_progress_bar_config(disable=True)
        self.shapes = linear_shapes(self.pipe.transformer)
        limits = config.loras
        self.adapters: AdapterCache | HotswapSlots = (
            HotswapSlots(self.pipe, self.shapes, config.hotswap.slots, config.hotswap.target_rank,
                         limits.max_adapters, limits.max_bytes)
            if config.hotswap.enabled else AdapterCache(self.pipe, limits.max_adapters, limits.max_bytes))
        self.compiles = 0
        if config.compile.enabled:
            self.pipe.transformer.compile(backend=self._counting_backend(config.compile.backend), dynamic=False)
        self.safety = SafetyChecker(config.safety_checker, self.device, config.nsfw_threshold)
        self._pipe_lock = threading.Lock()  # a cancelled request's thread may still be finishing its step
        self._wanted: dict[str, list[str]] = {}
        self._load_set: Callable[[str], Awaitable[LoraSet]] | None = None
        logger.info("Flux loaded (%s) on %s/%s, %s", config.model.describe(), self.device, self.dtype,
                    "hotswap slots" if config.hotswap.enabled else "one adapter per LoRA")
        if config.warmup.enabled:
            w = config.warmup
            request = FluxDevInput(prompt="a photo of a cat", image_size={"width": w.width, "height": w.height},
                                   num_inference_steps=w.num_inference_steps, seed=0)
            self._run(request, [], RunContext("warmup"), None, 0.0)

    def _load(self, model_id: str, kwargs: dict[str, Any]) -> Any:
        """Real weights from a hub id or a local dir, through diffusers' `from_pretrained`."""
        from diffusers import FluxPipeline

        return FluxPipeline.from_pretrained(model_id, dtype=self.dtype, **kwargs).to(self.device)

    def _counting_backend(self, name: str) -> Callable[..., Any]:
        """The torch.compile backend `name`, counting each graph it compiles (recompilations included)."""
        from torch import _dynamo

        inner = _dynamo.lookup_backend(name)

        def backend(graph: Any, example_inputs: Any) -> Any:
            self.compiles += 1
            return inner(graph, example_inputs)

        return backend

    def lora_stats(self) -> dict[str, int]:
        """Loads, evictions, hotswaps, switches, resident bytes and graph compilations so far."""
        return {**vars(self.adapters.stats), "compiles": self.compiles}

    # ------------------------------------------------------------------ LoRA sets
    async def _fetch_and_load(self, paths: list[str]) -> LoraSet:
        """Download the files, check the new ones, load them; the request's own LoRAs are never evicted."""
        from deployments.flux.lora_files import prepare

        limits = self.config.loras
        options = FetchOptions(max_bytes=limits.max_file_bytes, timeout_s=limits.fetch_timeout_s,
                               allow=tuple(limits.allow))
        files = await asyncio.gather(*(fetch_url(path, "loras", options) for path in paths))

        def prepare_new() -> tuple[list[str], list[Any]]:
            shas = [hashlib.sha256(data).hexdigest() for data in files]
            new = {sha: data for sha, data in zip(shas, files, strict=True) if not self.adapters.has(sha)}
            return shas, [prepare(data, self.shapes) for data in new.values()]

        shas, prepared = await asyncio.to_thread(prepare_new)
        if prepared:
            await self.to_model_thread(self._locked, self.adapters.load, prepared, set(shas))
        return dict(zip(paths, shas, strict=True))

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._pipe_lock:
            return fn(*args)

    async def _resolve(self, request: FluxLoraInput) -> tuple[list[tuple[str, float]], float]:
        """`(sha256, scale)` of each LoRA, loaded on this replica; and the seconds that took."""
        if not request.loras:
            return [], 0.0
        start = time.perf_counter()
        paths = list(dict.fromkeys(lora.path.strip() for lora in request.loras))
        self.adapters.check_request(len(paths))
        key = str(lora_set_key(request))
        self._wanted[key] = paths
        try:
            lora_set = await self._multiplexed(key)
            if not all(self.adapters.has(sha) for sha in lora_set.values()):  # evicted since: load again
                lora_set = await self._fetch_and_load(paths)
        finally:
            self._wanted.pop(key, None)
        weights: dict[str, float] = {}
        for lora in request.loras:  # one file given twice: its deltas add up
            sha = lora_set[lora.path.strip()]
            weights[sha] = weights.get(sha, 0.0) + lora.scale
        return list(weights.items()), time.perf_counter() - start

    async def _multiplexed(self, key: str) -> LoraSet:
        """Load a LoRA set through `serve.multiplexed` in a replica (Serve then routes its key here)."""
        if self._load_set is None:

            async def load_set(model_id: str) -> LoraSet:
                return await self._fetch_and_load(self._wanted[model_id])

            try:
                from ray import serve

                serve.get_replica_context()
                self._load_set = serve.multiplexed(max_num_models_per_replica=self.config.loras.max_lora_sets)(
                    load_set)
            except Exception:  # not in a Serve replica (tests, benchmarks): the same LRU of sets, in process
                self._load_set = self._local_sets(load_set)
        return await self._load_set(key)

    def _local_sets(self, load_set: Callable[[str], Awaitable[LoraSet]]) -> Callable[[str], Awaitable[LoraSet]]:
        sets: OrderedDict[str, LoraSet] = OrderedDict()

        async def cached(key: str) -> LoraSet:
            if key not in sets:
                sets[key] = await load_set(key)
                while len(sets) > self.config.loras.max_lora_sets:
                    sets.popitem(last=False)
            sets.move_to_end(key)
            return sets[key]

        return cached

    # ------------------------------------------------------------------ generation
    def _run(self, request: FluxDevInput, weights: list[tuple[str, float]], ctx: RunContext,
             notify: Notify | None, lora_seconds: float) -> FluxOutput:
        """Switch the adapters, run the pipeline, check and encode the images (worker thread)."""
        from PIL import ImageOps

        torch = self._torch
        width, height = resolve_image_size(request.image_size)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        steps = request.num_inference_steps

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if ctx.cancelled:
                raise RequestCancelled()
            if notify is not None:
                notify(step + 1, steps)
            return {}

        with self._pipe_lock:
            ctx.check_cancelled()
            self.adapters.activate(weights)
            start = time.perf_counter()
            with torch.inference_mode():
                result = self.pipe(
                    prompt=request.prompt, width=_multiple_of_16(width), height=_multiple_of_16(height),
                    num_inference_steps=steps, guidance_scale=request.guidance_scale,
                    num_images_per_prompt=request.num_images, max_sequence_length=self.config.max_sequence_length,
                    generator=torch.Generator(device=self.device).manual_seed(seed), output_type="pil",
                    callback_on_step_end=on_step_end,
                )
            inference = time.perf_counter() - start
        images = [im if im.size == (width, height) else ImageOps.fit(im, (width, height), method=3)  # bicubic
                  for im in result.images]
        flags = [False] * len(images)
        if request.enable_safety_checker:
            images, flags = self.safety.apply(images)
        return FluxOutput(images=[Image.from_pil(im, request.output_format) for im in images], seed=seed,
                          has_nsfw_concepts=flags, prompt=request.prompt,
                          timings={"inference": inference, "lora_loading": lora_seconds})

    async def _generate(self, request: FluxDevInput, weights: list[tuple[str, float]], ctx: RunContext,
                        lora_seconds: float) -> FluxOutput:
        loop = asyncio.get_running_loop()

        def notify(step: int, total: int) -> None:  # from the worker thread to the stream, on the loop
            loop.call_soon_threadsafe(ctx.progress, step, total, "denoising")

        return await self.to_model_thread(self._run, request, weights, ctx, notify, lora_seconds)  # type: ignore[no-any-return]

    @endpoint("/flux-lora", input=FluxLoraInput, output=FluxOutput, billing=billable_units, routing_key=lora_set_key)
    async def generate_with_loras(self, request: FluxLoraInput, ctx: RunContext) -> FluxOutput:
        """Generate images with FLUX.1 [dev] and the request's LoRAs, merged at their scales."""
        weights, lora_seconds = await self._resolve(request)
        return await self._generate(request, weights, ctx, lora_seconds)

    @endpoint("/flux/dev", input=FluxDevInput, output=FluxOutput, billing=billable_units)
    async def generate(self, request: FluxDevInput, ctx: RunContext) -> FluxOutput:
        """Generate images with FLUX.1 [dev]."""
        return await self._generate(request, [], ctx, 0.0)

    def check_health(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()  # raises when the CUDA context is broken


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(FluxService, FluxConfig.model_validate(args.config), name, args)
