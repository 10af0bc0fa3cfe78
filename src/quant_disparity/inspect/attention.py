"""Attention statistics per query head, streamed: the model's attention probabilities are read block by block
from a forward hook on each attention module and reduced at once to per-document sums; no attention map
outlives its block's forward call.

For each query position counted (a document's predicted tokens as inputs, each document token once across its
non-overlapping windows, as :func:`.neurons.counted_positions` defines; the prefix token is never a query) and
each query head, with ``p[k]`` its attention over the window's key positions ``k <= q``:

- **entropy** ``-Σ_k p[k] ln p[k]`` (nats);
- **sink** ``p[0]``: attention to the window's first token (the prefix token, BOS, where the model has one);
- **distance** ``Σ_k p[k] (q - k)``: mean attended distance in tokens;
- **same script** ``Σ_k p[k] [script(k) = script(q)]``, only over queries whose token has a script
  (:func:`token_script`).

Each statistic is summed per document, with the number of queries it covers, so a language's value is a ratio
of sums and a bootstrap resamples documents.

The probabilities come from the eager attention implementation: a model loaded with another one (``sdpa``,
flash) is switched to eager for this computation and back afterwards (the result says so); an architecture
whose attention module does not hand its probabilities out even then is refused with one line.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..evaluate.batching import Prepared
from ..evaluate.forward import Forward, pack_batch
from ..models.modules import ModuleMap
from .neurons import counted_positions

#: The statistics, in report order.
STATS = ("entropy", "sink", "distance", "same_script")

#: Unicode character-name prefixes that name a script differently from the name's first word.
_SCRIPT_ALIASES = {"CJK": "HAN", "KANGXI": "HAN", "IDEOGRAPHIC": "HAN", "HALFWIDTH": "", "FULLWIDTH": ""}


def char_script(ch: str) -> str | None:
    """The script of one character: the first word of its Unicode name for letters and marks (``LATIN``,
    ``CYRILLIC``, ``ARABIC``, ``DEVANAGARI``, ``ETHIOPIC``, ``HANGUL``; CJK ideographs are ``HAN``); None for
    anything else (digits, punctuation, spaces, symbols, the replacement character) and for the generic combining
    marks (``COMBINING ACUTE ACCENT`` ...: Unicode's Inherited script, which takes its base letter's)."""
    if not unicodedata.category(ch).startswith(("L", "M")):
        return None
    name = unicodedata.name(ch, "")
    if not name or name.startswith("COMBINING "):
        return None
    words = name.split()
    first = _SCRIPT_ALIASES.get(words[0], words[0])
    if not first and len(words) > 1:  # HALFWIDTH KATAKANA ..., FULLWIDTH LATIN ...
        first = _SCRIPT_ALIASES.get(words[1], words[1])
    return first or None


def token_script(text: str) -> str | None:
    """The script of a token from its decoded text: the script most of its letters (and marks) belong to;
    ties go to the script met first. None when it has no letter: punctuation, digits, spaces, special tokens,
    and byte pieces that decode to no whole character."""
    scripts = [s for s in (char_script(c) for c in text) if s is not None]
    if not scripts:
        return None
    counts = Counter(scripts)
    best = max(counts.values())
    return next(s for s in scripts if counts[s] == best)


def script_ids(tokenizer, token_ids: Sequence[int]) -> tuple[dict[int, int], list[str]]:
    """Each distinct token id's script as an index into the returned script names (-1: none), from the
    tokenizer's decoding of that token alone; special tokens (BOS, EOS, padding ...) have none."""
    names: list[str] = []
    index: dict[str, int] = {}
    out: dict[int, int] = {}
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    for t in sorted(set(int(i) for i in token_ids)):
        s = None if t in special else token_script(tokenizer.decode([t]))
        if s is None:
            out[t] = -1
            continue
        if s not in index:
            index[s] = len(names)
            names.append(s)
        out[t] = index[s]
    return out, names


def attention_modules(modmap: ModuleMap) -> list[tuple[int, str]]:
    """(block, attention module name) for every block: the module holding the block's output projection."""
    out = {}
    for p in modmap.params:
        if p.role == "matrix" and p.layer is not None and p.component == "attn.o" and "." in p.module:
            out[p.layer] = p.module.rsplit(".", 1)[0]
    if not out:
        raise UserError("no attention output projection was recognised in the blocks", "inspect heads needs one")
    return sorted(out.items())


