"""Evaluate many weight assignments (plans) of one model on the same documents, sharing what can be shared.

Loop order is batch-outer, configuration-inner:

1. the reference (the model as loaded) runs once per batch; its output-layer logits are computed once per
   vocabulary slice and shared by every configuration's KL (:func:`.scoring.score_many`);
2. switching configuration re-points only the tensors whose scheme changes (:class:`..quant.QuantEngine`,
   quantized tensors cached per (tensor, scheme));
3. a configuration whose first changed block is ``k`` replays blocks ``0..k-1`` from a recorded base run
   (the reference, or a named base such as "everything quantized") instead of recomputing them
   (:class:`.replay.BlockReplay`); a probe checks replay against a full pass first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.modules import ModuleMap
from ..quant import QuantEngine, Scheme
from .batching import Prepared
from .forward import Forward
from .replay import BlockReplay, first_changed_block, replay_matches
from .scoring import score_many
from .totals import DocTotals


@dataclass
class SweepScores:
    """Per-document sums for the reference and for every configuration."""

    nll_ref: np.ndarray
    n_pred: np.ndarray
    nll: dict[str, np.ndarray] = field(default_factory=dict)
    kl: dict[str, np.ndarray] = field(default_factory=dict)
    top1: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # how much work replay saved, for the record


def _diff(a: Mapping[str, Scheme], b: Mapping[str, Scheme]) -> set[str]:
    return {n for n in set(a) | set(b) if a.get(n) != b.get(n)}


def plan_reuse(
    modmap: ModuleMap, configs: Mapping[str, Mapping[str, Scheme]], bases: list[str]
) -> dict[str, tuple[str | None, int]]:
    """For each configuration: which base to replay from (None = the reference) and from which block.

    A base may only replay from bases listed before it, so running bases in order always works.
    """
    layer_of = {p.name: p.layer for p in modmap.params}
    # Only what runs after the last block (from the module map's probe of the execution order, not from
    # names) leaves every block's output unchanged.
    after = {p.name for p in modmap.params if p.stage == "after"}
    n = modmap.n_layers
    choice = {}
    for name, cfg in configs.items():
        best: tuple[str | None, int] = (None, first_changed_block(_diff(cfg, {}), layer_of, after, n))
        allowed = bases[: bases.index(name)] if name in bases else bases
        for base in allowed:
            k = first_changed_block(_diff(cfg, configs[base]), layer_of, after, n)
            if k > best[1]:
                best = (base, k)
        choice[name] = best
    return choice


class Sweeper:
    """Scores a set of configurations batch by batch (see the module docstring for what is shared)."""

    def __init__(
        self,
        forward: Forward,
        engine: QuantEngine,
        configs: Mapping[str, Mapping[str, Scheme]],
        *,
        bases: Sequence[str] = (),
        reuse: bool = True,
        vocab_chunk: int = 4096,
        probe=None,
    ):
        self.forward, self.engine, self.configs = forward, engine, dict(configs)
        self.bases = [b for b in bases if b in self.configs]
        self.vocab_chunk = vocab_chunk
        modmap = engine.modmap
        self.n_layers = modmap.n_layers
        self.replay = BlockReplay(forward.model, modmap.blocks_path) if reuse and forward.split else None
        if self.replay and probe is not None:
            engine.restore_()
            if not replay_matches(forward, probe, self.replay, max(1, modmap.n_layers // 2)):
                self.replay = None
        self.choice = (
            plan_reuse(modmap, self.configs, self.bases) if self.replay else {n: (None, 0) for n in self.configs}
        )
        self.blocks_run = 0
        self.blocks_full = 0

    @property
    def stats(self) -> dict:
        return {
            "replay": self.replay is not None,
            "blocks_run": self.blocks_run,
            "blocks_without_replay": self.blocks_full,
            "block_work_saved": 1 - self.blocks_run / self.blocks_full if self.blocks_full else 0.0,
        }

    def run_group(self, batches, names: list[str] | None = None):
        """Score ``names`` (default: all) on a group of batches scored together (see
        :func:`.batching.score_groups`). Returns (docs, reference NLL, {name: TokenScores}), per predicted token."""
        outs = [self._forward_batch(b, names) for b in batches]
        docs = torch.cat([o[0] for o in outs])
        targets = torch.cat([o[1] for o in outs])
        h_ref = torch.cat([o[2] for o in outs])
        head_ref = outs[0][3]
        rows = [
            (name, torch.cat([o[4][k][1] for o in outs]), outs[0][4][k][2]) for k, (name, _, _) in enumerate(outs[0][4])
        ]
        with torch.inference_mode():
            ref_nll, scores = score_many(
                h_ref, head_ref, [(h, hd) for _, h, hd in rows], targets, vocab_chunk=self.vocab_chunk
            )
        return docs, ref_nll, {name: s for (name, _, _), s in zip(rows, scores)}

    def _forward_batch(self, batch, names: list[str] | None):
        """Hidden rows of the reference and of ``names`` on one batch."""
        names = list(self.configs) if names is None else names
        wanted = set(names)
        # Bases run first, in order, including those only needed because a wanted configuration (or a base it
        # needs) replays from them.
        needed: set[str] = set()
        stack = [n for n in names]
        while stack:
            base = self.choice[stack.pop()][0]
            if base is not None and base not in needed:
                needed.add(base)
                stack.append(base)
        needed_bases = [b for b in self.bases if b in needed or b in wanted]
        order = needed_bases + [n for n in names if n not in needed_bases]
        engine, forward, replay = self.engine, self.forward, self.replay
        try:
            engine.restore_()
            recorded: dict[str | None, list] = {}
            if replay:
                with replay.capture() as rec:
                    h_ref, targets, docs = forward.rows(batch)
                recorded[None] = rec
            else:
                h_ref, targets, docs = forward.rows(batch)
            head_ref = forward.head()
            rows = []
            for name in order:
                engine.assign_(self.configs[name])
                base, k = self.choice[name]
                if replay and name in self.bases:
                    with replay.capture() as rec, replay.skip(k, recorded[base]):
                        h, _, _ = forward.rows(batch)
                    for i in range(k):  # skipped blocks: their outputs are the base's
                        rec[i] = recorded[base][i]
                    recorded[name] = rec
                elif replay and k > 0:
                    with replay.skip(k, recorded[base]):
                        h, _, _ = forward.rows(batch)
                else:
                    h, _, _ = forward.rows(batch)
                self.blocks_run += self.n_layers - (k if replay else 0)
                self.blocks_full += self.n_layers
                if name in wanted:
                    rows.append((name, h, forward.head()))
        finally:
            engine.restore_()
        return docs, targets, h_ref, head_ref, rows


def sweep(
    forward: Forward,
    prepared: Prepared,
    engine: QuantEngine,
    configs: Mapping[str, Mapping[str, Scheme]],
    *,
    bases: Sequence[str] = (),
    reuse: bool = True,
    vocab_chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> SweepScores:
    """Score every configuration against the reference model on ``prepared`` documents.

    ``bases``: configurations whose block outputs are recorded for others to replay from (each is run in
    full, before the others). ``progress(n)`` is called with scored configuration-tokens.
    """
    n_docs = len(prepared.docs)
    names = list(configs)
    sweeper = Sweeper(
        forward,
        engine,
        configs,
        bases=list(bases),
        reuse=reuse,
        vocab_chunk=vocab_chunk,
        probe=prepared.batches[0] if prepared.batches else None,
    )
    reference = DocTotals(n_docs, compared=False)
    totals = {name: DocTotals(n_docs) for name in names}
    for group in prepared.groups:
        docs, ref_nll, scores = sweeper.run_group([prepared.batches[i] for i in group])
        d = docs.cpu()
        reference.add_nll(d, ref_nll)
        for name, s in scores.items():
            totals[name].add(d, s)
        if progress:
            progress(int(ref_nll.numel()) * len(scores))
    out = SweepScores(nll_ref=reference.nll.numpy(), n_pred=np.asarray(prepared.n_pred, dtype=np.int64))
    for name in names:
        out.nll[name] = totals[name].nll.numpy()
        kl, top1 = totals[name].kl, totals[name].top1
        assert kl is not None and top1 is not None  # DocTotals(n_docs) compares
        out.kl[name] = kl.numpy()
        out.top1[name] = top1.numpy()
    out.stats = sweeper.stats
    return out


def token_counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[int], None]:
    """A ``progress(n)`` callback for :func:`sweep` that reports ``progress(done so far, total)``."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    return tick
