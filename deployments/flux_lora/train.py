"""Flux LoRA training (fal's Flux LoRA trainer): DDP over the GPUs of one replica, streamed.

Endpoints (mount with `route_prefix: /`, each also at `<path>/stream`):
- `POST /flux-train`: a ZIP of images -> the `flux-preprocess` service (captions, latents, text
  embeddings; awaited through its deployment handle, its progress forwarded) -> training.
- `POST /flux-train-from-preprocessed`: a preprocessed file (`data.py`) by URL -> training.

Both return the adapter as a diffusers Flux LoRA file (`pytorch_lora_weights.safetensors`, loadable
with `FluxPipeline.load_lora_weights`), the mean loss and the step count. Streams send
`{"type": "training", "step", "loss", "avg_loss", "learning_rate", "progress": "12/250"}` at least
every 10 steps, then the same output as the sync call. A cancelled job stops at its next step on
every rank. Jobs take minutes to hours: use the queue API (`POST /queue/flux-train`); the HTTP
proxy's `request_timeout_s` bounds sync calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, computed_field
from ray import serve

from components.flux import FLUX_DEV_ID
from deployments.flux_lora.lora import CHECKPOINT_NAME
from deployments.flux_lora.training import LRScheduler
from serve_app.context import cancel_call
from serve_app.distributed import RankResources
from serve_app.distributed.service import DistributedService
from serve_app.endpoints import endpoint
from serve_app.errors import FieldError, RequestTimeout, ServiceUnavailable, UpstreamError
from serve_app.events import Output
from serve_app.inputs import FetchOptions, fetch_url
from serve_app.io import File
from serve_app.models.source import DtypeName, ModelSource
from serve_app.service import RequestInfo, RunContext

logger = logging.getLogger("ray.serve")



class FluxTrainConfig(BaseModel):
    """Configuration of the Flux LoRA trainer."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=FLUX_DEV_ID),
                               description="Flux weights: a pipeline repo or directory, or a preset.")
    subfolder: str | None = Field(default="transformer",
                                  description="Folder of the transformer inside `model.id` (null: the id is it).")
    world_size: int = Field(default=2, ge=1, description="Ranks (GPUs) per replica, trained with DDP.")
    resources: RankResources = Field(default_factory=RankResources, description="Per-rank resources.")
    dtype: DtypeName = Field(default="auto", description="Base weights dtype; auto = bfloat16 on CUDA, float32 on "
                             "CPU. The adapter trains in float32 and is saved in this dtype.")
    lora_rank: int = Field(default=16, ge=1, le=256, description="LoRA rank (fal's trainer: 16).")
    lora_alpha: int = Field(default=16, ge=1, le=512, description="LoRA alpha (fal's trainer: 16).")
    gradient_checkpointing: bool = Field(default=False,
                                         description="Recompute activations in backward (less memory, slower).")
    stream_every: int = Field(default=10, ge=1, le=10, description="Steps between stream status events.")
    preprocessor_service: str = Field(default="flux-preprocess",
                                      description="Deployment name of the preprocessor, in this application.")
    preprocess_timeout_s: float = Field(default=3600, gt=0, description="Longest wait for preprocessing.")
    fetch_timeout_s: float = Field(default=600, gt=0, description="Longest download of `training_data_url`.")
    max_training_data_bytes: int = Field(default=4 * 1024**3, gt=0, description="Largest preprocessed file accepted.")
    start_timeout_s: float = Field(default=1800, gt=0, description="Limit for loading the model on every rank.")
    call_timeout_s: float | None = Field(default=86400, gt=0,
                                         description="Limit for one training job on the ranks (null: none).")
    graceful_shutdown_timeout_s: float = Field(default=3600, ge=0, description="How long a stopping replica "
                                               "(redeploy, downscale) lets a running job finish.")
    warmup: bool = Field(default=True, description="Run one training step on random data before taking traffic.")
    warmup_resolution: int = Field(default=512, ge=256, le=1024, multiple_of=16, description="Warm-up resolution.")


# Hyperparameters both endpoints share: fal's names, defaults and bounds.
LearningRate = Annotated[float, Field(gt=0, le=1, description="Learning rate of lora_A.")]
BUpFactor = Annotated[float, Field(gt=0, le=100, description="Multiplier of the learning rate for lora_B.")]
BatchSize = Annotated[int, Field(ge=1, le=64, description="Images per GPU per step.")]
Accumulation = Annotated[int, Field(ge=1, le=64, description="Micro-batches accumulated per optimizer step.")]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1, description="Seed of the adapter init, batches, noise and timesteps.")]
Guidance = Annotated[float, Field(ge=0, le=20, description="Guidance embedding value during training.")]
SCHEDULER_HELP = "Learning-rate schedule (diffusers' `get_scheduler` names)."
STEPS_HELP = "Optimizer steps."


