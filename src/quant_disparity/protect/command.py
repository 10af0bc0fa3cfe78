"""``quant-disparity scores``: every check that needs no model first, then the scores and the prediction table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..config import ModelRuntime
from ..corpus import CorpusSelection
from ..errors import UserError
from ..evaluate import EvalSettings
from ..inputs import check_model_and_corpus, load_inputs
from ..models import load_model
from ..models.modules import build_module_map
from ..provenance import environment
from ..quant import parse_scheme
from .data import check_locate, language_scores, locate_measured, per_language, windows_by_language
from .predict import prediction_markdown, prediction_table
from .weights import GRANULARITIES, SCORES, compute_scores, to_markdown, weight_score_names


def _finite(v: float | None) -> float | None:
    return v if v is not None and np.isfinite(v) else None


def _read_locate(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--from-locate {path}: no such file", "pass the locate.json a locate run wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"--from-locate {path}: not readable JSON ({e})", "pass the locate.json a locate run wrote"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != "quant-disparity/locate":
        raise UserError(f"--from-locate {path} is not a locate output", "pass the locate.json a locate run wrote")
    return data


def run_scores_command(
    *,
    model: str,
    scheme: str,
    granularity: str,
    names: Sequence[str],
    seed: int,
    langs: Sequence[str],
    split: str,
    max_tokens: int,
    from_locate: Path | None,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[dict, str]:
    """The JSON record and the markdown of a ``scores`` run; raises :class:`UserError` before loading anything
    on bad input."""
    parsed = parse_scheme(scheme)
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}", f"use {', '.join(GRANULARITIES)}")
    for n in names:
        SCORES.get(n)  # an unknown score: did you mean
    locate = _read_locate(from_locate) if from_locate is not None else None
    if names:
        chosen = list(dict.fromkeys(names))
    else:
        chosen = weight_score_names() + (per_language(SCORES.names()) if langs else [])
        chosen += ["measured", "measured_kl"] if locate is not None else []
    data_names = per_language(chosen)
    measured_names = [n for n in chosen if SCORES.get(n).needs == "locate"]
    weight_names = [n for n in chosen if SCORES.get(n).needs == "weights"]
    if data_names and not langs:
        raise UserError(
            f"{', '.join(data_names)} {'is a' if len(data_names) == 1 else 'are'} per-language score"
            f"{'' if len(data_names) == 1 else 's'}: they need the languages' documents",
            "add --langs (e.g. --langs eng,heb)",
        )
    if measured_names and locate is None:
        raise UserError(f"{', '.join(measured_names)} need a locate output", "add --from-locate locate.json")
    corpus_keys: list[str] = []
    selection = CorpusSelection(split=split, langs=tuple(langs), max_tokens=max_tokens) if langs else None
    runtime = ModelRuntime(model=model)
    if selection is not None:
        _, corpus_keys = check_model_and_corpus(runtime, selection)
    if locate is not None:
        have = list(locate.get("results", {}))
        missing = [g for g in corpus_keys if g not in have]
        if missing:
            raise UserError(
                f"--from-locate {from_locate} has no results for {', '.join(missing)}",
                f"it holds {', '.join(have)}",
            )
        corpus_keys = corpus_keys or have
    lm = load_model(model, log=log)
    modmap = build_module_map(lm.model)
    if locate is not None:
        check_locate(locate, lm.info.digest, model, granularity, parsed.name, f"--from-locate {from_locate}")
    t0 = time.perf_counter()
    units = compute_scores(lm.model, modmap, parsed, granularity, weight_names or ["random"], seed)
    t_weights = time.perf_counter() - t0
    per_lang: dict[str, dict[str, dict[str, float]]] = {g: {} for g in corpus_keys}
    tokens: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    if data_names:
        assert selection is not None  # data_names needs langs
        corpus, _ = check_model_and_corpus(runtime, selection)
        inputs = load_inputs(runtime, corpus, selection, EvalSettings(), lm=lm, log=log)
        docs = [(g, len(inputs.selection.docs[g])) for g in corpus_keys]
        windows = windows_by_language(inputs.prepared.batches, docs)
        for lang in corpus_keys:
            t1 = time.perf_counter()
            rows = language_scores(lm.model, modmap, parsed, windows[lang], data_names, granularity)
            seconds[lang] = round(time.perf_counter() - t1, 3)
            per_lang[lang] = {n: {u.unit: u.scores[n] for u in rows} for n in data_names}
            tokens[lang] = {
                "documents": len(inputs.selection.docs[lang]),
                "windows": len(windows[lang]),
                "positions": sum(len(w.input_ids) for w in windows[lang]),
                "predicted": sum(w.n_scored for w in windows[lang]),
            }
            log(f"{lang}: {tokens[lang]['predicted']} predicted tokens, {seconds[lang]:.1f} s")
    measured: dict[str, dict[str, float]] = {}
    if locate is not None:
        for lang in corpus_keys:
            m = locate_measured(locate, lang)
            for n in measured_names:
                per_lang[lang][n] = {u: float(x) for u, v in m.items() if (x := v[n]) is not None}
            measured[lang] = {u: float(x) for u, v in m.items() if (x := v["measured"]) is not None}
    weights = {n: {u.unit: u.scores[n] for u in units} for n in weight_names}
    result: dict = {
        "schema": "quant-disparity/scores",
        "model": model,
        "model_digest": lm.info.digest,
        "scheme": parsed.name,
        "granularity": granularity,
        "seed": seed,
        "scores": chosen,
        "languages": corpus_keys,
        "units": [
            {
                "unit": u.unit,
                "n_params": u.n_params,
                "tensors": list(u.tensors),
                "scores": {k: _finite(u.scores[k]) for k in weight_names},
                "by_language": {
                    g: {n: _finite(per_lang[g][n].get(u.unit)) for n in per_lang[g]} for g in corpus_keys if per_lang[g]
                },
            }
            for u in units
        ],
        "environment": environment(),
        "timing": {"weights_s": round(t_weights, 3), "per_language_s": seconds},
    }
    if data_names:
        result["documents"] = {"corpus": "udhr", "split": split, "max_tokens": max_tokens, "per_language": tokens}
    md = [to_markdown(units, f"scores: {model}, {parsed.name}, {granularity}") if weight_names else ""]
    for g in corpus_keys:
        if per_lang[g]:
            cols = list(per_lang[g])
            lines = [f"## {g}", "", "| unit | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
            for u in units:
                vals = [per_lang[g][n].get(u.unit) for n in cols]
                lines.append(f"| {u.unit} | " + " | ".join("—" if v is None else f"{v:.6g}" for v in vals) + " |")
            md.append("\n".join(lines) + "\n")
    if locate is not None:
        predictors = {g: {n: v for n, v in per_lang[g].items() if n not in ("measured",)} for g in corpus_keys}
        table = prediction_table(weights, predictors, measured, seed=seed)
        table.pop("measured", None)
        result["locate"] = {
            "path": str(from_locate),
            "split": locate.get("corpus", {}).get("split"),
            "mode": locate.get("mode"),
            "scheme": (locate.get("scheme") or {}).get("name"),
            "effect": locate.get("effect"),
            "evaluate_s": (locate.get("timing") or {}).get("evaluate_s"),
        }
        result["prediction"] = table
        md.append(
            prediction_markdown(
                table,
                f"Does each score predict the measured effect? ({locate.get('mode')}, "
                f"{result['locate']['split']} split, scheme {result['locate']['scheme']})",
                corpus_keys,
            )
        )
    return result, "\n".join(x for x in md if x)
