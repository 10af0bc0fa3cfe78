"""Exact per-token NLL, KL(reference ‖ model) and top-1 agreement without materializing full logits.

The LM head is applied one vocabulary slice at a time and log-sum-exp, the target logit, the KL numerator
and the arg-max are accumulated online (the running-max rescaling of "online softmax"). Nothing is
approximated: the result equals ``log_softmax`` over the full logits up to float rounding, and is bit-exact
zero KL when model and reference logits are identical. Written by hand because no library fuses a
vocabulary-chunked head with these statistics on CPU; it avoids allocating a ``tokens x vocab`` tensor
(1 MB per token for a 262k vocabulary) and is faster than ``log_softmax`` on the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LMHead:
    """``logits = transform(h @ weight.T + bias)`` with the model's own logit transform."""

    weight: torch.Tensor | None  # [V, H]; None: the rows passed in are already logits
    bias: torch.Tensor | None = None
    softcap: float | None = None  # Gemma 2: tanh(z / cap) * cap
    scale: float | None = None  # multiply (Cohere logit_scale; Granite uses 1 / logits_scaling)

    vocab: int | None = None  # vocabulary size when weight is None

    @property
    def vocab_size(self) -> int:
        if self.weight is None:
            assert self.vocab is not None, "an LMHead without weight carries its vocab"
            return self.vocab
        return self.weight.shape[0]

    def logits(self, h: torch.Tensor, v0: int, v1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.weight is None:  # precomputed logits (fallback path): already transformed
            return h[:, v0:v1] if out is None else out.copy_(h[:, v0:v1])
        z = torch.matmul(h, self.weight[v0:v1].t(), out=out)
        if z.requires_grad:  # a gradient through the head (protect.data): no in-place steps autograd would need
            z = z + self.bias[v0:v1] if self.bias is not None else z
            z = z * self.scale if self.scale is not None else z
            return torch.tanh(z / self.softcap) * self.softcap if self.softcap is not None else z
        if self.bias is not None:
            z.add_(self.bias[v0:v1])
        if self.scale is not None:
            z.mul_(self.scale)
        if self.softcap is not None:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z


def head_of(model: torch.nn.Module) -> LMHead:
    """A snapshot of the model's output head (its current tensors) and logit transform, read from its config."""
    head = model.get_output_embeddings()  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
    cfg: Any = model.config  # a transformers PretrainedConfig
    scale = getattr(cfg, "logit_scale", None)
    if getattr(cfg, "logits_scaling", None):
        scale = 1.0 / cfg.logits_scaling
    bias = getattr(head, "bias", None)
    # ``detach()`` pins the tensor the parameter holds *now*. The quantization engine switches configurations
    # by re-pointing ``param.data``; keeping the Parameter itself would make every head captured earlier (the
    # reference's, another arm's) silently follow the latest assignment.
    return LMHead(
        weight=head.weight.detach(),
        bias=None if bias is None else bias.detach(),
        softcap=getattr(cfg, "final_logit_softcapping", None) or None,
        scale=float(scale) if scale not in (None, 1, 1.0) else None,
    )


@dataclass
class TokenScores:
    nll: torch.Tensor  # [N] float64, nats
    nll_ref: torch.Tensor | None = None
    kl: torch.Tensor | None = None  # [N] float64, nats, KL(ref ‖ model)
    top1_agree: torch.Tensor | None = None  # [N] bool


def score_tokens(
    h: torch.Tensor,
    targets: torch.Tensor,
    head: LMHead,
    h_ref: torch.Tensor | None = None,
    head_ref: LMHead | None = None,
    *,
    vocab_chunk: int = 4096,
    row_chunk: int = 1024,
) -> TokenScores:
    """Score hidden states ``h [N, H]`` against ``targets [N]``; with ``h_ref``, also against a reference.

    ``head_ref`` defaults to ``head`` (the same output layer, e.g. when only decoder blocks are quantized).
    """
    if h_ref is None:
        nll, _ = score_many(h, head, [], targets, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
        return TokenScores(nll=nll)
    nll_ref, (out,) = score_many(
        h_ref, head_ref or head, [(h, head)], targets, vocab_chunk=vocab_chunk, row_chunk=row_chunk
    )
    out.nll_ref = nll_ref
    return out


def score_many(
    h_ref: torch.Tensor,
    head_ref: LMHead,
    models: list[tuple[torch.Tensor, LMHead]],
    targets: torch.Tensor,
    *,
    vocab_chunk: int = 4096,
    row_chunk: int = 1024,
) -> tuple[torch.Tensor, list[TokenScores]]:
    """One reference and any number of models on the same tokens: the reference's logits are computed once
    per vocabulary slice and shared by every model's KL. Returns the reference NLL and each model's scores."""
    ref_parts: list[torch.Tensor] = []
    parts: list[list[TokenScores]] = [[] for _ in models]
    for r in range(0, h_ref.shape[0], row_chunk):
        sl = slice(r, r + row_chunk)
        ref_nll, scores = _score_rows(h_ref[sl], head_ref, [(h[sl], hd) for h, hd in models], targets[sl], vocab_chunk)
        ref_parts.append(ref_nll)
        for acc, sc in zip(parts, scores):
            acc.append(sc)
    if not ref_parts:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, [TokenScores(empty, None, empty, torch.zeros(0, dtype=torch.bool)) for _ in models]
    cat = lambda xs, k: torch.cat([getattr(x, k) for x in xs])
    return torch.cat(ref_parts), [
        TokenScores(nll=cat(p, "nll"), kl=cat(p, "kl"), top1_agree=cat(p, "top1_agree")) for p in parts
    ]


class _Online:
    """Running log-sum-exp, target logit and arg-max over vocabulary slices for one set of rows."""

    def __init__(self, n: int, device):
        self.m = torch.full((n,), -torch.inf, device=device)  # running max (float32)
        self.s = torch.zeros(n, dtype=torch.float64, device=device)  # sum exp(z - m)
        self.target = torch.zeros(n, device=device)
        self.arg = torch.zeros(n, dtype=torch.long, device=device)

    def update(self, z: torch.Tensor, v0: int, targets: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """Fold the slice ``z [n, c]`` (columns ``v0..``) in; returns ``exp(z - m_new)`` in ``work``."""
        cmax, carg = z.max(dim=1)
        better = cmax > self.m  # strict: the first maximal index wins, as in torch.argmax
        self.arg = torch.where(better, carg + v0, self.arg)
        m_new = torch.maximum(self.m, cmax)
        self.s.mul_(torch.exp((self.m - m_new).double()))
        torch.sub(z, m_new[:, None], out=work).exp_()
        self.s.add_(work.sum(dim=1).double())  # float32 sum per slice (a float64 sum is 10x slower)
        self.m = m_new
        hit = (targets >= v0) & (targets < v0 + z.shape[1])
        if hit.any():
            rows = hit.nonzero().squeeze(1)
            self.target[rows] = z[rows, targets[rows] - v0]
        return work

    def lse(self) -> torch.Tensor:
        return self.m.double() + torch.log(self.s)

    def nll(self) -> torch.Tensor:
        return self.lse() - self.target.double()


def _score_rows(h_ref, head_ref, models, targets, vocab_chunk) -> tuple[torch.Tensor, list[TokenScores]]:
    n, V = h_ref.shape[0], head_ref.vocab_size
    dev = h_ref.device
    c = min(vocab_chunk, V)
    z_buf = torch.empty(n, c, device=dev, dtype=h_ref.dtype)
    zr_buf = torch.empty(n, c, device=dev, dtype=h_ref.dtype)
    work = torch.empty(n, c, device=dev, dtype=torch.float32)
    work_r = torch.empty(n, c, device=dev, dtype=torch.float32)
    ref = _Online(n, dev)
    online = [_Online(n, dev) for _ in models]
    kl_num = [torch.zeros(n, dtype=torch.float64, device=dev) for _ in models]  # sum exp(zr - mr) * (zr - z)
    for v0 in range(0, V, c):
        v1 = min(V, v0 + c)
        w = v1 - v0
        full = w == c
        zf = head_ref.logits(h_ref, v0, v1, out=zr_buf if full else None).float()
        m_old = ref.m
        p = ref.update(zf, v0, targets, work_r[:, :w])  # exp(zr - m_new)
        rescale = torch.exp((m_old - ref.m).double())
        for (h, head), state, num in zip(models, online, kl_num):
            zq = head.logits(h, v0, v1, out=z_buf if full else None).float()
            state.update(zq, v0, targets, work[:, :w])
            num.mul_(rescale)
            torch.sub(zf, zq, out=work[:, :w]).mul_(p)
            num.add_(work[:, :w].sum(dim=1).double())
    lse_r = ref.lse()
    scores = [
        TokenScores(nll=state.nll(), kl=num / ref.s - lse_r + state.lse(), top1_agree=state.arg == ref.arg)
        for state, num in zip(online, kl_num)
    ]
    return lse_r - ref.target.double(), scores
