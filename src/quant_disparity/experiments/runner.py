"""Run a spec: plan its trials, skip what the store already has, sweep the rest batch by batch, judge claims.

For each model (trials are grouped so a model is loaded once and its quantized tensors are cached once):

1. select documents and cut them into batches (deterministic), resolve every trial's plan on the model, and
   derive each trial's key; register trials in the store;
2. for each batch, score every trial that lacks it in one sweep (shared reference, replayed leading blocks)
   and commit that batch for all of them in one transaction.

Interrupting (Ctrl-C, ``kill -9``) loses at most the batch in flight; running the same command again
computes only what is missing. Results depend on nothing but the trial's content: a trial's numbers are the
same whichever other trials share its sweep, so a resumed run ends with exactly the rows of an uninterrupted
one (tested).
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import __version__
from .._io import digest_json
from ..analysis.records import DocumentColumns
from ..corpus import Document, filter_split, load_corpus, take_until_tokens
from ..errors import UserError
from ..evaluate import EvalSettings, Forward, Prepared, prepare, tokenize
from ..evaluate.sweep import Sweeper
from ..models import LoadedModel, load_model
from ..models.modules import ModuleMap, build_module_map
from ..quant import QuantEngine
from ..quant.plan import Plan
from .spec import ExperimentSpec, TrialSpec
from .store import ResultRow, Store

#: Bumped whenever a change in the code changes stored numbers; part of every trial key.
#: 2: each arm is scored with its own output layer (v1 scored trials that quantize the LM head or a tied
#:    embedding with the reference's head), and modules outside the blocks are placed by execution order
#:    (v1 treated a pre-block norm such as BLOOM's word_embeddings_layernorm as after the blocks).
RESULTS_VERSION = "2"
MAX_CONFIGS_PER_SWEEP = 24
# Latin-style marks end a sentence before a space; CJK, Devanagari, Ethiopic and Arabic marks end it outright.
_SENTENCE_END = re.compile(r"^.*?(?:[.!?](?=\s|$)|[。！？।።؟۔])", re.S)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to its first sentence-final mark), else its first line."""
    m = _SENTENCE_END.match(text.strip())
    return m.group(0).strip() if m else text.strip().splitlines()[0]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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

    def to_compute(self, trials: list[TrialSpec]) -> tuple[dict[str, dict], int]:
        """({trial key: trial} still missing batches, number of ``trials`` already stored). Several trial
        names may share one key (identical content): each key is computed once."""
        todo = [self.trials[t.name] for t in trials if self.missing.get(self.trials[t.name]["key"])]
        by_key: dict[str, dict] = {}
        for info in todo:
            by_key.setdefault(info["key"], info)
        return by_key, len(trials) - len(todo)


def select(spec: ExperimentSpec, tokenizer) -> tuple[list[Document], list[list[int]], list[str]]:
    cs = spec.corpus
    corpus = load_corpus(cs.name, flores_split=cs.flores_split, sentences_per_doc=cs.sentences_per_doc)
    langs = list(dict.fromkeys(corpus.resolve(x) for x in cs.langs))
    docs: list[Document] = []
    tokens: list[list[int]] = []
    for lang in langs:
        pool = filter_split(corpus.documents(lang), cs.split)
        if cs.docs:
            pool = [d for d in pool if d.id in cs.docs]
            if not pool:
                raise UserError(f"{lang}: none of the documents {list(cs.docs)} is in split {cs.split!r}")
        if cs.first_sentence:
            pool = [Document(d.lang, d.id, first_sentence(d.text)) for d in pool]
        toks = tokenize(tokenizer, pool)
        counts = {d.id: len(t) for d, t in zip(pool, toks)}
        chosen = take_until_tokens(pool, cs.max_tokens or None, lambda d: counts[d.id], cs.min_docs)
        docs += chosen
        tokens += toks[: len(chosen)]
    return docs, tokens, [corpus.digest, *langs]


