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

from ..analysis.records import DocumentColumns
from ..errors import UserError
from .executors import run_locally, run_with_ray
from .spec import ExperimentSpec, TrialSpec
from .store import ResultRow, Store
from .tasks import run_spec_tasks


def run_spec(
    spec: ExperimentSpec,
    store: Store,
    *,
    executor: str = "local",
    ray_address: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    log: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Compute every missing trial of ``spec`` into ``store``, then every missing task run of its ``[tasks]``
    (in this process, also with the Ray executor). Returns counts and timing."""
    by_model: dict[str, list[TrialSpec]] = {}
    for t in spec.trials:
        by_model.setdefault(t.model, []).append(t)
    summary: dict = {"trials": len(spec.trials), "already_stored": 0, "computed": 0, "models": list(by_model)}
    if executor == "ray":
        summary = run_with_ray(
            spec, store, by_model, summary, address=ray_address, device=device, dtype=dtype, log=log, progress=progress
        )
    else:
        summary = run_locally(spec, store, by_model, summary, device=device, dtype=dtype, log=log, progress=progress)
    if spec.tasks:
        summary["tasks"] = run_spec_tasks(spec, store, device=device, dtype=dtype, log=log)
    return summary


def load_results(spec: ExperimentSpec, store: Store) -> dict[str, dict[str, DocumentColumns]]:
    """trial name -> language -> its documents' columns, for every trial of ``spec`` in the store (languages and
    documents in the store's order)."""
    names = store.spec_trials(spec.name)
    missing = [t.name for t in spec.trials if t.name not in names or store.trial_status(names[t.name]) != "done"]
    if missing:
        raise UserError(
            f"{len(missing)} trials of {spec.name} are not in the store yet (e.g. {missing[0]})",
            "run the spec first: quant-disparity run SPEC",
        )
    key_rows: dict[str, list[ResultRow]] = {}
    for row in store.rows(set(names[t.name] for t in spec.trials)):
        key_rows.setdefault(row.trial_key, []).append(row)
    out: dict[str, dict[str, DocumentColumns]] = {}
    for t in spec.trials:
        per_lang: dict[str, list[ResultRow]] = {}
        for row in key_rows[names[t.name]]:
            per_lang.setdefault(row.lang, []).append(row)
        out[t.name] = {lang: DocumentColumns.from_rows(rows) for lang, rows in per_lang.items()}
    return out


__all__ = ["load_results", "run_spec"]
