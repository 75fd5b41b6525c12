"""Configuration of the Flux service (`FluxConfig`): weights, LoRA budgets, hotswap slots, compilation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.flux import FLUX_DEV_ID
from serve_app.models.source import DeviceName, DtypeName, ModelSource

SAFETY_CHECKER_ID = "Falconsai/nsfw_image_detection"
GIB = 1024**3


class LoraLimits(BaseModel):
    """What one replica downloads and keeps of the LoRAs it is asked for."""

    model_config = ConfigDict(extra="forbid")

    max_adapters: int = Field(default=16, ge=1, description="LoRAs kept loaded per replica (least recently used "
                              "ones are unloaded past it); also the most different LoRAs one request may use.")
    max_bytes: int = Field(default=8 * GIB, ge=1, description="Device memory the kept LoRAs may use (least recently "
                           "used ones are unloaded past it; one request's own LoRAs always stay).")
    max_file_bytes: int = Field(default=2 * GIB, ge=1, description="Largest LoRA file accepted (download limit).")
    fetch_timeout_s: float = Field(default=120.0, gt=0, description="Time limit of one LoRA download.")
    allow: list[str] = Field(default_factory=list, description="Internal networks or hosts LoRAs may be downloaded "
                             "from (e.g. `10.1.2.0/24`, `lora-store.internal`), on top of SERVE_APP_OUTBOUND_ALLOW; "
                             "other non-public addresses are refused.")
    max_lora_sets: int = Field(default=8, ge=1, description="LoRA sets (multiplexed model ids) a replica reports "
                               "as loaded to Serve's router, which sends requests for them to it.")


class HotswapConfig(BaseModel):
    """Fixed adapter slots, rewritten in place: for compiled transformers (no recompilation per LoRA)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Use hotswap slots instead of one adapter per LoRA.")
    slots: int = Field(default=3, ge=1, le=8, description="Slots, always active: the most LoRAs one request may use. "
                       "Each slot costs a rank-`target_rank` LoRA's compute on every Linear module.")
    target_rank: int = Field(default=32, ge=1, le=1024, description="Rank every slot is padded to: the highest LoRA "
                             "rank accepted.")


class CompileConfig(BaseModel):
    """`torch.compile` of the transformer."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Compile the transformer (with hotswap, LoRA changes keep the "
                          "graph; without, every new adapter set recompiles).")
    backend: str = Field(default="inductor", description="torch.compile backend (`eager` traces only: tests).")


class WarmupConfig(BaseModel):
    """One inference before the replica takes traffic (with compilation: at the size requests will use)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Run the warm-up at start.")
    width: int = Field(default=1024, gt=0, description="Warm-up image width.")
    height: int = Field(default=1024, gt=0, description="Warm-up image height.")
    num_inference_steps: int = Field(default=2, ge=1, description="Warm-up steps.")


class FluxConfig(BaseModel):
    """Configuration of the Flux service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=FLUX_DEV_ID), description="FluxPipeline weights (FLUX.1 [dev] "
                               "is gated: accept its license on the hub and give the replicas HF_TOKEN).")
    safety_checker: ModelSource = Field(default=ModelSource(id=SAFETY_CHECKER_ID), description="NSFW image "
                                        "classifier.")
    nsfw_threshold: float = Field(default=0.5, ge=0, le=1, description="NSFW probability above which an image is "
                                  "flagged.")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    dtype: DtypeName = Field(default="auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    max_sequence_length: int = Field(default=512, ge=16, le=512, description="T5 prompt tokens (FLUX.1 [dev]: 512).")
    loras: LoraLimits = Field(default_factory=LoraLimits, description="LoRA download and cache limits.")
    hotswap: HotswapConfig = Field(default_factory=HotswapConfig, description="Hotswap slots (compiled transformers).")
    compile: CompileConfig = Field(default_factory=CompileConfig, description="torch.compile of the transformer.")
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="Warm-up inference.")

    @model_validator(mode="after")
    def _slots_fit_the_cache(self) -> FluxConfig:
        if self.hotswap.enabled and self.loras.max_adapters < self.hotswap.slots:
            raise ValueError("loras.max_adapters must be at least hotswap.slots")
        return self
