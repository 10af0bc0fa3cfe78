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
from collections.abc import Callable, Mapping
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
from .evaluate.sweep import sweep, token_counter
from .inputs import check_model_and_corpus, load_inputs
from .models import LoadedModel
from .models.modules import COMPONENTS, ModuleMap, head_elements, mlp_width, neuron_elements
from .provenance import environment
from .quant import Scheme, cost, engine_for, parse_scheme
from .quant.plan import weight_2d_shape

GRANULARITIES = ("layer", "component", "layer×component", "head", "neurons:N")
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
    # ``--estimate SCORE --top K``: measure only the K units the score ranks first (protect/estimate.py)
    estimate: str = ""
    top: int = 0
    # ``--quantized ARTIFACT``: the universe is the tensors the artifact changes, each at its stored value
    quantized: str = ""

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
        "estimate": None,
        "top": None,
        "quantized": None,
    }

    def to_dict(self) -> dict:
        """Every key; ``estimate``, ``top`` and ``quantized`` only when set (locate outputs written before them
        keep their shape)."""
        data = super().to_dict()
        if not self.estimate and not self.top:
            del data["estimate"], data["top"]
        if not self.quantized:
            del data["quantized"]
        return data

    def __post_init__(self):
        g = {
            "layerxcomponent": "layer×component",
            "layer-component": "layer×component",
            "layer*component": "layer×component",
        }.get(self.granularity, self.granularity)
        object.__setattr__(self, "granularity", g)
        if g.startswith("neurons"):
            m = re.fullmatch(r"neurons:(\d+)", g)
            if not m or int(m.group(1)) < 1:
                raise UserError(
                    f"granularity {g!r}: neurons takes a group size, a positive whole number",
                    "e.g. --granularity neurons:256",
                )
        elif g not in GRANULARITIES:
            raise UserError(f"unknown granularity {self.granularity!r}", f"use {', '.join(GRANULARITIES)}")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}{did_you_mean(self.mode, MODES)}", f"use {', '.join(MODES)}")
        if len(self.pairs) == 1:
            raise UserError("--pairs needs at least two units", "e.g. --pairs L0,L-1,L5")
        check_common(self)
        check_langs(self.selection)
        from .protect.estimate import check_estimate

        check_estimate(self.estimate, self.top, g, self.pairs)
        if self.quantized:
            if g not in ("layer", "component", "layer×component"):
                raise UserError(
                    f"--quantized works on whole tensors (layer, component or layer×component units), not {g!r}",
                    "use --granularity layer",
                )
            if self.include:
                raise UserError("--include does not combine with --quantized", "the artifact decides what differs")
            if self.estimate:
                raise UserError(
                    "--estimate does not combine with --quantized yet (the scores quantize with a scheme)",
                    "run the full sweep of the artifact",
                )


# -- units ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """Whole tensors, or (``parts``: tensor, rows, columns of its ``[out, in]`` view) elements of them."""

    name: str
    tensors: tuple[str, ...]
    n_params: int  # elements
    parts: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()


def _element_unit(name: str, modmap: ModuleMap, parts: list[tuple[str, list[int], list[int]]]) -> Unit | None:
    parts = [(t, r, c) for t, r, c in parts if r or c]
    if not parts:
        return None
    n = 0
    for t, r, c in parts:
        out_f, in_f = weight_2d_shape(modmap[t])
        n += len(r) * in_f + len(c) * out_f - len(r) * len(c)
    return Unit(name, tuple(t for t, _, _ in parts), n, tuple((t, tuple(r), tuple(c)) for t, r, c in parts))


def _head_units(modmap: ModuleMap, universe: list[str]) -> list[Unit]:
    """One unit per query head (its q rows and o columns, and its own k/v rows when nobody shares them); under
    grouped-query or multi-query attention one more per key/value head (its k and v rows), counted once."""
    layout = modmap.attention
    if layout is None:
        raise UserError(
            f"--granularity head: the attention heads of this model cannot be separated ({modmap.attention_note})",
            "use --granularity layer×component for its attention projections",
        )
    units: list[Unit] = []
    for layer in range(modmap.n_layers):
        mine = [modmap[t] for t in universe if modmap[t].layer == layer]
        for h in range(layout.n_heads):
            own_kv = set() if layout.shared_kv else {h}
            u = _element_unit(
                f"L{layer}.h{h}", modmap, [(p.name, *head_elements(p, layout, {h}, own_kv)) for p in mine]
            )
            units += [u] if u else []
        if layout.shared_kv:
            for g in range(layout.n_kv_heads):
                u = _element_unit(
                    f"L{layer}.kv{g}", modmap, [(p.name, *head_elements(p, layout, set(), {g})) for p in mine]
                )
                units += [u] if u else []
    return units


