"""Typed records of results, each with one JSON mapping: ``to_dict()`` gives the shape written to audit.json,
locate.json, verdicts.json and results.json (keys in that order), ``from_dict()`` reads it back.

The commands (audit, locate, the experiment runner and its claims) build these records; the reports read them,
so a report depends on this module and :mod:`.stats`, never on a command. ``from_dict`` accepts a partial
mapping (a hand-written one in a test, an older file): what is missing reads as absent.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from .stats import LANG_METRICS, Estimate, LanguageStats


def _estimates(data: Mapping, keys: Iterable[str]) -> dict[str, Estimate]:
    """The estimates of ``keys`` that ``data`` has, in the order of ``keys``."""
    return {k: Estimate.from_dict(data[k]) for k in keys if k in data}


def _dicts(estimates: Mapping[str, Estimate]) -> dict[str, dict]:
    return {k: v.to_dict() for k, v in estimates.items()}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# -- audit ---------------------------------------------------------------------------------------------------------
AUDIT_SCHEMA = "quant-disparity/audit"
AUDIT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LanguageRow:
    """One language of an audit: its description (``corpus.language_info``) and its numbers."""

    lang: str  # the corpus's language id (e.g. heb_Hebr)
    info: Mapping[str, Any]  # name, script, ISO code, resource measures (joshi_class, ...), without the id
    n_docs: int | None
    n_bytes: int | None
    n_pred: int | None
    estimates: Mapping[str, Estimate]  # per metric of LANG_METRICS
    #: tokenizer fertility on the scored documents (``analysis.fertility.Fertility.to_dict``); None in older files
    fertility: Mapping[str, Any] | None = None

    @classmethod
    def from_stats(
        cls, stats: LanguageStats, info: Mapping[str, Any], fertility: Mapping[str, Any] | None = None
    ) -> LanguageRow:
        return cls(
            stats.lang,
            {k: v for k, v in info.items() if k != "id"},
            stats.n_docs,
            stats.n_bytes,
            stats.n_pred,
            dict(stats.estimates),
            fertility,
        )

    @property
    def name(self) -> str:
        return self.info.get("name", self.lang)

    @property
    def joshi_class(self) -> int | None:
        return self.info.get("joshi_class")

    def to_dict(self) -> dict:
        return {
            "id": self.lang,
            **self.info,
            "lang": self.lang,
            "n_docs": self.n_docs,
            "n_bytes": self.n_bytes,
            "n_predicted_tokens": self.n_pred,
            **_dicts(self.estimates),
            **({"fertility": dict(self.fertility)} if self.fertility is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LanguageRow:
        own = {"id", "lang", "n_docs", "n_bytes", "n_predicted_tokens", "fertility", *LANG_METRICS}
        return cls(
            data.get("id", data.get("lang")),
            {k: v for k, v in data.items() if k not in own},
            data.get("n_docs"),
            data.get("n_bytes"),
            data.get("n_predicted_tokens"),
            _estimates(data, LANG_METRICS),
            data.get("fertility"),
        )


@dataclass(frozen=True)
class DocumentRow:
    """One document of an audit: its size and its sums under both models (nats)."""

    lang: str
    doc_id: str
    bytes: int
    chars: int
    tokens: int
    predicted_tokens: int
    nll_fp: float
    nll_q: float
    kl_nats: float
    top1_agree: int

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Mapping) -> DocumentRow:
        return cls(**data)


@dataclass(frozen=True)
class AuditResult:
    """An audit: what was compared, on what, and every language's and document's numbers."""

    config: Any  # config.AuditConfig
    model: dict
    scheme: dict
    corpus: dict
    languages: tuple[LanguageRow, ...]
    summary: dict  # worst/best language, groups, disparity (analysis.stats.disparity), correlation, fertility
    documents: tuple[DocumentRow, ...]
    environment: dict
    timing: dict
    created: str = field(default_factory=_now)

    def to_dict(self) -> dict:
        return {
            "schema": AUDIT_SCHEMA,
            "schema_version": AUDIT_SCHEMA_VERSION,
            "created": self.created,
            "config": self.config.to_dict(),
            "model": self.model,
            "scheme": self.scheme,
            "corpus": self.corpus,
            "settings": self.config.eval.to_dict(),
            "languages": [r.to_dict() for r in self.languages],
            "summary": self.summary,
            "documents": [d.to_dict() for d in self.documents],
            "environment": self.environment,
            "timing": self.timing,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> AuditResult:
        from ..config import AuditConfig

        return cls(
            config=AuditConfig.from_dict(data["config"]),
            model=data["model"],
            scheme=data["scheme"],
            corpus=data["corpus"],
            languages=tuple(LanguageRow.from_dict(r) for r in data["languages"]),
            summary=data["summary"],
            documents=tuple(DocumentRow.from_dict(d) for d in data["documents"]),
            environment=data["environment"],
            timing=data["timing"],
            created=data["created"],
        )


# -- locate --------------------------------------------------------------------------------------------------------
LOCATE_SCHEMA = "quant-disparity/locate"
LOCATE_SCHEMA_VERSION = 1
#: The numbers of one configuration (everything quantized, a unit protected or alone, a pair) in one language.
LOCATE_METRICS = ("bpb", "delta_bpb", "rel_delta_bpb", "kl_bits", "top1_agreement")


@dataclass(frozen=True)
class UnitResult:
    """One unit in one language: its configuration's numbers, its effect and its rank by effect."""

    metrics: Mapping[str, Estimate]  # LOCATE_METRICS of the unit's configuration
    effect: Estimate
    share_of_damage_recovered: Estimate | None = None  # protect-one only
    rank: int | None = None  # 1 = largest effect; none for a unit that is only part of a pair

    def to_dict(self) -> dict:
        out: dict[str, Any] = _dicts(self.metrics)
        if self.share_of_damage_recovered is not None:
            out["share_of_damage_recovered"] = self.share_of_damage_recovered.to_dict()
        out["effect"] = self.effect.to_dict()
        if self.rank is not None:
            out["rank"] = self.rank
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> UnitResult:
        share = data.get("share_of_damage_recovered")
        return cls(
            _estimates(data, LOCATE_METRICS),
            Estimate.from_dict(data["effect"]),
            None if share is None else Estimate.from_dict(share),
            data.get("rank"),
        )


