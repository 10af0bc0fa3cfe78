"""Apply quantization to a model in place, reversibly, touching only what changes.

The engine keeps every original tensor and a cache of fake-quantized tensors per (parameter, scheme).
Switching from one assignment to another re-points only the parameters whose scheme changed
(``param.data = tensor``: no copy), so sweeps over many plans cost a dictionary lookup per changed tensor
after the first quantization; restoring puts back the very tensor objects that were there, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch

from ..models.modules import ModuleMap, from_2d, weight_2d
from .schemes import NONE, Scheme


@dataclass
class Manifest:
    """What an in-place call changed: parameter -> (old scheme, new scheme)."""

    changed: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def n_changed(self) -> int:
        return len(self.changed)


class QuantEngine:
    def __init__(self, model: torch.nn.Module, modmap: ModuleMap):
        self.model = model
        self.modmap = modmap
        self._params = {p.name: model.get_parameter(p.name) for p in modmap.params}
        self._original = {name: p.data for name, p in self._params.items()}
        self._active: dict[str, Scheme] = {}
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def active(self) -> dict[str, Scheme]:
        """Parameters currently not at their original value, with their scheme."""
        return dict(self._active)

    def quantized(self, name: str, scheme: Scheme) -> torch.Tensor:
        key = (name, scheme.name)
        if key in self._cache:
            return self._cache[key]
        info = self.modmap[name]
        orig = self._original[name]
        with torch.no_grad():
            w2d = weight_2d(orig, info)
            scheme.check_shape(cast("tuple[int, int]", tuple(w2d.shape)), name)  # weight_2d: 2-D
            q = from_2d(scheme.fake_quantize(w2d), info)
        self._cache[key] = q
        return q

    def assign_(self, assignment: Mapping[str, Scheme]) -> Manifest:
        """Make the model hold ``assignment`` (parameters not named, or named with ``none``, are original)."""
        manifest = Manifest()
        wanted = {n: s for n, s in assignment.items() if not s.is_identity}
        for name in list(self._active):
            if name not in wanted:
                manifest.changed[name] = (self._active.pop(name).name, NONE.name)
                self._params[name].data = self._original[name]
        for name, scheme in wanted.items():
            current = self._active.get(name)
            if current == scheme:
                continue
            self._params[name].data = self.quantized(name, scheme)
            manifest.changed[name] = ((current or NONE).name, scheme.name)
            self._active[name] = scheme
        return manifest

    def restore_(self) -> Manifest:
        return self.assign_({})


def cost(modmap: ModuleMap, assignment: Mapping[str, Scheme]) -> dict:
    """Honest size of a model under ``assignment``: every tensor at its stored width, scales included."""
    total_bits = 0.0
    quantized_params = 0
    quantized_bits = 0.0
    block_params = 0
    block_bits = 0.0
    for p in modmap.params:
        scheme = assignment.get(p.name, NONE)
        shape = cast("tuple[int, int]", tuple(weight_2d(torch.empty(p.shape, device="meta"), p).shape))
        bits = scheme.storage_bits(shape, p.bits)
        total_bits += bits
        if not scheme.is_identity:
            quantized_params += p.numel
            quantized_bits += bits
        if p.role == "matrix" and p.layer is not None:
            block_params += p.numel
            block_bits += bits
    total = modmap.total_params
    return {
        "total_params": total,
        "quantized_params": quantized_params,
        "quantized_fraction": quantized_params / total if total else 0.0,
        "kept_fraction": 1 - quantized_params / total if total else 0.0,
        "bits_per_weight": total_bits / total if total else 0.0,
        "bits_per_quantized_weight": quantized_bits / quantized_params if quantized_params else None,
        "block_linear_params": block_params,
        "bits_per_block_linear_weight": block_bits / block_params if block_params else None,
        "total_bytes": total_bits / 8,
    }
