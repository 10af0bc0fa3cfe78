"""``quant-disparity inspect heads``: attention statistics per query head and language on the selection split
(:mod:`.attention`), each head's specificity for each language with the false-positive check
(:mod:`.head_specificity`), and with ``locate`` the rank correlation of specificity with the measured protect-one
effect of the head, beside the same for the quantization error of the head's weights."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..analysis.stats import MIN_DOCS_FOR_INTERVAL, too_few_documents
from ..audit import quantization_targets
from ..config import FlatConfig, ModelRuntime, check_common, check_langs
from ..corpus import CorpusSelection, language_info
from ..corpus.documents import base_language
from ..errors import UserError
from ..evaluate import EvalSettings
from ..evaluate.sweep import token_counter
from ..inputs import check_model_and_corpus, load_inputs
from ..models import LoadedModel, load_model
from ..models.modules import ModuleMap, weight_2d
from ..provenance import environment
from ..quant import parse_scheme
from .attention import STATS, attention_sums, script_ids
from .head_specificity import THRESHOLD, family_level, half_split, rank_correlation, specificity

LOCATE_HINT = "pass the locate.json of `locate --granularity head --mode protect-one`"


def _heads_eval() -> EvalSettings:
    return EvalSettings(batch_tokens=2048)


@dataclass(frozen=True, init=False)
class HeadsConfig(FlatConfig):
    """``threshold``: a head is specific on a statistic when the interval of its standardized difference beyond the
    common shift of all heads (95% family-wise over the statistics) lies beyond ±threshold; ``version`` 2: the
    measure is taken beyond the common shift and the default threshold is 2 (version 1: raw difference, 1);
    ``locate``: a locate.json (head granularity, protect-one) to correlate with."""

    runtime: ModelRuntime = ModelRuntime()
    selection: CorpusSelection = CorpusSelection(split="select", max_tokens=0)
    threshold: float = THRESHOLD
    locate: str = ""
    include: tuple[str, ...] = ()
    seed: int = 0
    n_boot: int = 1000
    eval: EvalSettings = field(default_factory=_heads_eval)
    version: int = 2

    NAME = "heads config"
    KEYS = {
        "model": ("runtime", "model"),
        "langs": ("selection", "langs"),
        "corpus": ("selection", "name"),
        "max_tokens": ("selection", "max_tokens"),
        "min_docs": ("selection", "min_docs"),
        "threshold": None,
        "locate": None,
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
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise UserError(f"--threshold must be a positive number, got {self.threshold:g}", "the default is 2")


def read_locate(path: str | Path) -> dict:
    """A locate.json of a head-granularity protect-one sweep; anything else is a :class:`UserError`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--locate {path}: no such file", LOCATE_HINT) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--locate {path}: not readable JSON ({e})", LOCATE_HINT) from None
    if not isinstance(data, dict) or data.get("schema") != "quant-disparity/locate":
        raise UserError(f"--locate {path} is not a locate output", LOCATE_HINT)
    if data.get("granularity") != "head" or data.get("mode") != "protect-one":
        raise UserError(
            f"--locate {path} is a {data.get('granularity')} / {data.get('mode')} sweep, not head / protect-one",
            LOCATE_HINT,
        )
    return data


def validate(config: HeadsConfig) -> tuple[list[str], dict | None]:
    """Checks before a model is loaded: model name, corpus, languages (at least two), the locate file."""
    _, langs = check_model_and_corpus(config.runtime, config.selection)
    if len(langs) < 2:
        raise UserError("inspect heads needs at least two languages", "language-specific means specific among several")
    locate = read_locate(config.locate) if config.locate else None
    return langs, locate


