"""What a job will cost before it runs: ``--dry-run`` and the memory check made before any model is loaded.

The model is read from its config only: its weights are built on PyTorch's ``meta`` device (shapes, no
storage), so a 70B model is estimated without downloading or loading a byte of it (a local ``config.json``
is enough; a Hub id fetches only its config and tokenizer files). On that shell the same code that plans a
real job runs: document selection and batching (:func:`..inputs.load_inputs`, :func:`..experiments.planning
.plan_model`), the module map, the configurations of a sweep and their replay plan (:func:`..evaluate.sweep
.plan_reuse`). What is predicted from it:

- **work**: documents, predicted and padded tokens, decoder-block passes with and without replay, FLOPs;
- **time** on the CPU: the FLOPs divided by this machine's throughput on one decoder layer of the model's own
  width, measured once (a short calibration, cached with its date in the user cache directory), plus the
  output layer and the quantization of the weights at their measured rates; model loading is not included;
- **time** on a data-centre GPU (``--estimate-device h100`` ...): the FLOPs at a stated share of the device's
  dense bf16/fp16 peak (:data:`GPU_UTILIZATION`) — computed, never measured, and labelled so;
- **peak memory**: the libraries' resident size (measured in a fresh interpreter, cached), plus the larger of
  the load phase (weights as stored on disk, the tokenizer) and the evaluation phase (weights in the run's
  dtype, one fake-quantized copy per quantized tensor and scheme — :class:`..quant.QuantEngine` keeps the
  originals by reference, not as copies — and the activations of one batch: hidden states, the rows and
  block inputs a sweep keeps for replay, the output-layer slices).

The terms are listed in every estimate, so a reader can see what dominates. ``tests/test_estimate.py`` checks
the peak against measured peak memory of real runs (a stated tolerance); ``benchmarks/bench_estimate.py``
reports predicted against measured time.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import UserError, did_you_mean

GiB = 1024**3

#: Dense (no sparsity) 16-bit tensor-core peaks in TFLOP/s from the vendors' data sheets (SXM parts where
#: there are several), and the 16-bit dtypes each runs. A GPU estimate is FLOPs / (peak x utilization).
GPU_PEAKS: dict[str, dict] = {
    "h200": {"name": "NVIDIA H200", "tflops": 989.0, "memory_gib": 141, "dtypes": ("bfloat16", "float16")},
    "h100": {"name": "NVIDIA H100 SXM", "tflops": 989.0, "memory_gib": 80, "dtypes": ("bfloat16", "float16")},
    "a100": {"name": "NVIDIA A100 SXM", "tflops": 312.0, "memory_gib": 80, "dtypes": ("bfloat16", "float16")},
    "l40s": {"name": "NVIDIA L40S", "tflops": 362.0, "memory_gib": 48, "dtypes": ("bfloat16", "float16")},
    "a10g": {"name": "NVIDIA A10G", "tflops": 70.0, "memory_gib": 24, "dtypes": ("bfloat16", "float16")},
    "l4": {"name": "NVIDIA L4", "tflops": 121.0, "memory_gib": 24, "dtypes": ("bfloat16", "float16")},
    "t4": {"name": "NVIDIA T4", "tflops": 65.0, "memory_gib": 16, "dtypes": ("float16",)},
    "v100": {"name": "NVIDIA V100 SXM", "tflops": 125.0, "memory_gib": 32, "dtypes": ("float16",)},
}
#: Share of the peak a batched prefill-style forward pass reaches (model FLOPs utilization). An assumption,
#: stated next to every GPU estimate; measured utilization on a real device comes from benchmarks/gpu_check.py.
GPU_UTILIZATION = 0.4
#: CUDA context, cuBLAS workspaces and the caching allocator's slack (an assumption, for GPU estimates).
GPU_OVERHEAD_BYTES = int(1.0 * GiB)
#: Resident bytes of a loaded fast tokenizer per vocabulary entry (0.3 GiB for a 262k vocabulary, measured on
#: the bundled Gemma tokenizer: see tests/test_estimate.py).
TOKENIZER_BYTES_PER_ENTRY = 1200
#: Working copies of one weight tensor while it is fake-quantized (float32 rows, scales, rounding).
QUANTIZE_WORKING_COPIES = 4
#: Version of the calibration's measurement; a change re-measures every machine.
CALIBRATION_VERSION = 1


def _bytes(dtype: str) -> int:
    return torch.finfo(getattr(torch, dtype)).bits // 8


# -- the model, from its config ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What an estimate needs to know about a model, read from its config."""

    arch: str
    n_params: int
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    layer_linear_params: int  # Linear weights of one decoder block (the mean over blocks)
    tied: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _shape(model: torch.nn.Module, modmap) -> Shape:
    cfg = model.config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    n_heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    kv = int(getattr(cfg, "num_key_value_heads", 0) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", 0) or (hidden // n_heads))
    inter = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * hidden)
    block = sum(p.numel for p in modmap.params if p.layer is not None and p.role == "matrix")
    head = model.get_output_embeddings()  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
    emb = model.get_input_embeddings()  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method
    return Shape(
        arch=str(getattr(cfg, "model_type", type(model).__name__)),
        n_params=sum(p.numel for p in modmap.params),
        n_layers=modmap.n_layers,
        hidden=hidden,
        intermediate=inter,
        n_heads=n_heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        vocab=int(head.weight.shape[0]) if head is not None else int(getattr(cfg, "vocab_size", 0)),
        layer_linear_params=block // max(1, modmap.n_layers),
        tied=bool(head is not None and emb is not None and head.weight is emb.weight),
    )


