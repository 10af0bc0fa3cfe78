#!/usr/bin/env python3
"""Generate REPLICATION.md from the committed export of the replication's results (``results/`` here).

Every number in the output is read from the exported per-document results by code; the only typed text is the
original log's own statements and numbers (column "the log"), quoted from the project's record of its claims.
The export (Parquet rows + JSON trial records per run, the locate outputs for C17 and the models' bias counts
for C12) is small enough to commit, so anyone can check REPLICATION.md without recomputing: the same export
gives the same file, byte for byte, on any day (its date is the date of the latest stored trial).

    python experiments/origin/make_replication.py                      # from the committed export
    python experiments/origin/make_replication.py --from-stores DIR    # re-export from DIR's run directories
                                                                       # (``make replicate`` does this)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from quant_disparity.experiments import analyse, load_run
from quant_disparity.experiments.export import export_run, load_frozen_run
from quant_disparity.experiments.spec import parse_spec
from quant_disparity.report.tables import NO_CI, fmt, lacks_interval, markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rows_heads import head_rows
from rows_inside import inside_rows
from rows_neurons import neuron_rows
from rows_scores import score_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPORT = HERE / "results"
#: run directory name -> the spec it runs (read from this directory, not from the run's copy)
RUNS = {"origin-log_setup": "log_setup.toml", "origin-sound": "sound.toml"}
MODELS = ("gemma-3-270m", "smollm2-135m")

# The original log's claims and numbers (its setup: GPT-2 124M / OPT-125M, per-tensor INT4 on every tensor, one
# sentence per language, token perplexity; disparity = mean LR degradation % / mean HR degradation %).
LOG = {
    "C01": ("Disparity is real and massive", "78-214x (GPT-2); OPT-125M 153x"),
    "C02": ("Degradation correlates with resource level", "r = -0.85, p = 0.03 (6 languages)"),
    "C03": (
        "Keeping the top 5% of weights is optimal; more is worse",
        "0%: 88.7x, 5%: 45.4x, 10%: 102.1x, 20%: 173.3x",
    ),
    "C04": ("MLP protection beats attention protection", "MLP 20x, attention 291x, layer 0 55x"),
    "C05": ("Layer 0 most critical, layer 1 anti-critical", "MLP L0 139x ... L1 381x"),
    "C06": ("Layer 0 + last layer is synergistic", "L0 3.6x, L11 336x, together 0.7x"),
    "C07": ("Layer 0 is irreplaceable for the synergy", "L2+L11 4,750x, L4+L11 151x, L8+L11 196x"),
    "C08": ("Even vs odd layers: same overhead, opposite outcome", "even 0.5x, odd 1,380x"),
    "C09": ("Inside layer 0, components only work together", "fc alone 152x, proj 36x, full layer 3.6x"),
    "C10": ("Token embeddings hurt when protected; position embeddings help", "token 522x, position 133x vs 214x"),
    "C11": ("LayerNorms are tiny but matter", "0.03% of weights, 9.1x reduction in layer 0"),
    "C12": ("Biases matter", "0.08% of weights; quantizing them adds +52.6x"),
    "C13": ("Structure beats heuristics", "random 11.4%: 44-327x; L0+L11: ~0x"),
    "C14": ("Layer weight variance predicts criticality", "r = -0.798"),
    "C15": ("Gradient- and magnitude-based selection differ", "0% overlap of top-10"),
    "C16": ("INT4 is the sweet spot; INT8 protection not needed", "mixed-precision sweeps"),
    "C17": ("Criticality is model-specific", "GPT-2 best L0+L11 (1.04x); OPT-125M best L4+L9 (26.9x)"),
    "C18": ("Recommended plan: L0+L11+ln_f+biases", "11.46% overhead -> 3.4x"),
}
PENDING = {
    "C13": "needs the held-out run of scores_c13.toml (rows_scores.py --write-spec, quant-disparity run, "
    "rows_scores.py --export-run)",
    "C14": "needs per-layer weight statistics as a predictor (selection scores, not yet in quant-disparity)",
    "C15": "needs gradient-based importance scores (not yet in quant-disparity)",
}


def verdict_summary(verdicts: list[str]) -> str:
    if not verdicts:
        return "not tested"
    s = set(verdicts)
    if s == {"supported"}:
        return "holds"
    if s == {"refuted"}:
        return "does not hold"
    if s == {"inconclusive"}:
        return "inconclusive"
    if "supported" not in s:
        return "does not hold" if "refuted" in s else "inconclusive"
    return "mixed"


def instance_label(v: dict) -> str:
    """The instance's open dimensions; for a claim with none, the model its trials ran on."""
    models = sorted({t.split("|")[0] for t in v.get("trials", [])})
    return ", ".join(str(x) for x in v["instance"].values()) or ", ".join(models) or "—"


