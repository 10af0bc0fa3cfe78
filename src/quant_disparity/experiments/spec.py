"""Experiment specs: one TOML file per study, validated with errors that name the line.

```toml
name = "l0-last"                      # required; the default output directory is runs/<name>
description = "Does keeping layer 0 and the last layer in full precision close the gap?"
seed = 0                              # >= 0
n_boot = 1000                         # bootstrap replicates, 50..100000
verdict_basis = "intervals"           # or "points": compare point values (nothing to resample, e.g. 1 doc each)

[corpus]                              # one corpus selection for every trial
name = "udhr"                         # udhr, a .jsonl file, a txt dir or a FLORES-style dir
split = "heldout"                     # all | select | heldout
langs = ["eng", "deu", "heb", "arb"]
max_tokens = 512                      # per language (whole documents); 0 = all
min_docs = 5                          # at least this many documents per language, past max_tokens if need be
first_sentence = false                # keep only each document's first sentence (the original log's setup)
docs = []                             # only these document ids (empty: all)

[eval]                                # window, context, batch_tokens, vocab_chunk
batch_tokens = 2048

[groups]                              # who is low- / high-resource for disparity() (evaluated languages, no
                                      # language in both); default: Joshi class <= lr_max_class (3)
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

[[trials]]                            # a pre-quantized artifact of the model (audit --quantized), no plan
plan_name = "q4_k_m-file"
model = "gemma-3-270m"
quantized = "gemma-3-270m-q4_k_m.gguf"  # a .gguf file or a GPTQ/AWQ/compressed-tensors/HF directory

[tasks]                               # optional: tasks beyond bits per byte on every trial (as audit --tasks)
names = ["cloze", "generate"]         # cloze, generate, lmeval:TASK
gen_tokens = 32                       # tokens per greedy continuation (generate)
lmeval_include = ""                   # a folder of lm-eval task YAMLs, relative to the spec

[[claims]]                            # evaluated from the stored results with bootstrap intervals
id = "C06"
text = "Keeping layer 0 and the last layer reduces the disparity"
expr = "disparity(plan='l0_last') < disparity(plan='none')"
where = { scheme = "w4g128" }         # model / scheme / plan filters for every call, values the spec runs;
                                      # unpinned dimensions give one verdict each
```
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import JOSHI_CLASSES, N_BOOT_MAX, N_BOOT_MIN, check_eval, shown
from ..corpus import CorpusSelection
from ..errors import LanguageError, UserError, did_you_mean
from ..evaluate import EvalSettings
from ..quant.calibration import DEFAULT_TOKENS as DEFAULT_CALIBRATION_TOKENS
from ..quant.calibration import Calibration

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


#: A spec's [corpus] defaults: held-out documents, 512 tokens per language, languages named by the spec.
SPEC_CORPUS = CorpusSelection(split="heldout", max_tokens=512, langs=())


@dataclass(frozen=True)
class TrialSpec:
    model: str
    scheme: str
    plan_name: str
    plan: str
    #: a pre-quantized artifact of ``model`` whose tensors are the quantized arm (then ``plan`` is empty and
    #: ``scheme`` is "artifact")
    quantized: str = ""
    calibration: str = ""  # the calibration spec of calibrated schemes (quant.calibration), "" none
    #: this trial's calibration budget in tokens; 0: the spec's ``[calibration] tokens``
    calibration_tokens: int = 0

    @property
    def estimate_plan(self) -> str:
        """The plan a memory estimate uses: an artifact's trial is estimated as one that replaces every block
        Linear weight once (what a GGUF or GPTQ artifact replaces; more tensors cost their share more)."""
        return self.plan or "reference:*"

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
    corpus: CorpusSelection
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
    #: model -> a config.json (or its directory) that ``run --dry-run`` reads when the model is not at hand
    model_configs: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    #: ``[tasks]``: task names (as ``audit --tasks`` takes them), run on every trial after its bits per byte
    tasks: tuple[str, ...] = ()
    gen_tokens: int = 32
    lmeval_include: str = ""  # resolved against the spec's directory
    #: ``[calibration]``: the budget and seed of every trial's calibration set
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    calibration_seed: int = 0

    def calibration_of(self, trial: TrialSpec) -> Calibration:
        return trial_calibration(trial, self.calibration_tokens, self.calibration_seed)

    def task_settings(self):
        """The :class:`~quant_disparity.tasks.TaskSettings` of ``[tasks]`` (the item draw uses the spec's seed)."""
        from ..tasks import TaskSettings

        return TaskSettings(seed=self.seed, gen_tokens=self.gen_tokens, lmeval_include=self.lmeval_include)

    def trial(self, name: str) -> TrialSpec:
        for t in self.trials:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(t.model for t in self.trials))


