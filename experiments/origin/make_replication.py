#!/usr/bin/env python3
"""Generate REPLICATION.md from the stores of the two replication runs (``make replicate`` runs them first).

Every number in the output is read from a store by code; the only typed text is the original log's own
statements and numbers (column "the log"), quoted from the project's record of its claims.

    python experiments/origin/make_replication.py [--log-run runs/origin-log_setup] [--sound-run runs/origin-sound]
"""

from __future__ import annotations

import argparse
import datetime as _dt
from collections import defaultdict
from pathlib import Path

from quant_disparity.experiments import analyse, load_run
from quant_disparity.report.tables import NO_CI, fmt, lacks_interval, markdown_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The original log's claims and numbers (its setup: GPT-2 124M / OPT-125M, per-tensor INT4 on every tensor, one
# sentence per language, token perplexity; disparity = mean LR degradation % / mean HR degradation %).
LOG = {
    "C01": ("Disparity is real and massive", "78-214x (GPT-2); OPT-125M 153x"),
    "C02": ("Degradation correlates with resource level", "r = -0.85, p = 0.03 (6 languages)"),
    "C03": ("Keeping the top 5% of weights is optimal; more is worse", "0%: 88.7x, 5%: 45.4x, 10%: 102.1x, 20%: 173.3x"),
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
PENDING = {"C13": "needs random and magnitude-ranked tensor selection (selection scores, not yet in quant-disparity)",
           "C14": "needs per-layer weight statistics as a predictor (selection scores, not yet in quant-disparity)",
           "C15": "needs gradient-based importance scores (not yet in quant-disparity)"}


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
    return ", ".join(str(x) for x in v["instance"].values()) or "—"


def _num(x: float) -> str:
    # the log's setup yields degradations of 10^9 % and more: three significant digits say enough there
    return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.2f}"


def value(est: dict) -> str:
    """A value with its interval; alone when it has none (point-value verdicts), marked † when it has none
    because of too few documents."""
    v, ci = est.get("value"), est.get("ci95")
    if v is None:
        return fmt(est, 2)
    if ci and ci[0] == ci[1]:
        return _num(v)
    if not ci and lacks_interval(est):
        return f"{_num(v)} {NO_CI}"
    return _num(v) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")


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
        parts.append(f"{v['text']} — {instance_label(v)}: {value(v['left'])} vs {value(v['right'])} → "
                     f"**{v['verdict']}**{familywise_marker(v)}")
    return "<br>".join(parts) if parts else "—", verdicts, familywise


def best_layers(locate_dirs: list[str]) -> list[str]:
    """C17: per model, the decoder layers whose protection recovers most damage, averaged over languages.

    Read from ``quant-disparity locate`` outputs (layer granularity, protect-one), which sweep every layer
    against one shared reference; the replication specs do not repeat that sweep as whole-model trials."""
    import json

    import numpy as np

    from quant_disparity.locate import effect_matrix

    out = []
    for d in locate_dirs:
        path = Path(d) / "locate.json"
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
        out.append(f"{cfg['model']} ({len(langs)} languages, `{cfg['scheme']}`): {cells} points of relative "
                   "damage recovered")
    return out


def no_biases(models: list[str]) -> list[str]:
    """C12: which bundled models have bias vectors at all (read from their module maps)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant_disparity.models import resolve_source
    from quant_disparity.models.modules import build_module_map

    out = []
    for model in models:
        cfg = AutoConfig.from_pretrained(resolve_source(model).path)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(cfg)
        n = sum(p.numel for p in build_module_map(m).params if p.is_bias)
        out.append(f"{model}: {n} bias parameters")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log-run", default=str(ROOT / "runs" / "origin-log_setup"))
    ap.add_argument("--sound-run", default=str(ROOT / "runs" / "origin-sound"))
    ap.add_argument("--locate-run", action="append", default=None,
                    help="locate output directory (layer granularity) for C17; repeat per model")
    ap.add_argument("--out", default=str(ROOT / "REPLICATION.md"))
    args = ap.parse_args()
    locate_runs = args.locate_run or [str(ROOT / "runs" / f"locate-{m}") for m in ("gemma-3-270m", "smollm2-135m")]
    results = {}
    for label, path in (("log", args.log_run), ("sound", args.sound_run)):
        spec, store = load_run(path)
        try:
            results[label] = analyse(spec, store)
        finally:
            store.close()
    log, sound = results["log"], results["sound"]
    rows = []
    tally, tally_fw = {}, {}
    for cid, (statement, numbers) in LOG.items():
        if cid in PENDING:
            rows.append([cid, statement, numbers, "pending", "pending", f"pending: {PENDING[cid]}", "pending"])
            continue
        log_cell, _, _ = claim_cells(log, cid)
        sound_cell, verdicts, familywise = claim_cells(sound, cid)
        verdict = verdict_summary(verdicts)
        verdict_fw = verdict_summary(familywise)
        if cid == "C12":
            info = no_biases(sorted({t["model"] for t in sound["trials"]}))
            log_cell = sound_cell = "; ".join(info)
            verdict = "not testable on the bundled models (they have no bias vectors)" if all(
                x.endswith(": 0 bias parameters") for x in info) else "not run"
            verdict_fw = "—"
        if cid == "C17":
            log_cell = "—"
            sound_cell = "<br>".join(best_layers(locate_runs)) or "not run (needs `quant-disparity locate` per model)"
            verdict = "compare the most helpful layers per model (relative depth) in the cell"
            verdict_fw = "—"
        tally[cid] = verdict
        if verdict_fw != "—":
            tally_fw[cid] = verdict_fw
        rows.append([cid, statement, numbers, log_cell, sound_cell, verdict, verdict_fw])
    lspec, sspec = log["spec"], sound["spec"]
    text = [
        "# Replication of the original research log",
        "",
        "Generated by `experiments/origin/make_replication.py` from the result stores of `make replicate` "
        f"({_dt.date.today().isoformat()}); every number in the last three columns is computed from stored "
        "per-document results. The column *the log* quotes the original log's own numbers.",
        "",
        f"- **Log's setup** (`{rel(lspec['path'])}`): {lspec['description']} Disparity = the log's formula (mean "
        "token-perplexity degradation % of zh/he/ar over en/de/fr). With one sentence per language there is nothing "
        "to resample, so its verdicts are comparisons of point values (the spec says `verdict_basis = \"points\"`; "
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
        markdown_table(["claim", "statement", "the log", "ours, log's setup", "ours, sound", "verdict",
                        "verdict, family-wise"], rows, "lllllll"),
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
    fw = "; ".join(f"{verdict}: {', '.join(ids)}" for verdict in ("holds", "mixed", "does not hold", "inconclusive")
                   if (ids := [c for c, v in tally_fw.items() if v == verdict]))
    if fw:
        text.append(f"- family-wise (Holm, α = 0.05): {fw}")
    text.append(f"- pending: {', '.join(PENDING)} (and C19: planned in the log, never run)")
    text.append("")
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
