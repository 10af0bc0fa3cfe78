"""Experiment specs: one TOML file per study, validated with errors that name the line.

```toml
name = "l0-last"                      # required; the default output directory is runs/<name>
description = "Does keeping layer 0 and the last layer in full precision close the gap?"
seed = 0
n_boot = 1000
verdict_basis = "intervals"           # or "points": compare point values (nothing to resample, e.g. 1 doc each)

[corpus]                              # one corpus selection for every trial
name = "udhr"                         # udhr, a .jsonl file, a txt dir or a FLORES-style dir
split = "heldout"                     # all | select | heldout
langs = ["eng", "deu", "heb", "arb"]
max_tokens = 512                      # per language (whole documents); 0 = all
first_sentence = false                # keep only each document's first sentence (the original log's setup)
docs = []                             # only these document ids (empty: all)

[eval]                                # window, context, batch_tokens, vocab_chunk
batch_tokens = 2048

[groups]                              # who is low- / high-resource for disparity(); default: Joshi class <= 3
low = ["heb", "arb"]
high = ["eng", "deu"]

[grid]                                # every model x scheme x plan; "{scheme}" in a plan takes each scheme
models = ["gemma-3-270m"]
schemes = ["w4g128", "w4-channel"]
[grid.plans]
none = "{scheme}:*"
l0_last = "keep:layer:0,layer:-1; {scheme}:*"

[[trials]]                            # explicit trials, in addition to the grid
plan_name = "int8-ends"
model = "gemma-3-270m"
scheme = "w4g128"
plan = "w8g128:layer:0,layer:-1; w4g128:*"

[[claims]]                            # evaluated from the stored results with bootstrap intervals
id = "C06"
text = "Keeping layer 0 and the last layer reduces the disparity"
expr = "disparity(plan='l0_last') < disparity(plan='none')"
where = { scheme = "w4g128" }         # filters for every call; unpinned dimensions give one verdict each
```
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UserError, did_you_mean
from ..evaluate import EvalSettings

SPEC_VERSION = 1


def _line_of(text: str, key: str, after: int = 0) -> int | None:
    lines = text.splitlines()
    pat = re.compile(rf"^\s*(\[\[?)?\s*{re.escape(key)}\s*(=|\]|\.)")
    for i in range(after, len(lines)):
        if pat.match(lines[i]):
            return i + 1
    return None


class SpecError(UserError):
    pass


def _err(path: str, text: str, key: str, message: str, hint: str | None = None, after: int = 0) -> SpecError:
    line = _line_of(text, key, after)
    where = f"{path}:{line}" if line else path
    return SpecError(f"{where}: {message}", hint)


@dataclass(frozen=True)
class CorpusSpec:
    name: str = "udhr"
    split: str = "heldout"
    langs: tuple[str, ...] = ()
    max_tokens: int = 512
    first_sentence: bool = False
    docs: tuple[str, ...] = ()
    flores_split: str = "devtest"
    sentences_per_doc: int = 10


@dataclass(frozen=True)
class TrialSpec:
    model: str
    scheme: str
    plan_name: str
    plan: str

    @property
    def name(self) -> str:
        return f"{self.model}|{self.scheme}|{self.plan_name}"


@dataclass(frozen=True)
class ClaimSpec:
    id: str
    expr: str
    text: str = ""
    where: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    corpus: CorpusSpec
    eval: EvalSettings
    trials: tuple[TrialSpec, ...]
    claims: tuple[ClaimSpec, ...] = ()
    description: str = ""
    seed: int = 0
    n_boot: int = 1000
    groups: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (low, high) language lists
    lr_max_class: int = 3
    verdict_basis: str = "intervals"  # "points": verdicts compare point values (labelled so), no intervals
    source: str = ""  # the TOML text, stored with every run
    path: str = ""

    def trial(self, name: str) -> TrialSpec:
        for t in self.trials:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(t.model for t in self.trials))


_TOP = {"name", "description", "seed", "n_boot", "corpus", "eval", "groups", "grid", "trials", "claims",
        "lr_max_class", "version", "verdict_basis"}


def _check_keys(data: dict, allowed: set[str], section: str, path: str, text: str) -> None:
    for key in data:
        if key not in allowed:
            raise _err(path, text, key, f"unknown field {key!r} in {section}{did_you_mean(key, allowed)}",
                       f"{section} takes: {', '.join(sorted(allowed))}")


def _typed(value, kind, key: str, path: str, text: str):
    ok = {"str": isinstance(value, str), "int": isinstance(value, int) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value)}[kind]
    if not ok:
        raise _err(path, text, key, f"{key} must be {kind.replace('list[str]', 'a list of strings')}, "
                                    f"got {value!r}")
    return tuple(value) if kind == "list[str]" else value


def parse_spec(text: str, path: str = "<spec>") -> ExperimentSpec:
    """Parse and validate a spec (everything that can be checked without loading a model)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})", "fix the syntax at that line") from None
    _check_keys(data, _TOP, "the spec", path, text)
    if data.get("version", SPEC_VERSION) != SPEC_VERSION:
        raise _err(path, text, "version", f"spec version {data['version']!r} is not supported",
                   f"this quant-disparity reads version {SPEC_VERSION}")
    if "name" not in data:
        raise SpecError(f"{path}: the spec needs a name", 'add name = "my-study" at the top')
    name = _typed(data["name"], "str", "name", path, text)
    if data.get("verdict_basis", "intervals") not in ("intervals", "points"):
        raise _err(path, text, "verdict_basis", f"verdict_basis must be \"intervals\" or \"points\", "
                                                f"got {data['verdict_basis']!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _err(path, text, "name", f"name {name!r} must be letters, digits, '.', '_' or '-'")

    corpus_raw = data.get("corpus", {})
    _check_keys(corpus_raw, {f.name for f in fields(CorpusSpec)}, "[corpus]", path, text)
    kinds = {"name": "str", "split": "str", "langs": "list[str]", "max_tokens": "int", "first_sentence": "bool",
             "docs": "list[str]", "flores_split": "str", "sentences_per_doc": "int"}
    corpus = CorpusSpec(**{k: _typed(v, kinds[k], k, path, text) for k, v in corpus_raw.items()})
    if not corpus.langs:
        raise _err(path, text, "corpus", "[corpus] needs langs", 'add langs = ["eng", "heb", ...]')
    if corpus.max_tokens < 0:
        raise _err(path, text, "max_tokens", "max_tokens must be >= 0 (0 = all)")

    eval_raw = data.get("eval", {})
    _check_keys(eval_raw, {f.name for f in fields(EvalSettings)} - {"version"}, "[eval]", path, text)
    try:
        eval_settings = EvalSettings(**{k: _typed(v, "int", k, path, text) for k, v in eval_raw.items()})
    except UserError as e:
        raise _err(path, text, "eval", e.message, e.hint) from None

    groups = None
    if "groups" in data:
        g = data["groups"]
        _check_keys(g, {"low", "high"}, "[groups]", path, text)
        if not g.get("low") or not g.get("high"):
            raise _err(path, text, "groups", "[groups] needs both low and high language lists")
        groups = (_typed(g["low"], "list[str]", "low", path, text), _typed(g["high"], "list[str]", "high", path, text))

    trials: list[TrialSpec] = []
    grid = data.get("grid", {})
    _check_keys(grid, {"models", "schemes", "plans"}, "[grid]", path, text)
    if grid:
        models = _typed(grid.get("models", []), "list[str]", "models", path, text)
        schemes = _typed(grid.get("schemes", []), "list[str]", "schemes", path, text)
        plans = grid.get("plans", {})
        if not models or not plans:
            raise _err(path, text, "grid", "[grid] needs models and plans", "or list explicit [[trials]]")
        for model in models:
            for pname, template in plans.items():
                _typed(template, "str", pname, path, text)
                if "{scheme}" in template:
                    if not schemes:
                        raise _err(path, text, pname, f"plan {pname!r} uses {{scheme}} but [grid] has no schemes")
                    for s in schemes:
                        trials.append(TrialSpec(model, s, pname, template.replace("{scheme}", s)))
                else:
                    trials.append(TrialSpec(model, schemes[0] if len(schemes) == 1 else "", pname, template))
    for i, t in enumerate(data.get("trials", [])):
        _check_keys(t, {"model", "scheme", "plan", "plan_name"}, f"[[trials]] #{i + 1}", path, text)
        for key in ("model", "plan", "plan_name"):
            if key not in t:
                raise _err(path, text, "trials", f"[[trials]] #{i + 1} needs {key}")
        trials.append(TrialSpec(t["model"], t.get("scheme", ""), t["plan_name"], t["plan"]))
    if not trials:
        raise SpecError(f"{path}: the spec defines no trials", "add a [grid] or [[trials]]")
    names = [t.name for t in trials]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SpecError(f"{path}: trial {dup!r} is defined twice", "give the plans distinct names")

    _validate_offline(trials, corpus, path, text)

    claims = []
    for i, c in enumerate(data.get("claims", [])):
        _check_keys(c, {"id", "text", "expr", "where"}, f"[[claims]] #{i + 1}", path, text)
        if "id" not in c or "expr" not in c:
            raise _err(path, text, "claims", f"[[claims]] #{i + 1} needs id and expr")
        where = c.get("where", {})
        if not isinstance(where, dict):
            raise _err(path, text, "where", f"claim {c['id']}: where must be a table, e.g. {{ scheme = \"w4g128\" }}")
        claims.append(ClaimSpec(id=str(c["id"]), expr=c["expr"], text=c.get("text", ""),
                                where=tuple(sorted((k, str(v)) for k, v in where.items()))))
    spec = ExperimentSpec(
        name=name, corpus=corpus, eval=eval_settings, trials=tuple(trials), claims=tuple(claims),
        description=data.get("description", ""), seed=data.get("seed", 0), n_boot=data.get("n_boot", 1000),
        groups=groups, lr_max_class=data.get("lr_max_class", 3), source=text, path=path,
        verdict_basis=data.get("verdict_basis", "intervals"),
    )
    from .claims import validate_claims

    line_after = {c.id: (_line_of(text, "claims") or 1) - 1 for c in claims}
    try:
        validate_claims(spec)
    except UserError as e:
        m = re.match(r"claim (\S+):", e.message)
        line = _line_of(text, "expr", line_after.get(m.group(1), 0)) if m else None
        raise SpecError(f"{path}:{line}: {e.message}" if line else f"{path}: {e.message}", e.hint) from None
    return spec


def _validate_offline(trials: list[TrialSpec], corpus: CorpusSpec, path: str, text: str) -> None:
    """Checks that need no model: schemes, plan syntax, model names, corpus and languages."""
    from ..corpus import filter_split, load_corpus
    from ..models import classify_source
    from ..quant import parse_scheme
    from ..quant.plan import Plan

    for t in trials:
        try:
            classify_source(t.model)
            if t.scheme:
                parse_scheme(t.scheme)
            Plan.parse(t.plan)
        except UserError as e:
            key = t.plan_name if _line_of(text, t.plan_name) else "grid"
            raise _err(path, text, key, f"trial {t.name}: {e.message}", e.hint) from None
    try:
        c = load_corpus(corpus.name, flores_split=corpus.flores_split, sentences_per_doc=corpus.sentences_per_doc)
        for lang in corpus.langs:
            key = c.resolve(lang)
            if not filter_split(c.documents(key), corpus.split):
                raise UserError(f"{key} has no documents in split {corpus.split!r}")
    except UserError as e:
        raise _err(path, text, "langs" if "language" in e.message else "corpus", e.message, e.hint) from None


def load_spec(path: str | Path) -> ExperimentSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"spec {p} not found", "give the path of a .toml experiment spec")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"spec {p} is not UTF-8 text") from None
    return parse_spec(text, str(p))
