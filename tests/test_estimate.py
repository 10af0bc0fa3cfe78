"""Estimates before a job: --dry-run loads no weights, its counts and memory are checked against real runs.

Peak memory is measured in a fresh interpreter per run (its own ``ru_maxrss``), never timed; the tolerance is
stated in :data:`MEMORY_TOLERANCE`. Parameter counts are checked against the counts of the architectures'
published formulas, computed here by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
#: Predicted peak within this share of the measured one (either way). Peak memory includes the allocator's
#: slack and the libraries' pages, which vary by a few tens of MiB across machines; the prediction is meant
#: to tell a job that fits from one that does not, not the last MiB.
MEMORY_TOLERANCE = 0.25

LLAMA_7B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def _llama_params(c: dict) -> int:
    """Llama: embeddings and head (untied), per layer q/o (h x h), k/v (h x kv*hd), gate/up/down, two norms."""
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 2 * v * h + n * per_layer + h


@pytest.fixture
def config_dir(tmp_path):
    d = tmp_path / "llama-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA_7B))
    return d


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights is an error: a dry run must not do it."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr("quant_disparity.models.loading.load_model", refuse)


def test_dry_run_of_a_7b_config_reads_only_the_config(config_dir, tmp_path, capsys, no_weights):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["audit", "--model", str(config_dir), "--langs", "eng_Latn,heb_Hebr", "--dry-run", "--out", str(out)], capsys
    )
    assert code == 0, stderr
    assert not out.exists()  # a dry run writes nothing
    assert f"{_llama_params(LLAMA_7B) / 1e9:.3f} B parameters" in stdout  # 6.738 B, as published
    assert "32 layers" in stdout and "vocabulary 32000" in stdout
    assert "tokenizer" in stdout  # no tokenizer in the directory: it says whose counted the tokens
    tokens = int(stdout.split(" documents, ")[1].split(" predicted tokens")[0])
    assert tokens > 100  # counted with the stand-in tokenizer, not an empty one built from the config
    # 6.74 B float32 weights alone are 25.1 GiB; the peak is at least that
    peak = float(stdout.split("predicted peak memory: ")[1].split(" GiB")[0])
    assert peak > _llama_params(LLAMA_7B) * 4 / 1024**3


def test_gpu_estimate_is_labelled_computed_and_checks_the_device(config_dir, capsys, no_weights):
    base = ["audit", "--model", str(config_dir), "--langs", "eng_Latn", "--dry-run", "--dtype", "bfloat16"]
    code, stdout, stderr = run_cli([*base, "--estimate-device", "h100"], capsys)
    assert code == 0, stderr
    assert "computed, not measured" in stdout and "H100" in stdout
    code, _, stderr = run_cli([*base, "--estimate-device", "h1000"], capsys)
    assert code == 2 and "no peak throughput known for device 'h1000'" in stderr and "h100" in stderr
    code, _, stderr = run_cli([*base, "--estimate-device", "v100"], capsys)
    assert code == 2 and "cannot run bfloat16" in stderr
    code, _, stderr = run_cli(base[:-3] + ["--estimate-device", "a100"], capsys)  # no --dry-run
    assert code == 2 and "--estimate-device only applies to --dry-run" in stderr


def test_bad_inputs_of_a_dry_run_are_one_line(tmp_path, capsys, no_weights):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    code, _, stderr = run_cli(["audit", "--model", str(bad), "--dry-run"], capsys)
    assert code == 2 and stderr.count("\n") <= 2 and "cannot read the config" in stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, stderr = run_cli(["locate", "--model", str(broken), "--dry-run"], capsys)
    assert code == 2 and "not valid JSON" in stderr
    code, _, stderr = run_cli(["audit", "--model", "smollm2-135m", "--device", "cuda:7", "--dry-run"], capsys)
    assert code == 2 and "CUDA is not available" in stderr
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "s"\n[corpus]\nlangs = ["eng"]\n[grid]\nmodels = ["smollm2-135m"]\nplans = ["w4g128:*"]\nbogus = 1\n'
    )
    real = run_cli(["run", str(spec)], capsys)
    dry = run_cli(["run", str(spec), "--dry-run"], capsys)
    assert real[0] == dry[0] == 2 and real[2] == dry[2] and "bogus" in dry[2]  # the same line as a real run


def test_recalibrate_measures_this_cpu_again(saved_model, isolated_cache, capsys):
    """A calibration cached on a busy machine makes every later prediction slow: ``--recalibrate`` replaces the
    entries the estimate uses with a new measurement, and is refused where it cannot apply."""
    import datetime

    from quant_disparity.estimate import calibration_path

    base = ["audit", "--model", str(saved_model("llama")), "--langs", "eng_Latn", "--max-tokens", "32", "--dry-run"]
    code, _, stderr = run_cli(base, capsys)
    assert code == 0, stderr
    whole = json.loads(calibration_path().read_text())
    (machine,) = whole["machines"].values()
    (layer,) = [k for k in machine["entries"] if k.startswith("layer|")]
    machine["entries"][layer] = {"s_per_token": 1.0, "s_per_head_entry": 1e-3, "measured": "2000-01-01"}
    calibration_path().write_text(json.dumps(whole))
    code, stdout, _ = run_cli(base, capsys)
    assert code == 0 and "measured 2000-01-01" in stdout  # the cached entry is used as it stands
    before = datetime.date.today().isoformat()
    code, stdout, stderr = run_cli([*base, "--recalibrate"], capsys)
    assert code == 0 and "calibrating: one decoder layer" in stderr and "2000-01-01" not in stdout
    (machine,) = json.loads(calibration_path().read_text())["machines"].values()
    entry = machine["entries"][layer]
    # one second per token would be a 4 kHz CPU: the new entry is a measurement, not the stale value kept
    assert entry["measured"] >= before and entry["s_per_token"] < 0.1
    code, _, stderr = run_cli(base[:-1] + ["--recalibrate"], capsys)  # no --dry-run
    assert code == 2 and stderr.count("\n") == 1 and "--recalibrate only applies to --dry-run" in stderr
    code, _, stderr = run_cli([*base, "--recalibrate", "--estimate-device", "h100"], capsys)
    assert code == 2 and "computed from FLOPs" in stderr


def test_a_job_that_does_not_fit_is_refused_before_loading(saved_model, tmp_path, capsys, monkeypatch):
    import quant_disparity.estimate as est

    d = saved_model("llama")
    monkeypatch.setattr(est, "available_memory", lambda device="cpu": 1024**2)  # 1 MiB left
    out = tmp_path / "out"
    loads = []
    monkeypatch.setattr("quant_disparity.inputs.load_model", lambda *a, **k: loads.append(1) or 1 / 0)
    code, _, stderr = run_cli(["audit", "--model", str(d), "--langs", "eng_Latn", "--out", str(out)], capsys)
    assert code == 2 and not loads and not out.exists()
    assert "does not fit" in stderr and "1.00 MiB" not in stderr and "0.00 GiB is available" in stderr
    assert "--force" in stderr
    code, _, stderr = run_cli(["locate", "--model", str(d), "--langs", "eng_Latn", "--out", str(out)], capsys)
    assert code == 2 and "does not fit" in stderr and not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(est, "available_memory", lambda device="cpu": 1024**2)
    code, _, stderr = run_cli(
        ["audit", "--model", str(d), "--langs", "eng_Latn", "--max-tokens", "64", "--out", str(out), "--force"], capsys
    )
    assert code == 0, stderr
    assert "--force: running anyway" in stderr and (out / "audit.json").exists()


def test_locate_dry_run_counts_the_block_passes_a_real_sweep_runs(saved_model, tmp_path, capsys):
    """The predicted configurations, predicted tokens and decoder-block passes (replay included) against the
    counters of a real sweep on the same inputs."""
    from quant_disparity.estimate import locate_job
    from quant_disparity.locate import LocateConfig, run_locate

    d = saved_model("llama")
    for mode in ("protect-one", "quantize-only"):
        cfg = LocateConfig(model=str(d), langs=("eng_Latn", "heb_Hebr"), max_tokens=64, mode=mode, n_boot=50)
        e = locate_job(cfg)
        real = run_locate(cfg).to_dict()["timing"]
        assert e.work.configurations == real["configurations"]
        assert e.work.predicted_tokens == real["tokens_per_configuration"]
        n = e.shape.n_layers
        # the sweep's counters leave out the reference pass (n blocks); the estimate counts it
        per_token = e.work.block_passes // e.work.padded_tokens
        assert (per_token - n) * e.work.batches == real["blocks_run"]
        full = e.work.block_passes_without_replay // e.work.padded_tokens
        assert (full - n) * e.work.batches == real["blocks_without_replay"]
        if mode == "protect-one":
            assert real["blocks_run"] < real["blocks_without_replay"]  # replay saved something


from quant_disparity.estimate import MEASURE_CHILD as CHILD  # noqa: E402  # reports VmHWM, not ru_maxrss


def _measured_peak(argv: list[str], env_cache: Path) -> int:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, check=False, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


@pytest.mark.parametrize(
    ("command", "dtype"),
    [("audit", "float32"), ("audit", "bfloat16"), ("locate", "float32")],
)
def test_predicted_peak_memory_matches_a_measured_run_of_the_bundled_model(command, dtype, tmp_path):
    """SmolLM2-135M (bundled): the dry run's peak against the peak resident size of the same command run in a
    fresh interpreter (the libraries' resident size is part of both). The locate sweep in bfloat16 and the
    default model are in benchmarks/bench_estimate.py (too slow for the suite on a 2-core CPU)."""
    from quant_disparity.audit import AuditConfig
    from quant_disparity.estimate import audit_job, locate_job
    from quant_disparity.locate import LocateConfig

    langs = ("eng_Latn", "heb_Hebr")
    common = {"model": "smollm2-135m", "langs": langs, "max_tokens": 128, "dtype": dtype}
    if command == "audit":
        predicted = audit_job(AuditConfig(**common)).memory["peak"]
    else:
        predicted = locate_job(LocateConfig(**common, n_boot=50)).memory["peak"]
    argv = [command, "--model", "smollm2-135m", "--langs", ",".join(langs), "--max-tokens", "128"]
    argv += ["--dtype", dtype, "--out", str(tmp_path / "o"), "--n-boot", "50"]
    measured = _measured_peak(argv, tmp_path)
    assert predicted == pytest.approx(measured, rel=MEMORY_TOLERANCE), (predicted / 2**30, measured / 2**30)


def test_the_scale_specs_estimate_offline_from_their_configs(capsys, no_weights):
    """The 7B specs ship their models' configs: a dry run needs neither the Hub nor the weights."""
    specs = sorted((ROOT / "experiments" / "scale").glob("*.toml"))
    assert len(specs) == 3
    for spec in specs:
        code, stdout, stderr = run_cli(["run", str(spec), "--dry-run"], capsys)
        assert code == 0, stderr
        assert "B parameters" in stdout and "predicted peak memory" in stdout
    # Llama-2-7B's published size, from the formula (the shipped config is the NousResearch one)
    cfg = json.loads((ROOT / "experiments" / "scale" / "configs" / "llama-2-7b.json").read_text())
    assert _llama_params(cfg) == 6_738_415_616