@dataclass
class Shell:
    """A model built on the meta device from its config, with a tokenizer: everything but the weights."""

    lm: object  # a LoadedModel whose tensors are on the meta device
    modmap: object
    shape: Shape
    stored_dtype: str  # the dtype the weights are loaded in before the run's dtype (float32 for GGUF files)
    notes: list[str] = field(default_factory=list)


def _read_config(path: str, what: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"cannot read the config of {what} ({first[:200]})",
            "give a bundled alias, a model directory with config.json, or a Hub id reachable from here",
        ) from None


def model_shell(
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    config_path: str | None = None,
    tokenizer: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> Shell:
    """The model named ``spec`` (bundled, GGUF, directory or Hub id) without its weights.

    ``config_path``: a ``config.json`` (or its directory) to read instead of the model's own, for a model that
    is not at hand (a spec's ``[model_configs]``). Without the model's tokenizer the bundled default model's
    tokenizer counts the tokens, and the estimate says so.
    """
    from transformers import AutoModelForCausalLM

    from .models import DEFAULT_MODEL, classify_source, load_tokenizer, parse_device, parse_dtype, resolve_source
    from .models.loading import LoadedModel, ModelInfo, max_length_of, prefix_token_of
    from .models.modules import build_module_map

    torch_dtype = parse_dtype(dtype)
    parse_device(device)
    notes: list[str] = []
    src = None
    if config_path is not None:
        p = Path(config_path).expanduser()
        cfg = _read_config(str(p.parent if p.name == "config.json" else p), f"{spec} ({config_path})")
        source, digest = "config", None
        stored = _file_dtype(cfg, dtype)
    else:
        kind = classify_source(spec)
        src = resolve_source(spec, log) if kind in ("bundled", "gguf", "hf-dir") else None
        cfg = _read_config(src.path if src else spec, repr(spec))
        source, digest = kind, (src.digest if src else None)
        stored = "float32" if kind in ("bundled", "gguf") else _file_dtype(cfg, dtype)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"cannot build a causal LM from the config of {spec!r} ({str(e).splitlines()[0][:200]})",
            "the model must be a decoder that transformers' AutoModelForCausalLM supports",
        ) from None
    model = model.to(torch_dtype).eval()
    want_tokenizer, tok = tokenizer, None
    try:
        if want_tokenizer and config_path is None:
            tok = load_tokenizer(src if src is not None else spec)
            if not tok("The quick brown fox.", add_special_tokens=False)["input_ids"]:  # type: ignore[operator]  # a tokenizer
                tok = None  # an empty tokenizer built from the config alone (no vocabulary files)
    except (UserError, ValueError, OSError, TypeError):  # no tokenizer files (a config-only directory)
        tok = None
    if want_tokenizer and tok is None:
        tok = load_tokenizer(DEFAULT_MODEL)
        notes.append(
            f"tokens counted with the {DEFAULT_MODEL} tokenizer (the model's own tokenizer is not at hand): "
            "the model's own may cut the same text into more or fewer tokens"
        )
    modmap = build_module_map(model, stages=probe_stages(cfg))
    shape = _shape(model, modmap)
    info = ModelInfo(
        name=spec,
        source=source,
        digest=digest or f"config:{spec}",
        arch=shape.arch,
        n_params=shape.n_params,
        vocab_size=shape.vocab,
        max_length=max_length_of(cfg),
        tied_embeddings=shape.tied,
        dtype=dtype,
        device=str(device),
    )
    prefix = prefix_token_of(tok) if tok is not None else None
    lm = LoadedModel(model=model, tokenizer=tok, info=info, prefix=prefix)
    return Shell(lm=lm, modmap=modmap, shape=shape, stored_dtype=stored, notes=notes)


#: The small width of the probe instance of an architecture (real weights, CPU): enough for any layout.
_PROBE_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "vocab_size": 256,
}


def probe_stages(cfg) -> dict[str, str] | None:
    """Where the modules outside the blocks run (before, during or after them), probed on a tiny random
    instance of the same architecture: the names of those modules do not depend on the model's size, and a
    model on the meta device cannot run a forward pass. None when the architecture will not shrink."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .models.modules import _find_blocks, _in_blocks, _owning_modules, execution_stages

    data = {k: v for k, v in cfg.to_dict().items() if k not in ("layer_types", "max_window_layers")}
    for key, value in _PROBE_SIZES.items():
        if key in data or key in getattr(cfg, "attribute_map", {}):
            data[key] = value
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids beyond the probe's small vocabulary
        if isinstance(data.get(key), int) and data[key] >= _PROBE_SIZES["vocab_size"]:
            data[key] = None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the probe instance is not the user's model: its config notes are noise
    try:
        small = type(cfg)(**data)
        with torch.device("cpu"):
            tiny = AutoModelForCausalLM.from_config(small).eval()
        _path, blocks = _find_blocks(tiny)
        outside = {m: mod for m, mod in _owning_modules(tiny).values() if not _in_blocks(m, _path)}
        return execution_stages(tiny, blocks, outside)
    except Exception:  # any failure leaves the stages unknown, as for an unprobed model
        return None
    finally:
        hf_logging.set_verbosity(verbosity)


def _file_dtype(cfg, default: str) -> str:
    """The dtype a checkpoint's config says its weights are stored in (``torch_dtype``), else ``default``."""
    value = getattr(cfg, "dtype", None)  # (not ``torch_dtype``: reading that alias prints a deprecation line)
    name = str(value).removeprefix("torch.") if value is not None else ""
    return name if name in ("float32", "bfloat16", "float16") else default


