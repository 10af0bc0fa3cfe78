"""A pre-quantized artifact, read as the quantized arm of an audit against its reference model.

Formats (:func:`classify_artifact` tells them apart without loading anything):

* ``gguf``: a GGUF file of any tensor type, K-quants included. It is dequantized by the same path as a GGUF
  model (:func:`~quant_disparity.models.loading.materialize_gguf`: transformers and the ``gguf`` package, cached
  by the file's sha256), so its tensors carry the reference's names and layout; its tokenizer is the one its
  metadata holds. Bits per tensor: ``gguf.GGML_QUANT_SIZES`` of the tensor's stored type.
* ``hf``: a plain Hugging Face directory (safetensors, any dtype). Bits: the stored dtype's width.
* ``gptq`` / ``awq``: a checkpoint whose ``config.json`` names ``quant_method`` gptq or awq, with int32-packed
  ``qweight`` / ``qzeros``, ``scales`` (and GPTQ's ``g_idx``), unpacked by :func:`dequantize_packed`.
* ``compressed-tensors``: decompressed by the compressed-tensors library (the ``export`` extra).

For packed formats a tensor's bits are the bytes of everything stored for it (``qweight``, ``qzeros``,
``scales``, ``g_idx``; ``weight_packed``, ``weight_scale``, ...), its bias excepted (a parameter of its own).

The artifact must fit the reference: the same tokenizer (every token id of the model's vocabulary names the same
token, and the same BOS/EOS/padding ids) and the same architecture (every parameter of the reference present,
with its shape). Every tensor whose dequantized value differs from the reference's enters the quantized arm,
as an :class:`~quant_disparity.quant.backends.artifact.ArtifactTensor` (one engine, one cost function).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from .._io import sha256_file
from ..errors import UserError
from ..quant.backends.artifact import ArtifactTensor
from ..quant.backends.base import Scheme
from .loading import _dir_digest, _log_default, materialize_gguf, prefix_token_of, read_sidecar, verify_sha256
from .modules import ModuleMap, ParamInfo, weight_2d

if TYPE_CHECKING:
    from .loading import LoadedModel

FORMATS = ("gguf", "hf", "gptq", "awq", "compressed-tensors")
GGUF_MAGIC = b"GGUF"
_PACKED = {"gptq": "gptq", "awq": "awq", "compressed-tensors": "compressed-tensors"}
#: safetensors dtype -> bits per element
_DTYPE_BITS = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8,
    "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8, "BOOL": 8,
}  # fmt: skip
#: AutoAWQ's GEMM packing puts output column ``AWQ_ORDER[j]`` of each group of 8 into nibble ``j``.
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_FIX_TOKENIZER = "an artifact must be a quantization of --model itself (the same tokenizer)"


@dataclass(frozen=True)
class ArtifactSource:
    path: str
    format: str  # one of FORMATS
    quant_config: dict = field(default_factory=dict)  # config.json's quantization_config (directories)


def classify_artifact(spec: str) -> ArtifactSource:
    """The artifact's format, from its first bytes or its config.json; a one-line UserError for anything that
    is not a model (nothing is loaded)."""
    path = Path(spec).expanduser()
    fix = "give a .gguf file or a model directory (config.json and safetensors files)"
    if not path.exists():
        raise UserError(f"artifact {spec!r} not found", fix)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise UserError(f"cannot read artifact {spec!r} ({e.strerror})") from None
        if magic != GGUF_MAGIC:
            raise UserError(f"artifact {spec!r} is not a model (not a GGUF file)", fix)
        return ArtifactSource(str(path), "gguf")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"artifact {spec!r} is a directory without config.json", fix)
    try:
        cfg = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        raise UserError(f"artifact {spec!r}: config.json is not readable JSON", fix) from None
    if not isinstance(cfg, dict):
        raise UserError(f"artifact {spec!r}: config.json must hold a JSON object", fix)
    if not any(path.glob("*.safetensors")):
        raise UserError(f"artifact {spec!r} holds no .safetensors files", "save it with safe_serialization=True")
    qc = cfg.get("quantization_config") or {}
    method = str(qc.get("quant_method", "")).lower() if isinstance(qc, dict) else ""
    if not method:
        return ArtifactSource(str(path), "hf")
    if method not in _PACKED:
        raise UserError(
            f"artifact {spec!r}: quantization method {method!r} is not supported",
            "supported: GGUF files, plain Hugging Face directories, gptq, awq and compressed-tensors checkpoints",
        )
    return ArtifactSource(str(path), _PACKED[method], dict(qc))


@dataclass
class Artifact:
    """An artifact read against a reference: how it stores each of the reference's parameters, and the
    dequantized values of those that differ from the reference."""

    path: str
    format: str
    digest: str
    stored: dict[str, str]  # reference parameter -> stored type
    bits: dict[str, float]  # reference parameter -> bits the artifact spends on it
    differing: dict[str, torch.Tensor]  # reference parameter -> dequantized value (its own shape and dtype)
    extra: list[str]  # artifact tensors that are no parameter of the reference

    def schemes(self, modmap: ModuleMap) -> dict[str, Scheme]:
        """Every reference parameter as the artifact stores it (values only for those that differ)."""
        out: dict[str, Scheme] = {}
        for p in modmap.params:
            v = self.differing.get(p.name)
            out[p.name] = ArtifactTensor(
                digest=self.digest,
                stored=self.stored[p.name],
                bits=self.bits[p.name],
                values=None if v is None else weight_2d(v, p),
            )
        return out

    def assignment(self, modmap: ModuleMap) -> dict[str, Scheme]:
        """What the engine puts into the model: the tensors that differ from the reference."""
        return {n: s for n, s in self.schemes(modmap).items() if n in self.differing}

    def summary(self, modmap: ModuleMap) -> dict:
        """What differs from the reference and how, in words a reader can check."""
        types: dict[str, dict] = {}
        for p in modmap.params:
            t = types.setdefault(self.stored[p.name], {"tensors": 0, "params": 0})
            t["tensors"] += 1
            t["params"] += p.numel
        by_role: dict[str, dict] = {}
        for p in modmap.params:
            key = "+".join(p.components)
            r = by_role.setdefault(key, {"tensors": 0, "differing": 0, "stored": {}})
            r["tensors"] += 1
            r["differing"] += p.name in self.differing
            r["stored"][self.stored[p.name]] = r["stored"].get(self.stored[p.name], 0) + 1
        return {
            "path": self.path,
            "format": self.format,
            "sha256": self.digest,
            "tensor_types": types,
            "differing_tensors": len(self.differing),
            "equal_tensors": len(modmap.params) - len(self.differing),
            "differing_params": sum(modmap[n].numel for n in self.differing),
            "by_component": by_role,
            "not_in_reference": self.extra,
        }


# -- checks before anything is loaded --------------------------------------------------------------------------


def check_artifact(spec: str, model: str, log: Callable[[str], None] = _log_default) -> ArtifactSource:
    """What can be checked before the reference's weights or the artifact's are loaded: a model file, the
    reference's tokenizer, and every tensor of the reference present with as many elements (a packed tensor's
    shape is checked when it is unpacked). A one-line :class:`UserError` otherwise."""
    from .loading import load_tokenizer, resolve_source

    src = classify_artifact(spec)
    if src.format == "compressed-tensors":
        _ct_dequantizer()
    ref_src = resolve_source(model, log)
    meta = cast("Any", _meta_model(ref_src.path))
    if src.format == "gguf":
        sizes: dict[str, int | None] = {k: v[2] for k, v in _gguf_types(Path(src.path), meta).items()}
    else:
        sizes = _dir_sizes(Path(src.path))
    emb = meta.get_input_embeddings()
    n_vocab = int(emb.weight.shape[0]) if emb is not None else 0
    check_tokenizer(load_tokenizer(ref_src), _artifact_tokenizer(src, spec), n_vocab, spec)
    missing, other = [], []
    params = list(meta.named_parameters())
    for name, p in params:
        if name not in sizes:
            missing.append(name)
        elif sizes[name] is not None and sizes[name] != p.numel():
            other.append(name)
    fix = "an artifact must be a quantization of --model itself (the same architecture)"
    if missing:
        raise UserError(
            f"artifact {spec!r} has a different architecture: {len(missing)} of the reference's {len(params)} "
            f"tensors are missing (first: {missing[0]})",
            fix,
        )
    if other:
        raise UserError(
            f"artifact {spec!r} has a different architecture: {len(other)} tensors have another shape "
            f"(first: {other[0]})",
            fix,
        )
    return src


def _meta_model(path: str) -> torch.nn.Module:
    """The reference's architecture on the meta device (no weights): its parameter names and shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _dir_sizes(directory: Path) -> dict[str, int | None]:
    """Tensor -> elements, from the safetensors headers; a packed weight (GPTQ/AWQ ``qweight``,
    compressed-tensors ``weight_packed``) as ``<module>.weight`` -> None."""
    from safetensors import SafetensorError, safe_open

    sizes: dict[str, int | None] = {}
    for f in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    sizes[k] = math.prod(st.get_slice(k).get_shape())
        except (SafetensorError, OSError) as e:
            raise UserError(f"artifact {directory}: cannot read {f.name} ({e})", "is the file complete?") from None
    for k in list(sizes):
        for packed in (".qweight", ".weight_packed"):
            if k.endswith(packed):
                sizes[k.removesuffix(packed) + ".weight"] = None
    return sizes


