"""Score trials batch group by batch group: the loop every executor runs (locally, or inside a Ray task).

Each sweep scores up to :data:`MAX_CONFIGS_PER_SWEEP` trials against one reference pass per batch group
(:class:`..evaluate.sweep.Sweeper`), and yields each group's per-document sums for the caller to commit before
the next group is computed.
"""

from __future__ import annotations

from ..evaluate import DocTotals, Forward, Prepared
from ..evaluate.sweep import Sweeper
from ..models import LoadedModel
from ..models.modules import ModuleMap, build_module_map
from ..quant import engine_for
from ..quant.calibration import CalibrationSet, collect_statistics

#: Trials scored in one sweep. A sweep holds the hidden rows of every one of its trials for a whole scoring
#: group, and the Ray executor sends one task per sweep, so this bounds a sweep's memory and a task's length
#: whatever the size of the spec. A round working size, not a tuned one; the numbers do not depend on it (a
#: trial's results are the same whichever trials share its sweep).
MAX_CONFIGS_PER_SWEEP = 24


def pick_bases(assignments: dict[str, dict]) -> list[str]:
    """Per scheme, the configuration that quantizes the most tensors: the others differ from it least."""
    best: dict[str, tuple[int, str]] = {}
    for name, a in assignments.items():
        for scheme in {s.name for s in a.values()}:
            n = sum(1 for s in a.values() if s.name == scheme)
            if n > best.get(scheme, (0, ""))[0]:
                best[scheme] = (n, name)
    return list(dict.fromkeys(name for _, name in best.values()))


def iter_batches(
    lm: LoadedModel,
    prepared: Prepared,
    configs: dict[str, dict],
    missing: dict[str, set[int]],
    *,
    vocab_chunk: int,
    modmap: ModuleMap | None = None,
    calibrations: dict[str, CalibrationSet] | None = None,
):
    """Score ``configs`` (name -> assignment) on the batches each one misses.

    Calibrated schemes name a key of ``calibrations``: configs are swept by calibration, each calibration's
    statistics collected on the reference weights before its sweeps and dropped after them (one set in memory).

    Yields ``(group index, {name: [(doc, nll, nll_ref, kl, top1), ...]}, scored tokens)`` per batch group
    (:func:`..evaluate.batching.score_groups`); the caller commits each before the next is computed.
    """
    modmap = modmap or build_module_map(lm.model)
    engine = engine_for(lm, modmap)
    forward = Forward(lm.model)
    names = [n for n in configs if missing.get(n)]
    by_calibration: dict[str, list[str]] = {}
    for n in names:
        keys = sorted({s.calibration for s in configs[n].values() if s.needs_calibration})
        if len(keys) > 1:
            raise ValueError(f"{n}: one calibration per trial, got {keys}")
        by_calibration.setdefault(keys[0] if keys else "", []).append(n)
    sweeps = [
        (key, members[start : start + MAX_CONFIGS_PER_SWEEP])
        for key, members in by_calibration.items()
        for start in range(0, len(members), MAX_CONFIGS_PER_SWEEP)
    ]
    previous = None
    for key, members in sweeps:
        engine.restore_()
        if key != previous:  # a new calibration: the last one's statistics and tensors are never used again
            engine.drop_calibrations()
            previous = key
        if key and key not in engine.calibrations:
            assert calibrations is not None and key in calibrations, f"calibration {key} was not planned"
            params = sorted({p for n in members for p, s in configs[n].items() if s.needs_calibration})
            engine.add_calibration(
                collect_statistics(
                    lm.model, params, calibrations[key], lm.prefix_token_id, max_length=lm.info.max_length
                )
            )
        group = {n: configs[n] for n in members}
        sweeper = Sweeper(
            forward,
            engine,
            group,
            bases=pick_bases(group),
            vocab_chunk=vocab_chunk,
            probe=prepared.batches[0] if prepared.batches else None,
        )
        for i, batch_ids in enumerate(prepared.groups):
            todo = [n for n in group if i in missing[n]]
            if not todo:
                continue
            docs, ref_nll, scores = sweeper.run_group([prepared.batches[b] for b in batch_ids], todo)
            yield i, group_rows(docs.cpu(), ref_nll, scores), int(ref_nll.numel()) * len(todo)


def group_rows(docs, ref_nll, scores: dict) -> dict[str, list[tuple]]:
    """Per trial, ``(doc, nll, nll_ref, kl, top1)`` sums of each document a batch group scored."""
    n_docs = int(docs.max()) + 1 if docs.numel() else 0
    present = sorted(set(docs.tolist()))
    ref = DocTotals(n_docs, compared=False)
    ref.add_nll(docs, ref_nll)
    results = {}
    for name, sc in scores.items():
        totals = DocTotals(n_docs)
        totals.add(docs, sc)
        assert totals.kl is not None and totals.top1 is not None  # compared=True
        results[name] = [
            (doc, float(totals.nll[doc]), float(ref.nll[doc]), float(totals.kl[doc]), float(totals.top1[doc]))
            for doc in present
        ]
    return results
