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
from ..models.modules import COMPONENTS, AttnLayout, ModuleMap, ParamInfo, head_elements, mlp_width, neuron_elements
from ..registry import Registry
from .schemes import parse_outlier_fraction

#: (argument, tensor, model, where) -> does the selector select the tensor?
Match = Callable[[str, ParamInfo, ModuleMap, str], bool]
#: (argument, tensor, model, where) -> (rows, columns) of the tensor's [out, in] view
Elements = Callable[[str, ParamInfo, ModuleMap, str], tuple[list[int], list[int]]]
#: (argument, tensor, model, where) -> single elements (row, column) of the tensor's [out, in] view
Points = Callable[[str, ParamInfo, ModuleMap, str], list[tuple[int, int]]]


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
    #: Element-level selectors (heads, neurons): (argument, tensor, model, where) -> the rows and columns of
    #: the tensor's ``[out, in]`` view they select. Such selectors only appear in keep rules.
    elements: Elements | None = None
    #: Rewrites the argument when the plan is parsed (e.g. reads a neuron list from a file into the plan).
    expand: Callable[[str, str], str] | None = None
    #: Point selectors (super weights): the single elements they select; in keep and zero rules only.
    points: Points | None = None
    #: Also written bare (``super``): a placeholder the command binds to explicit coordinates before resolving.
    bare: bool = False


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


# -- heads and neurons (element-level) --------------------------------------------------------------------------------
_HEAD_ITEM = r"-?\d+\.\d+(-\d+)?"
_NEURON_ITEM = r"-?\d+:\d+(-\d+)?"


def _check_items(kind: str, item: str, example: str) -> Callable[[str, str], None]:
    def check(arg: str, where: str) -> None:
        if not re.fullmatch(rf"{item}(,{item})*", arg):
            raise UserError(f"{where}: {kind}:{arg} is not a {kind} list", f"write e.g. {kind}:{example}")

    return check


def _items(arg: str, sep: str, n_layers: int, where: str) -> dict[int, list[tuple[int, int]]]:
    """``3.5,3.0-1`` (sep ".") or ``3:0-255`` (sep ":") -> {layer: [(first, last), ...]}, layers checked."""
    out: dict[int, list[tuple[int, int]]] = {}
    for part in arg.split(","):
        layer, _, rng = part.partition(sep)
        a, _, b = rng.partition("-")
        first, last = int(a), int(b or a)
        if last < first:
            raise UserError(f"{where}: range {rng} runs backwards", f"write the smaller index first: {b}-{a}")
        out.setdefault(_layer_index(layer, n_layers, where), []).append((first, last))
    return out


def _layout(modmap: ModuleMap, where: str) -> AttnLayout:
    if modmap.attention is None:
        raise UserError(
            f"{where}: the attention heads of this model cannot be separated ({modmap.attention_note})",
            "select whole tensors instead (component:attn.q, layer:N ...)",
        )
    return modmap.attention


def _heads(arg: str, p: ParamInfo, modmap: ModuleMap, where: str, kv: bool) -> tuple[list[int], list[int]]:
    layout = _layout(modmap, where)
    n = layout.n_kv_heads if kv else layout.n_heads
    wanted: set[int] = set()
    for first, last in _items(arg, ".", modmap.n_layers, where).get(p.layer if p.layer is not None else -1, []):
        if last >= n:
            what = "key/value head" if kv else "head"
            raise UserError(
                f"{where}: {what} {last} is out of range",
                f"each layer has {n} {what}s: 0..{n - 1}"
                + (f" ({layout.n_heads} query heads share them)" if kv and layout.shared_kv else ""),
            )
        wanted.update(range(first, last + 1))
    if p.layer is None or not wanted:
        return [], []
    if kv:
        return head_elements(p, layout, set(), wanted)
    # A key/value head of its own (no sharing) goes with its query head; shared ones only with kvhead:.
    return head_elements(p, layout, wanted, set() if layout.shared_kv else wanted)


def _neurons(arg: str, p: ParamInfo, modmap: ModuleMap, where: str) -> tuple[list[int], list[int]]:
    ranges = _items(arg, ":", modmap.n_layers, where).get(p.layer if p.layer is not None else -1, [])
    if not ranges or p.layer is None:
        return [], []
    width = mlp_width(modmap, p.layer)
    if width is None:
        raise UserError(f"{where}: layer {p.layer} has no MLP down projection to find its neurons by")
    channels: set[int] = set()
    for first, last in ranges:
        if last >= width:
            raise UserError(
                f"{where}: neuron {last} of layer {p.layer} is out of range",
                f"the MLP has {width} intermediate channels: 0..{width - 1}",
            )
        channels.update(range(first, last + 1))
    return neuron_elements(p, sorted(channels), width)


