"""Does keeping a language's own neurons at reference precision recover more of its damage than keeping as many
random neurons, or another language's, and what does it do to the other languages?

For each language ℓ with own neurons (:mod:`.neurons`), three plans at equal bits, each keeping ``c_ℓ(layer)``
neurons of every layer (rows of gate/up or fc1, columns of down or fc2) and quantizing every other block Linear
weight with the scheme:

- ``own``: ℓ's own neurons;
- ``random``: the same number per layer, drawn uniformly from the layer's neurons (seeded);
- ``other``: another language's neurons, the same number per layer (:func:`.neurons.other_matched`).

Kept elements count at reference width and the rest is quantized as one compact matrix, so equal counts per
layer give equal bits; the resolved plans' totals are compared and a difference is an error. Every plan is
scored on held-out documents of every language, against the uniform plan (everything quantized): the damage
*recovered* = bpb(uniform) - bpb(plan), with a 95% paired bootstrap interval (the same document resample for
every plan of a language), and the paired differences own - random and own - other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..analysis.stats import LN2, Estimate, interval, resample_counts, too_few_documents
from ..errors import UserError
from ..models.modules import ModuleMap
from ..quant import Scheme
from ..quant.plan import Plan
from .neurons import keep_plan_text

KINDS = ("own", "random", "other")
UNIFORM = "uniform"


@dataclass(frozen=True)
class ProtectPlan:
    row: str  # the language whose neuron count sets the plan's size
    kind: str  # own | random | other
    source: str  # whose neurons: the row language, "random", or the other language
    neurons: dict[int, list[int]]
    text: str
    assignment: dict[str, Scheme]
    totals: dict
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.row}"

    @property
    def n_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())


def resolve_plan(neurons: dict[int, list[int]], scheme: str, modmap: ModuleMap) -> tuple[str, dict, dict]:
    """The keep plan of ``neurons`` resolved on ``modmap``: (text, assignment, totals)."""
    text = keep_plan_text(neurons, scheme)
    resolved = Plan.parse(text).resolve(modmap)
    return text, resolved.assignment(), resolved.totals


def check_equal_bits(plans: Sequence[ProtectPlan]) -> None:
    """Plans of one row must cost exactly the same bits; anything else would not be a fair comparison."""
    bits = {p.kind: p.totals["total_bytes"] for p in plans}
    if len(set(bits.values())) > 1:
        raise UserError(
            f"protection plans of {plans[0].row} differ in size ({', '.join(f'{k}: {v:.0f} B' for k, v in bits.items())})",
            "this is a bug: equal neuron counts per layer must give equal bits",
        )


@dataclass
class Column:
    """One evaluated language: its documents' rows in the sweep and its bootstrap weights."""

    lang: str
    idx: np.ndarray
    bytes: np.ndarray
    weights: np.ndarray  # [n_boot, n_docs]


def columns(
    langs: Sequence[str], n_docs: Mapping[str, int], n_bytes: Sequence[int], n_boot: int, seed: int
) -> list[Column]:
    """Documents are in language order (as :class:`..corpus.Selection` gives them)."""
    rng = np.random.default_rng(seed)
    out, offset = [], 0
    for lang in langs:
        n = n_docs[lang]
        out.append(
            Column(
                lang,
                np.arange(offset, offset + n),
                np.asarray(n_bytes[offset : offset + n], dtype=np.float64),
                resample_counts(n, n_boot, rng),
            )
        )
        offset += n
    return out


def protection_table(
    nll: Mapping[str, np.ndarray], nll_ref: np.ndarray, cols: Sequence[Column], plans: Sequence[ProtectPlan]
) -> dict:
    """Per evaluated language: reference bpb, the uniform plan's Δbpb, and per plan the recovered Δbpb
    (bpb uniform - bpb plan) with intervals; per row language and column, own - random and own - other."""
    out: dict = {}
    for c in cols:
        note = too_few_documents(len(c.idx))
        denom = LN2 * c.bytes.sum()
        denom_r = LN2 * (c.weights @ c.bytes)

        def bpb(v: np.ndarray, c=c, denom=denom, denom_r=denom_r) -> tuple[float, np.ndarray]:
            x = v[c.idx]
            return float(x.sum() / denom), (c.weights @ x) / denom_r

        def est(p: float, r: np.ndarray, note=note) -> Estimate:
            return interval(p, r, note)

        fp, fp_r = bpb(nll_ref)
        u, u_r = bpb(nll[UNIFORM])
        rec: dict[str, tuple[float, np.ndarray]] = {}
        for plan in plans:
            q, q_r = bpb(nll[plan.name])
            rec[plan.name] = (u - q, u_r - q_r)
        cells = {name: est(*v).to_dict() for name, v in rec.items()}
        diffs: dict[str, dict] = {}
        for row in dict.fromkeys(p.row for p in plans):
            own = rec.get(f"own:{row}")
            if own is None:
                continue
            diffs[row] = {
                f"own-{k}": est(own[0] - rec[f"{k}:{row}"][0], own[1] - rec[f"{k}:{row}"][1]).to_dict()
                for k in ("random", "other")
                if f"{k}:{row}" in rec
            }
        out[c.lang] = {
            "n_docs": len(c.idx),
            "n_bytes": int(c.bytes.sum()),
            **({"note": note} if note else {}),
            "bpb_fp": est(fp, fp_r).to_dict(),
            "delta_bpb_uniform": est(u - fp, u_r - fp_r).to_dict(),
            "recovered": cells,
            "differences": diffs,
        }
    return out
