"""Claims: comparisons of measured quantities, decided with bootstrap intervals.

An expression is one comparison (``<``, ``>``, ``<=``, ``>=``) between arithmetic (``+ - * /``, numbers) of
metric calls, parsed with :mod:`ast` (nothing is ``eval``-ed)::

    disparity(plan='l0_last') < disparity(plan='none')
    delta_bpb(lang='heb', plan='none') > 2 * delta_bpb(lang='eng', plan='none')

Per-language metrics (need ``lang=``): ``bpb``, ``bpb_fp``, ``delta_bpb``, ``rel_delta_bpb``, ``kl`` (bits per
token), ``top1``, ``ppl_ratio``, ``log_degradation`` (the original log's token-perplexity "degradation %").
Across languages: ``disparity`` (mean relative Δbpb, low- over high-resource; undefined when the
high-resource mean's interval includes zero), ``gap`` (low minus high), ``log_disparity`` (the log's formula:
ratio of mean token-perplexity degradation %), ``mean_rel_delta(group=)``, ``mean_log_degradation(group=)``,
``spearman(measure=)`` (relative Δbpb vs a resource measure). Trial filters: ``model``, ``scheme``, ``plan``;
dimensions a claim leaves open give one verdict per value.

Task metrics (a spec with ``[tasks]``; ``task=`` names one of them, ``metric=`` one of its metrics, by default its
first headline metric, e.g. ``accuracy``): per language ``task_q`` (the quantized model's value), ``task_fp`` (the
reference's) and ``task_delta`` (q - fp; for metrics that exist under both arms); across languages
``mean_task_delta(group=)`` and ``task_spearman`` (Spearman of Δbpb with the task's Δ, or with its value for a
metric that compares q with fp already, such as chrF), e.g.
``task_delta(task='cloze', lang='heb', plan='none') < task_delta(task='cloze', lang='eng', plan='none')``. Their
intervals resample the task's items (the same resample for every trial of a model: paired), as bits per byte
resample documents.

Verdict, from the 95% interval of (left - right): **supported** when it lies wholly on the claimed side,
**refuted** when wholly on the other side, **inconclusive** when it contains zero or a side is undefined or
has no interval (a language with fewer than ``MIN_DOCS_FOR_INTERVAL`` documents, or a group statistic with
such a member). A spec with ``verdict_basis = "points"`` (the original log's setup: one sentence per
language, nothing to resample) instead compares point values, and every record says so in ``basis``.

Many claims at once: every instance also gets a **family-wise** verdict, from Holm's step-down over all
instances of the run at alpha = 0.05 (it controls the family-wise error rate under any dependence; the
instances share documents). Its p-value per instance, ``p_value``, is the bootstrap z-test of
(left - right) = 0: ``2 * Phi(-|d| / se)`` with ``se`` the standard deviation of the difference's bootstrap
replicates. The record also has ``p_boot``, the percentile-bootstrap p
``min(1, 2 min((1 + #{r <= 0}) / (B + 1), (1 + #{r >= 0}) / (B + 1)))``, which is what the 95% interval
inverts, but it cannot go below 2 / (B + 1) (0.002 with 1000 replicates) while Holm's first threshold is
0.05 / m (0.00078 for the 64 instances of the replication): with it no family of more than 25 instances could
ever reject. The family-wise verdict is the per-instance verdict when Holm rejects *and* that verdict is
supported or refuted (so a skewed statistic whose z-test and percentile interval disagree stays
inconclusive), else inconclusive; an instance without replicates counts as p = 1 and stays in the family.
``verdict_familywise`` is ``None`` under ``verdict_basis = "points"``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from ..analysis.records import DocumentColumns, Verdict
from ..analysis.stats import (
    MIN_DOCS_FOR_INTERVAL,
    NO_REPLICATES,
    Estimate,
    interval,
    language_metrics,
    may_be_zero,
    no_interval_note,
    resample_counts,
    spearman_replicates,
    spearman_undefined,
    too_few_documents,
    warn_too_few_documents,
)
from ..errors import UserError, did_you_mean
from ..tasks.base import LanguageItems
from ..tasks.stats import TaskLanguageStats, task_language_stats

LANG_METRICS = {
    "bpb": "bpb_q",
    "bpb_fp": "bpb_fp",
    "delta_bpb": "delta_bpb",
    "rel_delta_bpb": "rel_delta_bpb",
    "kl": "kl_bits",
    "top1": "top1_agreement",
    "ppl_ratio": "ppl_ratio",
    "log_degradation": "log_degradation_pct",
}
GROUP_METRICS = {"disparity", "gap", "log_disparity", "mean_rel_delta", "mean_log_degradation", "spearman"}
#: Task metrics per language (function -> the arm it reads) and across languages.
TASK_LANG_METRICS = {"task_q": "q", "task_fp": "fp", "task_delta": "delta"}
TASK_GROUP_METRICS = {"mean_task_delta", "task_spearman"}
_FUNCTIONS = [*LANG_METRICS, *TASK_LANG_METRICS, *sorted(GROUP_METRICS | TASK_GROUP_METRICS)]
FILTERS = ("model", "scheme", "plan")
_OPS = {ast.Lt: "<", ast.Gt: ">", ast.LtE: "<=", ast.GtE: ">="}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass(frozen=True)
class Call:
    fn: str
    kwargs: tuple[tuple[str, str], ...]

    def kw(self) -> dict[str, str]:
        return dict(self.kwargs)

    def __str__(self) -> str:
        return f"{self.fn}({', '.join(f'{k}={v!r}' for k, v in self.kwargs)})"


def parse_expr(expr: str, claim_id: str) -> tuple[ast.AST, str, ast.AST, list[Call]]:
    """(left, operator, right, calls) of a claim expression; raises UserError for anything outside the grammar."""
    where = f"claim {claim_id}"
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as e:
        raise UserError(
            f"{where}: cannot parse {expr!r} ({e.msg})", "write e.g. disparity(plan='a') < disparity(plan='b')"
        ) from None
    if not isinstance(tree, ast.Compare) or len(tree.ops) != 1 or type(tree.ops[0]) not in _OPS:
        raise UserError(f"{where}: expected one comparison (<, >, <=, >=) in {expr!r}")
    calls: list[Call] = []

    def check(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            check(node.operand)
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        ):
            pass
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in _FUNCTIONS:
                raise UserError(
                    f"{where}: unknown function {name!r}{did_you_mean(name, _FUNCTIONS)}",
                    f"functions: {', '.join(_FUNCTIONS)}",
                )
            per_lang = name in LANG_METRICS or name in TASK_LANG_METRICS
            if node.args:
                raise UserError(f"{where}: {name}() takes keyword arguments only, e.g. {name}(plan='none')")
            kws = []
            for k in node.keywords:
                if not isinstance(k.value, ast.Constant) or not isinstance(k.value.value, str):
                    raise UserError(f"{where}: {name}({k.arg}=...) must be a quoted string")
                allowed = set(FILTERS) | ({"lang"} if per_lang else set())
                allowed |= {"group"} if name in ("mean_rel_delta", "mean_log_degradation", "mean_task_delta") else set()
                allowed |= {"measure"} if name == "spearman" else set()
                allowed |= {"task", "metric"} if name in TASK_LANG_METRICS or name in TASK_GROUP_METRICS else set()
                if k.arg not in allowed:
                    raise UserError(
                        f"{where}: {name}() has no argument {k.arg!r}", f"it takes {', '.join(sorted(allowed))}"
                    )
                kws.append((k.arg, k.value.value))
            if per_lang and "lang" not in dict(kws):
                raise UserError(f"{where}: {name}() needs lang=", f"e.g. {name}(lang='heb', plan='none')")
            if (name in TASK_LANG_METRICS or name in TASK_GROUP_METRICS) and "task" not in dict(kws):
                raise UserError(f"{where}: {name}() needs task=", f"e.g. {name}(task='cloze', ...)")
            calls.append(Call(name, tuple(kws)))
        else:
            raise UserError(
                f"{where}: {ast.unparse(node)!r} is not allowed in a claim", "use metric calls, numbers and + - * /"
            )

    check(tree.left)
    check(tree.comparators[0])
    return tree.left, _OPS[type(tree.ops[0])], tree.comparators[0], calls


def _matches(trial, filters: dict[str, str]) -> bool:
    for key, value in filters.items():
        have = {"model": trial.model, "scheme": trial.scheme, "plan": trial.plan_name}[key]
        if key == "scheme" and have == "":  # a plan without {scheme}: the same trial for every scheme
            continue
        if have != value:
            return False
    return True


def instances(spec, claim) -> list[tuple[dict[str, str], dict[Call, Any]]]:
    """Expand a claim over the dimensions it leaves open; for each instance, the trial of every call (the spec's
    ``TrialSpec``, typed ``Any``: claims imports nothing from spec, so the import graph stays one-way)."""
    _, _, _, calls = parse_expr(claim.expr, claim.id)
    where = dict(claim.where)
    values = {d: sorted({getattr(t, d) for t in spec.trials} - {""}) for d in FILTERS if d != "plan"}
    # a dimension is expanded when a call leaves it open and the grid has more than one value for it
    open_dims = [d for d in values if d not in where and len(values[d]) > 1 and any(d not in c.kw() for c in calls)]
    out = []
    for combo in itertools.product(*(values[d] for d in open_dims)):
        inst = dict(zip(open_dims, combo))
        if not any(_matches(t, {**where, **inst}) for t in spec.trials):
            continue  # e.g. a scheme the spec runs on one model only: no such instance, not an error
        chosen: dict[Call, Any] = {}
        for call in calls:
            filters = {**where, **inst, **{k: v for k, v in call.kw().items() if k in FILTERS}}
            hits = [t for t in spec.trials if _matches(t, filters)]
            if len(hits) != 1:
                what = "no trial" if not hits else f"{len(hits)} trials ({', '.join(t.name for t in hits[:4])})"
                raise UserError(
                    f"claim {claim.id}: {call} matches {what} of the grid" + (f" for {inst}" if inst else ""),
                    "name an existing plan, model and scheme" if not hits else "pin model, scheme or plan",
                )
            chosen[call] = hits[0]
        out.append((inst, chosen))
    return out


def validate_claims(spec, claims=None) -> None:
    """Check ``claims`` (default: all of the spec's) without any result: syntax, languages, groups, measures."""
    from ..corpus import load_corpus

    corpus = None
    for claim in spec.claims if claims is None else claims:
        _, _, _, calls = parse_expr(claim.expr, claim.id)
        for call in calls:
            kw = call.kw()
            if "lang" in kw:
                corpus = corpus or load_corpus(
                    spec.corpus.name,
                    flores_split=spec.corpus.flores_split,
                    sentences_per_doc=spec.corpus.sentences_per_doc,
                )
                lang = corpus.resolve(kw["lang"])
                if lang not in [corpus.resolve(x) for x in spec.corpus.langs]:
                    raise UserError(f"claim {claim.id}: {call} names a language the spec does not evaluate")
            if kw.get("group", "low") not in ("low", "high", "all"):
                raise UserError(f"claim {claim.id}: group must be low, high or all")
            if "task" in kw:
                task_metric(spec, call, claim.id)
            if "measure" in kw:
                from ..corpus.resources import MEASURES

                if kw["measure"] not in MEASURES:
                    raise UserError(
                        f"claim {claim.id}: unknown measure {kw['measure']!r}", f"use {', '.join(MEASURES)}"
                    )
        instances(spec, claim)


def task_metric(spec, call: Call, claim_id: str) -> str:
    """The metric a task call reads (``metric=``, else the task's first headline metric), checked against the
    spec's ``[tasks]`` and, where the task knows its metrics before running, against those and their arms."""
    from ..tasks import parse_tasks

    kw = call.kw()
    names = list(getattr(spec, "tasks", ()))
    if kw["task"] not in names:
        raise UserError(
            f"claim {claim_id}: {call} names task {kw['task']!r}, which the spec does not run"
            f"{did_you_mean(kw['task'], names)}",
            f"add it to [tasks] names (the spec runs: {', '.join(names) or 'no tasks'})",
        )
    (task,) = parse_tasks([kw["task"]], spec.task_settings())
    metric = kw.get("metric", task.headline[0])
    if task.metric_arms:
        if metric not in task.metric_arms:
            raise UserError(
                f"claim {claim_id}: task {task.name} has no metric {metric!r}{did_you_mean(metric, task.metric_arms)}",
                f"its metrics: {', '.join(task.metric_arms)}",
            )
        if call.fn in ("task_fp", "task_delta", "mean_task_delta") and "fp" not in task.metric_arms[metric]:
            raise UserError(
                f"claim {claim_id}: {task.name}'s {metric} compares the quantized model with the reference already "
                f"(no reference value, no Δ)",
                f"use task_q(task={task.name!r}, metric={metric!r}, ...)",
            )
    return metric


# -- evaluation ----------------------------------------------------------------------------------------------------
@dataclass
class Value:
    point: float | None
    reps: np.ndarray | None
    note: str = ""

    @property
    def defined(self) -> bool:
        return self.point is not None and np.isfinite(self.point)

    def estimate(self) -> Estimate:
        """The value with its 95% interval (:func:`..analysis.stats.interval`), and its note."""
        if not self.defined:
            return Estimate(None, note=self.note or None)
        assert self.point is not None  # defined
        est = interval(self.point, NO_REPLICATES if self.reps is None else self.reps)
        return Estimate(self.point, est.lo, est.hi, self.note or None)

    def ci(self) -> list[float] | None:
        est = self.estimate()
        if est.lo is None:
            return None
        assert est.hi is not None  # an interval has both bounds
        return [est.lo, est.hi]

    def to_dict(self) -> dict:
        return self.estimate().to_dict()


def _combine(a: Value, b: Value, op: Callable) -> Value:
    """``op`` of two values; no replicates (no interval) when either has none, its note carried along."""
    if not (a.defined and b.defined):
        return Value(None, None, a.note or b.note or "undefined operand")
    if op is operator.truediv and b.point == 0:
        return Value(None, None, "division by a measured zero")
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = None if a.reps is None or b.reps is None else op(a.reps, b.reps)
        return Value(float(op(a.point, b.point)), reps, a.note or b.note)


class Evaluator:
    """Computes metric values (point estimate and bootstrap replicates) from stored per-document rows.

    Replicates resample each (model, language)'s documents with a generator seeded by the spec's seed and the
    (model, language) pair, so every trial of a model shares the same resamples: comparisons are paired.
    """

    def __init__(
        self,
        spec,
        rows_by_trial: Mapping[str, Mapping[str, DocumentColumns | Mapping[str, np.ndarray]]],
        task_items: Mapping[str, Mapping[str, Sequence[LanguageItems]]] | None = None,
    ):
        self.spec = spec
        # trial name -> task name -> its per-language items (a spec with [tasks])
        self.task_items = {
            t: {task: {it.lang: it for it in items} for task, items in tasks.items()}
            for t, tasks in (task_items or {}).items()
        }
        self._task_stats: dict[tuple[str, str, str], TaskLanguageStats] = {}
        # trial name -> lang -> the documents' columns (a record, or a mapping of the same columns)
        self.rows = {
            t: {lang: DocumentColumns.of(cols) for lang, cols in langs.items()} for t, langs in rows_by_trial.items()
        }
        self._weights: dict[tuple[str, str], np.ndarray] = {}
        self._groups: tuple[list[str], list[str]] | None = None
        self.points = getattr(spec, "verdict_basis", "intervals") == "points"
        self._warned: set[str] = set()

    @functools.cached_property
    def corpus(self):
        """The spec's corpus, loaded once (language names in claims and groups resolve against it)."""
        from ..corpus import load_corpus

        c = self.spec.corpus
        return load_corpus(c.name, flores_split=c.flores_split, sentences_per_doc=c.sentences_per_doc)

    def weights(self, model: str, lang: str, n: int) -> np.ndarray:
        key = (model, lang)
        if key not in self._weights:
            h = int.from_bytes(hashlib.sha256(f"{model}\0{lang}".encode()).digest()[:8], "big")
            self._weights[key] = resample_counts(n, self.spec.n_boot, np.random.default_rng([self.spec.seed, h]))
        return self._weights[key]

    def lang_metrics(self, trial, lang: str) -> tuple[dict, dict]:
        cols = self.rows[trial.name][lang]
        sums = cols.sums()
        w = self.weights(trial.model, lang, cols.n_docs)
        return (
            language_metrics({k: v.sum() for k, v in sums.items()}),
            language_metrics({k: w @ v for k, v in sums.items()}),
        )

    def interval_note(self, trial, lang: str) -> str | None:
        """Why ``lang`` has no interval in ``trial`` (too few documents), else None; warns once per language.

        Under ``verdict_basis = "points"`` nothing has an interval, by the spec's choice: no warning."""
        n = self.rows[trial.name][lang].n_docs
        note = too_few_documents(n)
        if note and not self.points and lang not in self._warned:
            self._warned.add(lang)
            warn_too_few_documents(lang, n)
        return note

    def _short(self, trial, langs: list[str]) -> list[str]:
        return [lang for lang in langs if self.interval_note(trial, lang)]

    def languages(self) -> list[str]:
        return list(next(iter(self.rows.values())).keys()) if self.rows else []

    def groups(self) -> tuple[list[str], list[str]]:
        """(low-resource, high-resource) languages: from the spec's groups, else by Joshi class; computed once."""
        if self._groups is None:
            self._groups = self._compute_groups()
        return self._groups

    def _compute_groups(self) -> tuple[list[str], list[str]]:
        from ..corpus import language_info
        from ..corpus.documents import base_language

        langs = self.languages()
        if self.spec.groups:
            low = [self.corpus.resolve(x) for x in self.spec.groups[0]]
            high = [self.corpus.resolve(x) for x in self.spec.groups[1]]
            return [x for x in langs if x in low], [x for x in langs if x in high]
        low, high = [], []
        for lang in langs:
            cls = language_info(base_language(lang)).resources.joshi_class
            if cls is not None:
                (low if cls <= self.spec.lr_max_class else high).append(lang)
        return low, high

    def group_mean(self, trial, langs: list[str], metric: str) -> Value:
        if not langs:
            return Value(None, None, "empty group")
        pts, reps = zip(*(self.lang_metrics(trial, lang) for lang in langs))
        point = float(np.mean([p[metric] for p in pts]))
        if self.points:
            return Value(point, None)
        short = self._short(trial, langs)
        if short:  # the value stays; an interval treating those languages' damage as exact would be too narrow
            return Value(point, None, no_interval_note(short))
        return Value(point, np.mean([r[metric] for r in reps], axis=0))

    def task_stats(self, trial, task: str, lang: str) -> TaskLanguageStats:
        """One language's task statistics in ``trial``; its item resample is seeded by the spec's seed and the
        (model, language, task), so every trial of a model shares it (comparisons are paired)."""
        key = (trial.name, task, lang)
        if key not in self._task_stats:
            try:
                items = self.task_items[trial.name][task][lang]
            except KeyError:
                raise UserError(
                    f"no stored result of task {task} for {lang} in trial {trial.name}",
                    "run the spec first: quant-disparity run SPEC",
                ) from None
            h = int.from_bytes(hashlib.sha256(f"task\0{trial.model}\0{lang}\0{task}".encode()).digest()[:8], "big")
            rng = np.random.default_rng([self.spec.seed, h])
            self._task_stats[key] = task_language_stats(items, self.spec.n_boot, rng)
        return self._task_stats[key]

    def _task_value(self, trial, task: str, lang: str, metric: str, arm: str) -> Value:
        s = self.task_stats(trial, task, lang)
        if metric not in s.estimates:
            raise UserError(
                f"task {task} has no metric {metric!r}{did_you_mean(metric, list(s.estimates))}",
                f"its metrics: {', '.join(s.estimates)}",
            )
        if arm not in s.estimates[metric]:
            raise UserError(
                f"task {task}'s {metric} has no {arm} value", f"use task_q(task={task!r}, metric={metric!r})"
            )
        point = s.estimates[metric][arm].value
        if point is None:
            return Value(None, None, f"{lang}: {task} {metric} undefined")
        if self.points:
            return Value(point, None)
        if s.interval_note:
            return Value(point, None, f"{lang}: {s.interval_note}")
        return Value(point, s.arm_replicates[metric][arm])

    def _task_call(self, call: Call, trial) -> Value:
        kw = call.kw()
        task = kw["task"]
        metric = task_metric(self.spec, call, "")
        if call.fn in TASK_LANG_METRICS:
            return self._task_value(trial, task, self.corpus.resolve(kw["lang"]), metric, TASK_LANG_METRICS[call.fn])
        if call.fn == "mean_task_delta":
            low, high = self.groups()
            group = {"low": low, "high": high, "all": self.languages()}[kw.get("group", "all")]
            if not group:
                return Value(None, None, "empty group")
            values = [self._task_value(trial, task, lang, metric, "delta") for lang in group]
            if not all(v.defined for v in values):
                return Value(None, None, next(v.note for v in values if not v.defined))
            point = float(np.mean([cast(float, v.point) for v in values]))
            if self.points or any(v.reps is None for v in values):
                return Value(point, None, next((v.note for v in values if v.note), ""))
            return Value(point, np.mean([cast(np.ndarray, v.reps) for v in values], axis=0))
        return self._task_spearman(trial, task, metric)

    def _task_spearman(self, trial, task: str, metric: str) -> Value:
        """Spearman correlation across languages of Δbpb with the task's Δ (its value for a q-only metric)."""
        xs: list[float] = []
        ys: list[float] = []
        x_reps: list[np.ndarray] = []
        y_reps: list[np.ndarray] = []
        short: list[str] = []
        for lang in self.languages():
            s = self.task_stats(trial, task, lang)
            arm = "delta" if "delta" in s.estimates[metric] else "q"
            value = s.estimates[metric][arm].value
            p, r = self.lang_metrics(trial, lang)
            if value is None or not np.isfinite(p["delta_bpb"]):
                continue
            xs.append(float(p["delta_bpb"]))
            x_reps.append(r["delta_bpb"])
            ys.append(value)
            y_reps.append(s.arm_replicates[metric][arm])
            if s.interval_note or self.interval_note(trial, lang):
                short.append(lang)
        x, y = np.array(xs), np.array(ys)
        undefined = spearman_undefined(x) or (
            spearman_undefined(y) and f"{task} {metric} is the same in every language"
        )
        if undefined:
            return Value(None, None, undefined)
        h = int.from_bytes(hashlib.sha256(f"task_spearman\0{trial.model}\0{task}".encode()).digest()[:8], "big")
        point, out = spearman_replicates(
            x, y, np.array(y_reps), np.random.default_rng([self.spec.seed, h]), np.array(x_reps)
        )
        if self.points:
            return Value(point, None)
        return Value(point, None, no_interval_note(short)) if short else Value(point, out)

    def call(self, call: Call, trial) -> Value:
        kw = call.kw()
        if call.fn in TASK_LANG_METRICS or call.fn in TASK_GROUP_METRICS:
            return self._task_call(call, trial)
        if call.fn in LANG_METRICS:
            lang = self.corpus.resolve(kw["lang"])
            p, r = self.lang_metrics(trial, lang)
            m = LANG_METRICS[call.fn]
            if self.points:
                return Value(float(p[m]), None)
            note = self.interval_note(trial, lang)
            return Value(float(p[m]), None, f"{lang}: {note}") if note else Value(float(p[m]), r[m])
        low, high = self.groups()
        if call.fn in ("mean_rel_delta", "mean_log_degradation"):
            metric = "rel_delta_bpb" if call.fn == "mean_rel_delta" else "log_degradation_pct"
            group = {"low": low, "high": high, "all": self.languages()}[kw.get("group", "all")]
            return self.group_mean(trial, group, metric)
        if call.fn == "spearman":
            return self._spearman(trial, kw.get("measure", "joshi_class"))
        metric = "log_degradation_pct" if call.fn == "log_disparity" else "rel_delta_bpb"
        lo, hi = self.group_mean(trial, low, metric), self.group_mean(trial, high, metric)
        if call.fn == "gap":
            return _combine(lo, hi, operator.sub)
        if self.points:  # point values: the ratio is defined unless the denominator is exactly zero
            if not hi.defined or hi.point == 0:
                return Value(None, None, "ratio undefined: the high-resource mean is zero")
            return _combine(lo, hi, operator.truediv)
        if hi.defined and hi.reps is None:
            return Value(None, None, f"ratio undefined: the high-resource mean has no interval ({hi.note})")
        if may_be_zero(hi.estimate()):
            return Value(None, None, "ratio undefined: the high-resource mean's 95% CI includes zero")
        return _combine(lo, hi, operator.truediv)

    def _spearman(self, trial, measure: str) -> Value:
        from ..corpus import language_info
        from ..corpus.documents import base_language

        langs = [x for x in self.languages() if language_info(base_language(x)).resources.get(measure) is not None]
        x = np.array([language_info(base_language(lang)).resources.get(measure) for lang in langs])
        undefined = spearman_undefined(x)
        if undefined:
            return Value(None, None, undefined)
        pts, reps = zip(*(self.lang_metrics(trial, lang) for lang in langs))
        h = int.from_bytes(hashlib.sha256(f"spearman\0{trial.model}".encode()).digest()[:8], "big")
        point, out = spearman_replicates(
            x,
            np.array([p["rel_delta_bpb"] for p in pts]),
            np.array([r["rel_delta_bpb"] for r in reps]),
            np.random.default_rng([self.spec.seed, h]),
        )
        if self.points:
            return Value(point, None)
        short = self._short(trial, langs)
        return Value(point, None, no_interval_note(short)) if short else Value(point, out)

    def evaluate(self, node, chosen) -> Value:
        if isinstance(node, ast.Constant):
            value = cast(float, node.value)  # parse_expr admits numeric constants only
            return Value(float(value), np.full(self.spec.n_boot, float(value)))
        if isinstance(node, ast.UnaryOp):
            v = self.evaluate(node.operand, chosen)
            if not v.defined:
                return v
            assert v.point is not None  # defined
            return Value(-v.point, None if v.reps is None else -v.reps, v.note)
        if isinstance(node, ast.BinOp):
            return _combine(self.evaluate(node.left, chosen), self.evaluate(node.right, chosen), _ARITH[type(node.op)])
        call = Call(node.func.id, tuple((k.arg, k.value.value) for k in node.keywords))
        return self.call(call, chosen[call])


def verdict(diff: Value, op: str, points: bool = False) -> str:
    """From the 95% interval of (left - right); with ``points``, from the sign of its point value."""
    if not diff.defined:
        return "inconclusive"
    want_negative = op in ("<", "<=")
    if points:
        d = diff.point
        assert d is not None  # defined
        if d == 0:
            return "inconclusive"
        return "supported" if (d < 0) == want_negative else "refuted"
    ci = diff.ci()
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    if (hi < 0) if want_negative else (lo > 0):
        return "supported"
    if (lo > 0) if want_negative else (hi < 0):
        return "refuted"
    return "inconclusive"


def bootstrap_p(diff: Value) -> float | None:
    """Two-sided bootstrap p-value of (left - right) = 0: 2 x the smaller share of replicates on either side
    of zero, each share counted as (1 + k) / (B + 1) so that p > 0 with B finite replicates; None without
    replicates."""
    if not diff.defined or diff.reps is None:
        return None
    r = diff.reps[np.isfinite(diff.reps)]
    if r.size == 0:
        return None
    b = r.size
    return float(min(1.0, 2 * min((1 + np.sum(r <= 0)) / (b + 1), (1 + np.sum(r >= 0)) / (b + 1))))


def bootstrap_z_p(diff: Value) -> float | None:
    """Two-sided p of (left - right) = 0 from the bootstrap standard error: ``2 Phi(-|d| / se)``; None without
    replicates. Replicates with no spread (a comparison of constants) give 0 for d != 0, 1 for d == 0."""
    if not diff.defined or diff.reps is None:
        return None
    r = diff.reps[np.isfinite(diff.reps)]
    if r.size < 2:
        return None
    se = float(np.std(r, ddof=1))
    if se == 0:
        return 0.0 if diff.point != 0 else 1.0
    assert diff.point is not None  # defined
    return float(math.erfc(abs(diff.point) / se / math.sqrt(2)))


def holm(p_values: list[float | None], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down over a family: (rejected, adjusted p) per hypothesis, in the order given.

    Sorted ascending, the k-th smallest (k = 0..m-1) is rejected while p_(k) <= alpha / (m - k), stopping at the
    first that is not; adjusted p_(k) = max over j <= k of min(1, (m - j) p_(j)). ``None`` counts as p = 1."""
    p = np.array([1.0 if x is None else float(x) for x in p_values])
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    rejected = np.zeros(m, dtype=bool)
    running, still = 0.0, True
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
        still = still and p[i] <= alpha / (m - k)
        rejected[i] = still
    return rejected.tolist(), adjusted.tolist()


FAMILY_ALPHA = 0.05


def evaluate_claims(spec, evaluator: Evaluator) -> list[dict]:
    """Every claim instance's verdict record, as verdicts.json holds it."""
    return [v.to_dict() for v in claim_verdicts(spec, evaluator)]


def claim_verdicts(spec, evaluator: Evaluator) -> list[Verdict]:
    """Every instance of every claim of ``spec``, judged per instance and family-wise (Holm over all of them)."""
    points = evaluator.points
    basis = (
        'point values (verdict_basis = "points": nothing to resample)'
        if points
        else f"95% paired bootstrap interval (languages need >= {MIN_DOCS_FOR_INTERVAL} documents)"
    )
    out, diffs = [], []
    for claim in spec.claims:
        left, op, right, _ = parse_expr(claim.expr, claim.id)
        for inst, chosen in instances(spec, claim):
            lv, rv = evaluator.evaluate(left, chosen), evaluator.evaluate(right, chosen)
            diff = _combine(lv, rv, operator.sub)
            diffs.append(diff)
            out.append(
                Verdict(
                    id=claim.id,
                    text=claim.text,
                    expr=claim.expr,
                    instance=inst,
                    trials=sorted({t.name for t in chosen.values()}),
                    left=lv.estimate(),
                    right=rv.estimate(),
                    difference=diff.estimate(),
                    verdict=verdict(diff, op, points),
                    basis=basis,
                )
            )
    if points:  # no p-values, no family-wise verdict
        return out
    p_values = [bootstrap_z_p(d) for d in diffs]
    rejected, adjusted = holm(p_values, FAMILY_ALPHA)
    return [
        replace(
            rec,
            p_value=p,
            p_boot=bootstrap_p(d),
            p_holm=adj,
            verdict_familywise=rec.verdict if rej and rec.verdict in ("supported", "refuted") else "inconclusive",
        )
        for rec, d, p, rej, adj in zip(out, diffs, p_values, rejected, adjusted)
    ]


__all__ = [
    "Evaluator",
    "bootstrap_p",
    "bootstrap_z_p",
    "claim_verdicts",
    "evaluate_claims",
    "holm",
    "instances",
    "parse_expr",
    "validate_claims",
    "verdict",
]
