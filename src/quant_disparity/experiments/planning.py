"""Plan a model's trials: select and batch the documents, resolve every trial's plan on the model, derive each
trial's key from what it computes, and register the trials in the store with the batches they still miss.

A trial's key is a digest of its content (model and corpus digests, the documents chosen, evaluation settings,
prefix token, device, dtype, the resolved assignment and :data:`RESULTS_VERSION`): equal content, equal key,
so stored results are reused by any spec that asks for the same computation.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import __version__
from .._io import digest_json
from ..corpus import Selection, open_corpus, select_documents
from ..errors import UserError
from ..evaluate import Prepared, prepare, tokenize
from ..models import LoadedModel, load_model
from ..models.modules import ModuleMap, build_module_map
from ..quant.calibration import CalibrationSet, bind_calibration, choose_documents
from ..quant.plan import Plan
from .spec import ExperimentSpec, TrialSpec
from .store import Store

#: Bumped whenever a change in the code changes stored numbers; part of every trial key.
#: 2: each arm is scored with its own output layer (v1 scored trials that quantize the LM head or a tied
#:    embedding with the reference's head), and modules outside the blocks are placed by execution order
#:    (v1 treated a pre-block norm such as BLOOM's word_embeddings_layernorm as after the blocks).
RESULTS_VERSION = "2"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class ModelPlan:
    """Everything needed to run one model's trials."""

    model: str
    lm: LoadedModel | None
    prepared: Prepared
    docs_meta: list[dict]
    trials: dict[str, dict]  # trial name -> {"key", "assignment", "meta"}
    missing: dict[str, set[int]] = field(default_factory=dict)  # trial key -> batch indices to compute
    modmap: ModuleMap | None = None  # built once (its probe forward included) and reused for the sweeps
    #: calibration key -> its calibration set, for the trials with calibrated schemes
    calibrations: dict[str, CalibrationSet] = field(default_factory=dict)

    def to_compute(self, trials: list[TrialSpec]) -> tuple[dict[str, dict], int]:
        """({trial key: trial} still missing batches, number of ``trials`` already stored). Several trial
        names may share one key (identical content): each key is computed once."""
        todo = [self.trials[t.name] for t in trials if self.missing.get(self.trials[t.name]["key"])]
        by_key: dict[str, dict] = {}
        for info in todo:
            by_key.setdefault(info["key"], info)
        return by_key, len(trials) - len(todo)


def plan_model(
    spec: ExperimentSpec,
    model: str,
    trials: list[TrialSpec],
    store: Store | None,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda m: None,
    device: str = "cpu",
    dtype: str = "float32",
    compute_device: str | None = None,
    modmap: ModuleMap | None = None,
) -> ModelPlan:
    """Documents, batches, resolved plans and keys of ``trials`` on ``model``.

    ``compute_device``: where the trials will be scored when that is not where they are planned (the Ray
    driver plans on the CPU for workers on ``--device cuda``); it goes into the keys and the records, since
    numbers differ slightly across devices. ``modmap``: ``lm``'s module map, when the caller has it.
    """
    if lm is None:
        lm = load_model(model, log=log, device=device, dtype=dtype)
    chosen = select_documents(open_corpus(spec.corpus), spec.corpus, functools.partial(tokenize, lm.tokenizer))
    docs = chosen.documents()
    prepared = prepare(
        docs, chosen.all_tokens(), lm.prefix_token_id, spec.eval, lm.info.max_length, tokenizer=lm.tokenizer
    )
    docs_meta = [
        {
            "doc": i,
            "lang": d.lang,
            "doc_id": d.id,
            "bytes": prepared.n_bytes[i],
            "chars": d.n_chars,
            "tokens": prepared.n_tokens[i],
            "n_pred": prepared.n_pred[i],
        }
        for i, d in enumerate(docs)
    ]
    modmap = modmap or build_module_map(lm.model)
    out = ModelPlan(model=model, lm=lm, prepared=prepared, docs_meta=docs_meta, trials={}, modmap=modmap)
    for t in trials:
        out.trials[t.name] = plan_trial(spec, t, out, chosen, compute_device or lm.info.device)
        key = out.trials[t.name]["key"]
        if store is not None:
            store.register(key, out.trials[t.name]["meta"], docs_meta, spec.name, t.name, now())
            if store.trial_status(key) != "done":
                out.missing[key] = set(range(len(prepared.groups))) - store.done_batches(key)
        else:
            out.missing[key] = set(range(len(prepared.groups)))
    return out


def selection_record(spec: ExperimentSpec, chosen: Selection) -> dict:
    """The corpus selection as it enters a trial's key: the rule and the documents it chose."""
    return {
        "corpus": spec.corpus.name,
        "split": spec.corpus.split,
        "langs": chosen.langs,
        "max_tokens": spec.corpus.max_tokens,
        "first_sentence": spec.corpus.first_sentence,
        "docs": [[d.lang, d.id] for d in chosen.documents()],
    }