def plan_model(spec: ExperimentSpec, model: str, trials: list[TrialSpec], store: Store | None,
               lm: LoadedModel | None = None, log: Callable[[str], None] = lambda m: None, device: str = "cpu",
               dtype: str = "float32", compute_device: str | None = None) -> ModelPlan:
    """Documents, batches, resolved plans and keys of ``trials`` on ``model``.

    ``compute_device``: where the trials will be scored when that is not where they are planned (the Ray
    driver plans on the CPU for workers on ``--device cuda``); it goes into the keys and the records, since
    numbers differ slightly across devices.
    """
    if lm is None:
        lm = load_model(model, log=log, device=device, dtype=dtype)
    computed_on = compute_device or lm.info.device
    docs, tokens, (corpus_digest, *langs) = select(spec, lm.tokenizer)
    prepared = prepare(docs, tokens, lm.prefix_token_id, spec.eval, lm.info.max_length, tokenizer=lm.tokenizer)
    docs_meta = [{"doc": i, "lang": d.lang, "doc_id": d.id, "bytes": prepared.n_bytes[i], "chars": d.n_chars,
                  "tokens": prepared.n_tokens[i], "n_pred": prepared.n_pred[i]} for i, d in enumerate(docs)]
    selection = {"corpus": spec.corpus.name, "split": spec.corpus.split, "langs": langs,
                 "max_tokens": spec.corpus.max_tokens, "first_sentence": spec.corpus.first_sentence,
                 "docs": [[d.lang, d.id] for d in docs]}
    # The key holds the documents chosen, so the rule's minimum is only recorded (a spec that raises it without
    # changing the choice keeps its keys and its stored results).
    recorded = selection if spec.corpus.min_docs == 1 else {**selection, "min_docs": spec.corpus.min_docs}
    modmap = build_module_map(lm.model)
    out = ModelPlan(model=model, lm=lm, prepared=prepared, docs_meta=docs_meta, trials={}, modmap=modmap)
    for t in trials:
        try:
            resolved = Plan.parse(t.plan).resolve(modmap)
        except UserError as e:
            raise UserError(f"trial {t.name}: {e.message}", e.hint) from None
        assignment = resolved.assignment()
        content = {
            "model_digest": lm.info.digest, "corpus_digest": corpus_digest, "selection": selection,
            "eval": spec.eval.to_dict(), "prefix": lm.prefix_token_id,
            # numbers differ (slightly) across devices and dtypes: they are part of what a trial is
            "device": computed_on.split(":")[0], "dtype": lm.info.dtype,
            "assignment": sorted((k, v.name) for k, v in assignment.items()), "results_version": RESULTS_VERSION,
        }
        key = digest_json(content, 32)
        meta = {"model": model, "model_digest": lm.info.digest, "scheme": t.scheme, "plan": str(resolved.plan),
                "resolved": resolved.to_dict(), "corpus_digest": corpus_digest, "selection": recorded,
                "eval": spec.eval.to_dict(), "code_version": f"{__version__}/results-{RESULTS_VERSION}",
                "n_batches": len(prepared.groups),
                "info": {"cost": resolved.totals, "device": computed_on, "dtype": lm.info.dtype}}
        out.trials[t.name] = {"key": key, "assignment": assignment, "meta": meta}
        if store is not None:
            store.register(key, meta, docs_meta, spec.name, t.name, now())
            if store.trial_status(key) != "done":
                out.missing[key] = set(range(len(prepared.groups))) - store.done_batches(key)
        else:
            out.missing[key] = set(range(len(prepared.groups)))
    return out


def pick_bases(assignments: dict[str, dict]) -> list[str]:
    """Per scheme, the configuration that quantizes the most tensors: the others differ from it least."""
    best: dict[str, tuple[int, str]] = {}
    for name, a in assignments.items():
        for scheme in {s.name for s in a.values()}:
            n = sum(1 for s in a.values() if s.name == scheme)
            if n > best.get(scheme, (0, ""))[0]:
                best[scheme] = (n, name)
    return list(dict.fromkeys(name for _, name in best.values()))


