"""Plans are data: an ordered list of rules ``selector -> scheme | keep``.

Compact form, rules separated by ``;``, selectors of one rule by ``,``::

    keep:layer:0,layer:-1; w4g128:*
    keep:norms,biases; keep:outliers:0.5%; w4-tensor:all

Precedence (tested): **the first rule that selects a tensor decides it**; tensors no rule selects are left as
they are. ``keep:outliers:P%`` rules are element-level modifiers: they decide nothing, and every tensor that
ends up quantized and is selected by one keeps its P % largest-magnitude weights in float16 (the first
matching outlier rule counts). ``keep:head:L.H``, ``keep:kvhead:L.G`` and ``keep:neurons:L:A-B`` rules are
element-level too: they decide nothing, and every such rule that touches a quantized tensor adds its rows or
columns to the ones the tensor keeps at reference precision (:attr:`.backends.base.Scheme.keep_rows`).
``keep:super`` and ``zero:super`` are point rules: they decide nothing either; ``keep:super`` keeps the single
super-weight elements of quantized tensors at their reference value (:attr:`.backends.base.Scheme.keep_points`),
``zero:super`` sets them to 0 in whatever the tensor holds (quantized, or the reference:
``reference+zero-at:...``). A bare ``super`` is bound to the coordinates the detector finds on the reference
weights (:meth:`Plan.with_super`) before the plan is resolved; ``super:none`` (nothing found) keeps nothing, and
the resolved plan says so in its notes. Mistakes are errors, not silent no-ops: a selector that matches nothing, a
layer out of range, a rule every tensor of which an earlier rule already decided (shadowed), and a ``keep``
that keeps nothing a later rule would have quantized.

Selectors are the entries of :data:`.selectors.SELECTORS` (``*`` every Linear weight matrix inside the decoder
blocks, ``all``, ``layer:N``, ``layers:0,11``, ``component:mlp``, ``norms``, ``re:REGEX``, ``outliers:P%`` ...);
``&`` intersects them, e.g. ``layer:0&component:mlp``. An action is ``keep`` or a scheme name
(:data:`.schemes.SCHEMES`).
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from typing import cast

import tomli_w

from ..errors import UserError
from ..models.modules import ModuleMap, ParamInfo, weight_2d
from .backends.identity import Reference
from .schemes import NONE, SCHEMES, Scheme, parse_outlier_fraction, parse_scheme
from .selectors import SELECTORS, SUPER_NONE

KEEP = "keep"
#: The action of point rules that set single elements to 0 (``zero:super``, an ablation).
ZERO = "zero"


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

    @property
    def element_atoms(self) -> tuple[Atom, ...]:
        """The atoms that select rows and columns inside tensors (heads, neurons)."""
        return tuple(a for a in self.atoms if SELECTORS.get(a.kind).elements is not None)

    @property
    def point_atoms(self) -> tuple[Atom, ...]:
        """The atoms that select single elements (super weights)."""
        return tuple(a for a in self.atoms if SELECTORS.get(a.kind).points is not None)

    @property
    def selects_nothing(self) -> bool:
        """A bound point selector whose detector found nothing (``super:none``)."""
        return any(a.arg == SUPER_NONE for a in self.point_atoms)

    def points(self, p: ParamInfo, modmap: ModuleMap, where: str) -> set[tuple[int, int]]:
        """The single elements of ``p`` a point selector selects (empty unless every atom selects ``p``)."""
        if self.selects_nothing or not _selects(self, p, modmap, where):
            return set()
        out: set[tuple[int, int]] = set()
        for a in self.point_atoms:
            points = SELECTORS.get(a.kind).points
            assert points is not None  # a point atom
            out.update(points(a.arg, p, modmap, where))
        return out

    def elements(self, p: ParamInfo, modmap: ModuleMap, where: str) -> tuple[set[int], set[int]]:
        """Rows and columns of ``p`` an element selector keeps (empty unless every atom selects ``p``)."""
        if not _selects(self, p, modmap, where):
            return set(), set()
        rows, cols = set(), set()
        for a in self.element_atoms:
            elements = SELECTORS.get(a.kind).elements
            assert elements is not None  # an element atom
            r, c = elements(a.arg, p, modmap, where)
            rows.update(r)
            cols.update(c)
        return rows, cols


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
    def is_element_rule(self) -> bool:
        """A keep rule of heads or neurons: it decides no tensor, it keeps rows / columns of quantized ones."""
        return any(s.element_atoms for s in self.selectors)

    @property
    def is_point_rule(self) -> bool:
        """A keep or zero rule of single elements (super weights): it decides no tensor."""
        return any(s.point_atoms for s in self.selectors)

    @property
    def decides_nothing(self) -> bool:
        """Outlier, head / neuron and point rules act inside tensors other rules decide."""
        return self.is_outlier_rule or self.is_element_rule or self.is_point_rule

    @property
    def scheme(self) -> Scheme | None:
        return None if self.action in (KEEP, ZERO) else parse_scheme(self.action)


def _parse_atom(text: str, where: str) -> Atom:
    text = text.strip()
    bare = SELECTORS.lookup(text)
    if bare is not None and (bare.check is None or bare.bare):
        return Atom(text)
    kind, sep, arg = text.partition(":")
    entry = SELECTORS.lookup(kind)
    if entry is not None and entry.check is not None and sep and arg.strip():
        arg = entry.expand(arg.strip(), where) if entry.expand else arg.strip()
        entry.check(arg, where)
        return Atom(kind, arg)
    raise SELECTORS.unknown(text, near=kind, where=where)


def _continues(previous: str, part: str) -> bool:
    """Whether ``part`` continues the comma-separated argument of the last selector of ``previous``."""
    kind, sep, _ = previous.rsplit("&", 1)[-1].partition(":")
    entry = SELECTORS.lookup(kind) if sep else None
    return bool(entry and entry.list_item and re.match(f"(?:{entry.list_item})($|&)", part))


def _split_selectors(text: str) -> list[str]:
    """Split on commas, re-joining list continuations (``layers:0,11`` stays one selector)."""
    out: list[str] = []
    for part in text.split(","):
        p = part.strip()
        if out and _continues(out[-1], p):
            out[-1] += "," + p
        else:
            out.append(p)
    return out


@functools.cache
def _action_re(colon_names: tuple[str, ...]) -> re.Pattern:
    """``ACTION:SELECTORS``, split at the first colon that is not inside a scheme name (``gguf:q4_0``)."""
    outliers = r"(?:\+outliers(?:-inscale)?:[0-9.]+%)?"
    with_colon = "".join(f"{name}{outliers}|" for name in colon_names)
    return re.compile(rf"^(keep|zero|{with_colon}[^:;]+?{outliers}):(.*)$", re.IGNORECASE)


def _parse_rule(text: str, index: int) -> Rule:
    where = f"plan rule {index + 1} ({text.strip()!r})"
    m = _action_re(tuple(k.colon_name for k in SCHEMES.values() if k.colon_name)).match(text.strip())
    if not m or not m.group(2).strip():
        raise UserError(f"{where}: expected ACTION:SELECTOR[,SELECTOR...]", "e.g. keep:layer:0,layer:-1 or w4g128:*")
    action = m.group(1).strip().lower()
    if action not in (KEEP, ZERO):
        action = parse_scheme(action).name  # validates and canonicalizes
    selectors = tuple(
        Selector(tuple(_parse_atom(a, where) for a in sel.split("&"))) for sel in _split_selectors(m.group(2))
    )
    rule = Rule(action, selectors)
    if action == ZERO and not (rule.is_point_rule and all(s.point_atoms for s in selectors)):
        raise UserError(f"{where}: a zero rule takes super-weight selectors only", "write zero:super")
    if rule.is_point_rule:
        if action not in (KEEP, ZERO):
            raise UserError(f"{where}: super belongs in a keep or zero rule", "write keep:super or zero:super")
        for sel in selectors:
            if len(sel.point_atoms) != 1 or sel.element_atoms or sel.outliers is not None:
                raise UserError(
                    f"{where}: every selector of a super-weight rule needs exactly one super part ({sel})",
                    "put other selectors in a rule of their own; & narrows, e.g. super&layer:3",
                )
        return rule
    if rule.is_outlier_rule:
        if action != KEEP:
            raise UserError(f"{where}: outliers:P% belongs in a keep rule", "write keep:outliers:0.5%")
        if len(selectors) != 1:
            raise UserError(f"{where}: an outlier rule takes one selector", "e.g. keep:outliers:1%&component:mlp")
    if rule.is_element_rule:
        if action != KEEP:
            raise UserError(
                f"{where}: head, kvhead and neurons selectors belong in a keep rule",
                "write e.g. keep:head:3.5; w4g128:*",
            )
        for sel in selectors:
            if len(sel.element_atoms) != 1 or sel.outliers is not None:
                raise UserError(
                    f"{where}: every selector of a head or neuron rule needs exactly one head, kvhead or neurons "
                    f"part ({sel} has {len(sel.element_atoms)})",
                    "put whole-tensor selectors in a rule of their own; & narrows, e.g. head:3.5&component:attn.q",
                )
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

    def __str__(self) -> str:
        return "; ".join(str(r) for r in self.rules)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "rules": [{"action": r.action, "select": [str(s) for s in r.selectors]} for r in self.rules],
        }

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

    @property
    def needs_super(self) -> bool:
        """Whether a bare ``super`` waits to be bound to the detector's coordinates (:meth:`with_super`)."""
        return any(a.kind == "super" and not a.arg for r in self.rules for s in r.selectors for a in s.atoms)

    def with_super(self, coordinates: list[tuple[int, int, int]]) -> Plan:
        """This plan with every bare ``super`` bound to ``coordinates`` (block, row, column of the MLP
        down-projection), or to ``super:none`` when there are none. Deterministic: sorted, duplicates dropped."""
        arg = ",".join(f"{layer}.{r}.{c}" for layer, r, c in sorted(set(coordinates))) or SUPER_NONE

        def bind(a: Atom) -> Atom:
            return Atom(a.kind, arg) if a.kind == "super" and not a.arg else a

        rules = tuple(
            Rule(r.action, tuple(Selector(tuple(bind(a) for a in s.atoms)) for s in r.selectors)) for r in self.rules
        )
        return Plan(rules, self.version)


