"""Tasks in a study: a spec's ``[tasks]`` run on every trial's model and plan, their per-item results in the store.

After a spec's trials are scored (bits per byte), each task of ``[tasks]`` runs once per trial, on the trial's
model with its resolved plan applied (the ``q`` arm) and on the reference weights (the ``fp`` arm), exactly as
``audit --tasks`` runs it (:mod:`quant_disparity.tasks`). A task run is keyed by its trial's key and the task's
content (name, settings, :data:`TASK_RESULTS_VERSION`), so the bits-per-byte rows and the trial keys do not
change when a spec gains tasks, a stored task run is never recomputed, and adding a task computes only that
task. Each run is committed in one transaction: interrupting loses at most the task in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .._io import digest_json
from ..corpus import open_corpus
from ..corpus.selection import resolve_langs
from ..tasks import Arms, LanguageItems, Metric, Task, TaskContext, parse_tasks
from .planning import now, trial_assignment
from .spec import ExperimentSpec, TrialSpec
from .store import Store

#: Bump when a stored task number would be computed differently (it enters every task run's key).
TASK_RESULTS_VERSION = "1"


def spec_tasks(spec: ExperimentSpec) -> list[Task]:
    """The tasks of ``spec``'s ``[tasks]`` section (none without one)."""
    return parse_tasks(list(spec.tasks), spec.task_settings()) if spec.tasks else []


def task_key(trial_key: str, task: Task, spec: ExperimentSpec) -> str:
    """The content key of one task run on one trial: the trial's key (model, corpus, plan, device, dtype ...),
    the task's name, the settings it depends on, and the task results version."""
    settings = spec.task_settings().to_dict()
    return digest_json(
        {
            "trial": trial_key,
            "task": task.name,
            "settings": {k: settings[k] for k in task.settings_used},
            "task_results_version": TASK_RESULTS_VERSION,
        },
        32,
    )


def check_spec_tasks(spec: ExperimentSpec) -> None:
    """What can be checked before any model is loaded: every task has items (or data) for every language."""
    tasks = spec_tasks(spec)
    if not tasks:
        return
    corpus = open_corpus(spec.corpus)
    langs = resolve_langs(corpus, spec.corpus.langs)
    for task in tasks:
        task.check(corpus, langs)


def run_spec_tasks(
    spec: ExperimentSpec,
    store: Store,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Run every task of ``spec`` that the store lacks, on every trial (trials must be registered). Each model is
    loaded once, only when one of its task runs is missing. Returns counts."""
    from ..models import load_model
    from ..models.modules import build_module_map
    from ..quant import engine_for

    tasks = spec_tasks(spec)
    summary = {"task_runs": 0, "already_stored": 0, "computed": 0}
    if not tasks:
        return summary
    keys = store.spec_trials(spec.name)
    corpus = open_corpus(spec.corpus)
    langs = resolve_langs(corpus, spec.corpus.langs)
    settings = spec.task_settings()
    by_model: dict[str, list[tuple[TrialSpec, Task, str]]] = {}
    for t in spec.trials:
        for task in tasks:
            summary["task_runs"] += 1
            tk = task_key(keys[t.name], task, spec)
            if store.task_done(tk):
                summary["already_stored"] += 1
            elif tk not in {k for _, _, k in by_model.get(t.model, [])}:
                by_model.setdefault(t.model, []).append((t, task, tk))
    for model, todo in by_model.items():
        log(f"{model}: {len(todo)} task runs to compute ({', '.join(dict.fromkeys(task.name for _, task, _ in todo))})")
        lm = load_model(model, device=device, dtype=dtype, log=log)
        modmap = build_module_map(lm.model)
        engine = engine_for(lm, modmap)
        for t, task, tk in todo:
            assignment = trial_assignment(t, lm, modmap, log)[0]
            ctx = TaskContext(
                lm=lm, corpus=corpus, langs=langs, arms=Arms(engine, assignment), settings=settings, log=log
            )
            log(f"task {task.name} on {t.name}")
            per_lang = task.run(ctx)
            info = {**task.info(), "headline": list(task.headline), "metrics": _descriptions(per_lang)}
            info["examples"] = {it.lang: it.examples for it in per_lang if it.examples}
            if store.commit_task(tk, keys[t.name], task.name, settings.to_dict(), info, _item_rows(per_lang), now()):
                summary["computed"] += 1
    return summary


def _descriptions(per_lang: list[LanguageItems]) -> dict[str, str]:
    return {k: m.description for k, m in per_lang[0].metrics.items()} if per_lang else {}


def _item_rows(per_lang: list[LanguageItems]) -> list[tuple[str, int, str, str, str, float, float]]:
    """The store's rows of one task run: (lang, item, item id, metric, arm, num, den); den 1 for a mean."""
    rows = []
    for it in per_lang:
        for name, m in it.metrics.items():
            for arm in m.arms:
                den = None if m.den is None else m.den[arm]
                for i, item_id in enumerate(it.item_ids):
                    rows.append(
                        (it.lang, i, item_id, name, arm, float(m.num[arm][i]), 1.0 if den is None else float(den[i]))
                    )
    return rows


def load_task_results(spec: ExperimentSpec, store: Store) -> dict[str, dict[str, tuple[dict, list[LanguageItems]]]]:
    """trial name -> task name -> (the run's record, its per-language items), for every task run of ``spec`` in
    the store (a trial or task without a stored run is left out)."""
    tasks = spec_tasks(spec)
    if not tasks:
        return {}
    keys = store.spec_trials(spec.name)
    out: dict[str, dict[str, tuple[dict, list[LanguageItems]]]] = {}
    for t in spec.trials:
        if t.name not in keys:
            continue
        for task in tasks:
            run = store.task_run(task_key(keys[t.name], task, spec))
            if run is not None:
                out.setdefault(t.name, {})[task.name] = (run, _language_items(run["languages"]))
    return out


def _language_items(languages: Mapping[str, dict]) -> list[LanguageItems]:
    out = []
    for lang, entry in languages.items():
        metrics: dict[str, dict[str, dict]] = {}
        for (metric, arm), (num, den) in entry["values"].items():
            metrics.setdefault(metric, {"num": {}, "den": {}})
            metrics[metric]["num"][arm] = num
            metrics[metric]["den"][arm] = den
        out.append(
            LanguageItems(lang, list(entry["item_ids"]), {k: Metric(v["num"], v["den"]) for k, v in metrics.items()})
        )
    return out


__all__ = ["TASK_RESULTS_VERSION", "check_spec_tasks", "load_task_results", "run_spec_tasks", "spec_tasks", "task_key"]
