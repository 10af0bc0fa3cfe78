#!/usr/bin/env python3
"""Export what REPLICATION.md's rows on the inside of the layers read (``results/inside-MODEL.json``):

- per block and key/value head, the root mean square and largest |w| of the V projection (the log's Exp-054,
  "L11 V weights 3x larger"; :func:`quant_disparity.inspect.heads.head_weight_stats`);
- the outlier structure of every weight tensor, summarised (lab journal 2026-01-04, "outliers are dense, not a
  few super weights"; :func:`quant_disparity.inspect.command.outliers`);
- the super weights at the detector's default thresholds, and, when ``--super-effect MODEL=PATH`` names an
  ``inspect super-effect`` output, its per-language ablation (Δbpb of uniform, keep:super, zero:super);
- tokenizer fertility vs damage (Exp-059, "structure > token count"): the audit's fertility correlation
  (:func:`quant_disparity.analysis.fertility.fertility_summary`) and the resource correlation, recomputed
  from the committed per-document rows of the sound replication run's uniform ``w4g128:*`` trial of the model.

    python experiments/origin/export_inside.py --super-effect smollm2-135m=runs/super-effect-smol/super_effect.json
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "results"
MODELS = ("gemma-3-270m", "smollm2-135m")
SOUND_RUN = "origin-sound"
UNIFORM = "w4g128:*"
SEED = 0
N_BOOT = 1000


def fertility(model: str) -> dict:
    """The fertility and resource correlations of ``model``'s uniform w4g128 trial of the sound run."""
    import pandas as pd

    from quant_disparity.analysis import correlation, language_stats
    from quant_disparity.analysis.fertility import FERTILITY_STREAM, fertility_summary, language_fertility
    from quant_disparity.corpus import language_info, load_udhr
    from quant_disparity.corpus.documents import base_language

    trials = json.loads(gzip.open(EXPORT / f"{SOUND_RUN}.trials.json.gz").read())["trials"]
    keys = [k for k, t in trials.items() if t["model"] == model and t.get("plan") == UNIFORM]
    if len(keys) != 1:
        raise SystemExit(f"{model}: expected one {UNIFORM!r} trial in {SOUND_RUN}, found {len(keys)}")
    rows = pd.read_parquet(EXPORT / f"{SOUND_RUN}.rows.parquet")
    rows = rows[rows.trial_key == keys[0]].sort_values(["lang", "doc"])
    corpus = load_udhr()
    rng = np.random.default_rng(SEED)
    per_lang, fert = [], {}
    for lang, g in rows.groupby("lang", sort=False):
        arrays = {k: g[k].to_numpy(np.float64) for k in ("nll", "nll_ref", "kl", "top1", "n_pred")}
        arrays["bytes"] = g["bytes"].to_numpy(np.float64)
        per_lang.append(language_stats(str(lang), arrays, N_BOOT, rng))
        text = {d.id: d.text for d in corpus.documents(str(lang))}
        fert[str(lang)] = language_fertility(
            language_info(base_language(str(lang))).script, [text[i] for i in g["doc_id"]], g["tokens"].tolist()
        )
    resource = {s.lang: language_info(base_language(s.lang)).resources.get("joshi_class") for s in per_lang}
    return {
        "source": f"{SOUND_RUN} trial {keys[0]} ({model}, {UNIFORM}, held-out documents)",
        "languages": {
            s.lang: {"rel_delta_bpb": s.estimates["rel_delta_bpb"].to_dict(), **fert[s.lang].to_dict()}
            for s in per_lang
        },
        "fertility": fertility_summary(per_lang, fert, np.random.default_rng((SEED, FERTILITY_STREAM))),
        "resource": {"measure": "joshi_class", **correlation(per_lang, resource, "rel_delta_bpb", rng)},
    }


def super_effect(path: Path) -> dict:
    """The compact part of an ``inspect super-effect`` output that the rows read."""
    data = json.loads(path.read_text())
    keep = ("n_docs", "bpb_fp", "uniform", "keep_super", "zero_super", "uniform_minus_keep_super_bpb")
    return {
        "source": f"inspect super-effect ({data['model'].get('name', '?')}, split {data['corpus']['split']})",
        "revision": data["environment"].get("git_revision"),
        "super_weights": data["super_weights"],
        "arms": {
            arm: {"plan": a["plan"], "bits_per_weight": a["totals"]["bits_per_weight"]}
            for arm, a in data["arms"].items()
        },
        "languages": {lang: {k: r[k] for k in keep} for lang, r in data["languages"].items()},
    }


def export(model: str, effect: Path | None) -> dict:
    from quant_disparity.inspect.command import outliers, super_weights
    from quant_disparity.inspect.heads import head_weight_stats
    from quant_disparity.models import load_model
    from quant_disparity.models.modules import build_module_map

    lm = load_model(model)
    mm = build_module_map(lm.model)
    found = super_weights(lm)
    out = outliers(lm)
    return {
        "model": model,
        "v_heads": head_weight_stats(lm.model, mm, "attn.v"),
        "outliers": {
            "summary": {k: v for k, v in out["summary"].items()},
            "by_tensor": [
                {
                    k: t[k]
                    for k in ("name", "layer", "share_beyond_3sd", "share_beyond_6sd", "kurtosis", "max_over_mean_abs")
                }
                for t in out["tensors"]
            ],
        },
        "super_weights": {
            "thresholds": found.thresholds.to_dict(),
            "found": [[s.layer, s.row, s.column, s.value] for s in found.super_weights],
            "largest_output_ratio": max(
                (
                    (p.max_abs_output / p.median_abs_output, p.layer, p.row, p.column)
                    for p in found.layers
                    if p.median_abs_output
                ),
                default=None,
            ),
        },
        "super_effect": super_effect(effect) if effect else None,
        "fertility": fertility(model),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--super-effect", action="append", default=[], help="MODEL=PATH of an inspect super-effect output")
    ap.add_argument("--effect-only", action="store_true", help="only add --super-effect to the existing exports")
    args = ap.parse_args()
    effects = dict(item.split("=", 1) for item in args.super_effect)
    for model in args.models.split(","):
        path = EXPORT / f"inside-{model}.json"
        if args.effect_only:  # only the ablation, into the model's existing export
            data = json.loads(path.read_text())
            data["super_effect"] = super_effect(Path(effects[model]))
        else:
            data = export(model, Path(effects[model]) if model in effects else None)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
