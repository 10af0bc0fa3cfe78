"""Reuse the hidden states of unchanged leading blocks when sweeping over plans.

A reference forward pass records what every decoder block returned. A later pass whose first changed block
is ``k`` swaps blocks ``0..k-1`` for stand-ins that return the recorded output of block ``k-1`` at once;
everything else in the model's own forward (embeddings, masks, rotary tables, later blocks, final norm) runs
as usual, so no architecture-specific code is needed. Stand-ins forward attribute reads to the real block
(Gemma 3's loop reads ``layer.attention_type``, for example). Whether replay reproduces a full pass is
checked on a probe before a sweep relies on it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import cast

import torch
from torch import nn


class _Replay(nn.Module):
    def __init__(self, block: nn.Module, output):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_output", output)

    def forward(self, *args, **kwargs):
        return self._output

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


class BlockReplay:
    def __init__(self, model: nn.Module, blocks_path: str):
        self.blocks = cast(nn.ModuleList, model.get_submodule(blocks_path))  # blocks_path names the ModuleList
        self.n = len(self.blocks)

    @contextmanager
    def capture(self):
        """Record every block's output during the passes run inside the context (one pass expected)."""
        outputs: list = [None] * self.n
        hooks = [blk.register_forward_hook(self._recorder(outputs, i)) for i, blk in enumerate(self.blocks)]
        try:
            yield outputs
        finally:
            for h in hooks:
                h.remove()

    @staticmethod
    def _recorder(outputs, i):
        def hook(module, args, output):
            outputs[i] = output

        return hook

    @contextmanager
    def skip(self, k: int, recorded: list):
        """Within the context, blocks ``0..k-1`` return ``recorded[k-1]`` without computing."""
        if k <= 0:
            yield
            return
        originals = [self.blocks[i] for i in range(k)]
        out = recorded[k - 1]
        try:
            for i in range(k):
                self.blocks[i] = _Replay(originals[i], out)
            yield
        finally:
            for i in range(k):
                self.blocks[i] = originals[i]


def first_changed_block(changed: set[str], layer_of: dict[str, int | None], after_blocks: set[str], n: int) -> int:
    """Index of the first block whose output can differ, given the names of the tensors that differ.

    Tensors inside block ``i`` change outputs from ``i`` on; tensors after the blocks (final norm, an untied LM
    head) change nothing in the blocks (returns ``n``); anything else (embeddings) changes everything (0).
    """
    k = n
    for name in changed:
        layer = layer_of.get(name)
        if layer is not None:
            k = min(k, layer)
        elif name not in after_blocks:
            return 0
    return k


@torch.inference_mode()
def replay_matches(forward, batch, replay: BlockReplay, k: int) -> bool:
    """Does a pass that replays blocks ``0..k-1`` give the same rows as a full pass?"""
    with replay.capture() as rec:
        full, _, _ = forward.rows(batch)
    with replay.skip(k, rec):
        fast, _, _ = forward.rows(batch)
    return bool(torch.equal(full, fast))