def head_errors(model: torch.nn.Module, modmap: ModuleMap, locate: dict) -> dict[str, float]:
    """Relative Frobenius error ``‖Q(W) - W‖ / ‖W‖`` of each query-head unit's weights (the rows and columns the
    locate sweep protects for it: q rows and o columns, and its own k / v rows where they are not shared) under
    the locate run's scheme, each tensor quantized whole as the sweep's all-quantized configuration does."""
    from ..locate import make_units

    cfg = locate.get("config", {})
    scheme = parse_scheme(str(cfg.get("scheme", locate.get("scheme", {}).get("name", "w4g128"))))
    universe = quantization_targets(modmap, tuple(cfg.get("include", ())))
    units = [u for u in make_units(modmap, universe, "head") if ".h" in u.name]
    cache: dict[str, torch.Tensor] = {}
    out = {}
    for u in units:
        err = ref = 0.0
        for t, rows, cols in u.parts:
            w = weight_2d(model.get_parameter(t).data, modmap[t]).detach().float()
            if t not in cache:
                cache[t] = (scheme.fake_quantize(w).double() - w.double()).cpu()
            mask = torch.zeros(w.shape, dtype=torch.bool)
            mask[list(rows), :] = True
            mask[:, list(cols)] = True
            err += float((cache[t][mask] ** 2).sum())
            ref += float((w.double().cpu()[mask] ** 2).sum())
        out[u.name] = float(np.sqrt(err / ref)) if ref > 0 else float("nan")
    return out