def _warmup_within_steps(value: int, info: ValidationInfo) -> int:
    steps = info.data.get("steps")
    if steps is not None and value > steps:
        raise ValueError(f"lr_warmup_steps ({value}) must not exceed steps ({steps})")
    return value


WarmupSteps = Annotated[int, Field(ge=0, le=10000, description="Warm-up steps of the learning-rate schedule "
                                   "(not used by `constant`; at most `steps`)."), AfterValidator(_warmup_within_steps)]


class FluxTrainInput(BaseModel):
    """Input of `POST /flux-train`: images in a ZIP, preprocessed first, then trained on."""

    images_data_url: str = Field(description="URL (http(s) or data:) of a ZIP of the training images; a sidecar "
                                 "`<image>.txt` is used as that image's caption.",
                                 examples=["https://example.com/my-subject.zip"],
                                 json_schema_extra={"ui": {"field": "file", "important": True}})
    trigger_word: str = Field(default="ohwx", description="Word put in front of every caption.")
    steps: int = Field(default=250, ge=100, le=10000, description=STEPS_HELP)
    learning_rate: LearningRate = 5e-4
    b_up_factor: BUpFactor = 3.0
    batch_size: BatchSize = 4
    gradient_accumulation_steps: Accumulation = 1
    resolution: int = Field(default=512, ge=256, le=1024, multiple_of=16, description="Training resolution (square).")
    seed: Seed = 42
    lr_scheduler: LRScheduler = Field(default="constant", description=SCHEDULER_HELP)
    lr_warmup_steps: WarmupSteps = 0
    guidance_scale: Guidance = 1.0


class FluxTrainFromPreprocessedInput(BaseModel):
    """Input of `POST /flux-train-from-preprocessed`: a file made by `/flux-preprocess`."""

    training_data_url: str = Field(description="URL (http(s) or data:) of the preprocessed safetensors file.",
                                   examples=["https://example.com/preprocessed.safetensors"],
                                   json_schema_extra={"ui": {"field": "file", "important": True}})
    steps: int = Field(default=250, ge=100, le=10000, description=STEPS_HELP + " fal's `max_train_steps` also works.",
                       validation_alias=AliasChoices("steps", "max_train_steps"))
    learning_rate: LearningRate = 5e-4
    b_up_factor: BUpFactor = 3.0
    batch_size: BatchSize = 4
    gradient_accumulation_steps: Accumulation = 1
    seed: Seed = 42
    lr_scheduler: LRScheduler = Field(default="linear", description=SCHEDULER_HELP)
    lr_warmup_steps: WarmupSteps = 0
    guidance_scale: Guidance = 1.0


HYPERPARAMETERS = ("steps", "learning_rate", "b_up_factor", "batch_size", "gradient_accumulation_steps", "seed",
                   "lr_scheduler", "lr_warmup_steps", "guidance_scale")


class TrainingOutput(BaseModel):
    """The trained adapter."""

    checkpoint: File = Field(description="The LoRA weights (diffusers' Flux LoRA safetensors).")
    final_loss: float = Field(description="Mean training loss over all steps and GPUs.")
    num_steps: int = Field(description="Optimizer steps done.")
    message: str = Field(description="A summary of the job.")

    @computed_field(description="Ready to send as `/flux-lora`'s `loras`: the checkpoint at scale 1.")  # type: ignore[prop-decorator]
    @property
    def loras(self) -> list[dict[str, Any]]:
        return [{"path": self.checkpoint.url, "scale": 1.0}]


class PreprocessingStatus(BaseModel):
    """A stream frame (`type: preprocessing`) sent when preprocessing is done."""

    num_images: int = Field(description="Images preprocessed.")
    message: str = Field(description="The preprocessor's summary.")


