#!/usr/bin/env python3
"""Export what REPLICATION.md's row on language-specific attention heads reads (``results/heads-MODEL.json``),
from the ``heads.json`` of ``quant-disparity inspect heads`` on the 12-language panel's selection split (the log's
"16.7 % of heads are language-specific", its B-001 track on GPT-2):

- per language: selection documents, the share and number of heads specific to it (the command's rule), the
  share per statistic, and the share its half-split false-positive check calls specific;
- when the head protect-one sweep of the model is present (``--locate MODEL=PATH``, by default
  ``~/.cache/quant-disparity/replication/locate-head-MODEL/locate.json``): per language, the rank correlation of
  the heads' specificity with their protect-one effect and the same for the weight-error baseline
  (:func:`quant_disparity.inspect.head_run.predict_protection`; the weight errors need the model, loaded here).
  Without it the export says "pending".

    python experiments/origin/export_heads.py --heads gemma-3-270m=runs/heads-gemma/heads.json \\
        --heads smollm2-135m=runs/heads-smollm/heads.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXPORT = HERE / "results"
MODELS = ("gemma-3-270m", "smollm2-135m")


def default_locate(model: str) -> Path:
    return Path.home() / ".cache" / "quant-disparity" / "replication" / f"locate-head-{model}" / "locate.json"


def prediction(model: str, data: dict, locate_path: Path) -> dict:
    from quant_disparity.inspect.head_run import head_errors, predict_protection, read_locate
    from quant_disparity.models import load_model
    from quant_disparity.models.modules import build_module_map

    locate = read_locate(locate_path)
    lm = load_model(model)
    modmap = build_module_map(lm.model)
    names = [h["name"] for h in data["heads"]]
    langs = [lang["id"] for lang in data["languages"]]
    score = np.array(
        [[np.nan if x is None else x for row in lang["specificity"] for x in row] for lang in data["languages"]]
    )
    cfg = data["config"]
    return predict_protection(
        locate, head_errors(lm.model, modmap, locate), names, langs, score, cfg["n_boot"], cfg["seed"], str(locate_path)
    )


def export(model: str, heads_path: Path, locate_path: Path) -> dict:
    data = json.loads(heads_path.read_text(encoding="utf-8"))
    if data.get("schema") != "quant-disparity/heads":
        raise SystemExit(f"{heads_path} is not an inspect heads output")
    fp = {r["id"]: r for r in data["false_positive"]["languages"]}
    out = {
        "model": model,
        "split": data["corpus"]["split"],
        "threshold": data["threshold"],
        "relative": data.get("schema_version", 1) >= 2,
        "interval_level": data["interval_level"],
        "n_boot": data["config"]["n_boot"],
        "seed": data["config"]["seed"],
        "n_heads": len(data["heads"]),
        "attention": data["attention"],
        "method": {k: data["method"][k] for k in ("specificity", "specific", "false_positive_check")},
        "languages": [
            {
                "id": lang["id"],
                "docs": lang["selection_docs"],
                "share_specific": lang["share_specific"],
                "n_specific": lang["n_specific"],
                "share_by_statistic": {s: v["share_specific"] for s, v in lang["statistics"].items()},
                "false_positive_share": fp[lang["id"]]["share_specific"],
                **({"note": lang["note"]} if lang.get("note") else {}),
            }
            for lang in data["languages"]
        ],
        "false_positive": {k: data["false_positive"][k] for k in ("mean_share", "max_share")},
    }
    if locate_path.exists():
        pred = prediction(model, data, locate_path)
        out["prediction"] = {"locate": pred["locate"], "method": pred["method"], "languages": pred["languages"]}
    else:
        shown = str(locate_path).replace(str(Path.home()), "~", 1)
        out["prediction"] = {"pending": f"no head protect-one sweep at {shown} yet"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", action="append", default=[], help="MODEL=PATH of a heads.json")
    ap.add_argument("--locate", action="append", default=[], help="MODEL=PATH of a head protect-one locate.json")
    args = ap.parse_args()
    heads = dict(x.split("=", 1) for x in args.heads)
    locates = dict(x.split("=", 1) for x in args.locate)
    for model, path in heads.items():
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r}: use {', '.join(MODELS)}")
        data = export(model, Path(path), Path(locates.get(model, default_locate(model))))
        target = EXPORT / f"heads-{model}.json"
        target.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
