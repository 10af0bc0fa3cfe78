"""transformers with bitsandbytes: a ``quantization_config`` for ``BitsAndBytesConfig`` whose
``llm_int8_skip_modules`` (transformers' ``modules_to_not_convert``) lists every Linear module the plan does not
quantize. bitsandbytes quantizes every other Linear module with one scheme; of ours only ``w8-channel``
(LLM.int8: symmetric 8-bit absmax per output row) is what it does; its 4-bit types are NF4/FP4 floats, not
integer round-to-nearest."""

from __future__ import annotations

import json

from ..errors import UserError
from .base import ExportTarget, ResolvedExport, cannot, only_linear

NAME = "transformers"
FIX = "bitsandbytes expresses w8-channel only; export with --to torchao or --to llmcompressor"


def quantization_config(resolved: ResolvedExport) -> dict:
    only_linear(NAME, resolved)
    schemes = {m.scheme.name: m.scheme for m in resolved.quantized_modules() if m.scheme is not None}
    if not schemes:
        raise UserError(
            f"export --to {NAME}: the plan quantizes no Linear module", "add a scheme rule, e.g. w8-channel:*"
        )
    for name, scheme in schemes.items():
        if name != "w8-channel":
            raise cannot(NAME, scheme, "bitsandbytes quantizes to LLM.int8 per output row or to NF4/FP4 floats", FIX)
    skip = [m.name for m in resolved.unquantized_modules()]
    return {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_skip_modules": skip}


def render(resolved: ResolvedExport) -> str:
    return json.dumps(quantization_config(resolved), indent=1) + "\n"


TARGET = ExportTarget(NAME, "transformers BitsAndBytesConfig with llm_int8_skip_modules (JSON)", ".json", render)
