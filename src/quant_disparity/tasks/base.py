"""What a task is, how it is named, and the one way every task scores the two arms of an audit.

A task is named by a string: a registered kind, optionally with an argument after a colon (``cloze``,
``generate``, ``lmeval:xnli``). :data:`TASKS` holds the kinds (third-party packages add theirs through the
entry-point group ``quant_disparity.tasks``); a kind builds a :class:`Task` from the argument and the
:class:`TaskSettings`. A task checks what it can before a model is loaded (:meth:`Task.check`: unknown
languages, missing libraries), then, given a :class:`TaskContext`, returns per language the per-item values
of its metrics under each arm: ``fp`` (the reference weights) and ``q`` (the quantized ones).

:class:`Arms` is the one place that switches the model between the two arms (through the audit's
:class:`~quant_disparity.quant.QuantEngine`) and always restores the reference afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ..corpus import Corpus
from ..errors import UserError
from ..models import LoadedModel
from ..quant import QuantEngine, Scheme
from ..registry import Registry

#: The two arms of a paired comparison: the reference weights and the quantized ones.
ARMS = ("fp", "q")

R = TypeVar("R")


@dataclass(frozen=True)
class TaskSettings:
    """Settings shared by the tasks: the item draw's seed, generated tokens, lm-eval's extra task folder."""

    seed: int = 0
    gen_tokens: int = 32  # tokens each greedy continuation may generate
    lmeval_include: str = ""  # a folder of lm-eval task YAMLs (lm-eval's --include_path)
    batch_tokens: int = 4096  # padded tokens per forward batch

    def __post_init__(self) -> None:
        if not 1 <= self.gen_tokens <= 1024:
            raise UserError(f"--gen-tokens must be in 1..1024, got {self.gen_tokens}")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "gen_tokens": self.gen_tokens, "lmeval_include": self.lmeval_include}


class Arms:
    """Switches a model between the reference (``fp``) and the quantized (``q``) weights."""

    def __init__(self, engine: QuantEngine, assignment: Mapping[str, Scheme]):
        self.engine = engine
        self.assignment = dict(assignment)

    def use_reference(self) -> None:
        self.engine.restore_()

    def use_model(self) -> None:
        self.engine.assign_(self.assignment)

    def each(self, fn: Callable[[], R]) -> dict[str, R]:
        """``{"fp": fn() on the reference, "q": fn() quantized}``; the reference is back in place afterwards."""
        try:
            self.use_reference()
            fp = fn()
            self.use_model()
            q = fn()
        finally:
            self.engine.restore_()
        return {"fp": fp, "q": q}


@dataclass(frozen=True)
class Metric:
    """Per-item values of one metric: ``num[arm] / den[arm]`` summed over items is the language's value.

    A mean over items has ``den`` all ones (``den=None``). ``arms`` is ``("fp", "q")`` for a metric both arms
    have (accuracy: a difference q - fp is reported), or ``("q",)`` for one that compares q with fp already
    (chrF of the quantized continuation against the reference's)."""

    num: Mapping[str, np.ndarray]
    den: Mapping[str, np.ndarray] | None = None
    higher_is_better: bool = True
    description: str = ""

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(a for a in ARMS if a in self.num)


@dataclass
class LanguageItems:
    """One language's items (ids in the same order in every language) and their metrics."""

    lang: str
    item_ids: list[str]
    metrics: dict[str, Metric]
    examples: list[dict] = field(default_factory=list)  # a few items in full, for a reader to look at


@dataclass
class TaskContext:
    """What a task runs with: the loaded model (tokenizer kept), the corpus and languages, the arms."""

    lm: LoadedModel
    corpus: Corpus
    langs: list[str]
    arms: Arms
    settings: TaskSettings
    log: Callable[[str], None] = lambda msg: None


class Task:
    """A task: :attr:`name` as written on the command line, :attr:`headline` its main metrics."""

    name: str = ""
    headline: tuple[str, ...] = ()
    chance: float | None = None  # accuracy of a random guess, when the task has one
    description: str = ""
    #: the metrics known before the task runs, each with its arms (("fp", "q"), or ("q",) for a metric that
    #: compares q with fp already); empty when they are known only after it ran (an lm-eval task's)
    metric_arms: Mapping[str, tuple[str, ...]] = {}
    #: the :class:`TaskSettings` fields its results depend on (what a stored run's key holds)
    settings_used: tuple[str, ...] = ("seed", "gen_tokens", "lmeval_include")

    def check(self, corpus: Corpus, langs: Sequence[str]) -> None:
        """Raise :class:`UserError` for what is wrong before a model is loaded (a language the task lacks)."""

    def run(self, ctx: TaskContext) -> list[LanguageItems]:
        raise NotImplementedError

    def info(self) -> dict:
        return {"name": self.name, "description": self.description, "chance": self.chance}


@dataclass(frozen=True)
class TaskKind:
    """A registered kind of task: ``build(argument, settings)``; ``argument`` says what follows the colon."""

    name: str
    summary: str
    build: Callable[[str | None, TaskSettings], Task]
    argument: str | None = None  # e.g. "TASK" for lmeval:TASK; None: the kind takes no argument


def _hint(registry: Registry[TaskKind]) -> str:
    return "known: " + ", ".join(f"{k.name}:{k.argument}" if k.argument else k.name for k in registry.values())


TASKS: Registry[TaskKind] = Registry("task", TaskKind, group="quant_disparity.tasks", hint=_hint)


def parse_tasks(text: str | Sequence[str], settings: TaskSettings) -> list[Task]:
    """``"cloze,generate,lmeval:xnli"`` (or a list of names) -> tasks; a one-line UserError for a bad name."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [t.strip() for t in text]
    names = [n for n in names if n]
    if not names:
        raise UserError("--tasks is empty", "give e.g. --tasks cloze,generate")
    tasks = []
    for name in dict.fromkeys(names):
        kind_name, sep, arg = name.partition(":")
        kind = TASKS.lookup(kind_name)
        if kind is None:
            raise TASKS.unknown(name, near=kind_name)
        if kind.argument and not arg:
            raise UserError(f"task {kind_name!r} needs {kind.argument}", f"write {kind_name}:{kind.argument}")
        if not kind.argument and sep:
            raise UserError(f"task {kind_name!r} takes no argument (got {name!r})", f"write {kind_name}")
        tasks.append(kind.build(arg or None, settings))
    return tasks
