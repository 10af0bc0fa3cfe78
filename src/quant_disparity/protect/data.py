"""Per-language scores: what a unit's quantization error does on one language's own documents.

For each language the full-precision model runs over the language's windows one at a time (no padding):

- forward pre-hooks on every target Linear add ``X^T X`` of its inputs (float32; activations are never stored)
  to the Gram matrix ``G`` of that input (one for q/k/v, one for gate/up), divided at the end by the number of
  positions ``n``;
- with a per-language gradient score asked for, each window's summed NLL (nats) is back-propagated to the
  target weights only (everything else has ``requires_grad`` off); as soon as a tensor's gradient is complete
  a hook adds ``g**2`` to its squared-gradient sum ``F`` (float32) and frees the gradient, so the gradients of
  all blocks never exist at once. ``F`` is divided at the end by the predicted tokens: an empirical Fisher
  diagonal with one sample per window (a document, when it fits one window).

The output layer's loss is computed in chunks of :data:`TOKEN_CHUNK` positions from detached final hidden
states: each chunk's ``[chunk, vocab]`` logits live only until its backward, which adds to the hidden states'
gradient; one backward through the blocks follows. A 262k-vocabulary head never holds more than one chunk's
logits and their gradient.

With ``dW = W - Q(W)`` (``[out, in]``, float64) the scores of a unit sum over its tensors:

- ``act_error`` = sqrt(sum tr(dW G dW^T)) = the RMS over positions of ||dW x||, i.e. ||(W - Q(W)) X||_F / sqrt(n);
- ``hessian_diag`` = sum_ij dW_ij^2 G_jj (the diagonal of GPTQ's layer-wise Hessian 2 X^T X, up to the 2 and n);
- ``fisher`` = sum_ij F_ij dW_ij^2 (the empirical-Fisher estimate of the NLL increase, up to a factor 1/2);
- ``grad_sq`` = sum_ij F_ij (the Fisher mass of the unit; does not depend on the scheme);
- ``measured`` / ``measured_kl``: the unit's effect / KL recovered (bits) in a ``locate`` output, per language.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..evaluate import Window, head_of
from ..evaluate.forward import _base_model
from ..models.modules import ModuleMap, weight_2d
from ..quant import Scheme
from .weights import SCORES, ScoreKind, UnitScores, _units

#: Positions of the output layer's loss computed (and back-propagated) at once.
TOKEN_CHUNK = 128


def _act(dw: torch.Tensor, g: torch.Tensor) -> float:
    d = dw.float()  # the product in float32 (the costly step), the sum in float64
    return float(((d @ g.float()).double() * dw).sum())


def _hdiag(dw: torch.Tensor, g: torch.Tensor) -> float:
    return float((dw * dw * torch.diagonal(g)[None, :]).sum())


def _fisher(dw: torch.Tensor, f: torch.Tensor) -> float:
    return float((f * dw * dw).sum())


def _grad_sq(dw: torch.Tensor, f: torch.Tensor) -> float:
    return float(f.sum())


for _entry in (
    ScoreKind(
        "act_error",
        "per language: ||(W - Q(W)) X||_F / sqrt(n) over the language's inputs X (n positions)",
        needs="gram",
        tensor=_act,
        finish=math.sqrt,
    ),
    ScoreKind(
        "hessian_diag",
        "per language: sum (W - Q(W))_ij^2 (X^T X / n)_jj, GPTQ's Hessian diagonal",
        needs="gram",
        tensor=_hdiag,
    ),
    ScoreKind(
        "fisher",
        "per language: sum F_ij (W - Q(W))_ij^2, F = squared NLL gradients per window / predicted tokens",
        needs="fisher",
        tensor=_fisher,
    ),
    ScoreKind(
        "grad_sq",
        "per language: sum F_ij, the unit's squared NLL gradients (scheme-free)",
        needs="fisher",
        tensor=_grad_sq,
    ),
    ScoreKind(
        "measured", "per language: the unit's measured effect in a locate output (--from-locate)", needs="locate"
    ),
    ScoreKind("measured_kl", "per language: KL recovered by the unit in a locate output (bits)", needs="locate"),
):
    SCORES.register(_entry)


def per_language(names: Sequence[str]) -> list[str]:
    """The scores of ``names`` that need a language's documents (not ``weights``, not ``locate``)."""
    return [n for n in names if SCORES.get(n).needs in ("gram", "fisher")]