def gpu_profile(name: str, dtype: str) -> dict:
    """A data-centre GPU from :data:`GPU_PEAKS`; one line for an unknown one or a dtype it cannot run."""
    key = name.lower().removeprefix("nvidia-").removeprefix("nvidia ")
    if key not in GPU_PEAKS:
        raise UserError(
            f"no peak throughput known for device {name!r}{did_you_mean(key, GPU_PEAKS)}",
            f"use one of {', '.join(GPU_PEAKS)}",
        )
    prof = GPU_PEAKS[key]
    if dtype not in prof["dtypes"]:
        raise UserError(
            f"{prof['name']} cannot run {dtype} at its tensor-core peak",
            f"estimate with --dtype {prof['dtypes'][0]}",
        )
    return {"key": key, **prof}


# -- this machine's throughput -------------------------------------------------------------------------------------
def calibration_path() -> Path:
    from .models.loading import cache_root

    return cache_root() / "calibration.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    return f"{_cpu_name()}|{os.cpu_count()}cpu|{torch.get_num_threads()}threads|torch{torch.__version__}"


#: Peak resident size from ``VmHWM`` (the process's own memory map): ``ru_maxrss`` of a child started by
#: vfork + exec can carry its parent's high-water mark.
_PEAK_RSS = (
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1]) * 1024\n"
    "    import resource\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
)
_BASELINE_CHILD = (
    _PEAK_RSS + "import torch, transformers, quant_disparity.cli, quant_disparity.audit, quant_disparity.locate\n"
    "print(_peak())\n"
)


#: A fresh interpreter running one CLI command (its arguments) and printing its own peak resident size as JSON
#: ``{"peak": bytes}``: how tests and benchmarks measure what an estimate predicts.
MEASURE_CHILD = (
    _PEAK_RSS + "import json, sys\n"
    "from quant_disparity.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "    assert not e.code, e.code\n"
    "print(json.dumps({'peak': _peak()}))\n"
)


