"""Language-specific neurons, found as LAPE does (Tang et al. 2024, "Language-Specific Neurons: The Key to
Multilingual Capabilities in Large Language Models", arXiv 2402.16438).

**Firing.** A neuron is one MLP intermediate channel of one block (the unit ``keep:neurons:L:I`` keeps). It
*fires* on a token when its activation-function output is positive:

- gated MLPs (Llama, Gemma, Qwen, Mistral, Phi-3 ...: ``down(act(gate(x)) * up(x))``): ``act(gate(x))[i] > 0``,
  the MLP's own activation module applied to the gate projection's output (the gate half of a fused gate_up),
  as LAPE's code does for LLaMA (``silu(gate) > 0``);
- non-gated MLPs (GPT-2, OPT, GPT-NeoX, BLOOM, Phi, Falcon: ``fc2(act(fc1(x)))``): the down projection's
  input, ``act(fc1(x))[i] > 0``.

Counts only, never activations: forward hooks add, per block, neuron and language, how many tokens fired.
The tokens counted are a document's *predicted* tokens, as inputs (the positions an evaluation scores, each
document token once across its non-overlapping windows; the prefix token and repeated context are not
counted). ``p[layer, neuron, lang]`` = fired / tokens of that language.

**LAPE** (:func:`lape`): per neuron, normalise its probabilities over languages (``p / Σ p``) and take their
entropy. A neuron is a candidate only if some language's probability exceeds ``t`` = the
``activation_quantile`` (0.95) quantile of all probabilities (every layer, neuron and language). Of the
candidates, the ``top_rate`` (1 %) of *all* neurons with the lowest entropy are selected; a selected neuron
belongs to every language whose probability exceeds ``t``. These are LAPE's own rules and defaults (its code's
``filter_rate = activation_bar_ratio = 0.95``, ``top_rate = 0.01``); the quantile is taken as LAPE's
``kthvalue(round(N q))``. Ties in entropy are broken by (layer, neuron), so the selection is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..evaluate.batching import Prepared
from ..evaluate.forward import Forward, pack_batch
from ..models.modules import ModuleMap, mlp_width

#: LAPE's defaults (Tang et al. 2024, their code's ``top_rate`` and ``filter_rate`` / ``activation_bar_ratio``).
TOP_RATE = 0.01
ACTIVATION_QUANTILE = 0.95

#: Attribute names of an MLP's activation module in the supported architectures.
_ACT_NAMES = ("act_fn", "activation_fn", "act", "gelu_impl")


@dataclass(frozen=True)
class Site:
    """Where a block's firing is read: the module hooked and how."""

    layer: int
    module: str  # module name
    kind: str  # "gate" (output of a gate projection; act applied), "down_input" (input of the down projection)
    width: int  # MLP intermediate channels
    act: torch.nn.Module | None = None  # the activation, for "gate"


def _activation(model: torch.nn.Module, module: str) -> torch.nn.Module:
    parent = model.get_submodule(module.rsplit(".", 1)[0]) if "." in module else model
    for name in _ACT_NAMES:
        act = getattr(parent, name, None)
        if isinstance(act, torch.nn.Module):
            return act
    raise UserError(
        f"the activation function of the gated MLP around {module} was not found",
        f"this architecture is not supported by inspect neurons (looked for {', '.join(_ACT_NAMES)})",
    )


def mlp_sites(model: torch.nn.Module, modmap: ModuleMap) -> list[Site]:
    """Every block's MLP, in block order; a model without a recognised MLP is a :class:`UserError`."""
    sites = []
    for layer in range(modmap.n_layers):
        width = mlp_width(modmap, layer)
        mine = {p.component: p for p in modmap.params if p.layer == layer and p.role == "matrix"}
        if width is None:
            continue
        gate = mine.get("mlp.gate") or mine.get("mlp.gate_up")
        if gate is not None:
            sites.append(Site(layer, gate.module, "gate", width, _activation(model, gate.module)))
        else:
            sites.append(Site(layer, mine["mlp.down"].module, "down_input", width))
    if not sites:
        found = sorted({c for p in modmap.params if p.layer is not None for c in p.components})
        raise UserError(
            f"no MLP with a down projection was recognised in the blocks (components found: {', '.join(found)})",
            "language-specific neurons are MLP intermediate channels; this architecture has none that is recognised",
        )
    widths = sorted({s.width for s in sites})
    if len(widths) > 1:
        raise UserError(
            f"the blocks' MLP widths differ ({', '.join(map(str, widths))})",
            "inspect neurons compares neurons across blocks of one MLP width",
        )
    return sites


