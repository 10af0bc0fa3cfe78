"""The super-weight ablation: per language, what (a) the uniform scheme, (b) the scheme with the super weights
kept (``keep:super; SCHEME:*``) and (c) the reference with the super weights zeroed (``zero:super``) do to bits
per byte, against the reference, with paired bootstrap intervals over documents; and the difference (a) - (b),
what keeping the super weights saves.

The three arms are plans: the detector runs once on the reference weights (default prompt and thresholds
unless given), its coordinates are bound into the plans (:meth:`..quant.plan.Plan.with_super`), and all three
are scored in one sweep over the same documents (:func:`..evaluate.sweep.sweep`). A model with no super weight
gets arms (b) = (a) and (c) = the reference, and the result says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from ..analysis.stats import LN2, Estimate, interval, language_metrics, resample_counts, too_few_documents
from ..config import AuditConfig
from ..corpus import language_info
from ..corpus.documents import base_language
from ..evaluate import Forward
from ..evaluate.sweep import SweepScores, sweep, token_counter
from ..inputs import check_model_and_corpus, load_inputs
from ..models import LoadedModel, load_model
from ..provenance import environment
from ..quant import engine_for, parse_scheme
from ..quant.plan import Plan
from .command import super_weights
from .superweights import DEFAULT_PROMPT, Thresholds

#: The arms, in report order: name -> plan with a bare ``super`` ({scheme} filled in).
ARMS = {
    "uniform": "{scheme}:*",
    "keep_super": "keep:super; {scheme}:*",
    "zero_super": "zero:super",
}
#: Per-arm statistics reported for each language.
ARM_METRICS = ("delta_bpb", "rel_delta_bpb", "kl_bits")


def arm_plans(scheme: str, coordinates: list[tuple[int, int, int]]) -> dict[str, Plan]:
    """The three arms' plans, bound to ``coordinates`` (block, row, column)."""
    name = parse_scheme(scheme).name
    return {arm: Plan.parse(text.format(scheme=name)).with_super(coordinates) for arm, text in ARMS.items()}


def effect_by_language(
    scores: SweepScores, langs: Mapping[str, tuple[np.ndarray, np.ndarray]], n_boot: int, rng: np.random.Generator
) -> dict[str, dict]:
    """``langs``: language -> (document indices into ``scores``, their UTF-8 bytes). Per language and arm the
    statistics of :data:`ARM_METRICS`, and the paired difference of bpb between uniform and keep_super (positive:
    keeping the super weights lowers the damage), each with its 95% interval (none under
    :data:`..analysis.stats.MIN_DOCS_FOR_INTERVAL` documents)."""
    out: dict[str, dict] = {}
    for lang, (idx, n_bytes) in langs.items():
        weights = resample_counts(len(idx), n_boot, rng)
        note = too_few_documents(len(idx))

        def sums(arm: str, w: np.ndarray | None) -> dict[str, np.ndarray]:
            cols = {
                "nll": scores.nll[arm][idx],
                "nll_ref": scores.nll_ref[idx],
                "kl": scores.kl[arm][idx],
                "top1": scores.top1[arm][idx],
                "n_pred": scores.n_pred[idx].astype(np.float64),
                "bytes": n_bytes,
            }
            return {k: v.sum() if w is None else w @ v for k, v in cols.items()}

        row: dict = {"n_docs": len(idx), "n_bytes": int(n_bytes.sum())}
        stats = {arm: (language_metrics(sums(arm, None)), language_metrics(sums(arm, weights))) for arm in ARMS}
        p0, r0 = stats["uniform"]
        row["bpb_fp"] = interval(float(p0["bpb_fp"]), r0["bpb_fp"], note).to_dict()
        for arm, (p, r) in stats.items():
            row[arm] = {m: interval(float(p[m]), r[m], note).to_dict() for m in ARM_METRICS}
        pk, rk = stats["keep_super"]
        row["uniform_minus_keep_super_bpb"] = interval(
            float(p0["bpb_q"] - pk["bpb_q"]), r0["bpb_q"] - rk["bpb_q"], note
        ).to_dict()
        out[lang] = row
    return out


