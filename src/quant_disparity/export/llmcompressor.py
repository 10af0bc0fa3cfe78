"""llm-compressor recipe: one ``QuantizationModifier`` whose ``config_groups`` each name the Linear modules of one
scheme by exact name in ``targets``; every other Linear module is in ``ignore``. Scheme arguments are
compressed-tensors' ``QuantizationArgs`` (``num_bits``, ``type: int``, ``symmetric``, ``strategy`` group / channel /
tensor, ``group_size``)."""

from __future__ import annotations

import yaml

from .base import ExportTarget, ResolvedExport, only_linear, rtn

NAME = "llmcompressor"


def weight_args(scheme) -> dict:
    s = rtn(NAME, scheme)
    args: dict = {"num_bits": s.bits, "type": "int", "symmetric": s.symmetric}
    if s.per_tensor:
        args["strategy"] = "tensor"
    elif s.group_size is None:
        args["strategy"] = "channel"
    else:
        args.update(strategy="group", group_size=s.group_size)
    return args


def recipe(resolved: ResolvedExport) -> dict:
    only_linear(NAME, resolved)
    groups: dict[str, dict] = {}
    for m in resolved.quantized_modules():
        assert m.scheme is not None
        group = groups.setdefault(m.scheme.name, {"targets": [], "weights": weight_args(m.scheme)})
        group["targets"].append(m.name)
    config_groups = {f"group_{i}": g for i, g in enumerate(groups.values())}
    modifier = {"ignore": [m.name for m in resolved.unquantized_modules()], "config_groups": config_groups}
    return {"quant_stage": {"quant_modifiers": {"QuantizationModifier": modifier}}}


def render(resolved: ResolvedExport) -> str:
    head = f"# llm-compressor recipe for plan: {resolved.plan}\n"
    return head + yaml.safe_dump(recipe(resolved), sort_keys=False, width=1 << 16)


TARGET = ExportTarget(
    NAME, "llm-compressor recipe (QuantizationModifier config_groups, targets, ignore)", ".yaml", render
)
