"""The LoRA adapters a replica holds, and which of them a request switches on.

Two strategies behind one interface (`has`, `load`, `activate`):
- `AdapterCache` (eager transformers): every LoRA is its own peft adapter, named after its content
  (`lora_<sha256 prefix>`), loaded once; each request sets exactly its adapters and scales with
  `set_adapters`, or `disable_lora()` when it has none, so nothing carries over between requests.
  Least recently used adapters are deleted past `max_adapters` or `max_bytes`.
- `HotswapSlots` (compiled transformers): `enable_lora_hotswap(target_rank=...)` before the first
  load, then a fixed number of adapter slots (zero LoRAs on every Linear module) that are always
  active. A new LoRA goes into a slot with `load_lora_weights(..., hotswap=True)`; a LoRA seen before
  is copied back into a slot from its snapshot on the device; scales and unused slots (scale 0) are
  written in place into peft's scaling tensors. Tensors change, shapes and Python state do not, so
  the compiled graph is reused: every swap is a recompilation avoided.
"""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.flux.lora_files import PreparedLora
from serve_app.errors import FieldError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
Weights = list[tuple[str, float]]
"""`(sha256, scale)` of each LoRA a request uses; empty for the base model."""


@dataclass
class AdapterStats:
    """Counters of what the adapters did, for logs, tests and the benchmark."""

    loads: int = 0  # files loaded into the pipeline
    evictions: int = 0
    hotswaps: int = 0  # swaps into a slot of a compiled-ready transformer (each would otherwise recompile)
    switches: int = 0  # activations that changed the adapters in use
    resident_bytes: int = 0


def adapter_name(sha256: str) -> str:
    """The content-addressed peft adapter name of a LoRA file."""
    return f"lora_{sha256[:16]}"


def _load_file(pipe: Any, lora: PreparedLora, name: str, hotswap: bool) -> None:
    """`load_lora_weights` from a local safetensors file (never a pickle: `use_safetensors=True`)."""
    quiet = logging.getLogger("diffusers.loaders.lora_base")  # "no LoRA keys for CLIPTextModel": by design
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="flux-lora-") as folder:
        (Path(folder) / WEIGHT_NAME).write_bytes(lora.data)
        try:
            pipe.load_lora_weights(folder, weight_name=WEIGHT_NAME, adapter_name=name, hotswap=hotswap,
                                   use_safetensors=True)
        except (ValueError, RuntimeError, KeyError) as e:  # it passed our checks, but peft refused it
            raise FieldError("loras", f"could not load LoRA {lora.sha256[:12]}: {e}") from e
        finally:
            quiet.setLevel(level)