# -- reading -----------------------------------------------------------------------------------------------


def open_artifact(spec: str, lm: LoadedModel, modmap: ModuleMap, log: Callable[[str], None] = _log_default) -> Artifact:
    """Read ``spec`` against the reference ``lm``: every tensor dequantized, each of the reference's present with
    its shape (a one-line :class:`UserError` otherwise). :func:`check_artifact` has checked the rest before."""
    src = classify_artifact(spec)
    path = Path(src.path)
    kinds: dict[str, tuple[str, float]] = {}  # artifact tensor -> (stored type, bits), where not its dtype
    if src.format == "gguf":
        expected = read_sidecar(path)
        if expected is not None:
            digest = verify_sha256(path, expected, f"artifact {spec!r}", f"the file differs from {path.name}.sha256")
        else:
            digest = sha256_file(path)
        kinds = {k: v[:2] for k, v in _gguf_types(path, lm.model).items()}
        ckpt = materialize_gguf(path, digest, log)
        tensors, dtypes = _read_safetensors(ckpt)
    else:
        digest = _dir_digest(path)
        tensors, dtypes = _read_safetensors(path)
        if src.format in ("gptq", "awq", "compressed-tensors"):
            tensors, kinds = _dequantize_dir(src, tensors, dtypes)
    params = _check_architecture(modmap, tensors, spec)
    differing: dict[str, torch.Tensor] = {}
    stored: dict[str, str] = {}
    bits: dict[str, float] = {}
    for p in modmap.params:
        key = params[p.name]
        ref = lm.model.get_parameter(p.name).data
        value = tensors[key].to(dtype=ref.dtype, device=ref.device)
        if not torch.equal(value, ref):
            differing[p.name] = value
        if key in kinds:
            stored[p.name], bits[p.name] = kinds[key]
        elif key in dtypes:
            stored[p.name], bits[p.name] = dtypes[key].lower(), float(p.numel * _DTYPE_BITS.get(dtypes[key], 32))
        else:  # pragma: no cover - every tensor read has a dtype or a packed kind
            stored[p.name], bits[p.name] = "unknown", float(p.numel * p.bits)
    used = set(params.values())
    extra = sorted(k for k in tensors if k not in used and not _is_alias(modmap, k))
    return Artifact(str(path.resolve()), src.format, digest, stored, bits, differing, extra)


