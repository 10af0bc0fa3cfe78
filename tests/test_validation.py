"""Bad input is caught where options, configs, specs, corpora and model files are parsed: one line, exit 2.

Each case here used to end in a traceback (some only after every trial was computed), run silently with a
surprising meaning (the default language panel for ``--langs ""``, the current directory for ``--out ""``),
or let a claim vanish without a verdict.
"""

from __future__ import annotations

import json
import logging
import operator

import numpy as np
import pytest
from conftest import run_cli as _run

from quant_disparity.errors import UserError

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _one_line_exit_2(argv, capsys, message):
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    return err


# -- specs ---------------------------------------------------------------------------------------------------------
SPEC = """
name = "v"
description = "validation"
seed = 0
n_boot = 200

[corpus]
name = "udhr"
split = "all"
langs = ["eng", "heb", "amh", "deu"]
max_tokens = 64

[grid]
models = ["MODEL"]
schemes = ["w3g16", "w4g16"]
[grid.plans]
none = "{scheme}:*"
ends = "keep:layer:0,layer:-1; {scheme}:*"

[[claims]]
id = "A"
expr = "mean_rel_delta(plan='ends') < mean_rel_delta(plan='none')"

[[claims]]
id = "B"
expr = "delta_bpb(lang='heb', plan='none') > 2 * delta_bpb(lang='eng', plan='none')"
where = { scheme = "w3g16" }
"""
CLAIM_A = "expr = \"mean_rel_delta(plan='ends') < mean_rel_delta(plan='none')\""
WHERE_B = 'where = { scheme = "w3g16" }'
CORPUS = '[corpus]\nname = "udhr"\nsplit = "all"\nlangs = ["eng", "heb", "amh", "deu"]\nmax_tokens = 64\n'
PLANS = '[grid.plans]\nnone = "{scheme}:*"\nends = "keep:layer:0,layer:-1; {scheme}:*"'


@pytest.fixture
def spec_text(saved_model):
    return SPEC.replace("MODEL", str(saved_model("llama")))


def _sub(old, new):
    return lambda t: t.replace(old, new, 1)


def _groups(body):
    return lambda t: t.replace("[grid]", f"[groups]\n{body}\n\n[grid]", 1)


