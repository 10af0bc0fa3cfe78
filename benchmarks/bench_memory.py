"""Peak memory of an audit vs the fp32 weight bytes plus the corpus (target: at most 2.2x).

Runs an audit in a child process exactly as ``quant-disparity audit`` does (the audit loads the model itself)
and reads the child's peak resident set size (``VmHWM``), which includes the libraries, the tokenizer and
the weights' pages. The child also reports the resident size of the bare interpreter with torch and
transformers imported, so the part that is the libraries' and not the audit's can be seen.

    python benchmarks/bench_memory.py [--model gemma-3-270m] [--max-tokens 2048]

With ``--bf16`` it runs the bfloat16 study instead (``results/memory-bf16-<model>.json``): an audit and a
per-layer locate sweep in bfloat16, each in its own child process, in the engine's lean mode (originals re-read
from the checkpoint, nothing cached) and for comparison its fast mode, plus the same audit in float32. Each
child loads the model, records its peak resident size, resets the peak (``/proc/self/clear_refs``) and runs
the job, so the load and the run each have their own peak; the run's ratio to the weights' bytes is
``(job peak - resident size of the interpreter with torch and transformers) / weight bytes`` (goal for
bfloat16: at most 1.3 plus activations), and ``job_over_weights`` is what the job added to the loaded model. The
bits-per-byte agreement is the bfloat16 audit's reference and quantized bpb against the float32 audit's, per
language: a bfloat16 reference is a different reference, and this says how different.

    python benchmarks/bench_memory.py --bf16 --model smollm2-135m

The goal is about models whose weights dominate the memory; on the bundled models (135M and 270M parameters)
the activations, the 49k/262k-entry output layer and the libraries outweigh them. ``--synthetic llama-1b`` builds
a randomly initialised checkpoint of TinyLlama-1.1B's published shape (vocabulary set to SmolLM2's tokenizer,
whose tokenizer it uses), written in bfloat16 as 1 GB safetensors shards, and runs the bfloat16 runs on it
(``--runs`` chooses them). Random weights measure memory only: their bits per byte mean nothing and are not
reported as a result.

    python benchmarks/bench_memory.py --bf16 --synthetic llama-1b --runs audit-bfloat16-lean,locate-bfloat16-lean

``VmHWM`` counts the checkpoint's memory-mapped pages, which are clean and which the kernel takes back when it
needs the memory (a tensor that the engine replaces is not read again until a restore re-reads it). So each child
also samples its anonymous memory (``RssAnon``, every 5 ms) — ``anon_above_libraries_over_weights`` — and
``--limit-over-weights R`` runs each job once more inside a memory cgroup capped at the libraries + R x the
weights + ``--limit-extra-gib`` (page cache dropped first, so the capped job's reads are charged to it), and
records whether it completes: the cap, not a reading, says whether the job fits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from common import peak_rss_bytes
import torch, transformers  # noqa: F401
base = peak_rss_bytes()
from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
cfg = AuditConfig(**json.loads(sys.argv[1]))
r = run_audit(cfg)  # as the CLI runs it: the audit loads the model itself
weights = r.model["n_params"] * 4
corpus = sum(row["n_bytes"] for row in r.to_dict()["languages"])
peak = peak_rss_bytes()
print(json.dumps({"peak_rss": peak, "baseline_rss": base, "fp32_weight_bytes": weights, "corpus_bytes": corpus,
                  "predicted_tokens": r.timing["predicted_tokens"]}))
"""


