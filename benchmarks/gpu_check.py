"""GPU readiness: CPU vs CUDA bits per byte, evaluation throughput vs the device's bf16 peak, a locate sweep,
peak GPU memory, and every CUDA-only branch of the code exercised once. Under 10 minutes on one data-centre GPU.

    python benchmarks/gpu_check.py [--model gemma-3-270m] [--peak-tflops 989] [--out results/gpu_check.json]

Without a CUDA device it exits with status 2 and one line. The default model is used when it can be loaded;
where it cannot (a GPU machine without the bundled GGUF package), a model of the default model's shape
(Gemma 3 270M: 18 layers, hidden 640, MLP 2048, 4 query / 1 key-value heads of 256, vocabulary 262,144, tied
head) is built with random weights and a byte-level BPE tokenizer trained on the bundled UDHR texts; the output
says which. CPU-vs-CUDA agreement and throughput do not depend on the weights being trained.

Steps (each recorded as ok / skipped / error, exit status 1 if any errored):

1. ``audit`` on the CPU in float32 and on CUDA in float32 and bfloat16: per-language reference and quantized
   bits per byte, relative differences CUDA vs CPU.
2. throughput: a larger bfloat16 audit on CUDA; model FLOPs per scored token (2 x matrix weights incl. the
   output head, times 2: reference and quantized pass) x tokens / evaluation seconds, as a share of the
   device's dense bf16 matrix peak (:data:`PEAK_TFLOPS` by device name, else ``--peak-tflops``). Scored
   tokens only (context tokens re-run in later windows are not counted), so the share is a lower bound.
3. ``locate`` sweep (per-layer protect-one) on CUDA in bfloat16, with the engine's lean and fast modes; peak GPU
   memory (``torch.cuda.max_memory_allocated``) of each as a ratio to the bf16 weights.
4. the engine's ``auto`` mode on CUDA (reads the driver's free memory).
5. a GGUF-type scheme (``gguf:q8_0``) quantized for CUDA tensors (needs the ``gguf`` package).
6. ``run`` of a two-trial spec with ``--device cuda`` (local executor; Ray executor when ``ray`` is installed).
7. audit ``--tasks cloze,generate`` and ``inspect`` (super weights, outliers) on CUDA.

CUDA-only branches in the code (``grep -rn cuda src``) and the step that reaches each:

- ``models/loading.py`` ``parse_device``: ``cuda`` accepted when ``torch.cuda.is_available()``; then
  ``_prepared_model`` moves the weights to the GPU (steps 1-7).
- ``quant/engine.py`` ``_available_bytes``: ``torch.cuda.mem_get_info`` behind ``engine_for``'s auto mode
  (step 4; also every audit and locate on CUDA, whose default mode is auto).
- ``models/originals.py`` ``CheckpointOriginals.read``: an original re-read from the checkpoint onto the GPU
  (lean engine, step 3).
- ``quant/backends/gguf.py``: a CUDA weight copied to the CPU for the GGUF kernels and back (step 5).
- ``provenance.py`` ``environment``: ``torch.version.cuda`` recorded with every result (steps 1-7).
- ``experiments/planning.py`` (the device in trial keys) and ``experiments/executors.py`` (Ray workers ask for
  ``num_gpus=1`` when the device is ``cuda``) (step 6).
- device-following code with no branch of its own: ``evaluate/forward.py`` (``pack_batch`` to the model's
  device, the replay probe), ``evaluate/scoring.py``, ``models/modules.py`` (execution-order probe),
  ``tasks/generate.py``, ``inspect/command.py`` (steps 1-3, 7).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

#: Dense bf16 matrix (tensor-core) peak in TFLOP/s, without sparsity, by a substring of the device name.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}

LANGS = ["eng_Latn", "heb_Hebr", "cmn_Hans", "amh_Ethi"]
GiB = 2**30


def no_gpu_exit() -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU")
        sys.exit(2)


def peak_of(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "L40S" before "L4", "A10G" before "A10"
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def random_default_model(where: Path) -> Path:
    """A model of the default model's shape with random weights, and a BPE tokenizer, saved in ``where``."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from quant_disparity.corpus import load_udhr

    corpus = load_udhr()
    texts = [d.text for lang in LANGS for d in corpus.documents(lang)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    cfg = T.Gemma3TextConfig(
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=32768,
        sliding_window=512,
        query_pre_attn_scalar=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where


class Steps:
    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn, *args, **kw) -> dict | None:
        t = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            out = fn(*args, **kw)
        except Exception as e:  # a check reports what failed and goes on with the next
            self.results[name] = {
                "status": "error",
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(),
            }
            print(f"[{name}] ERROR {type(e).__name__}: {e}", flush=True)
            return None
        out = out or {}
        out.setdefault("status", "ok")
        out["seconds"] = round(time.perf_counter() - t, 1)
        self.results[name] = out
        print(f"[{name}] {out['status']} ({out['seconds']} s): {summary_line(out)}", flush=True)
        return out


def summary_line(out: dict) -> str:
    keep = {
        k: v
        for k, v in out.items()
        if k not in ("status", "seconds", "per_language", "trace") and not isinstance(v, dict)
    }
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def audit_bpb(model: str, device: str, dtype: str, max_tokens: int, **kw) -> tuple[dict, dict]:
    from quant_disparity.audit import run_audit
    from quant_disparity.config import AuditConfig

    cfg = AuditConfig(
        model=model, langs=tuple(LANGS), max_tokens=max_tokens, n_boot=200, device=device, dtype=dtype, **kw
    )
    d = run_audit(cfg).to_dict()
    return {r["id"]: (r["bpb_fp"]["value"], r["bpb_q"]["value"]) for r in d["languages"]}, d


def gpu_peak(fn):
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the bundled default model, else a random one of its shape")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per language of the agreement audits")
    ap.add_argument("--throughput-tokens", type=int, default=8192, help="tokens per language of the throughput audit")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_check.json")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: exercise the script without a GPU
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        no_gpu_exit()
    import torch

    from quant_disparity.models import DEFAULT_MODEL, resolve_source
    from quant_disparity.provenance import environment

    on_gpu = args.device.startswith("cuda")
    dev_name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = peak_of(dev_name, args.peak_tflops)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("QUANT_DISPARITY_CACHE", str(work / "cache"))
    steps = Steps()
    spec = args.model or DEFAULT_MODEL
    model_note = spec
    try:
        model = resolve_source(spec, log=lambda m: print(m, flush=True)).path
    except Exception as e:  # not installed here (e.g. no bundled GGUF package on the GPU machine)
        if args.model:
            raise
        print(f"{spec} cannot be loaded here ({type(e).__name__}); building a random model of its shape", flush=True)
        model = str(random_default_model(work / "random-default"))
        model_note = f"random weights of {spec}'s shape"
    dev = args.device

    # 1. CPU vs CUDA bits per byte
    def agreement() -> dict:
        cpu, _ = audit_bpb(model, "cpu", "float32", args.tokens)
        g32, d = audit_bpb(model, dev, "float32", args.tokens)
        g16, _ = audit_bpb(model, dev, "bfloat16", args.tokens)
        per = {
            lang: {
                "cpu_fp32": cpu[lang],
                "cuda_fp32": g32[lang],
                "cuda_bf16": g16[lang],
                "rel_fp32": [g32[lang][i] / cpu[lang][i] - 1 for i in (0, 1)],
                "rel_bf16": [g16[lang][i] / cpu[lang][i] - 1 for i in (0, 1)],
            }
            for lang in cpu
        }
        return {
            "max_rel_diff_fp32": max(abs(x) for p in per.values() for x in p["rel_fp32"]),
            "max_rel_diff_bf16_vs_cpu_fp32": max(abs(x) for p in per.values() for x in p["rel_bf16"]),
            "environment_cuda": d["environment"].get("cuda"),
            "per_language": per,
        }

    steps.run("cpu_vs_cuda_bpb", agreement)

    # 2. throughput
    def throughput() -> dict:
        from quant_disparity.models import load_model
        from quant_disparity.models.modules import build_module_map

        lm = load_model(model, device=dev, dtype="bfloat16", log=lambda m: None)
        modmap = build_module_map(lm.model)
        mats = sum(p.numel for p in modmap.params if p.role == "matrix")
        head = lm.model.get_output_embeddings().weight
        head_in_map = any(lm.model.get_parameter(p.name) is head for p in modmap.params if p.role == "matrix")
        flops_per_token = 2 * (mats + (0 if head_in_map else head.numel()))
        weight_bytes = sum(p.numel() * p.element_size() for p in {id(q): q for q in lm.model.parameters()}.values())
        del lm
        if on_gpu:
            torch.cuda.empty_cache()
        from quant_disparity.evaluate import EvalSettings

        settings = EvalSettings(batch_tokens=16384)
        run = lambda: audit_bpb(model, dev, "bfloat16", args.throughput_tokens, eval=settings)[1]
        if on_gpu:
            d, peak_bytes = gpu_peak(run)
        else:
            d, peak_bytes = run(), 0
        tokens, secs = d["timing"]["predicted_tokens"], d["timing"]["evaluate_s"]
        achieved = 2 * flops_per_token * tokens / secs / 1e12  # reference and quantized pass
        return {
            "device": dev_name,
            "predicted_tokens": tokens,
            "evaluate_s": secs,
            "tokens_per_s": tokens / secs,
            "model_tflops_per_s": achieved,
            "peak_tflops_bf16": peak,
            "share_of_peak": achieved / peak if peak else None,
            "peak_gpu_bytes": peak_bytes,
            "bf16_weight_bytes": weight_bytes,
            "peak_gpu_over_weights": peak_bytes / weight_bytes,
        }

    thr = steps.run("throughput_bf16", throughput)
    weight_bytes = thr["bf16_weight_bytes"] if thr else None

    # 3. locate sweep, lean and fast engine
    def locate(mode: str) -> dict:
        from quant_disparity.locate import LocateConfig, run_locate

        os.environ["QUANT_DISPARITY_MEMORY"] = mode
        try:
            cfg = LocateConfig(
                model=model, langs=tuple(LANGS), max_tokens=256, n_boot=200, device=dev, dtype="bfloat16"
            )
            if on_gpu:
                d, peak_bytes = gpu_peak(lambda: run_locate(cfg).to_dict())
            else:
                d, peak_bytes = run_locate(cfg).to_dict(), 0
        finally:
            os.environ.pop("QUANT_DISPARITY_MEMORY", None)
        out = {"configurations": d["timing"]["configurations"], "peak_gpu_bytes": peak_bytes}
        if weight_bytes:
            out["peak_gpu_over_weights"] = peak_bytes / weight_bytes
        out["results"] = json.dumps(d["results"], sort_keys=True)  # every configuration's numbers, per language
        return out

    lean = steps.run("locate_bf16_lean", locate, "lean")
    fast = steps.run("locate_bf16_fast", locate, "fast")
    if lean and fast:
        same = lean.pop("results") == fast.pop("results")
        steps.results["locate_lean_equals_fast"] = {"status": "ok" if same else "error", "identical_results": same}

    # 4. engine auto mode on CUDA
    def auto_engine() -> dict:
        from quant_disparity.models import load_model
        from quant_disparity.models.modules import build_module_map
        from quant_disparity.quant import engine_for
        from quant_disparity.quant.engine import _available_bytes

        lm = load_model(model, device=dev, dtype="bfloat16", log=lambda m: None)
        engine = engine_for(lm, build_module_map(lm.model), "auto")
        free = _available_bytes(next(lm.model.parameters()).device)
        return {"mode": engine.mode, "free_bytes": free}

    steps.run("engine_auto", auto_engine)

    # 5. a GGUF-type scheme on CUDA tensors
    def gguf_scheme() -> dict:
        try:
            import gguf  # noqa: F401
        except ImportError:
            return {"status": "skipped", "why": "the gguf package is not installed"}
        from quant_disparity.quant import parse_scheme

        w = torch.randn(64, 256, device=dev)
        q = parse_scheme("gguf:q8_0").fake_quantize(w)
        return {"device": str(q.device), "max_abs_err": float((q - w).abs().max())}

    steps.run("gguf_scheme_on_device", gguf_scheme)

    # 6. run --device cuda (local, and Ray when installed)
    def run_spec(executor: str) -> dict:
        from quant_disparity.experiments import run_experiment

        if executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                return {"status": "skipped", "why": "ray is not installed"}
        spec_path = work / f"spec-{executor}.toml"
        spec_path.write_text(
            f"""
name = "gpu-check-{executor}"
description = "two trials on the device"
n_boot = 200

[corpus]
name = "udhr"
split = "all"
langs = ["eng", "heb"]
max_tokens = 256

[grid]
models = ["{model}"]
schemes = ["w4g128"]
[grid.plans]
all = "{{scheme}}:*"
ends = "keep:layer:0,layer:-1; {{scheme}}:*"
""",
            encoding="utf-8",
        )
        s = run_experiment(spec_path, work / f"run-{executor}", executor=executor, device=dev, dtype="bfloat16")
        return {"computed": s.get("computed")}

    steps.run("run_local", run_spec, "local")
    steps.run("run_ray", run_spec, "ray")

    # 7. tasks and inspect on CUDA
    def tasks_and_inspect() -> dict:
        from quant_disparity.audit import run_audit_with_tasks
        from quant_disparity.config import AuditConfig
        from quant_disparity.inspect.command import outliers, super_weights
        from quant_disparity.models import load_model
        from quant_disparity.tasks import TaskSettings

        cfg = AuditConfig(model=model, langs=("eng", "heb"), max_tokens=256, n_boot=200, device=dev, dtype="bfloat16")
        d = run_audit_with_tasks(cfg, "cloze,generate", TaskSettings(gen_tokens=8))
        lm = load_model(model, device=dev, dtype="bfloat16", log=lambda m: None)
        sw = super_weights(lm)
        ol = outliers(lm)
        return {
            "tasks": ",".join(sorted(d.get("tasks", {}))),
            "super_weights": len(sw.super_weights),
            "outlier_keys": len(ol),
        }

    steps.run("tasks_and_inspect", tasks_and_inspect)

    total = round(time.perf_counter() - t0, 1)
    result = {
        "benchmark": "gpu_check",
        "device": dev_name,
        "model": model_note,
        "total_s": total,
        "environment": environment(),
        "steps": steps.results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    failed = [n for n, r in steps.results.items() if r.get("status") == "error"]
    print(
        f"gpu_check: {len(steps.results) - len(failed)} of {len(steps.results)} steps ok in {total} s; wrote {args.out}"
    )
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
