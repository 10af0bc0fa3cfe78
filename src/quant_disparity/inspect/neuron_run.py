"""``quant-disparity inspect neurons``: firing statistics and LAPE's language-specific neurons on the selection
split (:mod:`.neurons`), and with ``protect`` the protection experiment on the held-out split
(:mod:`.neuron_protect`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..analysis.stats import too_few_documents
from ..audit import quantization_targets
from ..config import FlatConfig, ModelRuntime, check_common, check_langs
from ..corpus import CorpusSelection, language_info
from ..corpus.documents import base_language
from ..corpus.selection import resolve_langs
from ..errors import UserError
from ..evaluate import EvalSettings, Forward
from ..evaluate.sweep import sweep, token_counter
from ..inputs import check_model_and_corpus, load_inputs
from ..models import LoadedModel, load_model
from ..provenance import environment
from ..quant import cost, engine_for, parse_scheme
from .neuron_protect import KINDS, UNIFORM, ProtectPlan, check_equal_bits, columns, protection_table, resolve_plan
from .neurons import (
    ACTIVATION_QUANTILE,
    TOP_RATE,
    count_firing,
    jaccard,
    keep_plan_text,
    lape,
    max_entropy,
    mlp_sites,
    neuron_file,
    normalised_share,
    other_matched,
    per_layer,
    random_matched,
)


def _neurons_eval() -> EvalSettings:
    return EvalSettings(batch_tokens=2048)


@dataclass(frozen=True, init=False)
class NeuronsConfig(FlatConfig):
    """``max_tokens``: cap per language on the selection split (0 = every selection document);
    ``protect``: the languages whose neurons the protection experiment keeps (``("all",)``: every language
    with own neurons; empty: no experiment); ``protect_eval``: the languages it evaluates (empty: every
    language); ``heldout_max_tokens``: its cap per language on the held-out split (``min_docs`` applies to
    both splits)."""

    runtime: ModelRuntime = ModelRuntime()
    selection: CorpusSelection = CorpusSelection(split="select", max_tokens=0)
    scheme: str = "w4g128"
    top_rate: float = TOP_RATE
    activation_quantile: float = ACTIVATION_QUANTILE
    protect: tuple[str, ...] = ()
    protect_eval: tuple[str, ...] = ()
    heldout_max_tokens: int = 1024
    include: tuple[str, ...] = ()
    seed: int = 0
    n_boot: int = 1000
    eval: EvalSettings = field(default_factory=_neurons_eval)
    version: int = 1

    NAME = "neurons config"
    KEYS = {
        "model": ("runtime", "model"),
        "langs": ("selection", "langs"),
        "corpus": ("selection", "name"),
        "max_tokens": ("selection", "max_tokens"),
        "min_docs": ("selection", "min_docs"),
        "scheme": None,
        "top_rate": None,
        "activation_quantile": None,
        "protect": None,
        "protect_eval": None,
        "heldout_max_tokens": None,
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
        check_common(self)
        check_langs(self.selection)
        if self.heldout_max_tokens < 0:
            raise UserError(f"--heldout-max-tokens must be >= 0 (0 = no cap), got {self.heldout_max_tokens}")
        if not 0 < self.top_rate <= 1:
            raise UserError(f"--top-rate must be in (0, 1], got {self.top_rate:g}", "LAPE uses 0.01")
        if not 0 < self.activation_quantile < 1:
            raise UserError(
                f"--activation-quantile must be in (0, 1), got {self.activation_quantile:g}", "LAPE uses 0.95"
            )

    def heldout(self, langs: tuple[str, ...] = ()) -> CorpusSelection:
        """The held-out selection of the protection experiment (of ``langs`` when given)."""
        return dataclasses.replace(
            self.selection, split="heldout", max_tokens=self.heldout_max_tokens, langs=langs or self.selection.langs
        )


def validate(config: NeuronsConfig) -> tuple[list[str], list[str], list[str]]:
    """Checks before a model is loaded: scheme, model name, corpus, languages (each with selection documents,
    and held-out ones when the experiment runs). Returns the languages, the protected and the evaluated ones."""
    scheme = parse_scheme(config.scheme)
    corpus, langs = check_model_and_corpus(config.runtime, config.selection)
    if len(langs) < 2:
        raise UserError(
            "inspect neurons needs at least two languages", "language-specific means specific among several"
        )
    rows: list[str] = []
    cols: list[str] = []
    if config.protect_eval and not config.protect:
        raise UserError("--protect-eval needs --protect", "name the languages whose neurons are kept")
    if config.protect:
        if scheme.is_identity:
            raise UserError(f"--scheme {config.scheme} quantizes nothing: there is no damage to recover")
        rows = langs if tuple(config.protect) == ("all",) else resolve_langs(corpus, config.protect)
        cols = resolve_langs(corpus, config.protect_eval) if config.protect_eval else langs
        for option, chosen in (("--protect", rows), ("--protect-eval", cols)):
            unknown = [r for r in chosen if r not in langs]
            if unknown:
                raise UserError(
                    f"{option} {unknown[0]} is not one of the languages measured", "give languages that --langs names"
                )
        check_model_and_corpus(config.runtime, config.heldout(tuple(cols)))
    return langs, rows, cols


def run_neurons(
    config: NeuronsConfig,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, dict[str, str]]:
    """Returns neurons.json's mapping and the extra files (name -> text: neuron lists and keep plans)."""
    t0 = time.perf_counter()
    langs, rows, eval_langs = validate(config)
    corpus, _ = check_model_and_corpus(config.runtime, config.selection)
    if lm is None:
        lm = load_model(config.runtime.model, device=config.runtime.device, dtype=config.runtime.dtype, log=log)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    modmap, selection, prepared = inputs.modmap, inputs.selection, inputs.prepared
    sites = mlp_sites(lm.model, modmap)  # a model without a recognised MLP fails here, before any work
    lang_of_doc = [i for i, lang in enumerate(langs) for _ in selection.docs[lang]]
    n_counted = sum(n for n in prepared.n_pred)
    tick = token_counter(n_counted, progress)
    log(f"counting firing on {n_counted} selection tokens of {len(langs)} languages, {len(sites)} blocks")
    t_count = time.perf_counter()
    counts = count_firing(lm.model, modmap, prepared, lang_of_doc, len(langs), progress=tick)
    t_counted = time.perf_counter()
    probs = counts.probabilities
    sel = lape(probs, config.top_rate, config.activation_quantile)
    layers = counts.layers
    width = sites[0].width
    own = {lang: per_layer(sel.own[:, :, j], layers) for j, lang in enumerate(langs)}
    by_layer = {lang: [int(sel.own[s, :, j].sum()) for s in range(len(layers))] for j, lang in enumerate(langs)}
    jac = jaccard(sel.own)
    share = normalised_share(probs)
    sel_docs = {lang: len(selection.docs[lang]) for lang in langs}

    files: dict[str, str] = {}
    for lang in langs:
        if own[lang]:
            files[f"neurons-{lang}.txt"] = neuron_file(
                own[lang],
                f"language-specific neurons of {lang} (LAPE) in {lm.info.to_dict().get('name', config.runtime.model)}\n"
                "one LAYER:FIRST-LAST per line; use as keep:neurons:@THIS_FILE",
            )
            files[f"plan-{lang}.txt"] = keep_plan_text(own[lang], config.scheme) + "\n"

    result: dict = {
        "schema": "quant-disparity/neurons",
        "schema_version": 1,
        "config": config.to_dict(),
        "model": {**lm.info.to_dict(), "module_map": modmap.summary()},
        "corpus": {"name": corpus.name, "digest": corpus.digest, "split": "select"},
        "method": {
            "fires": (
                "gated MLPs: act(gate(x)) > 0 (the MLP's activation module on the gate projection's output); "
                "non-gated MLPs: the down projection's input act(fc1(x)) > 0"
            ),
            "sites": sorted({f"{s.kind}" for s in sites}),
            "tokens": "each document's predicted tokens as inputs (prefix token and repeated context not counted)",
            "lape": (
                "entropy of each neuron's firing probabilities normalised over languages; candidates: some "
                f"language's probability above t = the {config.activation_quantile:g} quantile of all probabilities "
                f"(the round(N q)-th smallest); selected: the {config.top_rate:g} share of all neurons with the lowest "
                "entropy among candidates (ties by layer, neuron); a selected neuron belongs to every language whose "
                "probability is above t (Tang et al. 2024, arXiv 2402.16438, their defaults)"
            ),
        },
        "thresholds": {
            "top_rate": config.top_rate,
            "activation_quantile": config.activation_quantile,
            "activation_threshold": sel.threshold,
            "entropy_cutoff": sel.entropy_cutoff,
            "max_entropy": max_entropy(len(langs)),
            "neurons": int(probs.shape[0] * probs.shape[1]),
            "candidates": sel.n_candidates,
            "selected": sel.n_selected,
        },
        "layers": list(layers),
        "width": width,
        "languages": [
            {
                **language_info(base_language(lang)).to_dict(),
                "id": lang,
                "selection_docs": sel_docs[lang],
                "selection_tokens": int(counts.tokens[j]),
                **(
                    {"note": f"selection: {too_few_documents(sel_docs[lang])}"}
                    if too_few_documents(sel_docs[lang])
                    else {}
                ),
                "mean_firing_by_layer": [round(float(probs[s, :, j].mean()), 6) for s in range(len(layers))],
                "own_count": int(sel.own[:, :, j].sum()),
                "own_by_layer": by_layer[lang],
                "own_neurons": {str(k): v for k, v in own[lang].items()},
            }
            for j, lang in enumerate(langs)
        ],
        "overlap": {
            "jaccard": [[None if not np.isfinite(x) else round(float(x), 6) for x in r] for r in jac],
            "shared": [
                [int(x) for x in r]
                for r in (
                    sel.own.reshape(-1, len(langs)).astype(np.int64).T
                    @ sel.own.reshape(-1, len(langs)).astype(np.int64)
                )
            ],
        },
        "environment": environment(),
    }
    timing = {"count_s": round(t_counted - t_count, 3), "counted_tokens": int(counts.tokens.sum())}

    if rows:
        result["protection"], files_p, t_p = _protect(
            config, lm, corpus, langs, rows, eval_langs, own, sel.entropy, share, layers, width, jac, log, progress
        )
        files.update(files_p)
        timing.update(t_p)
    timing["total_s"] = round(time.perf_counter() - t0, 3)
    result["timing"] = timing
    return result, files


