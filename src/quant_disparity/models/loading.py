"""Load a causal LM and its tokenizer from a bundled alias, a Hugging Face id or directory, or a .gguf file.

GGUF files (bundled or given by path) are dequantized once by transformers and cached as safetensors in the
user cache directory, keyed by the file's sha256 and the versions of the converting libraries; later loads
read the cache and take seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._io import atomic_write_text, sha256_file
from ..errors import UserError, did_you_mean
from ..provenance import lib_version
from .bundled import BUNDLED, DEFAULT_MODEL

_log = logging.getLogger("quant_disparity.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root() -> Path:
    """``$QUANT_DISPARITY_CACHE`` or the platform's user cache directory for quant-disparity."""
    env = os.environ.get("QUANT_DISPARITY_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("quant-disparity"))


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for (alias, id, path)
    source: str  # bundled | gguf | hf-dir | hf-hub | in-memory
    digest: str  # sha256 of the source file(s), or of the weights for in-memory models
    arch: str
    n_params: int
    vocab_size: int
    max_length: int
    tied_embeddings: bool
    dtype: str
    device: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None  # None when loaded with with_tokenizer=False
    info: ModelInfo
    prefix: int | None = None  # recorded at load time, so it survives dropping the tokenizer
    #: the directory of safetensors files the weights were read from (None for in-memory and Hub models): the
    #: quantization engine can re-read originals from it instead of holding a second copy in memory
    checkpoint: str | None = None

    @property
    def prefix_token_id(self) -> int | None:
        """Token prepended to every document: BOS, else EOS (as lm-evaluation-harness does), else none."""
        if self.tokenizer is not None:
            return prefix_token_of(self.tokenizer)
        return self.prefix

    def drop_tokenizer(self) -> None:
        """Release the tokenizer (0.3 GiB for a 262k vocabulary) once every document is tokenized."""
        if self.tokenizer is not None:
            self.prefix = prefix_token_of(self.tokenizer)
            self.tokenizer = None
            release_memory()


def parse_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!r}", "use cpu, cuda or cuda:N")
    return dev


def parse_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}{did_you_mean(dtype, DTYPES)}", f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def classify_source(spec: str) -> str:
    """bundled | gguf | hf-dir | hf-hub; raises UserError for anything else."""
    if spec in BUNDLED:
        return "bundled"
    path = Path(spec).expanduser()
    try:
        path.exists()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise UserError(
            f"model {spec[:80]!r} is not a usable path ({e.strerror})",
            f"give a bundled alias ({', '.join(BUNDLED.names())}), a Hugging Face id, a model "
            "directory or a .gguf file",
        ) from None
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {spec!r} not found", "check the path")
        read_sidecar(path)
        return "gguf"
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{spec!r} is a directory without config.json", "point to a Hugging Face model directory")
        _check_config_json(path / "config.json")
        return "hf-dir"
    if _HUB_ID.match(spec) and not path.exists():
        return "hf-hub"
    BUNDLED.get(spec)  # raises "unknown model ... did you mean"
    raise AssertionError("unreachable")


def _check_config_json(path: Path) -> None:
    """A model directory's config.json must be a JSON object naming its model_type (what transformers reads)."""
    fix = "restore it from the model's source (save_pretrained writes it)"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text", fix) from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: config.json is not valid JSON ({e.msg} at line {e.lineno})", fix) from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: config.json must hold a JSON object, got {type(data).__name__}", fix)
    if not isinstance(data.get("model_type"), str) or not data["model_type"]:
        raise UserError(f"{path}: config.json has no model_type", fix)


def read_sidecar(gguf_path: Path) -> str | None:
    """The sha256 named by ``<file>.sha256`` next to a GGUF (``sha256sum`` format), or None without one."""
    sidecar = gguf_path.with_name(gguf_path.name + ".sha256")
    if not sidecar.exists():
        return None
    fix = f"write the file's 64-digit sha256 into it (`sha256sum {gguf_path.name} > {sidecar.name}`) or delete it"
    try:
        words = sidecar.read_bytes().decode("ascii").split()
    except UnicodeDecodeError:
        words = []
    except OSError as e:
        raise UserError(f"cannot read {sidecar} ({e.strerror})") from None
    if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        raise UserError(f"{sidecar} is not a sha256 checksum", fix)
    return words[0].lower()


def _state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dir_digest(path: Path) -> str:
    """sha256 over config and weight files, memoised in the cache by (path, size, mtime)."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".model"))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo = cache_root() / "digests" / (hashlib.sha256(f"{path.resolve()}{stamp}".encode()).hexdigest()[:24] + ".txt")
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(memo, digest)
    return digest


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr)


def gguf_cache_dir(digest: str) -> Path:
    """Cache directory of a dequantized GGUF; the converting libraries' versions are part of the key."""
    return cache_root() / "models" / f"{digest[:16]}-tf{lib_version('transformers')}-gguf{lib_version('gguf')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


