"""llama.cpp: ``llama-quantize`` arguments that set every tensor's GGUF type with ``--tensor-type REGEX=TYPE``
(llama-quantize searches each tensor name for the regex; ours are the anchored, escaped full GGUF names, so each names one
tensor). HF names map to GGUF names with the gguf package's ``TensorNameMap``
(``model.layers.0.mlp.down_proj.weight`` -> ``blk.0.ffn_down.weight``). Kept tensors get their own float width
(f32, f16); ``gguf:q4_0`` ... map to their type, ``fp16`` / ``bf16`` to f16 / bf16. The base type (the positional
argument) is the most common quantized type."""

from __future__ import annotations

import re
import shlex

import gguf

from ..errors import UserError
from ..quant.backends.cast import Cast
from ..quant.backends.gguf import GGUF
from .base import ExportTarget, ResolvedExport, cannot

NAME = "llamacpp"
FLOAT = {32: "f32", 16: "f16"}


def gguf_arch(model_type: str) -> gguf.MODEL_ARCH:
    names = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    for candidate in (model_type, model_type.removesuffix("_text"), model_type.replace("_", "")):
        if candidate in names:
            return names[candidate]
    raise UserError(
        f"export --to {NAME}: no GGUF architecture for model type {model_type!r}",
        "llama.cpp must support the architecture",
    )


def gguf_names(resolved: ResolvedExport) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, for every tensor of the plan."""
    tmap = gguf.get_tensor_name_map(gguf_arch(resolved.model_type), resolved.n_layers)
    out = {}
    for t in resolved.tensors:
        for name in (t.name, *t.aliases):
            g = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
            if g is not None:
                out[t.name] = g
                break
        else:
            raise UserError(f"export --to {NAME}: no GGUF name for tensor {t.name}", "llama.cpp must know the tensor")
    return out


def gguf_type(t) -> str:
    if t.scheme is None:
        return FLOAT.get(t.bits, "f32")
    s = t.scheme
    if s.outliers:
        raise cannot(NAME, s, "GGUF types keep no float16 outliers")
    if s.partial or s.keep_points or s.zero_points:
        raise cannot(
            NAME,
            s,
            "a GGUF tensor has one type: kept rows, columns or elements (heads, neurons, super weights) cannot be expressed",
        )
    if isinstance(s, GGUF):
        return s.gguf_type
    if isinstance(s, Cast):
        return {"fp16": "f16", "bf16": "bf16"}[s.dtype]
    raise cannot(
        NAME,
        s,
        "llama.cpp stores its own types: use gguf:q4_0, gguf:q8_0 ..., fp16 or bf16",
        "write the plan with gguf: schemes",
    )


def tensor_types(resolved: ResolvedExport) -> list[tuple[str, str]]:
    names = gguf_names(resolved)
    return [(names[t.name], gguf_type(t)) for t in resolved.tensors]


def arguments(resolved: ResolvedExport) -> list[list[str]]:
    """The command as lines of arguments: the program, one ``--tensor-type`` per tensor, then the files and the
    base type."""
    pairs = tensor_types(resolved)
    quantized = [ty for (_, ty), t in zip(pairs, resolved.tensors, strict=True) if t.quantized]
    base = max(dict.fromkeys(quantized), key=quantized.count) if quantized else "f16"
    lines = [["llama-quantize"]]
    lines += [["--tensor-type", f"^{re.escape(name)}$={ty}"] for name, ty in pairs]
    return [*lines, ["MODEL-F32.gguf", "MODEL-OUT.gguf", base]]


def render(resolved: ResolvedExport) -> str:
    lines = [" ".join(shlex.quote(a) for a in line) for line in arguments(resolved)]
    return f"# plan: {resolved.plan}\n" + " \\\n  ".join(lines) + "\n"


TARGET = ExportTarget(NAME, "llama-quantize --tensor-type arguments with GGUF tensor names", ".sh", render)
