"""Property-based fuzzing of the input boundary: every input either parses or raises a one-line UserError.

Specs (random TOML tables built from the real keys, random mutations of a valid spec, random text), the scheme
and plan grammar (random strings from their alphabet, random structured combinations, resolution against a
tiny model), and the corpus readers (random bytes and lines into JSONL, txt-dir and FLORES-dir files).
The example counts are fixed (and the runs derandomized) so the time taken does not depend on the machine's
luck; ``QD_FUZZ_EXAMPLES`` raises them and ``QD_FUZZ_RANDOM=1`` draws fresh examples, for a longer hunt.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_disparity.errors import UserError

N = int(os.environ.get("QD_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=os.environ.get("QD_FUZZ_RANDOM") != "1",
    suppress_health_check=list(HealthCheck),
)


def _examples(n: int) -> settings:
    return settings(FUZZ, max_examples=N or n)


@contextlib.contextmanager
def parses_or_user_error():
    """The body either returns or raises UserError with a one-line message; anything else fails the test."""
    try:
        yield
    except UserError as e:
        assert "\n" not in str(e) and str(e).strip(), repr(str(e))


# -- specs ---------------------------------------------------------------------------------------------------------
MODELS = ["smollm2-135m", "gemma-3-270m"]  # bundled aliases: classified without loading anything
SCHEMES = ["w4g128", "w3g16", "w8-channel", "w4-tensor-asym", "gguf:q4_0", "fp16", "w9g16", "w4g0", "w4g99999", ""]
PLANS = [
    "{scheme}:*",
    "keep:layer:0,layer:-1; {scheme}:*",
    "keep:norms; w4g32:all",
    "w4g128:*",
    "keep:lyer:1",
    "{scheme}:layers:even",
    ";",
    "keep:outliers:1%; {scheme}:*",
    "re:(",
    "w4g128:*&component:mlp",
]
LANGS = ["eng", "heb", "amh", "deu", "fra", "he", "xx", "", "cmn_Hans", "deu_Latn/deu_1901", "klingon"]
EXPRS = [
    "mean_rel_delta(plan='ends') < mean_rel_delta(plan='none')",
    "delta_bpb(lang='heb', plan='none') > 2 * delta_bpb(lang='eng', plan='none')",
    "disparity(plan='none') / 0 > 1",
    "disparity(plan='none') / (1 - 1) > 1",
    "gap(plan='x') < 0",
    "spearman(measure='cc_pct', plan='none') < 0",
    "kl(lang='fra', plan='none') > 0",
    "1 < 2",
    "x < y",
    "disparity() < disparity(plan='ends')",
    "top1(lang='heb') >= 0.5",
    "- - 1 < +1",
    "1 / 0.0 < 1",
    "mean_rel_delta(group='mid', plan='none') > 0",
    "disparity(plan='none') < 1e309",
    "disparity(plan='none') < " + "9" * 400,
    "disparity(plan='none', plan='ends') < 1",
    "-" * 990 + "1 < 2",
    "disparity(**{}) < 1",
    "disparity(plan='none')(x='1') < 1",
    "1 < 2 < 3",
]

scalar = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(LANGS + SCHEMES + PLANS + EXPRS + MODELS),
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _base() -> dict:
    return {
        "name": "fuzz",
        "description": "d",
        "seed": 0,
        "n_boot": 100,
        "corpus": {"name": "udhr", "split": "all", "langs": ["eng", "heb", "amh", "deu"], "max_tokens": 64},
        "eval": {"window": 64, "context": 8, "batch_tokens": 128},
        "groups": {"low": ["heb", "amh"], "high": ["eng", "deu"]},
        "grid": {
            "models": ["smollm2-135m"],
            "schemes": ["w3g16", "w4g16"],
            "plans": {"none": "{scheme}:*", "ends": "keep:layer:0,layer:-1; {scheme}:*"},
        },
        "trials": [{"model": "smollm2-135m", "scheme": "w3g16", "plan_name": "int8", "plan": "w8-channel:*"}],
        "claims": [{"id": "A", "expr": EXPRS[0]}, {"id": "B", "expr": EXPRS[1], "where": {"scheme": "w3g16"}}],
    }


#: Where a mutation may land: (path of keys/indices, key) in the base spec.
KEYS = {
    (): [
        "name",
        "description",
        "seed",
        "n_boot",
        "lr_max_class",
        "version",
        "corpus",
        "eval",
        "groups",
        "grid",
        "trials",
        "claims",
        "seeed",
    ],
    ("corpus",): [
        "name",
        "split",
        "langs",
        "max_tokens",
        "first_sentence",
        "docs",
        "flores_split",
        "sentences_per_doc",
        "lang",
    ],
    ("eval",): ["window", "context", "batch_tokens", "vocab_chunk", "bucket", "score_rows", "version"],
    ("groups",): ["low", "high", "mid"],
    ("grid",): ["models", "schemes", "plans"],
    ("grid", "plans"): ["none", "ends", "extra"],
    ("trials", 0): ["model", "scheme", "plan_name", "plan", "plann"],
    ("claims", 0): ["id", "expr", "text", "where"],
    ("claims", 1): ["id", "expr", "text", "where"],
    ("claims", 1, "where"): ["scheme", "plan", "model", "lang", "sceme"],
}


def _apply(spec: dict, path: tuple, key: str, op: str, new) -> None:
    node = spec
    for p in path:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            return
    if not isinstance(node, dict):
        return
    if op == "delete":
        node.pop(key, None)
    else:
        node[key] = new


mutation = st.sampled_from(sorted(KEYS, key=str)).flatmap(
    lambda path: st.tuples(st.just(path), st.sampled_from(KEYS[path]), st.sampled_from(["set", "delete"]), value)
)


def _toml(data: dict) -> str | None:
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError):  # e.g. NaN keys tomli_w refuses: not a spec a user can write
        return None


@given(st.lists(mutation, min_size=1, max_size=4))
@_examples(250)
def test_fuzz_spec_mutations(mutations):
    from quant_disparity.experiments.spec import parse_spec

    spec = _base()
    for path, key, op, new in mutations:
        _apply(spec, path, key, op, new)
    text = _toml(spec)
    if text is not None:
        with parses_or_user_error():
            parse_spec(text, "fuzz.toml")


@given(st.dictionaries(st.sampled_from(KEYS[()]), value, max_size=8))
@_examples(200)
def test_fuzz_spec_random_tables(data):
    from quant_disparity.experiments.spec import parse_spec

    text = _toml(data)
    if text is not None:
        with parses_or_user_error():
            parse_spec(text, "fuzz.toml")


TOML_ALPHABET = st.sampled_from(
    list("[]{}=\".,#\n _-abcdeilmnoprstuvwxyz0123456789'\\")
    + ["name", "corpus", "langs", "claims", "expr", "where", "n_boot", "seed", "[[trials]]", "\\ud800"]
)


@given(st.one_of(st.text(max_size=200), st.lists(TOML_ALPHABET, max_size=80).map("".join)))
@_examples(200)
def test_fuzz_spec_random_text(text):
    from quant_disparity.experiments.spec import parse_spec

    with parses_or_user_error():
        parse_spec(text, "fuzz.toml")


@given(st.binary(max_size=200))
@_examples(50)
def test_fuzz_spec_file_bytes(data):
    from quant_disparity.experiments.spec import load_spec

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.toml"
        p.write_bytes(data)
        with parses_or_user_error():
            load_spec(p)


# -- schemes and plans ---------------------------------------------------------------------------------------------
SCHEME_ALPHABET = st.sampled_from(
    list("wg0123456789-+:%.")
    + [
        "asym",
        "sym",
        "channel",
        "tensor",
        "gguf:",
        "q4_0",
        "q8_0",
        "outliers",
        "-inscale",
        "fp16",
        "bf16",
        "none",
        " ",
        "W",
        "٣",
    ]
)
number = st.one_of(st.integers(-5, 300), st.integers(0, 10**12), st.sampled_from([8192, 8193, 99999, 10**8]))


@st.composite
def structured_scheme(draw):
    bits = draw(number)
    gran = draw(st.one_of(number.map(lambda g: f"g{g}"), st.sampled_from(["-channel", "-tensor", "", "g"])))
    sym = draw(st.sampled_from(["", "-asym", "-sym", "-asym-asym"]))
    out = draw(
        st.sampled_from(
            [
                "",
                "+outliers:1%",
                "+outliers-inscale:0.5%",
                "+outliers:0%",
                "+outliers:100%",
                "+outliers:1.2.3%",
                "+outliers:%",
            ]
        )
    )
    return draw(st.sampled_from([f"w{bits}{gran}{sym}{out}", f"gguf:q{bits}_0{out}", f"fp16{out}", f"none{out}"]))


def _fake_quantize_small(scheme) -> None:
    import torch

    w = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    scheme.check_shape(tuple(w.shape), "fuzz")
    out = scheme.fake_quantize(w)
    assert out.shape == w.shape and torch.isfinite(out).all()
    assert scheme.storage_bits(tuple(w.shape), 32) > 0


@given(st.one_of(st.lists(SCHEME_ALPHABET, max_size=12).map("".join), structured_scheme(), st.text(max_size=20)))
@_examples(400)
def test_fuzz_scheme_grammar(text):
    from quant_disparity.quant import parse_scheme

    with parses_or_user_error():
        s = parse_scheme(text)
        assert parse_scheme(s.name) == s  # a parsed scheme's name parses back to it
        _fake_quantize_small(s)


@functools.cache
def _modmap():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_model

    from quant_disparity.models.modules import build_module_map

    return build_module_map(tiny_model("llama"))


SELECTORS = [
    "*",
    "all",
    "layer:0",
    "layer:-1",
    "layer:3",
    "layer:-4",
    "layer:x",
    "layers:0,2",
    "layers:2-1",
    "layers:even",
    "layers:odd",
    "layers:",
    "component:mlp",
    "component:attn.qkv",
    "component:nope",
    "norms",
    "norm.final",
    "biases",
    "embed.token",
    "embed.pos",
    "lm_head",
    "re:q_proj",
    "re:(",
    "re:",
    "outliers:1%",
    "outliers:0%",
    "outliers:x",
    "layer:0&component:mlp",
    "&",
    "",
    "layer:00",
    "layer:99999999999999999999",
]
ACTIONS = ["keep", "w4g32", "w4g128", "w8-channel", "gguf:q4_0", "fp16", "none", "w9g1", "w4g99999", "", "kep"]


GOOD_SELECTORS = [
    "*",
    "all",
    "layer:0",
    "layer:-1",
    "layers:0,2",
    "layers:odd",
    "component:mlp",
    "component:attn",
    "component:attn.qkv",
    "norms",
    "norm.final",
    "biases",
    "embed.token",
    "lm_head",
    "re:q_proj",
    "layer:1&component:mlp",
    "outliers:1%",
    "outliers:0.5%&component:mlp",
]


@st.composite
def structured_plan(draw, valid_only: bool = False):
    actions = ACTIONS[:6] if valid_only else ACTIONS
    selectors = GOOD_SELECTORS if valid_only else SELECTORS
    rules = draw(
        st.lists(
            st.tuples(st.sampled_from(actions), st.lists(st.sampled_from(selectors), min_size=1, max_size=3)),
            min_size=1,
            max_size=4,
        )
    )
    sep = draw(st.sampled_from(["; ", ";", " ; ", ";;"]))
    return sep.join(f"{a}:{','.join(s)}" for a, s in rules)


PLAN_ALPHABET = st.sampled_from(list(":;,&*%-.() ") + SELECTORS[:20] + ACTIONS[:6])


@given(
    st.one_of(
        structured_plan(valid_only=True),
        structured_plan(),
        st.lists(PLAN_ALPHABET, max_size=12).map("".join),
        st.text(max_size=30),
    )
)
@_examples(300)
def test_fuzz_plan_grammar_and_resolution(text):
    from quant_disparity.quant.plan import Plan

    with parses_or_user_error():
        plan = Plan.parse(text)
        assert Plan.parse(str(plan)) == plan
        assert Plan.from_toml(plan.to_toml()) == plan
        plan.resolve(_modmap())


# -- corpora -------------------------------------------------------------------------------------------------------
LANG_LABELS = [
    "he",
    "heb",
    "heb_Hebr",
    "en",
    "eng_Latn",
    "amh",
    "cmn_Hans",
    "zh",
    "deu_Latn",
    "qqqq",
    "",
    " ",
    "x" * 40,
    "sr",
    "deu_Latn/deu_1901",
    "..",
    "ar",
]
JSON_FRAGMENTS = [
    '{"lang": "he", "text": "שלום"}',
    '{"lang": "en", "text": "x"}',
    '{"lang": 5}',
    "[]",
    "null",
    '{"lang": "he", "text": "\\ud800"}',
    '{"lang": "\\udc00", "text": "a"}',
    '{"text": "a"}',
    "{",
    '{"lang": "en", "text": "a", "id": {"a": 1}}',
    '{"lang": "en", "text": "a", "id": 1}',
    '{"lang": "en", "text": "a", "id": 1}',
    '{"lang": "en", "text": "  "}',
    "",
    "\ufeff",
    "\x00",
]

json_line = st.one_of(
    st.sampled_from(JSON_FRAGMENTS),
    st.fixed_dictionaries(
        {"lang": st.sampled_from(LANG_LABELS), "text": st.text(max_size=30)},
        optional={"id": st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none(), st.floats())},
    ).map(lambda d: json.dumps(d, ensure_ascii=False)),
    st.text(max_size=40),
)


@given(
    st.one_of(
        st.lists(json_line, max_size=8).map("\n".join).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.binary(max_size=200),
    )
)
@_examples(300)
def test_fuzz_jsonl_reader(data):
    from quant_disparity.corpus import load_corpus

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.jsonl"
        p.write_bytes(data)
        with parses_or_user_error():
            c = load_corpus(str(p))
            for lang in c.languages:
                assert c.resolve(lang) == lang and c.documents(lang)


FILE_STEMS = st.one_of(
    st.sampled_from(LANG_LABELS[:10] + ["README", "a.b", "heb_Hebr.dev", "-", "_", "ü"]),
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_ABCHL"), min_size=1, max_size=10),
)
content = st.one_of(
    st.binary(max_size=120),
    st.lists(
        st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "\n", "\r\n", "Hello.", "שלום.", "你好。"])),
        max_size=14,
    )
    .map("\n".join)
    .map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@given(st.dictionaries(FILE_STEMS, content, min_size=0, max_size=4), st.booleans())
@_examples(200)
def test_fuzz_txt_dir_reader(files, explicit):
    from quant_disparity.corpus import load_corpus

    with tempfile.TemporaryDirectory() as d:
        for stem, data in files.items():
            (Path(d) / f"{stem}.txt").write_bytes(data)
        with parses_or_user_error():
            load_corpus(f"txt:{d}" if explicit else d)


@given(
    st.dictionaries(FILE_STEMS, content, min_size=0, max_size=4),
    st.sampled_from(["devtest", "dev", "x"]),
    st.integers(-2, 30),
    st.booleans(),
)
@_examples(200)
def test_fuzz_flores_dir_reader(files, split, per_doc, nested):
    from quant_disparity.corpus import load_corpus

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / split if nested else Path(d)
        root.mkdir(exist_ok=True)
        for stem, data in files.items():
            (root / f"{stem}.devtest").write_bytes(data)
        with parses_or_user_error():
            load_corpus(f"flores:{d}", flores_split=split, sentences_per_doc=per_doc)


@pytest.mark.parametrize(
    "spec", ["", " ", "jsonl:", "txt:", "flores:", "udhr ", ":", "jsonl:/nonexistent", "\x00", "a" * 5000]
)
def test_corpus_specs_that_name_nothing(spec):
    from quant_disparity.corpus import load_corpus

    with parses_or_user_error():
        load_corpus(spec)
