"""Real vs simulated llama.cpp quantization on the default model: llama.cpp's own forward pass over a GGUF holding
its own quantized bytes, against our evaluation of the same weights dequantized (fp32), document by document.

Three models: the bundled Q4_K_M file itself against our fp32 reference (its dequantized weights); `gguf:q4_k` and
the recipe `gguf:q4_k_m` on the block Linear weights (a GGUF written from the bundled file with those tensors
replaced) against our audit of the same schemes. Writes benchmarks/results/real_vs_simulated.json.

    python benchmarks/real_vs_simulated.py [--langs eng_Latn,...] [--max-tokens 256] [--window 256]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import save

from quant_disparity.audit import scheme_assignment
from quant_disparity.corpus import CorpusSelection, load_udhr, select_documents
from quant_disparity.evaluate import EvalSettings, prepare, tokenize
from quant_disparity.evaluate.llamacpp import llamacpp_doc_nats, simulated_doc_nats
from quant_disparity.models import load_model
from quant_disparity.models.bundled import BUNDLED
from quant_disparity.models.gguf_write import write_quantized_gguf
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import parse_scheme

LANGS = "eng_Latn,rus_Cyrl,arb_Arab,heb_Hebr,cmn_Hans,hin_Deva,amh_Ethi,yor_Latn"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--langs", default=LANGS)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load_model("gemma-3-270m")
    modmap = build_module_map(lm.model)
    langs = tuple(args.langs.split(","))
    chosen = select_documents(
        load_udhr(), CorpusSelection(langs=langs, max_tokens=args.max_tokens), lambda d: tokenize(lm.tokenizer, d)
    )
    settings = EvalSettings(window=args.window, context=min(128, args.window // 4), batch_tokens=4 * args.window)
    prepared = prepare(chosen.documents(), chosen.all_tokens(), lm.prefix_token_id, settings, lm.info.max_length)
    lang_of = np.array([d.lang for d in prepared.docs])
    n_bytes = np.array(prepared.n_bytes, dtype=np.float64)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        template = BUNDLED.get("gemma-3-270m").gguf_path(Path(tmp))
        arms = {"reference (bundled Q4_K_M file)": (template, {})}
        for name in ("gguf:q4_k", "gguf:q4_k_m"):
            assignment = scheme_assignment(modmap, parse_scheme(name), ())
            path = Path(tmp) / f"{name.replace(':', '-')}.gguf"
            types = write_quantized_gguf(template, path, lm.model, modmap, assignment)
            arms[name] = (path, assignment)
            print(name, "types written:", sorted(set(types.values())))
        for arm, (path, assignment) in arms.items():
            ours = simulated_doc_nats(lm, modmap, prepared, assignment)
            real = llamacpp_doc_nats(path, prepared, n_threads=args.threads)
            rows[arm] = (ours, real)
            print(arm, "done", round(time.perf_counter() - t0), "s")
    ref_ours, ref_real = rows["reference (bundled Q4_K_M file)"]
    out: dict = {"settings": settings.to_dict(), "max_tokens": args.max_tokens, "arms": {}}
    to_bpb = lambda nats, mask: float(nats[mask].sum() / (math.log(2) * n_bytes[mask].sum()))
    for arm, (ours, real) in rows.items():
        per_lang = {}
        for lang in langs:
            m = lang_of == lang
            entry = {
                "docs": int(m.sum()),
                "tokens": int(np.array(prepared.n_pred)[m].sum()),
                "bpb_ours": to_bpb(ours, m),
                "bpb_llamacpp": to_bpb(real, m),
            }
            if arm != "reference (bundled Q4_K_M file)":
                entry["dbpb_ours"] = entry["bpb_ours"] - to_bpb(ref_ours, m)
                entry["dbpb_llamacpp"] = entry["bpb_llamacpp"] - to_bpb(ref_real, m)
            per_lang[lang] = entry
        doc_bpb_diff = (real - ours) / (math.log(2) * n_bytes)
        out["arms"][arm] = {
            "per_language": per_lang,
            "max_abs_doc_bpb_diff": float(np.abs(doc_bpb_diff).max()),
            "mean_doc_bpb_diff": float(doc_bpb_diff.mean()),
        }
    out["loadavg"] = os.getloadavg()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = save("real_vs_simulated", out)
    for arm, a in out["arms"].items():
        print(f"\n{arm}: max |doc bpb diff| {a['max_abs_doc_bpb_diff']:.5f}")
        print("| language | bpb ours | bpb llama.cpp | Δbpb ours | Δbpb llama.cpp |")
        print("|---|---|---|---|---|")
        for lang, e in a["per_language"].items():
            d = f"{e['dbpb_ours']:.4f} | {e['dbpb_llamacpp']:.4f}" if "dbpb_ours" in e else " | "
            print(f"| {lang} | {e['bpb_ours']:.4f} | {e['bpb_llamacpp']:.4f} | {d} |")
    print("wrote", path)


if __name__ == "__main__":
    main()
