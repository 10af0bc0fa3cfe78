"""Write a real GGUF whose tensors hold llama.cpp's own quantized bytes (:mod:`..quant.backends.ggml`), so that
llama.cpp can run what a scheme simulates (the real-vs-simulated check, :mod:`..evaluate.llamacpp`).

A template GGUF (for a bundled model: the file it came from) gives the metadata, the tokenizer and every tensor
the assignment leaves alone, byte for byte; each assigned tensor is quantized from the model's weight in the type
its bound scheme stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..quant.backends import ggml
from ..quant.backends.base import Scheme
from ..quant.backends.gguf import GGUF
from ..quant.backends.kquant import KQuant
from .modules import ModuleMap, ParamInfo, weight_2d

#: our components -> llama.cpp's tensor names inside a block
GGUF_BLOCK_NAMES = {
    "attn.q": "attn_q",
    "attn.k": "attn_k",
    "attn.v": "attn_v",
    "attn.o": "attn_output",
    "attn.qkv": "attn_qkv",
    "mlp.gate": "ffn_gate",
    "mlp.up": "ffn_up",
    "mlp.down": "ffn_down",
}


def gguf_name(p: ParamInfo) -> str | None:
    """llama.cpp's name of a weight tensor (``blk.3.attn_q.weight``, ``token_embd.weight``, ``output.weight``)."""
    if "embed.token" in p.components:
        return "token_embd.weight"
    if p.components == ("lm_head",):
        return "output.weight"
    if p.layer is not None and p.role == "matrix" and p.component in GGUF_BLOCK_NAMES:
        return f"blk.{p.layer}.{GGUF_BLOCK_NAMES[p.component]}.weight"
    return None


def gguf_tensor_type(scheme: Scheme) -> str:
    """The llama.cpp type a (bound) scheme stores; a :class:`UserError` for one a GGUF cannot hold."""
    whole = not (scheme.partial or scheme.outliers or scheme.keep_points or scheme.zero_points)
    if isinstance(scheme, KQuant) and scheme.stored is not None and whole:
        return scheme.stored
    if isinstance(scheme, GGUF) and whole:
        return scheme.gguf_type
    raise UserError(
        f"{scheme.name} has no GGUF tensor type", "write GGUFs of whole tensors under gguf:q4_k ... or gguf:q4_0 ..."
    )


def write_quantized_gguf(
    template: Path, out: Path, model: torch.nn.Module, modmap: ModuleMap, assignment: Mapping[str, Scheme]
) -> dict[str, str]:
    """``template`` with each tensor of ``assignment`` replaced by llama.cpp's bytes of the model's weight in the
    type its scheme stores. The model's weights must be the template's own dequantized ones (the reference of a GGUF
    model), which is checked tensor by tensor: a layout llama.cpp permutes (Llama's q and k) would not match.
    Returns llama.cpp's name -> type of every replaced tensor."""
    import gguf

    reader = gguf.GGUFReader(template)
    by_gguf: dict[str, tuple[ParamInfo, str]] = {}
    for name, scheme in assignment.items():
        p = modmap[name]
        gname = gguf_name(p)
        if gname is None:
            raise UserError(f"{name} has no llama.cpp tensor name", "assign schemes to block Linear weights")
        by_gguf[gname] = (p, gguf_tensor_type(scheme))
    missing = set(by_gguf) - {t.name for t in reader.tensors}
    if missing:
        raise UserError(f"the template {template.name} has no tensor {sorted(missing)[0]}", "use the model's own GGUF")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():  # as gguf's own gguf_new_metadata.py copies them
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    data: list[np.ndarray] = []
    written: dict[str, str] = {}
    for t in reader.tensors:
        if t.name not in by_gguf:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
            data.append(t.data)
            continue
        p, qtype = by_gguf[t.name]
        w = weight_2d(model.get_parameter(p.name).detach(), p).float().cpu().numpy()
        template_values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if not np.array_equal(template_values, w):
            raise UserError(
                f"{p.name} is not the dequantized {t.name} of {template.name}",
                "write a quantized GGUF from the model that was loaded from this file",
            )
        raw = ggml.quantize(w, qtype) if qtype != "f16" else w.astype(np.float16).view(np.uint8)
        gtype = gguf.GGMLQuantizationType[qtype.upper()]
        writer.add_tensor_info(t.name, raw.shape, np.dtype(np.uint8), raw.nbytes, gtype)
        data.append(raw)
        written[t.name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for d in data:
        writer.write_tensor_data(d, tensor_endianess=reader.endianess)
    writer.close()
    return written