@dataclass
class FiringCounts:
    """``fired[layer, neuron, lang]`` tokens on which the neuron fired, of ``tokens[lang]`` counted."""

    fired: np.ndarray  # int64 [n_sites, width, n_langs]
    tokens: np.ndarray  # int64 [n_langs]
    layers: tuple[int, ...]  # block index of each site

    @property
    def probabilities(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.fired / self.tokens[None, None, :]


def counted_positions(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions (in the right-padded ``[batch, longest]`` layout of :func:`pack_batch`) of the predicted
    tokens of a batch of windows, as inputs, and the document of each."""
    longest = max(len(w.input_ids) for w in batch)
    pos: list[int] = []
    docs: list[int] = []
    for b, w in enumerate(batch):
        first = w.first_scored_position + 1
        pos.extend(range(b * longest + first, b * longest + len(w.input_ids)))
        docs.extend([w.doc] * (len(w.input_ids) - first))
    return torch.tensor(pos, dtype=torch.long), torch.tensor(docs, dtype=torch.long)


def count_firing(
    model: torch.nn.Module,
    modmap: ModuleMap,
    prepared: Prepared,
    lang_of_doc: Sequence[int],
    n_langs: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> FiringCounts:
    """Run the model (as it is) over ``prepared``'s batches and count, per block, neuron and language, the
    counted tokens (:func:`counted_positions`) on which each neuron fires. ``lang_of_doc[d]`` is the language
    index of document ``d``. No activation is stored: each hook reduces its batch to counts at once."""
    sites = mlp_sites(model, modmap)
    width = sites[0].width
    fired = torch.zeros(len(sites), n_langs, width, dtype=torch.float64)
    tokens = np.zeros(n_langs, dtype=np.int64)
    lang_of = torch.as_tensor(list(lang_of_doc), dtype=torch.long)
    forward = Forward(model)
    runner = forward.base if forward.split and forward.base is not None else model
    state: dict[str, torch.Tensor] = {}

    def add(k: int, site: Site, act: torch.Tensor) -> None:
        a = act.reshape(-1, act.shape[-1])[state["pos"], : site.width]  # [counted tokens, width]
        fires = (a > 0).to(torch.float64)
        fired[k, :, : site.width] += state["onehot"].T @ fires  # exact: integer sums far below 2**53

    handles = []
    for k, site in enumerate(sites):
        mod = model.get_submodule(site.module)
        if site.kind == "gate":

            def hook(mod, args, output, k=k, site=site):
                assert site.act is not None  # a gate site has its activation
                out = output[0] if isinstance(output, tuple) else output
                add(k, site, site.act(out[..., : site.width]))

            handles.append(mod.register_forward_hook(hook))
        else:

            def pre_hook(mod, args, k=k, site=site):
                add(k, site, args[0])

            handles.append(mod.register_forward_pre_hook(pre_hook))
    device = forward.device
    try:
        with torch.inference_mode():
            for batch in prepared.batches:
                ids, mask, _, _, _ = pack_batch(batch, device)
                pos, docs = counted_positions(batch)
                langs = lang_of[docs]
                state["pos"] = pos.to(device)
                state["onehot"] = torch.nn.functional.one_hot(langs, n_langs).to(torch.float64).to(device)
                tokens += np.bincount(langs.numpy(), minlength=n_langs)
                runner(input_ids=ids, attention_mask=mask, use_cache=False)
                if progress:
                    progress(int(pos.numel()))
    finally:
        for h in handles:
            h.remove()
    return FiringCounts(
        fired=fired.permute(0, 2, 1).round().to(torch.int64).numpy(),
        tokens=tokens,
        layers=tuple(s.layer for s in sites),
    )


# -- LAPE ------------------------------------------------------------------------------------------------------------
def kth_quantile(values: np.ndarray, q: float) -> float:
    """LAPE's quantile: the ``round(N q)``-th smallest of ``values`` (1-based, at least the first)."""
    flat = np.sort(values, axis=None)
    k = min(max(1, round(flat.size * q)), flat.size)
    return float(flat[k - 1])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each neuron's probabilities normalised over languages (last axis); a neuron that never
    fires has none (NaN)."""
    total = probs.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = probs / total
        logs = np.where(norm > 0, np.log(np.where(norm > 0, norm, 1.0)), 0.0)
    h = -(norm * logs).sum(axis=-1)
    return np.where(total[..., 0] > 0, h, np.nan)


@dataclass(frozen=True)
class LapeSelection:
    """The result of :func:`lape` on ``probs [layer, neuron, lang]``."""

    entropy: np.ndarray  # [layer, neuron], NaN for neurons that never fire
    threshold: float  # the activation-probability bar t
    entropy_cutoff: float | None  # entropy of the last neuron selected (None: none selected)
    n_candidates: int  # neurons with some probability above t
    n_selected: int
    own: np.ndarray  # bool [layer, neuron, lang]: neuron is language-specific for lang


def lape(
    probs: np.ndarray, top_rate: float = TOP_RATE, activation_quantile: float = ACTIVATION_QUANTILE
) -> LapeSelection:
    """LAPE's selection (module docstring) on firing probabilities ``probs [layer, neuron, lang]``."""
    if not 0 < top_rate <= 1:
        raise UserError(f"--top-rate must be in (0, 1], got {top_rate:g}", "LAPE uses 0.01")
    if not 0 < activation_quantile < 1:
        raise UserError(f"--activation-quantile must be in (0, 1), got {activation_quantile:g}", "LAPE uses 0.95")
    n_layers, width, _ = probs.shape
    h = entropy(probs)
    t = kth_quantile(probs, activation_quantile)
    above = probs > t
    candidate = above.any(axis=-1) & np.isfinite(h)
    k = round(n_layers * width * top_rate)
    layer_idx, neuron_idx = np.nonzero(candidate)
    order = np.lexsort((neuron_idx, layer_idx, h[layer_idx, neuron_idx]))[:k]
    own = np.zeros_like(above)
    chosen_l, chosen_n = layer_idx[order], neuron_idx[order]
    own[chosen_l, chosen_n, :] = above[chosen_l, chosen_n, :]
    cutoff = float(h[chosen_l[-1], chosen_n[-1]]) if order.size else None
    return LapeSelection(h, t, cutoff, int(candidate.sum()), int(order.size), own)


def jaccard(own: np.ndarray) -> np.ndarray:
    """``[lang, lang]`` Jaccard overlap of the languages' own-neuron sets (``own [layer, neuron, lang]``); NaN
    where both sets are empty."""
    flat = own.reshape(-1, own.shape[-1]).astype(np.int64)
    inter = flat.T @ flat
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


# -- neuron lists ------------------------------------------------------------------------------------------------------
def ranges(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices as runs ``(first, last)``."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(int(x) for x in indices)):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def neuron_items(per_layer: Mapping[int, Sequence[int]]) -> list[str]:
    """``{layer: neurons}`` as ``LAYER:FIRST-LAST`` items (the ``neurons:`` selector's and neuron files' syntax)."""
    return [
        f"{layer}:{a}" if a == b else f"{layer}:{a}-{b}"
        for layer in sorted(per_layer)
        for a, b in ranges(per_layer[layer])
    ]


def neuron_file(per_layer: Mapping[int, Sequence[int]], header: str) -> str:
    """A neuron list file for ``neurons:@FILE``: ``#`` header lines, then one ``LAYER:FIRST-LAST`` per line."""
    lines = [f"# {ln}" for ln in header.splitlines()]
    return "\n".join(lines + neuron_items(per_layer)) + "\n"


def keep_plan_text(per_layer: Mapping[int, Sequence[int]], scheme: str) -> str:
    """The plan that keeps these neurons at reference precision and quantizes every block Linear weight with
    ``scheme``; without neurons, the uniform plan."""
    items = neuron_items(per_layer)
    return (f"keep:neurons:{','.join(items)}; " if items else "") + f"{scheme}:*"


def per_layer(mask: np.ndarray, layers: Sequence[int]) -> dict[int, list[int]]:
    """``mask [site, neuron]`` -> ``{block: [neurons]}`` (blocks without any left out)."""
    return {int(layers[s]): [int(i) for i in np.nonzero(mask[s])[0]] for s in range(mask.shape[0]) if mask[s].any()}


# -- matched neuron sets for the protection experiment -------------------------------------------------------------
def random_matched(counts: dict[int, int], widths: dict[int, int], rng: np.random.Generator) -> dict[int, list[int]]:
    """``counts[layer]`` neurons of each layer drawn uniformly without replacement from its ``widths[layer]``."""
    return {
        layer: sorted(int(i) for i in rng.choice(widths[layer], size=n, replace=False))
        for layer, n in sorted(counts.items())
        if n
    }


def other_matched(
    counts: dict[int, int], own_other: dict[int, list[int]], share: np.ndarray, ent: np.ndarray, layers: Sequence[int]
) -> tuple[dict[int, list[int]], int]:
    """Another language's neurons, ``counts[layer]`` per layer: first its own neurons of that layer (lowest
    entropy first), then, where it has fewer, the layer's other neurons by its share of their firing (``share
    [site, neuron]``: its probability over the sum over languages), largest first; ties by neuron index. Returns
    the sets and how many came from the fill."""
    site_of = {int(layer): s for s, layer in enumerate(layers)}
    out: dict[int, list[int]] = {}
    filled = 0
    for layer, n in sorted(counts.items()):
        if not n:
            continue
        s = site_of[layer]
        mine = sorted(own_other.get(layer, []), key=lambda i: (ent[s, i], i))
        taken = mine[:n]
        if len(taken) < n:
            rest = [i for i in np.lexsort((np.arange(share.shape[1]), -np.nan_to_num(share[s]))) if i not in set(mine)]
            extra = [int(i) for i in rest[: n - len(taken)]]
            filled += len(extra)
            taken += extra
        out[layer] = sorted(taken)
    return out, filled


def normalised_share(probs: np.ndarray) -> np.ndarray:
    """``probs [layer, neuron, lang]`` over their sum across languages (0 where a neuron never fires)."""
    total = probs.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, probs / np.where(total > 0, total, 1.0), 0.0)


def max_entropy(n_langs: int) -> float:
    return math.log(n_langs) if n_langs > 1 else 0.0