def digits_for(*ests: dict) -> int:
    """Decimals that keep apart every value and interval end of ``ests`` (and keep a non-zero one off zero):
    a verdict's deciding numbers must be visible ("0.00 [0.00, 0.00] vs 0.00" says nothing)."""
    xs = sorted(
        {
            float(x)
            for e in ests
            for x in (e.get("value"), *(e.get("ci95") or ()))
            if x is not None and math.isfinite(float(x))
        }
    )
    for d in range(2, 9):
        rounded = [round(x, d) for x in xs]
        if len(set(rounded)) == len(xs) and all(r != 0 for x, r in zip(xs, rounded) if x != 0):
            return d
    return 8


def _num(x: float, d: int = 2) -> str:
    # the log's setup yields degradations of 10^9 % and more: three significant digits say enough there
    return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.{d}f}"


def value(est: dict, d: int = 2) -> str:
    """A value with its interval; alone when it has none (point-value verdicts), marked † when it has none
    because of too few documents."""
    v, ci = est.get("value"), est.get("ci95")
    if v is None:
        return fmt(est, 2)
    if ci and ci[0] == ci[1]:
        return _num(v, d)
    if not ci and lacks_interval(est):
        return f"{_num(v, d)} {NO_CI}"
    return _num(v, d) + (f" [{_num(ci[0], d)}, {_num(ci[1], d)}]" if ci else "")


def rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def familywise_marker(v: dict) -> str:
    """`` (family-wise: …)`` when the Holm family-wise verdict differs from the per-instance one."""
    fw = v.get("verdict_familywise")
    return "" if fw is None or fw == v["verdict"] else f" (family-wise: {fw})"


def claim_cells(result: dict | None, cid: str) -> tuple[str, list[str], list[str]]:
    """(cell text, per-instance verdicts, family-wise verdicts) of a claim in one run."""
    if result is None:
        return "not run", [], []
    parts, verdicts, familywise = [], [], []
    for v in result["verdicts"]:
        if v["id"] != cid:
            continue
        verdicts.append(v["verdict"])
        if v.get("verdict_familywise") is not None:
            familywise.append(v["verdict_familywise"])
        d = digits_for(v["left"], v["right"])
        parts.append(
            f"{v['text']} — {instance_label(v)}: {value(v['left'], d)} vs {value(v['right'], d)} → "
            f"**{v['verdict']}**{familywise_marker(v)}"
        )
    return "<br>".join(parts) if parts else "—", verdicts, familywise


def best_layers(locate_files: list[Path]) -> list[str]:
    """C17: per model, the decoder layers whose protection recovers most damage, averaged over languages.

    Read from ``quant-disparity locate`` outputs (layer granularity, protect-one), which sweep every layer
    against one shared reference; the replication specs do not repeat that sweep as whole-model trials."""
    import numpy as np

    from quant_disparity.locate import effect_matrix

    out = []
    for path in locate_files:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        cfg = data["config"]
        if cfg.get("granularity") != "layer" or cfg.get("mode") != "protect-one":
            continue
        units, langs, m = effect_matrix(data)
        mean = np.nanmean(m, axis=1)
        n_layers = len(units)
        top = np.argsort(-mean)[:3]
        cells = ", ".join(f"{units[i]} (depth {i / max(1, n_layers - 1):.2f}): {mean[i]:+.1f}" for i in top)
        out.append(
            f"{cfg['model']} ({len(langs)} languages, `{cfg['scheme']}`): {cells} points of relative damage recovered"
        )
    return out