def _measure_baseline() -> int:
    """Peak resident bytes of a fresh interpreter with the libraries a run imports (before any model)."""
    out = subprocess.run([sys.executable, "-c", _BASELINE_CHILD], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _time_layer(shape: Shape, dtype: str, seq: int = 128, batch: int = 2) -> tuple[float, float]:
    """Seconds per token of one decoder layer of ``shape``'s width (a Llama-style layer: the same matmuls),
    and seconds per token x vocabulary entry of the output layer's log-softmax, both in ``dtype``."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    td = getattr(torch, dtype)
    hidden = min(shape.hidden, 2048)  # wider layers take too long to calibrate; the time is scaled by width²
    inter = max(1, round(shape.intermediate * hidden / shape.hidden))
    heads = max(1, min(shape.n_heads, hidden // max(1, shape.head_dim)))
    kv = max(1, min(shape.n_kv_heads, heads))
    while heads % kv:
        kv -= 1
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=shape.head_dim,
        num_hidden_layers=1,
        vocab_size=16,
    )
    cfg._attn_implementation = "sdpa"
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        layer = LlamaDecoderLayer(cfg, 0).to(td).eval()
        rope = LlamaRotaryEmbedding(cfg)
        x = torch.randn(batch, seq, hidden, generator=gen).to(td)
        pos = torch.arange(seq)[None].expand(batch, -1)
        emb = rope(x, pos)
        mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None].to(td)

        def once() -> None:
            layer(x, attention_mask=mask, position_ids=pos, position_embeddings=emb)

        # best of 5: a float32 layer of Gemma's width varied by ±25 % between single runs on an idle 2-core machine
        t_layer = _best_of(once, repeats=5) / (batch * seq) * (shape.hidden / hidden) ** 2
        rows, chunk = 512, 4096
        h = torch.randn(rows, hidden, generator=gen).to(td)
        w = torch.randn(chunk, hidden, generator=gen).to(td)

        def head() -> None:
            torch.log_softmax((h @ w.T).float(), -1)

        t_head = _best_of(head, repeats=5) / (rows * chunk) * (shape.hidden / hidden)
    return t_layer, t_head


def _best_of(fn: Callable[[], None], repeats: int = 2) -> float:
    fn()  # warm-up (allocations, kernels)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _time_quantize(scheme_name: str) -> float:
    """Seconds per weight element to fake-quantize with ``scheme_name`` (on a 1024 x 4096 float32 matrix)."""
    from .quant import parse_scheme

    scheme = parse_scheme(scheme_name)
    if scheme.is_identity:
        return 0.0
    gen = torch.Generator().manual_seed(0)
    # a K-quant bound to its fallback (``gguf:q4_k-as-q5_0``) quantizes rows a K-type cannot hold: time it on such
    # rows (not a multiple of 256; for f16 not of 32 either), as the tensors it was bound to have
    cols = 4096 if "-as-" not in scheme_name else (4095 if scheme_name.endswith("-as-f16") else 4064)
    w = torch.randn(1024, cols, generator=gen)
    stats = None
    if scheme.needs_calibration:  # GPTQ, AWQ: statistics of random inputs (their cost is not the data's)
        from .quant.calibration import SiteStats

        x = torch.randn(256, cols, generator=gen)
        stats = SiteStats(xtx=x.double().T @ x.double(), abs_sum=x.abs().double().sum(0), rows=x, n=256)

    def once() -> None:
        scheme.fake_quantize(w, stats)

    return _best_of(once, repeats=2) / w.numel()


def calibration(
    shape: Shape,
    dtype: str,
    schemes: list[str],
    log: Callable[[str], None] = lambda m: None,
    refresh: bool = False,
) -> dict:
    """This machine's measured rates for ``shape`` in ``dtype`` (cached; measured on first use, ~seconds).
    ``refresh`` measures again what this estimate uses (the libraries' size, the layer, the schemes) and replaces
    the cached entries: a calibration taken on a busy machine makes every later prediction slow."""
    path = calibration_path()
    try:
        whole = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(whole, dict) or whole.get("version") != CALIBRATION_VERSION:
            whole = {}
    except (OSError, ValueError):
        whole = {}
    whole["version"] = CALIBRATION_VERSION
    machines = whole.setdefault("machines", {})  # one entry per CPU, thread count and torch version
    cache = machines.setdefault(machine_key(), {"machine": machine_key()})
    entries = cache.setdefault("entries", {})
    lkey = f"layer|{dtype}|{shape.hidden}|{shape.intermediate}|{shape.n_heads}|{shape.n_kv_heads}|{shape.head_dim}"
    if refresh:
        cache.pop("baseline_rss", None)
        for key in (lkey, *(f"quantize|{name}" for name in schemes)):
            entries.pop(key, None)
    changed = False
    if "baseline_rss" not in cache:
        log("calibrating: resident size of the libraries")
        cache["baseline_rss"] = _measure_baseline()
        cache["baseline_measured"] = _today()
        changed = True
    if lkey not in entries:
        log(f"calibrating: one decoder layer of width {shape.hidden} in {dtype} on this machine")
        t_layer, t_head = _time_layer(shape, dtype)
        entries[lkey] = {"s_per_token": t_layer, "s_per_head_entry": t_head, "measured": _today()}
        changed = True
    for name in schemes:
        qkey = f"quantize|{name}"
        if qkey not in entries:
            entries[qkey] = {"s_per_element": _time_quantize(name), "measured": _today()}
            changed = True
    if changed:
        from ._io import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(whole, indent=1) + "\n")
    return {
        "machine": cache["machine"],
        "baseline_rss": cache["baseline_rss"],
        "layer": entries[lkey],
        "quantize": {n: entries[f"quantize|{n}"]["s_per_element"] for n in schemes},
        "measured": min([entries[lkey]["measured"], cache["baseline_measured"]]),
    }


def _today() -> str:
    return _dt.date.today().isoformat()


# -- the work of a job ---------------------------------------------------------------------------------------------
@dataclass
class Work:
    """What one model's share of a job computes."""

    documents: int
    batches: int
    predicted_tokens: int
    padded_tokens: int  # tokens through the decoder per pass (windows padded to their batch's longest)
    attention_token_pairs: int  # sum over sequences of length^2 per pass
    configurations: int  # scored besides the reference
    block_passes: int  # decoder-block x batch-token passes actually run (replay saves the rest)
    block_passes_without_replay: int
    head_passes: int  # passes of the output layer over the predicted tokens (reference included)
    quantized_elements: int  # weight elements fake-quantized (each tensor x scheme once)
    cache_elements: int  # elements held in the quantized-tensor cache at once
    largest_quantized: int
    batch_tokens: int
    rows_kept: int  # hidden rows a sweep keeps per scoring group (reference + configurations)
    replay_records: int  # block inputs recorded per batch for replay (reference + bases) x layers
    max_seq: int
    schemes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def sweep_work(
    modmap,
    prepared,
    configs: Mapping[str, Mapping],
    bases: list[str],
    reuse: bool,
    batch_tokens: int,
    score_rows: int,
    replay_possible: bool = True,
) -> Work:
    """The passes :class:`..evaluate.sweep.Sweeper` runs for ``configs`` (reference included) on ``prepared``."""
    from .evaluate.sweep import plan_reuse

    n = modmap.n_layers
    replay = reuse and replay_possible
    choice = plan_reuse(modmap, configs, bases) if replay else {c: (None, 0) for c in configs}
    padded = sum(len(b) * max(len(w.input_ids) for w in b) for b in prepared.batches)
    pairs = sum(len(b) * max(len(w.input_ids) for w in b) ** 2 for b in prepared.batches)
    run_layers = n + sum(n - choice[c][1] for c in configs)
    full_layers = n * (1 + len(configs))
    pairs_q: set[tuple[str, str]] = set()
    calibration_of: dict[str, str] = {}  # scheme name -> its calibration key ("" when uncalibrated)
    numel = {p.name: p.numel for p in modmap.params}
    for a in configs.values():
        for t, s in a.items():
            if not s.is_identity:
                pairs_q.add((t, s.name))
                calibration_of[s.name] = s.calibration if s.needs_calibration else ""
    quantized = sum(numel[t] for t, _ in pairs_q)
    # the cache holds every uncalibrated tensor, but one calibration's tensors at a time (the engine drops a
    # calibration's tensors when the next one starts)
    by_cal: dict[str, int] = {}
    for t, name in pairs_q:
        by_cal[calibration_of[name]] = by_cal.get(calibration_of[name], 0) + numel[t]
    cache = by_cal.pop("", 0) + max(by_cal.values(), default=0)
    schemes = sorted({s for _, s in pairs_q})
    max_seq = max((len(w.input_ids) for b in prepared.batches for w in b), default=0)
    used_bases = [b for b in bases if b in configs] if replay else []
    return Work(
        documents=len(prepared.docs),
        batches=len(prepared.batches),
        predicted_tokens=prepared.total_pred,
        padded_tokens=padded,
        attention_token_pairs=pairs,
        configurations=len(configs),
        block_passes=padded * run_layers,
        block_passes_without_replay=padded * full_layers,
        head_passes=prepared.total_pred * (1 + len(configs)),
        quantized_elements=quantized,
        cache_elements=cache,
        largest_quantized=max((numel[t] for t, _ in pairs_q), default=0),
        batch_tokens=batch_tokens,
        rows_kept=max(score_rows, batch_tokens) * (1 + len(configs)),
        replay_records=(1 + len(used_bases)) * n if replay else 0,
        max_seq=max_seq,
        schemes=schemes,
    )


def merge_work(parts: list[Work]) -> Work:
    """Work done one part after another (sweeps of one model): sums, and the largest of the memory terms."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Work(
        documents=first.documents,
        batches=first.batches,
        predicted_tokens=first.predicted_tokens,
        padded_tokens=first.padded_tokens,
        attention_token_pairs=sum(p.attention_token_pairs for p in parts),
        configurations=sum(p.configurations for p in parts),
        block_passes=sum(p.block_passes for p in parts),
        block_passes_without_replay=sum(p.block_passes_without_replay for p in parts),
        head_passes=sum(p.head_passes for p in parts),
        quantized_elements=max(p.quantized_elements for p in parts),  # the caller sets the union (shared cache)
        cache_elements=max(p.cache_elements for p in parts),
        largest_quantized=max(p.largest_quantized for p in parts),
        batch_tokens=first.batch_tokens,
        rows_kept=max(p.rows_kept for p in parts),
        replay_records=max(p.replay_records for p in parts),
        max_seq=max(p.max_seq for p in parts),
        schemes=sorted({s for p in parts for s in p.schemes}),
    )


# -- memory and time -----------------------------------------------------------------------------------------------
def predicted_mode(weight_bytes: int, available: int) -> str:
    """The engine's memory mode for a model of ``weight_bytes`` with ``available`` bytes free before loading:
    :func:`..quant.engine.engine_for`'s rule (``lean`` when a second copy would not fit in what the loaded model
    leaves free), or what ``QUANT_DISPARITY_MEMORY`` forces."""
    from .quant.engine import memory_mode

    mode = memory_mode()
    if mode != "auto":
        return mode
    return "lean" if weight_bytes > 0.8 * max(0, available - weight_bytes) else "fast"


def memory_terms(
    shape: Shape, work: Work, dtype: str, stored_dtype: str, baseline: int, mode: str = "fast"
) -> dict[str, int]:
    """Peak resident bytes, term by term (see the module docstring), and their ``peak``. ``mode``: the engine's
    memory mode (``lean`` caches no quantized tensors: each replaces its original, which is re-read from the
    checkpoint to restore it)."""
    b = _bytes(dtype)
    weights = shape.n_params * b
    stored = shape.n_params * _bytes(stored_dtype)
    tokenizer = shape.vocab * TOKENIZER_BYTES_PER_ENTRY
    # Loading into another dtype than the file's: the file's pages (memory-mapped, read once) and the converted
    # tensors are both resident at the end of the load.
    load_phase = stored + tokenizer + (weights if stored_dtype != dtype else 0)
    cache = work.cache_elements * b if mode == "fast" else 0
    quantize_tmp = work.largest_quantized * 4 * QUANTIZE_WORKING_COPIES
    t = work.batch_tokens
    acts = t * (6 * shape.hidden + 3 * shape.intermediate) * 4  # one block's transients, float32 or smaller
    attn = t * max(1, work.max_seq) * shape.n_heads * 4
    rows = work.rows_kept * shape.hidden * b
    replay = work.replay_records * t * shape.hidden * b
    head = max(1, min(work.rows_kept, t)) * 4096 * 4 * 3  # logits slices: reference, configuration, softmax
    eval_phase = weights + cache + max(quantize_tmp, acts + attn + rows + replay + head)
    terms = {
        "libraries": baseline,
        "weights_stored": stored,
        "tokenizer": tokenizer,
        "weights": weights,
        "quantized_cache": cache,
        "quantize_working": quantize_tmp,
        "activations": acts + attn,
        "rows_and_replay": rows + replay,
        "head_slices": head,
    }
    terms["peak"] = baseline + max(load_phase, eval_phase)
    return terms


def flops(shape: Shape, work: Work) -> dict[str, float]:
    """Multiply-adds x 2 of the decoder blocks (per layer: its Linear weights, and attention scores and
    values over every pair of positions) and of the output layer over the predicted tokens."""
    per_layer = 2 * shape.layer_linear_params  # per token
    layer_pairs = work.attention_token_pairs * (work.block_passes / max(1, work.padded_tokens * shape.n_layers))
    blocks = work.block_passes * per_layer + 4 * layer_pairs * shape.n_heads * shape.head_dim * shape.n_layers
    head = 2 * work.head_passes * shape.hidden * shape.vocab
    return {"blocks": float(blocks), "head": float(head), "total": float(blocks + head)}


def cpu_time(shape: Shape, work: Work, cal: dict) -> dict[str, float]:
    evaluate = work.block_passes / shape.n_layers * cal["layer"]["s_per_token"] * shape.n_layers
    head = work.head_passes * shape.vocab * cal["layer"]["s_per_head_entry"]
    quantize = sum(cal["quantize"].get(s, 0.0) for s in work.schemes) / max(1, len(work.schemes))
    quantize *= work.quantized_elements
    return {
        "quantize_s": quantize,
        "evaluate_s": evaluate + head,
        "total_s": quantize + evaluate + head,
    }


def gpu_time(fl: dict, prof: dict) -> dict[str, float]:
    rate = prof["tflops"] * 1e12 * GPU_UTILIZATION
    evaluate = fl["total"] / rate
    return {"evaluate_s": evaluate, "total_s": evaluate}


def available_memory(device: str = "cpu") -> int:
    """Bytes a new job can still take: the system's available memory, capped by the cgroup's limit."""
    import psutil

    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    avail = int(psutil.virtual_memory().available)
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            avail = min(avail, int(limit) - usage)
        break
    return max(0, avail)


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# -- the estimate --------------------------------------------------------------------------------------------------
@dataclass
class ModelEstimate:
    model: str
    shape: Shape
    dtype: str
    work: Work
    flops: dict
    memory: dict
    time: dict
    basis: str
    notes: list[str]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "shape": self.shape.to_dict(),
            "dtype": self.dtype,
            "work": self.work.to_dict(),
            "flops": self.flops,
            "memory_bytes": self.memory,
            "time_s": self.time,
            "basis": self.basis,
            "notes": self.notes,
        }


def estimate_model(
    shell: Shell,
    work: Work,
    *,
    dtype: str,
    target: str = "cpu",
    log: Callable[[str], None] = lambda m: None,
    recalibrate: bool = False,
) -> ModelEstimate:
    """Memory and time of ``work`` on ``shell``'s model, on this CPU or a named GPU (``target``); ``recalibrate``
    measures this CPU's rates again (:func:`calibration`)."""
    shape = shell.shape
    fl = flops(shape, work)
    notes = list(shell.notes)
    if target == "cpu":
        cal = calibration(shape, dtype, work.schemes, log, refresh=recalibrate)
        mode = predicted_mode(shape.n_params * _bytes(dtype), available_memory())
        mem = memory_terms(shape, work, dtype, shell.stored_dtype, cal["baseline_rss"], mode)
        if mode == "lean":
            notes.append(
                "lean memory mode (a second copy of the weights does not fit here): no quantized copies are "
                "kept, each switch re-quantizes and re-reads what it changes (slower than predicted)"
            )
        tm = cpu_time(shape, work, cal)
        basis = (
            f"this CPU ({cal['machine']}), throughput of one decoder layer of this width measured "
            f"{cal['measured']} (cached in {calibration_path()}); model loading not included"
        )
    else:
        prof = gpu_profile(target, dtype)
        mem = memory_terms(shape, work, dtype, dtype, GPU_OVERHEAD_BYTES)
        for k in ("weights_stored", "tokenizer"):  # loaded in host memory, not on the device
            mem[k] = 0
        mem["peak"] = (
            GPU_OVERHEAD_BYTES
            + mem["weights"]
            + mem["quantized_cache"]
            + max(mem["quantize_working"], mem["activations"] + mem["rows_and_replay"] + mem["head_slices"])
        )
        tm = gpu_time(fl, prof)
        basis = (
            f"computed, not measured: FLOPs at {GPU_UTILIZATION:.0%} of the {prof['name']}'s dense {dtype} peak "
            f"({prof['tflops']:.0f} TFLOP/s); device memory {prof['memory_gib']} GiB; model loading and "
            "quantization not included"
        )
        if mem["peak"] > prof["memory_gib"] * GiB:
            notes.append(f"does not fit one {prof['name']} ({gib(mem['peak'])} > {prof['memory_gib']} GiB)")
    if work.replay_records == 0 and work.configurations > 1:
        notes.append("no block replay (--no-reuse)")
    return ModelEstimate(
        model=shell.lm.info.name,  # type: ignore[attr-defined]  # a LoadedModel
        shape=shape,
        dtype=dtype,
        work=work,
        flops=fl,
        memory=mem,
        time=tm,
        basis=basis,
        notes=notes,
    )


def check_fits(peak: int, baseline: int, device: str, fixes: str, force: bool) -> str | None:
    """Refuse (one line) a job predicted not to fit; returns a warning line when ``force`` overrides."""
    need = peak - (baseline if not device.startswith("cuda") else 0)
    have = available_memory(device)
    if need <= have:
        return None
    line = f"predicted peak memory {gib(peak)} does not fit: it needs {gib(need)} more and {gib(have)} is available"
    if force:
        return line + " (--force: running anyway)"
    raise UserError(line, f"{fixes}; or --force to run anyway")


def fix_hint(dtype: str) -> str:
    parts = []
    if dtype == "float32":
        parts.append("--dtype bfloat16 (half the weights)")
    parts += ["fewer languages (--langs)", "a smaller --batch-tokens"]
    return "try " + ", ".join(parts)


def summary_lines(kind: str, estimates: list[ModelEstimate], extra: list[str] | None = None) -> list[str]:
    """The dry-run's printout."""
    lines = [f"dry run of {kind}: nothing is loaded or scored"]
    lines += extra or []
    for e in estimates:
        w = e.work
        saved = 1 - w.block_passes / w.block_passes_without_replay if w.block_passes_without_replay else 0.0
        lines += [
            f"model {e.model}: {e.shape.n_params / 1e9:.3f} B parameters, {e.shape.n_layers} layers, "
            f"vocabulary {e.shape.vocab}, {e.dtype}",
            f"  {w.configurations} configurations + the reference, {w.documents} documents, "
            f"{w.predicted_tokens} predicted tokens ({w.padded_tokens} padded) per configuration",
            f"  decoder-block passes: {w.block_passes / max(1, w.padded_tokens):.0f} x the batch tokens "
            f"({saved:.0%} saved by replay); {e.flops['total'] / 1e12:.2f} TFLOP",
            f"  predicted time: {_fmt_s(e.time['total_s'])} "
            + (
                f"(quantize {_fmt_s(e.time['quantize_s'])}, evaluate {_fmt_s(e.time['evaluate_s'])})"
                if "quantize_s" in e.time
                else ""
            ),
            f"  predicted peak memory: {gib(e.memory['peak'])} (weights {gib(e.memory['weights'])}, quantized "
            f"copies {gib(e.memory['quantized_cache'])}, activations {gib(e.memory['activations'] + e.memory['rows_and_replay'])}, "
            f"libraries {gib(e.memory['libraries'])})",
            f"  basis: {e.basis}",
        ]
        lines += [f"  note: {n}" for n in e.notes]
    return lines


# -- the three commands --------------------------------------------------------------------------------------------
def replay_possible(model: torch.nn.Module) -> bool:
    """Whether the sweep can split the model at its output layer and so replay blocks (checked on the real
    model by a probe; the shell can only tell whether the structure is there)."""
    from .evaluate.forward import _base_model

    return _base_model(model) is not None and model.get_output_embeddings() is not None  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module; HF models define this method


def audit_job(
    config, target: str = "cpu", log: Callable[[str], None] = lambda m: None, recalibrate: bool = False
) -> ModelEstimate:
    """The estimate of ``quant-disparity audit`` with ``config`` (an :class:`..config.AuditConfig`)."""
    from .audit import quantization_targets, validate
    from .inputs import load_inputs
    from .quant.plan import load_plan

    scheme, corpus, _langs = validate(config)
    shell = model_shell(config.model, dtype=config.dtype, device=config.device, log=log)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=shell.lm, log=log)  # type: ignore[arg-type]  # a LoadedModel on the meta device
    assignment = _audit_assignment(config, shell.modmap, scheme, quantization_targets, load_plan)
    work = sweep_work(
        shell.modmap,
        inputs.prepared,
        {"quantized": assignment},
        [],
        False,
        config.eval.batch_tokens,
        config.eval.score_rows,
    )
    return estimate_model(shell, work, dtype=config.dtype, target=target, log=log, recalibrate=recalibrate)


