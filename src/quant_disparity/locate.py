"""locate: which layers / components cause each language's damage?

A *universe* of tensors is quantized (by default the Linear weights in the decoder blocks, as in the audit).
It is cut into *units* (layers, components, or both) and every unit gets one configuration:

- ``protect-one``: everything in the universe quantized except the unit. Effect = damage *recovered* by
  protecting it: bpb(all quantized) - bpb(unit protected), in % of the reference bpb.
- ``quantize-only``: only the unit quantized. Effect = damage the unit causes alone: bpb(unit) - bpb(reference).

``pairs``: for units A, B the interaction (synergy) of protecting (or quantizing) both, beyond the sum of
each alone; positive means "more together than apart". Every number has a 95% paired bootstrap interval
(the same document resamples for every configuration of a language).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .analysis.records import (
    LOCATE_METRICS,
    LocateLanguage,
    LocateResult,
    PairResult,
    UnitResult,
    effect_matrix,
    rank_units,
)
from .analysis.stats import Estimate, interval, language_metrics, may_be_zero, resample_counts
from .audit import quantization_targets
from .config import FlatConfig, ModelRuntime, check_common, check_langs
from .corpus import Corpus, CorpusSelection, language_info
from .corpus.documents import base_language
from .errors import UserError, did_you_mean
from .evaluate import EvalSettings, Forward
from .evaluate.sweep import sweep
from .inputs import check_model_and_corpus, load_inputs
from .models import LoadedModel
from .models.modules import COMPONENTS, ModuleMap
from .provenance import environment
from .quant import Scheme, cost, engine_for, parse_scheme

GRANULARITIES = ("layer", "component", "layer×component")
MODES = ("protect-one", "quantize-only")


def _locate_eval() -> EvalSettings:
    return EvalSettings(batch_tokens=2048)


@dataclass(frozen=True, init=False)
class LocateConfig(FlatConfig):
    runtime: ModelRuntime = ModelRuntime()
    # a sensitivity scan chooses; verdicts belong on held-out documents
    selection: CorpusSelection = CorpusSelection(split="select", max_tokens=512)
    scheme: str = "w4g128"
    granularity: str = "layer"
    mode: str = "protect-one"
    pairs: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    reuse: bool = True
    seed: int = 0
    n_boot: int = 1000
    eval: EvalSettings = field(default_factory=_locate_eval)
    version: int = 1

    NAME = "locate config"
    KEYS = {
        "model": ("runtime", "model"),
        "scheme": None,
        "langs": ("selection", "langs"),
        "corpus": ("selection", "name"),
        "split": ("selection", "split"),
        "max_tokens": ("selection", "max_tokens"),
        "min_docs": ("selection", "min_docs"),
        "granularity": None,
        "mode": None,
        "pairs": None,
        "include": None,
        "reuse": None,
        "seed": None,
        "n_boot": None,
        "device": ("runtime", "device"),
        "dtype": ("runtime", "dtype"),
        "flores_split": ("selection", "flores_split"),
        "sentences_per_doc": ("selection", "sentences_per_doc"),
        "eval": None,
        "version": None,
    }

    def __post_init__(self):
        g = {
            "layerxcomponent": "layer×component",
            "layer-component": "layer×component",
            "layer*component": "layer×component",
        }.get(self.granularity, self.granularity)
        object.__setattr__(self, "granularity", g)
        if g not in GRANULARITIES:
            raise UserError(f"unknown granularity {self.granularity!r}", f"use {', '.join(GRANULARITIES)}")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}{did_you_mean(self.mode, MODES)}", f"use {', '.join(MODES)}")
        if len(self.pairs) == 1:
            raise UserError("--pairs needs at least two units", "e.g. --pairs L0,L-1,L5")
        check_common(self)
        check_langs(self.selection)


# -- units ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    name: str
    tensors: tuple[str, ...]
    n_params: int


def make_units(modmap: ModuleMap, universe: list[str], granularity: str) -> list[Unit]:
    info = {p.name: p for p in modmap.params}
    groups: dict[str, list[str]] = {}
    for name in universe:
        p = info[name]
        comp = "+".join(p.components)
        if p.layer is None:
            key = comp
        elif granularity == "layer":
            key = f"L{p.layer}"
        elif granularity == "component":
            key = comp
        else:
            key = f"L{p.layer}.{comp}"
        groups.setdefault(key, []).append(name)

    def comp_rank(comp: str) -> int:
        first = comp.split("+")[0]
        return COMPONENTS.index(first) if first in COMPONENTS else len(COMPONENTS)

    def order(key: str):
        m = re.match(r"L(\d+)(?:\.(.*))?$", key)
        if m:
            return (0, int(m.group(1)), comp_rank(m.group(2) or ""))
        return (1, 0, comp_rank(key))

    return [
        Unit(k, tuple(v), sum(info[t].numel for t in v)) for k, v in sorted(groups.items(), key=lambda kv: order(kv[0]))
    ]


def parse_unit(text: str, modmap: ModuleMap, universe: list[str]) -> Unit:
    """``L0``, ``L-1``, ``mlp``, ``attn.q``, ``L3.mlp.down``, ``embed.token``: the universe tensors it names."""
    text = text.strip()
    info = {p.name: p for p in modmap.params}
    m = re.fullmatch(r"L(-?\d+)(?:\.(.+))?", text)
    n = modmap.n_layers
    if m:
        layer = int(m.group(1))
        if not -n <= layer < n:
            raise UserError(f"unit {text!r}: layer {layer} is out of range", f"the model has layers 0..{n - 1}")
        layer %= n
        comp = m.group(2)
        name = f"L{layer}" + (f".{comp}" if comp else "")
    else:
        layer, comp, name = None, text, text

    def hit(p) -> bool:
        if layer is not None and p.layer != layer:
            return False
        return comp is None or any(c == comp or c.startswith(comp + ".") for c in p.components)

    tensors = tuple(t for t in universe if hit(info[t]))
    if not tensors:
        known = sorted({c for t in universe for c in info[t].components})
        raise UserError(
            f"unit {text!r} names no quantized tensor",
            f"units: L0..L{n - 1}, a component ({', '.join(known)}), or L<i>.<component>",
        )
    return Unit(name, tensors, sum(info[t].numel for t in tensors))


# -- statistics ----------------------------------------------------------------------------------------------------
@dataclass
class _LangData:
    lang: str
    idx: np.ndarray
    bytes: np.ndarray
    weights: np.ndarray  # [n_boot, n_docs]


#: How the per-language statistics of analysis.stats are named in a locate row.
_METRIC_OF = {
    "bpb": "bpb_q",
    "delta_bpb": "delta_bpb",
    "rel_delta_bpb": "rel_delta_bpb",
    "kl_bits": "kl_bits",
    "top1_agreement": "top1_agreement",
}
assert tuple(_METRIC_OF) == LOCATE_METRICS


def _ratio(num_p: float, num_r: np.ndarray, den_p: float, den_r: np.ndarray, what: str) -> Estimate:
    """``num / den`` with its interval; undefined (never ±inf or a huge number) when the denominator is a
    measured zero or may be zero (:func:`may_be_zero`), e.g. a share of damage when quantizing changed nothing
    measurable."""
    den = interval(den_p, den_r)
    if den.value is None or den.value == 0 or may_be_zero(den):
        return Estimate(None, note=f"undefined: the 95% interval of {what} includes zero")
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(num_p / den_p, num_r / den_r)


def analyse(
    scores, langs: dict[str, _LangData], unit_names: list[str], mode: str, pairs: list[tuple[str, str]]
) -> dict[str, LocateLanguage]:
    out: dict[str, LocateLanguage] = {}
    for lang, ld in langs.items():

        def sums(name: str, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
            cols = {
                "nll": scores.nll[name][ld.idx],
                "nll_ref": scores.nll_ref[ld.idx],
                "kl": scores.kl[name][ld.idx],
                "top1": scores.top1[name][ld.idx],
                "n_pred": scores.n_pred[ld.idx],
                "bytes": ld.bytes,
            }
            return {k: v.sum() if weights is None else weights @ v for k, v in cols.items()}

        # the statistics of every configuration: (point values, bootstrap replicates) per metric
        stats = {name: (language_metrics(sums(name)), language_metrics(sums(name, ld.weights))) for name in scores.nll}
        point, reps = stats["all"]
        fp, fp_r = float(point["bpb_fp"]), reps["bpb_fp"]
        all_p, all_r = float(point["bpb_q"]), reps["bpb_q"]

        def bpb(name: str) -> tuple[float, np.ndarray]:
            p, r = stats[name]
            return float(p["bpb_q"]), r["bpb_q"]

        def row(name: str) -> dict[str, Estimate]:
            p, r = stats[name]
            return {k: interval(float(p[m]), r[m]) for k, m in _METRIC_OF.items()}

        def unit_row(u: str) -> UnitResult:
            p, rr = bpb(u)
            share = None
            if mode == "protect-one":
                eff_p, eff_r = (all_p - p) / fp, (all_r - rr) / fp_r
                share = _ratio(all_p - p, all_r - rr, all_p - fp, all_r - fp_r, "the all-quantized damage")
            else:
                eff_p, eff_r = (p - fp) / fp, (rr - fp_r) / fp_r
            return UnitResult(row(u), interval(eff_p, eff_r), share)

        units, ranked = rank_units({u: unit_row(u) for u in unit_names})
        pair_rows = {}
        for a, b in pairs:
            ab = f"{a}+{b}"
            (pa, ra), (pb, rb), (pab, rab) = bpb(a), bpb(b), bpb(ab)
            if mode == "protect-one":  # recovery(AB) - recovery(A) - recovery(B)
                ip, ir = (pa + pb - pab - all_p) / fp, (ra + rb - rab - all_r) / fp_r
            else:  # damage(AB) - damage(A) - damage(B)
                ip, ir = (pab - pa - pb + fp) / fp, (rab - ra - rb + fp_r) / fp_r
            pair_rows[ab] = PairResult(
                (a, b),
                row(ab),
                interval(ip, ir),
                (units.get(a) or unit_row(a)).effect,
                (units.get(b) or unit_row(b)).effect,
            )
        out[lang] = LocateLanguage(
            bpb_fp=interval(fp, fp_r), all_quantized=row("all"), units=units, ranking=tuple(ranked), pairs=pair_rows
        )
    return out


# -- the command ---------------------------------------------------------------------------------------------------
def build_configs(
    universe: list[str], units: list[Unit], pairs: list[tuple[Unit, Unit]], scheme: Scheme, mode: str
) -> dict[str, dict[str, Scheme]]:
    full = {t: scheme for t in universe}
    configs = {"all": full}

    def config(tensors: set[str]) -> dict[str, Scheme]:
        if mode == "protect-one":
            return {t: s for t, s in full.items() if t not in tensors}
        return {t: scheme for t in universe if t in tensors}

    for u in units:
        configs[u.name] = config(set(u.tensors))
    for a, b in pairs:
        configs.setdefault(a.name, config(set(a.tensors)))
        configs.setdefault(b.name, config(set(b.tensors)))
        configs[f"{a.name}+{b.name}"] = config(set(a.tensors) | set(b.tensors))
    return configs


def validate(config: LocateConfig) -> tuple[Scheme, Corpus, list[str]]:
    """Everything that can be checked before a model is loaded; raises :class:`UserError`."""
    return parse_scheme(config.scheme), *check_model_and_corpus(config.runtime, config.selection)


def run_locate(
    config: LocateConfig,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> LocateResult:
    t0 = time.perf_counter()
    scheme, corpus, langs = validate(config)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    lm, modmap, selection, prepared = inputs.lm, inputs.modmap, inputs.selection, inputs.prepared
    universe = quantization_targets(modmap, config.include)
    units = make_units(modmap, universe, config.granularity)
    pair_units = [parse_unit(u, modmap, universe) for u in config.pairs]
    names = [u.name for u in pair_units]
    if len(set(names)) != len(names):
        raise UserError(f"--pairs names a unit twice ({', '.join(names)})")
    pairs = list(itertools.combinations(pair_units, 2))
    configs = build_configs(universe, units, pairs, scheme, config.mode)
    total = prepared.total_pred * len(configs)
    log(
        f"{len(units)} units, {len(configs)} configurations, {len(prepared.docs)} documents, "
        f"{prepared.total_pred} tokens per configuration"
    )

    engine = engine_for(lm, modmap)
    t_q = time.perf_counter()
    if engine.cache:  # fill the quantization cache once (each tensor x scheme is quantized once)
        for cfg in configs.values():
            engine.assign_(cfg)
        engine.restore_()
    t_eval = time.perf_counter()
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    scores = sweep(
        Forward(lm.model),
        prepared,
        engine,
        configs,
        bases=["all"] if config.mode == "protect-one" else [],
        reuse=config.reuse,
        vocab_chunk=config.eval.vocab_chunk,
        progress=tick,
    )
    t_done = time.perf_counter()

    rng = np.random.default_rng(config.seed)
    lang_data, offset = {}, 0
    for lang in langs:
        n = len(selection.docs[lang])
        lang_data[lang] = _LangData(
            lang,
            np.arange(offset, offset + n),
            np.array(prepared.n_bytes[offset : offset + n], dtype=np.float64),
            resample_counts(n, config.n_boot, rng),
        )
        offset += n
    results = analyse(scores, lang_data, [u.name for u in units], config.mode, [(a.name, b.name) for a, b in pairs])
    return LocateResult(
        config=config.to_dict(),
        model={**lm.info.to_dict(), "module_map": modmap.summary()},
        scheme={
            "name": scheme.name,
            "universe_tensors": len(universe),
            "universe_cost": cost(modmap, {t: scheme for t in universe}),
        },
        corpus={
            "name": corpus.name,
            "digest": corpus.digest,
            "split": config.split,
            "max_tokens_per_language": config.max_tokens,
            **({"min_docs_per_language": config.min_docs} if config.min_docs > 1 else {}),
        },
        mode=config.mode,
        granularity=config.granularity,
        effect=(
            "share of the reference bpb recovered by protecting the unit (bpb all-quantized - bpb unit "
            "protected) / bpb reference"
            if config.mode == "protect-one"
            else "relative Δbpb caused by quantizing the unit alone"
        ),
        units=[{"name": u.name, "tensors": len(u.tensors), "params": u.n_params} for u in units],
        languages=[
            {
                **language_info(base_language(lang)).to_dict(),
                "id": lang,
                "n_docs": len(selection.docs[lang]),
                "n_bytes": int(lang_data[lang].bytes.sum()),
            }
            for lang in langs
        ],
        results=results,
        pairs=[[a.name, b.name] for a, b in pairs],
        environment=environment(),
        timing={
            "quantize_s": round(t_eval - t_q, 3),
            "evaluate_s": round(t_done - t_eval, 3),
            "total_s": round(time.perf_counter() - t0, 3),
            "configurations": len(configs),
            "tokens_per_configuration": prepared.total_pred,
            **scores.stats,
        },
    )


__all__ = [
    "GRANULARITIES",
    "MODES",
    "LocateConfig",
    "LocateResult",
    "Unit",
    "effect_matrix",
    "make_units",
    "parse_unit",
    "run_locate",
]
