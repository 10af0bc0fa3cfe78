"""Super weights, found data-free as Yu et al. (2024, "The Super Weight in Large Language Models", arXiv 2411.07191)
do: one forward pass of the reference model on a short prompt, and in each MLP down-projection the *massive
activation* and the single weight that creates it.

A down-projection computes ``y = W x (+ b)`` with ``W [out, in]``. In each block, on the prompt's tokens:

1. the output entry with the largest ``|y|``: token ``t``, output channel ``row``;
2. on that token, the input channel with the largest ``|x|``: ``column``;
3. the candidate super weight is ``W[row, column]``; its share of the output is ``W[row, column] x[t, column] /
   y[t, row]``.

A candidate is reported when all three of these hold (:class:`Thresholds`; defaults written there):
``|y[t, row]|`` is at least ``ratio`` times the median ``|y|`` of that block's down-projection output (a
massive output), ``|x[t, column]|`` is at least ``ratio`` times the median ``|x|`` of its input (a massive
input), and the one product makes at least ``min_share`` of the output (it *creates* the activation rather
than being one of many contributions). As in the paper, further super weights are found by removing (zeroing)
the ones found and running again, for at most ``rounds`` passes; the model's weights are restored afterwards.

Every block's profile (largest and median ``|x|`` and ``|y|``) is reported too, whether or not it passes, so
the spike (or its absence) can be seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import UserError
from ..models.modules import ModuleMap, ParamInfo, weight_2d

#: The prompt of the paper's detection (any short text works; the super activation sits on an early token).
DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."


@dataclass(frozen=True)
class Thresholds:
    """When a down-projection's largest activation counts as a massive one created by one weight.

    ``ratio``: the largest ``|y|`` and the ``|x|`` feeding it must each be at least this many times the median
    magnitude of that block's down-projection output and input (Sun et al. 2024 call an activation massive at
    about 1000 times the median; real super activations are thousands of times the median, while a random or
    well-behaved layer's largest entry is a few to a few tens of times it). ``min_share``: the one product
    ``W[row, column] x[t, column]`` must make at least this fraction of ``y[t, row]``. ``rounds``: forward
    passes, each after zeroing the super weights found so far.
    """

    ratio: float = 100.0
    min_share: float = 0.5
    rounds: int = 3

    def __post_init__(self) -> None:
        if not self.ratio > 1:
            raise UserError(f"--ratio must be greater than 1, got {self.ratio:g}", "e.g. --ratio 100")
        if not 0 < self.min_share <= 1:
            raise UserError(f"--min-share must be in (0, 1], got {self.min_share:g}", "e.g. --min-share 0.5")
        if not 1 <= self.rounds <= 20:
            raise UserError(f"--rounds must be in 1..20, got {self.rounds}", "e.g. --rounds 3")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SuperWeight:
    """One super weight: where it is, its value, and the activations it connects."""

    layer: int
    tensor: str  # parameter name of the down-projection
    row: int  # output channel
    column: int  # input channel
    value: float  # W[row, column]
    token: int  # position in the prompt (0 = the prefix token when the model has one)
    token_text: str
    input_activation: float  # x[token, column]
    output_activation: float  # y[token, row]
    share: float  # W[row, column] * x[token, column] / y[token, row]
    output_ratio: float  # |y[token, row]| / median |y| of the block
    input_ratio: float  # |x[token, column]| / median |x| of the block
    round: int  # detection pass that found it (1 = the first)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SuperWeight:
        return cls(**data)


@dataclass(frozen=True)
class LayerProfile:
    """A down-projection's activations in the first pass: largest and median magnitudes, where the largest is."""

    layer: int
    tensor: str
    max_abs_input: float
    median_abs_input: float
    max_abs_output: float
    median_abs_output: float
    token: int
    row: int
    column: int
    weight: float  # W[row, column]
    share: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SuperWeightResult:
    prompt: str
    n_tokens: int
    thresholds: Thresholds
    super_weights: tuple[SuperWeight, ...]
    layers: tuple[LayerProfile, ...]
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema": "quant-disparity/super-weights",
            "schema_version": 1,
            "model": self.model,
            "prompt": self.prompt,
            "n_tokens": self.n_tokens,
            "thresholds": self.thresholds.to_dict(),
            "method": (
                "Yu et al. 2024 (arXiv 2411.07191): in each MLP down-projection y = W x, the largest |y| (token t, "
                "output channel = row) and on that token the largest |x| (input channel = column); W[row, column] "
                f"is a super weight when |y[t, row]| and |x[t, column]| are at least {self.thresholds.ratio:g} x the "
                f"block's median |y| and |x| and W[row, column] x[t, column] is at least {self.thresholds.min_share:g} "
                f"of y[t, row]; found ones are zeroed and the pass repeated (at most {self.thresholds.rounds} passes)"
            ),
            "super_weights": [s.to_dict() for s in self.super_weights],
            "layers": [p.to_dict() for p in self.layers],
        }

    @property
    def coordinates(self) -> list[tuple[int, int, int]]:
        """(layer, row, column) of every super weight found."""
        return [(s.layer, s.row, s.column) for s in self.super_weights]