def _audit_assignment(config, modmap, scheme, quantization_targets, load_plan) -> dict:
    if config.plan:
        plan = load_plan(config.plan)
        # super weights are found by a forward pass; a handful of single elements changes no memory figure
        return (plan.with_super([]) if plan.needs_super else plan).resolve(modmap).assignment()
    return {name: scheme for name in quantization_targets(modmap, config.include)}


def locate_configs(config, modmap) -> tuple[dict, list[str]]:
    """The configurations of a locate sweep and its replay bases (as :func:`..locate.run_locate` builds them)."""
    from .locate import build_configs, sweep_configs
    from .quant import parse_scheme

    scheme = parse_scheme(config.scheme)
    universe, units, _pairs, configs = sweep_configs(config, modmap, scheme)
    if config.estimate:  # K units are measured (which K is known only after scoring; the scoring is not counted)
        configs = build_configs(universe, units[: config.top], [], scheme, config.mode, modmap)
    return configs, (["all"] if config.mode == "protect-one" else [])


def locate_job(
    config, target: str = "cpu", log: Callable[[str], None] = lambda m: None, recalibrate: bool = False
) -> ModelEstimate:
    """The estimate of ``quant-disparity locate`` with ``config`` (a :class:`..locate.LocateConfig`)."""
    from .inputs import load_inputs
    from .locate import validate

    _scheme, corpus, _langs = validate(config)
    shell = model_shell(config.model, dtype=config.dtype, device=config.device, log=log)
    inputs = load_inputs(config.runtime, corpus, config.selection, config.eval, lm=shell.lm, log=log)  # type: ignore[arg-type]  # a LoadedModel on the meta device
    configs, bases = locate_configs(config, shell.modmap)
    work = sweep_work(
        shell.modmap,
        inputs.prepared,
        configs,
        bases,
        config.reuse,
        config.eval.batch_tokens,
        config.eval.score_rows,
        replay_possible(shell.lm.model),  # type: ignore[attr-defined]  # a LoadedModel
    )
    return estimate_model(shell, work, dtype=config.dtype, target=target, log=log, recalibrate=recalibrate)