# -- matching ------------------------------------------------------------------------------------------------------
def _selects(sel: Selector, p: ParamInfo, modmap: ModuleMap, where: str) -> bool:
    return all(SELECTORS.get(a.kind).matches(a.arg, p, modmap, where) for a in sel.atoms)


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
    kept_elements: int = 0  # of a quantized tensor: elements kept at full width by head / neuron rules

    @property
    def quantized(self) -> bool:
        return self.action not in (KEEP, "none")


@dataclass(frozen=True)
class ResolvedPlan:
    plan: Plan
    decisions: tuple[Decision, ...]
    _schemes: dict = field(default_factory=dict, repr=False, compare=False)
    notes: tuple[str, ...] = ()  # e.g. a super-weight rule that keeps nothing because none was found

    def assignment(self) -> dict[str, Scheme]:
        return dict(self._schemes)

    @property
    def totals(self) -> dict:
        total = sum(d.numel for d in self.decisions)
        quant = sum(d.numel for d in self.decisions if d.quantized)
        kept = sum(d.numel for d in self.decisions if d.action == KEEP)
        bits = sum(d.bits for d in self.decisions)
        qbits = sum(d.bits for d in self.decisions if d.quantized)
        partly = sum(d.kept_elements for d in self.decisions)
        extra = {"kept_elements_of_quantized_tensors": partly} if partly else {}
        return {
            "total_params": total,
            "quantized_params": quant,
            "kept_params": kept,
            "protected_fraction": kept / (kept + quant) if kept + quant else 0.0,
            "unquantized_fraction": 1 - quant / total if total else 0.0,
            "bits_per_weight": bits / total if total else 0.0,
            "bits_per_quantized_weight": qbits / quant if quant else None,
            "total_bytes": bits / 8,
            **extra,
        }

    def to_dict(self) -> dict:
        return {
            "plan": str(self.plan),
            "rules": self.plan.to_dict()["rules"],
            "totals": self.totals,
            "tensors": [
                {
                    "name": d.name,
                    "components": list(d.components),
                    "layer": d.layer,
                    "numel": d.numel,
                    "action": d.action,
                    "rule": d.rule,
                    "bytes": d.bits / 8,
                    **({"kept_elements": d.kept_elements} if d.kept_elements else {}),
                }
                for d in self.decisions
            ],
            **({"notes": list(self.notes)} if self.notes else {}),
        }