def _protect(config, lm, corpus, langs, rows, eval_langs, own, ent, share, layers, width, jac, log, progress):
    scheme = parse_scheme(config.scheme)
    heldout = load_inputs(config.runtime, corpus, config.heldout(tuple(eval_langs)), config.eval, lm=lm, log=log)
    modmap, hsel, prepared = heldout.modmap, heldout.selection, heldout.prepared
    universe = quantization_targets(modmap, config.include)
    plans: list[ProtectPlan] = []
    skipped: dict[str, str] = {}
    lang_index = {lang: j for j, lang in enumerate(langs)}
    for r_i, row in enumerate(rows):
        counts = {layer: len(v) for layer, v in own[row].items()}
        if not counts:
            skipped[row] = "no own neurons"
            continue
        # the other language: the least overlapping one that has own neurons (ties: more own neurons, list order)
        others = [m for m in langs if m != row and own[m]]
        if not others:
            skipped[row] = "no other language has own neurons"
            continue
        j = lang_index[row]
        other = min(
            others,
            key=lambda m: (jac[j, lang_index[m]], -sum(len(v) for v in own[m].values()), lang_index[m]),
        )
        rng = np.random.default_rng([config.seed, r_i])
        rand = random_matched(counts, {layer: width for layer in counts}, rng)
        oth, filled = other_matched(counts, own[other], share[:, :, lang_index[other]], ent, layers)
        row_plans = []
        for kind, source, neurons, note in (
            ("own", row, own[row], ""),
            ("random", "random", rand, f"seed [{config.seed}, {r_i}]"),
            (
                "other",
                other,
                oth,
                f"{other}'s own neurons per layer, lowest entropy first"
                + (f"; {filled} filled by {other}'s largest share of firing" if filled else ""),
            ),
        ):
            text, assignment, totals = resolve_plan(neurons, config.scheme, modmap)
            row_plans.append(ProtectPlan(row, kind, source, neurons, text, assignment, totals, note))
        check_equal_bits(row_plans)
        plans += row_plans
    configs = {UNIFORM: {t: scheme for t in universe}}
    for p in plans:
        configs[p.name] = p.assignment
    log(f"protection: {len(configs)} configurations x {prepared.total_pred} held-out tokens")
    engine = engine_for(lm, modmap)
    tick = token_counter(prepared.total_pred * len(configs), progress)
    t_eval = time.perf_counter()
    scores = sweep(
        Forward(lm.model),
        prepared,
        engine,
        configs,
        bases=[UNIFORM],
        vocab_chunk=config.eval.vocab_chunk,
        progress=tick,
    )
    t_done = time.perf_counter()
    n_docs = {lang: len(hsel.docs[lang]) for lang in eval_langs}
    cols = columns(eval_langs, n_docs, prepared.n_bytes, config.n_boot, config.seed)
    table = protection_table(scores.nll, scores.nll_ref, cols, plans)
    uniform_cost = cost(modmap, configs[UNIFORM])
    files = {}
    for p in plans:
        if p.kind != "own":
            files[f"plan-{p.kind}-{p.row}.txt"] = p.text + "\n"
    out = {
        "split": "heldout",
        "scheme": config.scheme,
        "heldout_max_tokens": config.heldout_max_tokens,
        "heldout_min_docs": config.selection.min_docs,
        "evaluated": eval_langs,
        "recovered": "bpb(uniform) - bpb(plan): damage recovered by keeping the plan's neurons, bits per byte",
        "uniform": {"plan": f"{config.scheme}:*", "bits_per_weight": uniform_cost["bits_per_weight"]},
        "rows": rows,
        "skipped": skipped,
        "plans": [
            {
                "name": p.name,
                "row": p.row,
                "kind": p.kind,
                "source": p.source,
                "neurons": p.n_neurons,
                "by_layer": [len(p.neurons.get(layer, [])) for layer in layers],
                "overlap_with_own": sum(
                    len(set(p.neurons.get(layer, [])) & set(own[p.row].get(layer, []))) for layer in layers
                ),
                "bits_per_weight": p.totals["bits_per_weight"],
                "total_bytes": p.totals["total_bytes"],
                **({"note": p.note} if p.note else {}),
            }
            for p in plans
        ],
        "languages": table,
    }
    return (
        out,
        files,
        {
            "protect_evaluate_s": round(t_done - t_eval, 3),
            "protect_configurations": len(configs),
            "protect_tokens_per_configuration": prepared.total_pred,
        },
    )


__all__ = ["KINDS", "NeuronsConfig", "run_neurons", "validate"]