@dataclass
class LanguageStats:
    n_positions: int  # positions the Gram matrices sum over
    n_predicted: int  # predicted tokens the squared gradients sum over
    gram: dict[str, torch.Tensor]  # tensor -> [in, in] float32, X^T X / n_positions (shared by tensors of one input)
    fisher: dict[str, torch.Tensor]  # tensor -> [out, in] float32, sum over windows of g^2 / n_predicted


def _window_nll(model: torch.nn.Module, w: Window, token_chunk: int) -> torch.Tensor | None:
    """Back-propagate the window's summed NLL to the parameters that require grad; returns the NLL (detached).

    The head's loss is chunked over positions (see the module docstring); without a separable base model
    (an unusual head) the model's own logits are used whole."""
    ids = torch.tensor([w.input_ids], device=next(model.parameters()).device)
    p0, n = w.first_scored_position, len(w.input_ids)
    targets = ids[0, p0 + 1 :]
    base = _base_model(model)
    if base is None or model.get_output_embeddings() is None:  # type: ignore[operator]  # HF models define it
        logits = model(input_ids=ids, use_cache=False).logits[0, p0 : n - 1].float()
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        loss.backward()
        return loss.detach()
    head = head_of(model)
    h = base(input_ids=ids, use_cache=False).last_hidden_state[0, p0 : n - 1]
    hl = h.detach().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for c in range(0, hl.shape[0], token_chunk):
        z = head.logits(hl[c : c + token_chunk], 0, head.vocab_size).float()
        loss = torch.nn.functional.cross_entropy(z, targets[c : c + token_chunk], reduction="sum")
        loss.backward()  # adds to hl.grad; this chunk's logits are freed
        total += loss.detach().double()
    h.backward(hl.grad)
    return total


def language_stats(
    model: torch.nn.Module,
    modmap: ModuleMap,
    targets: list[str],
    windows: Sequence[Window],
    *,
    gram: bool = True,
    fisher: bool = False,
    token_chunk: int = TOKEN_CHUNK,
) -> LanguageStats:
    """Gram matrices and/or squared gradients of ``targets`` over ``windows`` (one forward each, fp weights).
    The model's ``requires_grad`` flags and training mode are restored afterwards."""
    params = dict(model.named_parameters(remove_duplicate=False))
    grams: dict[str, torch.Tensor] = {}  # one per distinct input: keyed by the first tensor reading it
    group: dict[str, str] = {}  # tensor -> the key of its input's Gram matrix
    fish: dict[str, torch.Tensor] = {}
    hooks: list = []
    last: list = [None, None]  # (input tensor, key): q/k/v (and gate/up) read the same input

    def gram_hook(name: str) -> Callable:
        def hook(module, args):
            x = args[0].detach()
            if last[0] is not x:
                x2 = x.reshape(-1, x.shape[-1]).float()
                last[0], last[1] = x, name
                grams[name] = x2.T @ x2 if name not in grams else grams[name].addmm_(x2.T, x2)
            group[name] = last[1]

        return hook

    def fisher_hook(name: str) -> Callable:
        def hook(p):  # as soon as the gradient of this tensor is complete: square, add, free it
            g2 = weight_2d(p.grad.detach(), modmap[name]).float() ** 2
            fish[name] = g2 if name not in fish else fish[name].add_(g2)
            p.grad = None

        return hook

    if gram:
        for t in targets:
            hooks.append(model.get_submodule(modmap[t].module).register_forward_pre_hook(gram_hook(t)))
    flags = {k: p.requires_grad for k, p in params.items()}
    was_training = model.training
    model.eval()
    n_pos = n_pred = 0
    try:
        for p in params.values():
            p.requires_grad_(False)
        if fisher:  # a hook needs the parameter to require a gradient first
            for t in targets:
                params[t].requires_grad_(True)
                hooks.append(params[t].register_post_accumulate_grad_hook(fisher_hook(t)))
        for w in windows:
            n_pos += len(w.input_ids)
            n_pred += w.n_scored
            if not fisher:  # the blocks only: the Gram matrices need no logits
                with torch.no_grad():
                    ids = torch.tensor([w.input_ids], device=next(model.parameters()).device)
                    (_base_model(model) or model)(input_ids=ids, use_cache=False)
                continue
            with torch.enable_grad():
                _window_nll(model, w, token_chunk)
            last[0] = None
    finally:
        for hk in hooks:
            hk.remove()
        last.clear()
        for k, p in params.items():
            p.requires_grad_(flags[k])
        model.train(was_training)
    missing = [t for t in targets if fisher and windows and t not in fish]
    assert not missing, f"no gradient reached {missing[:3]}"
    for g in grams.values():
        g.div_(max(1, n_pos))
    for f in fish.values():
        f.div_(max(1, n_pred))
    return LanguageStats(n_pos, n_pred, {t: grams[group[t]] for t in group}, fish)