def run_job(
    spec_path,
    out_dir=None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    target: str = "cpu",
    log: Callable[[str], None] = lambda m: None,
    recalibrate: bool = False,
) -> tuple[list[ModelEstimate], list[str]]:
    """The estimate of ``quant-disparity run SPEC``: per model, the trials the store still lacks."""
    from .experiments import STORE_NAME, default_out
    from .experiments.batches import MAX_CONFIGS_PER_SWEEP, pick_bases
    from .experiments.planning import plan_model
    from .experiments.spec import load_spec
    from .experiments.store import Store

    spec = load_spec(spec_path)
    out = Path(out_dir) if out_dir else default_out(spec)
    store = Store(out / STORE_NAME, readonly=True) if (out / STORE_NAME).exists() else None
    lines = [f"spec {spec.name}: {len(spec.trials)} trials over {len(spec.models)} models"]
    if spec.tasks:
        lines.append(
            f"tasks {', '.join(spec.tasks)} run on every trial after its bits per byte: not included in the estimate"
        )
    estimates = []
    try:
        for model in spec.models:
            trials = [t for t in spec.trials if t.model == model]
            shell = model_shell(model, dtype=dtype, device=device, config_path=spec.model_configs.get(model), log=log)
            mp = plan_model(spec, model, trials, None, lm=shell.lm, device=device, dtype=dtype, modmap=shell.modmap)  # type: ignore[arg-type]  # a LoadedModel on the meta device
            todo: dict[str, dict] = {}
            for t in trials:
                info = mp.trials[t.name]
                if store is not None and store.trial_status(info["key"]) == "done":
                    continue
                todo.setdefault(info["key"], info["assignment"])
            stored = len(trials) - sum(1 for t in trials if mp.trials[t.name]["key"] in todo)
            lines.append(f"{model}: {len(todo)} trials to compute, {stored} already stored in {out}")
            names = list(todo)
            parts = []
            for start in range(0, max(1, len(names)), MAX_CONFIGS_PER_SWEEP):
                group = {n: todo[n] for n in names[start : start + MAX_CONFIGS_PER_SWEEP]}
                parts.append(
                    sweep_work(
                        mp.modmap,
                        mp.prepared,
                        group,
                        pick_bases(group),
                        True,
                        spec.eval.batch_tokens,
                        spec.eval.score_rows,
                        replay_possible(shell.lm.model),  # type: ignore[attr-defined]  # a LoadedModel
                    )
                )
            if len(parts) > 1:  # one engine serves every sweep of a model: its cache holds the union
                union = sweep_work(mp.modmap, mp.prepared, todo, [], False, 1, 1)
                parts[0].quantized_elements = union.quantized_elements
                parts[0].cache_elements = union.cache_elements
                parts[0].largest_quantized = union.largest_quantized
            if shell.lm.info.source in ("config", "hf-hub"):  # type: ignore[attr-defined]  # a LoadedModel
                shell.notes.append("trial keys need the downloaded weights' commit: stored trials are not subtracted")
            work = merge_work(parts)
            estimates.append(estimate_model(shell, work, dtype=dtype, target=target, log=log, recalibrate=recalibrate))
    finally:
        if store is not None:
            store.close()
    return estimates, lines


