"""llama.cpp's K-quants, quantized by llama.cpp's own code (:mod:`.ggml`): ``gguf:q2_k`` ... ``gguf:q6_k``, one
type on every tensor the plan gives it (as ``llama-quantize --pure`` does), and the mixed recipes
``gguf:q3_k_m``, ``gguf:q4_k_m``, ``gguf:q5_k_m``: llama.cpp's per-tensor type choice
(``llama_tensor_get_type`` in src/llama-quant.cpp) over the module map.

Both follow llama.cpp's fallback for rows a K-type cannot hold (:func:`.ggml.stored_type`): bound to a tensor
(:meth:`.base.Scheme.bind`), a scheme names what it stores, e.g. ``gguf:q4_k-as-q5_0`` for a 640-wide row, and
counts the bits of that type. The rows left after kept columns are what decides.

``-imatrix`` (``gguf:q4_k-imatrix``, ``gguf:q4_k_m-imatrix``): quantized with an importance matrix, as
``llama-quantize --imatrix`` does. llama.cpp's ``llama-imatrix`` stores, per input channel of each tensor, the mean
of the squared activations over its calibration tokens; here that is the diagonal of the calibration statistics'
``Σ x xᵀ`` divided by the rows seen, from the same ``--calibration`` documents GPTQ and AWQ use, handed to
llama.cpp's own quantizer (``ggml_quantize_chunk``'s ``imatrix`` argument).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...errors import UserError
from . import ggml
from .base import Scheme, SchemeKind

if TYPE_CHECKING:
    from ...models.modules import ModuleMap, ParamInfo
    from ..site_stats import SiteStats

RECIPES = ("q3_k_m", "q4_k_m", "q5_k_m")
_NAME_RE = re.compile(r"^(?:gguf:)?(q[2-6]_k)(-imatrix)?(?:-as-([a-z0-9_]+))?$")
IMATRIX = "-imatrix"


def _base_fields(scheme: Scheme) -> dict:
    """The options every scheme has (outliers, kept rows, columns and points)."""
    return {f.name: getattr(scheme, f.name) for f in dataclasses.fields(Scheme)}


@dataclass(frozen=True)
class KQuant(Scheme):
    ggml_type: str  # one of ggml.K_TYPES: what was asked for
    stored: str | None = None  # what a tensor bound to it stores (ggml.stored_type), None before binding

    @property
    def base_name(self) -> str:
        name = f"gguf:{self.ggml_type}"
        return name if self.stored in (None, self.ggml_type) else f"{name}-as-{self.stored}"

    def stored_for(self, row_length: int) -> str:
        return ggml.stored_type(self.ggml_type, row_length)

    def bind(self, p: ParamInfo, modmap: ModuleMap) -> Scheme:
        from ...models.modules import weight_2d

        shape: tuple[int, int] = tuple(weight_2d(torch.empty(p.shape, device="meta"), p).shape)  # type: ignore[assignment]  # 2-D
        cols = len(self._rest(shape)[1]) if self.partial else shape[1]
        return dataclasses.replace(self, stored=self.stored_for(cols) if cols else self.ggml_type)

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        stored = self.stored_for(w2d.shape[1])
        assert self.stored in (None, stored), f"{self.name} bound to another row length than {w2d.shape[1]}"
        data = w2d.detach().float().cpu().numpy()
        out = ggml.dequantize(ggml.quantize(data, stored), stored, tuple(data.shape))  # type: ignore[arg-type]  # 2-D
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=w2d.device, dtype=w2d.dtype)

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        return ggml.storage_bits(self.stored_for(shape[1]), shape)


def importance(stats: SiteStats) -> np.ndarray:
    """llama-imatrix's value per input channel: the mean squared activation over the calibration rows."""
    return (stats.xtx.diagonal() / max(stats.n, 1)).float().cpu().numpy()


