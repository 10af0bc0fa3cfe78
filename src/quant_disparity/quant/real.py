"""A quantizing library's own forward pass: a model's linear layers swapped for the library's quantized layers.

Our evaluation of a scheme runs the model on the dequantized weights (:mod:`.engine`). A scheme made by a library
(``hqq:``, ``quanto:``) can also give the library's own quantized layer (``library_module(weight, bias)`` of a :class:`.backends.library.LibraryScheme`, e.g.
``HQQLinear``, a frozen quanto ``QLinear``), which stores the packed codes and computes the way the library
does, in its compute dtype (float16 for both). :class:`LibraryLayers` builds those layers from a model's
reference weights and swaps them in and out; each one takes its input cast to its compute dtype and returns its
output cast back, so the rest of the model runs as before. Comparing the two forwards (the real-vs-simulated
check, :func:`quant_disparity.evaluate.real.real_vs_simulated`) shows that measuring the dequantized weights
measures what the library runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import UserError
from ..models.modules import ModuleMap
from .backends.library import LibraryScheme
from .schemes import Scheme


class LibraryLinear(torch.nn.Module):
    """A library's quantized layer in a model of another dtype: input cast to ``dtype``, output cast back. It runs
    outside inference mode (without gradients): quanto's quantized tensors cannot be used in inference mode."""

    def __init__(self, layer: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.layer = layer
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            return self.layer(x.to(self.dtype)).to(x.dtype)


def has_library_forward(scheme: Scheme) -> bool:
    """Whether the scheme's library gives a quantized layer of its own (a plain scheme: no kept elements)."""
    return isinstance(scheme, LibraryScheme) and not (
        scheme.outliers or scheme.partial or scheme.keep_points or scheme.zero_points
    )


class LibraryLayers:
    """The library layers of an assignment (parameter -> scheme), built from the model's current weights (the
    reference: build before anything is quantized). Identity schemes are left alone; any other scheme must have a
    library forward and quantize the weight of a ``torch.nn.Linear`` that is not tied to another parameter."""

    def __init__(self, model: torch.nn.Module, modmap: ModuleMap, assignment: Mapping[str, Scheme]):
        self.model = model
        self._swaps: list[tuple[torch.nn.Module, str, torch.nn.Module, torch.nn.Module]] = []
        for name, scheme in assignment.items():
            if scheme.is_identity:
                continue
            info = modmap[name]
            module = model.get_submodule(info.module)
            if not isinstance(scheme, LibraryScheme) or not has_library_forward(scheme):
                raise UserError(
                    f"{name}: {scheme.name} has no library forward",
                    "compare schemes made by a library (hqq:, quanto:) without kept elements or outliers",
                )
            if not isinstance(module, torch.nn.Linear) or info.tied or info.is_bias:
                raise UserError(
                    f"{name}: the library forward replaces the weights of untied linear layers only",
                    "leave embeddings, a tied LM head and other tensors out of the compared plan",
                )
            parent_name, _, attr = info.module.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = scheme.library_module(module.weight.data, module.bias.data if module.bias is not None else None)
            self._swaps.append((parent, attr, module, LibraryLinear(layer, scheme.compute_dtype)))
        self.installed = False

    def __len__(self) -> int:
        return len(self._swaps)

    def install(self) -> None:
        """Put the library layers in the model."""
        for parent, attr, _, library in self._swaps:
            setattr(parent, attr, library)
        self.installed = True

    def remove(self) -> None:
        """Put the model's own layers back."""
        for parent, attr, own, _ in self._swaps:
            setattr(parent, attr, own)
        self.installed = False

    def __enter__(self) -> LibraryLayers:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
