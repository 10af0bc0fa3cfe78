"""The same documents scored by lm-evaluation-harness: bits per byte must agree to 1e-4 (relative); speed ratio.

lm-evaluation-harness scores a local ``loglikelihood_rolling`` task (one per language, the UDHR articles as
JSON lines) with its ``bits_per_byte`` metric, on the same fp32 checkpoint (the bundled model's cache
directory) on the CPU. Its rolling windows and ours coincide when a document fits one window, as every UDHR
article does at the window length used here (both prepend BOS; lm-eval's own BOS insertion is turned off
so that BOS is not doubled).

Timed span, the same on both sides: from the documents' text and an already loaded fp32 model in memory to
every document's summed log-likelihood (tokenization, windows, batching and scoring included; model loading,
lm-eval's task indexing and dataset building excluded). Ours: ``tokenize`` + ``prepare`` + ``evaluate``.
lm-eval: ``HFLM.loglikelihood_rolling`` on the same texts, with the same model object. The bits-per-byte
agreement is checked separately through lm-eval's whole pipeline (``simple_evaluate`` on a local task and its
own ``bits_per_byte`` metric), untimed.

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

from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.models import load_model


def lm_eval_bpb(model, tokenizer, docs_by_lang: dict, window: int, batch_size: int) -> dict:
    """Per-language bits per byte through lm-eval's whole pipeline (a local loglikelihood_rolling task)."""
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
        out = lm_eval.simple_evaluate(
            model=_hflm(model, tokenizer, window, batch_size), tasks=tasks, task_manager=TaskManager(include_path=tmp)
        )
    return {lang: out["results"][f"qd_{lang.lower()}"]["bits_per_byte,none"] for lang in docs_by_lang}


def _hflm(model, tokenizer, window: int, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, max_length=window, add_bos_token=False, batch_size=batch_size)


def lm_eval_rolling_seconds(model, tokenizer, texts: list[str], window: int, batch_size: int) -> tuple[list, float]:
    """The timed span on lm-eval's side: ``loglikelihood_rolling`` of every text with the loaded model."""
    from lm_eval.api.instance import Instance

    t = time.perf_counter()
    lm = _hflm(model, tokenizer, window, batch_size)
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i) for i, text in enumerate(texts)
    ]
    lls = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    return lls, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    lm = load_model(args.model)
    docs = documents(lm.tokenizer, max_tokens=args.max_tokens)
    tokens = tokenize(lm.tokenizer, docs)
    window = 1024
    assert max(len(t) for t in tokens) < window, "every document must fit one window for the comparison"
    settings = EvalSettings(window=window)

    # the same span on both sides (see the module docstring); the spans alternate, best of two each
    ours_runs, theirs_runs = [], []
    texts = [d.text for d in docs]
    for _ in range(2):
        t = time.perf_counter()
        tokens = tokenize(lm.tokenizer, docs)
        prepared = prepare(docs, tokens, lm.prefix_token_id, settings, lm.info.max_length, tokenizer=lm.tokenizer)
        scores = score_documents(Forward(lm.model), prepared)
        ours_runs.append(time.perf_counter() - t)
        lls, s = lm_eval_rolling_seconds(lm.model, lm.tokenizer, texts, window, args.batch_size)
        theirs_runs.append(s)
    ours_s, theirs_s = min(ours_runs), min(theirs_runs)
    # lm-eval's rolling log-likelihoods of the timed span agree with ours document by document
    doc_rel = max(abs(-ll - nll) / nll for ll, nll in zip(lls, scores.nll))
    ours = {}
    for lang in LANGS:
        idx = [i for i, d in enumerate(docs) if d.lang == lang]
        ours[lang] = sum(scores.nll[i] for i in idx) / math.log(2) / sum(prepared.n_bytes[i] for i in idx)

    by_lang = {lang: [d for d in docs if d.lang == lang] for lang in LANGS}
    theirs = lm_eval_bpb(lm.model, lm.tokenizer, by_lang, window, args.batch_size)
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
        "max_relative_document_nll_difference_in_timed_span": doc_rel,
        "timed_span": "documents and loaded model in memory -> per-document log-likelihoods (tokenization, "
        "windows, batching, scoring); model load, lm-eval task indexing and dataset building excluded",
        "seconds": {"ours": ours_s, "lm_eval": theirs_s, "ours_runs": ours_runs, "lm_eval_runs": theirs_runs},
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