_TOP = {
    "name",
    "description",
    "seed",
    "n_boot",
    "corpus",
    "eval",
    "groups",
    "grid",
    "trials",
    "claims",
    "lr_max_class",
    "version",
    "verdict_basis",
    "model_configs",
    "tasks",
    "calibration",
}


def _check_keys(data: dict, allowed: set[str], section: str, path: str, text: str) -> None:
    for key in data:
        if key not in allowed:
            raise _err(
                path,
                text,
                key,
                f"unknown field {key!r} in {section}{did_you_mean(key, allowed)}",
                f"{section} takes: {', '.join(sorted(allowed))}",
            )


_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list[str]": "a list of strings",
    "table": "a table",
    "tables": "a list of tables",
}


def _typed(value, kind, key: str, path: str, text: str, after: int = 0):
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {
        "str": isinstance(value, str),
        "int": is_int,
        "float": is_int or isinstance(value, float),
        "bool": isinstance(value, bool),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "table": isinstance(value, dict),
        "tables": isinstance(value, list) and all(isinstance(v, dict) for v in value),
    }[kind]
    if not ok:
        raise _err(path, text, key, f"{key} must be {_KINDS[kind]}, got {shown(value)}", after=after)
    if kind == "float":
        return float(value)
    return tuple(value) if kind == "list[str]" else value


def _ranged(value: int, lo: int, hi: int | None, key: str, path: str, text: str, hint: str | None = None) -> int:
    if value < lo or (hi is not None and value > hi):
        what = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise _err(path, text, key, f"{key} must be {what}, got {value}", hint)
    return value


MAX_EXPR_DEPTH = 100  # the evaluator recurses over the expression; far below Python's recursion limit


def _check_expr(node, claim_id: str) -> None:
    """Numbers must be finite floats, no metric call may repeat an argument, nesting is bounded."""
    import ast
    import math

    stack = [(node, 1)]
    while stack:
        n, depth = stack.pop()
        if depth > MAX_EXPR_DEPTH:
            raise RecursionError
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(n))

    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            try:
                ok = math.isfinite(float(n.value))
            except OverflowError:
                ok = False
            if not ok:
                raise UserError(f"claim {claim_id}: the number {shown(n.value, 30)} is too large")
        elif isinstance(n, ast.Call):
            names = [k.arg for k in n.keywords]
            dup = next((k for k in names if names.count(k) > 1), None)
            if dup:
                assert isinstance(n.func, ast.Name)  # parse_expr admits calls of metric names only
                raise UserError(f"claim {claim_id}: {n.func.id}() is given {dup}= twice")


def _zero_divisor(node) -> bool:
    """Whether an arithmetic tree divides by a constant sub-expression that is zero (``x / 0``, ``x / (2 - 2)``)."""
    import ast

    def const(n):
        if isinstance(n, ast.Constant):
            return float(n.value)
        if isinstance(n, ast.UnaryOp):
            v = const(n.operand)
            return None if v is None else -v
        if isinstance(n, ast.BinOp):
            a, b = const(n.left), const(n.right)
            if a is None or b is None:
                return None
            if isinstance(n.op, ast.Div):
                return None if b == 0 else a / b
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(n.op)]
        return None

    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and const(n.right) == 0:
            return True
    return False


def _model_configs(table, trials, path: str, text: str) -> dict[str, str]:
    """``[model_configs]``: model name -> the path of its config.json, relative to the spec's directory."""
    if not isinstance(table, dict):
        raise _err(path, text, "model_configs", "model_configs must be a table", 'e.g. "org/model" = "configs/m.json"')
    models = {t.model for t in trials}
    out = {}
    for model, where in table.items():
        if model not in models:
            raise _err(
                path,
                text,
                model,
                f"[model_configs] names {model!r}, which no trial uses",
                f"the spec's models: {', '.join(sorted(models))}",
            )
        if not isinstance(where, str) or not where:
            raise _err(path, text, model, f"[model_configs] {model!r} must be a path string")
        p = Path(where) if Path(where).is_absolute() else Path(path).parent / where
        if not p.exists():
            raise _err(
                path, text, model, f"[model_configs] {model!r}: {where} not found", "give the path of a config.json"
            )
        out[model] = str(p)
    return out


