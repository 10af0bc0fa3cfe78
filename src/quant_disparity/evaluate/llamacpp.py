"""llama.cpp's own forward pass over prepared documents: per-document NLL from its logits, for the real-vs-simulated
check (a GGUF of llama.cpp's quantized bytes run by llama.cpp against our evaluation of the dequantized weights).

Each window of :class:`.batching.Prepared` is evaluated as it stands (prefix token, context, scored tokens: the very
token ids our evaluation scores), on a fresh context, on the CPU; the scored positions' log-softmax is taken in
float64 from llama.cpp's float32 logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .batching import Prepared

INSTALL = "pip install 'quant-disparity[llamacpp]'"


def llamacpp_doc_nats(gguf_path: Path, prepared: Prepared, *, n_threads: int = 2) -> np.ndarray:
    """Σ NLL (nats) of every document's scored tokens, by llama.cpp (``llama_cpp.Llama(..., logits_all=True)``)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("llama.cpp's forward pass needs llama-cpp-python", f"run: {INSTALL}") from None
    windows = [w for batch in prepared.batches for w in batch]
    n_ctx = max(len(w.input_ids) for w in windows)
    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_gpu_layers=0,
        verbose=False,
    )
    nats = np.zeros(len(prepared.docs), dtype=np.float64)
    for w in windows:
        llm.reset()
        llm.eval(list(w.input_ids))
        first = w.first_scored_position
        logits = np.asarray(llm.scores[first : first + w.n_scored], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        targets = np.asarray(w.input_ids[first + 1 :], dtype=np.int64)
        nats[w.doc] += float((logz - logits[np.arange(w.n_scored), targets]).sum())
    del llm
    return nats


def simulated_doc_nats(lm, modmap, prepared: Prepared, assignment) -> np.ndarray:
    """Our evaluation of the same documents with ``assignment`` applied to the loaded weights (fake-quantized:
    llama.cpp's bytes dequantized to float32), restored afterwards. Σ NLL (nats) per document."""
    from ..quant import engine_for
    from .forward import Forward
    from .paired import score_documents

    engine = engine_for(lm, modmap)
    try:
        engine.assign_(assignment)
        return score_documents(Forward(lm.model), prepared).nll.astype(np.float64)
    finally:
        engine.restore_()
