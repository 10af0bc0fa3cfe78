"""Cost of each task relative to the bits-per-byte audit on the same documents: a ratio per task, one run.

Documents: the first ``--items`` held-out UDHR articles every language of ``--langs`` has, the documents the
tasks draw their items from (cloze and generate use exactly these; the lm-eval task is the cloze's items as a
local multiple-choice task: same prompts, same candidates). The model is loaded and its quantized tensors
cached (one warm-up assignment) before any span; lm-eval's task index is built beforehand too.

Timed spans, each from the documents' text and the loaded model to its per-item (per-document) numbers, both
arms (reference and quantized weights) included:

- ``bpb``: ``tokenize`` + ``prepare`` + ``score_documents`` with the reference and the quantized arm, as an
  audit computes them (whole documents, the audit's default window settings);
- ``cloze``: ``Cloze.run`` (items, tokenization, 4 candidates per item, both arms);
- ``generate``: ``Generate.run`` (greedy continuations of ``--gen-tokens`` tokens, both arms, chrF, fidelity);
- ``lmeval``: ``LmEval.run`` on the local task (``HFLM`` + ``simple_evaluate`` per arm; building the task's
  dataset from its local JSON file is inside the span).

The bits-per-byte span runs first and last; the ratio divides by the faster of the two.

    python benchmarks/bench_tasks.py [--model gemma-3-270m] [--langs eng_Latn,heb_Hebr] [--items 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import LANGS, machine, save

from quant_disparity.corpus import Corpus, load_udhr
from quant_disparity.evaluate import EvalSettings, Forward, prepare, score_documents, tokenize
from quant_disparity.models import load_model
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine, parse_scheme
from quant_disparity.tasks import Arms, TaskContext, TaskSettings, parse_tasks
from quant_disparity.tasks.cloze import draw_items
from quant_disparity.tasks.items import halves, heldout_items
from quant_disparity.tasks.lmeval import task_manager


def bench_corpus(langs: list[str], n_items: int) -> Corpus:
    """The first ``n_items`` held-out articles every language has, and nothing else."""
    udhr = load_udhr()
    items = heldout_items(udhr, langs, "bench")[:n_items]
    docs = {lang: tuple(d for d in udhr.documents(lang) if d.id in items) for lang in langs}
    return Corpus("udhr-bench", docs)


def write_lmeval_task(folder: Path, corpus: Corpus, langs: list[str], seed: int) -> str:
    """The cloze items as a local lm-eval multiple-choice task per language, tagged ``qd_bench_cloze``."""
    items = heldout_items(corpus, langs, "bench")
    draw = draw_items(items, seed)
    for lang in langs:
        by_id = {d.id: d for d in corpus.documents(lang)}
        rows = [
            {"prompt": halves(by_id[i])[0], "choices": [halves(by_id[c])[1] for c in draw[i]], "label": 0}
            for i in items
        ]
        data = folder / f"{lang}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        (folder / f"qd_bench_cloze_{lang}.yaml").write_text(
            f"tag: qd_bench_cloze\ntask: qd_bench_cloze_{lang}\ndataset_path: json\ndataset_kwargs:\n"
            f"  data_files:\n    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: '{{prompt}}'\ndoc_to_choice: choices\ndoc_to_target: label\ntarget_delimiter: ''\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_bytes\n",
            encoding="utf-8",
        )
    return "qd_bench_cloze"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--scheme", default="w4g128")
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--items", type=int, default=21, help="held-out articles per language (21: all of them)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    args = ap.parse_args()
    langs = args.langs.split(",")

    lm = load_model(args.model, log=lambda m: None)
    corpus = bench_corpus(langs, args.items)
    docs = [d for lang in langs for d in corpus.documents(lang)]
    modmap = build_module_map(lm.model)
    scheme = parse_scheme(args.scheme)
    assignment = {n: scheme for n in modmap.default_targets()}
    engine = QuantEngine(lm.model, modmap)
    engine.assign_(assignment)  # quantized tensors cached before any span
    engine.restore_()
    settings = EvalSettings()
    load_before = os.getloadavg()[0]

    def bpb() -> None:
        tokens = tokenize(lm.tokenizer, docs)
        prepared = prepare(docs, tokens, lm.prefix_token_id, settings, lm.info.max_length, tokenizer=lm.tokenizer)
        try:
            score_documents(
                Forward(lm.model), prepared, use_reference=engine.restore_, use_model=lambda: engine.assign_(assignment)
            )
        finally:
            engine.restore_()

    with tempfile.TemporaryDirectory() as tmp:
        tag = write_lmeval_task(Path(tmp), corpus, langs, seed=0)
        task_settings = TaskSettings(gen_tokens=args.gen_tokens, lmeval_include=tmp)
        task_manager(tmp)  # lm-eval's task index, built outside the spans
        tasks = parse_tasks(f"cloze,generate,lmeval:{tag}", task_settings)
        for task in tasks:
            task.check(corpus, langs)
        ctx = TaskContext(lm, corpus, langs, Arms(engine, assignment), task_settings)
        seconds: dict[str, float] = {}
        accuracy: dict[str, dict] = {}
        t = time.perf_counter()
        bpb()
        bpb_runs = [time.perf_counter() - t]
        for task in tasks:
            t = time.perf_counter()
            out = task.run(ctx)
            seconds[task.name.split(":")[0]] = time.perf_counter() - t
            if task.name != "generate":  # our cloze: per byte; lm-eval's acc_bytes: the same normalisation
                m = "acc_bytes" if "acc_bytes" in out[0].metrics else "accuracy"
                accuracy[f"{task.name} {m}"] = {
                    it.lang: {arm: float(it.metrics[m].num[arm].mean()) for arm in ("fp", "q")} for it in out
                }
        t = time.perf_counter()
        bpb()
        bpb_runs.append(time.perf_counter() - t)
    bpb_s = min(bpb_runs)
    result = {
        "model": args.model,
        "scheme": args.scheme,
        "langs": langs,
        "items_per_language": len(corpus.documents(langs[0])),
        "gen_tokens": args.gen_tokens,
        "bytes": sum(d.n_bytes for d in docs),
        "timed_span": "documents and loaded model (quantized tensors cached) -> per-item numbers of both arms; "
        "model load and lm-eval task indexing excluded",
        "seconds": {"bpb": bpb_s, "bpb_runs": bpb_runs, **seconds},
        "ratio_to_bpb": {k: v / bpb_s for k, v in seconds.items()},
        "accuracy": accuracy,
        "cloze_equals_lm_eval_acc_bytes": accuracy.get("cloze accuracy") == accuracy.get(f"lmeval:{tag} acc_bytes"),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "machine": machine(),
    }
    path = save("tasks", result)
    print(f"bits per byte (both arms): {bpb_s:.1f} s ({len(docs)} documents, {result['bytes']} bytes)")
    for k, v in seconds.items():
        print(f"{k}: {v:.1f} s = {v / bpb_s:.2f}x the bits-per-byte audit")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
