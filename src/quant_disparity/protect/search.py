"""search: the plan that protects the units of a quantized universe best for an objective over languages,
within a budget of effective bits per weight (or of protected parameters), and its Pareto frontier.

1. *Measure* (selection split, one sweep with :func:`..evaluate.sweep.sweep`): the base plan (every unit at
   ``scheme``) and every unit protected alone (kept at reference precision, or at the ``protect`` scheme).
2. *Choose* on the additive estimate: greedy by objective gain per bit, and a knapsack (DP over discretised
   costs) per linear gain (:mod:`.pareto`).
3. *Refine* by measurement: the distinct candidate sets of every budget are evaluated together on the
   selection split (one sweep); per budget the best *measured* one is chosen (interactions make the additive
   estimate wrong).
4. *Verdict* (held-out split, one sweep, a paired bootstrap over documents): the chosen plans next to the
   uniform schemes and the log's structural plans (layer 0 + last, even layers; norms + biases where the
   universe holds them).

Costs come from the bit accounting of resolved plans (:meth:`..quant.Scheme.storage_bits`: scales, zero
points, kept tensors at their stored width), so "bits per weight" is what a plan really stores.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis.stats import (
    MIN_DOCS_FOR_INTERVAL,
    Estimate,
    interval,
    language_metrics,
    no_interval_note,
    resample_counts,
)
from ..audit import quantization_targets
from ..config import FlatConfig, ModelRuntime, check_common, check_langs
from ..corpus import Corpus, CorpusSelection, language_info
from ..corpus.documents import base_language
from ..errors import UserError, did_you_mean
from ..evaluate import EvalSettings, Forward
from ..evaluate.sweep import sweep
from ..inputs import Inputs, check_model_and_corpus, load_inputs
from ..locate import Unit, make_units
from ..locate import _ratio as locate_ratio
from ..models import LoadedModel, load_model
from ..models.modules import ModuleMap
from ..provenance import environment
from ..quant import NONE, Scheme, cost, engine_for, parse_scheme
from ..quant.plan import KEEP, Plan, ResolvedPlan, weight_2d_shape
from .pareto import OBJECTIVES, candidates, check_objective, estimate, objective_value

GRANULARITIES = ("layer", "component", "layer×component")
#: Low-resource = Joshi class <= this (as the audit's default).
LR_MAX_CLASS = 3


def _search_eval() -> EvalSettings:
    return EvalSettings(batch_tokens=2048)


@dataclass(frozen=True, init=False)
class SearchConfig(FlatConfig):
    runtime: ModelRuntime = ModelRuntime()
    # choosing uses the selection split; the verdict the held-out split
    selection: CorpusSelection = CorpusSelection(split="select", max_tokens=512)
    heldout_max_tokens: int = 1024
    heldout_min_docs: int = MIN_DOCS_FOR_INTERVAL
    scheme: str = "w3g128"
    protect: str = KEEP
    granularity: str = "layer"
    objective: str = "worst"
    budget_bits: float = 0.0  # effective bits per weight of the universe; 0 = not given
    budget_params: int = 0  # protected parameters; 0 = not given
    frontier: tuple[float, ...] = ()  # several bit budgets
    target: float = 0.0  # objective target (relative Δbpb); 0 = none
    uniform: tuple[str, ...] = ("w3g128", "w4g128", "w8g128")
    refine: int = 6  # candidate sets measured per budget on the selection split
    seed: int = 0
    n_boot: int = 1000
    eval: EvalSettings = field(default_factory=_search_eval)
    version: int = 1

    NAME = "search config"
    KEYS = {
        "model": ("runtime", "model"),
        "scheme": None,
        "protect": None,
        "granularity": None,
        "objective": None,
        "budget_bits": None,
        "budget_params": None,
        "frontier": None,
        "target": None,
        "uniform": None,
        "refine": None,
        "langs": ("selection", "langs"),
        "corpus": ("selection", "name"),
        "max_tokens": ("selection", "max_tokens"),
        "heldout_max_tokens": None,
        "heldout_min_docs": None,
        "seed": None,
        "n_boot": None,
        "device": ("runtime", "device"),
        "dtype": ("runtime", "dtype"),
        "eval": None,
        "version": None,
    }

    include: tuple[str, ...] = ()  # check_common reads it; the universe is the audit's default

    def __post_init__(self) -> None:
        g = {"layerxcomponent": "layer×component", "layer-component": "layer×component"}.get(
            self.granularity, self.granularity
        )
        object.__setattr__(self, "granularity", g)
        if g not in GRANULARITIES:
            raise UserError(
                f"unknown granularity {g!r}{did_you_mean(g, GRANULARITIES)}", f"use {', '.join(GRANULARITIES)}"
            )
        check_objective(self.objective)
        given = [n for n, v in (("--budget-bits", self.budget_bits), ("--budget-params", self.budget_params)) if v]
        if self.frontier:
            given.append("--frontier")
        if len(given) != 1:
            raise UserError(
                f"give exactly one of --budget-bits, --budget-params or --frontier ({', '.join(given) or 'none'} given)",
                "e.g. --budget-bits 4.25 (effective bits per weight of the quantized universe)",
            )
        if self.budget_bits < 0 or self.budget_params < 0 or any(b <= 0 for b in self.frontier):
            raise UserError("budgets must be positive")
        if self.refine < 1:
            raise UserError(f"--refine must be >= 1, got {self.refine}")
        if self.heldout_max_tokens < 0 or self.heldout_min_docs < 1:
            raise UserError("held-out max_tokens must be >= 0 and min_docs >= 1")
        if self.selection.split != "select":
            raise UserError("a search chooses on the selection split (split = select)")
        check_common(self)
        check_langs(self.selection)

    @property
    def heldout(self) -> CorpusSelection:
        return dataclasses.replace(
            self.selection, split="heldout", max_tokens=self.heldout_max_tokens, min_docs=self.heldout_min_docs
        )

    @property
    def budgets(self) -> list[float]:
        return sorted(self.frontier) if self.frontier else [self.budget_bits or float(self.budget_params)]

    @property
    def budget_kind(self) -> str:
        return "params" if self.budget_params else "bits"


def validate(config: SearchConfig) -> tuple[Scheme, Scheme | None, list[Scheme], Corpus, list[str]]:
    """What can be checked before a model is loaded: schemes, corpus and languages, groups for disparity."""
    base = parse_scheme(config.scheme)
    if base.is_identity:
        raise UserError(f"--scheme {config.scheme} quantizes nothing, so there is nothing to protect")
    protect = None if config.protect == KEEP else parse_scheme(config.protect)
    uniform = [parse_scheme(s) for s in config.uniform]
    corpus, langs = check_model_and_corpus(config.runtime, config.selection)
    for lang in langs:
        if not [d for d in corpus.documents(lang) if d.split == "heldout"]:
            raise UserError(f"{lang} has no held-out documents to give the verdict on")
    if config.objective == "disparity":
        low = _low_mask(langs)
        if low.all() or not low.any():
            raise UserError(
                "objective disparity needs at least one low- and one high-resource language among --langs",
                f"low-resource = Joshi class <= {LR_MAX_CLASS}",
            )
    return base, protect, uniform, corpus, langs


def _low_mask(langs: list[str]) -> np.ndarray:
    cls = [language_info(base_language(lang)).resources.joshi_class for lang in langs]
    return np.array([c is not None and c <= LR_MAX_CLASS for c in cls])


# -- costs and plans -----------------------------------------------------------------------------------------------
def tensor_bits(modmap: ModuleMap, name: str, scheme: Scheme | None) -> float:
    """Stored bits of one tensor under ``scheme`` (None: kept at its stored width)."""
    p = modmap[name]
    return (scheme or NONE).storage_bits(weight_2d_shape(p), p.bits)


@dataclass(frozen=True)
class Costs:
    """The universe's bits under the base scheme, and each unit's extra bits when protected."""

    universe_params: int
    base_bits: float
    unit_bits: np.ndarray  # [U] extra bits of protecting each unit
    unit_params: np.ndarray  # [U]

    @property
    def base_bits_per_weight(self) -> float:
        return self.base_bits / self.universe_params

    def capacity(self, budget: float, kind: str) -> float:
        """The extra bits (or parameters) a budget leaves for protection; a bit budget below the base scheme's
        own cost is an error."""
        if kind == "params":
            return budget
        if budget < self.base_bits_per_weight - 1e-12:
            raise UserError(
                f"budget {budget:g} bits per weight is below what the base scheme itself costs "
                f"({self.base_bits_per_weight:.4f} bits per weight of the quantized universe)",
                "raise --budget-bits or choose a cheaper --scheme",
            )
        return budget * self.universe_params - self.base_bits

    def costs(self, kind: str) -> np.ndarray:
        return self.unit_params.astype(np.float64) if kind == "params" else self.unit_bits


def unit_costs(
    modmap: ModuleMap, universe: list[str], units: list[Unit], base: Scheme, protect: Scheme | None
) -> Costs:
    extra = {t: tensor_bits(modmap, t, protect) - tensor_bits(modmap, t, base) for t in universe}
    return Costs(
        universe_params=sum(modmap[t].numel for t in universe),
        base_bits=sum(tensor_bits(modmap, t, base) for t in universe),
        unit_bits=np.array([sum(extra[t] for t in u.tensors) for u in units]),
        unit_params=np.array([u.n_params for u in units], dtype=np.int64),
    )


def assignment_of(universe: list[str], chosen: list[Unit], base: Scheme, protect: Scheme | None) -> dict[str, Scheme]:
    """Tensor -> scheme when ``chosen`` units are protected (a kept tensor is absent, as in every plan)."""
    protected = {t for u in chosen for t in u.tensors}
    out = {}
    for t in universe:
        s = protect if t in protected else base
        if s is not None:
            out[t] = s
    return out


def _selector(unit: Unit, granularity: str) -> str:
    m = re.fullmatch(r"L(\d+)(?:\.(.+))?", unit.name)
    if m and granularity == "layer":
        return f"layer:{m.group(1)}"
    comp = unit.name if not m else m.group(2)
    if "+" in comp:  # a tensor of several components: name its tensors
        return "re:^(" + "|".join(re.escape(t) for t in unit.tensors) + ")$"
    return f"component:{comp}" if not m else f"layer:{m.group(1)}&component:{comp}"


def plan_for(
    modmap: ModuleMap, universe: list[str], chosen: list[Unit], base: Scheme, protect: Scheme | None, granularity: str
) -> ResolvedPlan:
    """The plan that protects ``chosen`` and quantizes the rest of the universe, resolved; checked to assign
    exactly :func:`assignment_of` (else written with the tensor names themselves)."""
    want = assignment_of(universe, chosen, base, protect)
    action = KEEP if protect is None else protect.name
    rest = (
        "*" if set(modmap.default_targets()) == set(universe) else "re:^(" + "|".join(map(re.escape, universe)) + ")$"
    )
    for named in (False, True):
        sels = (
            [_selector(u, granularity) for u in chosen]
            if not named
            else ["re:^(" + "|".join(re.escape(t) for u in chosen for t in u.tensors) + ")$"]
        )
        text = (f"{action}:{','.join(sels)}; " if chosen else "") + f"{base.name}:{rest}"
        if {t for u in chosen for t in u.tensors} >= set(universe):  # everything protected: one rule
            text = f"{'none' if protect is None else protect.name}:{rest}"
        resolved = Plan.parse(text).resolve(modmap)
        if resolved.assignment() == want:
            return resolved
    raise AssertionError(f"no plan assigns exactly the protected set {[u.name for u in chosen]}")


def universe_bits(resolved: ResolvedPlan, universe: list[str]) -> float:
    """Effective bits per weight of the universe under a resolved plan (kept tensors at their stored width)."""
    mine = set(universe)
    ds = [d for d in resolved.decisions if d.name in mine]
    return sum(d.bits for d in ds) / sum(d.numel for d in ds)


def structural_plans(protect: Scheme | None, base: Scheme, modmap: ModuleMap) -> dict[str, str | None]:
    """The log's structural plans over this universe; None where the model's universe has nothing to protect
    (norms and biases are outside the default universe: every plan already leaves them as they are)."""
    action = KEEP if protect is None else protect.name
    universe = set(modmap.default_targets())
    out: dict[str, str | None] = {
        "layer 0 + last": f"{action}:layer:0,layer:-1; {base.name}:*",
        "even layers": f"{action}:layers:even; {base.name}:*",
    }
    has = [p for p in modmap.params if p.name in universe and p.role in ("norm", "bias")]
    out["norms + biases"] = f"{action}:norms,biases; {base.name}:*" if has else None
    return out


# -- measuring -----------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    """Per-document sums of a sweep, cut by language; relative Δbpb (points and paired replicates)."""

    langs: list[str]
    slices: list[slice]
    nll: dict[str, np.ndarray]
    nll_ref: np.ndarray
    kl: dict[str, np.ndarray]
    top1: dict[str, np.ndarray]
    n_pred: np.ndarray
    n_bytes: np.ndarray
    weights: list[np.ndarray] = field(default_factory=list)  # per language [n_boot, n_docs]

    def metrics(self, name: str, j: int, boot: bool) -> dict[str, np.ndarray]:
        sl = self.slices[j]
        cols = {
            "nll": self.nll[name][sl],
            "nll_ref": self.nll_ref[sl],
            "kl": self.kl[name][sl],
            "top1": self.top1[name][sl],
            "n_pred": self.n_pred[sl],
            "bytes": self.n_bytes[sl],
        }
        w = self.weights[j] if boot else None
        return language_metrics({k: (v.sum() if w is None else w @ v) for k, v in cols.items()})

    def rel(self, name: str) -> np.ndarray:
        """[L] relative Δbpb of configuration ``name``."""
        return np.array([float(self.metrics(name, j, False)["rel_delta_bpb"]) for j in range(len(self.langs))])

    def rel_reps(self, name: str) -> np.ndarray:
        """[n_boot, L] paired bootstrap replicates (the same resample of a language for every configuration)."""
        return np.stack([self.metrics(name, j, True)["rel_delta_bpb"] for j in range(len(self.langs))], axis=1)


def _measure(inputs: Inputs, langs: list[str], configs: Mapping[str, Mapping[str, Scheme]], bases, config, progress):
    lm, prepared = inputs.lm, inputs.prepared
    engine = engine_for(lm, inputs.modmap)
    s = sweep(
        Forward(lm.model),
        prepared,
        engine,
        configs,
        bases=bases,
        reuse=True,
        vocab_chunk=config.eval.vocab_chunk,
        progress=progress,
    )
    slices, offset = [], 0
    for lang in langs:
        n = len(inputs.selection.docs[lang])
        slices.append(slice(offset, offset + n))
        offset += n
    return Measured(
        langs, slices, s.nll, s.nll_ref, s.kl, s.top1, s.n_pred, np.asarray(prepared.n_bytes, dtype=np.float64)
    ), s.stats


def _est(point: float, reps: np.ndarray, note: str | None) -> dict:
    return interval(point, reps, note).to_dict()


def _ratio(num_p: float, num_r: np.ndarray, den_p: float, den_r: np.ndarray, note: str | None) -> dict:
    """``num / den`` with its interval (locate's rule: undefined when the denominator may be zero)."""
    if note is not None:
        return Estimate(None, note=f"undefined: {note}").to_dict()
    return locate_ratio(num_p, num_r, den_p, den_r, "the uniform scheme's worst-language Δbpb").to_dict()


# -- the command ---------------------------------------------------------------------------------------------------
def run_search(
    config: SearchConfig,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run a search; returns search.json's dict (plans under ``points[i].plan_toml``)."""
    t0 = time.perf_counter()
    base, protect, uniform, corpus, langs = validate(config)
    if lm is None:
        lm = load_model(config.runtime.model, device=config.runtime.device, dtype=config.runtime.dtype, log=log)
    sel = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    modmap = sel.modmap
    universe = quantization_targets(modmap, ())
    units = make_units(modmap, universe, config.granularity)
    costs = unit_costs(modmap, universe, units, base, protect)
    kind = config.budget_kind
    capacities = [costs.capacity(b, kind) for b in config.budgets]  # a budget below the base: error, nothing run
    held = load_inputs(config.runtime, corpus, config.heldout, config.eval, lm=lm, log=log)
    sel_ids = {(lang, d.id) for lang in langs for d in sel.selection.docs[lang]}
    held_ids = {(lang, d.id) for lang in langs for d in held.selection.docs[lang]}
    assert not sel_ids & held_ids, "selection and held-out documents overlap"
    low = _low_mask(langs)
    low_arg = low if config.objective == "disparity" else None
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, -1)

    # 1. protect-one on the selection split
    log(f"{len(units)} units; measuring each protected alone on {sel.prepared.total_pred} selection tokens")
    configs = {"base": {t: base for t in universe}}
    for u in units:
        configs[u.name] = assignment_of(universe, [u], base, protect)
    t1 = time.perf_counter()
    m1, _ = _measure(sel, langs, configs, ["base"], config, tick)
    rel0 = m1.rel("base")
    recovery = np.stack([rel0 - m1.rel(u.name) for u in units]) if units else np.zeros((0, len(langs)))
    t_one = time.perf_counter() - t1

    # 2. candidates per budget on the additive estimate
    per_budget = []
    to_measure: dict[tuple[int, ...], dict[str, Scheme]] = {}
    for cap in capacities:
        cands = candidates(rel0, recovery, costs.costs(kind), cap, config.objective, low_arg)[: config.refine]
        per_budget.append(cands)
        for _, chosen, _ in cands:
            to_measure.setdefault(tuple(chosen), assignment_of(universe, [units[i] for i in chosen], base, protect))

    # 3. refine: measure every candidate on the selection split (one sweep)
    t2 = time.perf_counter()
    names = {k: "set:" + ",".join(units[i].name for i in k) for k in to_measure}
    m2, _ = _measure(
        sel, langs, {"base": configs["base"], **{names[k]: v for k, v in to_measure.items()}}, ["base"], config, tick
    )
    t_refine = time.perf_counter() - t2
    measured = {k: float(objective_value(m2.rel(names[k]), config.objective, low_arg)) for k in to_measure}

    points: list[dict[str, Any]] = []
    assignments: list[dict[str, Scheme]] = []
    for budget, cap, cands in zip(config.budgets, capacities, per_budget):
        best = min(cands, key=lambda c: (measured[tuple(c[1])], c[2], len(c[1])))
        picked = [units[i] for i in best[1]]
        resolved = plan_for(modmap, universe, picked, base, protect, config.granularity)
        bits = universe_bits(resolved, universe)
        spent = costs.costs(kind)[best[1]].sum() if best[1] else 0.0
        assert spent <= cap + 1e-6 * max(1.0, abs(cap)), "a chosen set exceeds its budget"
        points.append(
            {
                "budget": budget,
                "budget_kind": kind,
                "units": [u.name for u in picked],
                "found_by": best[0],
                "plan": str(resolved.plan),
                "plan_toml": resolved.plan.to_toml(),
                "bits_per_universe_weight": bits,
                "model_cost": cost(modmap, resolved.assignment()),
                "protected_params": int(sum(u.n_params for u in picked)),
                "selection": {
                    "estimated_objective": best[2],
                    "measured_objective": measured[tuple(best[1])],
                    "candidates": [
                        {
                            "found_by": how,
                            "units": [units[i].name for i in c],
                            "estimated_objective": est,
                            "measured_objective": measured[tuple(c)],
                        }
                        for how, c, est in cands
                    ],
                },
            }
        )
        assignments.append(resolved.assignment())

    # 4. the verdict on held-out documents: chosen plans, uniform schemes, structural plans
    rows: dict[str, dict[str, Any]] = {}
    held_configs: dict[str, dict[str, Scheme]] = {}
    for s in dict.fromkeys([base, *uniform]):
        held_configs[f"uniform {s.name}"] = {t: s for t in universe}
        res = Plan.parse(f"{s.name}:*").resolve(modmap)
        rows[f"uniform {s.name}"] = {"kind": "uniform", "plan": str(res.plan), "resolved": res}
    structural_notes = {}
    for label, text in structural_plans(protect, base, modmap).items():
        if text is None:
            structural_notes[label] = "not applicable: norms and biases are outside the quantized universe"
            continue
        res = Plan.parse(text).resolve(modmap)
        held_configs[label] = res.assignment()
        rows[label] = {"kind": "structural", "plan": text, "resolved": res}
    for i, p in enumerate(points):
        name = f"searched @{p['budget']:g}"
        held_configs[name] = assignments[i]
        rows[name] = {"kind": "searched", "plan": p["plan"], "point": i}
    t3 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    m3, sweep_stats = _measure(held, langs, held_configs, [f"uniform {base.name}"], config, tick)
    m3.weights = [resample_counts(sl.stop - sl.start, config.n_boot, rng) for sl in m3.slices]
    t_held = time.perf_counter() - t3
    short = [lang for lang, sl in zip(langs, m3.slices) if sl.stop - sl.start < MIN_DOCS_FOR_INTERVAL]
    note = no_interval_note(short) if short else None

    def verdict(name: str) -> dict[str, Any]:
        rel, reps = m3.rel(name), m3.rel_reps(name)
        obj_p = float(objective_value(rel, config.objective, low_arg))
        obj_r = objective_value(reps, config.objective, low_arg)
        worst_p, worst_r = float(rel.max()), reps.max(axis=1)
        mean_p, mean_r = float(rel.mean()), reps.mean(axis=1)
        return {
            "objective": _est(obj_p, obj_r, note),
            "worst": {**_est(worst_p, worst_r, note), "lang": langs[int(rel.argmax())]},
            "mean": _est(mean_p, mean_r, note),
            "languages": {
                lang: _est(float(rel[j]), reps[:, j], note if lang in short else None) for j, lang in enumerate(langs)
            },
            "_reps": (obj_r, worst_r),
            "_points": (obj_p, worst_p),
        }

    results = {name: verdict(name) for name in held_configs}
    table = []
    for name, row in rows.items():
        rp: ResolvedPlan | None = row.get("resolved")
        if rp is not None:
            bits, mc = universe_bits(rp, universe), cost(modmap, rp.assignment())
        else:
            p = points[row["point"]]
            bits, mc = p["bits_per_universe_weight"], p["model_cost"]
        r = results[name]
        table.append(
            {
                "name": name,
                "kind": row["kind"],
                "plan": row["plan"],
                "bits_per_universe_weight": bits,
                "bits_per_model_weight": mc["bits_per_weight"],
                "model_bytes": mc["total_bytes"],
                **{k: r[k] for k in ("objective", "worst", "mean", "languages")},
            }
        )
    uniforms = [r for r in table if r["kind"] == "uniform"]
    for p in points:
        name = f"searched @{p['budget']:g}"
        near = min(
            uniforms, key=lambda r: (abs(r["bits_per_universe_weight"] - p["bits_per_universe_weight"]), r["name"])
        )
        (so, sw), (uo, uw) = results[name]["_reps"], results[near["name"]]["_reps"]
        (so_p, sw_p), (uo_p, uw_p) = results[name]["_points"], results[near["name"]]["_points"]
        p["heldout"] = {k: results[name][k] for k in ("objective", "worst", "mean", "languages")}
        p["versus_uniform"] = {
            "uniform": near["name"],
            "uniform_bits_per_universe_weight": near["bits_per_universe_weight"],
            "objective_difference": _est(so_p - uo_p, so - uo, note),
            "worst_difference": _est(sw_p - uw_p, sw - uw, note),
            "worst_ratio": _ratio(sw_p, sw, uw_p, uw, note),
        }
        if config.target:
            reached = p["heldout"]["objective"]["value"] <= config.target
            p["target"] = {"value": config.target, "reached": reached}
            if not reached:
                log(
                    f"target {config.target:g} is out of reach at budget {p['budget']:g}: the best plan found has "
                    f"held-out {config.objective} {p['heldout']['objective']['value']:.4g}"
                )
    return {
        "schema": "quant-disparity/search",
        "schema_version": 1,
        "command": "search",
        "config": config.to_dict(),
        "objective": {"name": config.objective, "definition": OBJECTIVES[config.objective], "metric": "rel_delta_bpb"},
        "model": {**lm.info.to_dict(), "module_map": modmap.summary()},
        "scheme": base.name,
        "protect": KEEP if protect is None else protect.name,
        "universe": {
            "tensors": len(universe),
            "params": costs.universe_params,
            "base_bits_per_weight": costs.base_bits_per_weight,
            "note": "bits per universe weight: over the quantized universe (the Linear weights of the decoder "
            "blocks), every tensor at its stored width (scales, zero points; a kept tensor at its stored bits); "
            "bits per model weight: over every parameter of the model, the rest as stored",
        },
        "units": [
            {
                "name": u.name,
                "params": u.n_params,
                "extra_bits": float(costs.unit_bits[i]),
                "selection_recovery": {lang: float(recovery[i, j]) for j, lang in enumerate(langs)},
            }
            for i, u in enumerate(units)
        ],
        "languages": [{"id": lang, "low_resource": bool(low[j])} for j, lang in enumerate(langs)],
        "documents": {
            "selection": {lang: [d.id for d in sel.selection.docs[lang]] for lang in langs},
            "heldout": {lang: [d.id for d in held.selection.docs[lang]] for lang in langs},
            "selection_tokens": sel.prepared.total_pred,
            "heldout_tokens": held.prepared.total_pred,
        },
        "selection_base": {lang: float(rel0[j]) for j, lang in enumerate(langs)},
        "points": points,
        "table": table,
        "structural_notes": structural_notes,
        "environment": environment(),
        "timing": {
            "protect_one_s": round(t_one, 3),
            "refine_s": round(t_refine, 3),
            "heldout_s": round(t_held, 3),
            "search_s": round(t_one + t_refine, 3),
            "total_s": round(time.perf_counter() - t0, 3),
            "protect_one_configurations": len(configs),
            "refine_configurations": len(to_measure),
            "heldout_configurations": len(held_configs),
            "heldout_sweep": sweep_stats,
        },
    }


__all__ = ["GRANULARITIES", "OBJECTIVES", "SearchConfig", "estimate", "plan_for", "run_search", "unit_costs"]