def run_heads(
    config: HeadsConfig,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """heads.json's mapping."""
    t0 = time.perf_counter()
    langs, locate = validate(config)
    corpus, _ = check_model_and_corpus(config.runtime, config.selection)
    if lm is None:
        lm = load_model(config.runtime.model, device=config.runtime.device, dtype=config.runtime.dtype, log=log)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=lm, log=log)
    modmap, selection, prepared = inputs.modmap, inputs.selection, inputs.prepared
    layout = modmap.attention
    if layout is None:
        raise UserError(
            f"the attention heads of this model cannot be separated ({modmap.attention_note})",
            "inspect heads needs a model whose attention splits into heads",
        )
    tok = lm.tokenizer
    if tok is None:
        raise UserError("the model was loaded without its tokenizer", "token scripts are read from the tokenizer")
    lang_of_doc = np.array([i for i, lang in enumerate(langs) for _ in selection.docs[lang]])
    token_ids = {t for batch in prepared.batches for w in batch for t in w.input_ids}
    script_of, script_names = script_ids(tok, sorted(token_ids))
    n_counted = sum(prepared.n_pred)
    log(f"attention statistics on {n_counted} selection tokens of {len(langs)} languages, {modmap.n_layers} blocks")
    t_count = time.perf_counter()
    sums = attention_sums(lm.model, modmap, prepared, script_of, progress=token_counter(n_counted, progress))
    t_counted = time.perf_counter()
    n_layers, n_heads = len(sums.layers), sums.n_heads
    n_docs = len(lang_of_doc)
    rng = np.random.default_rng(config.seed)
    level = family_level(len(STATS))

    def flat(stat: str) -> tuple[np.ndarray, np.ndarray]:
        return sums.sums[stat].reshape(n_docs, n_layers * n_heads), sums.counts(stat)

    def test(num: np.ndarray, den: np.ndarray, groups: np.ndarray, target: int):
        """The specificity test of the command: beyond the common shift, its threshold, level and replicates (the
        same stream of draws for the languages and then the false-positive halves)."""
        return specificity(
            num,
            den,
            groups,
            target,
            threshold=config.threshold,
            level=level,
            n_boot=config.n_boot,
            rng=rng,
            relative=True,
        )

    def grid(v: np.ndarray) -> list[list[float | None]]:
        m = v.reshape(n_layers, n_heads)
        return [[None if not np.isfinite(x) else round(float(x), 6) for x in row] for row in m]

    languages = []
    score = np.full((len(langs), n_layers * n_heads), np.nan)  # max |d| over statistics, per language and head
    for j, lang in enumerate(langs):
        docs = lang_of_doc == j
        entry: dict = {
            **language_info(base_language(lang)).to_dict(),
            "id": lang,
            "selection_docs": int(docs.sum()),
            "queries": int(sums.queries[docs].sum()),
            "script_queries": int(sums.script_queries[docs].sum()),
        }
        note = too_few_documents(int(docs.sum()))
        if note:
            entry["note"] = f"selection: {note}; no head can be called specific"
        any_specific = np.zeros(n_layers * n_heads, dtype=bool)
        by_stat = {}
        abs_d = []
        for stat in STATS:
            num, den = flat(stat)
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = num[docs].sum(0) / den[docs].sum()
            sp = test(num, den, lang_of_doc, j)
            any_specific |= sp.specific
            abs_d.append(np.abs(sp.d))
            by_stat[stat] = {
                "mean": grid(mean),
                "d": grid(sp.d),
                "common_shift": None if not np.isfinite(sp.common_shift) else round(sp.common_shift, 6),
                "ci_lo": grid(sp.lo),
                "ci_hi": grid(sp.hi),
                "specific": [[bool(x) for x in row] for row in sp.specific.reshape(n_layers, n_heads)],
                "share_specific": float(sp.specific.mean()) if sp.has_interval else None,
            }
        stacked = np.vstack(abs_d)
        with np.errstate(invalid="ignore"):
            score[j] = np.where(
                np.isfinite(stacked).any(0), np.nanmax(np.where(np.isfinite(stacked), stacked, -1), 0), np.nan
            )
        entry["share_specific"] = None if note else float(any_specific.mean())
        entry["n_specific"] = None if note else int(any_specific.sum())
        entry["specific_heads"] = (
            [f"L{sums.layers[i // n_heads]}.h{i % n_heads}" for i in np.nonzero(any_specific)[0]] if not note else []
        )
        entry["specificity"] = grid(score[j])
        entry["statistics"] = by_stat
        languages.append(entry)

    # false-positive check: one language's documents, alternate halves, the same test
    fp_rows = []
    for j, lang in enumerate(langs):
        idx = np.nonzero(lang_of_doc == j)[0]
        halves = half_split(len(idx))
        row: dict = {"id": lang, "docs": [int((halves == 0).sum()), int((halves == 1).sum())]}
        any_specific = np.zeros(n_layers * n_heads, dtype=bool)
        tested = []
        for stat in STATS:
            num, den = flat(stat)
            sp = test(num[idx], den[idx], halves, 0)
            if sp.has_interval:
                tested.append(stat)
            any_specific |= sp.specific
        row["statistics"] = tested
        row["share_specific"] = float(any_specific.mean()) if tested else None
        if not tested:
            row["note"] = f"a half has fewer than {MIN_DOCS_FOR_INTERVAL} documents with queries: no interval"
        fp_rows.append(row)
    fp_shares = [r["share_specific"] for r in fp_rows if r["share_specific"] is not None]

    heads = [
        {
            "name": f"L{layer}.h{h}",
            "layer": int(layer),
            "head": h,
            "kv_head": h // layout.group,
            **(
                {
                    "kv_shared_by": [
                        f"L{layer}.h{x}"
                        for x in range((h // layout.group) * layout.group, (h // layout.group + 1) * layout.group)
                    ]
                }
                if layout.shared_kv
                else {}
            ),
        }
        for layer in sums.layers
        for h in range(n_heads)
    ]
    result: dict = {
        "schema": "quant-disparity/heads",
        "schema_version": 2,
        "config": config.to_dict(),
        "model": {**lm.info.to_dict(), "module_map": modmap.summary()},
        "corpus": {"name": corpus.name, "digest": corpus.digest, "split": "select"},
        "attention": {
            "n_heads": n_heads,
            "n_kv_heads": layout.n_kv_heads,
            "head_dim": layout.head_dim,
            "implementation": sums.implementation,
            **(
                {
                    "note": f"The model runs with the {sums.switched_from!r} attention implementation, which does not "
                    "expose probabilities; switched to eager for this computation"
                }
                if sums.switched_from
                else {}
            ),
        },
        "method": {
            "queries": "each document's predicted tokens as inputs (the prefix token and repeated context are not "
            "queries); keys: every earlier position of the window, prefix included",
            "entropy": "-Σ p ln p over the keys (nats)",
            "sink": "attention to the window's first token (the prefix token where the model has one)",
            "distance": "Σ p (query position - key position), tokens",
            "same_script": "attention to keys whose token has the query token's script; queries without a script "
            "are left out. A token's script: the Unicode script of most of its letters and marks (first word of "
            "the character name; CJK ideographs: HAN); special tokens and tokens without a letter: none",
            "aggregate": "per language: sum over its documents / queries (a ratio of sums)",
            "specificity": "d = (language mean - mean of the other languages' documents) / pooled within-language "
            "standard deviation of per-document values, less the common shift (the median of d over all heads: "
            "what the language does to every head, such as longer documents or another script); "
            f"{100 * level:g}% bootstrap interval (95% family-wise over "
            f"the {len(STATS)} statistics, Bonferroni), documents resampled within each language ({config.n_boot} "
            f"replicates, seed {config.seed})",
            "specific": f"the interval of d lies beyond ±{config.threshold:g} on at least one of the "
            f"{len(STATS)} statistics",
            "score": "a head's specificity score for a language: the largest |d| (beyond the common shift) over the "
            "statistics",
            "false_positive_check": "the same test (common shift included) of the even-indexed half of one "
            "language's documents against the odd-indexed half",
        },
        "threshold": config.threshold,
        "interval_level": level,
        "scripts": script_names,
        "layers": list(sums.layers),
        "heads": heads,
        "languages": languages,
        "false_positive": {
            "languages": fp_rows,
            "mean_share": float(np.mean(fp_shares)) if fp_shares else None,
            "max_share": float(np.max(fp_shares)) if fp_shares else None,
        },
        "environment": environment(),
    }
    if locate is not None:
        names = [str(h["name"]) for h in heads]
        errors = head_errors(lm.model, modmap, locate)
        result["prediction"] = predict_protection(
            locate, errors, names, langs, score, config.n_boot, config.seed, str(config.locate)
        )
    result["timing"] = {
        "attention_s": round(t_counted - t_count, 3),
        "counted_tokens": int(sums.queries.sum()),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    return result


def predict_protection(
    locate: dict,
    errors: dict[str, float],
    names: list[str],
    langs: list[str],
    score: np.ndarray,
    n_boot: int,
    seed: int,
    path: str,
) -> dict:
    """Per language, the rank correlation across query heads (``names``) of the specificity score (``score
    [lang, head]``) with the head's protect-one effect in ``locate``, and of the weight error (``errors``, from
    :func:`head_errors`) with the same effect."""
    err = np.array([errors.get(n, np.nan) for n in names])
    located = {lang["id"] for lang in locate.get("languages", [])}
    rng = np.random.default_rng([seed, 1])
    rows: list[dict] = []
    for j, lang in enumerate(langs):
        if lang not in located:
            rows.append({"id": lang, "note": "not in the locate run"})
            continue
        units = locate["results"][lang]["units"]
        eff = np.array(
            [
                np.nan if units.get(n, {}).get("effect", {}).get("value") is None else units[n]["effect"]["value"]
                for n in names
            ],
            dtype=np.float64,
        )
        rows.append(
            {
                "id": lang,
                "specificity": rank_correlation(score[j], eff, n_boot, rng),
                "weight_error": rank_correlation(err, eff, n_boot, rng),
            }
        )
    return {
        "locate": {
            "path": path,
            "model": locate.get("model", {}).get("name"),
            "scheme": locate.get("config", {}).get("scheme"),
            "split": locate.get("corpus", {}).get("split"),
            "effect": locate.get("effect"),
        },
        "method": "Spearman rank correlation across query heads of the head's specificity score for the language "
        "(largest |d|) with its protect-one effect for the same language; baseline: the relative Frobenius "
        "quantization error of the head unit's weights under the locate scheme. 95% interval: bootstrap over heads "
        "(the locate result holds no per-document values)",
        "weight_error": {n: (None if not np.isfinite(e) else round(float(e), 6)) for n, e in zip(names, err)},
        "languages": rows,
    }


__all__ = ["HeadsConfig", "head_errors", "predict_protection", "read_locate", "run_heads", "validate"]
