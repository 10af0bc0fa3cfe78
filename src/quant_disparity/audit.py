"""The audit: how much does a quantization scheme hurt each language, and how sure are we?"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from .analysis import LanguageStats, correlation, disparity, language_stats
from .analysis.fertility import FERTILITY_STREAM, Fertility, fertility_summary, language_fertility
from .analysis.records import AuditResult, DocumentRow, LanguageRow
from .config import AuditConfig
from .corpus import Corpus, Selection, language_info
from .corpus.documents import base_language
from .corpus.resources import MEASURES
from .errors import UserError, did_you_mean
from .evaluate import DocScores, Forward, Prepared, concat_scores, prepare, score_documents, tokenize
from .inputs import check_model_and_corpus, load_inputs
from .models import LoadedModel
from .models.modules import ModuleMap, build_module_map
from .provenance import environment
from .quant import Scheme, cost, engine_for, parse_scheme
from .quant.calibration import (
    Calibration,
    bind_calibration,
    check_calibration_source,
    check_calibration_use,
    choose_documents,
    collect_statistics,
    plan_needs_calibration,
)
from .quant.plan import Plan, bind_assignment, load_plan


def validate(config: AuditConfig) -> tuple[Scheme, Corpus, list[str]]:
    """Everything that can be checked before a model is loaded; raises :class:`UserError`."""
    scheme = parse_scheme(config.scheme)
    needs_calibration = scheme.needs_calibration
    if config.plan:
        plan = load_plan(config.plan)
        needs_calibration = plan_needs_calibration(plan)
        if config.include:
            raise UserError("--include does not combine with --plan", "name those tensors in the plan instead")
    if config.quantized:
        from .models.artifact import classify_artifact

        classify_artifact(config.quantized)
    if config.resource_measure not in MEASURES:
        raise UserError(
            f"unknown resource measure {config.resource_measure!r}{did_you_mean(config.resource_measure, MEASURES)}",
            f"use one of {', '.join(MEASURES)}",
        )
    what = f"plan {config.plan!r}" if config.plan else f"scheme {scheme.name}"
    check_calibration_use(needs_calibration, config.calibration_spec, what)
    corpus, langs = check_model_and_corpus(config.runtime, config.selection)
    check_calibration_source(config.calibration_spec, corpus, config.split)
    return scheme, corpus, langs


def quantization_targets(modmap: ModuleMap, include: tuple[str, ...]) -> list[str]:
    names = modmap.default_targets()
    for p in modmap.params:
        if "embeddings" in include and any(c in ("embed.token", "embed.pos") for c in p.components):
            names.append(p.name)
        if "lm_head" in include and "lm_head" in p.components and p.role in ("matrix", "embedding"):
            names.append(p.name)
    return list(dict.fromkeys(names))


def scheme_assignment(modmap: ModuleMap, scheme: Scheme, include: tuple[str, ...]) -> dict[str, Scheme]:
    """``--scheme`` on the default targets (and ``--include``), each bound to its tensor (a llama.cpp type's
    row-length fallback, a per-tensor recipe)."""
    return bind_assignment({name: scheme for name in quantization_targets(modmap, include)}, modmap)


def stored_as(assignment: dict[str, Scheme], name: str) -> dict[str, str]:
    """The tensors whose bound scheme is not the one named (what a llama.cpp type or recipe really stored)."""
    return {t: s.name for t, s in assignment.items() if s.name != name}


def describe_targets(modmap: ModuleMap, names: list[str]) -> dict:
    """What was quantized, in words a reader can check."""
    chosen = set(names)
    comps: dict[str, int] = {}
    for p in modmap.params:
        if p.name in chosen:
            key = "+".join(p.components)
            comps[key] = comps.get(key, 0) + p.numel
    kept = sorted({"+".join(p.components) for p in modmap.params if p.name not in chosen})
    layers = sorted({p.layer for p in modmap.params if p.name in chosen and p.layer is not None})
    return {
        "tensors": len(names),
        "params_by_component": comps,
        "layers": f"{layers[0]}-{layers[-1]}" if layers else "none",
        "kept_components": kept,
        "tied": list(modmap.notes),
    }


def summarize(per_lang: list[LanguageStats], config: AuditConfig, rng: np.random.Generator) -> dict:
    infos = {s.lang: language_info(base_language(s.lang)) for s in per_lang}
    groups = {}
    for lang, info in infos.items():
        cls = info.resources.joshi_class
        if cls is not None:
            groups[lang] = "low" if cls <= config.lr_max_class else "high"
    rel = {s.lang: s.estimates["rel_delta_bpb"].value for s in per_lang}  # None: undefined (never 0.0)
    worst = max(per_lang, key=lambda s: -np.inf if (v := rel[s.lang]) is None else v)
    best = min(per_lang, key=lambda s: np.inf if (v := rel[s.lang]) is None else v)
    measure = {lang: info.resources.get(config.resource_measure) for lang, info in infos.items()}
    return {
        "worst_language": {
            "lang": worst.lang,
            "rel_delta_bpb": worst.estimates["rel_delta_bpb"].to_dict(),
            "delta_bpb": worst.estimates["delta_bpb"].to_dict(),
        },
        "best_language": {"lang": best.lang, "rel_delta_bpb": best.estimates["rel_delta_bpb"].to_dict()},
        "groups": {
            "rule": f"low-resource = Joshi class <= {config.lr_max_class}",
            "assignment": groups,
            "unclassified": [lang for lang in infos if lang not in groups],
        },
        "disparity": disparity(per_lang, groups, "rel_delta_bpb"),
        "disparity_kl": disparity(per_lang, groups, "kl_bits"),
        "correlation": {
            "measure": config.resource_measure,
            "description": MEASURES[config.resource_measure],
            **correlation(per_lang, measure, "rel_delta_bpb", rng),
        },
    }


def _bound_plan(
    config: AuditConfig, lm: LoadedModel | None, log: Callable[[str], None]
) -> tuple[Plan, LoadedModel | None, dict | None]:
    """``config``'s plan, a bare ``super`` in it bound to the super weights found on the reference weights (the
    model is loaded for that, before anything is quantized, and returned to be used), and the detection's record."""
    plan = load_plan(config.plan)
    if not plan.needs_super:
        return plan, lm, None
    from .inspect.command import bind_super
    from .models import load_model

    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype, log=log)
    bound, found = bind_super(plan, lm)
    assert found is not None  # the plan needed super
    log(f"super weights (default thresholds): {len(found['found'])} found; plan: {bound}")
    return bound, lm, found