@dataclass(frozen=True)
class KQuantImatrix(KQuant):
    """A K-type quantized with the importance of its input channels (calibration statistics)."""

    needs_calibration = True

    @property
    def base_name(self) -> str:
        name = f"gguf:{self.ggml_type}{IMATRIX}"
        return name if self.stored in (None, self.ggml_type) else f"{name}-as-{self.stored}"

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        raise UserError(f"{self.name} needs calibration data", "pass --calibration eng (or mix:..., target, a file)")

    def _calibrated(self, w2d: torch.Tensor, stats: SiteStats) -> torch.Tensor:
        stored = self.stored_for(w2d.shape[1])
        assert self.stored in (None, stored), f"{self.name} bound to another row length than {w2d.shape[1]}"
        data = w2d.detach().float().cpu().numpy()
        packed = ggml.quantize(data, stored, importance(stats))
        out = ggml.dequantize(packed, stored, tuple(data.shape))  # type: ignore[arg-type]  # 2-D
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=w2d.device, dtype=w2d.dtype)


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits (a lambda in ``llama_tensor_get_type_impl``)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _index(p: ParamInfo, modmap: ModuleMap, components: tuple[str, ...]) -> tuple[int, int]:
    """``p``'s position among the tensors of ``components`` in model order, and their number (llama.cpp counts
    ``attn_v`` / ``ffn_down`` tensors as it meets them)."""
    names = [q.name for q in modmap.params if q.role == "matrix" and q.component in components]
    return names.index(p.name), len(names)


def recipe_type(recipe: str, p: ParamInfo, modmap: ModuleMap) -> str | None:
    """The K-type llama.cpp's ``recipe`` (``q4_k_m`` ...) asks for tensor ``p`` (before the row-length fallback),
    or None for a tensor llama.cpp leaves unquantized (norms, biases, vectors).

    Reproduced from ``llama_tensor_get_type_impl`` for these three recipes and models without experts: the tied or
    separate output tensor gets q6_k (q8_0 when its rows are not a multiple of 256, which the fallback of q6_k
    gives as well); attn_v (and a fused attn_qkv, which llama.cpp counts as attn_v) and ffn_down get more bits on
    the layers ``use_more_bits`` names (q4_k_m, q5_k_m: q6_k), q3_k_m gives attn_v q5_k on its first two
    tensors and q4_k after, ffn_down q5_k on the first 1/16 of the layers and q4_k after, and attn_output q4_k.
    Not reproduced: the Falcon and 70B special cases and mixture-of-experts rules."""
    if p.role not in ("matrix", "embedding") or len(p.shape) < 2:
        return None
    default = {"q3_k_m": "q3_k", "q4_k_m": "q4_k", "q5_k_m": "q5_k"}[recipe]
    comps = set(p.components)
    if "lm_head" in comps:  # output.weight, or a token embedding tied to it
        return "q6_k"
    if comps & {"attn.v", "attn.qkv"}:
        i, n = _index(p, modmap, ("attn.v", "attn.qkv"))
        if recipe == "q3_k_m":
            return "q5_k" if i < 2 else "q4_k"
        return "q6_k" if _use_more_bits(i, n) else default
    if "mlp.down" in comps:
        i, n = _index(p, modmap, ("mlp.down",))[0], modmap.n_layers
        if recipe == "q3_k_m":
            return "q5_k" if i < n // 16 else "q4_k"
        return "q6_k" if _use_more_bits(i, n) else default
    if "attn.o" in comps and recipe == "q3_k_m":
        return "q4_k"
    return default


