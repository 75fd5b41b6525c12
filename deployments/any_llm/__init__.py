"""fal's any-llm contract served by our own causal LM (see `service.py`)."""

from deployments.any_llm.service import AnyLLMConfig, AnyLLMInput, AnyLLMOutput, AnyLLMService, TokenChunk, build

__all__ = ["AnyLLMConfig", "AnyLLMInput", "AnyLLMOutput", "AnyLLMService", "TokenChunk", "build"]