def run_audit(
    config: AuditConfig,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Run an audit. ``lm``: a model already loaded (its name must match ``config.model``).

    ``progress(done, total)`` is called with predicted tokens scored so far.
    """
    t0 = time.perf_counter()
    scheme, corpus, langs = validate(config)
    plan, found, artifact = None, None, None
    if config.plan:
        plan, lm, found = _bound_plan(config, lm, log)
    if config.quantized:  # before any weights are loaded: a model, the same tokenizer, the same tensors
        from .models.artifact import check_artifact

        check_artifact(config.quantized, config.model, log)
    calibration = config.calibration_spec
    if calibration and lm is None:  # loaded here so that its tokenizer stays for the calibration documents
        from .models import load_model

        lm = load_model(config.model, device=config.device, dtype=config.dtype, log=log)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    lm, modmap, selection, prepared = inputs.lm, inputs.modmap, inputs.selection, inputs.prepared
    t_load = inputs.loaded_at
    if config.quantized:
        from .models.artifact import open_artifact

        artifact = open_artifact(config.quantized, lm, modmap, log)
        assignment = artifact.assignment(modmap)
        targets = list(assignment)
        plan_info = None
        log(f"artifact: {len(targets)} of {len(modmap.params)} tensors differ from the reference")
    elif plan is not None:
        resolved = plan.resolve(modmap)
        assignment = resolved.assignment()
        targets = list(assignment)
        plan_info = resolved.to_dict()
        if found is not None:
            plan_info["super_weights"] = found
    else:
        assignment = scheme_assignment(modmap, scheme, config.include)
        targets = list(assignment)
        plan_info = None
    log(
        f"{len(prepared.docs)} documents, {prepared.total_pred} predicted tokens, {len(prepared.batches)} batches "
        f"in {len(prepared.groups)} scoring groups"
    )

    engine = engine_for(lm, modmap)
    forward = Forward(lm.model)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, prepared.total_pred)

    def use_reference() -> None:
        engine.restore_()

    bound = dict(assignment)  # with calibrated schemes bound to the calibration in use

    def use_model() -> None:
        engine.assign_(bound)

    def score(docs: Prepared) -> DocScores:
        return score_documents(
            forward,
            docs,
            use_reference=use_reference,
            use_model=use_model,
            vocab_chunk=config.eval.vocab_chunk,
            progress=tick,
        )

    calibration_info: dict | None = None
    t_cal = 0.0
    try:
        t_q = time.perf_counter()
        if calibration:
            # one quantized model per calibration set: per evaluated language for ``target``, else one
            parts = []
            calibration_info = {} if calibration.is_target else None
            for lang, docs_prepared in _calibration_parts(calibration, langs, selection, prepared, lm, config):
                t0_cal = time.perf_counter()
                cal_set = choose_documents(
                    calibration,
                    corpus,
                    functools.partial(tokenize, lm.tokenizer),
                    selection.documents(),
                    target=lang,
                )
                stats = collect_statistics(
                    lm.model,
                    targets,
                    cal_set,
                    lm.prefix_token_id,
                    max_length=lm.info.max_length,
                )
                engine.add_calibration(stats)
                bound = bind_calibration(assignment, stats.key)
                log(f"calibration {cal_set.calibration.name}{f' ({lang})' if lang else ''}: {cal_set.n_tokens} tokens")
                t_cal += time.perf_counter() - t0_cal
                record = cal_set.record()
                if calibration_info is not None:
                    calibration_info[lang] = record
                else:
                    calibration_info = record
                parts.append(score(docs_prepared))
                engine.restore_()
                engine.calibrations.pop(stats.key)
                del stats
            scores = concat_scores(parts)
            t_eval = t_q
        else:
            if engine.cache:  # quantize once up front (cached), so the timing below is evaluation only
                engine.assign_(assignment)
                engine.restore_()
            t_eval = time.perf_counter()
            scores = score(prepared)
    finally:
        engine.restore_()
    t_done = time.perf_counter()
    # scored against the reference: every comparison column is there
    assert scores.nll_ref is not None and scores.kl is not None and scores.top1 is not None

    rng = np.random.default_rng(config.seed)
    per_lang: list[LanguageStats] = []
    doc_rows: list[DocumentRow] = []
    fertility: dict[str, Fertility] = {}
    offset = 0
    for lang in langs:
        n = len(selection.docs[lang])
        sl = slice(offset, offset + n)
        offset += n
        fertility[lang] = language_fertility(
            language_info(base_language(lang)).script, [d.text for d in selection.docs[lang]], prepared.n_tokens[sl]
        )
        arrays = {
            "nll": scores.nll[sl],
            "nll_ref": scores.nll_ref[sl],
            "kl": scores.kl[sl],
            "top1": scores.top1[sl],
            "n_pred": scores.n_pred[sl],
            "bytes": np.array(prepared.n_bytes[sl]),
        }
        per_lang.append(language_stats(lang, arrays, config.n_boot, rng))
        for i, d in enumerate(selection.docs[lang]):
            doc_rows.append(
                DocumentRow(
                    lang=lang,
                    doc_id=d.id,
                    bytes=prepared.n_bytes[sl.start + i],
                    chars=d.n_chars,
                    tokens=prepared.n_tokens[sl.start + i],
                    predicted_tokens=int(arrays["n_pred"][i]),
                    nll_fp=float(arrays["nll_ref"][i]),
                    nll_q=float(arrays["nll"][i]),
                    kl_nats=float(arrays["kl"][i]),
                    top1_agree=int(arrays["top1"][i]),
                )
            )
    lang_rows = tuple(
        LanguageRow.from_stats(s, language_info(base_language(s.lang)).to_dict(), fertility[s.lang].to_dict())
        for s in per_lang
    )
    summary = summarize(per_lang, config, rng)
    summary["fertility"] = fertility_summary(
        per_lang, fertility, np.random.default_rng((config.seed, FERTILITY_STREAM))
    )
    scheme_info = {
        "name": str(plan) if plan is not None else scheme.name,
        "quantized": describe_targets(modmap, targets),
        "cost": cost(modmap, assignment),
        "plan": plan_info,
        "reference": "the model's weights as loaded (dequantized fp32 for GGUF models)",
        **({"calibration": calibration_info} if calibration_info is not None else {}),
    }
    if (
        plan is None
        and artifact is None
        and calibration_info is None
        and (stored := stored_as(assignment, scheme.name))
    ):
        scheme_info["stored_as"] = stored  # tensors a K-quant stores as another type (llama.cpp's fallback)
    if artifact is not None:
        scheme_info["name"] = f"artifact:{artifact.format}"
        # every tensor at the width the artifact stores it, those equal to the reference included
        scheme_info["cost"] = cost(modmap, artifact.schemes(modmap))
        scheme_info["artifact"] = artifact.summary(modmap)
    return AuditResult(
        config=config,
        model={**lm.info.to_dict(), "module_map": modmap.summary()},
        scheme=scheme_info,
        corpus={
            "name": corpus.name,
            "digest": corpus.digest,
            "source": corpus.source,
            "license": corpus.license,
            "split": config.split,
            "max_tokens_per_language": config.max_tokens,
            **({"min_docs_per_language": config.min_docs} if config.min_docs > 1 else {}),
        },
        languages=lang_rows,
        summary=summary,
        documents=tuple(doc_rows),
        environment=environment(),
        timing={
            "load_s": round(t_load - t0, 3),
            "quantize_s": round(t_eval - t_q, 3),
            **({"calibrate_s": round(t_cal, 3)} if calibration else {}),
            "evaluate_s": round(t_done - t_eval, 3),
            "total_s": round(time.perf_counter() - t0, 3),
            "predicted_tokens": prepared.total_pred,
        },
    )


def _calibration_parts(
    calibration: Calibration,
    langs: list[str],
    selection: Selection,
    prepared: Prepared,
    lm: LoadedModel,
    config: AuditConfig,
) -> list[tuple[str | None, Prepared]]:
    """The documents scored under each calibration: all of them (one calibration), or per language for
    ``target`` (each language's documents prepared alone, in the same order)."""
    if not calibration.is_target:
        return [(None, prepared)]
    return [
        (
            lang,
            prepare(
                selection.docs[lang],
                selection.tokens[lang],
                lm.prefix_token_id,
                config.eval,
                lm.info.max_length,
                tokenizer=lm.tokenizer,
            ),
        )
        for lang in langs
    ]


def run_audit_with_tasks(
    config: AuditConfig,
    tasks: str,
    settings: object,
    *,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """An audit followed by ``tasks`` (e.g. ``"cloze,generate"``) on the same model and scheme: audit.json's
    dict with a ``tasks`` section (:mod:`quant_disparity.tasks`). Task names and languages are checked first."""
    from .models import load_model
    from .tasks import TaskSettings, parse_tasks, run_tasks

    assert isinstance(settings, TaskSettings)
    chosen = parse_tasks(tasks, settings)
    scheme, corpus, langs = validate(config)
    if config.calibration_spec:
        raise UserError("--tasks does not run calibrated schemes yet", "audit the calibrated scheme without --tasks")
    for task in chosen:
        task.check(corpus, langs)
    lm = load_model(config.model, device=config.device, dtype=config.dtype, log=log)
    result = run_audit(config, lm=lm, log=log, progress=progress)
    modmap = build_module_map(lm.model)
    if config.quantized:
        from .models.artifact import open_artifact

        assignment = open_artifact(config.quantized, lm, modmap, log).assignment(modmap)
    elif config.plan:
        assignment = _bound_plan(config, lm, log)[0].resolve(modmap).assignment()
    else:
        assignment = scheme_assignment(modmap, scheme, config.include)
    data = result.to_dict()
    data["tasks"] = run_tasks(
        chosen,
        lm,
        engine_for(lm, modmap),
        assignment,
        corpus,
        langs,
        settings,
        data["documents"],
        n_boot=config.n_boot,
        log=log,
    )
    return data
