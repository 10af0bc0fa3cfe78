"""From stored rows to the numbers a study reports: per-trial summaries, per-language estimates, verdicts."""

from __future__ import annotations

from ..corpus import language_info
from ..corpus.documents import base_language
from ..report.tables import by_damage
from .claims import Evaluator, evaluate_claims
from .run import load_results
from .spec import ExperimentSpec
from .store import Store


def _est(point: float, reps, note: str | None = None) -> dict:
    """Value and interval; with ``note`` (too few documents) the value alone, the note saying why."""
    from ..analysis.stats import _ci

    return (_ci(point, reps[:0], note) if note else _ci(point, reps)).to_dict()


def worst_language(per_lang: dict[str, dict], metric: str = "rel_delta_bpb") -> str:
    """The language with the largest ``metric``; undefined values never win, an exact 0.0 is a value."""
    return min(per_lang, key=lambda lang: by_damage(per_lang[lang], metric))


def analyse(spec: ExperimentSpec, store: Store) -> dict:
    """Everything a report shows, computed from the store (no number is typed in anywhere)."""
    rows = load_results(spec, store)
    ev = Evaluator(spec, rows)
    names = store.spec_trials(spec.name)
    low, high = ev.groups()
    trials = []
    for t in spec.trials:
        per_lang = {}
        for lang in rows[t.name]:
            p, r = ev.lang_metrics(t, lang)
            note = ev.interval_note(t, lang)
            per_lang[lang] = {m: _est(float(p[m]), r[m], note) for m in p}
            per_lang[lang]["n_docs"] = int(len(rows[t.name][lang]["nll"]))
        info = store.trial(names[t.name])
        from .claims import Call

        summary = {k: ev.call(Call(k, ()), t).to_dict() for k in ("disparity", "gap", "log_disparity")}
        summary["mean_rel_delta"] = ev.call(Call("mean_rel_delta", (("group", "all"),)), t).to_dict()
        summary["spearman_joshi"] = ev.call(Call("spearman", (("measure", "joshi_class"),)), t).to_dict()
        worst = worst_language(per_lang)
        kept_layers = {d["layer"] for d in info["resolved"]["tensors"] if d["action"] == "keep"}
        trials.append({
            "name": t.name, "model": t.model, "scheme": t.scheme, "plan_name": t.plan_name, "plan": t.plan,
            "key": names[t.name], "cost": info["info"].get("cost", {}), "languages": per_lang,
            "worst_language": worst, "summary": summary, "finished": info["finished"],
            # a plan that keeps tensors of exactly one block (and nothing outside blocks) protects that layer
            "protected_layer": next(iter(kept_layers)) if len(kept_layers) == 1 and None not in kept_layers else None,
        })
    langs = ev.languages()
    return {
        "spec": {"name": spec.name, "description": spec.description, "path": spec.path, "seed": spec.seed,
                 "n_boot": spec.n_boot, "verdict_basis": spec.verdict_basis, "corpus": vars(spec.corpus), "eval": spec.eval.to_dict()},
        "groups": {"low": low, "high": high,
                   "rule": "from the spec" if spec.groups else f"Joshi class <= {spec.lr_max_class} is low-resource"},
        "languages": [{**language_info(base_language(x)).to_dict(), "id": x} for x in langs],
        "trials": trials,
        "verdicts": evaluate_claims(spec, ev),
    }
