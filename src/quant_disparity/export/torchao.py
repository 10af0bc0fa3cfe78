"""torchao: a module FQN to config map for ``FqnToConfig`` (``ModuleFqnToConfig`` in older releases). Each
quantized Linear module gets an ``IntxWeightOnlyConfig`` (``weight_dtype`` torch.intB, ``granularity``
``PerGroup(G)`` / ``PerAxis(0)`` / ``PerTensor()``, ``mapping_type`` SYMMETRIC or ASYMMETRIC); every other Linear
module maps to null (left as it is). :func:`fqn_to_config` builds the torchao object
from the JSON (it needs torchao installed)."""

from __future__ import annotations

import json

from .base import ExportTarget, ResolvedExport, only_linear, rtn

NAME = "torchao"


def config_of(scheme) -> dict:
    s = rtn(NAME, scheme)
    granularity: dict[str, dict[str, int]]
    if s.per_tensor:
        granularity = {"PerTensor": {}}
    elif s.group_size is None:
        granularity = {"PerAxis": {"axis": 0}}
    else:
        granularity = {"PerGroup": {"group_size": s.group_size}}
    return {
        "IntxWeightOnlyConfig": {
            "weight_dtype": f"int{s.bits}",
            "granularity": granularity,
            "mapping_type": "SYMMETRIC" if s.symmetric else "ASYMMETRIC",
        }
    }


def fqn_map(resolved: ResolvedExport) -> dict:
    only_linear(NAME, resolved)
    out: dict = {m.name: None if m.scheme is None else config_of(m.scheme) for m in resolved.modules}
    return out


def render(resolved: ResolvedExport) -> str:
    return json.dumps(fqn_map(resolved), indent=1) + "\n"


def fqn_to_config(data: dict):
    """The torchao ``FqnToConfig`` of an exported map (imports torchao)."""
    import torch
    import torchao.quantization as q
    from torchao.quantization import granularity as g
    from torchao.quantization.quant_primitives import MappingType

    def build(spec: dict | None):
        if spec is None:
            return None
        ((kind, args),) = spec.items()
        ((gran, gargs),) = args["granularity"].items()
        return getattr(q, kind)(
            weight_dtype=getattr(torch, args["weight_dtype"]),
            granularity=getattr(g, gran)(**gargs),
            mapping_type=getattr(MappingType, args["mapping_type"]),
        )

    return q.FqnToConfig({fqn: build(spec) for fqn, spec in data.items()})


TARGET = ExportTarget(NAME, "torchao module FQN -> IntxWeightOnlyConfig map for FqnToConfig (JSON)", ".json", render)
