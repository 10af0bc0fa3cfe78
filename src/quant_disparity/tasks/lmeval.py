"""Any lm-evaluation-harness task, on the audit's loaded model under both arms: ``lmeval:TASK``.

``TASK`` is anything lm-eval's :class:`~lm_eval.tasks.TaskManager` knows by name (a task, a group or a tag;
with ``--lmeval-include DIR`` also the task YAMLs in ``DIR``, lm-eval's ``--include_path``). The name expands
to lm-eval's leaf tasks (read from lm-eval's task index, so only the leaf tasks that run are built and load
their datasets); each leaf task has one language:

- ``metadata: {language: ID}`` in its YAML when given (any language id or alias the project accepts), else
- the suffix of its name: the last two ``_``-parts when they form an id such as ``eng_Latn``
  (``belebele_eng_Latn``), else the last part as an ISO 639 code or alias (``xnli_en``, ``xstorycloze_zh``).

Every audited language needs at least one leaf task (a language without one is refused before the model is
loaded); leaf tasks of languages not audited are not run. The model object already loaded (with its
tokenizer) is wrapped in lm-eval's ``HFLM`` and run through ``lm_eval.simple_evaluate`` once per arm, with
the same seeds (so few-shot examples are the same in both arms), ``log_samples=True`` and no lm-eval
bootstrap. Per item (a document of a leaf task) every metric lm-eval gives a number for and averages
(aggregation ``mean``) becomes a metric of both arms; ``acc`` is named ``accuracy`` (the headline) and
``acc_norm`` ``accuracy_norm``; a filter other than ``none`` is appended (``exact_match_strict-match``).
Intervals are then the same paired bootstrap over items as every task's (:mod:`.stats`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import Corpus
from ..corpus.languages import _aliases, _iso3, normalize_id
from ..errors import UserError, did_you_mean
from .base import TASKS, LanguageItems, Metric, Task, TaskContext, TaskKind, TaskSettings

LM_EVAL_INSTALL = "pip install 'quant-disparity[tasks]'"
#: Requests per lm-eval batch.
LM_EVAL_BATCH = 8
#: lm-eval metric names shown under the project's names.
RENAMED = {"acc": "accuracy", "acc_norm": "accuracy_norm"}


def import_lm_eval() -> Any:
    """The ``lm_eval`` module, or a one-line UserError with the install command."""
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError:
        raise UserError(
            "lmeval tasks need lm-evaluation-harness (lm_eval), which is not installed", f"run {LM_EVAL_INSTALL}"
        ) from None
    return lm_eval


@functools.cache
def task_manager(include: str) -> Any:
    """lm-eval's task index (its own tasks and those under ``include``), built once per folder (it takes seconds)."""
    lm_eval = import_lm_eval()
    if include and not Path(include).is_dir():
        raise UserError(f"--lmeval-include {include} is not a folder", "give the folder holding the task YAMLs")
    with quiet_lm_eval():
        return lm_eval.tasks.TaskManager(include_path=include or None)


def index_leaves(tm: Any, name: str, depth: int = 0) -> dict[str, Any] | None:
    """Leaf task name -> its YAML's ``metadata``, for a task, group or tag, read from lm-eval's index without
    building any task (so no dataset loads for languages not run); None when the index cannot tell."""
    entry = tm.task_index.get(name)
    if entry is None or depth > 20:
        return None
    kind = entry.kind.name
    if kind in ("TASK", "PY_TASK"):
        return {name: (entry.cfg or {}).get("metadata")}
    if kind == "TAG":
        members = [n for n, e in tm.task_index.items() if name in e.tags]
    elif kind == "GROUP":
        members = (entry.cfg or {}).get("task") or []
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            return None  # inline task configs: left to lm-eval to build
    else:
        return None
    out: dict[str, Any] = {}
    for member in members:
        sub = index_leaves(tm, member, depth + 1)
        if sub is None:
            return None
        out.update(sub)
    return out


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's log at ERROR while it runs (its per-task notes on default aggregations are not the user's)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _code_matches(code: str) -> Any:
    """A predicate on language ids for one code (``eng_Latn``, ``en``, ``zh``), or None when it names none."""
    norm = normalize_id(code)
    if norm:
        return lambda lang: lang == norm
    ids = _aliases().get(code.lower())
    if ids:
        return lambda lang: lang in ids
    iso = _iso3(code) if code.isalpha() and 2 <= len(code) <= 3 else None
    if iso:
        return lambda lang: lang.split("_")[0] == iso
    return None


