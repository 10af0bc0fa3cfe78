"""An independent float64 reference for bits per byte, KL and top-1 agreement, in plain torch.

Nothing here imports quant_disparity: the tests (and tests/golden/make_smollm2_golden.py) compare what the
package reports against these functions, so they are written from the documented definitions only:

- documents are tokenized without special tokens; a prefix token (BOS, else EOS) is prepended to every window,
  so every token of a document is predicted;
- a document longer than a window is cut into windows ``[prefix] + context + new``: the first window has no
  context, each later one conditions on the ``context`` tokens just before its new tokens, and only the new
  tokens are scored (src/quant_disparity/evaluate/windows.py, module docstring);
- bpb = (sum of the NLL in nats of every predicted token) / (ln 2 x UTF-8 bytes), summed over a language's
  documents before dividing;
- KL is KL(reference || quantized) per predicted token, in nats; top-1 agreement counts tokens whose argmax
  is the same under both models;
- ``wBgG`` is symmetric round-to-nearest with groups of G along the input dimension (a shorter last group when
  G does not divide the row), codes in [-(2^(B-1)-1), 2^(B-1)-1], scale = absmax / (2^(B-1)-1) stored as the
  float16 value at or above it (a zero group gets scale 1), dequantized as code x stored scale
  (src/quant_disparity/quant/rtn.py, module docstring). Only the Linear weights inside the decoder blocks are
  quantized; embeddings, the LM head and norms are kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

LN2 = math.log(2.0)


# -- quantization ----------------------------------------------------------------------------------------------------
def fp16_at_or_above(x: float) -> float:
    """The smallest float16 value >= x (x > 0), as a Python float."""
    h = np.float16(x)
    if float(h) < x:
        h = np.nextafter(h, np.float16(np.inf))
    return float(h)


def rtn_symmetric(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Group-wise symmetric RTN of a float32 ``[out, in]`` weight, in float32 arithmetic (the weight's dtype)."""
    assert w.dtype == torch.float32 and w.dim() == 2
    qmax = 2 ** (bits - 1) - 1
    out = torch.empty_like(w)
    for start in range(0, w.shape[1], group):
        block = w[:, start : start + group]
        exact = block.abs().amax(dim=1) / qmax  # float32, as the weights are
        e = exact.numpy()
        h = e.astype(np.float16)  # round to nearest, then one float16 step up where that fell below
        h = np.where(h.astype(np.float32) < e, np.nextafter(h, np.float16(np.inf)), h)
        scale = torch.from_numpy(np.where(e > 0, h.astype(np.float32), np.float32(1.0))).clamp(min=2.0**-24)
        codes = torch.round(block / scale[:, None]).clamp(-qmax, qmax)
        out[:, start : start + group] = codes * scale[:, None]
    return out


def block_linear_weights(model: torch.nn.Module) -> list[str]:
    """Names of the weights of every nn.Linear inside the decoder blocks (``....layers.<i>....``)."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{mod_name}.":
            names.append(f"{mod_name}.weight")
    return names


def quantized_copy(
    model: torch.nn.Module, bits: int, group: int, names: list[str] | None = None, keep: set[str] = frozenset()
) -> torch.nn.Module:
    """A deep copy of ``model`` with ``names`` (default: every block Linear weight) but ``keep`` quantized."""
    q = copy.deepcopy(model)
    targets = block_linear_weights(model) if names is None else names
    with torch.no_grad():
        for name in targets:
            if name not in keep:
                p = q.get_parameter(name)
                p.copy_(rtn_symmetric(p.detach().float(), bits, group))
    return q


# -- windows and scoring ---------------------------------------------------------------------------------------------
def windows(tokens: list[int], prefix: int, window: int, context: int) -> list[tuple[list[int], int]]:
    """(input ids, number of scored tokens at the end) for each window of one document."""
    out = []
    room_first = window - 1
    out.append(([prefix] + tokens[:room_first], len(tokens[:room_first])))
    i = room_first
    while i < len(tokens):
        ctx = tokens[i - context : i] if context else []
        new = tokens[i : i + window - 1 - len(ctx)]
        out.append(([prefix] + ctx + new, len(new)))
        i += len(new)
    return [w for w in out if w[1] > 0]


@dataclass
class DocScores:
    nll: float  # nats, the quantized (or only) model
    nll_ref: float  # nats, the reference model
    kl: float  # nats, summed over predicted tokens
    top1: int  # predicted tokens whose argmax agrees
    n_pred: int


def _logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


def score_document(
    model: torch.nn.Module, ref: torch.nn.Module, tokens: list[int], prefix: int, window: int, context: int
) -> DocScores:
    """Every window through each model alone (float64 models give float64 logits)."""
    nll = nll_ref = kl = 0.0
    top1 = n_pred = 0
    for ids, n in windows(tokens, prefix, window, context):
        lq, lr = _logprobs(model, ids), _logprobs(ref, ids)
        pos = torch.arange(len(ids) - n - 1, len(ids) - 1)
        tgt = torch.tensor(ids[len(ids) - n :])
        nll -= lq[pos, tgt].sum().item()
        nll_ref -= lr[pos, tgt].sum().item()
        kl += (lr[pos].exp() * (lr[pos] - lq[pos])).sum().item()
        top1 += int((lq[pos].argmax(-1) == lr[pos].argmax(-1)).sum())
        n_pred += n
    return DocScores(nll, nll_ref, kl, top1, n_pred)


def take_until_tokens(counts: list[int], cap: int, min_docs: int = 1) -> int:
    """How many whole documents, in corpus order, until ``cap`` tokens are reached (at least ``min_docs``)."""
    total = 0
    for k, c in enumerate(counts, 1):
        total += c
        if total >= cap and k >= min_docs:
            return k
    return len(counts)


def bpb(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / (LN2 * n_bytes)


def document_nll(model: torch.nn.Module, tokens: list[int], prefix: int, window: int, context: int) -> float:
    """Summed NLL (nats) of every token of one document under ``model``, each window run alone."""
    nll = 0.0
    for ids, n in windows(tokens, prefix, window, context):
        lp = _logprobs(model, ids)
        pos = torch.arange(len(ids) - n - 1, len(ids) - 1)
        nll -= lp[pos, torch.tensor(ids[len(ids) - n :])].sum().item()
    return nll