def iter_batches(lm: LoadedModel, prepared: Prepared, configs: dict[str, dict], missing: dict[str, set[int]], *,
                 vocab_chunk: int, modmap: ModuleMap | None = None):
    """Score ``configs`` (name -> assignment) on the batches each one misses.

    Yields ``(group index, {name: [(doc, nll, nll_ref, kl, top1), ...]}, scored tokens)`` per batch group
    (:func:`..evaluate.runner.score_groups`); the caller commits each before the next is computed.
    """
    import torch

    modmap = modmap or build_module_map(lm.model)
    engine = QuantEngine(lm.model, modmap)
    forward = Forward(lm.model)
    names = [n for n in configs if missing.get(n)]
    for start in range(0, len(names), MAX_CONFIGS_PER_SWEEP):
        group = {n: configs[n] for n in names[start : start + MAX_CONFIGS_PER_SWEEP]}
        sweeper = Sweeper(forward, engine, group, bases=pick_bases(group), vocab_chunk=vocab_chunk,
                          probe=prepared.batches[0] if prepared.batches else None)
        for i, batch_ids in enumerate(prepared.groups):
            todo = [n for n in group if i in missing[n]]
            if not todo:
                continue
            docs, ref_nll, scores = sweeper.run_group([prepared.batches[b] for b in batch_ids], todo)
            d = docs.cpu()
            n_docs = int(d.max()) + 1 if d.numel() else 0
            present = sorted(set(d.tolist()))

            def per_doc(v: torch.Tensor) -> torch.Tensor:
                return torch.zeros(n_docs, dtype=torch.float64).index_add_(0, d, v.cpu().double())

            ref = per_doc(ref_nll)
            results = {}
            for name, sc in scores.items():
                nll, kl, top1 = per_doc(sc.nll), per_doc(sc.kl), per_doc(sc.top1_agree)
                results[name] = [(doc, float(nll[doc]), float(ref[doc]), float(kl[doc]), float(top1[doc]))
                                 for doc in present]
            yield i, results, int(ref_nll.numel()) * len(todo)


def run_spec(spec: ExperimentSpec, store: Store, *, executor: str = "local", ray_address: str | None = None,
             device: str = "cpu", dtype: str = "float32", log: Callable[[str], None] = lambda m: None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Compute every missing trial of ``spec`` into ``store``. Returns counts and timing."""
    t0 = time.perf_counter()
    by_model: dict[str, list[TrialSpec]] = {}
    for t in spec.trials:
        by_model.setdefault(t.model, []).append(t)
    summary = {"trials": len(spec.trials), "already_stored": 0, "computed": 0, "models": list(by_model)}
    if executor == "ray":
        from .executors import run_with_ray

        return run_with_ray(spec, store, by_model, summary, address=ray_address, device=device, dtype=dtype, log=log,
                            progress=progress)
    done_tokens = 0
    for model, trials in by_model.items():
        mp = plan_model(spec, model, trials, store, log=log, device=device, dtype=dtype)
        by_key, n_stored = mp.to_compute(trials)
        summary["already_stored"] += n_stored
        if not by_key:
            log(f"{model}: all {len(trials)} trials already stored")
            continue
        total = mp.prepared.total_pred * len(by_key)
        log(f"{model}: {len(by_key)} of {len(trials)} trials to compute, {len(mp.prepared.groups)} batch groups, "
            f"{mp.prepared.total_pred} tokens each")

        for i, results, n_tokens in iter_batches(mp.lm, mp.prepared, {k: t["assignment"] for k, t in by_key.items()},
                                                 {k: mp.missing[k] for k in by_key},
                                                 vocab_chunk=spec.eval.vocab_chunk, modmap=mp.modmap):
            summary["computed"] += len(store.commit_batch(i, results, now()))
            done_tokens += n_tokens
            if progress:
                progress(done_tokens, total)
        mp.lm = None
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def load_results(spec: ExperimentSpec, store: Store) -> dict[str, dict[str, DocumentColumns]]:
    """trial name -> language -> its documents' columns, for every trial of ``spec`` in the store (languages and
    documents in the store's order)."""
    names = store.spec_trials(spec.name)
    missing = [t.name for t in spec.trials if t.name not in names or store.trial_status(names[t.name]) != "done"]
    if missing:
        raise UserError(f"{len(missing)} trials of {spec.name} are not in the store yet (e.g. {missing[0]})",
                        "run the spec first: quant-disparity run SPEC")
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


__all__ = ["EvalSettings", "ModelPlan", "RESULTS_VERSION", "iter_batches", "first_sentence", "load_results",
           "pick_bases", "plan_model", "run_spec", "select"]
