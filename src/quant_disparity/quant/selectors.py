"""Plan selectors: the registry of the words a plan rule selects tensors with (``layer:0``, ``norms`` ...).

Each entry knows how it is written, validates its argument when the plan is parsed, and decides whether it
selects a tensor of a given model when the plan is resolved. Third-party selectors come from
``quant_disparity.selectors`` entry points.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError, did_you_mean
from ..models.modules import COMPONENTS, ModuleMap, ParamInfo
from ..registry import Registry
from .schemes import parse_outlier_fraction

#: (argument, tensor, model, where) -> does the selector select the tensor?
Match = Callable[[str, ParamInfo, ModuleMap, str], bool]


@dataclass(frozen=True)
class SelectorKind:
    """A registry entry. ``check`` validates the argument (argument, where) and raises :class:`UserError`;
    a selector without ``check`` takes no argument and is written as its bare name."""

    name: str
    syntax: str  # as written in a plan, for help and error hints
    help: str
    matches: Match
    check: Callable[[str, str], None] | None = None
    list_item: str | None = None  # regex of an item after a comma that continues the argument (layers:0,11)


def _hint(registry: Registry[SelectorKind]) -> str:
    return f"selectors: {', '.join(e.syntax for e in registry.values())}"


SELECTORS: Registry[SelectorKind] = Registry("selector", SelectorKind, group="quant_disparity.selectors", hint=_hint)


# -- layers --------------------------------------------------------------------------------------------------------
_LAYER_ITEM = r"-?\d+(--?\d+)?"


def _layer_index(arg: str, n: int, where: str) -> int:
    i = int(arg)
    if not -n <= i < n:
        raise UserError(f"{where}: layer {i} is out of range", f"the model has {n} layers: 0..{n - 1} or -{n}..-1")
    return i % n


def _layers(arg: str, n: int, where: str) -> set[int]:
    if arg == "even":
        return set(range(0, n, 2))
    if arg == "odd":
        return set(range(1, n, 2))
    out: set[int] = set()
    for part in arg.split(","):
        m = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        if m:
            a, b = _layer_index(m.group(1), n, where), _layer_index(m.group(2), n, where)
            out.update(range(min(a, b), max(a, b) + 1))
        else:
            out.add(_layer_index(part, n, where))
    return out


def _check_layer(arg: str, where: str) -> None:
    if not re.fullmatch(r"-?\d+", arg):
        raise UserError(f"{where}: layer:{arg} is not a layer number", "write e.g. layer:0 or layer:-1")


def _check_layers(arg: str, where: str) -> None:
    if not re.fullmatch(rf"(even|odd|{_LAYER_ITEM}(,{_LAYER_ITEM})*)", arg):
        raise UserError(
            f"{where}: layers:{arg} is not a layer list", "write e.g. layers:0,11 or layers:2-5 or layers:even"
        )


# -- components ----------------------------------------------------------------------------------------------------
_COMPONENT_GROUPS = {"attn.qkv": ("attn.q", "attn.k", "attn.v", "attn.qkv")}
COMPONENT_CHOICES = sorted({c.split(".")[0] for c in COMPONENTS} | set(COMPONENTS) | set(_COMPONENT_GROUPS))


def _check_component(arg: str, where: str) -> None:
    if arg not in COMPONENT_CHOICES:
        raise UserError(
            f"{where}: unknown component {arg!r}{did_you_mean(arg, COMPONENT_CHOICES)}",
            f"use one of {', '.join(COMPONENT_CHOICES)}",
        )


def _matches_component(arg: str, p: ParamInfo, modmap: ModuleMap, where: str) -> bool:
    wanted = _COMPONENT_GROUPS.get(arg, (arg,))
    return any(c == w or c.startswith(w + ".") for c in p.components for w in wanted)


def _check_regex(arg: str, where: str) -> None:
    try:
        re.compile(arg)
    except re.error as e:
        raise UserError(f"{where}: bad regular expression {arg!r} ({e})") from None


def _check_outliers(arg: str, where: str) -> None:
    parse_outlier_fraction(arg, where)


def _has_component(name: str, help: str) -> SelectorKind:
    return SelectorKind(name, name, help, lambda arg, p, modmap, where: name in p.components)


for _entry in (
    SelectorKind(
        "*",
        "*",
        "every Linear weight matrix inside the decoder blocks (the audit's default)",
        lambda arg, p, modmap, where: p.role == "matrix" and p.layer is not None,
    ),
    SelectorKind(
        "all", "all", "every tensor (embeddings, LM head, norms, biases included)", lambda arg, p, modmap, where: True
    ),
    SelectorKind(
        "layer",
        "layer:N",
        "every tensor of block N (negative counts from the end)",
        lambda arg, p, modmap, where: p.layer == _layer_index(arg, modmap.n_layers, where),
        check=_check_layer,
    ),
    SelectorKind(
        "layers",
        "layers:LIST",
        "several blocks: layers:0,11, layers:2-5, layers:even, layers:odd",
        lambda arg, p, modmap, where: p.layer in _layers(arg, modmap.n_layers, where),
        check=_check_layers,
        list_item=_LAYER_ITEM,
    ),
    SelectorKind(
        "component",
        "component:X",
        f"tensors of a component, inside and outside blocks "
        f"({', '.join(COMPONENT_CHOICES)}; attn.qkv: q, k, v or fused)",
        _matches_component,
        check=_check_component,
    ),
    SelectorKind("norms", "norms", "normalization weights and biases", lambda arg, p, modmap, where: p.role == "norm"),
    SelectorKind(
        "norm.final",
        "norm.final",
        "the normalization after the blocks",
        lambda arg, p, modmap, where: p.role == "norm" and p.stage == "after",
    ),
    SelectorKind("biases", "biases", "every bias vector", lambda arg, p, modmap, where: p.is_bias),
    _has_component("embed.token", "the token embedding (with a tied LM head: the same tensor)"),
    _has_component("embed.pos", "learned position embeddings"),
    _has_component("lm_head", "the output layer (with tied embeddings: the same tensor)"),
    SelectorKind(
        "re",
        "re:REGEX",
        "tensors whose parameter name (or an alias) matches REGEX (re.search)",
        lambda arg, p, modmap, where: any(re.search(arg, n) for n in (p.name, *p.aliases)),
        check=_check_regex,
    ),
    SelectorKind(
        "outliers",
        "outliers:P%",
        "element-level, in keep rules only: keep the P % largest-magnitude weights of each quantized tensor",
        lambda arg, p, modmap, where: True,
        check=_check_outliers,
    ),
):
    SELECTORS.register(_entry)