def task_language(name: str, metadata: Mapping | None) -> tuple[str, Any] | None:
    """``(code, predicate on language ids)`` for a leaf task: its ``metadata.language``, else its name's suffix."""
    tagged = (metadata or {}).get("language")
    if tagged:
        match = _code_matches(str(tagged))
        if match is None:
            raise UserError(f"lm-eval task {name!r}: metadata language {tagged!r} is not a language id")
        return str(tagged), match
    parts = name.split("_")
    suffixes = (["_".join(parts[-2:])] if len(parts) >= 3 else []) + ([parts[-1]] if len(parts) >= 2 else [])
    for code in suffixes:
        match = _code_matches(code)
        if match is not None:
            return code, match
    return None


class LmEval(Task):
    headline = ("accuracy",)
    settings_used = ("seed", "lmeval_include")
    chance = None

    def __init__(self, task: str, settings: TaskSettings):
        self.task = task
        self.name = f"lmeval:{task}"
        self.settings = settings
        self.description = f"lm-evaluation-harness task {task!r} (per-item metrics of lm-eval, both arms)"
        self._plans: dict[tuple[str, ...], dict[str, list[str]]] = {}

    def plan(self, langs: Sequence[str]) -> dict[str, list[str]]:
        """lang -> the leaf tasks run for it; one-line UserErrors for an unknown task or a missing language."""
        import_lm_eval()
        key = tuple(langs)
        if key in self._plans:
            return self._plans[key]
        tm = task_manager(self.settings.lmeval_include)
        if self.task not in tm.all_tasks:
            raise UserError(
                f"unknown lm-eval task {self.task!r}{did_you_mean(self.task, tm.all_tasks)}",
                "run `lm_eval ls tasks` to list them, or give --lmeval-include DIR for your own YAMLs",
            )
        found: dict[str, Any] = {}
        leaves = index_leaves(tm, self.task)
        if leaves is None:  # the index cannot tell the leaf tasks: build them (their datasets load)
            leaves = {leaf: getattr(obj.config, "metadata", None) for leaf, obj in self._load(tm, [self.task]).items()}
        for leaf, metadata in leaves.items():
            named = task_language(leaf, metadata)
            if named is not None:
                found[leaf] = named
        out: dict[str, list[str]] = {}
        for lang in langs:
            chosen = [leaf for leaf, (_, match) in found.items() if match(lang)]
            if not chosen:
                codes = sorted({code for code, _ in found.values()})
                have = codes[:12] + ([f"... {len(codes)} in all"] if len(codes) > 12 else [])
                raise UserError(
                    f"lm-eval task {self.task!r} has no subtask in {lang}"
                    + (f" (its languages: {', '.join(have)})" if have else " (no subtask names a language)"),
                    "leave that language out of --langs, or name the language in the task (suffix _xx or"
                    " metadata: {language: xx})",
                )
            out[lang] = sorted(chosen)
        self._load(tm, sorted({leaf for ls in out.values() for leaf in ls}))  # only the languages run
        self._plans[key] = out
        return out

    def _load(self, tm: Any, names: list[str]) -> dict[str, Any]:
        """lm-eval's leaf tasks of ``names``, built (their datasets loaded): a UserError when one cannot be."""
        try:
            with quiet_lm_eval():
                return dict(tm.load(names)["tasks"])
        except Exception as e:  # a dataset lm-eval cannot load (missing, offline) is the user's to fix
            msg = " ".join(str(e).split())[:300]
            raise UserError(
                f"lm-eval cannot load task {self.task!r}: {type(e).__name__}: {msg}",
                "check that its dataset is available",
            ) from None

    def check(self, corpus: Corpus, langs: Sequence[str]) -> None:
        self.plan(langs)

    def _evaluate(self, hflm: Any, leaves: list[str]) -> dict:
        lm_eval = import_lm_eval()
        seed = self.settings.seed
        out = lm_eval.simple_evaluate(
            model=hflm,
            tasks=leaves,
            task_manager=task_manager(self.settings.lmeval_include),
            log_samples=True,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        return out

    def run(self, ctx: TaskContext) -> list[LanguageItems]:
        import_lm_eval()
        from lm_eval.models.huggingface import HFLM

        plan = self.plan(ctx.langs)
        leaves = sorted({leaf for ls in plan.values() for leaf in ls})
        kwargs: dict[str, Any] = {"batch_size": LM_EVAL_BATCH}
        if ctx.lm.info.max_length:
            kwargs["max_length"] = ctx.lm.info.max_length
        ctx.log(f"lm-eval: {', '.join(leaves)}")
        with quiet_lm_eval():
            hflm = HFLM(pretrained=ctx.lm.model, tokenizer=ctx.lm.tokenizer, **kwargs)
            results = ctx.arms.each(lambda: self._evaluate(hflm, leaves))
        out = [self._language(lang, plan[lang], results) for lang in ctx.langs]
        shared = [m for m in out[0].metrics if all(m in it.metrics for it in out)] if out else []
        if not shared:
            raise UserError(f"lm-eval task {self.task!r} gave no per-item metric that every language has")
        for it in out:
            it.metrics = {m: it.metrics[m] for m in shared}
        self.headline = ("accuracy",) if "accuracy" in shared else (shared[0],)
        return out

    def _language(self, lang: str, leaves: list[str], results: Mapping[str, dict]) -> LanguageItems:
        values: dict[str, dict[str, list[float]]] = {}  # metric -> arm -> per item
        higher: dict[str, bool] = {}
        item_ids: list[str] = []
        examples: list[dict] = []
        for leaf in leaves:
            per_arm = {}
            for arm, out in results.items():
                per_arm[arm] = {(s["doc_id"], s["filter"]): s for s in out["samples"][leaf]}
            keys = list(per_arm["fp"])
            assert set(keys) == set(per_arm["q"]), "both arms answer the same items"
            aggregations = _aggregations(results["fp"], leaf)
            docs = list(dict.fromkeys(doc for doc, _ in keys))
            item_ids += [str(doc) if len(leaves) == 1 else f"{leaf}/{doc}" for doc in docs]
            for doc, filt in keys:
                for arm in ("fp", "q"):
                    s = per_arm[arm][(doc, filt)]
                    for m in s["metrics"]:
                        v = s.get(m)
                        if not isinstance(v, (bool, int, float)) or aggregations.get(m, "mean") != "mean":
                            continue
                        name = RENAMED.get(m, m) + ("" if filt == "none" else f"_{filt}")
                        values.setdefault(name, {}).setdefault(arm, []).append(float(v))
                        higher[name] = bool(results["fp"].get("higher_is_better", {}).get(leaf, {}).get(m, True))
            if not examples and keys:
                s = per_arm["fp"][keys[0]]
                examples.append(
                    {
                        "item": item_ids[-len(docs)],
                        "task": leaf,
                        "prompt": str(s["arguments"][0][0])[-500:],
                        "target": str(s["target"])[:200],
                        "fp": {m: per_arm["fp"][keys[0]].get(m) for m in s["metrics"]},
                        "q": {m: per_arm["q"][keys[0]].get(m) for m in s["metrics"]},
                    }
                )
        n = len(item_ids)
        metrics = {}
        for name, arms in values.items():
            if len(arms.get("fp", [])) != n or len(arms.get("q", [])) != n:
                continue  # a metric not every item of the language has
            metrics[name] = Metric(
                {arm: np.array(v, dtype=np.float64) for arm, v in arms.items()},
                higher_is_better=higher[name],
                description=f"lm-eval {name} (mean over items)",
            )
        return LanguageItems(lang, item_ids, metrics, examples)


def _aggregations(out: Mapping, leaf: str) -> dict[str, str]:
    """metric -> lm-eval's aggregation name for it, from the task's config (mean when not given)."""
    config = out.get("configs", {}).get(leaf, {})
    agg = {}
    for entry in config.get("metric_list") or []:
        a = entry.get("aggregation", "mean")
        agg[str(entry.get("metric"))] = a if isinstance(a, str) else getattr(a, "__name__", str(a))
    return agg


def _build(arg: str | None, settings: TaskSettings) -> Task:
    assert arg
    return LmEval(arg, settings)


TASKS.register(
    TaskKind(
        "lmeval", "any lm-evaluation-harness task, per language (name suffix or metadata.language)", _build, "TASK"
    )
)