_TMP_SUFFIX = re.compile(r"\.tmp-(\d+)$")


def remove_stale_temporaries(models_dir: Path | None = None) -> list[Path]:
    """Remove ``<key>.tmp-PID`` directories left in the model cache by a dequantization that was killed
    (its process is gone); a temporary of a running process is kept. Returns what was removed."""
    models_dir = Path(models_dir) if models_dir is not None else cache_root() / "models"
    removed: list[Path] = []
    try:
        entries = list(models_dir.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_SUFFIX.search(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def materialize_gguf(gguf_path: Path, digest: str, log: Callable[[str], None] = _log_default) -> Path:
    """Dequantize ``gguf_path`` to an fp32 safetensors checkpoint in the cache (once); return its directory."""
    target = gguf_cache_dir(digest)
    remove_stale_temporaries(target.parent)
    if (target / "quant_disparity.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"dequantizing {gguf_path.name} once (about a minute); cache: {target}")
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as e:  # gguf/transformers raise many types for unreadable files
        raise UserError(
            f"could not read GGUF {gguf_path} ({type(e).__name__}: {e})",
            "check that the file is a complete GGUF of a supported architecture",
        ) from None
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one on the meta device and move the
    # dequantized tensors in (assign=True: no second copy of the weights).
    config = loaded.config
    plain = config.to_dict()
    plain.pop("quantization_config", None)
    config = type(config).from_dict(plain)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    del loaded
    tmp.mkdir(parents=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    atomic_write_text(tmp / "quant_disparity.json", json.dumps({"gguf": gguf_path.name, "sha256": digest}))
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def verify_sha256(path: Path, expected: str, what: str, fix: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"{what}: checksum mismatch for {path} (sha256 {actual[:12]}…, expected {expected[:12]}…)", fix)
    return actual


#: Context length assumed for a model whose config states none (``max_position_embeddings``, ``n_positions``,
#: ``seq_length``), e.g. ALiBi models such as BLOOM, which have no position table: it only caps the
#: evaluation window (1024 tokens by default), and 2048 is the shortest context such models were trained on.
FALLBACK_MAX_LENGTH = 2048
_MAX_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "seq_length")


def max_length_of(cfg) -> int:
    """The model's context length, from its config; :data:`FALLBACK_MAX_LENGTH` (logged) when it states none."""
    stated = next((getattr(cfg, a) for a in _MAX_LENGTH_KEYS if isinstance(getattr(cfg, a, None), int)), None)
    if stated is None:
        _log.info(
            f"{getattr(cfg, 'model_type', 'the model')}: no context length in its config "
            f"({', '.join(_MAX_LENGTH_KEYS)}); assuming {FALLBACK_MAX_LENGTH} tokens"
        )
        return FALLBACK_MAX_LENGTH
    return int(stated)


def _prepared_model(model, tokenizer, *, name, source, digest, dtype, device, extra=None) -> LoadedModel:
    """``model`` moved to ``device`` and ``dtype`` for inference (eval mode, no gradients, no KV cache), with its
    tokenizer and a :class:`ModelInfo` describing it."""
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    params = {id(p): p for p in model.parameters()}
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    cfg = model.config
    info = ModelInfo(
        name=name,
        source=source,
        digest=digest,
        arch=getattr(cfg, "model_type", type(model).__name__),
        n_params=sum(p.numel() for p in params.values()),
        vocab_size=int(head.weight.shape[0]) if head is not None else int(getattr(cfg, "vocab_size", 0)),
        max_length=max_length_of(cfg),
        tied_embeddings=bool(head is not None and emb is not None and head.weight is emb.weight),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        extra=extra or {},
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def wrap_model(model: torch.nn.Module, tokenizer, name: str = "in-memory", *, device="cpu", dtype="float32"):
    """A :class:`LoadedModel` for a model built in memory (tests, notebooks); digest from its weights."""
    lm = _prepared_model(
        model,
        tokenizer,
        name=name,
        source="in-memory",
        digest=_state_digest(model),
        dtype=parse_dtype(dtype),
        device=parse_device(device),
    )
    lm.prefix = prefix_token_of(tokenizer)
    return lm


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights and tokenizer are read from (GGUF files already materialized)."""

    spec: str
    source: str  # bundled | gguf | hf-dir | hf-hub
    path: str  # what from_pretrained reads: a directory or a Hub id
    digest: str | None  # None for Hub ids until the weights are loaded (the commit hash is read then)
    extra: dict = field(default_factory=dict)


def resolve_source(spec: str = DEFAULT_MODEL, log: Callable[[str], None] = _log_default) -> ModelSource:
    """Locate ``spec``'s checkpoint; a GGUF is verified and dequantized into the cache here (once)."""
    source = classify_source(spec)
    if source in ("bundled", "gguf"):
        remove_stale_temporaries()
    if source == "bundled":
        bundled = BUNDLED.get(spec)
        ckpt = gguf_cache_dir(bundled.sha256)
        if not (ckpt / "quant_disparity.json").exists():
            work = cache_root() / "gguf"
            work.mkdir(parents=True, exist_ok=True)
            path = bundled.gguf_path(work)
            verify_sha256(path, bundled.sha256, f"model {spec!r}", f"reinstall it: {bundled.install} --force-reinstall")
            ckpt = materialize_gguf(path, bundled.sha256, log)
            if path.parent == work:  # an assembled copy (not the package's own file): the cache replaces it
                path.unlink(missing_ok=True)
        return ModelSource(
            spec, source, str(ckpt), bundled.sha256, {"description": bundled.description, "checkpoint": str(ckpt)}
        )
    if source == "gguf":
        path = Path(spec).expanduser()
        expected = read_sidecar(path)
        if expected is not None:
            digest = verify_sha256(
                path, expected, f"GGUF {spec!r}", f"the file differs from {path.name}.sha256: download it again"
            )
        else:
            digest = sha256_file(path)
        ckpt = materialize_gguf(path, digest, log)
        return ModelSource(spec, source, str(ckpt), digest, {"checkpoint": str(ckpt)})
    if source == "hf-dir":
        path = Path(spec).expanduser()
        return ModelSource(spec, source, str(path), _dir_digest(path))
    return ModelSource(spec, source, spec, None)


def _load_errors() -> tuple[type[BaseException], ...]:
    """What from_pretrained raises for a missing, incomplete or corrupt checkpoint."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return (OSError,)
    return (OSError, SafetensorError)


def _load_error(src: ModelSource, e: BaseException, what: str = "model") -> UserError:
    """A local directory's problem is in the directory; only a Hub id is about the Hub and the network."""
    first = (str(e).splitlines() or [type(e).__name__])[0]
    if src.source == "hf-hub":
        return UserError(
            f"could not load {src.spec!r} from the Hugging Face Hub ({first})",
            "check the id and your network, or pass a local directory or a bundled alias "
            f"({', '.join(BUNDLED.names())})",
        )
    where = "model directory" if src.source == "hf-dir" else "cached checkpoint"
    fix = (
        "check that it holds a complete Hugging Face checkpoint (config.json, the weights and the tokenizer files)"
        if src.source == "hf-dir"
        else f"delete {src.path} so that it is rebuilt"
    )
    return UserError(f"could not load the {what} from the {where} {src.path} ({first})", fix)


def load_tokenizer(src: ModelSource | str):
    from transformers import AutoTokenizer

    if isinstance(src, str):
        src = resolve_source(src)
    try:
        return AutoTokenizer.from_pretrained(src.path)
    except _load_errors() as e:
        raise _load_error(src, e, "tokenizer") from None


def prefix_token_of(tokenizer) -> int | None:
    """Token prepended to every document: BOS, else EOS (as lm-evaluation-harness does), else none."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


def release_memory() -> None:
    """Return freed heap memory to the operating system (glibc ``malloc_trim``; a no-op elsewhere).

    A 262k-vocabulary tokenizer holds about 0.3 GiB; dropping it is only visible to the OS after a trim.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_model(
    spec: str | ModelSource = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    log: Callable[[str], None] = _log_default,
    tokenizer: object | None = None,
) -> LoadedModel:
    """Load ``spec``: a bundled alias, a ``.gguf`` path, a local HF directory or a Hugging Face Hub id."""
    torch_dtype, dev = parse_dtype(dtype), parse_device(device)
    src = spec if isinstance(spec, ModelSource) else resolve_source(spec, log)
    from transformers import AutoModelForCausalLM

    # Every checkpoint (GGUF ones are cached as fp32 safetensors) loads in the requested dtype directly: tensor by
    # tensor from the memory-mapped files, shards included, so no full copy in another dtype is ever made.
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch_dtype)
    except _load_errors() as e:
        raise _load_error(src, e) from None
    tok = tokenizer if tokenizer is not None else load_tokenizer(src)
    prefix = prefix_token_of(tok)
    digest = src.digest
    if digest is None:
        commit = getattr(model.config, "_commit_hash", None)
        digest = f"hf:{src.spec}@{commit}" if commit else _state_digest(model)
    lm = _prepared_model(
        model,
        tok,
        name=src.spec,
        source=src.source,
        digest=digest,
        dtype=torch_dtype,
        device=dev,
        extra=dict(src.extra),
    )
    lm.prefix = prefix
    if src.source != "hf-hub" and any(Path(src.path).glob("*.safetensors")):
        lm.checkpoint = src.path
    release_memory()  # buffers of the conversion to ``dtype``, freed, go back to the OS
    return lm
