"""From stored rows to the numbers a study reports: per-trial summaries, per-language estimates, verdicts."""

from __future__ import annotations

from collections.abc import Mapping

from ..analysis.records import StudyResult, TrialLanguage, TrialResult
from ..analysis.stats import interval
from ..corpus import language_info
from ..corpus.documents import base_language
from ..report.tables import by_damage
from .claims import Call, Evaluator, claim_verdicts
from .run import load_results
from .spec import ExperimentSpec
from .store import Store
from .tasks import load_task_results

#: The cross-language statistics of every trial: (name in results.json, the claim call that computes it).
SUMMARY_CALLS = (
    ("disparity", Call("disparity", ())),
    ("gap", Call("gap", ())),
    ("log_disparity", Call("log_disparity", ())),
    ("mean_rel_delta", Call("mean_rel_delta", (("group", "all"),))),
    ("spearman_joshi", Call("spearman", (("measure", "joshi_class"),))),
)


def worst_language(per_lang: Mapping[str, TrialLanguage | Mapping], metric: str = "rel_delta_bpb") -> str:
    """The language with the largest ``metric``; undefined values never win, an exact 0.0 is a value."""
    return min(per_lang, key=lambda lang: by_damage(per_lang[lang], metric))


def protected_layer(resolved: Mapping) -> int | None:
    """The layer a plan protects: the one block all the tensors it keeps lie in (and none outside blocks)."""
    kept_layers = {d["layer"] for d in resolved["tensors"] if d["action"] == "keep"}
    return next(iter(kept_layers)) if len(kept_layers) == 1 and None not in kept_layers else None


def study_results(spec: ExperimentSpec, store: Store) -> StudyResult:
    """Everything a report shows, computed from the store (no number is typed in anywhere)."""
    rows = load_results(spec, store)
    stored_tasks = load_task_results(spec, store)
    ev = Evaluator(spec, rows, {t: {k: items for k, (_, items) in tasks.items()} for t, tasks in stored_tasks.items()})
    names = store.spec_trials(spec.name)
    low, high = ev.groups()
    trials = []
    for t in spec.trials:
        per_lang = {}
        for lang, cols in ev.rows[t.name].items():
            p, r = ev.lang_metrics(t, lang)
            note = ev.interval_note(t, lang)
            per_lang[lang] = TrialLanguage({m: interval(float(p[m]), r[m], note) for m in p}, cols.n_docs)
        info = store.trial(names[t.name])
        summary = {name: ev.call(call, t).estimate() for name, call in SUMMARY_CALLS}
        trials.append(
            TrialResult(
                name=t.name,
                model=t.model,
                scheme=t.scheme,
                plan_name=t.plan_name,
                plan=t.plan,
                key=names[t.name],
                cost=info["info"].get("cost", {}),
                languages=per_lang,
                worst_language=worst_language(per_lang),
                summary=summary,
                finished=info["finished"],
                protected_layer=protected_layer(info["resolved"]),
                calibration=info["info"].get("calibration"),
            )
        )
    langs = ev.languages()
    return StudyResult(
        spec={
            "name": spec.name,
            "description": spec.description,
            "path": spec.path,
            "seed": spec.seed,
            "n_boot": spec.n_boot,
            "verdict_basis": spec.verdict_basis,
            "corpus": vars(spec.corpus),
            "eval": spec.eval.to_dict(),
        },
        groups={
            "low": low,
            "high": high,
            "rule": "from the spec" if spec.groups else f"Joshi class <= {spec.lr_max_class} is low-resource",
        },
        languages=[{**language_info(base_language(x)).to_dict(), "id": x} for x in langs],
        trials=trials,
        verdicts=claim_verdicts(spec, ev),
        tasks=task_results(spec, ev, stored_tasks),
    )


def task_results(spec: ExperimentSpec, ev: Evaluator, stored: Mapping[str, Mapping[str, tuple]]) -> list[dict]:
    """Per trial and task: per language fp / q / Δ of every metric with paired intervals over items, and the
    Spearman correlation of Δbpb with each headline metric across languages (the claims' own numbers)."""
    out = []
    for t in spec.trials:
        for task, (run, items) in stored.get(t.name, {}).items():
            info = run["info"]
            languages = [ev.task_stats(t, task, it.lang).to_dict() for it in items]
            correlation = {
                m: ev.call(Call("task_spearman", (("task", task), ("metric", m))), t).estimate().to_dict()
                for m in info.get("headline", [])
            }
            out.append(
                {
                    "trial": t.name,
                    "task": task,
                    "description": info.get("description", ""),
                    "chance": info.get("chance"),
                    "headline": info.get("headline", []),
                    "metrics": info.get("metrics", {}),
                    "settings": run["settings"],
                    "languages": languages,
                    "spearman_with_delta_bpb": correlation,
                }
            )
    return out


def analyse(spec: ExperimentSpec, store: Store) -> dict:
    """:func:`study_results` as the mapping written to results.json (and read by the reports)."""
    return study_results(spec, store).to_dict()