def language_scores(
    model: torch.nn.Module,
    modmap: ModuleMap,
    scheme: Scheme,
    windows: Sequence[Window],
    names: Sequence[str],
    granularity: str = "layer",
    targets: list[str] | None = None,
    token_chunk: int = TOKEN_CHUNK,
) -> list[UnitScores]:
    """The per-language scores ``names`` (``gram`` and ``fisher`` kinds) of every unit, on one language's
    ``windows``; units in model order, as :func:`.weights.compute_scores` groups them."""
    kinds = [SCORES.get(n) for n in names]
    bad = [k.name for k in kinds if k.needs not in ("gram", "fisher")]
    if bad:
        raise UserError(f"{', '.join(bad)}: not a score computed from a language's documents")
    targets = targets or modmap.default_targets()
    stats = language_stats(
        model,
        modmap,
        targets,
        windows,
        gram=any(k.needs == "gram" for k in kinds),
        fisher=any(k.needs == "fisher" for k in kinds),
        token_chunk=token_chunk,
    )
    params = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for unit, tensors in _units(modmap, targets, granularity):
        sums = dict.fromkeys(names, 0.0)
        n = 0
        for t in tensors:
            with torch.no_grad():  # quantized again per language: no copy of every tensor's error is kept
                w2d = weight_2d(params[t].detach(), modmap[t])
                dw = (w2d.double() - scheme.fake_quantize(w2d).double()).cpu()
            n += dw.numel()
            for k in kinds:
                stat = (stats.gram if k.needs == "gram" else stats.fisher)[t]
                assert k.tensor is not None, f"score {k.name} has no per-tensor function"
                sums[k.name] += k.tensor(dw, stat.cpu())
        scores = {k.name: k.finish(sums[k.name]) if k.finish else sums[k.name] for k in kinds}
        out.append(UnitScores(unit, tuple(tensors), n, scores))
    return out


# -- measured: a locate output ---------------------------------------------------------------------------------------
def locate_measured(data: dict, lang: str) -> dict[str, dict[str, float | None]]:
    """``{unit: {"measured": effect, "measured_kl": KL recovered (bits)}}`` of ``lang`` in a locate output
    (protect-one: all-quantized KL minus the unit-protected KL; quantize-only: the unit's own KL)."""
    res = data["results"][lang]
    all_kl = res["all_quantized"]["kl_bits"]["value"]
    out: dict[str, dict[str, float | None]] = {}
    for unit, row in res["units"].items():
        kl = row["kl_bits"]["value"]
        if data.get("mode") == "protect-one":
            kl = None if kl is None or all_kl is None else all_kl - kl
        out[unit] = {"measured": row["effect"]["value"], "measured_kl": kl}
    return out


def check_locate(data: object, model_digest: str, model_name: str, granularity: str, scheme: str, where: str) -> dict:
    """A locate output that can be compared with this run's units, else :class:`UserError`."""
    if not isinstance(data, dict) or data.get("schema") != "quant-disparity/locate":
        raise UserError(f"{where} is not a locate output (locate.json)", "pass the locate.json a locate run wrote")
    model = data.get("model") or {}
    if model.get("digest") != model_digest:
        raise UserError(
            f"{where} is a locate output of {model.get('name')!r}, not of {model_name!r} (different weights)",
            f"use a locate output of {model_name}, or --model {model.get('name')}",
        )
    if data.get("granularity") != granularity:
        raise UserError(
            f"{where} has {data.get('granularity')!r} units, this run {granularity!r}",
            f"use --granularity {data.get('granularity')}",
        )
    theirs = (data.get("scheme") or {}).get("name")
    if theirs != scheme:
        raise UserError(f"{where} measured scheme {theirs!r}, this run scores {scheme!r}", f"use --scheme {theirs}")
    return data


def windows_by_language(batches: Sequence[Sequence[Window]], docs_per_lang: Sequence[tuple[str, int]]) -> dict:
    """The windows of prepared ``batches`` per language, the documents being ``docs_per_lang`` in order
    (``(lang, n_docs)``, as a selection lists them), each language's windows in document order."""
    owner: list[str] = [lang for lang, n in docs_per_lang for _ in range(n)]
    out: dict[str, list[Window]] = {lang: [] for lang, _ in docs_per_lang}
    for w in sorted((w for b in batches for w in b), key=lambda w: (w.doc, len(w.input_ids), w.input_ids)):
        out[owner[w.doc]].append(w)
    return out