def run_super_effect(
    config: AuditConfig,
    *,
    prompt: str = DEFAULT_PROMPT,
    thresholds: Thresholds = Thresholds(),
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The ablation on ``config``'s model, documents (its split; held-out by default at the CLI), scheme, seed and
    bootstrap size. Its ``plan`` and ``include`` are not used (the arms are fixed)."""
    t0 = time.perf_counter()
    parse_scheme(config.scheme)
    corpus, langs = check_model_and_corpus(config.runtime, config.selection)
    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype, log=log)
    found = super_weights(lm, prompt, thresholds)  # on the reference weights, before anything is quantized
    plans = arm_plans(config.scheme, found.coordinates)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    modmap, selection, prepared = inputs.modmap, inputs.selection, inputs.prepared
    resolved = {arm: plan.resolve(modmap) for arm, plan in plans.items()}
    configs = {arm: r.assignment() for arm, r in resolved.items()}
    log(f"{len(found.super_weights)} super weight(s); {len(prepared.docs)} documents, {prepared.total_pred} tokens")
    engine = engine_for(lm, modmap)
    tick = token_counter(prepared.total_pred * len(configs), progress)
    t_eval = time.perf_counter()
    scores = sweep(Forward(lm.model), prepared, engine, configs, vocab_chunk=config.eval.vocab_chunk, progress=tick)
    t_done = time.perf_counter()
    index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    offset = 0
    for lang in langs:
        n = len(selection.docs[lang])
        index[lang] = (np.arange(offset, offset + n), np.asarray(prepared.n_bytes[offset : offset + n], np.float64))
        offset += n
    per_lang = effect_by_language(scores, index, config.n_boot, np.random.default_rng(config.seed))
    for lang, row in per_lang.items():
        row["language"] = language_info(base_language(lang)).to_dict()
    return {
        "schema": "quant-disparity/super-effect",
        "schema_version": 1,
        "model": {**lm.info.to_dict(), "module_map": modmap.summary()},
        "config": config.to_dict(),
        "detection": {k: v for k, v in found.to_dict().items() if k != "model"},
        "super_weights": [[s.layer, s.row, s.column, s.value] for s in found.super_weights],
        "note": None
        if found.super_weights
        else "no super weight at these thresholds: keep_super equals uniform and zero_super equals the reference",
        "arms": {
            arm: {"plan": str(plans[arm]), "totals": r.totals, **({"notes": list(r.notes)} if r.notes else {})}
            for arm, r in resolved.items()
        },
        "definitions": {
            "delta_bpb": "bpb of the arm - bpb of the reference (Σ nats / (ln 2 Σ bytes) over the language's documents)",
            "uniform_minus_keep_super_bpb": "bpb(uniform) - bpb(keep_super): what keeping the super weights saves",
            "ci95": "paired percentile bootstrap over documents",
            "ln2": LN2,
        },
        "corpus": {"name": corpus.name, "digest": corpus.digest, "split": config.split},
        "languages": per_lang,
        "environment": environment(),
        "timing": {
            "evaluate_s": round(t_done - t_eval, 3),
            "total_s": round(time.perf_counter() - t0, 3),
            "tokens_per_arm": prepared.total_pred,
            **scores.stats,
        },
    }


def super_effect_markdown(data: Mapping) -> str:
    """The ablation as a markdown table, one row per language."""
    from ..report.tables import markdown_table

    def est(d: Mapping) -> str:
        e = Estimate.from_dict(d)
        if e.value is None:
            return "—"
        ci = f" [{e.lo:+.4f}, {e.hi:+.4f}]" if e.lo is not None and e.hi is not None else ""
        return f"{e.value:+.4f}{ci}"

    sws = data["super_weights"]
    lines = [
        f"# Super-weight ablation: {data['model'].get('name', '?')}",
        "",
        f"- Super weights (layer, row, column, value): {', '.join(f'({a}, {b}, {c}, {v:.4g})' for a, b, c, v in sws)}"
        if sws
        else f"- {data['note']}",
        f"- Split {data['corpus']['split']!r}; Δbpb vs the reference, 95% paired bootstrap intervals over documents.",
        *(
            f"- {arm}: `{a['plan']}`, {a['totals']['bits_per_weight']:.4f} bits per weight"
            for arm, a in data["arms"].items()
        ),
        "",
        markdown_table(
            ["lang", "docs", "bpb ref", "Δbpb uniform", "Δbpb keep:super", "Δbpb zero:super", "uniform − keep"],
            [
                [
                    lang,
                    str(r["n_docs"]),
                    f"{r['bpb_fp']['value']:.4f}",
                    est(r["uniform"]["delta_bpb"]),
                    est(r["keep_super"]["delta_bpb"]),
                    est(r["zero_super"]["delta_bpb"]),
                    est(r["uniform_minus_keep_super_bpb"]),
                ]
                for lang, r in data["languages"].items()
            ],
            "lrrrrrr",
        ),
        "",
    ]
    return "\n".join(lines)