def _neuron_units(modmap: ModuleMap, universe: list[str], size: int) -> list[Unit]:
    """MLP intermediate channels in groups of ``size`` (refused unless it divides every block's MLP width)."""
    units: list[Unit] = []
    for layer in range(modmap.n_layers):
        width = mlp_width(modmap, layer)
        if width is None:
            continue
        if width % size:
            divisors = [d for d in (32, 64, 128, 256, 512) if width % d == 0 and d <= width]
            raise UserError(
                f"--granularity neurons:{size}: {size} does not divide the MLP width of layer {layer} ({width})",
                f"use a divisor of {width}" + (f", e.g. neurons:{divisors[-1]}" if divisors else ""),
            )
        mine = [modmap[t] for t in universe if modmap[t].layer == layer]
        for start in range(0, width, size):
            ch = list(range(start, start + size))
            u = _element_unit(
                f"L{layer}.n{start}-{start + size - 1}",
                modmap,
                [(p.name, *neuron_elements(p, ch, width)) for p in mine],
            )
            units += [u] if u else []
    return units


def make_units(modmap: ModuleMap, universe: list[str], granularity: str) -> list[Unit]:
    """Units of a sweep. ``head`` and ``neurons:N`` units hold rows and columns of the block tensors (tensors
    outside the blocks, when included, stay units by component); block tensors that are neither attention
    projections (for ``head``) nor MLP projections (for ``neurons``) belong to no unit and are quantized in
    every protect-one configuration, left as they are in every quantize-only one."""
    info = {p.name: p for p in modmap.params}
    if granularity == "head" or granularity.startswith("neurons:"):
        outside = make_units(modmap, [t for t in universe if info[t].layer is None], "component")
        inside = [t for t in universe if info[t].layer is not None]
        if granularity == "head":
            return _head_units(modmap, inside) + outside
        return _neuron_units(modmap, inside, int(granularity.split(":")[1])) + outside
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
    """``L0``, ``L-1``, ``mlp``, ``attn.q``, ``L3.mlp.down``, ``embed.token``: the universe tensors it names;
    ``L3.h5``, ``L3.kv0``, ``L3.n0-255``: a head, a shared key/value head, MLP channels 0..255 of block 3."""
    text = text.strip()
    info = {p.name: p for p in modmap.params}
    n = modmap.n_layers
    e = re.fullmatch(r"L(-?\d+)\.(h\d+|kv\d+|n\d+-\d+)", text)
    if e:  # a head, key/value head or neuron group
        at = int(e.group(1))
        if not -n <= at < n:
            raise UserError(f"unit {text!r}: layer {at} is out of range", f"the model has layers 0..{n - 1}")
        name = f"L{at % n}.{e.group(2)}"
        if e.group(2).startswith("n"):
            a, b = map(int, e.group(2)[1:].split("-"))
            width = mlp_width(modmap, at % n)
            if width is None or b < a or b >= width:
                raise UserError(
                    f"unit {text!r}: neurons {a}-{b} are not a range of this layer's MLP channels",
                    f"layer {at % n} has {width or 0} channels",
                )
            mine = [info[t] for t in universe if info[t].layer == at % n]
            u = _element_unit(name, modmap, [(p.name, *neuron_elements(p, list(range(a, b + 1)), width)) for p in mine])
        else:
            inside = [t for t in universe if info[t].layer is not None]
            u = next((x for x in _head_units(modmap, inside) if x.name == name), None)
            if u is None and modmap.attention is not None:
                lay = modmap.attention
                raise UserError(
                    f"unit {text!r} names no head of this model",
                    f"{lay.n_heads} query heads (h0..h{lay.n_heads - 1})"
                    + (f" and {lay.n_kv_heads} key/value heads (kv0..kv{lay.n_kv_heads - 1})" if lay.shared_kv else ""),
                )
        if u is None:
            raise UserError(f"unit {text!r} names no quantized tensor")
        return u
    m = re.fullmatch(r"L(-?\d+)(?:\.(.+))?", text)
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
#: A sweep's quantization: one scheme for every tensor of the universe, or (an artifact) each tensor's own.
Schemes = Scheme | Mapping[str, Scheme]


