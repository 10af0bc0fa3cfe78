"""What every export target gets: a plan resolved once on a model (:class:`ResolvedExport`), and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UserError
from ..models.modules import ModuleMap, _is_linear
from ..quant.backends.rtn import RTN
from ..quant.plan import Plan
from ..quant.schemes import Scheme
from ..registry import Registry


@dataclass(frozen=True)
class TensorDecision:
    """One weight tensor (tied names merged) and what the plan does with it."""

    name: str  # parameter name
    aliases: tuple[str, ...]
    module: str
    role: str  # matrix | bias | norm | embedding | other
    layer: int | None
    bits: int  # storage width of the reference weights
    action: str  # "keep", "none" (no rule decides it) or the scheme name
    scheme: Scheme | None  # the scheme when quantized

    @property
    def quantized(self) -> bool:
        return self.scheme is not None


@dataclass(frozen=True)
class ModuleDecision:
    """A Linear (or GPT-2 Conv1D) module: what the plan does with its weight."""

    name: str
    layer: int | None
    weight: str  # the weight's parameter name in the module map (the embedding's, for a tied head)
    scheme: Scheme | None  # None: kept, or no rule decides it


@dataclass(frozen=True)
class ResolvedExport:
    plan: Plan
    model_type: str
    n_layers: int
    blocks_path: str
    tensors: tuple[TensorDecision, ...]
    modules: tuple[ModuleDecision, ...]

    def quantized_modules(self) -> list[ModuleDecision]:
        return [m for m in self.modules if m.scheme is not None]

    def unquantized_modules(self) -> list[ModuleDecision]:
        return [m for m in self.modules if m.scheme is None]


def resolve_export(plan: Plan, model: nn.Module, modmap: ModuleMap) -> ResolvedExport:
    """Resolve ``plan`` on ``model`` once: each tensor's decision, and each Linear module's."""
    resolved = plan.resolve(modmap)
    schemes = resolved.assignment()
    tensors = []
    by_param: dict[str, TensorDecision] = {}
    for d in resolved.decisions:
        p = modmap[d.name]
        t = TensorDecision(
            name=p.name,
            aliases=p.aliases,
            module=p.module,
            role=p.role,
            layer=p.layer,
            bits=p.bits,
            action=d.action,
            scheme=schemes.get(p.name),
        )
        tensors.append(t)
        for name in (p.name, *p.aliases):
            by_param[name] = t
    modules = []
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        w = by_param.get(f"{name}.weight")
        if w is not None:
            modules.append(ModuleDecision(name=name, layer=w.layer, weight=w.name, scheme=w.scheme))
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "") or "")
    return ResolvedExport(plan, model_type, modmap.n_layers, modmap.blocks_path, tuple(tensors), tuple(modules))


# -- helpers the targets share -------------------------------------------------------------------------------------
def cannot(target: str, scheme: Scheme | str, why: str, fix: str | None = None) -> UserError:
    return UserError(f"export --to {target}: scheme {str(scheme)!r} cannot be expressed ({why})", fix)


def only_linear(target: str, resolved: ResolvedExport) -> None:
    """Refuse a plan that quantizes a tensor that is not a Linear module's weight (a module-level target)."""
    linear = {m.weight for m in resolved.modules}
    for t in resolved.tensors:
        if t.quantized and t.name not in linear:
            assert t.scheme is not None
            raise UserError(
                f"export --to {target}: scheme {t.scheme.name!r} on {t.name} ({t.role}) cannot be expressed "
                "(it quantizes the weights of Linear modules only)",
                "keep that tensor in the plan, or export with --to llamacpp",
            )


def rtn(target: str, scheme: Scheme, fix: str | None = None) -> RTN:
    """The scheme as integer round-to-nearest, or the error saying the target cannot express it."""
    if scheme.outliers:
        raise cannot(target, scheme, "kept float16 outliers have no equivalent there", fix)
    if scheme.partial or scheme.keep_points or scheme.zero_points:
        raise cannot(
            target,
            scheme,
            "kept rows, columns or single elements of a tensor (heads, neurons, super weights) have no equivalent "
            "there",
            fix,
        )
    if not isinstance(scheme, RTN):
        raise cannot(target, scheme, "the target quantizes to integers with scales (wBgG, wB-channel ...)", fix)
    return scheme


def most_common(schemes: list[Scheme]) -> Scheme:
    counts: dict[str, int] = {}
    for s in schemes:
        counts[s.name] = counts.get(s.name, 0) + 1
    best = max(counts, key=lambda n: counts[n])  # first of the most frequent, in model order
    return next(s for s in schemes if s.name == best)


@dataclass(frozen=True)
class ExportTarget:
    """A registry entry: ``render`` turns a resolved plan into the target's text (a :class:`UserError` for a
    scheme it cannot express); ``suffix`` is the usual file extension of that text."""

    name: str
    help: str
    suffix: str
    render: Callable[[ResolvedExport], str]


TARGETS: Registry[ExportTarget] = Registry("export target", ExportTarget, group="quant_disparity.export_targets")
