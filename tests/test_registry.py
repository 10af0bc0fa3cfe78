"""The registries of named things: did-you-mean errors, refused duplicates, help that lists exactly the registered
names, and plugins from entry points (an example scheme usable by name in a plan and in ``audit --scheme``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import run_cli

import quant_disparity
from quant_disparity.corpus import READERS, load_corpus
from quant_disparity.errors import UserError
from quant_disparity.models import BUNDLED
from quant_disparity.quant import SCHEMES, parse_scheme
from quant_disparity.quant.plan import Plan
from quant_disparity.quant.schemes import scheme_help
from quant_disparity.quant.selectors import SELECTORS
from quant_disparity.registry import Registry
from quant_disparity.report import FORMATS

PLUGINS = Path(__file__).parent / "plugins"
SRC = Path(quant_disparity.__file__).parents[1]
REGISTRIES = [SCHEMES, SELECTORS, READERS, BUNDLED, FORMATS]


def install_entry_points(site: Path, dist: str, group: str, entry_points: dict[str, str]) -> Path:
    """What pip would leave for a package declaring ``entry_points`` in ``group``: a ``*.dist-info`` directory
    on a path entry (``site``), read by importlib.metadata."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    return site


# -- did you mean, duplicates ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lookup,typo,meant",
    [
        (lambda s: parse_scheme(s), "fp61", "fp16"),
        (lambda s: parse_scheme(s), "gguf:q4_o", "gguf:q4_0"),
        (lambda s: parse_scheme(s), "gguf:q4_km", "gguf:q4_k_m"),
        (lambda s: SCHEMES.get(s), "rnt", "rtn"),
        (lambda s: Plan.parse(f"keep:{s}; w4g32:*"), "lyer:0", "layer"),
        (lambda s: Plan.parse(f"keep:{s}; w4g32:*"), "norm", "norms"),
        (lambda s: load_corpus(f"{s}:missing.jsonl"), "jsnol", "jsonl"),
        (lambda s: BUNDLED.get(s), "smollm2", "smollm2-135m"),
        (lambda s: FORMATS.get(s), "htlm", "html"),
    ],
)
def test_unknown_names_say_what_was_meant(lookup, typo, meant):
    with pytest.raises(UserError, match=rf"\(did you mean [^)]*'{re.escape(meant)}'") as e:
        lookup(typo)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_a_name_is_registered_once(registry):
    first = registry.get(registry.names()[0])
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(first)
    assert registry.names().count(first.name) == 1


def test_an_entry_of_another_type_is_refused():
    with pytest.raises(TypeError, match="must be a SchemeKind"):
        SCHEMES.register(SELECTORS.get("layer"))


# -- help read from the registries -----------------------------------------------------------------------------
def test_selector_help_lists_exactly_the_registered_selectors():
    with pytest.raises(UserError) as e:
        Plan.parse("keep:nothing; w4g32:*")
    listed = e.value.hint.removeprefix("selectors: ").split(", ")
    assert listed == [s.syntax for s in SELECTORS.values()]
    assert "layer:N" in listed and "*" in listed and "head:L.H" in listed and "super" in listed and len(listed) == 17


def test_scheme_help_lists_every_kind():
    with pytest.raises(UserError) as e:
        parse_scheme("int4")
    assert e.value.hint == scheme_help()
    parts = e.value.hint.removeprefix("schemes: ").split("; ")
    assert parts[:-1] == [k.syntax for k in SCHEMES.values()] and parts[-1] == "any quantizing one +outliers:P%"
    assert "w4g128" in e.value.hint and "gguf:q4_0" in e.value.hint
    assert SCHEMES.names() == ["rtn", "gguf", "kquant", "gptq", "awq", "cast", "none", "reference", "hqq", "quanto"]


def test_every_listed_scheme_example_parses_to_its_own_name():
    examples = [name for kind in SCHEMES.values() for name, _ in kind.examples]
    assert "w4g128" in examples and "reference" in examples and len(examples) == 35
    for name in examples:
        assert parse_scheme(name).name == name


def test_corpus_hint_lists_every_reader(tmp_path):
    with pytest.raises(UserError) as e:
        load_corpus(str(tmp_path / "missing"))
    assert e.value.hint == "give " + ", ".join(r.syntax for r in READERS.values())
    assert READERS.names() == ["udhr", "jsonl", "txt", "flores"]


def test_model_hint_lists_the_bundled_aliases():
    with pytest.raises(UserError) as e:
        BUNDLED.get("nope")
    assert e.value.hint.startswith(f"bundled: {', '.join(BUNDLED.names())};")
    assert "gemma-3-270m" in BUNDLED.names()


def test_report_format_choices_come_from_the_registry(capsys):
    code, out, _ = run_cli(["report", "--help"], capsys)
    assert code == 0 and f"[{'|'.join(FORMATS.names())}]" in out and "[html|md|latex]" in out
    code, _, err = run_cli(["report", "somewhere", "--format", "htlm"], capsys)
    assert code == 2 and "unknown report format 'htlm' (did you mean 'html'?)" in err


# -- plugins ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thing:
    name: str


THING = Thing("thing")
NOT_A_THING = object()


