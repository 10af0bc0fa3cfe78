"""The audit end to end on a tiny model directory, its config round trip, and every bad CLI input."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli as _run
from golden import reference as ref

from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.evaluate import EvalSettings


@pytest.fixture
def model_dir(saved_model):
    return saved_model("gemma3")


pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_config_round_trips_through_dict_and_toml():
    cfg = AuditConfig(
        scheme="w4g64-asym",
        langs=("he", "en"),
        max_tokens=0,
        include=("lm_head",),
        eval=EvalSettings(window=256, context=32),
    )
    assert AuditConfig.from_dict(cfg.to_dict()) == cfg
    assert AuditConfig.from_toml(cfg.to_toml()) == cfg
    with pytest.raises(Exception, match="unknown field 'schem'"):
        AuditConfig.from_dict({"schem": "w4g128"})


def test_audit_library_call(model_dir):
    cap = 1000  # enough whole articles for intervals (5 documents at least per language)
    cfg = AuditConfig(
        model=str(model_dir),
        langs=("eng", "heb", "amh", "deu"),
        max_tokens=cap,
        n_boot=200,
        scheme="w3g32",
        eval=EvalSettings(window=128, context=16),
    )
    r = run_audit(cfg).to_dict()
    assert r["schema"] == "quant-disparity/audit" and r["schema_version"] == 1
    assert [x["id"] for x in r["languages"]] == ["eng_Latn", "heb_Hebr", "amh_Ethi", "deu_Latn"]
    for row in r["languages"]:
        assert row["n_docs"] >= 5
        lo, hi = row["delta_bpb"]["ci95"]
        assert lo <= row["delta_bpb"]["value"] <= hi
        assert 0 <= row["top1_agreement"]["value"] <= 1 and row["kl_bits"]["value"] > 0
        docs = [d for d in r["documents"] if d["lang"] == row["id"]]
        assert len(docs) == row["n_docs"] and sum(d["bytes"] for d in docs) == row["n_bytes"]
        # whole documents in corpus order until the cap is reached
        assert [d["doc_id"] for d in docs] == [f"a{i:02d}" for i in range(1, len(docs) + 1)]
        assert sum(d["tokens"] for d in docs[:-1]) < cap <= sum(d["tokens"] for d in docs) or len(docs) == 30
    assert r["summary"]["groups"]["assignment"] == {
        "eng_Latn": "high",
        "heb_Hebr": "low",
        "amh_Ethi": "low",
        "deu_Latn": "high",
    }
    assert r["scheme"]["quantized"]["kept_components"] == ["embed.token+lm_head", "norm"]
    assert r["scheme"]["cost"]["bits_per_quantized_weight"] == pytest.approx(3 + 16 / 32)
    assert r["model"]["digest"] and r["corpus"]["digest"] and r["environment"]["libraries"]["torch"]
    _check_against_float64_reference(r, model_dir, cfg, bits=3, group=32)
    # seeded: a rerun gives identical numbers
    again = run_audit(cfg).to_dict()
    assert again["languages"] == r["languages"] and again["summary"] == r["summary"]


def _check_against_float64_reference(r: dict, model_dir, cfg: AuditConfig, bits: int, group: int) -> None:
    """Every number the audit reports per document and per language, recomputed from scratch: the model loaded
    by transformers, quantized by tests/golden/reference.py, each window run alone in float64."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quant_disparity.corpus import load_udhr

    tok = AutoTokenizer.from_pretrained(model_dir)
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    m_ref = fp32.double()
    m_q = ref.quantized_copy(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), bits, group)
    m_q = m_q.double().eval()
    corpus = load_udhr()
    by_doc = {(d["lang"], d["doc_id"]): d for d in r["documents"]}
    for row in r["languages"]:
        docs = corpus.documents(row["id"])
        toks = [list(t) for t in tok([d.text for d in docs], add_special_tokens=False)["input_ids"]]
        k = ref.take_until_tokens([len(t) for t in toks], cfg.max_tokens, cfg.min_docs)
        assert [d["doc_id"] for d in r["documents"] if d["lang"] == row["id"]] == [d.id for d in docs[:k]]
        nll = nll_ref = kl = 0.0
        top1 = n_pred = n_bytes = 0
        for d, t in zip(docs[:k], toks[:k]):
            s = ref.score_document(m_q, m_ref, t, tok.bos_token_id, cfg.eval.window, cfg.eval.context)
            got = by_doc[(row["id"], d.id)]
            assert got["bytes"] == len(d.text.encode("utf-8")) and got["predicted_tokens"] == s.n_pred == len(t)
            assert got["nll_fp"] == pytest.approx(s.nll_ref, rel=1e-5)
            assert got["nll_q"] == pytest.approx(s.nll, rel=1e-5)
            assert got["kl_nats"] == pytest.approx(s.kl, rel=1e-3, abs=1e-6)
            assert abs(got["top1_agree"] - s.top1) <= 1  # a float32 near-tie may flip one argmax
            nll, nll_ref, kl = nll + s.nll, nll_ref + s.nll_ref, kl + s.kl
            top1, n_pred, n_bytes = top1 + s.top1, n_pred + s.n_pred, n_bytes + got["bytes"]
        assert row["n_bytes"] == n_bytes
        assert row["bpb_fp"]["value"] == pytest.approx(ref.bpb(nll_ref, n_bytes), rel=1e-5)
        assert row["bpb_q"]["value"] == pytest.approx(ref.bpb(nll, n_bytes), rel=1e-5)
        # the difference is small next to either bpb: compare it on its own scale
        assert row["delta_bpb"]["value"] == pytest.approx(ref.bpb(nll - nll_ref, n_bytes), rel=1e-4, abs=1e-6)
        assert row["kl_bits"]["value"] == pytest.approx(kl / n_pred / ref.LN2, rel=1e-3)
        assert abs(row["top1_agreement"]["value"] - top1 / n_pred) <= len(by_doc) / n_pred