def precheck(
    model: str,
    *,
    dtype: str,
    device: str,
    force: bool,
    jobs: Callable[[object], list[tuple[dict, list[str], bool]]],
    batch_tokens: int,
    score_rows: int,
    window: int,
    config_path: str | None = None,
) -> str | None:
    """Before a real run loads anything: refuse (one line) a job predicted not to fit in the memory there is.

    ``jobs(modmap)`` gives the sweeps the run will make (configurations, bases, reuse). The libraries already
    loaded in this process are not counted again; the documents are not read (a batch's worth of activations
    is what they add). Returns a warning line when ``force`` lets a job that does not fit go on.
    """
    try:
        shell = model_shell(model, dtype=dtype, device=device, config_path=config_path, tokenizer=False)
    except UserError:
        return None  # a config that cannot be read here: loading the model reports its own error
    seq = min(window, shell.lm.info.max_length)  # type: ignore[attr-defined]  # a LoadedModel
    parts, every = [], {}
    for i, (configs, bases, reuse) in enumerate(jobs(shell.modmap)):
        parts.append(_shape_only_work(shell.modmap, configs, bases, reuse, batch_tokens, score_rows, seq))
        every.update({(i, name): a for name, a in configs.items()})
    work = merge_work(parts)
    union = _shape_only_work(shell.modmap, every, [], False, batch_tokens, score_rows, seq)
    work.quantized_elements = union.quantized_elements  # one engine, one cache, all sweeps
    work.cache_elements = union.cache_elements
    mode = predicted_mode(shell.shape.n_params * _bytes(dtype), available_memory(device))
    mem = memory_terms(shell.shape, work, dtype, shell.stored_dtype, 0, mode)
    return check_fits(mem["peak"], 0, device, fix_hint(dtype), force)


def _shape_only_work(modmap, configs, bases, reuse, batch_tokens, score_rows, seq) -> Work:
    class _NoDocs:
        docs: list = []
        batches: list = []
        total_pred = 0

    w = sweep_work(modmap, _NoDocs(), configs, bases, reuse, batch_tokens, score_rows)
    w.max_seq = seq
    return w


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


__all__ = [
    "GPU_PEAKS",
    "GPU_UTILIZATION",
    "ModelEstimate",
    "Shape",
    "Shell",
    "Work",
    "available_memory",
    "calibration",
    "check_fits",
    "estimate_model",
    "gpu_profile",
    "memory_terms",
    "model_shell",
    "summary_lines",
    "sweep_work",
]
