"""Shared fixtures: tiny random models of several architectures and a tiny real tokenizer, built in-test."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import transformers as T
from hypothesis import HealthCheck, settings

# Never reach a network from the tests, and keep them quiet and single-threaded-deterministic.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
T.logging.set_verbosity_error()

# No outcome may depend on the machine's speed or load: no per-example deadline, no "too slow" health check.
settings.register_profile("no-deadline", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("no-deadline")

#: CI (CI=true) installs everything the suite needs, so a test that would skip there fails instead.
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_unless_ci(reason: str) -> None:
    """``pytest.skip(reason)`` on a developer's machine; ``pytest.fail`` in CI, where nothing may be missing."""
    __tracebackhide__ = True  # report the calling test's line
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)", pytrace=False)
    pytest.skip(reason)


VOCAB = 320  # the tiny tokenizer's vocabulary fits in this


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE trained on a few UDHR articles of several scripts (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from quant_disparity.corpus import load_udhr

    corpus = load_udhr()
    texts = [d.text for lang in ("eng_Latn", "heb_Hebr", "cmn_Hans", "amh_Ethi") for d in corpus.documents(lang)[:5]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _common(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    base.update(kw)
    return base


CONFIGS = {
    "llama": lambda: T.LlamaConfig(**_common(num_key_value_heads=2)),
    "mistral": lambda: T.MistralConfig(**_common(num_key_value_heads=2)),
    "qwen2": lambda: T.Qwen2Config(**_common(num_key_value_heads=2)),
    "gemma": lambda: T.GemmaConfig(**_common(num_key_value_heads=2, head_dim=16)),
    "gemma2": lambda: T.Gemma2Config(**_common(num_key_value_heads=2, head_dim=16)),
    "gemma3": lambda: T.Gemma3TextConfig(**_common(num_key_value_heads=2, head_dim=16, sliding_window=16)),
    "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=256),
    "opt": lambda: T.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        ffn_dim=128,
        max_position_embeddings=256,
        word_embed_proj_dim=64,
    ),
    "gpt_neox": lambda: T.GPTNeoXConfig(**_common()),
    "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=3, n_head=4),
    "phi": lambda: T.PhiConfig(**_common()),
    "phi3": lambda: T.Phi3Config(**_common(pad_token_id=0)),
    "falcon": lambda: T.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4),
}
ARCHS = tuple(CONFIGS)
#: The architectures the heavier tests run on (a Llama-style, GPT-2 and Gemma 3, plus softcapped Gemma 2).
CORE_ARCHS = ("llama", "gpt2", "gemma3", "gemma2")


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = CONFIGS[arch]()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if hasattr(cfg, key):
            setattr(cfg, key, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}[key])
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager" if arch == "gemma2" else None)
    # Random init gives nearly uniform predictions; scale up so quantization has something to change.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_lm(tokenizer):
    """A LoadedModel factory: tiny_lm("llama")."""
    from quant_disparity.models import wrap_model

    def make(arch: str = "llama", seed: int = 0):
        return wrap_model(tiny_model(arch, seed), tokenizer, name=f"tiny-{arch}")

    return make


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tokenizer):
    """saved_model("llama") -> a directory holding that tiny model and the tokenizer (built once per session)."""
    made: dict[str, object] = {}

    def make(arch: str):
        if arch not in made:
            d = tmp_path_factory.mktemp("tiny") / arch
            tiny_model(arch).save_pretrained(d)
            tokenizer.save_pretrained(d)
            made[arch] = d
        return made[arch]

    return make


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point the model/digest cache at a fresh directory for one test."""
    monkeypatch.setenv("QUANT_DISPARITY_CACHE", str(tmp_path / "cache"))


def run_cli(argv, capsys):
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    from quant_disparity.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return e.value.code or 0, captured.out, captured.err


def chromium_images_loaded(html: str, tmp_path) -> None:
    """Open ``html`` in headless Chromium and assert that every image decoded (skips outside CI without
    Chromium; CI installs it)."""
    import shutil
    import subprocess

    n_img = html.count("<img ")
    chromium = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    if chromium is None:
        skip_unless_ci("Chromium is not installed (apt-get install chromium): figures not checked in a browser")
    # A copy of the report with a probe script: after load it writes how many images decoded into the DOM.
    probe = html.replace(
        "</body>",
        "<script>window.addEventListener('load', () => {const imgs = [...document.images];"
        "document.body.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0)"
        ".length + '/' + imgs.length);});</script></body>",
    )
    page = tmp_path / "probe.html"
    page.write_text(probe)
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # a hang guard only
    assert f'data-loaded="{n_img}/{n_img}"' in dom.stdout, dom.stderr[-2000:]
