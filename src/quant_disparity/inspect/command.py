"""``quant-disparity inspect``: load a model and look inside it (super weights, outlier statistics)."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models import LoadedModel
from ..models.modules import build_module_map
from ..quant.plan import Plan
from .outliers import outliers_summary, tensor_outliers
from .superweights import DEFAULT_PROMPT, SuperWeightResult, Thresholds, detect_super_weights


def prompt_ids(lm: LoadedModel, prompt: str) -> tuple[torch.Tensor, list[str]]:
    """``[1, T]`` token ids of ``prompt`` (the model's prefix token first, as in every evaluation) and each
    token's text."""
    if not prompt.strip():
        raise UserError("--prompt is empty", "give a short text, e.g. the default: " + DEFAULT_PROMPT)
    tok = lm.tokenizer
    assert tok is not None  # loaded with its tokenizer
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])  # type: ignore[operator]  # a HF tokenizer
    if lm.prefix_token_id is not None:
        ids = [lm.prefix_token_id, *ids]
    texts = [tok.decode([i]) for i in ids]  # type: ignore[attr-defined]  # a HF tokenizer
    device = next(lm.model.parameters()).device
    return torch.tensor([ids], dtype=torch.long, device=device), texts


def super_weights(
    lm: LoadedModel, prompt: str = DEFAULT_PROMPT, thresholds: Thresholds = Thresholds()
) -> SuperWeightResult:
    """Detect the super weights of a loaded model on ``prompt``."""
    modmap = build_module_map(lm.model)
    ids, texts = prompt_ids(lm, prompt)
    r = detect_super_weights(lm.model, modmap, ids, thresholds, texts, prompt)
    return SuperWeightResult(r.prompt, r.n_tokens, r.thresholds, r.super_weights, r.layers, lm.info.to_dict())


def bind_super(plan: Plan, lm: LoadedModel) -> tuple[Plan, dict | None]:
    """``plan`` with its bare ``super`` bound to the super weights the detector finds (default prompt and
    thresholds) on ``lm``'s weights as they are now (the reference: call it before anything is quantized), and
    the detection's record; ``plan`` itself and None when it has no bare ``super``."""
    if not plan.needs_super:
        return plan, None
    found = super_weights(lm)
    record = {
        "thresholds": found.thresholds.to_dict(),
        "prompt": found.prompt,
        "found": [
            {"layer": s.layer, "tensor": s.tensor, "row": s.row, "column": s.column, "value": s.value}
            for s in found.super_weights
        ],
    }
    return plan.with_super(found.coordinates), record


def outliers(lm: LoadedModel) -> dict:
    """Per-tensor outlier statistics of a loaded model, and their summary across tensors."""
    rows = tensor_outliers(lm.model, build_module_map(lm.model))
    return {
        "schema": "quant-disparity/outliers",
        "schema_version": 1,
        "model": lm.info.to_dict(),
        "summary": outliers_summary(rows),
        "tensors": [r.to_dict() for r in rows],
    }
