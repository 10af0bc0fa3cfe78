"""Shared helpers for the benchmarks: the model and documents they run on, timing, result files.

Every benchmark reports ratios measured within one run (ours vs the other way, same machine, same inputs),
writes ``benchmarks/results/<name>.json`` and prints a summary. Nothing here is a test: the numbers depend
on the machine, which is recorded with them.
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from quant_disparity.corpus import load_udhr
from quant_disparity.provenance import environment

RESULTS = Path(__file__).resolve().parent / "results"
LANGS = ("eng_Latn", "heb_Hebr", "cmn_Hans", "amh_Ethi")


def documents(tokenizer, langs=LANGS, max_tokens=512):
    """Whole UDHR articles per language, in order, up to ``max_tokens`` each (as the audit selects them)."""
    from quant_disparity.corpus import CorpusSelection, select_documents
    from quant_disparity.evaluate import tokenize

    selection = CorpusSelection(langs=tuple(langs), max_tokens=max_tokens)
    return select_documents(load_udhr(), selection, functools.partial(tokenize, tokenizer)).documents()


def panel_inputs(model: str, max_tokens: int):
    """The loaded model (with its tokenizer) and the inputs of the inspect benchmarks: the default panel's
    selection documents up to ``max_tokens`` per language, batched as ``inspect neurons`` / ``heads`` batch."""
    from quant_disparity.config import ModelRuntime
    from quant_disparity.corpus import CorpusSelection
    from quant_disparity.corpus.selection import DEFAULT_PANEL
    from quant_disparity.evaluate import EvalSettings
    from quant_disparity.inputs import load_inputs
    from quant_disparity.models import load_model

    lm = load_model(model, log=lambda m: None)
    selection = CorpusSelection(split="select", langs=DEFAULT_PANEL, max_tokens=max_tokens)
    return lm, load_inputs(ModelRuntime(model), load_udhr(), selection, EvalSettings(batch_tokens=2048), lm=lm)


def interleaved(fns: dict, repeats: int = 3) -> dict[str, list[float]]:
    """Wall times of each function, after one warm-up call each, repeated in turn (so drift in machine
    speed hits all alike). Returns name -> list of seconds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def peak_rss_bytes() -> int:
    """High-water resident set size of this process image (``VmHWM``).

    Unlike ``getrusage(...).ru_maxrss``, which Linux carries over from the parent through fork and exec, this
    starts afresh in a child process, so a child's peak is its own.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


#: The environment as the benchmark started (git revision included): a long run's result names the code it ran,
#: not a commit made while it ran.
_AT_START = environment()


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "threads": torch.get_num_threads(), **_AT_START}


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path