def _tasks(raw, path: str, text: str) -> dict:
    """``[tasks]``: names (required, as ``audit --tasks`` takes them), gen_tokens, lmeval_include (a folder,
    relative to the spec). Names are checked here; languages and data when the run starts."""
    from ..tasks import TaskSettings, parse_tasks

    if not isinstance(raw, dict):
        raise _err(path, text, "tasks", "tasks must be a table", 'write [tasks] with names = ["cloze"]')
    _check_keys(raw, {"names", "gen_tokens", "lmeval_include"}, "[tasks]", path, text)
    after = (_line_of(text, "tasks") or 1) - 1
    if "names" not in raw:
        raise _err(path, text, "tasks", "[tasks] needs names", 'e.g. names = ["cloze", "generate"]')
    names = _typed(raw["names"], "list[str]", "names", path, text, after=after)
    if not [n for n in names if n.strip()]:
        raise _err(path, text, "names", "[tasks] names is empty", 'e.g. names = ["cloze", "generate"]', after=after)
    gen_tokens = _typed(raw.get("gen_tokens", 32), "int", "gen_tokens", path, text, after=after)
    include = _typed(raw.get("lmeval_include", ""), "str", "lmeval_include", path, text, after=after)
    if include and not Path(include).is_absolute():
        include = str(Path(path).parent / include)
    try:
        settings = TaskSettings(gen_tokens=gen_tokens, lmeval_include=include)
        tasks = parse_tasks(list(names), settings)
    except UserError as e:
        key = "gen_tokens" if "gen-tokens" in e.message else "names"
        raise _err(path, text, key, f"[tasks]: {e.message}", e.hint, after=after) from None
    return {"tasks": tuple(t.name for t in tasks), "gen_tokens": gen_tokens, "lmeval_include": include}


def parse_spec(text: str, path: str = "<spec>") -> ExperimentSpec:
    """Parse and validate a spec (everything that can be checked without loading a model)."""
    data = _read_toml(text, path)
    header = _header(data, path, text)
    corpus = _corpus(data.get("corpus", {}), path, text)
    eval_settings = _eval(data.get("eval", {}), path, text)
    groups = _groups(data, path, text)
    trials = _trials(data, path, text)
    calibration = _calibration(data.get("calibration", {}), path, text)
    loaded = _validate_offline(trials, corpus, path, text, calibration)
    if groups is not None:
        groups = _validate_groups(groups, corpus, loaded, path, text)
    claims = _claims(data.get("claims", []), trials, path, text)
    model_configs = _model_configs(data.get("model_configs", {}), trials, path, text)
    tasks = _tasks(data["tasks"], path, text) if "tasks" in data else {}
    spec = ExperimentSpec(
        model_configs=model_configs,
        **tasks,
        corpus=corpus,
        eval=eval_settings,
        trials=tuple(trials),
        claims=tuple(claims),
        groups=groups,
        source=text,
        path=path,
        **calibration,
        **header,
    )
    _check_claim_instances(spec, path, text)
    return spec


def _read_toml(text: str, path: str) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})", "fix the syntax at that line") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid TOML (nested too deeply)") from None
    _check_keys(data, _TOP, "the spec", path, text)
    if data.get("version", SPEC_VERSION) != SPEC_VERSION:
        raise _err(
            path,
            text,
            "version",
            f"spec version {shown(data['version'])} is not supported",
            f"this quant-disparity reads version {SPEC_VERSION}",
        )
    return data