@dataclass(frozen=True)
class Recipe(Scheme):
    """A llama.cpp mixture: applies as the :class:`KQuant` its tensor gets (:meth:`bind`)."""

    recipe: str  # one of RECIPES

    @property
    def base_name(self) -> str:
        return f"gguf:{self.recipe}"

    def bind(self, p: ParamInfo, modmap: ModuleMap) -> Scheme:
        from .identity import NONE

        ggml_type = recipe_type(self.recipe, p, modmap)
        if ggml_type is None:
            return NONE
        kind = KQuantImatrix if self.needs_calibration else KQuant
        return kind(ggml_type=ggml_type, **_base_fields(self)).bind(p, modmap)

    def _fake_quantize(self, w2d: torch.Tensor) -> torch.Tensor:
        raise UserError(
            f"{self.name} is a per-tensor recipe: it needs to know each tensor's place in the model",
            f"use it with `audit --scheme {self.name}` or in a plan (`{self.name}:*`)",
        )

    def _storage_bits(self, shape: tuple[int, int], orig_bits: int) -> float:
        # unbound (e.g. the scheme listing): the recipe's default type; every bound tensor counts its own type
        return KQuant(ggml_type=self.recipe.removesuffix("_m"))._storage_bits(shape, orig_bits)


@dataclass(frozen=True)
class RecipeImatrix(Recipe):
    """A llama.cpp mixture quantized with an importance matrix: each tensor becomes a :class:`KQuantImatrix`."""

    needs_calibration = True

    @property
    def base_name(self) -> str:
        return f"gguf:{self.recipe}{IMATRIX}"


def _parse(text: str) -> Scheme | None:
    name = text.removeprefix("gguf:")
    if name in RECIPES:
        return Recipe(recipe=name)
    if name.endswith(IMATRIX) and name.removesuffix(IMATRIX) in RECIPES:
        return RecipeImatrix(recipe=name.removesuffix(IMATRIX))
    m = _NAME_RE.match(text)
    if not m:
        if re.fullmatch(r"(?:gguf:)?q\d_k(?:_[a-z]+)?", text):
            raise UserError(
                f"unknown llama.cpp K-type {name!r}",
                f"K-types: {', '.join(ggml.K_TYPES)}; recipes: {', '.join(RECIPES)}",
            )
        return None
    ggml_type, imatrix, stored = m.group(1), m.group(2), m.group(3)
    if ggml_type not in ggml.K_TYPES:
        return None
    chain = (ggml_type, ggml.FALLBACK[ggml_type], "f16")
    if stored is not None and stored not in chain:
        raise UserError(f"{ggml_type} falls back to {' or '.join(chain[1:])}, not {stored}", f"write gguf:{ggml_type}")
    return (KQuantImatrix if imatrix else KQuant)(ggml_type=ggml_type, stored=stored)


KIND = SchemeKind(
    name="kquant",
    syntax="gguf:" + ", ".join(ggml.K_TYPES + RECIPES) + ", each with -imatrix (needs --calibration) "
    "(llama.cpp's own code, needs the llamacpp extra)",
    examples=(
        ("gguf:q2_k", "llama.cpp Q2_K (libggml-base's quantizer, bit-exact; q4_0 on rows not a multiple of 256)"),
        ("gguf:q3_k", "llama.cpp Q3_K (q4_0 on rows not a multiple of 256)"),
        ("gguf:q4_k", "llama.cpp Q4_K (q5_0 on rows not a multiple of 256)"),
        ("gguf:q5_k", "llama.cpp Q5_K (q5_1 on rows not a multiple of 256)"),
        ("gguf:q6_k", "llama.cpp Q6_K (q8_0 on rows not a multiple of 256)"),
        ("gguf:q4_k_m", "llama-quantize's Q4_K_M mixture, type per tensor (cost shown: its default q4_k)"),
        ("gguf:q3_k_m", "llama-quantize's Q3_K_M mixture (cost shown: q3_k)"),
        ("gguf:q5_k_m", "llama-quantize's Q5_K_M mixture (cost shown: q5_k)"),
        ("gguf:q4_k-imatrix", "Q4_K with an importance matrix from the calibration data (needs --calibration)"),
        ("gguf:q4_k_m-imatrix", "the Q4_K_M mixture with an importance matrix (needs --calibration)"),
    ),
    parse=_parse,
    colon_name=r"gguf:[a-z0-9_]+(?:-imatrix)?(?:-as-[a-z0-9_]+)?",
)