def bias_counts(models) -> dict[str, int]:
    """C12: how many bias parameters each bundled model has (read from its module map, on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant_disparity.models import resolve_source
    from quant_disparity.models.modules import build_module_map

    out = {}
    for model in models:
        cfg = AutoConfig.from_pretrained(resolve_source(model).path)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(cfg)
        out[model] = sum(p.numel for p in build_module_map(m).params if p.is_bias)
    return out


def refresh_export(stores: Path) -> None:
    """Export both runs, the per-model locate outputs and the bias counts from ``stores`` into ``results/``."""
    EXPORT.mkdir(exist_ok=True)
    for run, spec_file in RUNS.items():
        text = (HERE / spec_file).read_text(encoding="utf-8")
        spec = parse_spec(text, f"experiments/origin/{spec_file}")
        _, store = load_run(stores / run)
        try:
            export_run(spec, text, store, EXPORT, spec_path=spec.path)
        finally:
            store.close()
    for model in MODELS:
        src = stores / f"locate-{model}" / "locate.json"
        if src.exists():
            shutil.copyfile(src, EXPORT / f"locate-{model}.json")
    (EXPORT / "models.json").write_text(json.dumps({"bias_parameters": bias_counts(MODELS)}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--from-stores",
        type=Path,
        default=None,
        help="directory holding the run directories (origin-log_setup, origin-sound, locate-MODEL): "
        "re-export them into results/ first",
    )
    ap.add_argument("--out", default=str(ROOT / "REPLICATION.md"))
    args = ap.parse_args()
    if args.from_stores is not None:
        refresh_export(args.from_stores)
    results, finished = {}, []
    for label, run in (("log", "origin-log_setup"), ("sound", "origin-sound")):
        spec, store = load_frozen_run(EXPORT, run)
        results[label] = analyse(spec, store)
        finished += [t["finished"] for t in store.record["trials"].values() if t.get("finished")]
    date = max(finished)[:10]
    biases = json.loads((EXPORT / "models.json").read_text())["bias_parameters"]
    locate_files = [EXPORT / f"locate-{m}.json" for m in MODELS]
    log, sound = results["log"], results["sound"]
    rows = []
    tally, tally_fw = {}, {}
    scored = score_rows(EXPORT, claim_cells, verdict_summary)  # C13-C15: rows_scores.py
    pending = {c: why for c, why in PENDING.items() if c not in scored}
    for cid, (statement, numbers) in LOG.items():
        if cid in scored:
            tally[cid], fw = scored[cid][2], scored[cid][3]
            tally_fw.update({cid: fw} if fw != "—" else {})
            rows.append([cid, statement, numbers, *scored[cid]])
            continue
        if cid in pending:
            rows.append([cid, statement, numbers, "pending", "pending", f"pending: {PENDING[cid]}", "pending"])
            continue
        log_cell, _, _ = claim_cells(log, cid)
        sound_cell, verdicts, familywise = claim_cells(sound, cid)
        verdict = verdict_summary(verdicts)
        verdict_fw = verdict_summary(familywise)
        if cid == "C12":
            info = [f"{m}: {biases[m]} bias parameters" for m in sorted({t["model"] for t in sound["trials"]})]
            log_cell = sound_cell = "; ".join(info)
            verdict = (
                "not testable on the bundled models (they have no bias vectors)"
                if all(x.endswith(": 0 bias parameters") for x in info)
                else "not run"
            )
            verdict_fw = "—"
        if cid == "C17":
            log_cell = "—"
            sound_cell = "<br>".join(best_layers(locate_files)) or "not run (needs `quant-disparity locate` per model)"
            verdict = "compare the most helpful layers per model (relative depth) in the cell"
            verdict_fw = "—"
        tally[cid] = verdict
        if verdict_fw != "—":
            tally_fw[cid] = verdict_fw
        rows.append([cid, statement, numbers, log_cell, sound_cell, verdict, verdict_fw])
    # C20-C23, the inside of the layers: heads, outliers, super weights, fertility (rows_inside.py),
    # language-specific heads (rows_heads.py) and language-specific neurons (rows_neurons.py)
    inside = inside_rows(EXPORT)
    rows += inside[:1] + head_rows(EXPORT) + neuron_rows(EXPORT) + inside[1:]
    lspec, sspec = log["spec"], sound["spec"]
    text = [
        "# Replication of the original research log",
        "",
        "Generated by `experiments/origin/make_replication.py` from the committed export of `make replicate`'s "
        f"result stores (`experiments/origin/results/`, trials finished by {date}); every number in the last "
        "columns is computed from the exported per-document results. The column *the log* quotes the original "
        "log's own numbers.",
        "",
        f"- **Log's setup** (`{rel(lspec['path'])}`): {lspec['description']} Disparity = the log's formula (mean "
        "token-perplexity degradation % of zh/he/ar over en/de/fr). With one sentence per language there is nothing "
        'to resample, so its verdicts are comparisons of point values (the spec says `verdict_basis = "points"`; '
        "shown without intervals and without a family-wise verdict).",
        f"- **Sound** (`{rel(sspec['path'])}`): {sspec['description']} Disparity = mean relative Δbpb of the "
        f"low-resource languages ({', '.join(sound['groups']['low'])}) over the high-resource ones; *undefined* "
        "when the high-resource mean's interval includes zero.",
        "- Models: Gemma 3 270M and SmolLM2 135M as bundled (4-bit GGUFs; the reference is their dequantized "
        "fp32 weights), not the log's GPT-2 / OPT-125M, which cannot be downloaded here. Layer numbers are per "
        "model: the log's L11 is each model's last layer.",
        "- Verdict (sound setup): *holds* when every model/scheme instance is supported by its 95% interval, "
        "*does not hold* when none is supported and some are refuted, *mixed* otherwise, *inconclusive* when "
        "every interval contains zero or a quantity is undefined.",
        f"- Family-wise (sound setup): the same summary of the Holm–Bonferroni verdicts, which test all "
        f"{len(sound['verdicts'])} claim instances of the sound run together at α = 0.05 (two-sided bootstrap "
        "z-test p-values of left − right = 0); an instance counts as supported or refuted only when Holm rejects. A "
        "cell marks an instance whose family-wise verdict differs from its own. Values marked † have no interval "
        "(a language with too few documents), and claims on them are inconclusive.",
        "",
        markdown_table(
            ["claim", "statement", "the log", "ours, log's setup", "ours, sound", "verdict", "verdict, family-wise"],
            rows,
            "lllllll",
        ),
        "",
        "## Summary",
        "",
    ]
    for verdict in ("holds", "mixed", "does not hold", "inconclusive"):
        ids = [c for c, v in tally.items() if v == verdict]
        if ids:
            text.append(f"- {verdict}: {', '.join(ids)}")
    others = [c for c, v in tally.items() if v not in ("holds", "mixed", "does not hold", "inconclusive")]
    if others:
        text.append(f"- other: {', '.join(f'{c} ({tally[c]})' for c in others)}")
    fw = "; ".join(
        f"{verdict}: {', '.join(ids)}"
        for verdict in ("holds", "mixed", "does not hold", "inconclusive")
        if (ids := [c for c, v in tally_fw.items() if v == verdict])
    )
    if fw:
        text.append(f"- family-wise (Holm, α = 0.05): {fw}")
    text.append(f"- pending: {', '.join(pending) or 'none'} (and C19: planned in the log, never run)")
    text.append("")
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