def _is_alias(modmap: ModuleMap, name: str) -> bool:
    return any(name in p.aliases for p in modmap.params)


def _read_safetensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for f in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    tensors[k] = st.get_tensor(k)
                    dtypes[k] = st.get_slice(k).get_dtype()
        except (SafetensorError, OSError) as e:
            raise UserError(f"artifact {directory}: cannot read {f.name} ({e})", "is the file complete?") from None
    return tensors, dtypes


def _artifact_tokenizer(src: ArtifactSource, spec: str):
    from transformers import AutoTokenizer

    path = Path(src.path)
    try:
        if src.format == "gguf":  # the tokenizer the file's metadata holds
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"artifact {spec!r} has no readable tokenizer ({first[:120]})", _FIX_TOKENIZER) from None


def check_tokenizer(ref, tokenizer, n: int, spec: str) -> None:
    """The artifact's tokenizer must give every id below ``n`` (the model's vocabulary) the reference's token,
    and the same BOS, EOS, padding and prepended token; a one-line UserError otherwise."""
    ref_ids = {i: t for t, i in cast("Mapping[str, int]", ref.get_vocab()).items() if i < n}  # type: ignore[attr-defined]
    art_ids = {i: t for t, i in tokenizer.get_vocab().items() if i < n}
    bad = sorted(i for i in set(ref_ids) | set(art_ids) if ref_ids.get(i) != art_ids.get(i))
    if bad:
        i = bad[0]
        raise UserError(
            f"artifact {spec!r} has a different tokenizer: {len(bad)} of {n} token ids differ "
            f"(id {i}: {ref_ids.get(i)!r} in the reference, {art_ids.get(i)!r} in the artifact)",
            _FIX_TOKENIZER,
        )
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        a, b = getattr(ref, attr, None), getattr(tokenizer, attr, None)
        if a is not None and b is not None and a != b:
            raise UserError(
                f"artifact {spec!r} has a different tokenizer: {attr} {b}, the reference's {a}", _FIX_TOKENIZER
            )
    a, b = prefix_token_of(ref), prefix_token_of(tokenizer)
    if a != b:
        raise UserError(
            f"artifact {spec!r} has a different tokenizer: it prepends token {b}, the reference {a}", _FIX_TOKENIZER
        )