class FluxTrainService(DistributedService):
    """Owns a DistributedRunner of `FluxLoRATrainWorker` ranks in this replica's placement group."""

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        # A redeploy or downscale lets a running job finish.
        return {**super().deployment_defaults(config),
                "graceful_shutdown_timeout_s": getattr(config, "graceful_shutdown_timeout_s", 20.0)}

    def __init__(self, config: FluxTrainConfig) -> None:
        from deployments.flux_lora.train_worker import FluxLoRATrainWorker

        self.config = config
        self.start_runner(
            FluxLoRATrainWorker, config, model=config.model.model_dump(), subfolder=config.subfolder,
            dtype=config.dtype, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
            gradient_checkpointing=config.gradient_checkpointing,
            warmup_resolution=config.warmup_resolution if config.warmup else None,
        )
        self._preprocessor: Any = None

    @endpoint("/flux-train", input=FluxTrainInput, output=TrainingOutput)
    async def train(self, request: FluxTrainInput, ctx: RunContext) -> TrainingOutput:
        """Preprocess a ZIP of images (captions, latents, text embeddings), then train a Flux LoRA on it."""
        data = await self._preprocess(request, ctx)
        return await self._train(data, None, request, ctx)  # our preprocessor's file: not the caller's fault

    @endpoint("/flux-train-from-preprocessed", input=FluxTrainFromPreprocessedInput, output=TrainingOutput)
    async def train_from_preprocessed(self, request: FluxTrainFromPreprocessedInput,
                                      ctx: RunContext) -> TrainingOutput:
        """Train a Flux LoRA on a file made by `/flux-preprocess`."""
        options = FetchOptions(max_bytes=self.config.max_training_data_bytes, timeout_s=self.config.fetch_timeout_s)
        data = await fetch_url(request.training_data_url, "training_data_url", options)
        return await self._train(data, "training_data_url", request, ctx)

    async def _preprocessor_handle(self) -> Any:
        if self._preprocessor is None:
            name, app = self.config.preprocessor_service, serve.get_replica_context().app_name
            try:  # the existence check asks the controller: off the event loop
                self._preprocessor = await asyncio.to_thread(serve.get_deployment_handle, name, app_name=app)
            except Exception as e:
                raise ServiceUnavailable(f"The preprocessor {name!r} is not deployed in this application.") from e
        return self._preprocessor

    async def _preprocess(self, request: FluxTrainInput, ctx: RunContext) -> bytes:
        """Run the preprocessor, forwarding its stream events; return the preprocessed file's bytes."""
        handle = await self._preprocessor_handle()
        payload = {"images_data_url": request.images_data_url, "trigger_word": request.trigger_word,
                   "resolution": request.resolution}
        info = RequestInfo(ctx.request_id, f"/{self.config.preprocessor_service}", caller=RequestInfo.here())
        # store=False: the preprocessed file comes back as bytes, for us, not as a client download.
        gen = handle.options(stream=True).stream_endpoint.remote("preprocess", payload, info, ctx.streaming,
                                                                 store=False)
        output: Any = None
        try:
            async with asyncio.timeout(self.config.preprocess_timeout_s):
                async for item in gen:
                    if isinstance(item, Output):
                        output = item.value
                    else:
                        ctx.emit(item)
        except TimeoutError as e:
            raise RequestTimeout(f"Preprocessing took longer than {self.config.preprocess_timeout_s:g} s.") from e
        finally:
            if output is None:
                cancel_call(gen, info)
        if output is None:  # stream_endpoint ends with the output or raises: a broken preprocessor
            raise UpstreamError("The preprocessor returned no output.")
        ctx.partial(PreprocessingStatus(num_images=output.num_images, message=output.message), kind="preprocessing")
        file: File = output.preprocessed_data
        if file.data is not None:
            return file.data
        options = FetchOptions(max_bytes=self.config.max_training_data_bytes, timeout_s=self.config.fetch_timeout_s)
        try:  # a stored output (its bytes already went to the store): our side's problem, not the caller's
            return await fetch_url(file.url, "preprocessed_data", options)
        except FieldError as e:
            raise UpstreamError(f"Could not read the preprocessor's output: {e.message}") from e

    async def _train(self, data: bytes, field: str | None, request: FluxTrainInput | FluxTrainFromPreprocessedInput,
                     ctx: RunContext) -> TrainingOutput:
        """Train on every rank; forward rank 0's status events to the stream."""
        payload = {"training_data": data, "data_field": field, "stream_every": self.config.stream_every,
                   **{k: getattr(request, k) for k in HYPERPARAMETERS}}
        result = await self.run_on_ranks(payload, ctx, self.config.call_timeout_s)
        gpus = f"{self.config.world_size} GPU{'s' if self.config.world_size > 1 else ''}"
        return TrainingOutput(
            checkpoint=File.from_bytes(result["checkpoint"], "application/octet-stream", CHECKPOINT_NAME),
            final_loss=result["final_loss"], num_steps=result["num_steps"],
            message=f"Trained a rank-{self.config.lora_rank} Flux LoRA for {result['num_steps']} steps on "
                    f"{result['num_images']} images with {gpus}.",
        )


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment in its placement group."""
    from serve_app.app import bind_service

    return bind_service(FluxTrainService, FluxTrainConfig.model_validate(args.config), name, args)