def _lora_layers(model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


class AdapterCache:
    """Eager strategy: one peft adapter per LoRA file, `set_adapters` per request, LRU eviction."""

    def __init__(self, pipe: Any, max_adapters: int, max_bytes: int) -> None:
        self.pipe = pipe
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.stats = AdapterStats()
        self._loaded: OrderedDict[str, tuple[str, int]] = OrderedDict()  # sha -> (adapter name, bytes)
        self._active: tuple[str, ...] | None = ()

    def check_request(self, count: int) -> None:
        if count > self.max_adapters:
            raise FieldError("loras", f"at most {self.max_adapters} different LoRAs per request on this server")

    def has(self, sha256: str) -> bool:
        return sha256 in self._loaded

    def _bytes(self, name: str) -> int:
        total = 0
        for layer in _lora_layers(self.pipe.transformer).values():
            for params in (layer.lora_A, layer.lora_B):
                if name in params:
                    total += sum(p.numel() * p.element_size() for p in params[name].parameters())
        return total

    def load(self, loras: list[PreparedLora], keep: set[str]) -> None:
        """Load the LoRAs not loaded yet, then evict least recently used ones (never those in `keep`)."""
        for lora in loras:
            if lora.sha256 in self._loaded:
                continue
            name = adapter_name(lora.sha256)
            _load_file(self.pipe, lora, name, hotswap=False)
            self._loaded[lora.sha256] = (name, self._bytes(name))
            self.stats.loads += 1
            self._active = None  # loading activates the new adapter: the next activation must set the state
        while len(self._loaded) > self.max_adapters or self._total() > self.max_bytes:
            victim = next((sha for sha in self._loaded if sha not in keep), None)
            if victim is None:  # the request's own LoRAs exceed the byte budget: they go first next time
                break
            self.pipe.delete_adapters([self._loaded.pop(victim)[0]])
            self.stats.evictions += 1
        self.stats.resident_bytes = self._total()

    def _total(self) -> int:
        return sum(size for _, size in self._loaded.values())

    def activate(self, weights: Weights) -> None:
        """Switch on exactly these adapters at these scales (none: the base model)."""
        names = tuple(self._loaded[sha][0] for sha, _ in weights)
        for sha, _ in weights:
            self._loaded.move_to_end(sha)
        if names != self._active:
            self.stats.switches += 1
        if not names:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters(list(names), adapter_weights=[scale for _, scale in weights])
        self._active = names


@dataclass
class _Snapshot:
    """A LoRA as it sits in a slot, kept on the device to be copied back in later."""

    tensors: dict[str, tuple[Any, Any, Any]]  # module -> (lora_A, lora_B, base scaling)
    nbytes: int
    modules: frozenset[str] = field(default_factory=frozenset)


class HotswapSlots:
    """Hotswap strategy: fixed, always-active slots whose tensors are rewritten in place."""

    def __init__(self, pipe: Any, shapes: dict[str, tuple[int, int]], slots: int, target_rank: int,
                 max_adapters: int, max_bytes: int) -> None:
        import torch
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        self.pipe = pipe
        self.target_rank = target_rank
        self.max_adapters = max(max_adapters, slots)
        self.max_bytes = max_bytes
        self.stats = AdapterStats()
        self.names = [f"slot{i}" for i in range(slots)]
        device, dtype = pipe.transformer.device, pipe.transformer.dtype
        pipe.enable_lora_hotswap(target_rank=target_rank)
        for name in self.names:  # zero LoRAs on every Linear: any later LoRA targets a subset
            zero = {}
            for module, (in_features, out_features) in shapes.items():
                zero[f"transformer.{module}.lora_A.weight"] = torch.zeros(target_rank, in_features, device=device,
                                                                          dtype=dtype)
                zero[f"transformer.{module}.lora_B.weight"] = torch.zeros(out_features, target_rank, device=device,
                                                                          dtype=dtype)
            pipe.load_lora_weights(zero, adapter_name=name)
        pipe.set_adapters(self.names, adapter_weights=[1.0] * slots)
        # set_adapters wrote float scalings: make them all tensors again (diffusers did slot 0 only)
        prepare_model_for_compiled_hotswap(pipe.transformer, target_rank=target_rank,
                                           config=pipe.transformer.peft_config)
        self.layers = _lora_layers(pipe.transformer)
        self.slot_sha: list[str | None] = [None] * slots
        self.slot_scale: list[float] = [0.0] * slots
        self.slot_modules: list[frozenset[str]] = [frozenset()] * slots
        self.resident: OrderedDict[str, _Snapshot] = OrderedDict()
        self._set_scale(list(range(slots)), [0.0] * slots, force=True)

    def check_request(self, count: int) -> None:
        if count > len(self.names):
            raise FieldError("loras", f"at most {len(self.names)} LoRAs per request on this server (compiled "
                             "transformer with that many hotswap slots)")

    def has(self, sha256: str) -> bool:
        return sha256 in self.resident

    def _check(self, lora: PreparedLora) -> None:
        if lora.rank > self.target_rank:
            raise FieldError("loras", f"LoRA rank {lora.rank} is above this server's hotswap target rank "
                             f"{self.target_rank}")
        if lora.bias:
            raise FieldError("loras", "LoRAs with bias terms cannot be hotswapped")

    def _free_slot(self, keep: set[str]) -> int:
        """An empty slot, else the one whose LoRA was used least recently and is not needed now."""
        if None in self.slot_sha:
            return self.slot_sha.index(None)
        age = {sha: i for i, sha in enumerate(self.resident)}  # least recently used first
        candidates = [i for i, sha in enumerate(self.slot_sha) if sha not in keep]
        return min(candidates, key=lambda i: age.get(self.slot_sha[i] or "", -1))

    def load(self, loras: list[PreparedLora], keep: set[str]) -> None:
        """Hotswap each new LoRA into a slot (peft pads its rank and zeroes the modules it leaves out),
        keep a snapshot of it, then drop least recently used snapshots past the budget."""
        for lora in loras:
            if lora.sha256 in self.resident:
                continue
            self._check(lora)
            slot = self._free_slot(keep)
            self.slot_sha[slot], self.slot_modules[slot] = None, frozenset(self.layers)  # until it succeeds
            _load_file(self.pipe, lora, self.names[slot], hotswap=True)
            name = self.names[slot]
            tensors = {m: (self.layers[m].lora_A[name].weight.detach().clone(),
                           self.layers[m].lora_B[name].weight.detach().clone(),
                           self.layers[m].scaling[name].detach().clone()) for m in lora.modules}
            nbytes = sum(a.nbytes + b.nbytes for a, b, _ in tensors.values())
            self.resident[lora.sha256] = _Snapshot(tensors, nbytes, lora.modules)
            self.slot_sha[slot], self.slot_modules[slot], self.slot_scale[slot] = lora.sha256, lora.modules, -1.0
            self.stats.loads += 1
            self.stats.hotswaps += 1
        in_slots = set(self.slot_sha)
        while len(self.resident) > self.max_adapters or self._total() > self.max_bytes:
            victim = next((sha for sha in self.resident if sha not in keep and sha not in in_slots), None)
            if victim is None:
                break
            del self.resident[victim]
            self.stats.evictions += 1
        self.stats.resident_bytes = self._total()

    def _total(self) -> int:
        return sum(s.nbytes for s in self.resident.values())

    def _fill(self, slot: int, sha256: str) -> None:
        """Copy a resident LoRA into a slot, in place."""
        import torch

        snapshot, name = self.resident[sha256], self.names[slot]
        with torch.no_grad():
            for module in self.slot_modules[slot] - snapshot.modules:
                self.layers[module].lora_B[name].weight.zero_()
            for module, (a, b, _) in snapshot.tensors.items():
                self.layers[module].lora_A[name].weight.copy_(a)
                self.layers[module].lora_B[name].weight.copy_(b)
        self.slot_sha[slot], self.slot_modules[slot], self.slot_scale[slot] = sha256, snapshot.modules, -1.0
        self.stats.hotswaps += 1

    def _set_scale(self, slots: list[int], scales: list[float], force: bool = False) -> None:
        import torch

        with torch.no_grad():
            for slot, scale in zip(slots, scales, strict=True):
                if scale == self.slot_scale[slot] and not force:
                    continue
                name, sha = self.names[slot], self.slot_sha[slot]
                if sha is None or scale == 0.0:  # modules outside slot_modules hold zero matrices anyway
                    for module in self.slot_modules[slot]:
                        self.layers[module].scaling[name].fill_(0.0)
                else:
                    for module, (_, _, base) in self.resident[sha].tensors.items():
                        torch.mul(base, scale, out=self.layers[module].scaling[name])
                self.slot_scale[slot] = scale

    def activate(self, weights: Weights) -> None:
        """Put each wanted LoRA in a slot (copying it in when it is not there) and write every slot's scale."""
        wanted = {sha for sha, _ in weights}
        for sha, _ in weights:
            self.resident.move_to_end(sha)
        switched = False
        for sha, _ in weights:
            if sha not in self.slot_sha:
                slot = next(i for i, s in enumerate(self.slot_sha) if s not in wanted)
                self._fill(slot, sha)
                switched = True
        scales = [0.0] * len(self.names)
        for sha, scale in weights:
            scales[self.slot_sha.index(sha)] = scale
        if switched or scales != self.slot_scale:
            self.stats.switches += 1
        self._set_scale(list(range(len(self.names))), scales)