def _scheme_of(schemes: Schemes, tensor: str) -> Scheme:
    return schemes if isinstance(schemes, Scheme) else schemes[tensor]


def unit_config(
    universe: list[str], units: list[Unit], schemes: Schemes, mode: str, modmap: ModuleMap | None = None
) -> dict[str, Scheme]:
    """The assignment that protects (protect-one) or alone quantizes (quantize-only) the union of ``units``.

    Element units (heads, neurons) keep rows / columns: protect-one keeps the unit's, quantize-only keeps all
    the others of each tensor the unit touches (``modmap`` gives their shapes)."""

    def scheme(t: str) -> Scheme:
        return _scheme_of(schemes, t)

    whole: set[str] = set()
    rows: dict[str, set[int]] = {}
    cols: dict[str, set[int]] = {}
    for u in units:
        if not u.parts:
            whole.update(u.tensors)
        for t, r, c in u.parts:
            rows.setdefault(t, set()).update(r)
            cols.setdefault(t, set()).update(c)
    if mode == "protect-one":
        return {
            t: scheme(t).with_kept(rows[t], cols[t]) if t in rows else scheme(t) for t in universe if t not in whole
        }
    out = {t: scheme(t) for t in universe if t in whole}
    for t in rows:
        if t in whole:
            continue
        assert modmap is not None, "quantize-only element units need the module map for the tensor shapes"
        out_f, in_f = weight_2d_shape(modmap[t])
        if rows[t] and cols[t]:  # never from head or neuron units: q/k/v give rows, o/down columns
            raise UserError(f"quantize-only: cannot quantize both rows and columns of {t} alone")
        keep_r = [i for i in range(out_f) if rows[t] and i not in rows[t]]
        keep_c = [j for j in range(in_f) if cols[t] and j not in cols[t]]
        out[t] = scheme(t).with_kept(keep_r, keep_c)
    return out


def build_configs(
    universe: list[str],
    units: list[Unit],
    pairs: list[tuple[Unit, Unit]],
    schemes: Schemes,
    mode: str,
    modmap: ModuleMap | None = None,
) -> dict[str, dict[str, Scheme]]:
    configs = {"all": {t: _scheme_of(schemes, t) for t in universe}}

    def config(*us: Unit) -> dict[str, Scheme]:
        return unit_config(universe, list(us), schemes, mode, modmap)

    for u in units:
        configs[u.name] = config(u)
    for a, b in pairs:
        configs.setdefault(a.name, config(a))
        configs.setdefault(b.name, config(b))
        configs[f"{a.name}+{b.name}"] = config(a, b)
    return configs


def _unit_record(u: Unit, modmap: ModuleMap) -> dict:
    out: dict = {"name": u.name, "tensors": len(u.tensors), "params": u.n_params}
    m = re.fullmatch(r"L(\d+)\.kv(\d+)", u.name)
    if m and modmap.attention is not None:  # a shared key/value head: one unit, counted once
        g, layer = modmap.attention.group, m.group(1)
        out["shared_by"] = [f"L{layer}.h{h}" for h in range(int(m.group(2)) * g, (int(m.group(2)) + 1) * g)]
    return out


def sweep_configs(
    config: LocateConfig, modmap: ModuleMap, scheme: Scheme, artifact: Mapping[str, Scheme] | None = None
) -> tuple[list[str], list[Unit], list[tuple[Unit, Unit]], dict[str, dict[str, Scheme]]]:
    """The universe, units, pairs and configurations of ``config``'s sweep on ``modmap`` (also what
    ``--dry-run`` counts). ``artifact``: the tensors a pre-quantized artifact changes, each with its stored value
    (the universe is then those tensors)."""
    universe = list(artifact) if artifact is not None else quantization_targets(modmap, config.include)
    units = make_units(modmap, universe, config.granularity)
    pair_units = [parse_unit(u, modmap, universe) for u in config.pairs]
    names = [u.name for u in pair_units]
    if len(set(names)) != len(names):
        raise UserError(f"--pairs names a unit twice ({', '.join(names)})")
    pairs = list(itertools.combinations(pair_units, 2))
    schemes: Schemes = artifact if artifact is not None else scheme
    return universe, units, pairs, build_configs(universe, units, pairs, schemes, config.mode, modmap)


