"""Run tasks next to an audit: per language FP and quantized values with paired intervals, and across languages
the rank correlation of each task's Δ with the audit's Δbpb."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..analysis.stats import Estimate, language_stats
from ..corpus import Corpus
from ..models import LoadedModel
from ..quant import QuantEngine, Scheme
from .base import Arms, Task, TaskContext, TaskSettings
from .stats import rank_correlation, task_language_stats


def delta_bpb_by_language(documents: Sequence[Mapping], n_boot: int, rng: np.random.Generator) -> dict:
    """lang -> (Δbpb estimate, its [n_boot] replicates, interval note), from an audit's document rows."""
    by_lang: dict[str, list[Mapping]] = {}
    for d in documents:
        by_lang.setdefault(d["lang"], []).append(d)
    out = {}
    for lang, rows in by_lang.items():
        arrays = {
            "nll": np.array([r["nll_q"] for r in rows]),
            "nll_ref": np.array([r["nll_fp"] for r in rows]),
            "kl": np.array([r["kl_nats"] for r in rows]),
            "top1": np.array([r["top1_agree"] for r in rows]),
            "n_pred": np.array([r["predicted_tokens"] for r in rows]),
            "bytes": np.array([r["bytes"] for r in rows]),
        }
        s = language_stats(lang, arrays, n_boot, rng)
        out[lang] = (s.estimates["delta_bpb"], s.replicates["delta_bpb"], s.interval_note)
    return out


def run_tasks(
    tasks: Sequence[Task],
    lm: LoadedModel,
    engine: QuantEngine,
    assignment: Mapping[str, Scheme],
    corpus: Corpus,
    langs: list[str],
    settings: TaskSettings,
    audit_documents: Sequence[Mapping],
    *,
    n_boot: int = 1000,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Every task's results, as the ``tasks`` section of audit.json."""
    ctx = TaskContext(lm=lm, corpus=corpus, langs=langs, arms=Arms(engine, assignment), settings=settings, log=log)
    rng = np.random.default_rng(settings.seed)
    dbpb = delta_bpb_by_language(audit_documents, n_boot, rng)
    out: dict = {"settings": settings.to_dict(), "results": []}
    for task in tasks:
        log(f"task {task.name}")
        t0 = time.perf_counter()
        per_lang_items = task.run(ctx)
        elapsed = time.perf_counter() - t0
        stats = [task_language_stats(items, n_boot, rng) for items in per_lang_items]
        out["results"].append(
            {
                **task.info(),
                "headline": list(task.headline),
                "metrics": {k: m.description for k, m in per_lang_items[0].metrics.items()} if per_lang_items else {},
                "languages": [s.to_dict() for s in stats],
                "items": {it.lang: it.item_ids for it in per_lang_items[:1]},
                "examples": {it.lang: it.examples for it in per_lang_items if it.examples},
                "correlation_with_delta_bpb": {m: rank_correlation(stats, m, dbpb, rng) for m in task.headline},
                "delta_bpb": {lang: v[0].to_dict() for lang, v in dbpb.items()},
                "time_s": round(elapsed, 3),
            }
        )
    return out


def _fmt(e: Mapping | None, pct: bool = False) -> str:
    if not e or e.get("value") is None:
        return "undefined"
    k = 100.0 if pct else 1.0
    v = f"{k * e['value']:+.1f}" if pct else f"{e['value']:.3f}"
    ci = e.get("ci95")
    if ci:
        v += f" [{k * ci[0]:.1f}, {k * ci[1]:.1f}]" if pct else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    elif e.get("note"):
        v += " (no interval)"
    return v


def tasks_markdown(section: Mapping) -> str:
    """The tasks section of audit.md: per task, per language, every metric with its interval, and the correlation."""
    lines = ["", "## Tasks", ""]
    for res in section["results"]:
        lines.append(f"### {res['name']}")
        lines.append("")
        lines.append(f"{res['description']}.")
        lines.append("")
        metrics = list(res["metrics"])
        head = ["language", "items", "Δbpb"]
        for m in metrics:
            head += [f"{m} fp", f"{m} q", f"Δ{m}"] if "fp" in res["languages"][0][m] else [f"{m} q"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for row in res["languages"]:
            cells = [row["lang"], str(row["n_items"]), _fmt(res["delta_bpb"].get(row["lang"]))]
            for m in metrics:
                e = row[m]
                if "fp" in e:
                    cells += [_fmt(e["fp"]), _fmt(e["q"]), _fmt(e["delta"])]
                else:
                    cells += [_fmt(e["q"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for m, c in res["correlation_with_delta_bpb"].items():
            sp = Estimate.from_dict(c["spearman"])
            shown = _fmt(c["spearman"])
            note = f" ({sp.note})" if sp.note else ""
            lines.append(f"- Spearman ρ(Δbpb, {m}) over {c['n_languages']} languages: {shown}{note}")
        lines.append("")
    lines.append(
        "Intervals: 95% paired bootstrap over items (both arms from the same resample); the correlation resamples "
        "languages and, within each, both Δbpb (documents) and the task metric (items)."
    )
    return "\n".join(lines) + "\n"