def _on_meta(lm: LoadedModel) -> bool:
    return any(p.device.type == "meta" for p in lm.model.parameters())


def trial_assignment(t: TrialSpec, lm: LoadedModel, modmap: ModuleMap, log: Callable[[str], None] = lambda m: None):
    """Trial ``t``'s assignment on ``lm`` (parameter -> scheme), with the record of how it was made: the resolved
    plan, or for a trial of a pre-quantized artifact (read and checked here) the artifact (None before)."""
    if t.quantized and not _on_meta(lm):
        from ..models.artifact import check_artifact, open_artifact
        from ..quant import cost

        try:
            check_artifact(t.quantized, t.model, log)
            artifact = open_artifact(t.quantized, lm, modmap, log)
        except UserError as e:
            raise UserError(f"trial {t.name}: {e.message}", e.hint) from None
        resolved = {
            "plan": f"artifact:{artifact.path}",
            "rules": [],
            "totals": cost(modmap, artifact.schemes(modmap)),
            "tensors": [
                {
                    "name": p.name,
                    "components": list(p.components),
                    "layer": p.layer,
                    "numel": p.numel,
                    "action": "artifact" if p.name in artifact.differing else "equal",
                    "stored": artifact.stored[p.name],
                }
                for p in modmap.params
            ],
            "artifact": artifact.summary(modmap),
        }
        return artifact.assignment(modmap), resolved, artifact
    try:  # an artifact on the meta device (a dry run's estimate): as its estimate_plan
        plan = Plan.parse(t.estimate_plan).resolve(modmap)
    except UserError as e:
        raise UserError(f"trial {t.name}: {e.message}", e.hint) from None
    return plan.assignment(), plan, None


def plan_trial(spec: ExperimentSpec, t: TrialSpec, mp: ModelPlan, chosen: Selection, computed_on: str) -> dict:
    """The key, assignment and stored record of trial ``t`` on the planned model."""
    lm, prepared = mp.lm, mp.prepared
    assert lm is not None and mp.modmap is not None  # plan_model plans with the model loaded and mapped
    assignment, resolved, artifact = trial_assignment(t, lm, mp.modmap)
    calibration = None
    if t.calibration:
        try:
            cal_set = choose_documents(
                spec.calibration_of(t),
                chosen.corpus,
                functools.partial(tokenize, lm.tokenizer),
                chosen.documents(),
            )
        except UserError as e:
            raise UserError(f"trial {t.name}: {e.message}", e.hint) from None
        mp.calibrations[cal_set.key] = cal_set
        assignment = bind_calibration(assignment, cal_set.key)
        calibration = cal_set.record()
    corpus_digest = chosen.corpus.digest
    selection = selection_record(spec, chosen)
    content = {
        "model_digest": lm.info.digest,
        "corpus_digest": corpus_digest,
        "selection": selection,
        "eval": spec.eval.to_dict(),
        "prefix": lm.prefix_token_id,
        # numbers differ (slightly) across devices and dtypes: they are part of what a trial is
        "device": computed_on.split(":")[0],
        "dtype": lm.info.dtype,
        "assignment": sorted((k, v.name) for k, v in assignment.items()),
        "results_version": RESULTS_VERSION,
        # left out without calibration, so that the keys of existing trials stay
        **({"calibration": calibration} if calibration is not None else {}),
    }
    if artifact is not None:  # a new key field only where it is set: the keys of every other trial stay as they were
        content["artifact"] = artifact.digest
    # The key holds the documents chosen, so the rule's minimum is only recorded (a spec that raises it without
    # changing the choice keeps its keys and its stored results).
    recorded = selection if spec.corpus.min_docs == 1 else {**selection, "min_docs": spec.corpus.min_docs}
    meta = {
        "model": mp.model,
        "model_digest": lm.info.digest,
        "scheme": t.scheme,
        "plan": resolved["plan"] if isinstance(resolved, dict) else str(resolved.plan),
        "resolved": resolved if isinstance(resolved, dict) else resolved.to_dict(),
        "corpus_digest": corpus_digest,
        "selection": recorded,
        "eval": spec.eval.to_dict(),
        "code_version": f"{__version__}/results-{RESULTS_VERSION}",
        "n_batches": len(prepared.groups),
        "info": {
            "cost": resolved["totals"] if isinstance(resolved, dict) else resolved.totals,
            "device": computed_on,
            "dtype": lm.info.dtype,
            # the record of the set the key holds (documents, token count): stored with the trial, in results.json
            **({"calibration": calibration} if calibration is not None else {}),
        },
    }
    return {"key": digest_json(content, 32), "assignment": assignment, "meta": meta}