def test_audit_cli_writes_results_and_refuses_to_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "audit",
        "--model",
        str(model_dir),
        "--langs",
        "eng,heb",
        "--max-tokens",
        "60",
        "--scheme",
        "w4g32",
        "--n-boot",
        "50",
        "--window",
        "128",
        "--out",
        str(out),
    ]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    data = json.loads((out / "audit.json").read_text())
    assert data["config"]["scheme"] == "w4g32" and len(data["languages"]) == 2
    md = (out / "audit.md").read_text()
    assert "| language |" in md and "eng_Latn" in md and "heb_Hebr" in md
    assert "eng_Latn" in stdout
    assert AuditConfig.from_toml((out / "config.toml").read_text()).scheme == "w4g32"
    before = (out / "audit.json").read_bytes()
    code, _, err = _run(argv, capsys)
    assert code == 2 and "already holds audit.json" in err and err.count("\n") == 1
    assert (out / "audit.json").read_bytes() == before
    code, _, _ = _run(argv + ["--overwrite", "--scheme", "w8-channel"], capsys)
    assert code == 0 and json.loads((out / "audit.json").read_text())["config"]["scheme"] == "w8-channel"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scheme", "w4"], "unknown scheme 'w4'"),
        (["--langs", "eng,klingon"], "has no language 'klingon'"),
        (["--model", "gemma-3-27m"], "unknown model 'gemma-3-27m'"),
        (["--max-tokens", "-1"], "--max-tokens must be >= 0"),
        (["--include", "everything"], "unknown --include value"),
        (["--split", "train"], "unknown split 'train'"),
        (["--corpus", "/does/not/exist.jsonl"], "not found"),
        (["--dtype", "int3"], "unknown dtype"),
        (["--window", "1"], "--window must be at least 2"),
        (["--bogus-option"], "No such option"),
        (["--max-tokens", "many"], "not a valid integer"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    out = tmp_path / "never"
    code, stdout, err = _run(["audit", *args, "--out", str(out)], capsys)
    assert code == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_bad_corpus_file_and_unwritable_out(tmp_path, capsys):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"lang": "he", "text": "x"}\n{"lang": "he", "text": ""}\n')
    code, _, err = _run(["audit", "--corpus", str(bad), "--langs", "he", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "c.jsonl:2: empty text" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(["audit", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "is not writable" in err
    code, _, err = _run(["audit", "--out", str(blocker)], capsys)
    assert code == 2 and "not a directory" in err


def test_listing_commands(capsys):
    code, out, _ = _run(["languages", "--panel", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 12 and {r["id"] for r in rows} >= {"heb_Hebr", "amh_Ethi"}
    code, out, _ = _run(["schemes"], capsys)
    assert code == 0 and "gguf:q4_0" in out and "4.500" in out
    code, out, _ = _run(["models"], capsys)
    assert code == 0 and "gemma-3-270m" in out and "smollm2-135m" in out


def test_audit_with_a_plan(model_dir, tmp_path, capsys):
    out = tmp_path / "planned"
    code, _, err = _run(
        [
            "audit",
            "--model",
            str(model_dir),
            "--langs",
            "eng,heb",
            "--max-tokens",
            "60",
            "--plan",
            "keep:layer:0,layer:-1; w3g32:*",
            "--n-boot",
            "50",
            "--window",
            "128",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads((out / "audit.json").read_text())
    assert data["scheme"]["name"] == "keep:layer:0,layer:-1; w3g32:*"
    kept = {t["name"] for t in data["scheme"]["plan"]["tensors"] if t["action"] == "keep"}
    quantized = {t["name"] for t in data["scheme"]["plan"]["tensors"] if t["action"] == "w3g32"}
    assert kept and quantized and all(".layers.1." in n for n in quantized)
    assert data["scheme"]["quantized"]["layers"] == "1-1"
    code, _, err = _run(
        ["audit", "--model", str(model_dir), "--plan", "w4g32:*", "--scheme", "w4g32", "--out", str(tmp_path / "x")],
        capsys,
    )
    assert code == 2 and "either --scheme or --plan" in err
    code, _, err = _run(
        [
            "audit",
            "--model",
            str(model_dir),
            "--plan",
            "keep:layer:9; w4g32:*",
            "--langs",
            "eng",
            "--out",
            str(tmp_path / "y"),
        ],
        capsys,
    )
    assert code == 2 and "layer 9 is out of range" in err and not (tmp_path / "y" / "audit.json").exists()
    code, _, err = _run(["audit", "--plan", "w4g32:nonsense", "--out", str(tmp_path / "z")], capsys)
    assert code == 2 and "unknown selector 'nonsense'" in err and not (tmp_path / "z").exists()
