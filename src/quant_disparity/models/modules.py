"""An architecture-neutral map of a decoder model's weights.

Structure does most of the work: the decoder blocks are the ``ModuleList`` of identical modules that holds
the most parameters; norms are found by class, embeddings and the LM head through the model's own
``get_input_embeddings`` / ``get_output_embeddings``; tied tensors are found by identity. Only the last step,
naming a projection inside a block (q, k, v, o, gate, up, down), reads module names, from one small
vocabulary shared by all architectures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UserError

COMPONENTS = (
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.o",
    "attn.qkv",
    "attn.other",
    "mlp.gate",
    "mlp.up",
    "mlp.down",
    "mlp.gate_up",
    "mlp.other",
    "norm",
    "embed.token",
    "embed.pos",
    "lm_head",
    "other",
)

_ATTN_HINTS = ("attn", "attention")
_MLP_HINTS = ("mlp", "ffn", "feed_forward", "feedforward", "moe", "experts")
_ATTN_LEAVES = {
    "attn.q": {"q_proj", "query", "q", "wq", "q_lin"},
    "attn.k": {"k_proj", "key", "k", "wk", "k_lin"},
    "attn.v": {"v_proj", "value", "v", "wv", "v_lin"},
    "attn.o": {"o_proj", "out_proj", "wo", "dense", "c_proj", "out_lin", "proj", "o"},
    "attn.qkv": {"qkv_proj", "c_attn", "query_key_value", "wqkv", "qkv", "w_pack", "in_proj"},
}
_MLP_LEAVES = {
    "mlp.gate": {"gate_proj", "w1", "gate", "wg"},
    "mlp.up": {"up_proj", "w3", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "lin1", "wi", "linear_1"},
    "mlp.down": {"down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "lin2", "linear_2", "wo"},
    "mlp.gate_up": {"gate_up_proj", "w12"},
}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers.pytorch_utils.Conv1D


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


@dataclass(frozen=True)
class ParamInfo:
    """One weight tensor (tied names are merged into one entry)."""

    name: str
    module: str
    layer: int | None  # decoder block index, None outside the blocks
    components: tuple[str, ...]  # usually one; a tied embedding is ("embed.token", "lm_head")
    role: str  # matrix | bias | norm | embedding | other
    shape: tuple[int, ...]
    numel: int
    bits: int  # storage width of the reference weights
    transposed: bool = False  # Conv1D stores [in, out]
    aliases: tuple[str, ...] = ()  # other parameter names of the same tensor
    #: Where the tensor is used in the forward pass, from a probe run (:func:`execution_stages`): "block"
    #: (inside decoder block ``layer``), "before" or "after" the blocks, "during" (a module outside the
    #: blocks called while they run), or None (not seen running: assume it can change everything).
    stage: str | None = None

    @property
    def component(self) -> str:
        return self.components[0]

    @property
    def is_bias(self) -> bool:
        return self.name.rsplit(".", 1)[-1] == "bias"

    @property
    def tied(self) -> bool:
        return bool(self.aliases)


@dataclass(frozen=True)
class AttnLayout:
    """How the attention projections of every block split into heads, in the ``[out, in]`` view.

    q (and o's columns) have ``n_heads`` slices of ``head_dim``; k and v have ``n_kv_heads`` (grouped-query
    attention: query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``; multi-query: one).
    A fused qkv matrix is laid out either ``"blocks"`` ([all q | all k | all v]: GPT-2's ``c_attn``, Phi-3,
    Falcon's multi-query layout) or ``"grouped"`` (per key/value head: its query heads, then its k, then its v:
    GPT-NeoX and BLOOM, where each group is one head, and Falcon's new decoder architecture).
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    fused: str = "blocks"

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def shared_kv(self) -> bool:
        """Whether a key/value head serves more than one query head (grouped-query or multi-query)."""
        return self.group > 1

    def _span(self, start: int) -> list[int]:
        return list(range(start * self.head_dim, (start + 1) * self.head_dim))

    def rows(self, component: str, q_heads: set[int], kv_heads: set[int]) -> list[int]:
        """Rows of a q, k, v or fused qkv matrix that belong to the query heads and key/value heads given."""
        d, nh, nkv, g = self.head_dim, self.n_heads, self.n_kv_heads, self.group
        if component == "attn.q":
            return [r for h in sorted(q_heads) for r in self._span(h)]
        if component in ("attn.k", "attn.v"):
            return [r for k in sorted(kv_heads) for r in self._span(k)]
        if component != "attn.qkv":
            return []
        out: list[int] = []
        if self.fused == "blocks":
            out += [r for h in sorted(q_heads) for r in self._span(h)]
            out += [nh * d + r for k in sorted(kv_heads) for r in self._span(k)]
            out += [(nh + nkv) * d + r for k in sorted(kv_heads) for r in self._span(k)]
        else:  # grouped: [kv head k: q heads k*g .. k*g+g-1 | k | v], each head_dim rows
            for h in sorted(q_heads):
                out += [(h // g) * (g + 2) * d + r for r in self._span(h % g)]
            for k in sorted(kv_heads):
                out += [k * (g + 2) * d + r for r in self._span(g)] + [k * (g + 2) * d + r for r in self._span(g + 1)]
        return sorted(out)

    def cols(self, component: str, q_heads: set[int]) -> list[int]:
        """Columns of the output projection that read the query heads given."""
        return [c for h in sorted(q_heads) for c in self._span(h)] if component == "attn.o" else []


#: Fused qkv layouts known per ``model_type`` (see :class:`AttnLayout`); Falcon is decided by its config.
_FUSED_LAYOUT = {"gpt2": "blocks", "phi3": "blocks", "gpt_neox": "grouped", "bloom": "grouped"}


def attention_layout(model: nn.Module, entries: list[ParamInfo]) -> tuple[AttnLayout | None, str]:
    """The head layout of ``model``'s attention from its config, checked against every block's tensor shapes;
    (None, why) when its heads cannot be separated."""
    config = getattr(model, "config", None)
    if config is None:
        return None, f"{type(model).__name__} has no config giving its number of attention heads"
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(cfg, "model_type", type(model).__name__)
    n_heads = getattr(cfg, "num_attention_heads", None)
    if not isinstance(n_heads, int) or n_heads < 1:
        return None, f"the {kind} config names no number of attention heads"
    if kind == "falcon":
        new = bool(getattr(cfg, "new_decoder_architecture", False))
        n_kv = int(cfg.num_kv_heads) if new else 1 if getattr(cfg, "multi_query", False) else n_heads
    else:
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    if n_heads % n_kv:
        return None, f"{kind}: {n_heads} query heads do not split into {n_kv} key/value groups"
    fused = "grouped" if kind == "falcon" and getattr(cfg, "new_decoder_architecture", False) else "blocks"
    fused = _FUSED_LAYOUT.get(kind, fused)
    layout = AttnLayout(n_heads, n_kv, head_dim, fused)
    want = {
        "attn.q": (n_heads * head_dim, None),
        "attn.k": (n_kv * head_dim, None),
        "attn.v": (n_kv * head_dim, None),
        "attn.qkv": ((n_heads + 2 * n_kv) * head_dim, None),
        "attn.o": (None, n_heads * head_dim),
    }
    for p in entries:
        if p.role != "matrix" or p.layer is None or p.component not in want:
            continue
        if p.component == "attn.qkv" and kind not in _FUSED_LAYOUT and kind != "falcon":
            return None, f"{kind}: the layout of its fused qkv projection ({p.name}) is not known"
        out_f, in_f = p.shape[::-1] if p.transposed else p.shape[:2]
        rows, cols = want[p.component]
        if (rows is not None and out_f != rows) or (cols is not None and in_f != cols):
            return None, (
                f"{kind}: {p.name} has shape [{out_f}, {in_f}], not what {n_heads} query / {n_kv} key-value heads "
                f"of dimension {head_dim} give"
            )
    if not any(p.component.startswith("attn.") and p.layer is not None for p in entries):
        return None, f"{kind}: no attention projections recognised in the blocks"
    return layout, ""


_NEURON_ROWS = ("mlp.gate", "mlp.up", "mlp.gate_up")


def mlp_width(modmap: ModuleMap, layer: int) -> int | None:
    """The MLP intermediate size of a block: the columns of its down projection (None without one)."""
    for p in modmap.params:
        if p.layer == layer and p.role == "matrix" and p.component == "mlp.down":
            return p.shape[0] if p.transposed else p.shape[1]
    return None


def neuron_elements(p: ParamInfo, channels: list[int], width: int) -> tuple[list[int], list[int]]:
    """Rows and columns of ``p``'s ``[out, in]`` view that belong to the MLP channels given: rows of gate/up
    (both halves of a fused gate_up), columns of down."""
    if p.role != "matrix":
        return [], []
    if p.component in ("mlp.gate", "mlp.up"):
        return list(channels), []
    if p.component == "mlp.gate_up":
        return [*channels, *(width + c for c in channels)], []
    if p.component == "mlp.down":
        return [], list(channels)
    return [], []


def head_elements(
    p: ParamInfo, layout: AttnLayout, q_heads: set[int], kv_heads: set[int]
) -> tuple[list[int], list[int]]:
    """Rows and columns of ``p``'s ``[out, in]`` view that belong to the heads given (see :class:`AttnLayout`)."""
    if p.role != "matrix":
        return [], []
    return layout.rows(p.component, q_heads, kv_heads), layout.cols(p.component, q_heads)


@dataclass(frozen=True)
class ModuleMap:
    blocks_path: str
    n_layers: int
    params: tuple[ParamInfo, ...]
    notes: tuple[str, ...] = field(default=())
    attention: AttnLayout | None = None  # how attention splits into heads; None: see attention_note
    attention_note: str = ""
    if TYPE_CHECKING:  # set in __post_init__; at run time not a dataclass field
        _by_name: dict[str, ParamInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})

    def __getitem__(self, name: str) -> ParamInfo:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def total_params(self) -> int:
        return sum(p.numel for p in self.params)

    def default_targets(self) -> list[str]:
        """Every Linear weight matrix inside the decoder blocks (embeddings, LM head, norms, biases kept)."""
        return [p.name for p in self.params if p.role == "matrix" and p.layer is not None]

    def summary(self) -> dict:
        by_comp: dict[str, int] = {}
        for p in self.params:
            key = "+".join(p.components)
            by_comp[key] = by_comp.get(key, 0) + p.numel
        return {
            "blocks": self.blocks_path,
            "n_layers": self.n_layers,
            "total_params": self.total_params,
            "params_by_component": by_comp,
            "tied": [f"{p.name} = {', '.join(p.aliases)}" for p in self.params if p.tied],
            "notes": list(self.notes),
        }


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best, best_n = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            types = {type(m) for m in module}
            if len(types) != 1:
                continue
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = (name, module), n
    if best is None:
        top = ", ".join(f"{n} ({type(m).__name__})" for n, m in model.named_children())
        raise UserError(
            f"cannot find the decoder blocks of {type(model).__name__}: no list of identical layers; found {top}",
            "quant-disparity supports decoder-only models whose layers sit in a ModuleList",
        )
    return best


def _classify_linear(rel: str, module: nn.Linear) -> str:
    parts = rel.split(".")
    leaf, containers = parts[-1].lower(), [p.lower() for p in parts[:-1] if not p.isdigit()]
    in_attn = any(h in c for c in containers for h in _ATTN_HINTS)
    in_mlp = any(h in c for c in containers for h in _MLP_HINTS)
    tables = [_ATTN_LEAVES] if in_attn else [_MLP_LEAVES] if in_mlp else [_MLP_LEAVES, _ATTN_LEAVES]
    if in_attn and in_mlp:  # e.g. an MLP inside an attention wrapper: trust the innermost container
        inner = next(c for c in reversed(containers) if any(h in c for h in _ATTN_HINTS + _MLP_HINTS))
        tables = [_ATTN_LEAVES] if any(h in inner for h in _ATTN_HINTS) else [_MLP_LEAVES]
    for table in tables:
        for comp, leaves in table.items():
            if leaf in leaves:
                return comp
    if in_attn:
        return "attn.other"
    if in_mlp:
        return "mlp.other"
    return "other"


#: Length of the probe forward pass of :func:`execution_stages`: any few tokens run every module once.
PROBE_TOKENS = 4


def execution_stages(model: nn.Module, blocks: nn.ModuleList, modules: dict[str, nn.Module]) -> dict[str, str] | None:
    """For each module in ``modules`` (name -> module, outside the blocks), whether the model's forward runs it
    "before" the first block, "after" the last one or "during" the blocks, from one probe forward pass.

    Names say nothing reliable about this (BLOOM's ``word_embeddings_layernorm`` is a norm outside the blocks
    that runs *before* them). A tied tensor belongs to every stage its modules run in; the caller takes the
    earliest. Returns None when the model cannot run a probe (weights on the meta device, an unusual forward).
    """
    params = list(model.parameters())
    if not params or any(p.is_meta for p in params):
        return None
    clock = iter(range(1 << 62))
    first_call: dict[str, int] = {}
    span: dict[str, int] = {}
    hooks = []

    def on_call(name):
        def hook(module, args):
            first_call.setdefault(name, next(clock))

        return hook

    def on_block_start(module, args):
        span.setdefault("start", next(clock))

    def on_block_end(module, args, output):
        span["end"] = next(clock)

    try:
        for name, module in modules.items():
            hooks.append(module.register_forward_pre_hook(on_call(name)))
        hooks.append(blocks[0].register_forward_pre_hook(on_block_start))
        hooks.append(blocks[-1].register_forward_hook(on_block_end))
        vocab = model.get_input_embeddings().weight.shape[0]  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
        ids = (torch.arange(PROBE_TOKENS) % vocab).reshape(1, PROBE_TOKENS).to(params[0].device)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    if "start" not in span or "end" not in span:
        return None
    return {
        name: "before" if t < span["start"] else "after" if t > span["end"] else "during"
        for name, t in first_call.items()
    }


def build_module_map(model: nn.Module, stages: dict[str, str] | None = None) -> ModuleMap:
    """Classify every weight of ``model``; raises :class:`UserError` when no blocks or projections are found.

    ``stages``: the execution stage of each module outside the blocks, when the caller probed it on another
    instance of the same architecture (a model on the meta device cannot run a probe itself)."""
    blocks_path, blocks = _find_blocks(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
    module_of = _owning_modules(model)
    outside = {mname: module for name, (mname, module) in module_of.items() if not _in_blocks(mname, blocks_path)}
    if stages is None:
        stages = execution_stages(model, blocks, outside)
    notes = []
    if stages is None:
        notes.append(
            "execution order of the modules outside the blocks unknown (probe failed): each is assumed "
            "to change every block's output, and norm.final matches nothing"
        )
    entries = []
    for names, t in _tensors(model):
        entry = _param_info(names, t, module_of, blocks_path, emb, head, stages)
        entries.append(entry)
        if len(entry.components) > 1:
            notes.append(f"{entry.name} is tied to {', '.join(entry.aliases)}: protecting one protects both")
    _check_projections(entries, blocks, blocks_path)
    layout, why = attention_layout(model, entries)
    return ModuleMap(
        blocks_path=blocks_path,
        n_layers=len(blocks),
        params=tuple(entries),
        notes=tuple(notes),
        attention=layout,
        attention_note=why,
    )


def _in_blocks(mname: str, blocks_path: str) -> bool:
    return mname == blocks_path or mname.startswith(blocks_path + ".")


def _owning_modules(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Parameter name -> (name of the module holding it, that module)."""
    module_of = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            module_of[f"{mname}.{pname}" if mname else pname] = (mname, module)
    return module_of


def _tensors(model: nn.Module) -> list[tuple[list[str], torch.Tensor]]:
    """Every distinct weight tensor with all its parameter names (tied weights share one tensor)."""
    groups: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        tensors[id(p)] = p
    return [(names, tensors[key]) for key, names in groups.items()]


_STAGE_RANK = {"before": 0, "during": 1, "after": 2}


def _param_info(names: list[str], t: torch.Tensor, module_of, blocks_path: str, emb, head, stages) -> ParamInfo:
    """One tensor's entry: its component under each of its names, role, layer and execution stage."""
    comps: list[str] = []
    role = "other"
    layer = None
    transposed = False
    for name in names:
        mname, module = module_of[name]
        attr = name.rsplit(".", 1)[-1]
        if _in_blocks(mname, blocks_path):
            rest = mname[len(blocks_path) + 1 :]
            layer = int(rest.split(".")[0]) if rest else None
            rel = rest.split(".", 1)[1] if "." in rest else ""
        else:
            rel = None
        if emb is not None and module is emb:
            comps.append("embed.token")
            role = "embedding"
        elif head is not None and module is head:
            comps.append("lm_head")
            role = "embedding" if role == "embedding" else ("matrix" if attr == "weight" else "bias")
        elif _is_norm(module):
            comps.append("norm")
            role = "norm"
        elif isinstance(module, nn.Embedding):
            comps.append("embed.pos" if rel is None else "other")
            role = "embedding"
        elif _is_linear(module):
            comps.append(_classify_linear(rel, module) if rel is not None else "other")
            role = "matrix" if attr == "weight" else "bias"
            transposed = _is_conv1d(module) and attr == "weight"
        else:
            comps.append("other")
            role = "bias" if attr == "bias" else "other"
    comps = list(dict.fromkeys(comps))
    primary = names[0]
    if "embed.token" in comps:  # the embedding's own name first, the head as an alias
        primary = next(n for n in names if module_of[n][1] is emb)
    stage: str | None
    if layer is not None:
        stage = "block"
    else:
        seen = [stages[module_of[n][0]] for n in names if stages and module_of[n][0] in stages]
        stage = min(seen, key=_STAGE_RANK.__getitem__) if seen else None
    return ParamInfo(
        name=primary,
        module=module_of[primary][0],
        layer=layer,
        components=tuple(comps),
        role=role,
        shape=tuple(t.shape),
        numel=t.numel(),
        bits=torch.finfo(t.dtype).bits if t.dtype.is_floating_point else torch.iinfo(t.dtype).bits,
        transposed=transposed,
        aliases=tuple(n for n in names if n != primary),
        stage=stage,
    )


def _check_projections(entries: list[ParamInfo], blocks: nn.ModuleList, blocks_path: str) -> None:
    in_blocks = [e for e in entries if e.role == "matrix" and e.layer is not None]
    if not in_blocks or not any(e.component.startswith(("attn.", "mlp.")) for e in in_blocks):
        found = sorted({type(m).__name__ for m in blocks[0].modules()})
        raise UserError(
            f"no attention or MLP projections recognised in the blocks at {blocks_path!r}; module types found: "
            f"{', '.join(found)}",
            "this architecture is not supported yet; please report it",
        )


def weight_2d(t: torch.Tensor, info: ParamInfo) -> torch.Tensor:
    """The ``[out, in]`` view that quantizers group along (Conv1D transposed, vectors as one row)."""
    if info.transposed:
        return t.t()
    if t.dim() == 1:
        return t.reshape(1, -1)
    if t.dim() > 2:
        return t.reshape(t.shape[0], -1)
    return t


def from_2d(w2d: torch.Tensor, info: ParamInfo) -> torch.Tensor:
    """Inverse of :func:`weight_2d`, contiguous in the parameter's own layout."""
    if info.transposed:
        return w2d.t().contiguous()
    return w2d.reshape(info.shape).contiguous()