STUDY_CHILD = r"""
import json, os, sys, time
from pathlib import Path
job = json.loads(sys.argv[1])
os.environ["QUANT_DISPARITY_MEMORY"] = job["memory"]
sys.path.insert(0, sys.argv[2])
from common import peak_rss_bytes
import torch, transformers  # noqa: F401
def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
def rss():
    return status("VmRSS")
import threading
anon_peak = [0]
def sample():  # the peak of anonymous memory (VmHWM also counts the checkpoint's clean, reclaimable file pages)
    while True:
        anon_peak[0] = max(anon_peak[0], status("RssAnon"))
        time.sleep(0.005)
base = peak_rss_bytes()
base_anon = status("RssAnon")
from quant_disparity.models import load_model
cfg = job["config"]
lm = load_model(cfg["model"], dtype=cfg["dtype"], log=lambda m: None)
load_peak = peak_rss_bytes()
params = {id(p): p for p in lm.model.parameters()}
weights = sum(p.numel() * p.element_size() for p in params.values())
Path("/proc/self/clear_refs").write_text("5")  # reset the peak: the job's own from here
before = rss()
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
if job["kind"] == "audit":
    from quant_disparity.audit import run_audit
    from quant_disparity.config import AuditConfig
    d = run_audit(AuditConfig(**cfg), lm=lm).to_dict()
    extra = {"bpb": {r["id"]: [r["bpb_fp"]["value"], r["bpb_q"]["value"]] for r in d["languages"]},
             "predicted_tokens": d["timing"]["predicted_tokens"]}
else:
    from quant_disparity.locate import LocateConfig, run_locate
    d = run_locate(LocateConfig(**cfg), lm=lm).to_dict()
    extra = {"configurations": d["timing"]["configurations"]}
seconds = time.perf_counter() - t
print(json.dumps({"baseline_rss": base, "load_peak_rss": load_peak, "rss_before_job": before,
                  "job_peak_rss": peak_rss_bytes(), "weight_bytes": weights, "seconds": round(seconds, 1),
                  "baseline_anon": base_anon, "job_peak_anon_sampled": max(anon_peak[0], status("RssAnon")),
                  "engine": job["memory"], **extra}))
"""


CGROUP = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller (v2: memory.max; not used here)


def _child(job: dict, limit: int | None = None) -> dict:
    """Run ``job`` in a fresh interpreter; with ``limit``, inside a new memory cgroup capped at ``limit`` bytes
    (the kernel reclaims page cache to stay under it and kills the job when anonymous memory alone exceeds it:
    there is no swap on the machines this runs on)."""
    argv = [sys.executable, "-c", STUDY_CHILD, json.dumps(job), str(Path(__file__).resolve().parent)]
    if limit is None:
        out = subprocess.run(argv, check=True, capture_output=True, text=True)
    else:
        group = CGROUP / f"bench-memory-{os.getpid()}"
        group.mkdir()
        try:
            (group / "memory.limit_in_bytes").write_text(str(limit))
            # the checkpoint's pages already cached were charged to whoever read them first: drop them, so the
            # capped job's own reads are charged to it
            Path("/proc/sys/vm/drop_caches").write_text("1")
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
            )
            verdict = {
                "limit_bytes": limit,
                "completed": proc.returncode == 0,
                "returncode": proc.returncode,
                "cgroup_max_usage_bytes": int((group / "memory.max_usage_in_bytes").read_text()),
                "cgroup_failcnt": int((group / "memory.failcnt").read_text()),
            }
        finally:
            group.rmdir()
        if proc.returncode != 0:
            return {"limited": verdict}
        out = proc
    m = json.loads(out.stdout.strip().splitlines()[-1])
    if limit is not None:
        m["limited"] = verdict
    m["job_over_weights"] = (m["job_peak_rss"] - m["rss_before_job"]) / m["weight_bytes"]
    m["peak_above_libraries_over_weights"] = (m["job_peak_rss"] - m["baseline_rss"]) / m["weight_bytes"]
    m["job_peak_over_weights"] = m["job_peak_rss"] / m["weight_bytes"]
    m["anon_above_libraries_over_weights"] = (m["job_peak_anon_sampled"] - m["baseline_anon"]) / m["weight_bytes"]
    return m