def _things(group: str) -> Registry[Thing]:
    registry = Registry("thing", Thing, group=group)
    registry.register(Thing("builtin"))
    return registry


def test_a_plugin_entry_is_registered_on_first_lookup(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(
        str(install_entry_points(tmp_path, "qd-things", "qd_test.good", {"thing": f"{__name__}:THING"}))
    )
    things = _things("qd_test.good")
    assert things.names() == ["builtin", "thing"] and things.get("thing") is THING


@pytest.mark.parametrize(
    "value,message",
    [
        (
            "broken_plugin:KIND",
            (
                r"plugin 'bad' \(broken_plugin:KIND, entry point group qd_test.bad\) failed to load: "
                r"ImportError: this plugin needs a package that is not installed — fix or uninstall"
            ),
        ),
        ("no_such_module_qd:KIND", r"plugin 'bad' .* failed to load: ModuleNotFoundError: No module named "),
        (f"{__name__}:NOT_A_THING", r"plugin 'bad' .*: a thing entry must be a Thing, got <object"),
        (f"{__name__}:MISSING", r"plugin 'bad' .* failed to load: AttributeError"),
    ],
)
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, monkeypatch, value, message):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.syspath_prepend(str(install_entry_points(tmp_path, "qd-bad", "qd_test.bad", {"bad": value})))
    things = _things("qd_test.bad")
    for _ in range(2):  # a failed load leaves nothing half-registered and fails the same way again
        with pytest.raises(UserError, match=message) as e:
            things.get("builtin")
        assert "\n" not in str(e.value)


def test_a_plugin_may_not_take_a_registered_name(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(
        str(
            install_entry_points(
                tmp_path, "qd-dup", "qd_test.dup", {"thing": f"{__name__}:THING", "again": f"{__name__}:THING"}
            )
        )
    )
    things = _things("qd_test.dup")
    for _ in range(2):  # again 'again': the first plugin's entry did not stay behind
        with pytest.raises(UserError, match=r"plugin 'again' .*: thing 'thing' is registered twice"):
            things.names()


def _python(site: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Python with ``site`` (the installed entry points) and the example plugins on its path, and a cache
    of its own."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(PLUGINS), str(SRC)]),
        "QUANT_DISPARITY_CACHE": str(site / "cache"),
    }
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600, check=False)


STEP_RUN = """
import sys
import torch
from transformers import AutoModelForCausalLM
from quant_disparity.cli import main
from quant_disparity.models.modules import build_module_map
from quant_disparity.quant import QuantEngine
from quant_disparity.quant.plan import Plan

model_dir, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(model_dir)
modmap = build_module_map(model)
resolved = Plan.parse("keep:layer:0; step:0.0625:*").resolve(modmap)
QuantEngine(model, modmap).assign_(resolved.assignment())
torch.save({"weights": model.state_dict(), "plan": resolved.to_dict()}, f"{out}/planned.pt")
main(["audit", "--model", model_dir, "--scheme", "step:0.0625", "--langs", "eng,heb", "--max-tokens", "60",
      "--n-boot", "50", "--window", "128", "--out", f"{out}/audit"])
"""


def test_a_plugin_scheme_works_by_name_in_a_plan_and_in_audit(tmp_path, saved_model):
    from transformers import AutoModelForCausalLM

    model_dir = saved_model("llama")
    site = install_entry_points(
        tmp_path / "site", "qd-example-scheme", "quant_disparity.schemes", {"step": "qd_example_scheme:KIND"}
    )
    script = tmp_path / "run.py"
    script.write_text(STEP_RUN)
    r = _python(site, str(script), str(model_dir), str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]

    original = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    saved = torch.load(tmp_path / "planned.pt")
    # "*" is every Linear weight in the blocks; layer 0 is kept. Everything else keeps its weights.
    chosen = re.compile(r"^model\.layers\.[12]\.(self_attn|mlp)\.\w+_proj\.weight$")
    assert sum(bool(chosen.match(n)) for n in original) == 14
    for name, w in original.items():
        expected = torch.round(w * 16) / 16 if chosen.match(name) else w  # the nearest multiple of 1/16
        assert torch.equal(saved["weights"][name], expected), name
    actions = {t["name"]: t["action"] for t in saved["plan"]["tensors"]}
    assert {n for n, a in actions.items() if a == "step:0.0625"} == {n for n in original if chosen.match(n)}

    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["scheme"]["name"] == "step:0.0625"
    blocks = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
    n = {name: w.numel() for name, w in original.items() if blocks.match(name)}
    cost = audit["scheme"]["cost"]
    assert cost["quantized_params"] == sum(n.values())
    assert cost["bits_per_quantized_weight"] == pytest.approx((8 * sum(n.values()) + 16 * len(n)) / sum(n.values()))


def test_a_broken_scheme_plugin_is_one_error_line_from_the_cli(tmp_path):
    site = install_entry_points(tmp_path, "qd-broken", "quant_disparity.schemes", {"broken": "broken_plugin:KIND"})
    r = _python(site, "-m", "quant_disparity.cli", "schemes")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        (
            "error: plugin 'broken' (broken_plugin:KIND, entry point group quant_disparity.schemes) failed to load: "
            "ImportError: this plugin needs a package that is not installed — fix or uninstall the package that "
            "provides it"
        )
    ]
