"""Device recorded by the Ray executor, float16 scales of tiny groups, bytes of an unpredicted first token."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_model

from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.corpus import Document
from quant_disparity.evaluate import EvalSettings, prepare, tokenize
from quant_disparity.experiments import executors
from quant_disparity.experiments.planning import plan_model
from quant_disparity.experiments.spec import parse_spec
from quant_disparity.models import wrap_model
from quant_disparity.quant import rtn

pytestmark = pytest.mark.usefixtures("isolated_cache")

SPEC = """
name = "dev"
n_boot = 200
[corpus]
name = "udhr"
split = "all"
langs = ["eng"]
max_tokens = 40
[eval]
window = 64
context = 8
batch_tokens = 128
[grid]
models = ["{model}"]
schemes = ["w4g16"]
[grid.plans]
none = "{{scheme}}:*"
"""


def test_trials_are_keyed_by_the_device_they_are_computed_on(saved_model, tmp_path):
    spec = parse_spec(SPEC.format(model=saved_model("llama")))
    t = spec.trials
    cpu = plan_model(spec, t[0].model, t, None)
    gpu = plan_model(spec, t[0].model, t, None, compute_device="cuda")
    name = t[0].name
    assert cpu.trials[name]["key"] != gpu.trials[name]["key"]
    assert gpu.trials[name]["meta"]["info"]["device"] == "cuda"
    assert cpu.trials[name]["meta"]["info"]["device"] == "cpu"


def test_ray_executor_plans_for_the_device_it_computes_on(saved_model, tmp_path, monkeypatch):
    """The Ray driver plans on its CPU but must key trials for ``--device``: a CUDA row must never be reused as
    a CPU row (nor the reverse)."""
    pytest.importorskip("ray")
    seen = {}

    class Planned(Exception):
        pass

    def fake_plan_model(*args, **kwargs):
        seen.update(kwargs)
        raise Planned

    monkeypatch.setattr(executors, "plan_model", fake_plan_model)
    monkeypatch.setattr(executors, "_remote", lambda device: None, raising=False)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "remote", lambda **kw: lambda fn: fn)
    spec = parse_spec(SPEC.format(model=saved_model("llama")))
    with pytest.raises(Planned):
        executors.run_with_ray(
            spec,
            None,
            {spec.trials[0].model: spec.trials},
            {"already_stored": 0},
            address=None,
            device="cuda",
            dtype="float32",
            log=lambda m: None,
            progress=None,
        )
    assert seen.get("compute_device") == "cuda" and seen.get("device") == "cpu"


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("absmax", [1e-4, 3e-6])
def test_tiny_groups_keep_their_resolution(bits, absmax):
    """Below float16's smallest *normal* number (6.1e-5) scales are subnormal, not clamped: an 8-bit group
    whose absmax is 1e-4 must still get ~8-bit resolution, not a 2-level grid."""
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(4, 64, generator=g) * 2 - 1) * absmax
    w[:, 0] = absmax
    deq = rtn.dequantize(rtn.quantize(w, bits, group_size=32))
    qmax = 2 ** (bits - 1) - 1
    # the exact step of a float64 RTN grid is absmax / qmax; the stored float16 step can only be coarser by
    # rounding up to the next subnormal (2^-24)
    step = absmax / qmax + 2.0**-24
    err = (deq.double() - w.double()).abs().max().item()
    assert err <= step / 2 * (1 + 1e-6)


def _no_prefix_lm(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = None
    tok.eos_token = None
    model = tiny_model("gpt2")
    model.config.bos_token_id = model.config.eos_token_id = None
    return wrap_model(model, tok, name="tiny-gpt2-noprefix")


def test_without_prefix_the_first_tokens_bytes_leave_the_denominator(tokenizer):
    lm = _no_prefix_lm(tokenizer)
    assert lm.prefix_token_id is None
    docs = [
        Document("eng_Latn", "a", "Everyone has the right to life."),
        Document("eng_Latn", "b", "Zebras are striped."),
    ]
    toks = tokenize(lm.tokenizer, docs)
    prep = prepare(docs, toks, None, EvalSettings(window=16, context=2), tokenizer=lm.tokenizer)
    for d, ids, nb in zip(docs, toks, prep.n_bytes):
        first = lm.tokenizer.convert_tokens_to_string(lm.tokenizer.convert_ids_to_tokens(ids[:1]))
        assert d.text.startswith(first) and first  # ASCII text: the first token's text is exact
        assert nb == len(d.text.encode()) - len(first.encode())
    with pytest.raises(ValueError, match="tokenizer"):
        prepare(docs, toks, None, EvalSettings(window=16, context=2))


def test_audit_without_prefix_divides_by_the_predicted_texts_bytes(tokenizer):
    lm = _no_prefix_lm(tokenizer)
    cfg = AuditConfig(
        langs=("eng",), max_tokens=60, n_boot=200, scheme="w4g16", eval=EvalSettings(window=64, context=8)
    )
    r = run_audit(cfg, lm=lm).to_dict()
    docs = r["documents"]
    from quant_disparity.corpus import load_udhr

    texts = {d.id: d.text for d in load_udhr().documents("eng_Latn")}
    for row in docs:
        ids = lm.tokenizer(texts[row["doc_id"]], add_special_tokens=False)["input_ids"]
        first = lm.tokenizer.convert_tokens_to_string(lm.tokenizer.convert_ids_to_tokens(ids[:1]))
        assert row["bytes"] == len(texts[row["doc_id"]].encode()) - len(first.encode())
        assert row["predicted_tokens"] == len(ids) - 1
    lang = r["languages"][0]
    nll = sum(row["nll_fp"] for row in docs)
    assert lang["bpb_fp"]["value"] == pytest.approx(nll / math.log(2) / sum(row["bytes"] for row in docs))


def test_modified_benchmark_results_do_not_make_the_revision_dirty(tmp_path):
    """A benchmark run that has written some results still measures the committed code; a changed source
    file does make the revision dirty."""
    import subprocess

    from quant_disparity.provenance import _revision_of

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)
    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "benchmarks" / "results" / "a.json").write_text("{}")
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD").stdout.strip()
    sub = tmp_path / "src"
    assert _revision_of(sub) == head
    (tmp_path / "benchmarks" / "results" / "a.json").write_text('{"x": 1}')
    assert _revision_of(sub) == head
    (tmp_path / "src" / "m.py").write_text("x = 2\n")
    assert _revision_of(sub) == head + "+dirty"
