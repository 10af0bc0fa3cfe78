"""The same documents scored by lm-evaluation-harness: bits per byte must agree to 1e-4 (relative); speed ratio.

lm-evaluation-harness scores a local ``loglikelihood_rolling`` task (one per language, the UDHR articles as
JSON lines) with its ``bits_per_byte`` metric, on the same fp32 checkpoint (the bundled model's cache
directory) on the CPU. Its rolling windows and ours coincide when a document fits one window, as every UDHR
article does at the window length used here (both prepend BOS; lm-eval's own BOS insertion is turned off
so that BOS is not doubled).

    pip install -e '.[bench]'; python benchmarks/bench_lm_eval.py [--model gemma-3-270m] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from common import LANGS, documents, save
from quant_disparity.evaluate import EvalSettings, Forward, evaluate, prepare, tokenize
from quant_disparity.models import load_model


def lm_eval_bpb(checkpoint: str, docs_by_lang: dict, window: int, batch_size: int) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        tasks = []
        for lang, docs in docs_by_lang.items():
            data = Path(tmp) / f"{lang}.jsonl"
            data.write_text("".join(json.dumps({"text": d.text}, ensure_ascii=False) + "\n" for d in docs))
            name = f"qd_{lang.lower()}"
            (Path(tmp) / f"{name}.yaml").write_text(
                f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\n"
                "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n"
            )
            tasks.append(name)
        t = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": checkpoint, "dtype": "float32", "max_length": window, "add_bos_token": False},
            tasks=tasks,
            task_manager=TaskManager(include_path=tmp),
            batch_size=batch_size,
            device="cpu",
        )
        seconds = time.perf_counter() - t
    return {lang: out["results"][f"qd_{lang.lower()}"]["bits_per_byte,none"] for lang in docs_by_lang}, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    lm = load_model(args.model)
    checkpoint = lm.info.extra["checkpoint"]
    docs = documents(lm.tokenizer, max_tokens=args.max_tokens)
    tokens = tokenize(lm.tokenizer, docs)
    window = 1024
    assert max(len(t) for t in tokens) < window, "every document must fit one window for the comparison"
    settings = EvalSettings(window=window)

    t = time.perf_counter()
    prepared = prepare(docs, tokens, lm.prefix_token_id, settings, lm.info.max_length, tokenizer=lm.tokenizer)
    scores = evaluate(Forward(lm.model), prepared)
    ours_s = time.perf_counter() - t
    ours = {}
    for lang in LANGS:
        idx = [i for i, d in enumerate(docs) if d.lang == lang]
        ours[lang] = sum(scores.nll[i] for i in idx) / math.log(2) / sum(prepared.n_bytes[i] for i in idx)

    by_lang = {lang: [d for d in docs if d.lang == lang] for lang in LANGS}
    theirs, theirs_s = lm_eval_bpb(checkpoint, by_lang, window, args.batch_size)
    rel = {lang: abs(ours[lang] - theirs[lang]) / theirs[lang] for lang in LANGS}
    result = {
        "model": args.model,
        "documents": len(docs),
        "predicted_tokens": prepared.total_pred,
        "lm_eval_batch_size": args.batch_size,
        "ours_settings": settings.to_dict(),
        "bits_per_byte": {"ours": ours, "lm_eval": theirs},
        "max_relative_difference": max(rel.values()),
        "relative_difference": rel,
        "seconds": {"ours": ours_s, "lm_eval": theirs_s},
        "speedup": theirs_s / ours_s,
    }
    path = save("lm_eval", result)
    for lang in LANGS:
        print(f"{lang}: ours {ours[lang]:.6f}  lm-eval {theirs[lang]:.6f}  rel. diff {rel[lang]:.1e}")
    print(f"max relative difference {result['max_relative_difference']:.1e} (target <= 1e-4)")
    print(f"time: ours {ours_s:.1f} s, lm-eval {theirs_s:.1f} s -> ours {result['speedup']:.2f}x faster")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
