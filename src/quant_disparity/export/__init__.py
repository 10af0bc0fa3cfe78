"""Export a plan as the configuration of the quantizer a user ships with.

``quant-disparity export PLAN --model M --to TARGET`` resolves the plan once on the model's module map
(:func:`resolve_export`: every weight tensor and every Linear module with what the plan gives it) and hands
that to one target of :data:`TARGETS`, which only formats it. Built-in targets, one module each: ``llmcompressor``
(a recipe), ``gptqmodel`` (a quantize config with ``dynamic`` rules), ``transformers`` (a bitsandbytes
``quantization_config`` with ``llm_int8_skip_modules``), ``torchao`` (a module-FQN to config map) and
``llamacpp`` (``llama-quantize --tensor-type`` arguments with GGUF tensor names). A scheme a target cannot
express is a :class:`UserError` naming the target and the scheme. Third-party targets come from
``quant_disparity.export_targets`` entry points.
"""

from __future__ import annotations

from . import gptqmodel, llamacpp, llmcompressor, torchao, transformers
from .base import TARGETS, ExportTarget, ModuleDecision, ResolvedExport, TensorDecision, resolve_export

for _mod in (llmcompressor, gptqmodel, transformers, torchao, llamacpp):
    TARGETS.register(_mod.TARGET)

__all__ = ["TARGETS", "ExportTarget", "ModuleDecision", "ResolvedExport", "TensorDecision", "export", "resolve_export"]


def export(resolved: ResolvedExport, target: str | ExportTarget) -> str:
    """The text of ``resolved`` in ``target``'s format."""
    entry = target if isinstance(target, ExportTarget) else TARGETS.get(target)
    return entry.render(resolved)