def _expand_neurons(arg: str, where: str) -> str:
    """``@FILE``: a neuron list, one ``LAYER:FIRST-LAST`` (or ``LAYER:INDEX``) per line, ``#`` comments."""
    if not arg.startswith("@"):
        return arg
    from pathlib import Path

    path = Path(arg[1:])
    if not path.is_file():
        raise UserError(f"{where}: neuron list {path} not found", "write neurons:@FILE with one LAYER:RANGE per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{where}: neuron list {path} is not UTF-8 text") from None
    items = [ln.split("#", 1)[0].strip() for ln in lines]
    items = [i for i in items if i]
    for i, item in enumerate(items):
        if not re.fullmatch(_NEURON_ITEM, item):
            raise UserError(f"{where}: {path}: entry {i + 1} ({item!r}) is not LAYER:FIRST-LAST", "e.g. 3:0-255")
    if not items:
        raise UserError(f"{where}: neuron list {path} is empty")
    return ",".join(items)


# -- super weights (single elements) ---------------------------------------------------------------------------------
_SUPER_ITEM = r"-?\d+\.\d+\.\d+"
#: ``super:none``: bound, and the detector found nothing; the rule keeps (or zeroes) nothing and says so.
SUPER_NONE = "none"


def _check_super(arg: str, where: str) -> None:
    if arg != SUPER_NONE and not re.fullmatch(rf"{_SUPER_ITEM}(,{_SUPER_ITEM})*", arg):
        raise UserError(
            f"{where}: super:{arg} is not a list of super-weight coordinates",
            "write super (found by the detector) or super:LAYER.ROW.COLUMN, e.g. super:11.507.1229",
        )


def _super_points(arg: str, p: ParamInfo, modmap: ModuleMap, where: str) -> list[tuple[int, int]]:
    """The (row, column) elements of ``super:L.R.C,...`` in ``p``: those of its layer, when ``p`` is that layer's
    MLP down-projection."""
    if arg == "":
        raise UserError(
            f"{where}: `super` stands for the model's super weights, which a forward pass of the reference finds; "
            "this command does not find them",
            "use it with audit --plan or inspect super-weights --effect, or write super:LAYER.ROW.COLUMN",
        )
    if arg == SUPER_NONE or p.layer is None or "mlp.down" not in p.components or p.role != "matrix":
        return []
    out = []
    for item in arg.split(","):
        layer, row, col = item.rsplit(".", 2)
        if _layer_index(layer, modmap.n_layers, where) == p.layer:
            out.append((int(row), int(col)))
    return out


def _element_kind(name: str, syntax: str, help: str, elements: Elements, **kw) -> SelectorKind:
    def matches(arg: str, p: ParamInfo, modmap: ModuleMap, where: str) -> bool:
        rows, cols = elements(arg, p, modmap, where)
        return bool(rows or cols)

    return SelectorKind(name, syntax, help, matches, elements=elements, **kw)


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
    _element_kind(
        "head",
        "head:L.H",
        "element-level, in keep rules only: attention head H of block L (its q rows and o columns, and its own "
        "k/v rows when no other head shares them); head:3.0-3 and head:3.5,4.1 select several",
        lambda arg, p, modmap, where: _heads(arg, p, modmap, where, kv=False),
        check=_check_items("head", _HEAD_ITEM, "3.5"),
        list_item=_HEAD_ITEM,
    ),
    _element_kind(
        "kvhead",
        "kvhead:L.G",
        "element-level, in keep rules only: key/value head G of block L (its k and v rows; under grouped-query "
        "attention shared by several query heads)",
        lambda arg, p, modmap, where: _heads(arg, p, modmap, where, kv=True),
        check=_check_items("kvhead", _HEAD_ITEM, "3.0"),
        list_item=_HEAD_ITEM,
    ),
    _element_kind(
        "neurons",
        "neurons:L:A-B",
        "element-level, in keep rules only: MLP intermediate channels A..B of block L (rows of gate/up or fc1, "
        "columns of down or fc2); neurons:3:0-255,4:7 or neurons:@FILE (one LAYER:A-B per line)",
        _neurons,
        check=_check_items("neurons", _NEURON_ITEM, "3:0-255"),
        list_item=_NEURON_ITEM,
        expand=_expand_neurons,
    ),
    SelectorKind(
        "super",
        "super",
        "element-level, in keep and zero rules only: the super weights of the MLP down-projections, found data-free "
        "on the reference weights (inspect super-weights, default thresholds) when the command starts; "
        "super:L.R.C,... names them (block, row, column)",
        lambda arg, p, modmap, where: bool(_super_points(arg, p, modmap, where)),
        check=_check_super,
        list_item=_SUPER_ITEM,
        points=_super_points,
        bare=True,
    ),
):
    SELECTORS.register(_entry)