def _check_architecture(modmap: ModuleMap, tensors: Mapping[str, torch.Tensor], spec: str) -> dict[str, str]:
    """Reference parameter -> the artifact's tensor name (its own name or a tied alias); every parameter present
    with its shape, else a one-line UserError naming the first missing or reshaped one and how many."""
    found: dict[str, str] = {}
    missing: list[str] = []
    reshaped: list[tuple[ParamInfo, tuple[int, ...]]] = []
    for p in modmap.params:
        key = next((k for k in (p.name, *p.aliases) if k in tensors), None)
        if key is None:
            missing.append(p.name)
        elif tuple(tensors[key].shape) != tuple(p.shape):
            reshaped.append((p, tuple(tensors[key].shape)))
        else:
            found[p.name] = key
    fix = "an artifact must be a quantization of --model itself (the same architecture)"
    if missing:
        raise UserError(
            f"artifact {spec!r} has a different architecture: {len(missing)} of the reference's "
            f"{len(modmap.params)} tensors are missing (first: {missing[0]})",
            fix,
        )
    if reshaped:
        p, shape = reshaped[0]
        raise UserError(
            f"artifact {spec!r} has a different architecture: {len(reshaped)} tensors have another shape "
            f"(first: {p.name} is {list(shape)}, the reference's {list(p.shape)})",
            fix,
        )
    return found


# -- GGUF ----------------------------------------------------------------------------------------------------


def _gguf_types(path: Path, model: torch.nn.Module) -> dict[str, tuple[str, float, int]]:
    """Parameter name of ``model`` (the reference's architecture, on any device) -> (stored type, bits,
    elements) for every tensor of the GGUF (its own name where none maps); a file the gguf package cannot read
    is a UserError."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise UserError(f"artifact {str(path)!r} is not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch_field = reader.fields.get("general.architecture")
    arch = str(bytes(arch_field.parts[-1]), "utf-8") if arch_field is not None else ""
    cfg = cast("Any", model).config.to_dict()
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=cfg)
    try:
        names = get_gguf_hf_weights_map(model, processor)
    except NotImplementedError:
        names = {}
    out: dict[str, tuple[str, float, int]] = {}
    for t in reader.tensors:
        block, type_size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        numel = math.prod(int(x) for x in t.shape)
        out[names.get(t.name, t.name)] = (t.tensor_type.name.lower(), float(numel // block * type_size * 8), numel)
    return out


# -- packed checkpoints --------------------------------------------------------------------------------------


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The integers packed ``32 // bits`` to an int32 word along ``dim`` (0 or 1), lowest bits first: a
    ``[r, c]`` tensor gives ``[r * 32 // bits, c]`` (dim 0) or ``[r, c * 32 // bits]`` (dim 1)."""
    if 32 % bits:
        raise UserError(f"{bits}-bit packing across int32 words is not supported", "2-, 4- and 8-bit are")
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    p = packed.to(torch.int32)
    if dim == 0:
        v = (p.unsqueeze(1) >> shifts.view(1, per, 1)) & (2**bits - 1)  # [r, per, c]
        return v.reshape(p.shape[0] * per, p.shape[1])
    v = (p.unsqueeze(2) >> shifts.view(1, 1, per)) & (2**bits - 1)  # [r, c, per]
    return v.reshape(p.shape[0], p.shape[1] * per)


