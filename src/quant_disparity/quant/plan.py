"""Plans are data: an ordered list of rules ``selector -> scheme | keep``.

Compact form, rules separated by ``;``, selectors of one rule by ``,``::

    keep:layer:0,layer:-1; w4g128:*
    keep:norms,biases; keep:outliers:0.5%; w4-tensor:all

Precedence (tested): **the first rule that selects a tensor decides it**; tensors no rule selects are left as
they are. ``keep:outliers:P%`` rules are element-level modifiers: they decide nothing, and every tensor that
ends up quantized and is selected by one keeps its P % largest-magnitude weights in float16 (the first
matching outlier rule counts). Mistakes are errors, not silent no-ops: a selector that matches nothing, a
layer out of range, a rule every tensor of which an earlier rule already decided (shadowed), and a ``keep``
that keeps nothing a later rule would have quantized.

Selectors (``&`` intersects, e.g. ``layer:0&component:mlp``):

==================  ===========================================================================
``*``               every Linear weight matrix inside the decoder blocks (the audit's default)
``all``             every tensor (embeddings, LM head, norms, biases included)
``layer:N``         every tensor of block N (negative counts from the end)
``layers:0,11``     several blocks; also ``layers:2-5``, ``layers:even``, ``layers:odd``
``component:X``     ``attn``, ``mlp``, ``attn.q|k|v|o``, ``attn.qkv`` (q, k, v or fused), ``mlp.gate|up|down``,
                    ``mlp.gate_up``; inside and outside blocks
``norms``           normalization weights and biases; ``norm.final`` only the one after the blocks
``biases``          every bias vector
``embed.token``     the token embedding (with a tied LM head: the same tensor)
``embed.pos``       learned position embeddings
``lm_head``         the output layer (with tied embeddings: the same tensor)
``re:REGEX``        tensors whose parameter name matches REGEX (``re.search``)
``outliers:P%``     element-level, in ``keep`` rules only
==================  ===========================================================================
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

import tomli_w

from ..errors import UserError, did_you_mean
from ..models.modules import COMPONENTS, ModuleMap, ParamInfo, weight_2d
from .schemes import NONE, Scheme, parse_outlier_fraction, parse_scheme

KEEP = "keep"
_KEYWORDS = ("*", "all", "layer", "layers", "component", "norms", "norm.final", "biases", "embed.token",
             "embed.pos", "lm_head", "re", "outliers")
_COMPONENT_GROUPS = {"attn.qkv": ("attn.q", "attn.k", "attn.v", "attn.qkv")}
_COMPONENT_CHOICES = sorted({c.split(".")[0] for c in COMPONENTS} | set(COMPONENTS) | set(_COMPONENT_GROUPS))


@dataclass(frozen=True)
class Atom:
    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return self.kind if not self.arg else f"{self.kind}:{self.arg}"


@dataclass(frozen=True)
class Selector:
    atoms: tuple[Atom, ...]

    def __str__(self) -> str:
        return "&".join(str(a) for a in self.atoms)

    @property
    def outliers(self) -> float | None:
        for a in self.atoms:
            if a.kind == "outliers":
                return parse_outlier_fraction(a.arg, f"selector {self}")
        return None


@dataclass(frozen=True)
class Rule:
    action: str  # "keep" or a scheme name
    selectors: tuple[Selector, ...]

    def __str__(self) -> str:
        return f"{self.action}:{','.join(str(s) for s in self.selectors)}"

    @property
    def is_outlier_rule(self) -> bool:
        return any(s.outliers is not None for s in self.selectors)

    @property
    def scheme(self) -> Scheme | None:
        return None if self.action == KEEP else parse_scheme(self.action)


def _parse_atom(text: str, where: str) -> Atom:
    text = text.strip()
    if text in ("*", "all", "norms", "norm.final", "biases", "embed.token", "embed.pos", "lm_head"):
        return Atom(text)
    kind, sep, arg = text.partition(":")
    if kind in ("layer", "layers", "component", "re", "outliers") and sep and arg.strip():
        arg = arg.strip()
        if kind == "re":
            try:
                re.compile(arg)
            except re.error as e:
                raise UserError(f"{where}: bad regular expression {arg!r} ({e})") from None
        elif kind == "layer" and not re.fullmatch(r"-?\d+", arg):
            raise UserError(f"{where}: layer:{arg} is not a layer number", "write e.g. layer:0 or layer:-1")
        elif kind == "layers" and not re.fullmatch(r"(even|odd|-?\d+(--?\d+)?(,-?\d+(--?\d+)?)*)", arg):
            raise UserError(f"{where}: layers:{arg} is not a layer list", "write e.g. layers:0,11 or layers:2-5 or "
                            "layers:even")
        elif kind == "component" and arg not in _COMPONENT_CHOICES:
            raise UserError(f"{where}: unknown component {arg!r}{did_you_mean(arg, _COMPONENT_CHOICES)}",
                            f"use one of {', '.join(_COMPONENT_CHOICES)}")
        elif kind == "outliers":
            parse_outlier_fraction(arg, where)
        return Atom(kind, arg)
    raise UserError(f"{where}: unknown selector {text!r}{did_you_mean(kind, _KEYWORDS)}",
                    "selectors: *, all, layer:N, layers:..., component:X, norms, norm.final, biases, embed.token, "
                    "embed.pos, lm_head, re:REGEX, outliers:P%")


def _split_selectors(text: str) -> list[str]:
    """Split on commas, re-joining list continuations (``layers:0,11`` stays one selector)."""
    out: list[str] = []
    for part in text.split(","):
        p = part.strip()
        if out and re.match(r"-?\d+(--?\d+)?($|&)", p) and re.search(r"(^|&)layers:[^&]*$", out[-1]):
            out[-1] += "," + p
        else:
            out.append(p)
    return out


_ACTION_RE = re.compile(r"^(keep|gguf:[a-z0-9_]+(?:\+outliers(?:-inscale)?:[0-9.]+%)?|"
                        r"[^:;]+?(?:\+outliers(?:-inscale)?:[0-9.]+%)?):(.*)$", re.IGNORECASE)


def _parse_rule(text: str, index: int) -> Rule:
    where = f"plan rule {index + 1} ({text.strip()!r})"
    m = _ACTION_RE.match(text.strip())
    if not m or not m.group(2).strip():
        raise UserError(f"{where}: expected ACTION:SELECTOR[,SELECTOR...]", "e.g. keep:layer:0,layer:-1 or w4g128:*")
    action = m.group(1).strip().lower()
    if action != KEEP:
        action = parse_scheme(action).name  # validates and canonicalizes
    selectors = tuple(Selector(tuple(_parse_atom(a, where) for a in sel.split("&")))
                      for sel in _split_selectors(m.group(2)))
    rule = Rule(action, selectors)
    if rule.is_outlier_rule:
        if action != KEEP:
            raise UserError(f"{where}: outliers:P% belongs in a keep rule", "write keep:outliers:0.5%")
        if len(selectors) != 1:
            raise UserError(f"{where}: an outlier rule takes one selector", "e.g. keep:outliers:1%&component:mlp")
    return rule


@dataclass(frozen=True)
class Plan:
    rules: tuple[Rule, ...]
    version: int = 1

    @classmethod
    def parse(cls, text: str) -> Plan:
        parts = [p for p in text.split(";") if p.strip()]
        if not parts:
            raise UserError("empty plan", "write e.g. keep:layer:0,layer:-1; w4g128:*")
        return cls(tuple(_parse_rule(p, i) for i, p in enumerate(parts)))

    @classmethod
    def uniform(cls, scheme: Scheme | str, selector: str = "*") -> Plan:
        name = scheme if isinstance(scheme, str) else scheme.name
        return cls.parse(f"{name}:{selector}")

    def __str__(self) -> str:
        return "; ".join(str(r) for r in self.rules)

    def to_dict(self) -> dict:
        return {"version": self.version,
                "rules": [{"action": r.action, "select": [str(s) for s in r.selectors]} for r in self.rules]}

    @classmethod
    def from_dict(cls, data: dict, where: str = "plan") -> Plan:
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
            raise UserError(f"{where}: expected a list of [[rules]] with action and select")
        unknown = set(data) - {"version", "rules"}
        if unknown:
            raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r}", "a plan has version and rules")
        rules = []
        for i, r in enumerate(data["rules"]):
            if not isinstance(r, dict) or set(r) != {"action", "select"} or not isinstance(r["select"], list):
                raise UserError(f"{where}: rule {i + 1} needs exactly `action` and `select` (a list)")
            rules.append(_parse_rule(f"{r['action']}:{','.join(map(str, r['select']))}", i))
        return cls(tuple(rules), int(data.get("version", 1)))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str, where: str = "plan") -> Plan:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{where}: not valid TOML ({e})") from None
        except RecursionError:
            raise UserError(f"{where}: TOML nested too deeply") from None
        return cls.from_dict(data, where)

    def resolve(self, modmap: ModuleMap) -> ResolvedPlan:
        return resolve(self, modmap)


# -- matching ------------------------------------------------------------------------------------------------------
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


def _atom_matches(atom: Atom, p: ParamInfo, modmap: ModuleMap, where: str) -> bool:
    k = atom.kind
    if k == "*":
        return p.role == "matrix" and p.layer is not None
    if k in ("all", "outliers"):
        return True
    if k == "layer":
        return p.layer == _layer_index(atom.arg, modmap.n_layers, where)
    if k == "layers":
        return p.layer in _layers(atom.arg, modmap.n_layers, where)
    if k == "component":
        wanted = _COMPONENT_GROUPS.get(atom.arg, (atom.arg,))
        return any(c == w or c.startswith(w + ".") for c in p.components for w in wanted)
    if k == "norms":
        return p.role == "norm"
    if k == "norm.final":
        return p.role == "norm" and p.stage == "after"
    if k == "biases":
        return p.is_bias
    if k in ("embed.token", "embed.pos", "lm_head"):
        return k in p.components
    if k == "re":
        return any(re.search(atom.arg, name) for name in (p.name, *p.aliases))
    raise AssertionError(k)


def _selects(sel: Selector, p: ParamInfo, modmap: ModuleMap, where: str) -> bool:
    return all(_atom_matches(a, p, modmap, where) for a in sel.atoms)


# -- resolution ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    name: str
    components: tuple[str, ...]
    layer: int | None
    numel: int
    action: str  # "keep", "none" (no rule) or the scheme name (outliers included)
    rule: int | None  # index of the deciding rule
    bits: float  # storage bits under this plan

    @property
    def quantized(self) -> bool:
        return self.action not in (KEEP, "none")


@dataclass(frozen=True)
class ResolvedPlan:
    plan: Plan
    decisions: tuple[Decision, ...]
    _schemes: dict = field(default_factory=dict, repr=False, compare=False)

    def assignment(self) -> dict[str, Scheme]:
        return dict(self._schemes)

    @property
    def totals(self) -> dict:
        total = sum(d.numel for d in self.decisions)
        quant = sum(d.numel for d in self.decisions if d.quantized)
        kept = sum(d.numel for d in self.decisions if d.action == KEEP)
        bits = sum(d.bits for d in self.decisions)
        qbits = sum(d.bits for d in self.decisions if d.quantized)
        return {
            "total_params": total,
            "quantized_params": quant,
            "kept_params": kept,
            "protected_fraction": kept / (kept + quant) if kept + quant else 0.0,
            "unquantized_fraction": 1 - quant / total if total else 0.0,
            "bits_per_weight": bits / total if total else 0.0,
            "bits_per_quantized_weight": qbits / quant if quant else None,
            "total_bytes": bits / 8,
        }

    def to_dict(self) -> dict:
        return {
            "plan": str(self.plan),
            "rules": self.plan.to_dict()["rules"],
            "totals": self.totals,
            "tensors": [
                {"name": d.name, "components": list(d.components), "layer": d.layer, "numel": d.numel,
                 "action": d.action, "rule": d.rule, "bytes": d.bits / 8}
                for d in self.decisions
            ],
        }


def resolve(plan: Plan, modmap: ModuleMap) -> ResolvedPlan:
    params = modmap.params
    decided: dict[str, tuple[int, str]] = {}
    for i, rule in enumerate(plan.rules):
        where = f"plan rule {i + 1} ({rule})"
        matched: list[ParamInfo] = []
        for sel in rule.selectors:
            hits = [p for p in params if _selects(sel, p, modmap, where)]
            if not hits:
                raise UserError(f"{where}: selector {str(sel)!r} matches no tensor of this model",
                                "`quant-disparity modules --model ...` shows what the model has")
            matched.extend(hits)
        if rule.is_outlier_rule:
            continue
        new = [p for p in dict.fromkeys(matched) if p.name not in decided]
        if not new:
            first = min(decided[p.name][0] for p in matched)
            raise UserError(f"{where} is shadowed: every tensor it selects is already decided by rule {first + 1} "
                            f"({plan.rules[first]})", "rules are first-match: put the more specific rule first")
        for p in new:
            decided[p.name] = (i, rule.action)
    # A keep must keep something that a later rule would otherwise have quantized.
    for i, rule in enumerate(plan.rules):
        if rule.action != KEEP or rule.is_outlier_rule:
            continue
        mine = [p for p in params if decided.get(p.name, (None,))[0] == i]
        later = [r for r in plan.rules[i + 1:] if r.action != KEEP]
        if not any(_selects(s, p, modmap, "") for p in mine for r in later for s in r.selectors):
            raise UserError(f"plan rule {i + 1} ({rule}) keeps nothing that a later rule would quantize",
                            "rules are first-match: put keep rules before the rules they protect from")
    outlier_rules = [(i, r) for i, r in enumerate(plan.rules) if r.is_outlier_rule]
    used = set()
    schemes: dict[str, Scheme] = {}
    decisions = []
    for p in params:
        rule_i, action = decided.get(p.name, (None, "none"))
        scheme = NONE
        if action not in (KEEP, "none"):
            scheme = parse_scheme(action)
            for j, r in outlier_rules:
                if _selects(r.selectors[0], p, modmap, ""):
                    scheme = scheme.with_outliers(r.selectors[0].outliers)
                    used.add(j)
                    break
            shape = tuple(weight_2d_shape(p))
            scheme.check_shape(shape, p.name)
            schemes[p.name] = scheme
        shape = weight_2d_shape(p)
        decisions.append(Decision(
            name=p.name, components=p.components, layer=p.layer, numel=p.numel,
            action=scheme.name if action not in (KEEP, "none") else action, rule=rule_i,
            bits=scheme.storage_bits(shape, p.bits),
        ))
    for j, r in outlier_rules:
        if j not in used:
            raise UserError(f"plan rule {j + 1} ({r}) applies to no quantized tensor",
                            "outlier rules only act on tensors that a scheme rule quantizes")
    return ResolvedPlan(plan=plan, decisions=tuple(decisions), _schemes=schemes)


def weight_2d_shape(p: ParamInfo) -> tuple[int, int]:
    import torch

    return tuple(weight_2d(torch.empty(p.shape, device="meta"), p).shape)


def load_plan(text: str) -> Plan:
    """A plan from its compact string, or from a TOML file when ``text`` names one (``*.toml``)."""
    from pathlib import Path

    if text.strip().endswith(".toml"):
        path = Path(text.strip())
        if not path.is_file():
            raise UserError(f"plan file {path} not found")
        try:
            return Plan.from_toml(path.read_text(encoding="utf-8"), where=str(path))
        except UnicodeDecodeError:
            raise UserError(f"plan file {path} is not UTF-8 text", "save it as UTF-8") from None
    return Plan.parse(text)
