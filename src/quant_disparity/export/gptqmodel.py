"""GPTQModel quantize config: the base ``bits`` / ``group_size`` / ``sym`` of the most common scheme and
``dynamic`` rules, keyed by a regex that GPTQModel matches from the start of a module name (``re.match``), tried
in order: ``-:REGEX`` leaves the modules it matches unquantized, ``+:REGEX`` gives them its overrides. GPTQModel
quantizes the Linear modules of the decoder blocks and, with ``lm_head: true``, the LM head; ``group_size`` -1 is
one group per output channel. Bits 2, 3, 4 and 8."""

from __future__ import annotations

import json
import re

from ..errors import UserError
from .base import ExportTarget, ResolvedExport, cannot, most_common, only_linear, rtn

NAME = "gptqmodel"
BITS = (2, 3, 4, 8)


def _args(scheme) -> dict:
    s = rtn(NAME, scheme)
    if s.per_tensor:
        raise cannot(NAME, scheme, "GPTQ has no per-tensor scale; use groups or wB-channel")
    if s.bits not in BITS:
        raise cannot(NAME, scheme, f"GPTQModel packs {', '.join(map(str, BITS))} bits")
    return {"bits": s.bits, "group_size": -1 if s.group_size is None else s.group_size, "sym": s.symmetric}


def _key(name: str) -> str:
    return f"^{re.escape(name)}$"


def quantize_config(resolved: ResolvedExport) -> dict:
    only_linear(NAME, resolved)
    quantized = resolved.quantized_modules()
    if not quantized:
        raise UserError(f"export --to {NAME}: the plan quantizes no Linear module", "add a scheme rule, e.g. w4g128:*")
    for m in quantized:
        if m.layer is None and m.name != "lm_head":
            raise UserError(
                f"export --to {NAME}: the plan quantizes {m.name}, outside the decoder blocks",
                "GPTQModel quantizes the blocks' Linear modules and the LM head only: keep it",
            )
    base_scheme = most_common([m.scheme for m in quantized if m.scheme is not None])
    base = _args(base_scheme)
    dynamic: dict[str, dict] = {}
    for m in resolved.modules:
        if m.layer is None and m.name != "lm_head":
            continue
        if m.scheme is None:
            if m.layer is not None:  # the LM head is left alone by lm_head: false
                dynamic[f"-:{_key(m.name)}"] = {}
        elif m.scheme.name != base_scheme.name:
            dynamic[f"+:{_key(m.name)}"] = _args(m.scheme)
    lm_head = any(m.name == "lm_head" and m.scheme is not None for m in resolved.modules)
    return {**base, "desc_act": False, "lm_head": lm_head, "dynamic": dynamic}


def render(resolved: ResolvedExport) -> str:
    return json.dumps(quantize_config(resolved), indent=1) + "\n"


TARGET = ExportTarget(NAME, "GPTQModel QuantizeConfig fields with dynamic +:/-: rules (JSON)", ".json", render)
