"""The forward pass of window batches, stopping at the decoder's final hidden states.

:mod:`.scoring` then applies the LM head slice by slice. Whether that split reproduces the model's own logits
is checked once per model on a probe batch; a model where it does not (an unusual head) falls back to the full
forward pass, with the same statistics.
"""

from __future__ import annotations

from typing import cast

import torch

from .scoring import LMHead, head_of, score_tokens
from .windows import Window

#: Agreement the probe asks of base model + fused head vs the model's own log-probabilities, per token NLL
#: (absolute and relative): float32 rounding differs only in the last digits; in a 16-bit dtype the two paths
#: round intermediate results differently, by up to a few hundredths of a nat.
PROBE_TOLERANCE_FP32 = 1e-3
PROBE_TOLERANCE_16BIT = 5e-2
#: The probe: a fixed random batch of this many sequences x tokens.
PROBE_SHAPE = (2, 12)


def _base_model(model: torch.nn.Module) -> torch.nn.Module | None:
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if prefix else None
    return base if isinstance(base, torch.nn.Module) and base is not model else None


def pack_batch(
    batch: list[Window], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, plus flat indices of the predicting positions, their targets and docs."""
    L = max(len(w.input_ids) for w in batch)
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    mask = torch.zeros(len(batch), L, dtype=torch.long)
    flat: list[int] = []
    targets: list[int] = []
    docs: list[int] = []
    for b, w in enumerate(batch):
        n = len(w.input_ids)
        ids[b, :n] = torch.tensor(w.input_ids)
        mask[b, :n] = 1
        p0 = w.first_scored_position
        flat.extend(range(b * L + p0, b * L + n - 1))
        targets.extend(w.input_ids[p0 + 1 :])
        docs.extend([w.doc] * w.n_scored)
    to = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    return ids.to(device), mask.to(device), to(flat), to(targets), to(docs)


class Forward:
    """Runs a model on window batches and returns the rows the head needs."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.base = _base_model(model)
        self.device = next(model.parameters()).device
        self.split = self.base is not None and model.get_output_embeddings() is not None  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
        if self.split:
            self.split = self._split_matches()

    def head(self) -> LMHead:
        """The head as it is now (call after switching weights: a quantized LM head is picked up)."""
        if self.split:
            return head_of(self.model)
        return LMHead(weight=None, vocab=self.model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method

    @torch.inference_mode()
    def rows(self, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask, flat, targets, docs = pack_batch(batch, self.device)
        if self.split:
            assert self.base is not None  # split implies a base model
            h = self.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            h = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return h.reshape(-1, h.shape[-1])[flat], targets, docs

    def rows_of(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, targets and documents of several batches, concatenated in order."""
        parts = [self.rows(b) for b in batches]
        if len(parts) == 1:
            return parts[0]
        return cast("tuple[torch.Tensor, torch.Tensor, torch.Tensor]", tuple(torch.cat(x) for x in zip(*parts)))

    @torch.inference_mode()
    def _split_matches(self) -> bool:
        """Does base model + :func:`head_of` reproduce the model's own log-probabilities on a probe?"""
        gen = torch.Generator().manual_seed(0)
        vocab = self.model.get_output_embeddings().weight.shape[0]  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
        ids = torch.randint(0, vocab, PROBE_SHAPE, generator=gen).to(self.device)
        mask = torch.ones_like(ids)
        assert self.base is not None  # only probed when there is a base model
        ref = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        h = self.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        targets = ids[:, 1:].reshape(-1)
        mine = score_tokens(h[:, :-1].reshape(-1, h.shape[-1]), targets, head_of(self.model)).nll
        theirs = -ref[:, :-1].reshape(-1, vocab).gather(1, targets[:, None]).squeeze(1).double()
        tol = PROBE_TOLERANCE_FP32 if ref.dtype == torch.float32 and h.dtype == torch.float32 else PROBE_TOLERANCE_16BIT
        return bool(torch.allclose(mine.cpu(), theirs.cpu(), atol=tol, rtol=tol))
