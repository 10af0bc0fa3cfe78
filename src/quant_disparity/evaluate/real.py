"""Real vs simulated: a library's own quantized forward against our evaluation of its dequantized weights.

Two paired scorings of the same documents: the reference weights against the dequantized ones (the
quantization's damage, as an audit measures it), then the dequantized weights against the library's own layers
(:class:`quant_disparity.quant.real.LibraryLayers`). Per language, the second gives the difference in bits per
byte (library forward minus our evaluation, a paired bootstrap interval over documents), the KL divergence of the
library's next-token distributions from ours and how often their top-1 agree; the first gives the damage it is
to be compared with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..analysis import language_stats
from ..quant.engine import QuantEngine
from ..quant.real import LibraryLayers
from ..quant.schemes import Scheme
from .batching import Prepared
from .forward import Forward
from .paired import score_documents

#: The agreement the check asks for, per language: |bpb(library forward) - bpb(our evaluation)| at most this
#: many bits per byte, or at most this fraction of the quantization's own damage (Δbpb), whichever is larger.
#: The two forwards differ only in the library's float16 compute (activations rounded to float16 at each of its
#: layers), an effect far below what 4-bit weights do.
TOLERANCE_BPB = 2e-3
TOLERANCE_OF_DAMAGE = 0.05


def real_vs_simulated(
    forward: Forward,
    engine: QuantEngine,
    prepared: Prepared,
    assignment: Mapping[str, Scheme],
    langs: Sequence[str],
    n_docs: Sequence[int],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    vocab_chunk: int = 4096,
) -> dict:
    """Per language (``langs``, with ``n_docs`` documents each, in ``prepared``'s order): bpb of the reference,
    of our evaluation and of the library's forward, their differences with intervals, and whether they agree
    within the tolerance. The engine must hold the reference weights when called (it does again on return)."""
    layers = LibraryLayers(forward.model, engine.modmap, assignment)  # from the reference weights

    def use_reference() -> None:
        engine.restore_()

    def use_sim() -> None:
        engine.assign_(assignment)

    try:
        damage = score_documents(
            forward, prepared, use_reference=use_reference, use_model=use_sim, vocab_chunk=vocab_chunk
        )

        def use_ours() -> None:
            layers.remove()
            use_sim()

        def use_library() -> None:
            engine.restore_()  # the library layers hold their own weights; the model's go back to the reference
            layers.install()

        real = score_documents(
            forward, prepared, use_reference=use_ours, use_model=use_library, vocab_chunk=vocab_chunk
        )
    finally:
        layers.remove()
        engine.restore_()
    assert damage.nll_ref is not None and damage.kl is not None and damage.top1 is not None
    assert real.nll_ref is not None and real.kl is not None and real.top1 is not None
    rng = np.random.default_rng(seed)
    n_bytes = np.asarray(prepared.n_bytes)
    out, offset = {}, 0
    for lang, n in zip(langs, n_docs, strict=True):
        sl = slice(offset, offset + n)
        offset += n
        common = {"n_pred": damage.n_pred[sl], "bytes": n_bytes[sl]}
        sim = language_stats(
            lang,
            {"nll": damage.nll[sl], "nll_ref": damage.nll_ref[sl], "kl": damage.kl[sl], "top1": damage.top1[sl]}
            | common,
            n_boot,
            rng,
        )
        lib = language_stats(
            lang,
            {"nll": real.nll[sl], "nll_ref": real.nll_ref[sl], "kl": real.kl[sl], "top1": real.top1[sl]} | common,
            n_boot,
            rng,
        )
        diff = lib.estimates["delta_bpb"].value
        delta = sim.estimates["delta_bpb"].value
        bound = max(TOLERANCE_BPB, TOLERANCE_OF_DAMAGE * abs(delta or 0.0))
        out[lang] = {
            "docs": n,
            "bytes": sim.n_bytes,
            "predicted_tokens": sim.n_pred,
            "bpb_reference": sim.estimates["bpb_fp"].value,
            "bpb_ours": sim.estimates["bpb_q"].value,
            "bpb_library": lib.estimates["bpb_q"].value,
            "delta_bpb_ours": sim.estimates["delta_bpb"].to_dict(),
            "library_minus_ours_bpb": lib.estimates["delta_bpb"].to_dict(),
            "kl_bits_library_from_ours": lib.estimates["kl_bits"].value,
            "top1_agreement_library_vs_ours": lib.estimates["top1_agreement"].value,
            "tolerance_bpb": bound,
            "agree": diff is not None and abs(diff) <= bound,
        }
    return {
        "tolerance": {"bpb": TOLERANCE_BPB, "of_damage": TOLERANCE_OF_DAMAGE},
        "library_layers": len(layers),
        "languages": out,
        "agree": all(v["agree"] for v in out.values()),
    }