@dataclass
class AttentionSums:
    """Per-document sums of the statistics (``sums[stat] [doc, layer, head]``, float64) and the queries each
    covers (``queries [doc]``; ``script_queries [doc]`` for ``same_script``)."""

    sums: dict[str, np.ndarray]
    queries: np.ndarray  # int64 [doc]
    script_queries: np.ndarray  # int64 [doc]
    layers: tuple[int, ...]
    n_heads: int
    implementation: str  # the implementation the probabilities were read from
    switched_from: str | None  # the model's own implementation when it had to be switched

    def counts(self, stat: str) -> np.ndarray:
        return self.script_queries if stat == "same_script" else self.queries


def _implementation(model: torch.nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None) if cfg is not None else None


def attention_sums(
    model: torch.nn.Module,
    modmap: ModuleMap,
    prepared: Prepared,
    script_of: dict[int, int],
    *,
    progress: Callable[[int], None] | None = None,
) -> AttentionSums:
    """Run the model (as it is) over ``prepared``'s batches and sum the statistics per document, layer and
    query head (module docstring). ``script_of[token id]`` is its script index (-1: none)."""
    layout = modmap.attention
    if layout is None:
        raise UserError(
            f"the attention heads of this model cannot be separated ({modmap.attention_note})",
            "inspect heads needs a model whose attention splits into heads",
        )
    sites = attention_modules(modmap)
    n_docs, n_heads = len(prepared.docs), layout.n_heads
    sums = {s: torch.zeros(n_docs, len(sites), n_heads, dtype=torch.float64) for s in STATS}
    queries = np.zeros(n_docs, dtype=np.int64)
    script_queries = np.zeros(n_docs, dtype=np.int64)
    own = _implementation(model)
    switched = own is not None and own != "eager"
    if switched:
        if not hasattr(model, "set_attn_implementation"):
            raise UserError(
                f"the model's attention implementation is {own!r} and it cannot be switched to eager",
                "load the model with attn_implementation='eager'",
            )
        model.set_attn_implementation("eager")  # type: ignore[operator]  # an HF model
    forward = Forward(model)
    runner = forward.base if forward.split and forward.base is not None else model
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def reduce(k: int, probs: torch.Tensor) -> None:
        b, h, t, _ = probs.shape
        p = probs.float().permute(0, 2, 1, 3).reshape(b * t, h, t)[state["pos"]]  # [Q, heads, keys]
        ent = -torch.special.xlogy(p, p).sum(-1)
        sink = p[:, :, 0]
        dist = (p * state["offset"][:, None, :]).sum(-1)
        same = (p * state["same"][:, None, :]).sum(-1)
        d = state["docs"]
        for name, v in (("entropy", ent), ("sink", sink), ("distance", dist), ("same_script", same)):
            sums[name][:, k].index_add_(0, d, v.double())

    handles = []
    for k, (_, name) in enumerate(sites):

        def hook(mod, args, output, k=k):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[1] == n_heads:
                seen.add(k)
                reduce(k, w)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    device = forward.device
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    try:
        with torch.inference_mode():
            for batch in prepared.batches:
                ids, mask, _, _, _ = pack_batch(batch, device)
                pos, docs = counted_positions(batch)
                t = ids.shape[1]
                sid = torch.tensor([[script_of.get(int(i), -1) for i in row] for row in ids.tolist()])
                for b, w in enumerate(batch):  # padding has no script
                    sid[b, len(w.input_ids) :] = -1
                qb, qt = pos // t, pos % t
                qs = sid[qb, qt]
                state["pos"] = pos.to(device)
                state["docs"] = docs.to(device)
                state["offset"] = (qt[:, None] - torch.arange(t)[None, :]).clamp(min=0).float().to(device)
                state["same"] = ((sid[qb] == qs[:, None]) & (qs[:, None] >= 0)).float().to(device)
                queries[:] += np.bincount(docs.numpy(), minlength=n_docs)
                script_queries[:] += np.bincount(docs.numpy(), weights=(qs >= 0).numpy(), minlength=n_docs).astype(
                    np.int64
                )
                seen.clear()
                runner(input_ids=ids, attention_mask=mask, use_cache=False)
                if len(seen) != len(sites):
                    raise UserError(
                        f"the attention modules of {kind} do not return their probabilities, even with the eager "
                        "implementation",
                        "inspect heads cannot observe this architecture's attention",
                    )
                if progress:
                    progress(int(pos.numel()))
    finally:
        for hd in handles:
            hd.remove()
        if switched:
            model.set_attn_implementation(own)  # type: ignore[operator]  # an HF model
    return AttentionSums(
        sums={s: v.numpy() for s, v in sums.items()},
        queries=queries,
        script_queries=script_queries,
        layers=tuple(layer for layer, _ in sites),
        n_heads=n_heads,
        implementation="eager",
        switched_from=own if switched else None,
    )


__all__ = ["STATS", "AttentionSums", "attention_modules", "attention_sums", "char_script", "script_ids", "token_script"]