def down_projections(modmap: ModuleMap) -> list[ParamInfo]:
    """The MLP down-projection weight of every block, in block order; a model without them is a UserError."""
    downs = [p for p in modmap.params if "mlp.down" in p.components and p.role == "matrix" and p.layer is not None]
    if not downs:
        found = sorted({c for p in modmap.params if p.layer is not None for c in p.components})
        raise UserError(
            f"no MLP down-projection found in the blocks (components found: {', '.join(found)})",
            "super weights are defined on the MLP down-projection; this architecture has none that is recognised",
        )
    return sorted(downs, key=lambda p: p.layer if p.layer is not None else -1)


def _capture(model: torch.nn.Module, downs: Sequence[ParamInfo], input_ids: torch.Tensor) -> dict[str, tuple]:
    """Run ``model`` once; the input and output of each down-projection module, [tokens, features], float64."""
    got: dict[str, tuple] = {}
    handles = []
    for p in downs:
        module = model.get_submodule(p.module)

        def hook(mod, args, output, name=p.name):
            x = args[0] if args else None
            y = output[0] if isinstance(output, tuple) else output
            if isinstance(x, torch.Tensor) and name not in got:  # a module called twice: its first call
                got[name] = (x.detach().reshape(-1, x.shape[-1]).double(), y.detach().reshape(-1, y.shape[-1]).double())

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [p.name for p in downs if p.name not in got]
    if missing:
        raise UserError(
            f"the down-projection {missing[0]} was not called in a forward pass", "this model is not supported"
        )
    return got


def _candidate(x: torch.Tensor, y: torch.Tensor, w2d: torch.Tensor) -> dict[str, Any]:
    """The largest output entry of one down-projection, the input channel feeding it, and their weight."""
    ay = y.abs()
    flat = int(torch.argmax(ay))
    t, row = divmod(flat, y.shape[1])
    column = int(torch.argmax(x[t].abs()))
    w = float(w2d[row, column])
    out = float(y[t, row])
    return {
        "token": t,
        "row": row,
        "column": column,
        "weight": w,
        "x": float(x[t, column]),
        "y": out,
        "share": w * float(x[t, column]) / out if out else 0.0,
        "max_abs_input": float(x.abs().max()),
        "median_abs_input": float(x.abs().median()),
        "max_abs_output": float(ay.max()),
        "median_abs_output": float(ay.median()),
    }


def detect_super_weights(
    model: torch.nn.Module,
    modmap: ModuleMap,
    input_ids: torch.Tensor,
    thresholds: Thresholds = Thresholds(),
    token_texts: Sequence[str] | None = None,
    prompt: str = "",
) -> SuperWeightResult:
    """Super weights of ``model`` on one prompt (``input_ids [1, T]``, prefix token included). The model's weights
    are the same afterwards (zeroed weights of later rounds are put back)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise UserError("the prompt must give at least 2 tokens", "give a longer --prompt")
    downs = down_projections(modmap)
    found: list[SuperWeight] = []
    profiles: list[LayerProfile] = []
    saved: list[tuple[torch.Tensor, int, int, torch.Tensor]] = []  # (2-D view, row, column, original value)
    texts = list(token_texts) if token_texts is not None else []
    try:
        for rnd in range(1, thresholds.rounds + 1):
            acts = _capture(model, downs, input_ids)
            new = 0
            for p in downs:
                assert p.layer is not None  # down_projections: inside the blocks
                x, y = acts[p.name]
                w2d = weight_2d(model.get_parameter(p.name).data, p)
                c = _candidate(x, y, w2d)
                if rnd == 1:
                    profiles.append(
                        LayerProfile(
                            p.layer,
                            p.name,
                            c["max_abs_input"],
                            c["median_abs_input"],
                            c["max_abs_output"],
                            c["median_abs_output"],
                            c["token"],
                            c["row"],
                            c["column"],
                            c["weight"],
                            c["share"],
                        )
                    )
                out_ratio = abs(c["y"]) / c["median_abs_output"] if c["median_abs_output"] else float("inf")
                in_ratio = abs(c["x"]) / c["median_abs_input"] if c["median_abs_input"] else float("inf")
                if not (out_ratio >= thresholds.ratio and in_ratio >= thresholds.ratio):
                    continue
                if c["share"] < thresholds.min_share:
                    continue
                if any(s.tensor == p.name and (s.row, s.column) == (c["row"], c["column"]) for s in found):
                    continue
                found.append(
                    SuperWeight(
                        layer=p.layer,
                        tensor=p.name,
                        row=c["row"],
                        column=c["column"],
                        value=c["weight"],
                        token=c["token"],
                        token_text=texts[c["token"]] if c["token"] < len(texts) else "",
                        input_activation=c["x"],
                        output_activation=c["y"],
                        share=c["share"],
                        output_ratio=out_ratio,
                        input_ratio=in_ratio,
                        round=rnd,
                    )
                )
                new += 1
                with torch.no_grad():
                    saved.append((w2d, c["row"], c["column"], w2d[c["row"], c["column"]].clone()))
                    w2d[c["row"], c["column"]] = 0  # removed for the next round (a view of the parameter)
            if not new:
                break
    finally:
        with torch.no_grad():
            for w2d, r, col, v in reversed(saved):
                w2d[r, col] = v
    return SuperWeightResult(prompt, int(input_ids.shape[1]), thresholds, tuple(found), tuple(profiles))
