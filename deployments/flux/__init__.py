"""Flux text-to-image with LoRAs loaded per request: `/flux-lora` and `/flux/dev` (see `service.py`)."""

from deployments.flux.config import FluxConfig
from deployments.flux.schema import FluxDevInput, FluxLoraInput, FluxOutput, LoraWeight, billable_units, lora_set_key
from deployments.flux.service import FluxService, build

__all__ = ["FluxConfig", "FluxDevInput", "FluxLoraInput", "FluxOutput", "FluxService", "LoraWeight", "billable_units",
           "build", "lora_set_key"]