def resolve(plan: Plan, modmap: ModuleMap) -> ResolvedPlan:
    params = modmap.params
    decided: dict[str, tuple[int, str]] = {}
    for i, rule in enumerate(plan.rules):
        where = f"plan rule {i + 1} ({rule})"
        matched: list[ParamInfo] = []
        for sel in rule.selectors:
            if sel.selects_nothing:
                continue
            hits = [p for p in params if _selects(sel, p, modmap, where)]
            if not hits:
                raise UserError(
                    f"{where}: selector {str(sel)!r} matches no tensor of this model",
                    "`quant-disparity modules --model ...` shows what the model has",
                )
            matched.extend(hits)
        if rule.decides_nothing:
            continue
        new = [p for p in dict.fromkeys(matched) if p.name not in decided]
        if not new:
            first = min(decided[p.name][0] for p in matched)
            raise UserError(
                f"{where} is shadowed: every tensor it selects is already decided by rule {first + 1} "
                f"({plan.rules[first]})",
                "rules are first-match: put the more specific rule first",
            )
        for p in new:
            decided[p.name] = (i, rule.action)
    # A keep must keep something that a later rule would otherwise have quantized.
    for i, rule in enumerate(plan.rules):
        if rule.action != KEEP or rule.decides_nothing:
            continue
        mine = [p for p in params if decided.get(p.name, (None,))[0] == i]
        later = [r for r in plan.rules[i + 1 :] if r.action != KEEP]
        if not any(_selects(s, p, modmap, "") for p in mine for r in later for s in r.selectors):
            raise UserError(
                f"plan rule {i + 1} ({rule}) keeps nothing that a later rule would quantize",
                "rules are first-match: put keep rules before the rules they protect from",
            )
    outlier_rules = [(i, r) for i, r in enumerate(plan.rules) if r.is_outlier_rule]
    element_rules = [(i, r) for i, r in enumerate(plan.rules) if r.is_element_rule]
    point_rules = [(i, r) for i, r in enumerate(plan.rules) if r.is_point_rule]
    notes = [
        f"plan rule {i + 1} ({r}): the detector found no super weight, so it {r.action}s nothing"
        for i, r in point_rules
        if all(s.selects_nothing for s in r.selectors)
    ]
    used = {i for i, r in point_rules if all(s.selects_nothing for s in r.selectors)}
    schemes: dict[str, Scheme] = {}
    decisions = []
    for p in params:
        rule_i, action = decided.get(p.name, (None, "none"))
        scheme: Scheme = NONE
        if action not in (KEEP, "none"):
            scheme = parse_scheme(action)
            for j, r in outlier_rules:
                if _selects(r.selectors[0], p, modmap, ""):
                    fraction = r.selectors[0].outliers
                    assert fraction is not None  # an outlier rule's one selector
                    scheme = scheme.with_outliers(fraction)
                    used.add(j)
                    break
            for j, r in element_rules:  # every head / neuron rule adds its rows and columns
                for sel in r.selectors:
                    rows, cols = sel.elements(p, modmap, f"plan rule {j + 1} ({r})")
                    if rows or cols:
                        scheme = scheme.with_kept(rows, cols)
                        used.add(j)
        for j, r in point_rules:  # super weights: kept in quantized tensors, zeroed in any
            for sel in r.selectors:
                pts = sel.points(p, modmap, f"plan rule {j + 1} ({r})")
                if not pts or (r.action == KEEP and scheme.is_identity):
                    continue
                base = scheme if not scheme.is_identity else Reference()
                scheme = base.with_points(keep=pts) if r.action == KEEP else base.with_points(zero=pts)
                used.add(j)
        applied = action not in (KEEP, "none") or not scheme.is_identity
        if applied:
            scheme = scheme.bind(p, modmap)
            scheme.check_shape(weight_2d_shape(p), p.name)
            schemes[p.name] = scheme
        shape = weight_2d_shape(p)
        decisions.append(
            Decision(
                name=p.name,
                components=p.components,
                layer=p.layer,
                numel=p.numel,
                action=scheme.name if applied else action,
                rule=rule_i,
                bits=scheme.storage_bits(shape, p.bits),
                kept_elements=scheme.kept_elements(shape),
            )
        )
    for j, r in outlier_rules + element_rules + point_rules:
        if j not in used:
            raise UserError(
                f"plan rule {j + 1} ({r}) applies to no quantized tensor",
                "outlier, head, neuron and super-weight keep rules only act on tensors that a scheme rule quantizes",
            )
    return ResolvedPlan(plan=plan, decisions=tuple(decisions), _schemes=schemes, notes=tuple(notes))


def bind_assignment(assignment: dict[str, Scheme], modmap: ModuleMap) -> dict[str, Scheme]:
    """Each tensor's scheme as it applies to that tensor (:meth:`.backends.base.Scheme.bind`: a llama.cpp type's
    row-length fallback, a per-tensor recipe), for assignments made without a plan (``audit --scheme``)."""
    return {name: scheme.bind(modmap[name], modmap) for name, scheme in assignment.items()}


def weight_2d_shape(p: ParamInfo) -> tuple[int, int]:
    import torch

    return cast("tuple[int, int]", tuple(weight_2d(torch.empty(p.shape, device="meta"), p).shape))  # 2-D


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