def _header(data: dict, path: str, text: str) -> dict:
    """The top-level settings (name, description, seed, n_boot, lr_max_class, verdict_basis); also checks that
    every section has its shape (a table, or a list of tables)."""
    if "name" not in data:
        raise SpecError(f"{path}: the spec needs a name", 'add name = "my-study" at the top')
    name = _typed(data["name"], "str", "name", path, text)
    if data.get("verdict_basis", "intervals") not in ("intervals", "points"):
        raise _err(
            path, text, "verdict_basis", f'verdict_basis must be "intervals" or "points", got {data["verdict_basis"]!r}'
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _err(path, text, "name", f"name {name!r} must be letters, digits, '.', '_' or '-'")

    description = _typed(data.get("description", ""), "str", "description", path, text)
    seed = _ranged(_typed(data.get("seed", 0), "int", "seed", path, text), 0, None, "seed", path, text)
    n_boot = _ranged(
        _typed(data.get("n_boot", 1000), "int", "n_boot", path, text),
        N_BOOT_MIN,
        N_BOOT_MAX,
        "n_boot",
        path,
        text,
        "bootstrap replicates; 1000 is the default",
    )
    lr_max_class = _typed(data.get("lr_max_class", 3), "int", "lr_max_class", path, text)
    if lr_max_class not in JOSHI_CLASSES:
        raise _err(path, text, "lr_max_class", f"lr_max_class must be a Joshi class (0-5), got {lr_max_class}")
    for section in ("corpus", "eval", "groups", "grid", "tasks", "calibration"):
        if section in data:
            _typed(data[section], "table", section, path, text)
    for section in ("trials", "claims"):
        if section in data:
            _typed(data[section], "tables", section, path, text)
    return {
        "name": name,
        "description": description,
        "seed": seed,
        "n_boot": n_boot,
        "lr_max_class": lr_max_class,
        "verdict_basis": data.get("verdict_basis", "intervals"),
    }


_CORPUS_KINDS = {
    "name": "str",
    "split": "str",
    "langs": "list[str]",
    "max_tokens": "int",
    "min_docs": "int",
    "first_sentence": "bool",
    "docs": "list[str]",
    "flores_split": "str",
    "sentences_per_doc": "int",
}


def _corpus(raw: dict, path: str, text: str) -> CorpusSelection:
    _check_keys(raw, set(_CORPUS_KINDS), "[corpus]", path, text)
    corpus = dataclasses.replace(SPEC_CORPUS, **{k: _typed(v, _CORPUS_KINDS[k], k, path, text) for k, v in raw.items()})
    if not corpus.langs:
        raise _err(path, text, "corpus", "[corpus] needs langs", 'add langs = ["eng", "heb", ...]')
    if corpus.max_tokens < 0:
        raise _err(path, text, "max_tokens", "max_tokens must be >= 0 (0 = all)")
    if corpus.min_docs < 1:
        raise _err(path, text, "min_docs", f"min_docs must be >= 1, got {corpus.min_docs}")
    return corpus


def _eval(raw: dict, path: str, text: str) -> EvalSettings:
    _check_keys(raw, {f.name for f in fields(EvalSettings)} - {"version"}, "[eval]", path, text)
    kinds = {f.name: "float" if f.type in (float, "float") else "int" for f in fields(EvalSettings)}
    try:
        settings = EvalSettings(**{k: _typed(v, kinds[k], k, path, text) for k, v in raw.items()})
        check_eval(settings)
    except UserError as e:
        raise _err(path, text, "eval", e.message, e.hint) from None
    return settings


def _groups(data: dict, path: str, text: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if "groups" not in data:
        return None
    g = data["groups"]
    _check_keys(g, {"low", "high"}, "[groups]", path, text)
    if not g.get("low") or not g.get("high"):
        raise _err(path, text, "groups", "[groups] needs both low and high language lists")
    return _typed(g["low"], "list[str]", "low", path, text), _typed(g["high"], "list[str]", "high", path, text)


def _trials(data: dict, path: str, text: str) -> list[TrialSpec]:
    """The [grid]'s trials, then the explicit [[trials]]; at least one, no name twice."""
    langs = tuple(data.get("corpus", {}).get("langs", ())) if isinstance(data.get("corpus"), dict) else ()
    grid = _grid_trials(data.get("grid", {}), path, text, langs)
    trials = grid + _explicit_trials(data.get("trials", []), path, text)
    if not trials:
        raise SpecError(f"{path}: the spec defines no trials", "add a [grid] or [[trials]]")
    names = [t.name for t in trials]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SpecError(f"{path}: trial {dup!r} is defined twice", "give the plans distinct names")
    return trials


def _calibration(raw: dict, path: str, text: str) -> dict:
    """``[calibration]``: tokens (the budget of each calibration set) and seed."""
    _check_keys(raw, {"tokens", "seed"}, "[calibration]", path, text)
    after = (_line_of(text, "calibration") or 1) - 1
    tokens = _typed(raw.get("tokens", DEFAULT_CALIBRATION_TOKENS), "int", "tokens", path, text, after=after)
    seed = _typed(raw.get("seed", 0), "int", "seed", path, text, after=after)
    _ranged(tokens, 1, None, "tokens", path, text)
    _ranged(seed, 0, None, "seed", path, text)
    return {"calibration_tokens": tokens, "calibration_seed": seed}


def _calibrated(template: str) -> bool:
    """Whether a plan names a calibrated scheme (GPTQ, AWQ); a plan that does not parse says no (reported later)."""
    from ..quant.calibration import plan_needs_calibration
    from ..quant.plan import Plan

    try:
        return plan_needs_calibration(Plan.parse(template))
    except UserError:
        return False


def _with_calibrations(trial: TrialSpec, calibrations: dict, langs_of_target: tuple[str, ...]) -> list[TrialSpec]:
    """A calibrated trial once per ``[grid] calibrations`` entry (plan name ``PLAN.NAME``; a ``target`` entry
    once per corpus language, ``PLAN.NAME-LANG``, calibrated on that language); an uncalibrated trial once."""
    if not calibrations or not _calibrated(trial.plan):
        return [trial]
    out: list[TrialSpec] = []
    for cname, (source, tokens) in calibrations.items():
        if source.strip().lower() == "target":
            out.extend(
                dataclasses.replace(
                    trial, plan_name=f"{trial.plan_name}.{cname}-{lang}", calibration=lang, calibration_tokens=tokens
                )
                for lang in langs_of_target
            )
        else:
            out.append(
                dataclasses.replace(
                    trial, plan_name=f"{trial.plan_name}.{cname}", calibration=source, calibration_tokens=tokens
                )
            )
    return out


def _grid_trials(grid: dict, path: str, text: str, langs: tuple[str, ...] = ()) -> list[TrialSpec]:
    _check_keys(grid, {"models", "schemes", "plans", "calibrations"}, "[grid]", path, text)
    if not grid:
        return []
    models = _typed(grid.get("models", []), "list[str]", "models", path, text)
    schemes = _typed(grid.get("schemes", []), "list[str]", "schemes", path, text)
    plans = _typed(grid.get("plans", {}), "table", "plans", path, text)
    if not models or not plans:
        raise _err(path, text, "grid", "[grid] needs models and plans", "or list explicit [[trials]]")
    trials = []
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
    raw = _typed(grid.get("calibrations", {}), "table", "calibrations", path, text)
    calibrations: dict[str, tuple[str, int]] = {}  # name -> (source, tokens; 0: the spec's [calibration] tokens)
    for cname, entry in raw.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", cname):
            raise _err(path, text, cname, f"calibration name {cname!r} must be letters, digits or '_'")
        if isinstance(entry, dict):  # { source = "...", tokens = N }: this entry's own budget
            _check_keys(entry, {"source", "tokens"}, f"calibrations.{cname}", path, text)
            if "source" not in entry:
                raise _err(
                    path, text, cname, f"calibration {cname!r} needs a source", f'{cname} = {{ source = "eng" }}'
                )
            source = _typed(entry["source"], "str", cname, path, text)
            tokens = _typed(entry.get("tokens", 0), "int", cname, path, text)
            if "tokens" in entry:
                _ranged(tokens, 1, None, cname, path, text)
            calibrations[cname] = (source, tokens)
        else:
            calibrations[cname] = (_typed(entry, "str", cname, path, text), 0)
    return [x for t in trials for x in _with_calibrations(t, calibrations, langs)]


def _explicit_trials(tables: list[dict], path: str, text: str) -> list[TrialSpec]:
    trials = []
    for i, t in enumerate(tables):
        _check_keys(
            t,
            {"model", "scheme", "plan", "plan_name", "quantized", "calibration", "calibration_tokens"},
            f"[[trials]] #{i + 1}",
            path,
            text,
        )
        if "calibration_tokens" in t:
            if "calibration" not in t:
                raise _err(
                    path, text, "calibration_tokens", f"[[trials]] #{i + 1}: calibration_tokens without calibration"
                )
            _ranged(_typed(t["calibration_tokens"], "int", "calibration_tokens", path, text), 1, None,
                    "calibration_tokens", path, text)  # fmt: skip
        if "quantized" in t:
            both = next((k for k in ("plan", "scheme", "calibration") if k in t), None)
            if both:
                raise _err(
                    path,
                    text,
                    "quantized",
                    f"[[trials]] #{i + 1}: quantized does not combine with {both}",
                    "the artifact's tensors are the quantized arm",
                )
        for key in ("model", "plan_name") if "quantized" in t else ("model", "plan", "plan_name"):
            if key not in t:
                raise _err(path, text, "trials", f"[[trials]] #{i + 1} needs {key}")
        for key in t.keys() - {"calibration_tokens"}:
            _typed(t[key], "str", key, path, text, after=(_line_of(text, "trials") or 1) - 1)
        if "quantized" in t:
            trials.append(TrialSpec(t["model"], "artifact", t["plan_name"], "", quantized=t["quantized"]))
        else:
            trials.append(
                TrialSpec(
                    t["model"],
                    t.get("scheme", ""),
                    t["plan_name"],
                    t["plan"],
                    calibration=t.get("calibration", ""),
                    calibration_tokens=t.get("calibration_tokens", 0),
                )
            )
    return trials


def _claims(tables: list[dict], trials: list[TrialSpec], path: str, text: str) -> list[ClaimSpec]:
    run = {
        "model": {t.model for t in trials},
        "scheme": {t.scheme for t in trials} - {""},
        "plan": {t.plan_name for t in trials},
    }
    claims_line = (_line_of(text, "claims") or 1) - 1
    return [_claim(i, c, run, claims_line, path, text) for i, c in enumerate(tables)]


def _claim(i: int, c: dict, run: dict[str, set[str]], claims_line: int, path: str, text: str) -> ClaimSpec:
    """[[claims]] table #``i + 1``: its fields, its where filters (values the spec runs) and its expression."""
    from .claims import FILTERS

    _check_keys(c, {"id", "text", "expr", "where"}, f"[[claims]] #{i + 1}", path, text)
    if "id" not in c or "expr" not in c:
        raise _err(path, text, "claims", f"[[claims]] #{i + 1} needs id and expr")
    cid = c["id"]
    if not isinstance(cid, (str, int)) or isinstance(cid, bool):
        raise _err(path, text, "id", f"[[claims]] #{i + 1}: id must be a string, got {shown(cid)}", after=claims_line)
    cid = str(cid)
    after = (_line_of(text, "id", claims_line) or 1) - 1
    for key in ("expr", "text"):
        if key in c and not isinstance(c[key], str):
            raise _err(path, text, key, f"claim {cid}: {key} must be a string, got {shown(c[key])}", after=after)
    where = c.get("where", {})
    if not isinstance(where, dict):
        raise _err(
            path, text, "where", f'claim {cid}: where must be a table, e.g. {{ scheme = "w4g128" }}', after=after
        )
    for key, value in where.items():
        if key not in FILTERS:
            raise _err(
                path,
                text,
                "where",
                f"claim {cid}: unknown key {shown(key)} in where{did_you_mean(key, FILTERS)}",
                f"where takes {', '.join(FILTERS)}" + ("; give lang= in each metric call" if key == "lang" else ""),
                after=after,
            )
        if not isinstance(value, str):
            raise _err(
                path, text, "where", f"claim {cid}: where {key} must be a string, got {shown(value)}", after=after
            )
        if value not in run[key]:
            raise _err(
                path,
                text,
                "where",
                f"claim {cid}: where {key} = {shown(value)} is not run by this spec{did_you_mean(value, run[key])}",
                f"its {key}s: {', '.join(sorted(run[key])) or '(none named)'}",
                after=after,
            )
    _check_claim_expr(c["expr"], cid, path, text, after)
    return ClaimSpec(id=cid, expr=c["expr"], text=c.get("text", ""), where=tuple(sorted(where.items())))


def _check_claim_expr(expr: str, cid: str, path: str, text: str, after: int) -> None:
    from .claims import parse_expr

    try:
        left, _, right, _ = parse_expr(expr, cid)
        _check_expr(left, cid)
        _check_expr(right, cid)
        zero = _zero_divisor(left) or _zero_divisor(right)
    except (MemoryError, RecursionError):
        raise _err(path, text, "expr", f"claim {cid}: expression nested too deeply", after=after) from None
    except UserError as e:
        raise _err(path, text, "expr", e.message, e.hint, after=after) from None
    if zero:
        raise _err(
            path,
            text,
            "expr",
            f"claim {cid}: divides by zero in {shown(expr)}",
            "divide by a non-zero number or by a metric",
            after=after,
        )


def _check_claim_instances(spec: ExperimentSpec, path: str, text: str) -> None:
    """Every claim's metric calls name what the spec evaluates, and its where matches a trial."""
    from .claims import instances, validate_claims

    after = (_line_of(text, "claims") or 1) - 1
    for c in spec.claims:  # one claim at a time, so that an error points at that claim's expr
        try:
            validate_claims(spec, [c])
            if not instances(spec, c):
                raise UserError(
                    f"claim {c.id}: no trial of the spec matches where {dict(c.where)}",
                    "name a model, scheme and plan combination the spec runs",
                )
        except UserError as e:
            line = _line_of(text, "expr", after)
            raise SpecError(f"{path}:{line}: {e.message}" if line else f"{path}: {e.message}", e.hint) from None
        after = _line_of(text, "expr", after) or after


def _validate_groups(groups, corpus: CorpusSelection, loaded, path: str, text: str):
    """[groups] languages must be evaluated by the spec, and no language may be both low and high."""
    evaluated = [loaded.resolve(x) for x in corpus.langs]
    resolved = []
    for side in groups:
        ids = []
        for lang in side:
            try:
                key = loaded.resolve(lang)
            except UserError as e:
                raise _err(path, text, "groups", f"[groups]: {e.message}", e.hint) from None
            if key not in evaluated:
                raise _err(
                    path,
                    text,
                    "groups",
                    f"[groups] names {key}, which the spec does not evaluate",
                    "add it to [corpus] langs or remove it from [groups]",
                )
            ids.append(key)
        resolved.append(ids)
    both = [x for x in resolved[0] if x in resolved[1]]
    if both:
        raise _err(path, text, "groups", f"[groups]: {both[0]} is in both low and high", "put it in one of them")
    return groups


def trial_calibration(trial: TrialSpec, spec_tokens: int, spec_seed: int) -> Calibration:
    """A trial's calibration set: its entry's own token budget where it has one, else the spec's."""
    return Calibration(trial.calibration, trial.calibration_tokens or spec_tokens, spec_seed)


def _validate_offline(
    trials: list[TrialSpec], corpus: CorpusSelection, path: str, text: str, calibration: dict | None = None
):
    """Checks that need no model: schemes, plan syntax, model names, calibrations, corpus and languages."""
    from ..corpus import filter_split, open_corpus
    from ..models import classify_source
    from ..models.artifact import classify_artifact
    from ..quant import parse_scheme
    from ..quant.calibration import check_calibration_source, check_calibration_use, plan_needs_calibration
    from ..quant.plan import Plan

    calibration = calibration or {}
    for t in trials:
        try:
            classify_source(t.model)
            if t.quantized:
                classify_artifact(t.quantized)
                continue
            if t.scheme:
                parse_scheme(t.scheme)
            plan = Plan.parse(t.plan)
            cal = trial_calibration(
                t,
                calibration.get("calibration_tokens", DEFAULT_CALIBRATION_TOKENS),
                calibration.get("calibration_seed", 0),
            )
            if cal.is_target:
                raise UserError("calibration 'target' in a spec is a [grid] calibrations entry", 'e.g. t = "target"')
            check_calibration_use(plan_needs_calibration(plan), cal, f"plan {t.plan!r}")
            check_calibration_source(cal, open_corpus(corpus), corpus.split)
        except UserError as e:
            key = t.plan_name if _line_of(text, t.plan_name) else "grid"
            raise _err(path, text, key, f"trial {t.name}: {e.message}", e.hint) from None
    try:
        c = open_corpus(corpus)
        for lang in corpus.langs:
            key = c.resolve(lang)
            pool = filter_split(c.documents(key), corpus.split)
            if not pool:
                raise UserError(f"{key} has no documents in split {corpus.split!r}")
            if corpus.docs and not {d.id for d in pool} & set(corpus.docs):
                raise UserError(
                    f"{key}: none of the documents {shown(list(corpus.docs))} is in split {corpus.split!r}",
                    f"its ids: {', '.join(d.id for d in pool[:5])}, ...",
                )
    except UserError as e:
        raise _err(path, text, "langs" if isinstance(e, LanguageError) else "corpus", e.message, e.hint) from None
    return c


def load_spec(path: str | Path) -> ExperimentSpec:
    p = Path(path)
    try:
        p.is_file()
    except OSError as e:
        raise UserError(
            f"spec {str(p)[:80]!r} is not a usable path ({e.strerror})", "give the path of a .toml experiment spec"
        ) from None
    if not p.is_file():
        raise UserError(f"spec {p} not found", "give the path of a .toml experiment spec")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"spec {p} is not UTF-8 text") from None
    return parse_spec(text, str(p))