BAD_SPECS = [
    # wrong type or sign of top-level fields (used to fail only after every trial was computed)
    ("n_boot-string", _sub("n_boot = 200", 'n_boot = "many"'), r"n_boot must be an integer"),
    ("n_boot-negative", _sub("n_boot = 200", "n_boot = -5"), r"n_boot must be in 50\.\.100000"),
    ("n_boot-too-few", _sub("n_boot = 200", "n_boot = 1"), r"n_boot must be in 50\.\.100000"),
    ("n_boot-too-many", _sub("n_boot = 200", "n_boot = 1000000000"), r"n_boot must be in 50\.\.100000"),
    ("n_boot-float", _sub("n_boot = 200", "n_boot = 200.5"), r"n_boot must be an integer"),
    ("seed-negative", _sub("seed = 0", "seed = -1"), r"seed must be >= 0"),
    ("seed-string", _sub("seed = 0", 'seed = "zero"'), r"seed must be an integer"),
    ("seed-bool", _sub("seed = 0", "seed = true"), r"seed must be an integer"),
    ("description-number", _sub('description = "validation"', "description = 5"), r"description must be a string"),
    ("lr_max_class-string", _sub("seed = 0", 'seed = 0\nlr_max_class = "three"'), r"lr_max_class must be an integer"),
    ("lr_max_class-range", _sub("seed = 0", "seed = 0\nlr_max_class = 9"), r"lr_max_class must be a Joshi class"),
    # sections of the wrong shape
    ("corpus-not-table", lambda t: "corpus = 5\n" + t.replace(CORPUS, "", 1), r"corpus must be a table"),
    ("plans-not-table", _sub(PLANS, 'plans = "x"'), r"plans must be a table"),
    ("trials-not-list", lambda t: "trials = 5\n" + t, r"trials must be a list of tables"),
    (
        "trial-model-number",
        lambda t: t + '\n[[trials]]\nmodel = 5\nplan_name = "x"\nplan = "w4g16:*"\n',
        r"model must be a string",
    ),
    ("claims-not-tables", lambda t: "claims = [1, 2]\n" + t.split("[[claims]]")[0], r"claims must be a list of tables"),
    ("eval-window-string", _sub("[grid]", '[eval]\nwindow = "big"\n\n[grid]'), r"window must be an integer"),
    ("eval-bucket-string", _sub("[grid]", '[eval]\nbucket = "x"\n\n[grid]'), r"bucket must be a number"),
    (
        "scheme-huge-group",
        _sub('schemes = ["w3g16", "w4g16"]', 'schemes = ["w3g16", "w4g100000000"]'),
        r"group size must be 1\.\.8192",
    ),
    # claims
    ("expr-number", _sub(CLAIM_A, "expr = 5"), r"claim A: expr must be a string"),
    ("text-number", _sub('id = "A"', 'id = "A"\ntext = 5'), r"claim A: text must be a string"),
    ("divide-by-zero", _sub(CLAIM_A, "expr = \"mean_rel_delta(plan='ends') / 0 > 1\""), r"claim A: divides by zero"),
    (
        "divide-by-zero-expr",
        _sub(CLAIM_A, "expr = \"mean_rel_delta(plan='ends') / (2 - 2) > 1\""),
        r"claim A: divides by zero",
    ),
    (
        "where-misspelled-key",
        _sub(WHERE_B, 'where = { sceme = "w3g16" }'),
        r"claim B: unknown key 'sceme' in where.*did you mean 'scheme'",
    ),
    ("where-lang", _sub(WHERE_B, 'where = { lang = "heb" }'), r"claim B: unknown key 'lang' in where"),
    (
        "where-scheme-not-run",
        _sub(WHERE_B, 'where = { scheme = "w8g16" }'),
        r"claim B: where scheme = 'w8g16' is not run",
    ),
    (
        "where-plan-not-run",
        _sub(WHERE_B, 'where = { plan = "endz" }'),
        r"claim B: where plan = 'endz' is not run.*did you mean 'ends'",
    ),
    (
        "where-model-not-run",
        _sub(WHERE_B, 'where = { model = "smollm2-135m" }'),
        r"claim B: where model = 'smollm2-135m' is not run",
    ),
    ("where-number", _sub(WHERE_B, "where = { scheme = 3 }"), r"claim B: where scheme must be a string"),
    # groups
    (
        "groups-lang-not-evaluated",
        _groups('low = ["heb", "fra"]\nhigh = ["eng", "deu"]'),
        r"\[groups\] names fra_Latn, which the spec does not evaluate",
    ),
    (
        "groups-overlap",
        _groups('low = ["heb", "eng"]\nhigh = ["en", "deu"]'),
        r"\[groups\]: eng_Latn is in both low and high",
    ),
]