def validate(config: LocateConfig) -> tuple[Scheme, Corpus, list[str]]:
    """Everything that can be checked before a model is loaded; raises :class:`UserError`."""
    scheme = parse_scheme(config.scheme)
    if config.quantized:
        from .models.artifact import classify_artifact

        classify_artifact(config.quantized)
    return scheme, *check_model_and_corpus(config.runtime, config.selection)


def run_locate(
    config: LocateConfig,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> LocateResult:
    t0 = time.perf_counter()
    scheme, corpus, langs = validate(config)
    if config.quantized:  # before any weights are loaded: a model, the same tokenizer, the same tensors
        from .models.artifact import check_artifact

        check_artifact(config.quantized, config.model, log)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    lm, modmap, selection, prepared = inputs.lm, inputs.modmap, inputs.selection, inputs.prepared
    artifact, artifact_info = None, None
    if config.quantized:
        from .models.artifact import open_artifact

        opened = open_artifact(config.quantized, lm, modmap, log)
        artifact = opened.assignment(modmap)
        artifact_info = {"name": f"artifact:{opened.format}", "artifact": opened.summary(modmap)}
        if not artifact:
            raise UserError(f"{config.quantized}: no tensor differs from the reference, so there is nothing to locate")
        log(f"artifact: {len(artifact)} of {len(modmap.params)} tensors differ from the reference")
    universe, units, pairs, configs = sweep_configs(config, modmap, scheme, artifact)
    estimate: dict | None = None
    if config.estimate:
        units, estimate = _estimated_units(config, inputs, scheme, universe, units, langs, log)
        configs = build_configs(universe, units, [], artifact or scheme, config.mode, modmap)
    total = prepared.total_pred * len(configs)
    if config.granularity == "head" and modmap.attention is not None and modmap.attention.shared_kv:
        lay = modmap.attention
        log(
            f"{lay.n_heads} query heads share {lay.n_kv_heads} key/value head(s) per layer: each key/value head "
            "is a unit of its own (L<i>.kv<g>, its k and v rows), counted once; a query head's unit holds its q "
            "rows and o columns"
        )
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
    tick = token_counter(total, progress)
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
    timing = {
        "quantize_s": round(t_eval - t_q, 3),
        "evaluate_s": round(t_done - t_eval, 3),
        **({"estimate_s": estimate["score_s"]} if estimate else {}),
        "total_s": round(time.perf_counter() - t0, 3),
        "configurations": len(configs),
        "tokens_per_configuration": prepared.total_pred,
        **scores.stats,
    }
    return LocateResult(
        config=config.to_dict(),
        model={**lm.info.to_dict(), "module_map": modmap.summary()},
        scheme={
            "name": scheme.name,
            "universe_tensors": len(universe),
            "universe_cost": cost(modmap, configs["all"]),
            **(artifact_info or {}),
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
        units=[_unit_record(u, modmap) for u in units],
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
        timing=timing,
        estimate=estimate,
    )


def _estimated_units(config: LocateConfig, inputs, scheme: Scheme, universe, units, langs, log):
    """The top ``config.top`` units by ``config.estimate`` (all of them when there are fewer) and the record."""
    from .protect.data import windows_by_language
    from .protect.estimate import rank_units
    from .protect.weights import SCORES

    windows = None
    if SCORES.get(config.estimate).needs != "weights":
        docs = [(lang, len(inputs.selection.docs[lang])) for lang in langs]
        windows = windows_by_language(inputs.prepared.batches, docs)
    ranking = rank_units(
        config.estimate,
        [u.name for u in units],
        inputs.lm.model,
        inputs.modmap,
        scheme,
        universe,
        config.granularity,
        windows,
        config.seed,
        log,
    )
    top = min(config.top, len(units))
    record = ranking.record(top)
    keep = set(record["measured_units"])
    log(f"--estimate {config.estimate}: measuring {top} of {len(units)} units ({', '.join(record['measured_units'])})")
    return [u for u in units if u.name in keep], record


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