# Published shapes (config.json of the named model); the vocabulary is SmolLM2's so its tokenizer can be used.
SYNTHETIC = {
    "llama-1b": {  # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}

SYNTHETIC_CHILD = r"""
import json, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from quant_disparity.models.loading import load_tokenizer
shape, out = json.loads(sys.argv[1]), sys.argv[2]
tok = load_tokenizer("smollm2-135m")
cfg = AutoConfig.for_model(**shape, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
model = AutoModelForCausalLM.from_config(cfg)
model.save_pretrained(out, max_shard_size="1GB")
tok.save_pretrained(out)
"""


def synthetic_checkpoint(name: str, directory: Path) -> Path:
    """A random checkpoint of ``SYNTHETIC[name]``'s shape in ``directory`` (made in a child: its memory is gone
    before the measured children start)."""
    out = directory / name
    subprocess.run([sys.executable, "-c", SYNTHETIC_CHILD, json.dumps(SYNTHETIC[name]), str(out)], check=True)
    return out


def bf16_study(args) -> None:
    if args.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            args.model = str(synthetic_checkpoint(args.synthetic, Path(tmp)))
            _bf16_study(args, name=f"synthetic-{args.synthetic}")
    else:
        _bf16_study(args, name=args.model)


def _bf16_study(args, name: str) -> None:
    langs = ["eng_Latn", "heb_Hebr", "cmn_Hans", "amh_Ethi"]
    audit = {"model": args.model, "langs": langs, "max_tokens": args.max_tokens, "n_boot": 200}
    locate = {"model": args.model, "langs": langs, "max_tokens": args.locate_tokens, "n_boot": 200}
    runs = {
        "audit-float32-fast": ("audit", {**audit, "dtype": "float32"}, "fast"),
        "audit-bfloat16-fast": ("audit", {**audit, "dtype": "bfloat16"}, "fast"),
        "audit-bfloat16-lean": ("audit", {**audit, "dtype": "bfloat16"}, "lean"),
        "locate-bfloat16-lean": ("locate", {**locate, "dtype": "bfloat16"}, "lean"),
        "locate-bfloat16-fast": ("locate", {**locate, "dtype": "bfloat16"}, "fast"),
    }
    chosen = args.runs.split(",") if args.runs else list(runs)
    unknown = sorted(set(chosen) - set(runs))
    if unknown:
        raise SystemExit(f"bench_memory.py: unknown run(s) {', '.join(unknown)}; choose from {', '.join(runs)}")
    got = {}
    for run in chosen:
        kind, cfg, mode = runs[run]
        got[run] = m = _child({"kind": kind, "config": cfg, "memory": mode})
        print(
            f"{run}: job peak {m['job_peak_rss'] / 2**30:.2f} GiB = libraries {m['baseline_rss'] / 2**30:.2f} GiB + "
            f"{m['peak_above_libraries_over_weights']:.2f}x the {m['weight_bytes'] / 2**30:.2f} GiB weights "
            f"(beyond the loaded model: {m['job_over_weights']:.2f}x); anonymous memory "
            f"{m['anon_above_libraries_over_weights']:.2f}x the weights; load peak "
            f"{m['load_peak_rss'] / 2**30:.2f} GiB; {m['seconds']} s",
            flush=True,
        )
        if args.limit_over_weights:
            limit = int(m["baseline_rss"] + args.limit_over_weights * m["weight_bytes"] + args.limit_extra_gib * 2**30)
            lim = _child({"kind": kind, "config": cfg, "memory": mode}, limit)["limited"]
            m["limited"] = lim
            print(
                f"{run} under a {limit / 2**30:.2f} GiB memory cgroup (libraries + {args.limit_over_weights}x the "
                f"weights + {args.limit_extra_gib} GiB): {'completed' if lim['completed'] else 'KILLED'} "
                f"(exit {lim['returncode']}; cgroup peak {lim['cgroup_max_usage_bytes'] / 2**30:.2f} GiB, "
                f"{lim['cgroup_failcnt']} times at the limit)",
                flush=True,
            )
        save(f"memory-bf16-{name}", {"model": name, "runs": got, "complete": False})  # so far
    peaks = {f"{run.replace('-', '_')}_peak_over_weights": got[run]["peak_above_libraries_over_weights"] for run in got}
    if args.synthetic or not {"audit-float32-fast", "audit-bfloat16-lean"} <= set(got):
        if args.synthetic:
            for m in got.values():
                m.pop("bpb", None)  # random weights: memory only
        path = save(
            f"memory-bf16-{name}",
            {"model": name, "shape": SYNTHETIC.get(args.synthetic or ""), "complete": True, "runs": got, **peaks},
        )
        print(f"wrote {path}")
        return
    fp, bf = got["audit-float32-fast"]["bpb"], got["audit-bfloat16-lean"]["bpb"]
    agreement = {
        lang: {
            "bpb_fp32": fp[lang][0],
            "bpb_bf16": bf[lang][0],
            "rel_diff_reference": bf[lang][0] / fp[lang][0] - 1,
            "rel_diff_quantized": bf[lang][1] / fp[lang][1] - 1,
            "delta_bpb_fp32": fp[lang][1] - fp[lang][0],
            "delta_bpb_bf16": bf[lang][1] - bf[lang][0],
        }
        for lang in fp
    }
    result = {
        "model": name,
        "complete": True,
        "runs": got,
        "bpb_agreement_bf16_vs_fp32": agreement,
        "max_abs_rel_diff_reference": max(abs(a["rel_diff_reference"]) for a in agreement.values()),
        **peaks,
    }
    path = save(f"memory-bf16-{name}", result)
    for lang, a in agreement.items():
        print(
            f"{lang}: bpb fp32 {a['bpb_fp32']:.4f}, bf16 {a['bpb_bf16']:.4f} ({100 * a['rel_diff_reference']:+.2f} %); "
            f"delta bpb fp32 {a['delta_bpb_fp32']:+.4f}, bf16 {a['delta_bpb_bf16']:+.4f}"
        )
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--bf16", action="store_true", help="run the bfloat16 study (see the module docstring)")
    ap.add_argument("--locate-tokens", type=int, default=256, help="tokens per language of the --bf16 locate sweep")
    ap.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="--bf16 on a random checkpoint of this shape")
    ap.add_argument("--runs", help="--bf16: comma-separated runs to do (default all)")
    ap.add_argument(
        "--limit-over-weights",
        type=float,
        help="--bf16: run each job again inside a memory cgroup capped at libraries + this x the weights + "
        "--limit-extra-gib, and record whether it completes (needs cgroup v1's memory controller, as root)",
    )
    ap.add_argument("--limit-extra-gib", type=float, default=0.5, help="activations' allowance of the cap")
    args = ap.parse_args()
    if args.bf16:
        bf16_study(args)
        return
    cfg = {"model": args.model, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cfg), str(Path(__file__).resolve().parent)],
            check=True,
            capture_output=True,
            text=True,
        )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    budget = m["fp32_weight_bytes"] + m["corpus_bytes"]
    result = {
        "model": args.model,
        "config": cfg,
        **m,
        "peak_over_weights_plus_corpus": m["peak_rss"] / budget,
        "peak_minus_baseline_over_weights_plus_corpus": (m["peak_rss"] - m["baseline_rss"]) / budget,
    }
    path = save("memory", result)
    gib = 2**30
    print(f"{args.model}: fp32 weights {m['fp32_weight_bytes'] / gib:.2f} GiB, corpus {m['corpus_bytes'] / 1e3:.0f} kB")
    print(
        f"peak RSS {m['peak_rss'] / gib:.2f} GiB = {result['peak_over_weights_plus_corpus']:.2f}x (target <= 2.2x); "
        f"interpreter + torch + transformers alone {m['baseline_rss'] / gib:.2f} GiB"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
