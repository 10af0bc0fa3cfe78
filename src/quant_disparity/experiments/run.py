"""Run a spec: plan its trials, skip what the store already has, sweep the rest batch by batch; and read a
spec's stored results back.

For each model (trials are grouped so a model is loaded once and its quantized tensors are cached once):

1. select documents and cut them into batches (deterministic), resolve every trial's plan on the model, and
   derive each trial's key; register trials in the store (:mod:`.planning`);
2. for each batch, score every trial that lacks it in one sweep (shared reference, replayed leading blocks)
   and commit that batch for all of them in one transaction (:mod:`.batches`, run by :mod:`.executors`).

Interrupting (Ctrl-C, ``kill -9``) loses at most the batch in flight; running the same command again
computes only what is missing. Results depend on nothing but the trial's content: a trial's numbers are the
same whichever other trials share its sweep, so a resumed run ends with exactly the rows of an uninterrupted
one (tested).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .executors import run_locally, run_with_ray
from .spec import ExperimentSpec, TrialSpec
from .store import Store


def run_spec(spec: ExperimentSpec, store: Store, *, executor: str = "local", ray_address: str | None = None,
             device: str = "cpu", dtype: str = "float32", log: Callable[[str], None] = lambda m: None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Compute every missing trial of ``spec`` into ``store``. Returns counts and timing."""
    by_model: dict[str, list[TrialSpec]] = {}
    for t in spec.trials:
        by_model.setdefault(t.model, []).append(t)
    summary = {"trials": len(spec.trials), "already_stored": 0, "computed": 0, "models": list(by_model)}
    if executor == "ray":
        return run_with_ray(spec, store, by_model, summary, address=ray_address, device=device, dtype=dtype, log=log,
                            progress=progress)
    return run_locally(spec, store, by_model, summary, device=device, dtype=dtype, log=log, progress=progress)


def load_results(spec: ExperimentSpec, store: Store) -> dict[str, dict[str, dict]]:
    """trial name -> language -> column -> per-document numpy array, for every trial of ``spec`` in the store."""
    import numpy as np

    names = store.spec_trials(spec.name)
    missing = [t.name for t in spec.trials if t.name not in names or store.trial_status(names[t.name]) != "done"]
    if missing:
        raise UserError(f"{len(missing)} trials of {spec.name} are not in the store yet (e.g. {missing[0]})",
                        "run the spec first: quant-disparity run SPEC")
    out: dict[str, dict[str, dict]] = {}
    key_rows: dict[str, list[tuple]] = {}
    for row in store.rows(set(names[t.name] for t in spec.trials)):
        key_rows.setdefault(row[0], []).append(row)
    for t in spec.trials:
        per_lang: dict[str, dict[str, list]] = {}
        for (_, lang, _doc_id, _doc, nbytes, _chars, _tok, n_pred, nll, nll_ref, kl, top1) in key_rows[names[t.name]]:
            d = per_lang.setdefault(lang, {k: [] for k in ("bytes", "n_pred", "nll", "nll_ref", "kl", "top1")})
            for k, v in zip(("bytes", "n_pred", "nll", "nll_ref", "kl", "top1"), (nbytes, n_pred, nll, nll_ref, kl, top1)):
                d[k].append(v)
        out[t.name] = {lang: {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
                       for lang, cols in per_lang.items()}
    return out


__all__ = ["load_results", "run_spec"]