def dequantize_packed(
    fmt: str,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    g_idx: torch.Tensor | None = None,
    zero_offset: int = 1,
) -> torch.Tensor:
    """The ``[out, in]`` float32 weight of a GPTQ or AWQ (GEMM) packed linear layer.

    GPTQ: ``qweight`` ``[in * bits / 32, out]`` packed along the input dimension, ``qzeros``
    ``[groups, out * bits / 32]`` packed along the output dimension (stored minus ``zero_offset``: 1 in the
    original "gptq" checkpoint format, 0 in "gptq_v2"), ``scales`` ``[groups, out]``, ``g_idx`` the group of each
    input index (default ``i // group_size``). AWQ: ``qweight`` ``[in, out * bits / 32]`` and ``qzeros`` packed
    along the output dimension in AutoAWQ's interleaved order (:data:`AWQ_REVERSE_ORDER` undoes it), zeros
    stored as they are. ``w[o, i] = scales[g(i), o] * (q[i, o] - zero[g(i), o])``.
    """
    if fmt == "gptq":
        q = unpack_int32(qweight, bits, 0)
        z = unpack_int32(qzeros, bits, 1) + zero_offset
    elif fmt == "awq":
        q = unpack_int32(qweight, bits, 1)
        z = unpack_int32(qzeros, bits, 1)
        per = 32 // bits
        order = torch.arange(q.shape[1]).view(-1, per)[:, list(AWQ_REVERSE_ORDER[:per])].reshape(-1)
        q, z = q[:, order], z[:, order]
    else:  # pragma: no cover - the caller passes gptq or awq
        raise AssertionError(fmt)
    n_in, n_out = q.shape
    z, s = z[:, :n_out], scales[:, :n_out].float()
    if g_idx is None:
        g_idx = torch.arange(n_in) // (group_size if group_size > 0 else n_in)
    g = g_idx.long()
    return (s[g] * (q - z[g]).float()).t().contiguous()


def _dequantize_dir(
    src: ArtifactSource, tensors: dict[str, torch.Tensor], dtypes: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, float]]]:
    """The checkpoint's tensors with every packed weight as ``<module>.weight`` (float32), and for each packed
    weight (keyed by ``<module>.weight``) its stored type and the bits it takes."""
    qc = src.quant_config
    bits_w = int(qc.get("bits", 4))
    group = int(qc.get("group_size", 128))
    if src.format == "compressed-tensors":
        modules = sorted(
            {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".weight_packed") or k.endswith(".weight_scale")}
        )
        out = _decompress_ct(src, dict(tensors))
        fmt = str(qc.get("format", "compressed"))
        label = f"compressed-tensors:{fmt}"
    else:
        modules = sorted(k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight"))
        out = dict(tensors)
        if src.format == "awq" and bits_w != 4:
            raise UserError(f"artifact {src.path!r}: AWQ with {bits_w} bits is not supported", "AWQ GEMM is 4-bit")
        offset = 0 if str(qc.get("checkpoint_format", "gptq")).lower() == "gptq_v2" else 1
        for m in modules:
            g_idx = out.pop(f"{m}.g_idx", None)
            try:
                out[f"{m}.weight"] = dequantize_packed(
                    src.format,
                    out.pop(f"{m}.qweight"),
                    out.pop(f"{m}.qzeros"),
                    out.pop(f"{m}.scales"),
                    bits=bits_w,
                    group_size=group,
                    g_idx=None if g_idx is None or src.format == "awq" else g_idx,
                    zero_offset=offset,
                )
            except KeyError as e:
                raise UserError(f"artifact {src.path!r}: {m} has a qweight but no {e.args[0]}") from None
            except RuntimeError as e:
                raise UserError(f"artifact {src.path!r}: {m}'s packed tensors do not fit ({e})") from None
        label = f"{src.format}:w{bits_w}g{group}"
    kinds: dict[str, tuple[str, float]] = {}
    for m in modules:
        spent = 0
        for k, t in tensors.items():
            if k.startswith(m + ".") and "." not in k[len(m) + 1 :] and k != f"{m}.bias":
                spent += t.numel() * _DTYPE_BITS.get(dtypes[k], 32)
        kinds[f"{m}.weight"] = (label, float(spent))
    return out, kinds


def _ct_dequantizer() -> Any:
    """compressed-tensors' dequantizer class; a one-line UserError naming the extra when it is not installed."""
    try:
        from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    except ImportError:
        raise UserError(
            "reading a compressed-tensors checkpoint needs the compressed-tensors library",
            "run: pip install 'quant-disparity[export]'",
        ) from None
    return CompressedTensorsDequantizer


def _decompress_ct(src: ArtifactSource, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dequantizer = _ct_dequantizer()
    try:
        return dequantizer(src.path, dtype=torch.float32).process(tensors)
    except (ValueError, KeyError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"artifact {src.path!r}: cannot decompress it with compressed-tensors ({first[:160]})"
        ) from None