@dataclass(frozen=True)
class PairResult:
    """Two units together in one language: the pair's numbers and its interaction beyond each unit alone."""

    units: tuple[str, str]
    metrics: Mapping[str, Estimate]  # LOCATE_METRICS of the configuration of both
    interaction: Estimate
    effect_a: Estimate
    effect_b: Estimate

    def to_dict(self) -> dict:
        return {
            "units": list(self.units),
            **_dicts(self.metrics),
            "interaction": self.interaction.to_dict(),
            "effect_a": self.effect_a.to_dict(),
            "effect_b": self.effect_b.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PairResult:
        return cls(
            tuple(data["units"]),
            _estimates(data, LOCATE_METRICS),
            *(Estimate.from_dict(data[k]) for k in ("interaction", "effect_a", "effect_b")),
        )


@dataclass(frozen=True)
class LocateLanguage:
    """One language of a locate sweep."""

    bpb_fp: Estimate
    all_quantized: Mapping[str, Estimate]  # LOCATE_METRICS with the whole universe quantized
    units: Mapping[str, UnitResult]
    ranking: tuple[str, ...]  # units by effect, largest first
    pairs: Mapping[str, PairResult]  # by "A+B"

    def to_dict(self) -> dict:
        return {
            "bpb_fp": self.bpb_fp.to_dict(),
            "all_quantized": _dicts(self.all_quantized),
            "units": {k: u.to_dict() for k, u in self.units.items()},
            "ranking": list(self.ranking),
            "pairs": {k: p.to_dict() for k, p in self.pairs.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LocateLanguage:
        return cls(
            Estimate.from_dict(data["bpb_fp"]),
            _estimates(data["all_quantized"], LOCATE_METRICS),
            {k: UnitResult.from_dict(u) for k, u in data["units"].items()},
            tuple(data["ranking"]),
            {k: PairResult.from_dict(p) for k, p in data["pairs"].items()},
        )


def rank_units(units: Mapping[str, UnitResult]) -> tuple[dict[str, UnitResult], list[str]]:
    """``units`` with their ranks set (1 = largest effect), and their names in that order."""
    ranked = sorted(units, key=lambda u: -cast(float, units[u].effect.value))
    ranks = {u: i for i, u in enumerate(ranked, 1)}
    return {u: replace(r, rank=ranks[u]) for u, r in units.items()}, ranked


@dataclass(frozen=True)
class LocateResult:
    """A locate sweep: its configuration, the units and languages, and every language's numbers."""

    config: dict  # locate.LocateConfig.to_dict()
    model: dict
    scheme: dict
    corpus: dict
    mode: str
    granularity: str
    effect: str  # what the effect measures, in words
    units: list[dict]  # name, tensors, params (elements); shared_by for a shared key/value head
    languages: list[dict]  # language description with id, n_docs, n_bytes
    results: Mapping[str, LocateLanguage]
    pairs: list[list[str]]
    environment: dict
    timing: dict
    created: str = field(default_factory=_now)
    estimate: dict | None = None  # locate --estimate: the score's ranking and which units were measured

    def to_dict(self) -> dict:
        return {
            "schema": LOCATE_SCHEMA,
            "schema_version": LOCATE_SCHEMA_VERSION,
            "created": self.created,
            "config": self.config,
            "model": self.model,
            "scheme": self.scheme,
            "corpus": self.corpus,
            "mode": self.mode,
            "granularity": self.granularity,
            "effect": self.effect,
            "units": self.units,
            "languages": self.languages,
            "results": {k: r.to_dict() for k, r in self.results.items()},
            "pairs": self.pairs,
            "environment": self.environment,
            "timing": self.timing,
            **({"estimate": self.estimate} if self.estimate is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LocateResult:
        return cls(
            config=data["config"],
            model=data["model"],
            scheme=data["scheme"],
            corpus=data["corpus"],
            mode=data["mode"],
            granularity=data["granularity"],
            effect=data["effect"],
            units=data["units"],
            languages=data["languages"],
            results={k: LocateLanguage.from_dict(r) for k, r in data["results"].items()},
            pairs=data["pairs"],
            environment=data["environment"],
            timing=data["timing"],
            created=data["created"],
            estimate=data.get("estimate"),
        )

    @property
    def unit_names(self) -> list[str]:
        return [u["name"] for u in self.units]

    @property
    def language_ids(self) -> list[str]:
        return [lang["id"] for lang in self.languages]

    def effect_matrix(self) -> tuple[list[str], list[str], np.ndarray]:
        """(units, languages, effect [units x languages]) in percent of the reference bpb; NaN where undefined."""
        units, langs = self.unit_names, self.language_ids
        vals = [[self.results[lang].units[u].effect.value for lang in langs] for u in units]
        m = np.array([[np.nan if v is None else v for v in row] for row in vals], dtype=np.float64)
        return units, langs, 100 * m


def effect_matrix(data: Mapping) -> tuple[list[str], list[str], np.ndarray]:
    """:meth:`LocateResult.effect_matrix` of a locate.json mapping."""
    return LocateResult.from_dict(data).effect_matrix()


# -- experiments ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DocumentColumns:
    """One language's documents in one trial: per-document sums (nats, counts), aligned by document."""

    bytes: np.ndarray
    n_pred: np.ndarray
    nll: np.ndarray  # quantized model
    nll_ref: np.ndarray  # reference model
    kl: np.ndarray
    top1: np.ndarray

    COLUMNS = ("bytes", "n_pred", "nll", "nll_ref", "kl", "top1")

    @classmethod
    def from_rows(cls, rows: Sequence) -> DocumentColumns:
        """From store rows (records with these attributes), as float64 arrays."""
        return cls(*(np.asarray([getattr(r, k) for r in rows], dtype=np.float64) for k in cls.COLUMNS))

    @classmethod
    def of(cls, cols: DocumentColumns | Mapping[str, np.ndarray]) -> DocumentColumns:
        """``cols`` itself, or the record of a mapping with the same keys."""
        return cols if isinstance(cols, DocumentColumns) else cls(*(cols[k] for k in cls.COLUMNS))

    @property
    def n_docs(self) -> int:
        return len(self.nll)

    def sums(self) -> dict[str, np.ndarray]:
        """The columns by name, as :func:`.stats.language_metrics` reads them."""
        return {
            "nll": self.nll,
            "nll_ref": self.nll_ref,
            "kl": self.kl,
            "top1": self.top1,
            "n_pred": self.n_pred,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class TrialLanguage:
    """One language in one trial of a study."""

    estimates: Mapping[str, Estimate]  # per metric of LANG_METRICS
    n_docs: int | None

    def to_dict(self) -> dict:
        return {**_dicts(self.estimates), "n_docs": self.n_docs}

    @classmethod
    def from_dict(cls, data: Mapping) -> TrialLanguage:
        return cls(_estimates(data, LANG_METRICS), data.get("n_docs"))


#: The cross-language statistics of a trial, in results.json order.
TRIAL_SUMMARY = ("disparity", "gap", "log_disparity", "mean_rel_delta", "spearman_joshi")


@dataclass(frozen=True)
class TrialResult:
    """One trial of a study (model x scheme x plan): its cost, every language, its cross-language statistics."""

    name: str
    model: str
    scheme: str
    plan_name: str
    plan: str | None
    key: str | None
    cost: Mapping[str, Any]
    languages: Mapping[str, TrialLanguage]
    worst_language: str | None
    summary: Mapping[str, Estimate]  # TRIAL_SUMMARY
    finished: str | None
    protected_layer: int | None  # the one block whose tensors the plan keeps, if that is all it keeps
    #: what a calibrated trial was calibrated on (spec, budget, documents, token count, digest); None uncalibrated
    calibration: Mapping[str, Any] | None = None

    def to_dict(self) -> dict:
        return {
            **({"calibration": self.calibration} if self.calibration is not None else {}),
            "name": self.name,
            "model": self.model,
            "scheme": self.scheme,
            "plan_name": self.plan_name,
            "plan": self.plan,
            "key": self.key,
            "cost": self.cost,
            "languages": {k: v.to_dict() for k, v in self.languages.items()},
            "worst_language": self.worst_language,
            "summary": _dicts(self.summary),
            "finished": self.finished,
            "protected_layer": self.protected_layer,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> TrialResult:
        return cls(
            data["name"],
            cast(str, data.get("model")),
            cast(str, data.get("scheme")),
            cast(str, data.get("plan_name")),
            data.get("plan"),
            data.get("key"),
            data.get("cost", {}),
            {k: TrialLanguage.from_dict(v) for k, v in data.get("languages", {}).items()},
            data.get("worst_language"),
            _estimates(data.get("summary", {}), TRIAL_SUMMARY),
            data.get("finished"),
            data.get("protected_layer"),
            data.get("calibration"),
        )


@dataclass(frozen=True)
class Verdict:
    """One instance of a claim: both sides, their difference, and the verdicts (per instance, family-wise)."""

    id: str
    text: str | None
    expr: str
    instance: Mapping[str, str]  # the values of the dimensions the claim leaves open
    trials: list[str]
    left: Estimate
    right: Estimate
    difference: Estimate
    verdict: str
    basis: str
    p_value: float | None = None
    p_boot: float | None = None
    p_holm: float | None = None
    verdict_familywise: str | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "expr": self.expr,
            "instance": self.instance,
            "trials": self.trials,
            "left": self.left.to_dict(),
            "right": self.right.to_dict(),
            "difference": self.difference.to_dict(),
            "verdict": self.verdict,
            "basis": self.basis,
            "p_value": self.p_value,
            "p_boot": self.p_boot,
            "p_holm": self.p_holm,
            "verdict_familywise": self.verdict_familywise,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Verdict:
        left, right, difference = (Estimate.from_dict(data[k]) for k in ("left", "right", "difference"))
        return cls(
            data["id"],
            data.get("text"),
            data["expr"],
            data.get("instance", {}),
            data.get("trials", []),
            left,
            right,
            difference,
            data["verdict"],
            data.get("basis", ""),
            data.get("p_value"),
            data.get("p_boot"),
            data.get("p_holm"),
            data.get("verdict_familywise"),
        )


@dataclass(frozen=True)
class StudyResult:
    """Everything a study's reports show: the spec, the groups, the languages, every trial and every verdict."""

    spec: Mapping[str, Any]
    groups: Mapping[str, Any]  # low, high, rule
    languages: list[dict]  # language descriptions with their id
    trials: list[TrialResult]
    verdicts: list[Verdict]
    run: Mapping[str, Any] | None = None  # the invocation (counts, executor, store), when run just now
    #: per trial and task of a spec with [tasks]: per-language values with intervals, correlation with Δbpb
    tasks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {
            "spec": self.spec,
            "groups": self.groups,
            "languages": self.languages,
            "trials": [t.to_dict() for t in self.trials],
            "verdicts": [v.to_dict() for v in self.verdicts],
        }
        if self.tasks:
            out["tasks"] = self.tasks
        if self.run is not None:
            out["run"] = self.run
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> StudyResult:
        return cls(
            data.get("spec", {}),
            data.get("groups", {}),
            data.get("languages", []),
            [TrialResult.from_dict(t) for t in data.get("trials", [])],
            [Verdict.from_dict(v) for v in data.get("verdicts", [])],
            data.get("run"),
            list(data.get("tasks", [])),
        )

    @property
    def language_ids(self) -> list[str]:
        return [x["id"] for x in self.languages]


__all__ = [
    "AUDIT_SCHEMA",
    "AUDIT_SCHEMA_VERSION",
    "AuditResult",
    "DocumentColumns",
    "DocumentRow",
    "LOCATE_METRICS",
    "LOCATE_SCHEMA",
    "LOCATE_SCHEMA_VERSION",
    "LanguageRow",
    "LocateLanguage",
    "LocateResult",
    "PairResult",
    "StudyResult",
    "TRIAL_SUMMARY",
    "TrialLanguage",
    "TrialResult",
    "UnitResult",
    "Verdict",
    "effect_matrix",
    "rank_units",
]