@pytest.mark.parametrize("mutate,message", [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_bad_specs_are_one_line_errors_at_parse_time(spec_text, mutate, message):
    from quant_disparity.experiments.spec import parse_spec

    parse_spec(spec_text, "s.toml")  # the base spec is fine
    with pytest.raises(UserError, match=message) as e:
        parse_spec(mutate(spec_text), "s.toml")
    assert "\n" not in str(e.value) and str(e.value).startswith("s.toml")


def test_bad_spec_through_the_cli_stops_before_any_trial(spec_text, tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text(spec_text.replace("n_boot = 200", "n_boot = -5"))
    _one_line_exit_2(["run", str(p), "--out", str(tmp_path / "run")], capsys, "n_boot must be in 50..100000")
    assert not (tmp_path / "run").exists()


def test_a_measured_zero_divisor_makes_the_side_undefined_not_a_traceback():
    from quant_disparity.experiments.claims import Value, _combine, verdict

    a = Value(1.0, np.ones(100))
    zero = Value(0.0, np.zeros(100))
    q = _combine(a, zero, operator.truediv)
    assert not q.defined and verdict(_combine(q, a, operator.sub), ">") == "inconclusive"
    assert _combine(a, Value(2.0, np.full(100, 2.0)), operator.truediv).point == 0.5


# -- command-line options and --config -----------------------------------------------------------------------------
NOPE = "no-such-model-anywhere"  # reaching the model check means the option slipped through


@pytest.mark.parametrize(
    "command,args,message",
    [
        ("audit", ["--seed", "-1"], "--seed"),
        ("locate", ["--seed", "-1"], "--seed"),
        ("audit", ["--n-boot", "1"], "--n-boot"),
        ("audit", ["--n-boot", "0"], "--n-boot"),
        ("audit", ["--min-docs", "0"], "--min-docs must be >= 1"),
        ("locate", ["--min-docs", "-2"], "--min-docs must be >= 1"),
        ("locate", ["--n-boot", "10"], "--n-boot"),
        ("audit", ["--n-boot", "1000000000"], "--n-boot"),
        ("audit", ["--langs", ""], "--langs"),
        ("audit", ["--langs", " , "], "--langs"),
        ("locate", ["--langs", ""], "--langs"),
        ("audit", ["--out", ""], "--out"),
        ("locate", ["--out", " "], "--out"),
        ("audit", ["--scheme", "w4g100000000"], "group size must be 1..8192"),
        ("audit", ["--scheme", "w4g99999"], "group size must be 1..8192"),
        ("audit", ["--plan", "w4g99999:*"], "group size must be 1..8192"),
    ],
)
def test_bad_options_stop_before_the_model_is_touched(command, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2([command, "--model", NOPE, *args], capsys, message)
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"] or not list(tmp_path.iterdir())


def test_run_and_report_refuse_an_empty_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(["run", str(tmp_path / "missing.toml"), "--out", ""], capsys, "--out")
    _one_line_exit_2(["report", str(tmp_path), "--out", ""], capsys, "--out")


@pytest.mark.parametrize(
    "body,message",
    [
        ('max_tokens = "a"', "max_tokens must be an integer"),
        ("seed = 1.5", "seed must be an integer"),
        ('seed = "x"', "seed must be an integer"),
        ("seed = -3", "seed must be >= 0"),
        ("n_boot = 5", "n_boot must be in 50..100000"),
        ('n_boot = "lots"', "n_boot must be an integer"),
        ('langs = "eng"', "langs must be a list of strings"),
        ("langs = [1, 2]", "langs must be a list of strings"),
        ("model = 5", "model must be a string"),
        ('lr_max_class = "x"', "lr_max_class must be an integer"),
        ('include = "lm_head"', "include must be a list of strings"),
        ("eval = 5", "eval must be a table"),
        ('[eval]\nwindow = "x"', "eval.window must be an integer"),
        ("[eval]\nbucket = true", "eval.bucket must be a number"),
        ('version = "1"', "version must be an integer"),
    ],
)
def test_config_values_of_the_wrong_type(body, message, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(body + "\n")
    _one_line_exit_2(["audit", "--config", str(cfg), "--model", NOPE], capsys, message)


def test_config_file_that_is_not_utf8(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b'model = "\xff"\n')
    _one_line_exit_2(["audit", "--config", str(cfg), "--model", NOPE], capsys, "is not UTF-8")


# -- model files -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,message",
    [
        ("", "config.json is not valid JSON"),
        ("[1, 2]", "config.json must hold a JSON object"),
        ("{}", "config.json has no model_type"),
        ('{"model_type": 5}', "config.json has no model_type"),
    ],
)
def test_model_directory_with_a_broken_config(content, message, tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(content)
    _one_line_exit_2(["audit", "--model", str(d), "--out", str(tmp_path / "o")], capsys, message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "sidecar,message",
    [
        (b"\xff\xfe\x00garbage", "is not a sha256 checksum"),
        (b"", "is not a sha256 checksum"),
        (b"nothex  model.gguf\n", "is not a sha256 checksum"),
    ],
)
def test_gguf_with_a_broken_sha256_sidecar(sidecar, message, tmp_path, capsys):
    g = tmp_path / "model.gguf"
    g.write_bytes(b"GGUF not really")
    (tmp_path / "model.gguf.sha256").write_bytes(sidecar)
    _one_line_exit_2(["audit", "--model", str(g), "--out", str(tmp_path / "o")], capsys, message)


# -- corpora ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line,message",
    [
        (r'{"lang": "he", "text": "ab\ud800cd"}', r"c.jsonl:1: field 'text' is not valid Unicode \(lone surrogate"),
        (r'{"lang": "h\udfffe", "text": "abc"}', r"c.jsonl:1: field 'lang' is not valid Unicode"),
        (r'{"lang": "he", "text": "abc", "id": "\ud800"}', r"c.jsonl:1: field 'id' is not valid Unicode"),
        ('{"lang": "he", "text": "abc", "id": [1]}', r"c.jsonl:1: field 'id' must be a string or an integer"),
        ('{"lang": "he", "text": "abc", "id": 1.5}', r"c.jsonl:1: field 'id' must be a string or an integer"),
    ],
)
def test_jsonl_bad_unicode_and_ids(line, message, tmp_path):
    from quant_disparity.corpus import load_corpus

    p = tmp_path / "c.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(UserError, match=message) as e:
        load_corpus(str(p))
    assert "\n" not in str(e.value)


def test_jsonl_surrogate_through_the_cli(tmp_path, capsys):
    p = tmp_path / "c.jsonl"
    p.write_text('{"lang": "he", "text": "\\ud800"}\n')
    _one_line_exit_2(
        ["audit", "--corpus", str(p), "--langs", "he", "--out", str(tmp_path / "o")], capsys, "not valid Unicode"
    )


def test_flores_directory_with_misaligned_files(tmp_path, capsys):
    from quant_disparity.corpus import load_corpus

    (tmp_path / "eng_Latn.devtest").write_text("".join(f"Sentence {i}.\n" for i in range(12)))
    (tmp_path / "deu_Latn.devtest").write_text("".join(f"Satz {i}.\n" for i in range(11)))
    with pytest.raises(
        UserError, match=r"different numbers of lines.*eng_Latn.devtest has 12.*deu_Latn.devtest has 11"
    ):
        load_corpus(f"flores:{tmp_path}")
    _one_line_exit_2(
        ["audit", "--corpus", f"flores:{tmp_path}", "--langs", "eng", "--out", str(tmp_path / "o")],
        capsys,
        "different numbers of lines",
    )


# -- group sizes and the overshoot warning -------------------------------------------------------------------------
def test_group_size_limit_and_groups_longer_than_a_row():
    import torch

    from quant_disparity.quant import parse_scheme
    from quant_disparity.quant.rtn import MAX_GROUP_SIZE, fake_quantize

    assert MAX_GROUP_SIZE == 8192 and parse_scheme("w4g8192").group_size == 8192
    for bad in ("w4g8193", "w4g99999", "w4g100000000", "w4g0"):
        with pytest.raises(UserError, match="group size must be 1..8192"):
            parse_scheme(bad)
    # a group longer than the row is one group per row: the same numbers as per-channel, without padding
    w = torch.randn(4, 40)
    assert torch.equal(fake_quantize(w, 4, group_size=8192), fake_quantize(w, 4, group_size=None))
    assert torch.equal(fake_quantize(w, 3, group_size=5000, symmetric=False), fake_quantize(w, 3, symmetric=False))


def test_whole_document_selection_that_overshoots_the_cap_warns(caplog):
    from quant_disparity.corpus import Document, take_until_tokens
    from quant_disparity.corpus.documents import OVERSHOOT_FACTOR

    docs = [Document("eng_Latn", "big", "x" * 1000), Document("eng_Latn", "small", "y")]
    with caplog.at_level(logging.WARNING, logger="quant_disparity"):
        chosen = take_until_tokens(docs, 32, lambda d: len(d.text))
    assert chosen == docs[:1]
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("quant_disparity")]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert "eng_Latn" in msgs[0] and "1,000 tokens" in msgs[0] and "max_tokens 32" in msgs[0]
    assert "sentences_per_doc" in msgs[0] and "max-tokens 0" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quant_disparity"):
        take_until_tokens(docs, 1000 // OVERSHOOT_FACTOR, lambda d: len(d.text))  # exactly the factor: quiet
        take_until_tokens(docs, None, lambda d: len(d.text))
        take_until_tokens(docs, 990, lambda d: len(d.text))
    assert not [r for r in caplog.records if r.name.startswith("quant_disparity")]


def test_cli_prints_library_warnings_as_one_line_on_stderr(capsys):
    from quant_disparity import cli

    cli._install_warning_handler()
    cli._install_warning_handler()  # idempotent
    logging.getLogger("quant_disparity.corpus").warning("eng_Latn: something to know")
    err = capsys.readouterr().err
    assert err == "warning: eng_Latn: something to know\n"


# -- found by tests/test_fuzz.py -----------------------------------------------------------------------------------
def test_retired_iso_codes_as_corpus_labels(tmp_path):
    """A retired ISO 639 code used to escape as the iso639 package's DeprecatedLanguageValue."""
    from quant_disparity.corpus import load_corpus

    p = tmp_path / "c.jsonl"
    p.write_text('{"lang": "prb", "text": "abc"}\n')
    with pytest.raises(UserError, match=r"c.jsonl:1: unknown language 'prb'"):
        load_corpus(str(p))
    p.write_text('{"lang": "iw", "text": "שלום עולם"}\n')  # retired for "he": its replacement is used
    assert load_corpus(str(p)).languages == ["heb_Hebr"]


@pytest.mark.parametrize("option", ["--model", "--corpus"])
def test_names_too_long_for_the_file_system(option, tmp_path, capsys):
    _one_line_exit_2(["audit", option, "a" * 5000, "--out", str(tmp_path / "o")], capsys, "is not a usable path")


def test_spec_path_too_long_for_the_file_system(tmp_path, capsys):
    _one_line_exit_2(["run", "a" * 5000 + ".toml"], capsys, "is not a usable path")


@pytest.mark.parametrize(
    "mutate,message",
    [
        (_sub("max_tokens = 64", 'max_tokens = 64\ndocs = ["zz99"]'), r"eng_Latn: none of the documents \['zz99'\]"),
        (_sub("[grid]", "[eval]\nvocab_chunk = 0\n\n[grid]"), r"vocab_chunk must be at least 1"),
    ],
)
def test_spec_references_checked_before_a_model_loads(spec_text, mutate, message):
    """These used to surface only once the model was loaded (unknown docs) or mid-scoring (vocab_chunk 0)."""
    from quant_disparity.experiments.spec import parse_spec

    with pytest.raises(UserError, match=message):
        parse_spec(mutate(spec_text), "s.toml")


def test_audit_warns_once_per_language_when_one_document_dwarfs_the_cap(saved_model, tmp_path, capsys):
    words = "All human beings are born free and equal in dignity and rights. " * 40
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"lang": "en", "text": words, "id": "big"})
        + "\n"
        + json.dumps({"lang": "he", "text": "כל בני האדם נולדו בני חורין ושווים בערכם ובזכויותיהם.", "id": "small"})
        + "\n"
    )
    code, _, err = _run(
        [
            "audit",
            "--model",
            str(saved_model("llama")),
            "--corpus",
            str(corpus),
            "--langs",
            "en,he",
            "--max-tokens",
            "32",
            "--window",
            "128",
            "--n-boot",
            "50",
            "--scheme",
            "w4g32",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "eng_Latn: whole-document selection takes" in warnings[0], err


DEEP = "x = " + "[" * 100000


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda t: DEEP, r"not valid TOML \(nested too deeply\)"),
        (_sub(CLAIM_A, 'expr = "' + "-" * 100000 + '1 < 2"'), r"claim A: expression nested too deeply"),
        (
            _sub(CLAIM_A, "expr = \"disparity(plan='none') < " + "-" * 990 + '1"'),
            r"claim A: expression nested too deeply",
        ),
        (
            _sub(CLAIM_A, "expr = \"disparity(plan='none') < " + "9" * 400 + '"'),
            r"claim A: the number 9+… is too large",
        ),
        (
            _sub(CLAIM_A, "expr = \"disparity(plan='none', plan='ends') < 1\""),
            r"claim A: disparity\(\) is given plan= twice",
        ),
    ],
)
def test_pathological_spec_text(spec_text, mutate, message):
    """Found by asking what else Python's own parsers raise: RecursionError, MemoryError, a float overflow."""
    from quant_disparity.experiments.spec import parse_spec

    with pytest.raises(UserError, match=message) as e:
        parse_spec(mutate(spec_text), "s.toml")
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize(
    "line,message",
    [
        ("[" * 100000, r"c.jsonl:1: not valid JSON \(nested too deeply\)"),
        ('{"lang": "en", "text": "a", "id": ' + "9" * 5000 + "}", r"c.jsonl:1: not valid JSON \(Exceeds the limit"),
    ],
)
def test_pathological_jsonl(line, message, tmp_path):
    from quant_disparity.corpus import load_corpus

    p = tmp_path / "c.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        load_corpus(str(p))


def test_pathological_config_and_plan_files(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(DEEP)
    _one_line_exit_2(["audit", "--config", str(cfg)], capsys, "nested too deeply")
    plan = tmp_path / "p.toml"
    plan.write_text(DEEP)
    _one_line_exit_2(["audit", "--plan", str(plan)], capsys, "nested too deeply")
    plan.write_bytes(b'[[rules]]\naction = "keep"\nselect = ["\xff"]\n')
    _one_line_exit_2(["audit", "--plan", str(plan)], capsys, "is not UTF-8")
