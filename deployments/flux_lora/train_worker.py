"""The per-rank Flux LoRA trainer: DDP over the ranks of the replica's placement group.

Each rank loads the Flux transformer once, adds the frozen-base LoRA adapter (`lora.py`) and wraps
the model in DistributedDataParallel (NCCL on GPUs, gloo on CPU), with every frozen weight left out
of DDP so only the adapter is broadcast and all-reduced. A request re-initialises the adapter from
its seed, decodes the preprocessed dataset (safetensors bytes, `data.py`), trains (`training.py`)
and checks for cancellation before every step on every rank (`cancel_agreed`, one
all-reduce), so all ranks stop at the same step. Rank 0 streams a status at least every
`stream_every` steps and returns the checkpoint bytes.
"""

from __future__ import annotations

from typing import Any

from deployments.flux_lora.lora import add_lora, lora_digest, reset_lora, save_checkpoint, trainable_parameters
from deployments.flux_lora.synthetic import synthetic_tensors
from deployments.flux_lora.training import (
    TrainingParams,
    TrainingSet,
    TrainingStatus,
    train_loop,
    use_attention_that_trains,
)
from serve_app.distributed import DistributedWorker
from serve_app.errors import FieldError, RequestCancelled
from serve_app.models.source import ModelSource, build_or_load, resolve_dtype


class FluxLoRATrainWorker(DistributedWorker):
    """One rank of the DDP trainer."""

    def setup(self, model: dict[str, Any], subfolder: str | None = "transformer",  # type: ignore[override]
              dtype: str = "auto", lora_rank: int = 16, lora_alpha: int = 16,
              gradient_checkpointing: bool = False, warmup_resolution: int | None = None, **_: Any) -> None:
        """Load the transformer on this rank's device, add the adapter, wrap it in DDP and
        optionally run one warm-up step at `warmup_resolution`."""
        import torch
        from diffusers import FluxTransformer2DModel

        from components import flux

        device = str(self.device)
        use_attention_that_trains(device)
        self.dtype = dt = resolve_dtype(dtype, device)  # type: ignore[arg-type]
        source = ModelSource.model_validate(model)
        extra = {"subfolder": subfolder} if subfolder else {}

        def load(model_id: str, kwargs: dict[str, Any]) -> Any:
            return FluxTransformer2DModel.from_pretrained(model_id, torch_dtype=dt, **extra, **kwargs).to(device)

        self.transformer = build_or_load(source, load=load, presets={
            "tiny": lambda: flux.build_transformer("tiny", device, dt),
            "full": lambda: flux.build_transformer("full", device, dt)})
        add_lora(self.transformer, lora_rank, lora_alpha)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.model = self._wrap()
        self._torch = torch
        if warmup_resolution:
            warm = synthetic_tensors(self.transformer.config, 1, warmup_resolution, dtype=dt, device=self.device)
            self._train(TrainingSet(**warm), TrainingParams(steps=1, batch_size=1))

    def _wrap(self) -> Any:
        """DDP over the group, ignoring the frozen weights (the transformer itself on one rank)."""
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if self.world_size == 1 or not dist.is_initialized():
            return self.transformer
        frozen = [n for n, p in self.transformer.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in self.transformer.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.transformer, frozen)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.transformer, device_ids=device_ids, broadcast_buffers=False,
                                       gradient_as_bucket_view=True)

    def _dataset(self, data: bytes, field: str | None) -> TrainingSet:
        """Decode and check a preprocessed file against this model. A bad file is a 422 on `field`
        when the caller sent it; without `field` (our own preprocessor made it) it is a server error."""
        from deployments.flux_lora.data import decode_preprocessed

        def fail(message: str) -> Exception:
            return FieldError(field, message) if field else RuntimeError(f"preprocessor output rejected: {message}")

        try:
            pre = decode_preprocessed(data)
        except ValueError as e:
            raise fail(str(e)) from e
        cfg = self.transformer.config
        expected = {"latent channels": (pre.latents.shape[1] * 4, cfg.in_channels),
                    "text embedding width": (pre.text_embeddings.shape[2], cfg.joint_attention_dim),
                    "pooled embedding width": (pre.pooled_embeddings.shape[1], cfg.pooled_projection_dim)}
        for what, (got, want) in expected.items():
            if got != want:
                raise fail(f"the preprocessed data does not fit this model: {what} {got}, expected {want} "
                           "(was it made with the same Flux model?)")
        return TrainingSet(latents=pre.latents.to(self.device),
                           text_embeddings=pre.text_embeddings.to(self.device, self.dtype),
                           pooled_embeddings=pre.pooled_embeddings.to(self.device, self.dtype))

    def _sync_adapter(self) -> None:
        """Make every rank's adapter rank 0's (they are equal already when seeded alike)."""
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return
        params = [p for _, p in trainable_parameters(self.transformer)]
        flat = self._torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        with self._torch.no_grad():
            for p, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
                p.copy_(chunk.view_as(p))

    def _train(self, data: TrainingSet, params: TrainingParams, streaming: bool = False,
               stream_every: int = 10) -> Any:
        reset_lora(self.transformer, params.seed)
        self._sync_adapter()

        def on_step(report: Any) -> None:
            if streaming and (report.step == 1 or report.step % stream_every == 0 or report.step == report.total):
                self.partial(TrainingStatus.of(report), kind="training")

        return train_loop(self.model, self.transformer, data, params, rank=self.rank, world_size=self.world_size,
                          dtype=self.dtype, should_stop=self.cancel_agreed, on_step=on_step)

    def __call__(self, streaming: bool = False, training_data: bytes = b"",  # type: ignore[override]
                 data_field: str | None = "training_data_url", stream_every: int = 10, debug: bool = False,
                 **hyperparameters: Any) -> dict[str, Any] | None:
        """Train one adapter.

        Payload: the preprocessed file's bytes; `data_field`, the input field that named it (None
        for our own preprocessor's output); `TrainingParams` fields; `stream_every`; `debug` (every
        rank's adapter digest, first batch, peak memory and step times, for tests and benchmarks).
        Rank 0 returns `checkpoint` (bytes), `final_loss`, `num_steps` and `num_images`; the other
        ranks return None. A cancelled job raises `RequestCancelled` on every rank at the same step.
        """
        torch = self._torch
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        data = self._dataset(training_data, data_field)
        params = TrainingParams(**hyperparameters)
        result = self._train(data, params, streaming, stream_every)
        if result.cancelled:
            raise RequestCancelled()
        out: dict[str, Any] = {"num_steps": result.num_steps, "final_loss": result.final_loss,
                               "num_images": data.num_samples}
        if debug:
            out["debug"] = self._gather_debug(result)
        if self.rank != 0:
            return None
        out["checkpoint"] = save_checkpoint(self.transformer, dtype=self.dtype)
        return out

    def _gather_debug(self, result: Any) -> list[dict[str, Any]]:
        """Every rank's facts, gathered to all ranks (a collective)."""
        import torch.distributed as dist

        torch = self._torch
        mine = {"rank": self.rank, "digest": lora_digest(self.transformer), "first_indices": result.first_indices,
                "step_seconds": result.step_seconds,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                else None}
        if self.world_size == 1 or not dist.is_initialized():
            return [mine]
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        return everyone
